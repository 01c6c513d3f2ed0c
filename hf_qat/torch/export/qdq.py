"""ONNX ``QuantizeLinear`` / ``DequantizeLinear`` parameters of a quantizer, and how to emit the nodes.

A trained quantizer computes ``out = (clamp(round(x / step) + zp, ll, lh) - zp) * step`` on its
integer grid ``[ll, lh]``. In ONNX that is ``DequantizeLinear(QuantizeLinear(x, step, zp), step, zp)``
with the zero point stored as int8 (signed grids) or uint8, plus a ``Clip`` to ``[ll, lh]`` between
the two when the grid is narrower than the storage type (sub-8-bit, narrow-range activations,
``half_range``): the exported graph computes on exactly the grid the model trained on.

Weights are stored as integers: ``DequantizeLinear(w_int, step, zp)`` with ``w_int`` an int8/uint8
initializer, already on the trained grid (no ``Clip`` needed).

Two exporters are supported, and the nodes are emitted differently for each:

- ``torch.onnx.export(dynamo=True)`` (torch's default): :func:`torch.onnx.ops.symbolic` nodes;
- the TorchScript exporter (``dynamo=False``): autograd functions with ``symbolic`` methods.

Which one is active is set by :func:`emitting_for` around an export.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..quantizers import BaseQuantizer

__all__ = ["QDQParams", "qdq_params", "emitting_for", "quantize", "dequantize", "EXPORTERS"]

EXPORTERS = ("dynamo", "torchscript")
_STORAGE_RANGE = {torch.int8: (-128, 127), torch.uint8: (0, 255)}
_ONNX_OPSET = {"value": 18}
_ACTIVE = {"exporter": None}


@dataclass
class QDQParams:
    """What a quantizer exports to.

    Attributes:
        scale (`torch.Tensor`): float32 step, 0-d (per tensor) or 1-d along ``axis``.
        zero_point (`torch.Tensor`): int8 or uint8, same shape as ``scale``.
        axis (`int`, *optional*): per-channel axis of the quantized tensor (group-wise: the blocked axis).
        level_low, level_high (`int`): the trained integer grid.
        block_size (`int`, *optional*): group-wise weights: ``DequantizeLinear``'s ``block_size`` (opset 21);
            ``scale`` then has the weight's rank, the blocked axis divided by ``block_size``.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    axis: int | None
    level_low: int
    level_high: int
    block_size: int | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.zero_point.dtype

    @property
    def needs_clip(self) -> bool:
        """Whether the grid is narrower than the int8/uint8 range (``Clip`` between Q and DQ)."""
        return (self.level_low, self.level_high) != _STORAGE_RANGE[self.dtype]


def qdq_params(quantizer: BaseQuantizer, ndim: int | None = None, axis_offset: int = 0) -> QDQParams:
    """The ``QuantizeLinear``/``DequantizeLinear`` parameters of ``quantizer``.

    Args:
        quantizer: an initialised quantizer.
        ndim: rank of the tensor it quantizes (per-channel axes are given relative to it); defaults
            to the rank of the scale.
        axis_offset: added to the channel axis (e.g. to address a transposed weight).

    Raises:
        `ValueError`: a grid that int8/uint8 cannot hold (more than 8 bits) or a non-finite step.
    """
    ll, lh = quantizer.levels()
    dtype = torch.int8 if ll < 0 else torch.uint8
    lo, hi = _STORAGE_RANGE[dtype]
    if ll < lo or lh > hi:
        raise ValueError(f"the grid [{ll}, {lh}] does not fit {dtype}; ONNX export supports up to 8 bits")
    _, _, step, zp = quantizer.grid_tensors()
    if not bool(torch.isfinite(step).all()) or not bool((step > 0).all()):
        raise ValueError("the quantization step is not finite and positive")
    axis = quantizer.spec.channel_axis
    if quantizer.spec.grouped:  # scale_shape [..., groups at group_axis, ..., 1] -> the weight's rank
        scale, zero_point = step.squeeze(-1), zp.squeeze(-1)
        return QDQParams(
            scale.contiguous(),
            zero_point.round().to(dtype).contiguous(),
            quantizer.spec.group_axis + axis_offset,
            ll,
            lh,
            quantizer.spec.group_size,
        )
    if axis is not None:
        scale = step.reshape(-1)
        zero_point = zp.reshape(-1)
        shift = (ndim if ndim is not None else step.dim()) - step.dim()
        axis = axis + shift + axis_offset
    else:
        scale = step.reshape(())
        zero_point = zp.reshape(())
    return QDQParams(scale.contiguous(), zero_point.round().to(dtype).contiguous(), axis, ll, lh)


