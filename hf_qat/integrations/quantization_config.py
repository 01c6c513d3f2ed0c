"""What a saved QAT model says about itself: ``config.json``'s ``quantization_config`` and file names.

A QAT checkpoint (Trainer checkpoint, ``save_model`` output or hub repo) holds:

- ``model.safetensors``: model weights and quantizer parameters (``scale``, ``input_low`` ...);
- ``config.json`` with ``quantization_config = {"quant_method": "hf_qat", ...}``: the compression
  state and NNCF config (embedded, so that ``from_pretrained`` needs nothing else) and a scheme summary;
- ``compression_state.json``: NNCF's legacy ``compression_state`` (quantizer setup + controller state);
- ``nncf_config.json``: the NNCF config the model was compressed with.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

from ..core.config import NNCFConfig
from ..errors import CompressionStateError, JSONFileError
from ..utils.io import atomic_write_text
from ..utils.jsonfile import MAX_JSON_BYTES, read_json

__all__ = [
    "QUANT_METHOD",
    "COMPRESSION_STATE_NAME",
    "NNCF_CONFIG_NAME",
    "MAX_JSON_BYTES",
    "quantization_scheme",
    "quantization_config_dict",
    "write_qat_files",
    "read_json_file",
]

QUANT_METHOD = "hf_qat"
COMPRESSION_STATE_NAME = "compression_state.json"
NNCF_CONFIG_NAME = "nncf_config.json"


def quantization_scheme(ctrl: Any) -> dict[str, Any]:
    """A summary of how a controller's model is quantized (bits, modes, granularity, counts, init)."""

    def describe(quantizers: dict) -> dict[str, Any]:
        specs = [q.spec for q in quantizers.values()]
        return {
            "count": len(specs),
            "bits": sorted(Counter(s.num_bits for s in specs)),
            "modes": sorted({s.mode.value for s in specs}),
            "per_channel": sorted({s.per_channel for s in specs}),
            "narrow_range": sorted({s.narrow_range for s in specs}),
            "half_range": sorted({s.half_range for s in specs}),
        }

    settings = ctrl.settings
    r = settings.range_init[0]
    return {
        "weights": describe(ctrl.weight_quantizers),
        "activations": describe(ctrl.activation_quantizers),
        "range_init": {"type": r.type, "num_init_samples": r.num_init_samples},
        "target_device": settings.target_device,
        "overflow_fix": settings.overflow_fix,
        "ignored_scopes": list(settings.ignored_scopes),
    }


def quantization_config_dict(ctrl: Any) -> dict[str, Any]:
    """The ``quantization_config`` entry written to ``config.json``."""
    from .. import __version__

    config = ctrl.config if isinstance(ctrl.config, NNCFConfig) else NNCFConfig.from_dict(ctrl.config)
    return {
        "quant_method": QUANT_METHOD,
        "hf_qat_version": __version__,
        # embedded so that from_pretrained can rebuild the quantizers from config.json alone
        "compression_state": ctrl.get_compression_state(),
        "nncf_config": dict(config),
        "scheme": quantization_scheme(ctrl),
    }


def write_qat_files(output_dir: str | os.PathLike, ctrl: Any) -> None:
    """Write ``compression_state.json`` and ``nncf_config.json`` (atomically) into ``output_dir``."""
    atomic_write_text(os.path.join(output_dir, COMPRESSION_STATE_NAME), json.dumps(ctrl.get_compression_state(), indent=1))
    config = ctrl.config if isinstance(ctrl.config, NNCFConfig) else NNCFConfig.from_dict(ctrl.config)
    config.to_json(os.path.join(output_dir, NNCF_CONFIG_NAME))


def read_json_file(path: str | os.PathLike, what: str, strict: bool = True) -> Any:
    """Read a JSON file of a checkpoint (at most :data:`MAX_JSON_BYTES`), refusing oversized, deeply nested
    or malformed content, and with ``strict`` also ``NaN``/``Infinity`` and duplicate keys.

    Raises:
        [`CompressionStateError`]: naming ``what`` (the operation), the file and the problem.
    """
    try:
        return read_json(path, strict=strict)
    except JSONFileError as e:
        raise CompressionStateError(f"{what}: {e}") from None
