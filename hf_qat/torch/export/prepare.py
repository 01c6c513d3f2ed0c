"""Put a compressed model into ONNX export mode, and take it out again.

Inside :func:`onnx_export_mode`:

- every enabled activation quantizer emits ``QuantizeLinear → [Clip →] DequantizeLinear`` with its
  trained step and zero point (non-persistent buffers ``onnx_scale`` / ``onnx_zero_point``);
- every quantized layer reads its weight from an integer buffer ``weight_quantized`` through
  ``DequantizeLinear`` (``weight_scale`` / ``weight_zero_point``), so the FP32 weight is not part of
  the exported graph; ``nn.Linear`` stores it transposed (``[in, out]``) to feed ``MatMul`` directly,
  ``nn.Embedding`` gathers integer rows first and dequantizes only those;
- disabled quantizers are identities.

On exit every instance attribute and buffer added here is removed (instance-level ``forward``
overrides that were there before, e.g. from hook libraries, are put back) and every module's
training flag is restored: the model is as before, also when export fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ExportError
from ..insertion import CONTAINER_NAME
from ..layers import is_wrapped, layer_kind
from ..quantizers import BaseQuantizer, token_steps
from .qdq import QDQParams, dequantize, qdq_params, quantize

__all__ = ["ExportPlan", "onnx_export_mode", "model_quantizers"]


@dataclass
class ExportPlan:
    """What export mode did to the model (filled while the model runs in export mode)."""

    quantized: bool
    weight_quantizers: dict[str, BaseQuantizer] = field(default_factory=dict)
    activation_quantizers: dict[str, BaseQuantizer] = field(default_factory=dict)
    emitted_activations: set[str] = field(default_factory=set)
    emitted_weights: set[str] = field(default_factory=set)

    def reset(self) -> None:
        self.emitted_activations.clear()
        self.emitted_weights.clear()
        for q in self.activation_quantizers.values():
            fwd = q.__dict__.get("forward")
            if isinstance(fwd, _ActivationForward):
                fwd.last = None


def model_quantizers(model: nn.Module) -> tuple[dict[str, BaseQuantizer], dict[str, BaseQuantizer], list[nn.Module]]:
    """``(weight_quantizers, activation_quantizers, wrapped_layers)`` of a compressed model."""
    weights: dict[str, BaseQuantizer] = {}
    layers = []
    for name, m in model.named_modules():
        if is_wrapped(m):
            layers.append(m)
            wq = m.weight_quantizer
            if wq is not None:
                weights[getattr(wq, "_hf_qat_id", name)] = wq
    container = getattr(model, CONTAINER_NAME, None)
    activations = dict(container.external_quantizers.items()) if container is not None else {}
    return weights, activations, layers


_NONE = object()


def training_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every module's ``training`` flag (``model.train(flag)`` would overwrite per-module modes)."""
    return [(m, m.training) for m in model.modules()]


def restore_training_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    for m, flag in modes:
        m.training = flag


class _ActivationForward:
    """Export-mode ``forward`` of an activation quantizer.

    A quantizer shared by several consumers of one tensor (query/key/value inputs) emits one
    ``QuantizeLinear`` and one ``DequantizeLinear`` per consumer: ONNX Runtime fuses a
    ``DequantizeLinear`` into an integer ``MatMul`` only when that product is its sole consumer.
    """

    def __init__(self, quantizer: BaseQuantizer, qid: str, plan: ExportPlan, clip: bool):
        self.q, self.qid, self.plan, self.clip = quantizer, qid, plan, clip
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q
        scale = q.onnx_scale.to(x.dtype) if x.dtype != q.onnx_scale.dtype else q.onnx_scale
        if self.last is not None and self.last[0] is x:
            ints = self.last[1]
        else:
            clip = (q.onnx_clip_low, q.onnx_clip_high) if self.clip else None
            ints = quantize(x, scale, q.onnx_zero_point, q.onnx_axis, clip)
            self.last = (x, ints)
        self.plan.emitted_activations.add(self.qid)
        return dequantize(ints, scale, q.onnx_zero_point, q.onnx_axis)


class _DynamicForward:
    """Export-mode ``forward`` of a per-token dynamic quantizer: its arithmetic in standard float operators
    (``ReduceMax(|x|) / level_high``, ``Round``, ``Clip``, ``Mul``), the same values as in training. ONNX's
    ``QuantizeLinear`` takes no per-row scale computed in the graph before opset 21's blocked form, which ONNX
    Runtime does not fuse either."""

    def __init__(self, quantizer: BaseQuantizer, qid: str, plan: ExportPlan):
        self.q, self.qid, self.plan = quantizer, qid, plan

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        ll, lh = self.q.levels()
        step = token_steps(x, lh).to(x.dtype)
        self.plan.emitted_activations.add(self.qid)
        return torch.clamp(torch.round(x / step), ll, lh) * step


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _register(module: nn.Module, added: list[tuple[nn.Module, str]], name: str, value: torch.Tensor) -> None:
    module.register_buffer(name, value, persistent=False)
    added.append((module, name))


