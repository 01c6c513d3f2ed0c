"""What an exported ONNX file holds: operator counts, integer weights, custom domains (framework-neutral)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

__all__ = ["OnnxSummary", "summarize"]

_STANDARD_DOMAINS = {"", "ai.onnx"}
_INT8_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
_INT4_TYPES = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


@dataclass
class OnnxSummary:
    """Counts read from an ONNX graph.

    Attributes:
        op_counts: nodes per operator type (main graph and subgraphs).
        custom_domains: operator domains other than the standard ONNX one.
        opset: the default-domain opset.
        int8_initializers: names of int8/uint8 initializers that hold weights (zero points excluded).
        int8_weight_bytes / float_weight_bytes: bytes of int8 and floating-point initializers.
        int4_initializers / int4_weight_bytes: the same for int4/uint4 weights (group-wise, packed two per byte).
        inputs / outputs: ``{name: [dims]}`` with symbolic dims as strings.
    """

    op_counts: Counter = field(default_factory=Counter)
    custom_domains: set[str] = field(default_factory=set)
    opset: int | None = None
    int8_initializers: list[str] = field(default_factory=list)
    int8_weight_bytes: int = 0
    int4_initializers: list[str] = field(default_factory=list)
    int4_weight_bytes: int = 0
    float_weight_bytes: int = 0
    inputs: dict[str, list] = field(default_factory=dict)
    outputs: dict[str, list] = field(default_factory=dict)

    @property
    def num_quantize_linear(self) -> int:
        return self.op_counts.get("QuantizeLinear", 0)

    @property
    def num_dequantize_linear(self) -> int:
        return self.op_counts.get("DequantizeLinear", 0)


def _dims(value_info: onnx.ValueInfoProto) -> list:
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _nbytes(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    if t.data_type in _INT4_TYPES:
        return (n + 1) // 2
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def summarize(model: onnx.ModelProto | str | os.PathLike) -> OnnxSummary:
    """Summarise an ONNX model (a proto or a path; external data is not loaded)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(Path(model)), load_external_data=False)
    s = OnnxSummary()
    s.opset = next((o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS), None)

    def visit(graph: onnx.GraphProto) -> None:
        zero_points = {n.input[2] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2}
        for node in graph.node:
            s.op_counts[node.op_type] += 1
            if node.domain not in _STANDARD_DOMAINS:
                s.custom_domains.add(node.domain)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit(g)
        for init in graph.initializer:
            size = 1
            for d in init.dims:
                size *= d
            if init.data_type in _INT8_TYPES:
                if size > 1 and init.name not in zero_points:
                    s.int8_initializers.append(init.name)
                    s.int8_weight_bytes += _nbytes(init)
            elif init.data_type in _INT4_TYPES:
                if init.name not in zero_points:
                    s.int4_initializers.append(init.name)
                    s.int4_weight_bytes += _nbytes(init)
            elif init.data_type in (
                onnx.TensorProto.FLOAT,
                onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16,
                onnx.TensorProto.DOUBLE,
            ):
                s.float_weight_bytes += _nbytes(init)

    visit(model.graph)
    s.inputs = {i.name: _dims(i) for i in model.graph.input}
    s.outputs = {o.name: _dims(o) for o in model.graph.output}
    return s
