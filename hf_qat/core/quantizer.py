"""The backend contract of a quantizer: what both backends' quantizers answer, in one type.

Both :class:`hf_qat.torch.quantizers.BaseQuantizer` and :class:`hf_qat.keras.quantizers.KerasQuantizer`
satisfy :class:`Quantizer`; exporters, verification, model cards and the compression state talk to
quantizers through it. The grid a quantizer computes on is a :class:`Grid` in both, whatever
arithmetic the backend uses to get there (NNCF's in PyTorch, TensorFlow's nudged fake-quant in Keras).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from .spec import QuantizerSpec

__all__ = ["Grid", "Quantizer"]


@dataclass(frozen=True, eq=False)
class Grid:
    """The integer grid of a quantizer, per channel.

    A value ``x`` is quantized to ``q = clip(round(x / step) + zero_point, level_low, level_high)`` and
    represented by ``(q - zero_point) * step``. ONNX's ``QuantizeLinear``/``DequantizeLinear`` with
    ``scale=step`` and ``zero_point`` compute the same (with a ``Clip`` when the levels are narrower than
    the storage type).

    Attributes:
        step (`np.ndarray`): float32 steps, one per channel (shape ``(channels,)``; ``(1,)`` per tensor).
        zero_point (`np.ndarray`): int64 zero points, same shape.
        level_low / level_high (`int`): the integer levels (``-128``/``127``, ``0``/``255``, narrow or
            sub-8-bit grids ...).
    """

    step: np.ndarray
    zero_point: np.ndarray
    level_low: int
    level_high: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "step", np.atleast_1d(np.asarray(self.step, np.float32)).reshape(-1))
        zp = np.atleast_1d(np.asarray(self.zero_point)).reshape(-1)
        object.__setattr__(self, "zero_point", np.broadcast_to(np.rint(zp).astype(np.int64), self.step.shape).copy())
        if self.level_high <= self.level_low:
            raise ValueError(f"Grid levels must increase: got [{self.level_low}, {self.level_high}]")

    @property
    def int_low(self) -> np.ndarray:
        """``level_low - zero_point``: the lowest level relative to the zero point (so ``low = int_low * step``)."""
        return self.level_low - self.zero_point

    @property
    def int_high(self) -> np.ndarray:
        """``level_high - zero_point``: the highest level relative to the zero point."""
        return self.level_high - self.zero_point

    @property
    def low(self) -> np.ndarray:
        """The smallest representable value of each channel (float32)."""
        return (self.int_low * self.step).astype(np.float32)

    @property
    def high(self) -> np.ndarray:
        """The largest representable value of each channel (float32)."""
        return (self.int_high * self.step).astype(np.float32)

    @property
    def num_levels(self) -> int:
        return self.level_high - self.level_low + 1


@runtime_checkable
class Quantizer(Protocol):
    """What every backend's quantizer provides.

    Attributes:
        spec (`QuantizerSpec`): bits, mode, granularity, narrow/half range.
        initialized (`bool`): whether its range was set (range init or a restored state).
    """

    spec: QuantizerSpec
    initialized: bool

    def grid(self) -> Grid:
        """The grid the quantizer computes on now (detached, NumPy)."""
        ...
