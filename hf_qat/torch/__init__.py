"""PyTorch backend: quantizers, insertion, calibration, controller, checkpoints and INT8 ONNX export.

ONNX export (``export_onnx``, ``verify_onnx``, ``ExportResult``) loads on first use: it needs the
``onnx`` extra, the rest of the backend only the ``torch`` extra.
"""

from ..utils.imports import require

require("torch", feature="hf_qat.torch (the PyTorch backend)")

from ..utils.lazy import attach
from .checkpoint import load_checkpoint, load_state, nncf_checkpoint_from_folder, to_nncf_state_dict
from .controller import CompressionStage, QuantizationController
from .init import (
    BNAdaptationInitArgs,
    InitializingDataLoader,
    QuantizationRangeInitArgs,
    register_default_init_args,
)
from .layers import (
    NNCFConv1d,
    NNCFConv2d,
    NNCFConv3d,
    NNCFEmbedding,
    NNCFLinear,
)
from .model_creation import create_compressed_model
from .nncf3 import get_nncf3_config, load_nncf3, nncf3_state_dict
from .nncf_restore import restore_nncf_checkpoint
from .quantizers import AsymmetricQuantizer, BaseQuantizer, SymmetricQuantizer

__getattr__, __dir__ = attach(__name__, {"export": ["ExportResult", "export_onnx"], "export.verify": ["verify_onnx"]})

__all__ = [
    "create_compressed_model",
    "register_default_init_args",
    "load_state",
    "load_checkpoint",
    "to_nncf_state_dict",
    "nncf_checkpoint_from_folder",
    "load_nncf3",
    "restore_nncf_checkpoint",
    "get_nncf3_config",
    "nncf3_state_dict",
    "export_onnx",
    "verify_onnx",
    "ExportResult",
    "QuantizationController",
    "CompressionStage",
    "InitializingDataLoader",
    "QuantizationRangeInitArgs",
    "BNAdaptationInitArgs",
    "BaseQuantizer",
    "SymmetricQuantizer",
    "AsymmetricQuantizer",
    "NNCFLinear",
    "NNCFConv1d",
    "NNCFConv2d",
    "NNCFConv3d",
    "NNCFEmbedding",
]
