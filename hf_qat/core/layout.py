"""The QAT file layout: which files a saved QAT model holds, and what they say about it.

A PyTorch QAT folder (``QATTrainer`` checkpoint, ``save_model`` output or hub repo) holds:

- ``model.safetensors``: model weights and quantizer parameters (``scale``, ``input_low`` ...);
- ``config.json`` with ``quantization_config = {"quant_method": "hf_qat", ...}``: the compression
  state and NNCF config (embedded, so that ``from_pretrained`` needs nothing else) and a scheme summary;
- ``compression_state.json``: NNCF's legacy ``compression_state`` (quantizer setup + controller state);
- ``nncf_config.json``: the NNCF config the model was compressed with;
- after export ``model.onnx`` (INT8) and ``openvino_model.xml`` + ``openvino_model.bin`` (OpenVINO IR converted
  from it, INT8 weights), ``README.md`` (model card, with ``sqnr.png``), ``qat_results.json``.

A Keras QAT folder holds the model in its own format (a keras-hub preset, or ``model.keras``),
``compression_state.json``, ``nncf_config.json`` and ``hf_qat_quantizers.safetensors`` (the learned
ranges), plus the exports. :data:`TRANSFORMERS_LAYOUT` and :data:`KERAS_LAYOUT` say which files
each must hold and which a push uploads.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import CompressionStateError, JSONFileError
from ..utils.io import atomic_write_text
from ..utils.jsonfile import MAX_JSON_BYTES, read_json
from .config import NNCFConfig

__all__ = [
    "QUANT_METHOD",
    "COMPRESSION_STATE_NAME",
    "NNCF_CONFIG_NAME",
    "QUANTIZERS_FILE",
    "ONNX_NAME",
    "OPENVINO_XML_NAME",
    "OPENVINO_BIN_NAME",
    "SQNR_PLOT_NAME",
    "RESULTS_NAME",
    "MAX_JSON_BYTES",
    "FolderLayout",
    "remove_openvino_files",
    "TRANSFORMERS_LAYOUT",
    "KERAS_LAYOUT",
    "quantization_scheme",
    "quantization_config_dict",
    "write_qat_files",
    "read_json_file",
]

QUANT_METHOD = "hf_qat"
COMPRESSION_STATE_NAME = "compression_state.json"
NNCF_CONFIG_NAME = "nncf_config.json"
#: Keras: the learned quantizer ranges, keyed ``<quantizer id>/<variable>``.
QUANTIZERS_FILE = "hf_qat_quantizers.safetensors"
ONNX_NAME = "model.onnx"
#: OpenVINO IR converted from the INT8 ONNX file (the names optimum-intel's ``OVModelFor*`` load).
OPENVINO_XML_NAME = "openvino_model.xml"
OPENVINO_BIN_NAME = "openvino_model.bin"
#: Per-layer quantization error plot of the model card.
SQNR_PLOT_NAME = "sqnr.png"
RESULTS_NAME = "qat_results.json"


@dataclass(frozen=True)
class FolderLayout:
    """The files of a saved QAT folder of one framework.

    Attributes:
        framework (`str`): ``"pytorch"`` or ``"keras"``.
        required (`tuple[str, ...]`): files every such folder holds.
        one_of (`tuple[tuple[str, ...], ...]`): groups of glob patterns of which at least one must match
            (the weights, in one of their formats).
        pushed (`tuple[str, ...]`): glob patterns of the files a hub push uploads; everything else
            (Trainer pickles, optimizer states, checkpoints) stays local.
    """

    framework: str
    required: tuple[str, ...]
    one_of: tuple[tuple[str, ...], ...]
    pushed: tuple[str, ...]

    def missing(self, folder: str | os.PathLike) -> list[str]:
        """The required files ``folder`` lacks (empty when it is a complete QAT folder of this layout)."""
        folder = Path(folder)
        missing = [f for f in self.required if not (folder / f).is_file()]
        for group in self.one_of:
            if not any(any(folder.glob(pattern)) for pattern in group):
                missing.append(" or ".join(group))
        return missing


_PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.jinja",
)

#: A transformers QAT folder (``QATTrainer.save_model``, ``hf_qat.transformers.save_qat_model``).
TRANSFORMERS_LAYOUT = FolderLayout(
    framework="pytorch",
    required=("config.json", COMPRESSION_STATE_NAME, NNCF_CONFIG_NAME),
    one_of=(("model.safetensors", "model-*.safetensors"),),
    pushed=(
        "model.safetensors",
        "model.safetensors.index.json",
        "model-*.safetensors",
        "config.json",
        "generation_config.json",
        COMPRESSION_STATE_NAME,
        NNCF_CONFIG_NAME,
        ONNX_NAME,
        ONNX_NAME + ".data",
        OPENVINO_XML_NAME,
        OPENVINO_BIN_NAME,
        SQNR_PLOT_NAME,
        "README.md",
        RESULTS_NAME,
        *_PROCESSOR_FILES,
    ),
)

#: A Keras QAT folder (``hf_qat.keras.hub.save_keras_qat_model``): keras-hub preset or ``model.keras``.
KERAS_LAYOUT = FolderLayout(
    framework="keras",
    required=(COMPRESSION_STATE_NAME, NNCF_CONFIG_NAME, QUANTIZERS_FILE),
    one_of=(("metadata.json", "model.keras"),),
    pushed=(
        "config.json",
        "metadata.json",
        "model.weights.h5",
        "task.json",
        "task.weights.h5",
        "preprocessor.json",
        "tokenizer.json",
        "image_converter.json",
        "audio_converter.json",
        "assets/*",
        "assets/**",
        "model.keras",
        COMPRESSION_STATE_NAME,
        NNCF_CONFIG_NAME,
        QUANTIZERS_FILE,
        "model.pb",
        "saved_model/*",
        "saved_model/**",
        ONNX_NAME,
        OPENVINO_XML_NAME,
        OPENVINO_BIN_NAME,
        "README.md",
        RESULTS_NAME,
    ),
)


def remove_openvino_files(folder: str | os.PathLike) -> list[str]:
    """Delete ``openvino_model.xml``/``.bin`` from ``folder`` (an IR that no longer matches the model there).
    Returns the names removed."""
    removed = []
    for name in (OPENVINO_XML_NAME, OPENVINO_BIN_NAME):
        path = Path(folder) / name
        if path.exists():
            path.unlink()
            removed.append(name)
    return removed


def quantization_scheme(ctrl: Any) -> dict[str, Any]:
    """A summary of how a controller's model is quantized (bits, modes, granularity, counts, init)."""

    def describe(quantizers: dict) -> dict[str, Any]:
        specs = [q.spec for q in quantizers.values()]
        return {
            "count": len(specs),
            "bits": sorted(Counter(s.num_bits for s in specs)),
            "modes": sorted({s.mode.value for s in specs}),
            "per_channel": sorted({s.per_channel for s in specs}),
            **({"group_size": sorted({s.group_size for s in specs if s.grouped})} if any(s.grouped for s in specs) else {}),
            **({"dynamic_per_token": True} if specs and all(s.dynamic for s in specs) else {}),
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
