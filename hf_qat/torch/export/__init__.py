"""ONNX export of compressed PyTorch models: integer weights, Q/DQ activations, verification."""

from .exporter import DEFAULT_OPSET, ExportResult, export_onnx
from .prepare import onnx_export_mode
from .qdq import QDQParams, qdq_params

__all__ = ["DEFAULT_OPSET", "ExportResult", "export_onnx", "onnx_export_mode", "QDQParams", "qdq_params"]
