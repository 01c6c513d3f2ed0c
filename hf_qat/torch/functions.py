"""Fake-quantization autograd functions with NNCF's gradients.

Forward (both modes), with ``step = (input_high - input_low) / (level_high - level_low)``::

    out = clamp(round(x / step) + zp, level_low, level_high) - zp) * step

Backward (NNCF legacy, ``quantize_functions.py``):

- ``grad_x = g * 1[input_low <= x <= input_high]`` (clipped straight-through estimator);
- range gradient per element, summed to the scale shape: inside the range ``g * (out - x) / input_range``,
  above it ``g``, below it ``g * level_low / level_high``;
- asymmetric ``grad_input_low = g`` outside the range, 0 inside; zero-point alignment (TuneRange)
  is transparent to gradients.

The element-wise work runs in one fused kernel per direction. The kernels are plain torch code;
on large tensors they are compiled once with ``torch.compile`` (Inductor fuses forward into one
loop and backward into one loop plus a reduction, about 10x faster than eager on CPU). Set
``HF_QAT_COMPILE_KERNELS=0`` to always run them eagerly.
"""

from __future__ import annotations

import functools
import logging
import math
import os

import torch
import torch.fx.experimental._config as _fx_config

__all__ = [
    "fake_quantize_symmetric",
    "fake_quantize_asymmetric",
    "symmetric_grid",
    "asymmetric_grid",
    "tune_range",
    "kernels_compiled",
    "recompute_fake_quantized",
]

logger = logging.getLogger(__name__)

#: Tensors with fewer elements than this use the eager kernels (compiling would not pay off).
COMPILE_MIN_NUMEL = int(os.environ.get("HF_QAT_COMPILE_MIN_NUMEL", 1 << 16))


def _forward_kernel(x: torch.Tensor, inv_step: torch.Tensor, step: torch.Tensor, zp: torch.Tensor, ll: int, lh: int):
    return (torch.clamp(torch.round(x * inv_step) + zp, ll, lh) - zp) * step


def _backward_kernel(
    g: torch.Tensor,
    x: torch.Tensor,
    inv_step: torch.Tensor,
    step: torch.Tensor,
    zp: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    in_range_factor: torch.Tensor,
    above: torch.Tensor,
    below: torch.Tensor,
    ll: int,
    lh: int,
    reduce_dims: list[int],
    need_x: bool,
):
    """Returns ``(grad_x, grad_range, grad_outside)`` (``grad_x`` is ``None`` when not needed).

    ``grad_range`` sums ``g * r`` with ``r = (out - x) * in_range_factor`` inside the range and
    ``above``/``below`` outside; ``grad_outside`` sums ``g`` outside the range.
    """
    out = (torch.clamp(torch.round(x * inv_step) + zp, ll, lh) - zp) * step
    inside = (x >= low) & (x <= high)
    r = torch.where(inside, (out - x) * in_range_factor, torch.where(x > high, above, below))
    grad_range = (g * r).sum(dim=reduce_dims, keepdim=True)
    grad_outside = torch.where(inside, 0.0, g).sum(dim=reduce_dims, keepdim=True)
    grad_x = torch.where(inside, g, 0.0) if need_x else None
    return grad_x, grad_range, grad_outside


_compile_failed = False

#: Graphs each kernel may compile (dynamo's default, 8, is shared by every compiled function; channel
#: counts of 1, views and coinciding sizes each still cost one graph, and several models in one process
#: add theirs, after which dynamo would run new shapes eagerly).
RECOMPILE_LIMIT = 64


@functools.cache
def _compiled(name: str):
    fn = {"forward": _forward_kernel, "backward": _backward_kernel}[name]
    return torch.compile(fn, dynamic=True)


def kernels_compiled() -> bool:
    """Whether large tensors use the compiled kernels (``HF_QAT_COMPILE_KERNELS``, default on)."""
    return os.environ.get("HF_QAT_COMPILE_KERNELS", "1") != "0" and not _compile_failed


