"""Trainable fake-quantizer modules (symmetric and asymmetric), NNCF state-dict compatible.

State-dict entries follow NNCF's names: ``scale`` and ``signed_tensor`` (symmetric),
``input_low`` and ``input_range`` (asymmetric), plus ``enabled`` and ``_num_bits`` on both.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.quantizer import Grid
from ..core.spec import QuantizerSpec
from ..core.statistics import BatchStatistics, RangeCollector, asymmetric_range, symmetric_range
from .functions import asymmetric_grid, fake_quantize_asymmetric, fake_quantize_symmetric, symmetric_grid

__all__ = ["BaseQuantizer", "SymmetricQuantizer", "AsymmetricQuantizer", "DynamicPerTokenQuantizer", "create_quantizer"]

logger = logging.getLogger(__name__)

#: Largest random subsample per channel and batch kept for percentile-type range statistics.
MAX_VALUES_PER_BATCH = 1 << 16


class BaseQuantizer(nn.Module):
    """A fake quantizer: ``forward(x)`` returns ``x`` rounded to the quantizer's integer grid.

    Args:
        spec (`QuantizerSpec`): bits, mode, narrow/half range and scale shape.
        shared (`bool`): the quantizer serves several consumers of the same tensor; consecutive calls
            with the same (unmodified) tensor return the first result instead of recomputing it.
    """

    def __init__(self, spec: QuantizerSpec, shared: bool = False):
        super().__init__()
        self.spec = spec
        self.shared = shared
        self.register_buffer("_num_bits", torch.tensor([spec.num_bits], dtype=torch.int32))
        self.register_buffer("enabled", torch.ones(1, dtype=torch.int32))
        self._enabled = True
        self.initialized = False
        self._collector: RangeCollector | None = None
        self._memo: tuple[Any, ...] | None = None
        self._warned_nonfinite = False
        self._lr_multiplier: float | None = None
        self._lr_hooks: list[Any] = []

    def _finish_init(self) -> None:
        """Called by subclasses once their range parameters exist."""
        if self.spec.compression_lr_multiplier is not None:
            self._set_lr_multiplier(self.spec.compression_lr_multiplier)

    # -- switches -----------------------------------------------------------------------------
    def enable_quantization(self) -> None:
        self._enabled = True
        self.enabled.fill_(1)

    def disable_quantization(self) -> None:
        self._enabled = False
        self.enabled.fill_(0)

    @property
    def is_enabled_quantization(self) -> bool:
        return self._enabled

    @property
    def num_bits(self) -> int:
        return self.spec.num_bits

    def _set_lr_multiplier(self, multiplier: float) -> None:
        self._lr_multiplier = multiplier
        for p in self.parameters(recurse=False):
            if p.requires_grad:  # frozen ranges (a stripped model) get no gradient to scale
                self._lr_hooks.append(p.register_hook(_ScaleGradient(multiplier)))

    def clear_lr_multiplier(self) -> None:
        """Stop scaling the range gradients by ``compression_lr_multiplier`` (NNCF's mechanism).

        Trainers that apply the multiplier to the learning rate of a parameter group call this, so
        it is not applied twice (scaling gradients is a no-op for Adam-type optimizers anyway).
        """
        for h in self._lr_hooks:
            h.remove()
        self._lr_hooks.clear()
        self._lr_multiplier = None

    # -- pickling (torch.save(model), copy.deepcopy) -------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        # The memo of a shared quantizer holds the last input and output (non-leaf tensors after a
        # training forward, which neither pickle nor deepcopy); tensor hooks are not serialised by
        # torch, so the multiplier hooks are registered again on the restored parameters.
        state["_memo"] = None
        state["_lr_hooks"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if self._lr_multiplier is not None:
            self._set_lr_multiplier(self._lr_multiplier)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            _warn_plain_onnx_export()
        if self._collector is not None:
            self._collect(x)
            return x
        if not self._enabled:
            return x
        if self.shared:
            # the graph task tells a forward (-1) from the re-run of a checkpointed block during backward, whose
            # input is the same tensor: the re-run must build its own node, as the first forward did
            key = (x, x._version, self._param_versions(), torch.is_grad_enabled(), torch._C._current_graph_task_id())
            memo = self._memo
            if memo is not None and memo[0] is x and memo[1:5] == key[1:]:
                return memo[5]
            out = self.quantize(x)
            self._memo = (*key, out)
            return out
        return self.quantize(x)

    def _param_versions(self) -> tuple[int, ...]:
        return tuple(p._version for p in self.parameters(recurse=False))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` fake-quantized (group-wise specs: viewed as groups, then back to ``x``'s shape)."""
        params = list(self.parameters(recurse=False))
        if not self.spec.grouped:
            return self._quantize_with(x, *params)
        return self._ungroup(self._quantize_with(self._group(x), *params), x)

    def _group(self, x: torch.Tensor) -> torch.Tensor:
        """A group-wise quantizer's view of ``x``: the input axis split into ``[groups, group_size]``, the
        group-size axis last (matching ``scale_shape``)."""
        axis = self.spec.group_axis
        return x.unflatten(axis, (-1, self.spec.group_size)).movedim(axis + 1, -1)

    def _ungroup(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        axis = self.spec.group_axis
        return y.movedim(-1, axis + 1).reshape(like.shape)

    def quantize_rows(self, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Quantize rows looked up from a weight table quantized per row (axis 0) or per tensor."""
        params = list(self.parameters(recurse=False))
        if self.spec.grouped:
            raise ValueError("row-wise quantization of a group-wise quantizer: quantize the whole table instead")
        if self.spec.per_channel:
            if self.spec.channel_axis != 0:
                raise ValueError("row-wise quantization needs per-channel axis 0")
            params = [F.embedding(ids, p.reshape(p.shape[0], -1)) for p in params]
        return self._quantize_with(rows, *params)

    def clear_memo(self) -> None:
        self._memo = None

    @property
    def signed(self) -> bool:
        return True

    def levels(self) -> tuple[int, int]:
        return self.spec.levels(self.signed)

    def grid_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(low, high, step, zero_point)`` of the grid ``forward`` uses (float32, detached, ``scale_shape``)."""
        raise NotImplementedError

    def grid(self) -> Grid:
        """The grid ``forward`` uses, as the backend contract's [`Grid`] (NumPy, one entry per channel)."""
        ll, lh = self.levels()
        _, _, step, zp = self.grid_tensors()
        return Grid(step.cpu().numpy(), zp.cpu().numpy(), ll, lh)

    def input_low_high(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The quantization range ``(low, high)`` actually used by ``forward`` (after alignment)."""
        low, high, _, _ = self.grid_tensors()
        return low, high

    def to_integers(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the integer grid, as int32 in ``[level_low, level_high]``.

        ``(to_integers(x) - zero_point) * step`` equals ``forward(x)`` bit for bit (same float32 ops).
        """
        ll, lh = self.levels()
        _, _, step, zp = self.grid_tensors()
        inv_step = 1.0 / step
        x = x.detach().float()
        xg = self._group(x) if self.spec.grouped else x
        q = torch.clamp(torch.round(xg * inv_step) + zp, ll, lh).to(torch.int32)
        return self._ungroup(q, x) if self.spec.grouped else q

    # -- range initialisation -----------------------------------------------------------------
    def start_collecting(self, collector: RangeCollector) -> None:
        self._collector = collector
        self._memo = None

    def stop_collecting(self) -> RangeCollector | None:
        collector, self._collector = self._collector, None
        return collector

    def collect_weight(self, weight: torch.Tensor, collector: RangeCollector) -> None:
        """Feed a weight tensor (one sample, channels on the spec's axis) to ``collector``."""
        if self.spec.grouped:  # one "channel" per group, in scale_shape's order
            grouped = self._group(weight.detach())
            stats = batch_statistics(grouped.reshape(1, -1, self.spec.group_size), 1, collector.needs_values)
            if stats is not None:
                collector.update(stats[1])
            return
        axis = self.spec.channel_axis
        stats = batch_statistics(weight.unsqueeze(0), None if axis is None else axis + 1, collector.needs_values)
        if stats is not None:
            collector.update(stats[1])

    def _collect(self, x: torch.Tensor) -> None:
        if self.shared and self._memo is not None and self._memo[0] is x:
            return  # the same tensor, seen by another consumer
        self._memo = (x, None, None, None, None, None)
        stats = batch_statistics(x, self.spec.channel_axis, self._collector.needs_values)
        if stats is None:
            return
        nonfinite, stats = stats
        if nonfinite and not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(
                f"Calibration: a tensor quantized by {self._name_for_messages()} holds NaN/inf values; "
                "they are excluded from the range statistics.",
                RuntimeWarning,
                stacklevel=3,
            )
        self._collector.update(stats)

    def _name_for_messages(self) -> str:
        return getattr(self, "_hf_qat_id", type(self).__name__)

    def init_from_collector(self, collector: RangeCollector) -> None:
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "enabled" in state_dict:
            self._enabled = bool(self.enabled.item())
        self._sync_from_buffers()
        self.initialized = True
        self._memo = None

    def _sync_from_buffers(self) -> None:
        pass

    def extra_repr(self) -> str:
        ll, lh = self.levels()
        return f"bits={self.spec.num_bits}, levels=[{ll}, {lh}], scale_shape={self.spec.scale_shape}, enabled={self._enabled}"


class SymmetricQuantizer(BaseQuantizer):
    """Symmetric quantizer: range ``[scale * ll / lh, scale]`` (``ll = 0`` when unsigned)."""

    def __init__(self, spec: QuantizerSpec, shared: bool = False):
        super().__init__(spec, shared)
        self.scale = nn.Parameter(torch.ones(spec.scale_shape))
        self.register_buffer("signed_tensor", torch.tensor([0 if spec.signedness_to_force is False else 1], dtype=torch.int32))
        self._signed = spec.signedness_to_force is not False
        self._finish_init()

    @property
    def signed(self) -> bool:
        return self._signed

    def set_signed(self, signed: bool) -> None:
        self._signed = bool(signed)
        self.signed_tensor.fill_(int(signed))

    def _sync_from_buffers(self) -> None:
        self._signed = bool(self.signed_tensor.item())

    def _quantize_with(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ll, lh = self.levels()
        return fake_quantize_symmetric(x, scale, ll, lh)

    def grid_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        ll, lh = self.levels()
        return symmetric_grid(self.scale, ll, lh)

    def init_from_collector(self, collector: RangeCollector) -> None:
        lo, hi = collector.result()
        force = self.spec.signedness_to_force
        signed, scale = symmetric_range(lo, hi, collector.global_min, force)
        self.set_signed(signed)
        with torch.no_grad():
            self.scale.copy_(torch.from_numpy(scale.astype(np.float32)).reshape(self.scale.shape))
        self.initialized = True
        self._memo = None


class AsymmetricQuantizer(BaseQuantizer):
    """Asymmetric quantizer: range ``[input_low, input_low + |input_range|]``, zero point aligned."""

    def __init__(self, spec: QuantizerSpec, shared: bool = False):
        super().__init__(spec, shared)
        self.input_low = nn.Parameter(torch.zeros(spec.scale_shape))
        self.input_range = nn.Parameter(torch.ones(spec.scale_shape))
        self._finish_init()

    @property
    def signed(self) -> bool:
        return False

    def _quantize_with(self, x: torch.Tensor, input_low: torch.Tensor, input_range: torch.Tensor) -> torch.Tensor:
        ll, lh = self.levels()
        return fake_quantize_asymmetric(x, input_low, input_range, ll, lh)

    def grid_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        ll, lh = self.levels()
        return asymmetric_grid(self.input_low, self.input_range, ll, lh)

    def init_from_collector(self, collector: RangeCollector) -> None:
        lo, hi = collector.result()
        low, rng = asymmetric_range(lo, hi)
        with torch.no_grad():
            self.input_low.copy_(torch.from_numpy(low.astype(np.float32)).reshape(self.input_low.shape))
            self.input_range.copy_(torch.from_numpy(rng.astype(np.float32)).reshape(self.input_range.shape))
        self.initialized = True
        self._memo = None


class DynamicPerTokenQuantizer(BaseQuantizer):
    """Per-token dynamic quantizer (``spec.dynamic``): each slice along the last axis gets the symmetric scale
    ``max|x| / level_high`` of its own values at run time; no learned range, nothing to calibrate. The gradient is
    the straight-through estimator (torchao's per-token dynamic activations)."""

    def __init__(self, spec: QuantizerSpec, shared: bool = False):
        super().__init__(spec, shared)
        self.initialized = True  # no range to initialise

    def _quantize_with(self, x: torch.Tensor) -> torch.Tensor:
        ll, lh = self.levels()
        step = token_steps(x.detach(), lh)
        out = torch.clamp(torch.round(x.detach() / step), ll, lh) * step
        return x + (out.to(x.dtype) - x).detach()

    def grid_tensors(self):
        raise TypeError("a per-token dynamic quantizer has no fixed grid: its step is max|x| / level_high per token")

    def _collect(self, x: torch.Tensor) -> None:  # nothing to calibrate
        return None

    def init_from_collector(self, collector: RangeCollector) -> None:
        self.initialized = True


def token_steps(x: torch.Tensor, level_high: int) -> torch.Tensor:
    """The per-token step of a dynamic quantizer: ``max|x| / level_high`` along the last axis (float32, at least
    a tiny positive value so that all-zero tokens stay zero)."""
    return (x.float().abs().amax(dim=-1, keepdim=True) / level_high).clamp_min(1e-12)


class _ScaleGradient:
    """Gradient hook ``g -> g * multiplier`` (a picklable object; quantizers re-register it on unpickling,
    so torch's warning about unserialised tensor hooks does not apply)."""

    __torch_unserializable__ = True

    def __init__(self, multiplier: float):
        self.multiplier = multiplier

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self.multiplier


_warned_plain_export = False


def _warn_plain_onnx_export() -> None:
    global _warned_plain_export
    if not _warned_plain_export:
        _warned_plain_export = True
        warnings.warn(
            "torch.onnx.export of an hf_qat model writes fake quantization as float arithmetic with FP32 "
            "weights. Use hf_qat.export_onnx(model, path) (or ctrl.export_model(path)) for INT8 weights and "
            "QuantizeLinear/DequantizeLinear nodes.",
            UserWarning,
            stacklevel=3,
        )


def create_quantizer(spec: QuantizerSpec, shared: bool = False) -> BaseQuantizer:
    if spec.dynamic:
        return DynamicPerTokenQuantizer(spec, shared=shared)
    cls = SymmetricQuantizer if spec.symmetric else AsymmetricQuantizer
    return cls(spec, shared=shared)


def batch_statistics(
    x: torch.Tensor, channel_axis: int | None, need_values: bool, generator_seed: int = 0
) -> tuple[bool, BatchStatistics] | None:
    """Reduce a tensor to per-sample, per-channel statistics (non-finite values excluded).

    Sample axis is 0 (the batch); ``channel_axis`` (or none, per-tensor) keeps channels apart.
    Returns ``(had_nonfinite, stats)`` or ``None`` for an empty tensor.
    """
    x = x.detach()
    if x.numel() == 0:
        return None
    if not x.is_floating_point():
        x = x.float()
    if x.dim() == 0:
        x = x.reshape(1)
    if channel_axis is None:
        x3 = x.reshape(x.shape[0], 1, -1)
    else:
        moved = x.movedim(channel_axis, 1) if x.dim() > 1 else x.reshape(1, -1)
        x3 = moved.reshape(moved.shape[0], moved.shape[1], -1)
    x3 = x3.float()
    finite = torch.isfinite(x3)
    nonfinite = not bool(finite.all())
    if nonfinite:
        mins = x3.masked_fill(~finite, float("inf")).amin(dim=2)
        maxs = x3.masked_fill(~finite, float("-inf")).amax(dim=2)
        absmax = x3.abs().masked_fill(~finite, float("-inf")).amax(dim=2)
    else:
        mins, maxs = x3.amin(dim=2), x3.amax(dim=2)
        absmax = torch.maximum(maxs, -mins)
    to_np = lambda t: np.where(np.isfinite(t.cpu().numpy()), t.cpu().numpy(), np.nan).astype(np.float64)  # noqa: E731
    values = None
    if need_values:
        per_channel = x3.transpose(0, 1).reshape(x3.shape[1], -1)
        if nonfinite:
            keep = torch.isfinite(per_channel).all(dim=0)
            per_channel = per_channel[:, keep]
        n = per_channel.shape[1]
        if n > MAX_VALUES_PER_BATCH:
            g = torch.Generator(device="cpu").manual_seed(generator_seed + n)
            idx = torch.randint(n, (MAX_VALUES_PER_BATCH,), generator=g).to(per_channel.device)
            per_channel = per_channel[:, idx]
        values = per_channel.cpu().numpy().astype(np.float32)
    return nonfinite, BatchStatistics(to_np(mins), to_np(maxs), to_np(absmax), values)