@contextlib.contextmanager
def emitting_for(exporter: str, opset: int) -> Iterator[None]:
    """Emit Q/DQ nodes for ``exporter`` (``"dynamo"`` or ``"torchscript"``) at ``opset`` inside the block."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    previous = dict(_ACTIVE), dict(_ONNX_OPSET)
    _ACTIVE["exporter"], _ONNX_OPSET["value"] = exporter, opset
    try:
        yield
    finally:
        _ACTIVE.update(previous[0])
        _ONNX_OPSET.update(previous[1])


# -- reference computations (what the ONNX nodes compute, for tracing) -----------------------------
def _bshape(t: torch.Tensor, axis: int | None, ndim: int) -> torch.Tensor:
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


def _ref_quantize(x, scale, zp, axis, dtype):
    lo, hi = _STORAGE_RANGE[dtype]
    s, z = _bshape(scale, axis, x.dim()), _bshape(zp, axis, x.dim())
    return torch.clamp(torch.round(x / s) + z.to(x.dtype), lo, hi).to(dtype)


def _ref_dequantize(q, scale, zp, axis, block_size=None):
    if block_size is not None:  # blocked: scale and zero point repeated along the blocked axis
        s, z = scale.repeat_interleave(block_size, dim=axis), zp.repeat_interleave(block_size, dim=axis)
    else:
        s, z = _bshape(scale, axis, q.dim()), _bshape(zp, axis, q.dim())
    return (q.to(torch.int32) - z.to(torch.int32)).to(scale.dtype) * s


# -- TorchScript exporter: autograd functions with ONNX symbolics -----------------------------------
def _axis_attr(axis: int | None, block_size: int | None = None) -> dict:
    attrs = {} if axis is None else {"axis_i": axis}
    return attrs if block_size is None else {**attrs, "block_size_i": block_size}


class _TSQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zp, axis):
        return _ref_quantize(x, scale, zp, axis, zp.dtype)

    @staticmethod
    def symbolic(g, x, scale, zp, axis):
        return g.op("QuantizeLinear", x, scale, zp, **_axis_attr(axis))


class _TSDequantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, scale, zp, axis, block_size=None):
        return _ref_dequantize(q, scale, zp, axis, block_size)

    @staticmethod
    def symbolic(g, q, scale, zp, axis, block_size=None):
        return g.op("DequantizeLinear", q, scale, zp, **_axis_attr(axis, block_size))


class _TSClip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, low, high):
        return torch.clamp(q.to(torch.int32), int(low), int(high)).to(q.dtype)

    @staticmethod
    def symbolic(g, q, low, high):
        return g.op("Clip", q, low, high)


# -- emission -------------------------------------------------------------------------------------
def _symbolic(op: str, inputs, attrs, dtype, shape):
    return torch.onnx.ops.symbolic(op, inputs, attrs, dtype=dtype, shape=shape, version=_ONNX_OPSET["value"])


def _quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, axis: int | None) -> torch.Tensor:
    if _ACTIVE["exporter"] == "dynamo":
        return _symbolic("QuantizeLinear", (x, scale, zp), {} if axis is None else {"axis": axis}, zp.dtype, x.shape)
    if _ACTIVE["exporter"] == "torchscript":
        return _TSQuantize.apply(x, scale, zp, axis)
    return _ref_quantize(x, scale, zp, axis, zp.dtype)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, axis: int | None, block_size: int | None = None
) -> torch.Tensor:
    """``DequantizeLinear(q, scale, zp)`` (float32 output); with ``block_size``, blocked (opset 21)."""
    if _ACTIVE["exporter"] == "dynamo":
        attrs = {} if axis is None else {"axis": axis}
        if block_size is not None:
            attrs["block_size"] = block_size
        return _symbolic("DequantizeLinear", (q, scale, zp), attrs, scale.dtype, q.shape)
    if _ACTIVE["exporter"] == "torchscript":
        return _TSDequantize.apply(q, scale, zp, axis, block_size)
    return _ref_dequantize(q, scale, zp, axis, block_size)


def _clip(q: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    if _ACTIVE["exporter"] == "dynamo":
        return _symbolic("Clip", (q, low, high), {}, q.dtype, q.shape)
    if _ACTIVE["exporter"] == "torchscript":
        return _TSClip.apply(q, low, high)
    return torch.clamp(q.to(torch.int32), int(low), int(high)).to(q.dtype)


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int | None,
    clip: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``QuantizeLinear → [Clip]`` of an activation: the integer tensor.

    ``clip`` holds the grid bounds (0-d tensors of the zero point's dtype) when the trained grid is
    narrower than the storage type.
    """
    if x.dtype != scale.dtype:  # half-precision models: scales follow the activations
        scale = scale.to(x.dtype)
    q = _quantize(x, scale, zero_point, axis)
    if clip is not None:
        q = _clip(q, clip[0], clip[1])
    return q
