"""The ``compression_state`` format: NNCF's legacy layout, JSON only, versioned.

```
{"builder_state": {"quantization": {
    "quantizer_setup": {
        "quantization_points": {"<qp_id>": {
            "target_point": {"target_type": {"name": "OPERATION_WITH_WEIGHTS" | "OPERATOR_PRE_HOOK"
                                             | "OPERATOR_POST_HOOK"},
                             "input_port_id": int | null, "target_node_name": str},
            "qspec": {num_bits, mode, signedness_to_force, narrow_range, half_range, scale_shape,
                      logarithm_scale, is_quantized_on_export, compression_lr_multiplier},
            "directly_quantized_operator_node_names": [str]}},
        "unified_scale_groups": {"<i>": [qp_id, ...]},
        "shared_input_operation_set_groups": {"<i>": [qp_id, ...]}},
    "build_time_metric_infos": {"aq_potential_num": int, "wq_potential_num": int},
    "version": 2}},
 "ctrl_state": {"quantization": {"loss_state": null,
    "scheduler_state": {"current_step": int, "current_epoch": int},
    "compression_stage": int}}}
```

In hf_qat a unified scale group is a set of quantization points that share one quantizer because
they quantize the same tensor (for example the input shared by the query, key and value
projections).

hf_qat places activation quantizers on the inputs of their consumers (``OPERATOR_PRE_HOOK``); NNCF 2.x
places most of them on the outputs of producers (``OPERATOR_POST_HOOK``, ids ending ``|OUTPUT``).
Both are read and applied, so a state NNCF wrote restores into hf_qat as NNCF built it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from ..errors import CompressionStateError, JSONFileError
from ..utils.jsonfile import loads_json
from .config import json_path
from .spec import QuantizerSpec

__all__ = [
    "TargetType",
    "QuantizationPoint",
    "QuantizerSetup",
    "make_compression_state",
    "parse_compression_state",
    "SETUP_VERSION",
    "ALGO_NAME",
    "COMPRESSION_STATE_SCHEMA",
    "validate_compression_state",
]

SETUP_VERSION = 2
ALGO_NAME = "quantization"


_INDEX_GROUPS = {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer", "minimum": 0}}}
_QSPEC = {
    "type": "object",
    "properties": {
        "num_bits": {"type": "integer", "minimum": 2, "maximum": 8},
        "mode": {"enum": ["symmetric", "asymmetric"]},
        "signedness_to_force": {"type": ["boolean", "null"]},
        "narrow_range": {"type": "boolean"},
        "half_range": {"type": "boolean"},
        "scale_shape": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": 2**31},
            "minItems": 1,
            "maxItems": 8,
        },
        "logarithm_scale": {"type": "boolean"},
        "is_quantized_on_export": {"type": "boolean"},
        "compression_lr_multiplier": {"anyOf": [{"type": "null"}, {"type": "number", "exclusiveMinimum": 0}]},
    },
}
_POINT = {
    "type": "object",
    "properties": {
        "target_point": {
            "type": "object",
            "properties": {
                "target_type": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
                "input_port_id": {"type": ["integer", "null"], "minimum": 0},
                "target_node_name": {"type": "string", "minLength": 1},
            },
            "required": ["target_type", "target_node_name"],
        },
        "qspec": _QSPEC,
        "directly_quantized_operator_node_names": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["target_point", "qspec"],
}
_COUNT = {"type": "integer", "minimum": 0}
#: JSON schema of the parts of a ``compression_state`` hf_qat reads (other algorithms' entries are ignored).
COMPRESSION_STATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "builder_state": {
            "type": "object",
            "properties": {
                "quantization": {
                    "type": "object",
                    "properties": {
                        "quantizer_setup": {
                            "type": "object",
                            "properties": {
                                "quantization_points": {"type": "object", "additionalProperties": _POINT},
                                "unified_scale_groups": _INDEX_GROUPS,
                                "shared_input_operation_set_groups": _INDEX_GROUPS,
                            },
                            "required": ["quantization_points"],
                        },
                        "build_time_metric_infos": {
                            "type": "object",
                            "properties": {"aq_potential_num": _COUNT, "wq_potential_num": _COUNT},
                        },
                        "version": {"type": "integer"},
                    },
                },
            },
        },
        "ctrl_state": {
            "type": ["object", "null"],
            "properties": {
                "quantization": {
                    "type": ["object", "null"],
                    "properties": {
                        "scheduler_state": {
                            "type": ["object", "null"],
                            "properties": {"current_step": {"type": "integer"}, "current_epoch": {"type": "integer"}},
                        },
                        "compression_stage": {"type": ["integer", "null"]},
                    },
                },
            },
        },
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(COMPRESSION_STATE_SCHEMA)


def validate_compression_state(state: Any) -> None:
    """Check the types, ranges and required keys of the parts of ``state`` hf_qat reads.

    Raises:
        [`CompressionStateError`]: naming the JSON path of the first problem and what is expected there.
    """
    stack: list[tuple[Any, tuple[Any, ...]]] = [(state, ())]
    while stack:  # NaN/Infinity pass every range check of JSON schema
        value, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise CompressionStateError(f"compression_state {json_path(path)} is {value!r}; expected a finite number.")
        if isinstance(value, dict):
            stack.extend((v, path + (k,)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, path + (i,)) for i, v in enumerate(value))
    error = best_match(_VALIDATOR.iter_errors(state))
    if error is not None:
        found = error.instance if not isinstance(error.instance, (dict, list)) else type(error.instance).__name__
        raise CompressionStateError(
            f"compression_state {json_path(tuple(error.absolute_path))} is malformed: found {found!r}; {error.message}. "
            "It was not written by hf_qat or NNCF, or was edited; re-save it from the controller "
            "(ctrl.get_compression_state())."
        )


class TargetType:
    OPERATION_WITH_WEIGHTS = "OPERATION_WITH_WEIGHTS"
    OPERATOR_PRE_HOOK = "OPERATOR_PRE_HOOK"
    OPERATOR_POST_HOOK = "OPERATOR_POST_HOOK"
    ALL = (OPERATION_WITH_WEIGHTS, OPERATOR_PRE_HOOK, OPERATOR_POST_HOOK)


@dataclass
class QuantizationPoint:
    """Where one quantizer acts: the weight of an operation, one input of an operation, or its output."""

    target_type: str
    target_node_name: str
    input_port_id: int | None
    qspec: QuantizerSpec
    directly_quantized_operator_node_names: list[str] = field(default_factory=list)

    @property
    def is_weight(self) -> bool:
        return self.target_type == TargetType.OPERATION_WITH_WEIGHTS

    @property
    def is_output(self) -> bool:
        return self.target_type == TargetType.OPERATOR_POST_HOOK

    @property
    def quantizer_id(self) -> str:
        """NNCF-style id: the node name, plus ``|INPUT<port>`` (inputs) or ``|OUTPUT`` (outputs)."""
        if self.is_weight:
            return self.target_node_name
        if self.is_output:
            return f"{self.target_node_name}|OUTPUT"
        return f"{self.target_node_name}|INPUT{self.input_port_id}"

    def to_state(self) -> dict[str, Any]:
        return {
            "target_point": {
                "target_type": {"name": self.target_type},
                "input_port_id": self.input_port_id,
                "target_node_name": self.target_node_name,
            },
            "qspec": self.qspec.to_state(),
            "directly_quantized_operator_node_names": list(self.directly_quantized_operator_node_names),
        }

    @classmethod
    def from_state(cls, state: Any, where: str) -> QuantizationPoint:
        try:
            tp = state["target_point"]
            target_type = tp["target_type"]["name"]
            node = tp["target_node_name"]
            port = tp.get("input_port_id")
            qspec = QuantizerSpec.from_state(dict(state["qspec"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CompressionStateError(f"{where}: malformed quantization point ({type(e).__name__}: {e}).") from e
        if target_type not in TargetType.ALL:
            raise CompressionStateError(f"{where}: target_type {target_type!r}; expected one of {TargetType.ALL}.")
        if not isinstance(node, str) or not node:
            raise CompressionStateError(f"{where}: target_node_name {node!r}; expected a non-empty string.")
        if target_type == TargetType.OPERATOR_PRE_HOOK and not isinstance(port, int):
            raise CompressionStateError(f"{where}: input_port_id {port!r}; expected an integer for a pre-hook.")
        if target_type != TargetType.OPERATOR_PRE_HOOK:
            port = None
        names = state.get("directly_quantized_operator_node_names", [node])
        return cls(target_type, node, port, qspec, list(names))


@dataclass
class QuantizerSetup:
    """All quantization points of a model and the groups of points that share a quantizer."""

    points: dict[int, QuantizationPoint]
    unified_scale_groups: list[list[int]] = field(default_factory=list)
    aq_potential_num: int = 0
    wq_potential_num: int = 0

    def groups(self) -> list[list[int]]:
        """Every quantizer as the list of its point ids (singletons for ungrouped points)."""
        grouped = {qp for g in self.unified_scale_groups for qp in g}
        out = [list(g) for g in self.unified_scale_groups]
        out += [[qp] for qp in self.points if qp not in grouped]
        return sorted(out, key=lambda g: min(g))

    def quantizer_id(self, group: list[int]) -> str:
        return ";".join(self.points[i].quantizer_id for i in group)

    def to_state(self) -> dict[str, Any]:
        return {
            "quantizer_setup": {
                "quantization_points": {str(i): qp.to_state() for i, qp in self.points.items()},
                "unified_scale_groups": {str(i): list(g) for i, g in enumerate(self.unified_scale_groups)},
                "shared_input_operation_set_groups": {str(i): g for i, g in enumerate(self.groups())},
            },
            "build_time_metric_infos": {"aq_potential_num": self.aq_potential_num, "wq_potential_num": self.wq_potential_num},
            "version": SETUP_VERSION,
        }

    @classmethod
    def from_state(cls, state: Any) -> QuantizerSetup:
        where = "compression_state['builder_state']['quantization']"
        if not isinstance(state, dict) or "quantizer_setup" not in state:
            raise CompressionStateError(f"{where} must be an object with a 'quantizer_setup' key; got {_short(state)}.")
        version = state.get("version", 1)
        if version != SETUP_VERSION:
            raise CompressionStateError(
                f"{where}['version'] is {version!r}; hf_qat reads version {SETUP_VERSION} "
                "(NNCF >= 2.0 layout). Re-save the checkpoint with a current tool."
            )
        qs = state["quantizer_setup"]
        raw_points = qs.get("quantization_points") if isinstance(qs, dict) else None
        if not isinstance(raw_points, dict):
            raise CompressionStateError(f"{where}['quantizer_setup']['quantization_points'] must be an object.")
        points = {}
        for key, value in raw_points.items():
            try:
                qp_id = int(key)
            except ValueError:
                raise CompressionStateError(f"{where}: quantization point id {key!r} is not an integer.") from None
            points[qp_id] = QuantizationPoint.from_state(value, f"{where} point {key}")
        groups = []
        for key, members in (qs.get("unified_scale_groups") or {}).items():
            if not isinstance(members, list) or any(int(m) not in points for m in members):
                raise CompressionStateError(f"{where}: unified_scale_groups[{key!r}] = {members!r} names unknown points.")
            groups.append([int(m) for m in members])
        infos = state.get("build_time_metric_infos") or {}
        return cls(points, groups, int(infos.get("aq_potential_num", 0)), int(infos.get("wq_potential_num", 0)))


def make_compression_state(setup: QuantizerSetup, ctrl_state: dict[str, Any]) -> dict[str, Any]:
    """The full, JSON-serialisable ``compression_state`` of a quantization controller."""
    state = {
        "builder_state": {ALGO_NAME: setup.to_state()},
        "ctrl_state": {ALGO_NAME: ctrl_state},
    }
    json.dumps(state)  # fail here, not in the user's checkpoint code, if something is not JSON
    return state


def parse_compression_state(state: Any) -> tuple[QuantizerSetup, dict[str, Any]]:
    """Split and validate a ``compression_state``: ``(setup, ctrl_state)``.

    Raises:
        [`CompressionStateError`]: if the state is not in NNCF's legacy layout or holds no quantization.
    """
    if isinstance(state, (str, bytes)):
        try:
            state = loads_json(state, source="compression_state text", strict=True)
        except JSONFileError as e:
            raise CompressionStateError(f"compression_state is not valid JSON: {e.reason}.") from None
    if not isinstance(state, dict) or "builder_state" not in state:
        raise CompressionStateError(
            "compression_state must be the dict returned by ctrl.get_compression_state() "
            f"(keys 'builder_state' and 'ctrl_state'); got {_short(state)}. "
            "A plain model state_dict goes to model.load_state_dict / hf_qat.load_state instead."
        )
    builder = state["builder_state"]
    if not isinstance(builder, dict) or ALGO_NAME not in builder:
        found = sorted(builder) if isinstance(builder, dict) else type(builder).__name__
        raise CompressionStateError(
            f"compression_state['builder_state'] has no {ALGO_NAME!r} entry (found {found}); hf_qat restores quantization only."
        )
    version = builder[ALGO_NAME].get("version", 1) if isinstance(builder[ALGO_NAME], dict) else None
    if version == SETUP_VERSION:  # older layouts get the version message from QuantizerSetup.from_state
        validate_compression_state(state)
    setup = QuantizerSetup.from_state(builder[ALGO_NAME])
    ctrl = (state.get("ctrl_state") or {}).get(ALGO_NAME) or {}
    if not isinstance(ctrl, dict):
        raise CompressionStateError(f"compression_state['ctrl_state'][{ALGO_NAME!r}] must be an object.")
    return setup, ctrl


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object with keys {sorted(map(str, value))[:8]}"
    return f"a {type(value).__name__}"