def _dequantized_weight(layer: nn.Module) -> torch.Tensor:
    return dequantize(
        layer.weight_quantized, layer.weight_scale, layer.weight_zero_point, layer.onnx_weight_axis, layer.onnx_weight_block
    )


def _input(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    iq = layer.__dict__.get("_hf_qat_input_quantizer")
    return x if iq is None else iq(x)


def _output(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    oq = layer.__dict__.get("_hf_qat_output_quantizer")
    return y if oq is None else oq(y)


def _linear_export(layer: nn.Module, plan: ExportPlan, qid: str) -> Callable:
    def forward(x):
        plan.emitted_weights.add(qid)
        y = torch.matmul(_input(layer, x), _dequantized_weight(layer))
        return _output(layer, y if layer.bias is None else y + layer.bias)

    return forward


def _conv_export(layer: nn.Module, plan: ExportPlan, qid: str) -> Callable:
    def forward(x):
        plan.emitted_weights.add(qid)
        return _output(layer, layer._conv_forward(_input(layer, x), _dequantized_weight(layer), layer.bias))

    return forward


def _conv1d_transformers_export(layer: nn.Module, plan: ExportPlan, qid: str) -> Callable:
    def forward(x):
        plan.emitted_weights.add(qid)
        size_out = x.size()[:-1] + (layer.nf,)
        # flattened before the (per-tensor or last-axis) input quantizer, not after: the same values, and the
        # DequantizeLinear feeds the Gemm directly (ONNX Runtime 1.32 fails to load the opset-21 graph it makes
        # when it moves a Q/DQ pair across the Reshape: "output_dtype INT8 does not match y_zero_point type UINT8")
        x = torch.addmm(layer.bias, _input(layer, x.reshape(-1, x.size(-1))), _dequantized_weight(layer))
        return _output(layer, x.view(size_out))

    return forward


def _embedding_export(layer: nn.Module, plan: ExportPlan, qid: str) -> Callable:
    def forward(ids):
        return _output(layer, _rows(ids))

    def _rows(ids):
        plan.emitted_weights.add(qid)
        if layer.max_norm is not None or layer.onnx_weight_block is not None:
            # renormalisation needs the whole (dequantized) table; group-wise tables are dequantized whole too
            return F.embedding(ids, _dequantized_weight(layer), None, layer.max_norm, layer.norm_type)
        rows = F.embedding(ids, layer.weight_quantized)
        if layer.onnx_weight_axis is None:
            return dequantize(rows, layer.weight_scale, layer.weight_zero_point, None)
        # one scale per row: gather the scales (and zero points) with the rows; standard ops only
        scale = F.embedding(ids, layer.weight_row_scale)
        values = rows.to(scale.dtype)
        if layer.onnx_weight_zp_nonzero:
            values = values - F.embedding(ids, layer.weight_row_zero_point)
        return values * scale

    return forward


def _float_export(layer: nn.Module) -> Callable:
    """The layer's own float computation (weight not quantized), input quantizer kept."""
    base_forward = layer_kind(layer).base.forward

    def forward(x, *args, **kwargs):
        return _output(layer, base_forward(layer, _input(layer, x), *args, **kwargs))

    return forward


def _export_forward_factory(layer: nn.Module) -> Callable[[nn.Module, ExportPlan, str], Callable]:
    base = layer_kind(layer).base
    if issubclass(base, nn.Linear):
        return _linear_export
    if issubclass(base, nn.Embedding):
        return _embedding_export
    if issubclass(base, nn.modules.conv._ConvNd):
        return _conv_export
    return _conv1d_transformers_export


def _check_initialised(quantizers: dict[str, BaseQuantizer]) -> None:
    missing = [qid for qid, q in quantizers.items() if q.is_enabled_quantization and not q.initialized]
    if missing:
        shown = "\n  ".join(missing[:10]) + (f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ExportError(
            f"{len(missing)} quantizer(s) were never initialised, so their ranges are meaningless:\n  {shown}\n"
            "Register calibration data with hf_qat.register_default_init_args(config, loader) before "
            "create_compressed_model, or load a checkpoint's state_dict, before exporting. Nothing was written."
        )


@contextlib.contextmanager
def onnx_export_mode(model: nn.Module, quantized: bool = True) -> Iterator[ExportPlan]:
    """Run ``model`` in ONNX export mode inside the block (see the module docstring).

    Args:
        model: a model compressed by hf_qat (an uncompressed model passes through unchanged).
        quantized: emit the quantizers; ``False`` exports the model's float computation
            (quantizers as identities, FP32 weights).

    Raises:
        [`ExportError`]: an enabled quantizer was never initialised (nothing is modified).
    """
    weights, activations, layers = model_quantizers(model)
    plan = ExportPlan(quantized, weights, activations)
    if quantized:
        _check_initialised({**weights, **activations})
    modes = training_modes(model)
    forwards: list[tuple[nn.Module, Any]] = []  # (module, its own instance forward before, if any)
    added: list[tuple[nn.Module, str]] = []
    try:
        model.eval()
        with torch.no_grad():
            for qid, q in activations.items():
                if quantized and q.is_enabled_quantization and q.spec.dynamic:
                    forwards.append((q, q.__dict__.get("forward", _NONE)))
                    q.forward = _DynamicForward(q, qid, plan)
                elif quantized and q.is_enabled_quantization:
                    try:
                        p = qdq_params(q)
                    except ValueError as e:
                        raise ExportError(f"activation quantizer {qid!r}: {e}", module=qid) from None
                    _register(q, added, "onnx_scale", p.scale)
                    _register(q, added, "onnx_zero_point", p.zero_point)
                    _register(q, added, "onnx_clip_low", torch.tensor(p.level_low, dtype=p.dtype))
                    _register(q, added, "onnx_clip_high", torch.tensor(p.level_high, dtype=p.dtype))
                    q.onnx_axis = p.axis
                    forwards.append((q, q.__dict__.get("forward", _NONE)))
                    q.forward = _ActivationForward(q, qid, plan, p.needs_clip)
                else:
                    forwards.append((q, q.__dict__.get("forward", _NONE)))
                    q.forward = _identity
            for layer in layers:
                wq = layer.weight_quantizer
                if wq is None:
                    continue
                qid = getattr(wq, "_hf_qat_id", type(layer).__name__)
                forwards.append((layer, layer.__dict__.get("forward", _NONE)))
                if not (quantized and wq.is_enabled_quantization):
                    layer.forward = _float_export(layer)
                    continue
                _prepare_weight(layer, wq, qid, added)
                layer.forward = _export_forward_factory(layer)(layer, plan, qid)
        yield plan
    finally:
        for m, previous in reversed(forwards):
            if previous is _NONE:
                m.__dict__.pop("forward", None)
            else:  # e.g. a hook library's instance-level forward
                m.__dict__["forward"] = previous
            m.__dict__.pop("onnx_axis", None)
            m.__dict__.pop("onnx_weight_axis", None)
            m.__dict__.pop("onnx_weight_zp_nonzero", None)
            m.__dict__.pop("onnx_weight_block", None)
        for m, name in added:
            m._buffers.pop(name, None)
        restore_training_modes(modes)


def _prepare_weight(layer: nn.Module, wq: BaseQuantizer, qid: str, added: list) -> None:
    weight = layer.weight.detach()
    try:
        p: QDQParams = qdq_params(wq, ndim=weight.dim())
    except ValueError as e:
        raise ExportError(f"weight quantizer {qid!r}: {e}", module=qid) from None
    ints = wq.to_integers(weight).to(p.dtype)
    axis = p.axis
    scale, zero_point = p.scale, p.zero_point
    if isinstance(layer, nn.Linear):
        ints = ints.t().contiguous()
        axis = None if axis is None else 1 - axis
        if p.block_size is not None:  # blocked scales have the weight's rank: transposed with it
            scale, zero_point = scale.t().contiguous(), zero_point.t().contiguous()
    _register(layer, added, "weight_quantized", ints)
    _register(layer, added, "weight_scale", scale.to(weight.dtype) if weight.is_floating_point() else scale)
    _register(layer, added, "weight_zero_point", zero_point)
    layer.onnx_weight_block = p.block_size
    if isinstance(layer, nn.Embedding) and axis is not None and p.block_size is None:
        # rows are gathered before dequantization: per-row scales (and zero points) as [rows, 1] tables
        _register(layer, added, "weight_row_scale", layer.weight_scale.unsqueeze(1).contiguous())
        _register(layer, added, "weight_row_zero_point", p.zero_point.to(layer.weight_scale.dtype).unsqueeze(1).contiguous())
    layer.onnx_weight_axis = axis
    layer.onnx_weight_zp_nonzero = bool(p.zero_point.any())


@contextlib.contextmanager
def reference_mode(model: nn.Module, quantized: bool) -> Iterator[None]:
    """Quantizers off while computing FP32 reference outputs (``quantized=False``); nothing changes otherwise."""
    if quantized:
        yield
        return
    weights, activations, _ = model_quantizers(model)
    quantizers = list(weights.values()) + list(activations.values())
    states = [q.is_enabled_quantization for q in quantizers]
    try:
        for q in quantizers:
            q.disable_quantization()
        yield
    finally:
        for q, enabled in zip(quantizers, states):
            if enabled:
                q.enable_quantization()
