"""PyTorch backend: quantizers, insertion, calibration, controller and checkpoints."""

from .checkpoint import load_state
from .controller import CompressionStage, QuantizationController
from .init import (
    BNAdaptationInitArgs,
    InitializingDataLoader,
    QuantizationRangeInitArgs,
    register_default_init_args,
)
from .export import ExportResult, export_onnx
from .export.verify import verify_onnx
from .model_creation import create_compressed_model
from .quantizers import AsymmetricQuantizer, BaseQuantizer, SymmetricQuantizer

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
]