def _canonical_layout(x: torch.Tensor, param: torch.Tensor) -> tuple[int, int, int] | None:
    """``(outer, channels, inner)`` such that ``x`` viewed as ``[outer, channels, inner]`` meets ``param``
    viewed as ``[1, channels, 1]`` (``None`` when ``param``'s non-1 dimensions are not one contiguous run of
    ``x``'s dimensions)."""
    if x.dim() == 0 or param.dim() > x.dim():
        return None
    pshape = [1] * (x.dim() - param.dim()) + list(param.shape)
    wide = [i for i, n in enumerate(pshape) if n != 1]
    if not wide:
        return 1, 1, x.numel()
    first, last = wide[0], wide[-1]
    if any(pshape[i] != x.shape[i] for i in range(first, last + 1)):
        return None
    outer = math.prod(x.shape[:first])
    return outer, math.prod(x.shape[first : last + 1]), math.prod(x.shape[last + 1 :])


def _run_compiled(name: str, args: tuple):
    """Run a compiled kernel on ``[outer, channels, inner]`` views, so that quantizers of any rank, layout
    or channel axis share a few compiled graphs instead of one graph per input rank and stride pattern
    (MiniLM alone needed 8 per kernel, dynamo's limit, after which new shapes ran eagerly)."""
    x = args[0] if name == "forward" else args[1]
    param = args[1] if name == "forward" else args[2]
    layout = _canonical_layout(x, param)
    if layout is None:
        return None
    shape3, pshape3 = layout, (1, layout[1], 1)
    # no duck sizing: a hidden size that happens to equal another dimension must not become a guard
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT), _fx_config.patch(use_duck_shape=False):
        return _call_compiled(name, args, shape3, pshape3)


