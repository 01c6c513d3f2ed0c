"""PyTorch backend: quantizers, insertion, calibration, controller, checkpoints and INT8 ONNX export.

ONNX export (``export_onnx``, ``verify_onnx``, ``ExportResult``) loads on first use: it needs the
``onnx`` extra, the rest of the backend only the ``torch`` extra.
"""

from ..utils.imports import require

require("torch", feature="hf_qat.torch (the PyTorch backend)")

from ..utils.lazy import attach  # noqa: E402
from .checkpoint import load_state  # noqa: E402
from .controller import CompressionStage, QuantizationController  # noqa: E402
from .init import (  # noqa: E402
    BNAdaptationInitArgs,
    InitializingDataLoader,
    QuantizationRangeInitArgs,
    register_default_init_args,
)
from .layers import (  # noqa: E402
    NNCFConv1d,
    NNCFConv2d,
    NNCFConv3d,
    NNCFEmbedding,
    NNCFLinear,
)
from .model_creation import create_compressed_model  # noqa: E402
from .quantizers import AsymmetricQuantizer, BaseQuantizer, SymmetricQuantizer  # noqa: E402

__getattr__, __dir__ = attach(__name__, {"export": ["ExportResult", "export_onnx"], "export.verify": ["verify_onnx"]})

__all__ = [
    "create_compressed_model",
    "register_default_init_args",
    "load_state",
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
