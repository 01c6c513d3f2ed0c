"""How exported graphs name activation quantizers: ``aq<i>``, indexing the ids listed in the metadata.

Both exporters list the activation quantizer ids once in the model metadata
(:data:`QUANTIZER_IDS_KEY`, a JSON list) and name the quantizers' nodes and initializers ``aq<i>``
after their index in that list; verification finds them back through the same functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import onnx

__all__ = [
    "QUANTIZER_IDS_KEY",
    "short_name",
    "short_name_pattern",
    "short_index",
    "read_quantizer_ids",
    "write_quantizer_ids",
]

#: Model metadata key listing the activation quantizer ids; graph names refer to them as ``aq<i>``.
QUANTIZER_IDS_KEY = "hf_qat.activation_quantizer_ids"
_ANY_SHORT_NAME = re.compile(r"(?<![\w])aq(\d+)(?!\d)")


def short_name(index: int) -> str:
    """The graph name of activation quantizer ``index``: ``aq<index>``."""
    return f"aq{index}"


def short_name_pattern(index: int) -> re.Pattern[str]:
    """A pattern finding ``aq<index>`` as a whole name part (not ``aq12`` for ``aq1``, not ``xaq1``)."""
    return re.compile(rf"(?<![\w]){short_name(index)}(?!\d)")


def short_index(text: str) -> int | None:
    """The index ``i`` of the first ``aq<i>`` in ``text``, or ``None``."""
    match = _ANY_SHORT_NAME.search(text)
    return int(match.group(1)) if match else None


def read_quantizer_ids(model: onnx.ModelProto) -> list[str] | None:
    """The activation quantizer ids listed in ``model``'s metadata, or ``None`` (not an hf_qat export)."""
    listed = next((p.value for p in model.metadata_props if p.key == QUANTIZER_IDS_KEY), None)
    return json.loads(listed) if listed else None


def write_quantizer_ids(model: onnx.ModelProto, ids: Sequence[str]) -> None:
    """List ``ids`` in ``model``'s metadata (replacing an earlier list; other entries are kept)."""
    props = {p.key: p.value for p in model.metadata_props}
    props[QUANTIZER_IDS_KEY] = json.dumps(list(ids))
    onnx.helper.set_model_props(model, props)
