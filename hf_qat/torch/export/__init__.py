"""ONNX export of compressed PyTorch models: integer weights, Q/DQ activations, verification.

Needs the ``onnx`` extra (onnx, onnxscript, onnxruntime; openvino for its runtime check).
"""

from ...utils.imports import require

require("onnx", feature="ONNX export (hf_qat.torch.export)")
require("onnxruntime", feature="ONNX export verification (hf_qat.torch.export)")

from .exporter import DEFAULT_OPSET, ExportResult, export_onnx
from .prepare import onnx_export_mode
from .qdq import QDQParams, qdq_params

__all__ = ["DEFAULT_OPSET", "ExportResult", "export_onnx", "onnx_export_mode", "QDQParams", "qdq_params"]