def _flat(t: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """``t`` viewed as ``shape``, detached: a tensor without ``_base`` (dynamo guards on a view's base, whose rank
    and strides differ from call to call, and would compile the kernel again for each)."""
    return t.contiguous().view(shape).detach()


def _call_compiled(name: str, args: tuple, shape3: tuple[int, int, int], pshape3: tuple[int, int, int]):
    if name == "forward":
        xd, *params, ll, lh = args
        out = _compiled(name)(_flat(xd, shape3), *(_flat(p, pshape3) for p in params), ll, lh)
        return out.view(xd.shape).detach()  # not a view: autograd returns it as the output itself
    g, x, *params, ll, lh, _reduce_dims, need_x = args
    grad_x, grad_range, grad_outside = _compiled(name)(
        _flat(g, shape3), _flat(x, shape3), *(_flat(p, pshape3) for p in params), ll, lh, [0, 2], need_x
    )
    return (None if grad_x is None else grad_x.view(x.shape)), grad_range, grad_outside


def _run(name: str, numel: int, *args):
    global _compile_failed
    eager = _forward_kernel if name == "forward" else _backward_kernel
    if numel >= COMPILE_MIN_NUMEL and kernels_compiled() and not torch.jit.is_scripting() and not _is_exporting():
        try:
            out = _run_compiled(name, args)
            if out is not None:
                return out
        except Exception as e:  # no C++ compiler, unsupported platform...: fall back once, loudly
            _compile_failed = True
            logger.warning("hf_qat: compiling the fake-quantization kernels failed (%s); using eager kernels.", e)
    return eager(*args)


def _is_exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _reduce_dims(x: torch.Tensor, param: torch.Tensor) -> list[int]:
    """Dimensions of ``x`` summed to get a gradient of ``param``'s (broadcast) shape."""
    shape = [1] * (x.dim() - param.dim()) + list(param.shape)
    return [i for i, s in enumerate(shape) if s == 1]


def _as_param_shape(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    return grad.reshape(param.shape).to(param.dtype)


class _Recompute:
    """What a saved fake-quantized tensor is recomputed from in backward (see :func:`recompute_fake_quantized`)."""

    __slots__ = ("args", "dtype")

    def __init__(self, args: tuple, dtype: torch.dtype):
        self.args, self.dtype = args, dtype

    def __call__(self) -> torch.Tensor:
        with torch.no_grad():
            return _fake_quantize_as(self.args, self.dtype)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the quantizer math runs in: float32 for half-precision inputs, else the input's own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _fake_quantize_as(args: tuple, dtype: torch.dtype) -> torch.Tensor:
    """The forward kernel on ``args`` (input first, grid tensors already in the compute dtype), in ``dtype``."""
    x, *rest = args
    compute = rest[0].dtype
    out = _run("forward", x.numel(), x.to(compute), *rest)
    return out if out.dtype == dtype else out.to(dtype)


class _RecomputeView:
    """A view (``F.linear`` flattens its input, transposes its weight) of a recomputed fake-quantized tensor."""

    __slots__ = ("base", "size", "stride", "offset")

    def __init__(self, base: _Recompute, t: torch.Tensor):
        self.base, self.size, self.stride, self.offset = base, t.size(), t.stride(), t.storage_offset()

    def __call__(self) -> torch.Tensor:
        return self.base().as_strided(self.size, self.stride, self.offset)


def _pack(t: torch.Tensor):
    base = t if t._base is None else t._base
    info = getattr(base, "_hf_qat_recompute", None)
    # only the output as forward made it: a tensor changed in place since then is saved as it is
    if info is None or info[1] != base._version:
        return t
    return info[0] if base is t else _RecomputeView(info[0], t)


def _unpack(saved):
    return saved() if isinstance(saved, (_Recompute, _RecomputeView)) else saved


def recompute_fake_quantized():
    """A context in which an operation that saves a fake-quantized tensor for its backward (``F.linear`` saves
    its input and weight) keeps instead what the tensor is computed from: the quantizer's input, which the
    fake quantization saves anyway, and its grid. Backward recomputes the tensor with the same kernel, bit
    for bit, so a quantized layer keeps one full-precision activation for backward, as its float layer does,
    instead of two."""
    return torch.autograd.graph.saved_tensors_hooks(_pack, _unpack)


class _FakeQuantize(torch.autograd.Function):
    """Shared forward/backward; ``mode_symmetric`` selects which range parameters get gradients."""

    @staticmethod
    def forward(ctx, x, range_a, range_b, low, high, step, zp, ll: int, lh: int, symmetric: bool):
        # range_a / range_b are the *raw* parameters (scale, or input_low / input_range) and only
        # serve as gradient targets; low/high/step/zp are derived from them (detached).
        # half-precision inputs (bf16 autocast, fp16) are quantized in float32, on the float32 grid that the
        # export writes; the result is rounded back to the input's dtype
        xd = x.detach()
        compute = _compute_dtype(x.dtype)
        inv_step = 1.0 / step
        args = (xd, inv_step.to(compute), step.to(compute), zp.to(compute), ll, lh)
        out = _fake_quantize_as(args, x.dtype)
        ctx.save_for_backward(xd, range_a, range_b, low, high, step, zp)  # the input as given: no float32 copy kept
        if x.requires_grad or range_a.requires_grad or range_b.requires_grad:  # training: see recompute_fake_quantized
            out._hf_qat_recompute = (_Recompute(args, x.dtype), out._version)
        ctx.levels = (ll, lh)
        ctx.symmetric = symmetric
        return out

    @staticmethod
    def backward(ctx, g):
        x, range_a, range_b, low, high, step, zp = ctx.saved_tensors
        ll, lh = ctx.levels
        in_dtype = x.dtype
        dt = _compute_dtype(in_dtype)
        x, g = x.to(dt), g.to(dt)
        input_range = high - low
        if ctx.symmetric:
            # d/d(scale): inside (out - x)/input_range, above 1, below ll/lh.
            in_factor, above, below = 1.0 / input_range, torch.ones_like(step), torch.full_like(step, ll / lh)
        else:
            # d/d(input_range): inside (out - x)/input_range, above 1, below 0.
            in_factor, above, below = 1.0 / input_range, torch.ones_like(step), torch.zeros_like(step)
        reduce_dims = _reduce_dims(x, range_a)
        grad_x, grad_range, grad_outside = _run(
            "backward",
            x.numel(),
            g.contiguous(),
            x,
            (1.0 / step).to(dt),
            step.to(dt),
            zp.to(dt),
            low.to(dt),
            high.to(dt),
            in_factor.to(dt),
            above.to(dt),
            below.to(dt),
            ll,
            lh,
            reduce_dims,
            ctx.needs_input_grad[0],
        )
        if grad_x is not None and grad_x.dtype != in_dtype:
            grad_x = grad_x.to(in_dtype)
        if ctx.symmetric:
            grad_scale = _as_param_shape(grad_range, range_a) * torch.where(range_a >= 0, 1.0, -1.0)
            return grad_x, grad_scale, None, None, None, None, None, None, None, None
        grad_low = _as_param_shape(grad_outside, range_a)
        grad_rng = _as_param_shape(grad_range, range_b) * torch.where(range_b >= 0, 1.0, -1.0)
        return grad_x, grad_low, grad_rng, None, None, None, None, None, None, None


def fake_quantize_symmetric(x: torch.Tensor, scale: torch.Tensor, level_low: int, level_high: int, eps: float = 1e-16):
    """Symmetric fake quantization: range ``[scale * ll / lh, scale]`` on the grid ``[ll, lh]``.

    ``scale`` broadcasts against ``x`` (shape ``[1]`` per tensor, ``[C, 1, ...]`` per channel); its
    absolute value plus ``eps`` is used, as in NNCF.
    """
    low, high, step, zp = symmetric_grid(scale, level_low, level_high, eps)
    return _FakeQuantize.apply(x, scale, scale, low, high, step, zp, level_low, level_high, True)


def symmetric_grid(scale: torch.Tensor, level_low: int, level_high: int, eps: float = 1e-16):
    """``(low, high, step, zero_point)`` of a symmetric quantizer (float32, detached, ``scale``'s shape).

    Training (:func:`fake_quantize_symmetric`) and ONNX export both take the grid from here, so the
    exported ``QuantizeLinear``/``DequantizeLinear`` scale is bit-identical to the trained step.
    """
    s = (scale.detach().abs() + eps).to(torch.float32)
    step = s / level_high
    return step * level_low, s, step, torch.zeros_like(s)


def tune_range(input_low: torch.Tensor, input_range: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-point alignment of asymmetric ranges (element-wise; see :func:`hf_qat.core.spec.tune_range`)."""
    n = levels - 1
    il = torch.clamp(input_low, max=0.0)
    ih = torch.clamp(input_low + input_range, min=0.0)
    span = torch.clamp(ih - il, min=torch.finfo(il.dtype).tiny)
    zp = torch.round(-il * n / span)
    il2 = torch.where(zp < n, zp / torch.where(zp < n, zp - n, -1.0) * ih, il)
    ih2 = torch.where(zp > 0, (zp - n) / torch.where(zp > 0, zp, 1.0) * il, ih)
    # both candidates aligned: keep the wider one; at the ends of the grid only one bound can move
    use_low = torch.where((zp > 0) & (zp < n), (ih - il2) > (ih2 - il), zp <= 0)
    new_low = torch.where(use_low, il2, il)
    new_range = torch.where(use_low, ih - il2, ih2 - il)
    return new_low, new_range


def fake_quantize_asymmetric(
    x: torch.Tensor, input_low: torch.Tensor, input_range: torch.Tensor, level_low: int, level_high: int, eps: float = 1e-16
):
    """Asymmetric fake quantization of ``[input_low, input_low + |input_range| + eps]`` after zero-point alignment."""
    low, high, step, zp = asymmetric_grid(input_low, input_range, level_low, level_high, eps)
    return _FakeQuantize.apply(x, input_low, input_range, low, high, step, zp, level_low, level_high, False)


def asymmetric_grid(input_low: torch.Tensor, input_range: torch.Tensor, level_low: int, level_high: int, eps: float = 1e-16):
    """``(low, high, step, zero_point)`` of an asymmetric quantizer after zero-point alignment
    (float32, detached, the parameters' shape); see :func:`symmetric_grid`."""
    levels = level_high - level_low + 1
    il, ir = tune_range(input_low.detach().float(), input_range.detach().float().abs() + eps, levels)
    step = ir / (level_high - level_low)
    zp = torch.round(-il / step)
    return il, il + ir, step, zp
