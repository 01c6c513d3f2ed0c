"""Framework-free quantizer specifications and the integer-grid arithmetic they imply.

The formulas follow NNCF's legacy quantizers (``nncf/common/quantization/quantizers.py`` and the
export helpers): every backend computes levels, ranges, scales and zero points through the
functions here so that training and export use the same integer grid.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "QuantizationMode",
    "QuantizerGroup",
    "QuantizerSpec",
    "calculate_levels",
    "tune_range",
    "export_levels",
    "scale_zero_point",
    "grouped_scale_shape",
]


class QuantizationMode(str, enum.Enum):
    SYMMETRIC = "symmetric"
    ASYMMETRIC = "asymmetric"


class QuantizerGroup(str, enum.Enum):
    WEIGHTS = "weights"
    ACTIVATIONS = "activations"


def calculate_levels(num_bits: int, signed: bool, narrow_range: bool, symmetric: bool) -> tuple[int, int]:
    """Integer grid ``(level_low, level_high)`` of a quantizer.

    Symmetric signed: ``[-2^(b-1), 2^(b-1)-1]``; symmetric unsigned and asymmetric: ``[0, 2^b-1]``.
    ``narrow_range`` drops the lowest level when signed, the highest otherwise.
    """
    if not 1 <= num_bits <= 16:
        raise ValueError(f"num_bits must be in [1, 16], got {num_bits}")
    if symmetric and signed:
        low, high = -(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1
    else:
        low, high = 0, 2**num_bits - 1
    if narrow_range:
        if symmetric and signed:
            low += 1
        else:
            high -= 1
    return low, high


@dataclass
class QuantizerSpec:
    """Everything that defines a quantizer except its learned range.

    Field names and meaning follow NNCF's ``qspec`` in ``compression_state`` so that the spec
    round-trips through :meth:`to_state` / :meth:`from_state` in NNCF's legacy layout.

    Args:
        num_bits (`int`): bit width of the integer grid (2-8 for QAT).
        mode (`QuantizationMode`): symmetric (zero point 0) or asymmetric (learned zero point).
        signedness_to_force (`bool`, *optional*): force signed/unsigned; ``None`` decides from statistics.
        narrow_range (`bool`): drop one level (8-bit weights: ``[-127, 127]``).
        half_range (`bool`): overflow fix: train on ``num_bits - 1`` bits, export on ``num_bits``.
        scale_shape (`tuple[int, ...]`): shape of the scale tensor; a single dimension > 1 is the channel axis.
        logarithm_scale (`bool`): kept for NNCF compatibility; always ``False`` in hf_qat.
        is_quantized_on_export (`bool`): weights are stored as integers on export.
        compression_lr_multiplier (`float`, *optional*): gradient multiplier of the range parameters.
        group_size (`int`, *optional*): hf_qat's extension (weights only): one scale per block of ``group_size``
            consecutive input channels of each output channel, instead of one per output channel.
        group_axis (`int`, *optional*): with ``group_size``, the weight's input axis (Linear and Embedding 1,
            transformers' Conv1D 0). ``scale_shape`` is then the weight's shape with that axis divided by
            ``group_size`` and a trailing 1: the weight is quantized viewed as ``[..., groups, ..., group_size]``
            (see :func:`grouped_scale_shape`). Both are left out of :meth:`to_state` when unset, so that
            per-tensor and per-channel states keep NNCF's layout.
        dynamic (`bool`): hf_qat's extension (activations): no learned range; each token (the last axis) is
            quantized symmetrically with its own scale, ``max|x| / level_high``, computed from the tensor at run time
            (torchao's per-token dynamic activations). Left out of :meth:`to_state` when false.
    """

    num_bits: int = 8
    mode: QuantizationMode = QuantizationMode.SYMMETRIC
    signedness_to_force: bool | None = None
    narrow_range: bool = False
    half_range: bool = False
    scale_shape: tuple[int, ...] = (1,)
    logarithm_scale: bool = False
    is_quantized_on_export: bool = False
    compression_lr_multiplier: float | None = None
    group_size: int | None = None
    group_axis: int | None = None
    dynamic: bool = False

    def __post_init__(self) -> None:
        self.mode = QuantizationMode(self.mode)
        self.scale_shape = tuple(int(s) for s in self.scale_shape)
        if (self.group_size is None) != (self.group_axis is None):
            raise ValueError(f"`group_size` and `group_axis` go together, got {self.group_size} and {self.group_axis}")
        if self.group_size is not None and (self.group_size < 2 or len(self.scale_shape) < 2 or self.scale_shape[-1] != 1):
            raise ValueError(
                f"a group-wise spec needs group_size >= 2 and a scale_shape ending in 1, got group_size="
                f"{self.group_size}, scale_shape={list(self.scale_shape)}"
            )
        if not 2 <= self.num_bits <= 8:
            raise ValueError(f"`num_bits` must be in [2, 8] for QAT, got {self.num_bits}")
        if self.half_range and self.num_bits < 3:
            raise ValueError("`half_range` needs at least 3 bits")

    @property
    def symmetric(self) -> bool:
        return self.mode is QuantizationMode.SYMMETRIC

    @property
    def per_channel(self) -> bool:
        return any(s > 1 for s in self.scale_shape)

    @property
    def grouped(self) -> bool:
        """Whether the spec is group-wise (``group_size`` set)."""
        return self.group_size is not None

    @property
    def channel_axis(self) -> int | None:
        """The axis of per-channel scales (``None`` per tensor, and for group-wise specs, whose scales span
        two axes of the grouped view)."""
        if self.grouped:
            return None
        axes = [i for i, s in enumerate(self.scale_shape) if s > 1]
        return axes[0] if axes else None

    @property
    def train_bits(self) -> int:
        """Bits of the grid used while training (one less with ``half_range``)."""
        return self.num_bits - 1 if self.half_range else self.num_bits

    def levels(self, signed: bool) -> tuple[int, int]:
        """``(level_low, level_high)`` of the training grid."""
        return calculate_levels(self.train_bits, signed, self.narrow_range, self.symmetric)

    def to_state(self) -> dict[str, Any]:
        state = asdict(self)
        state["mode"] = self.mode.value
        state["scale_shape"] = list(self.scale_shape)
        if not self.grouped:  # NNCF's qspec has no such fields
            del state["group_size"], state["group_axis"]
        if not self.dynamic:
            del state["dynamic"]
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> QuantizerSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(state) - known
        if unknown:
            raise ValueError(f"unknown qspec field(s): {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**state)


def tune_range(input_low: float, input_range: float, levels: int) -> tuple[float, float]:
    """Zero-point alignment of an asymmetric range (NNCF ``TuneRange``), on Python floats.

    Moves one bound so that float 0 falls exactly on an integer level, keeping the candidate that
    yields the wider range (NNCF's rule). Where the zero point rounds to an end of the grid only one
    bound can move, and hf_qat moves it (NNCF keeps an unaligned range in that case).
    Returns ``(input_low, input_range)``.
    """
    n = levels - 1
    il = min(input_low, 0.0)
    ih = max(input_low + input_range, 0.0)
    if not ih - il > 0:
        return il, ih - il
    zp = round(-il * n / (ih - il))
    if zp >= n:  # only the upper bound can move: [il, 0]
        return il, -il
    if zp <= 0:  # only the lower bound can move: [0, ih]
        return 0.0, ih
    il2 = zp / (zp - n) * ih
    ih2 = (zp - n) / zp * il
    if ih - il2 > ih2 - il:
        return il2, ih - il2
    return il, ih2 - il


def export_levels(spec: QuantizerSpec, signed: bool) -> tuple[int, int, float]:
    """Integer grid used on export and the factor to apply to the trained range.

    With ``half_range`` the trained (b-1)-bit grid is doubled to a b-bit grid with the same step:
    ``ll' = 2*ll``, ``lh' = 2*lh + 1``, and the range upper bound is scaled by ``lh'/lh``.
    Returns ``(level_low, level_high, range_factor)``.
    """
    ll, lh = spec.levels(signed)
    if not spec.half_range:
        return ll, lh, 1.0
    ll2, lh2 = 2 * ll, 2 * lh + 1
    return ll2, lh2, lh2 / lh


def scale_zero_point(input_low: float, input_high: float, level_low: int, level_high: int) -> tuple[float, int]:
    """ONNX ``QuantizeLinear`` scale and zero point of the range ``[input_low, input_high]``.

    ``y_scale = (ih - il) / (lh - ll)``, ``y_zp = clamp(round((ll*ih - lh*il) / (ih - il)), ll, lh)``.
    """
    span = input_high - input_low
    if not span > 0 or not math.isfinite(span):
        raise ValueError(f"quantizer range must be finite and positive, got [{input_low}, {input_high}]")
    y_scale = span / (level_high - level_low)
    y_zp = round((level_low * input_high - level_high * input_low) / span)
    return y_scale, int(min(max(y_zp, level_low), level_high))


def grouped_scale_shape(weight_shape: tuple[int, ...], input_axis: int, group_size: int) -> tuple[int, ...]:
    """Scale shape of a group-wise weight quantizer: ``weight_shape`` with ``input_axis`` divided by
    ``group_size``, plus a trailing 1 (Linear ``[out, in]`` -> ``[out, in / g, 1]``; Conv1D ``[in, out]`` ->
    ``[in / g, out, 1]``).

    Raises:
        ValueError: ``group_size`` does not divide the input dimension (the message names both).
    """
    size = weight_shape[input_axis]
    if group_size < 2 or size % group_size:
        raise ValueError(f"group_size {group_size} does not divide the input dimension {size}")
    shape = list(weight_shape)
    shape[input_axis] = size // group_size
    return (*shape, 1)
