"""Framework-neutral ONNX tooling: run exported files in ONNX Runtime / OpenVINO, summarise and verify them,
name quantizers and rewrite graphs for both exporters. Needs the ``onnx`` extra."""

from ..utils.imports import require

require("onnx", feature="hf_qat.onnx (ONNX export, verification and runtimes)")

from .openvino import (
    OPENVINO_BIN_NAME,
    OPENVINO_XML_NAME,
    OpenVINOResult,
    PrecisionCheck,
    convert_to_openvino,
    remove_openvino_files,
)
from .runtime import RUNTIMES, OnnxRunner, load_runner, optimized_op_counts
from .summary import OnnxSummary, summarize
from .verify import (
    MAX_TIE_FRACTION,
    MIN_TIE_COUNT,
    OutputComparison,
    QuantizerComparison,
    VerificationReport,
    compare_outputs,
    compare_quantized,
    tap_activation_quantizers,
    verify_outputs,
)

__all__ = [
    "OPENVINO_XML_NAME",
    "OPENVINO_BIN_NAME",
    "OpenVINOResult",
    "PrecisionCheck",
    "convert_to_openvino",
    "remove_openvino_files",
    "RUNTIMES",
    "OnnxRunner",
    "load_runner",
    "optimized_op_counts",
    "OnnxSummary",
    "summarize",
    "MAX_TIE_FRACTION",
    "MIN_TIE_COUNT",
    "OutputComparison",
    "QuantizerComparison",
    "compare_quantized",
    "tap_activation_quantizers",
    "VerificationReport",
    "compare_outputs",
    "verify_outputs",
]
