"""Range statistics for quantizer initialisation, framework-free (NumPy) and mergeable.

A backend reduces each calibration batch to a :class:`BatchStatistics` (per-sample, per-channel
minima and maxima, plus a bounded random subsample of values for the percentile-based types) and
feeds it to a collector. Collectors expose their accumulated state as plain arrays
(:meth:`RangeCollector.state`) that :meth:`RangeCollector.merge` combines, so that the statistics
of several processes can be all-reduced into exactly the ranges one process would compute on the
union of their data (for the order-independent types; sampled types merge their samples).

Semantics follow NNCF's legacy initialisers:

- ``min_max``: global minimum and maximum.
- ``mean_min_max``: mean over batches of the batch minimum / maximum.
- ``mixed_min_max``: per-tensor activations use the mean over samples of each sample's maximum
  (absolute maximum for symmetric quantizers, and of minima for asymmetric ones); anything else
  uses global minimum and maximum.
- ``threesigma``: median +/- 3 * median absolute deviation.
- ``percentile``: percentiles (``min_percentile``, ``max_percentile``) of all values seen.
- ``mean_percentile``: mean over batches of the batch percentiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BatchStatistics",
    "RangeCollector",
    "make_collector",
    "symmetric_range",
    "asymmetric_range",
    "MIN_SCALE",
    "numpy_batch_statistics",
]

#: Smallest symmetric scale / asymmetric range produced by range init: constant or all-zero tensors
#: get a usable, non-zero range instead of a zero scale.
MIN_SCALE = 1e-4


@dataclass
class BatchStatistics:
    """One batch, reduced by the backend.

    Attributes:
        sample_min, sample_max, sample_absmax (`np.ndarray` of shape ``[S, C]``): per sample and per
            channel (``C == 1`` for per-tensor quantizers), over finite values only (``nan`` where a
            sample/channel had no finite value).
        values (`np.ndarray` of shape ``[C, K]`` or ``None``): a random subsample of the finite values
            of each channel, present when the collector asks for it (percentile-type collectors).
    """

    sample_min: np.ndarray
    sample_max: np.ndarray
    sample_absmax: np.ndarray
    values: np.ndarray | None = None


def _nan_to_sentinel(a: np.ndarray, fill: float) -> np.ndarray:
    return np.where(np.isfinite(a), a, fill)


class RangeCollector:
    """Accumulates :class:`BatchStatistics` into a per-channel ``(min, max)`` estimate."""

    needs_values = False

    def __init__(self, num_channels: int):
        self.num_channels = num_channels
        self.global_min = np.full(num_channels, np.inf)
        self.global_max = np.full(num_channels, -np.inf)
        self.num_batches = 0

    # -- accumulation -----------------------------------------------------------------------
    def update(self, stats: BatchStatistics) -> None:
        self.global_min = np.minimum(self.global_min, _nan_to_sentinel(stats.sample_min, np.inf).min(axis=0))
        self.global_max = np.maximum(self.global_max, _nan_to_sentinel(stats.sample_max, -np.inf).max(axis=0))
        self.num_batches += 1
        self._update(stats)

    def _update(self, stats: BatchStatistics) -> None:  # pragma: no cover - overridden
        pass

    # -- merging ----------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """Arrays that, reduced element-wise across processes as :attr:`reductions` says, merge collectors."""
        return {"global_min": self.global_min, "global_max": self.global_max}

    #: How each state array is combined across collectors: "min", "max", "sum" or "cat" (concatenate on axis 1).
    reductions = {"global_min": "min", "global_max": "max"}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        for k, v in state.items():
            setattr(self, k, np.asarray(v))

    def merge(self, others: Sequence[RangeCollector]) -> None:
        """Merge the states of ``others`` (same type and channel count) into this collector."""
        states = [self.state()] + [o.state() for o in others]
        self.load_state(merge_states(states, self.reductions))

    # -- result -----------------------------------------------------------------------------
    @property
    def has_data(self) -> bool:
        return bool(np.all(np.isfinite(self.global_min)) and np.all(np.isfinite(self.global_max)))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``(min, max)`` estimates; ``nan`` where no finite value was seen."""
        return self._result()

    def _result(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.where(np.isfinite(self.global_min), self.global_min, np.nan)
        hi = np.where(np.isfinite(self.global_max), self.global_max, np.nan)
        return lo, hi


def merge_states(states: Sequence[dict[str, np.ndarray]], reductions: dict[str, str]) -> dict[str, np.ndarray]:
    out = {}
    for key, how in reductions.items():
        arrays = [np.asarray(s[key]) for s in states]
        if how == "min":
            out[key] = np.minimum.reduce(arrays)
        elif how == "max":
            out[key] = np.maximum.reduce(arrays)
        elif how == "sum":
            out[key] = np.sum(arrays, axis=0)
        elif how == "cat":
            out[key] = np.concatenate(arrays, axis=1)
        else:  # pragma: no cover - programming error
            raise ValueError(how)
    return out


class MinMaxCollector(RangeCollector):
    pass


class _MeanCollector(RangeCollector):
    """Keeps sums and counts of per-batch (or per-sample) minima and maxima."""

    reductions = {
        **RangeCollector.reductions,
        "sum_min": "sum",
        "sum_max": "sum",
        "count_min": "sum",
        "count_max": "sum",
    }

    def __init__(self, num_channels: int):
        super().__init__(num_channels)
        self.sum_min = np.zeros(num_channels)
        self.sum_max = np.zeros(num_channels)
        self.count_min = np.zeros(num_channels)
        self.count_max = np.zeros(num_channels)

    def state(self) -> dict[str, np.ndarray]:
        return {
            **super().state(),
            "sum_min": self.sum_min,
            "sum_max": self.sum_max,
            "count_min": self.count_min,
            "count_max": self.count_max,
        }

    def _add(self, mins: np.ndarray, maxs: np.ndarray) -> None:
        """``mins``/``maxs``: ``[N, C]`` observations (nan = missing)."""
        fmin, fmax = np.isfinite(mins), np.isfinite(maxs)
        self.sum_min = self.sum_min + np.where(fmin, mins, 0).sum(axis=0)
        self.sum_max = self.sum_max + np.where(fmax, maxs, 0).sum(axis=0)
        self.count_min = self.count_min + fmin.sum(axis=0)
        self.count_max = self.count_max + fmax.sum(axis=0)

    def _means(self) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum_min / self.count_min, self.sum_max / self.count_max


class MeanMinMaxCollector(_MeanCollector):
    def _update(self, stats: BatchStatistics) -> None:
        lo = _nan_to_sentinel(stats.sample_min, np.inf).min(axis=0, keepdims=True)
        hi = _nan_to_sentinel(stats.sample_max, -np.inf).max(axis=0, keepdims=True)
        self._add(np.where(np.isfinite(lo), lo, np.nan), np.where(np.isfinite(hi), hi, np.nan))

    def _result(self) -> tuple[np.ndarray, np.ndarray]:
        return self._means()


class MixedMinMaxCollector(_MeanCollector):
    """Means of per-sample statistics where NNCF uses them, global extremes elsewhere."""

    def __init__(self, num_channels: int, use_means_of_mins: bool, use_means_of_maxs: bool, use_abs_max: bool):
        super().__init__(num_channels)
        self.use_means_of_mins = use_means_of_mins
        self.use_means_of_maxs = use_means_of_maxs
        self.use_abs_max = use_abs_max

    def _update(self, stats: BatchStatistics) -> None:
        self._add(stats.sample_min, stats.sample_absmax if self.use_abs_max else stats.sample_max)

    def _result(self) -> tuple[np.ndarray, np.ndarray]:
        mean_min, mean_max = self._means()
        lo, hi = super()._result()
        return (mean_min if self.use_means_of_mins else lo), (mean_max if self.use_means_of_maxs else hi)


class _ValuesCollector(RangeCollector):
    needs_values = True

    def __init__(self, num_channels: int, min_percentile: float = 0.1, max_percentile: float = 99.9):
        super().__init__(num_channels)
        self.min_percentile = min_percentile
        self.max_percentile = max_percentile


class PercentileCollector(_ValuesCollector):
    reductions = {**RangeCollector.reductions, "values": "cat"}

    def __init__(self, num_channels: int, min_percentile: float = 0.1, max_percentile: float = 99.9):
        super().__init__(num_channels, min_percentile, max_percentile)
        self.values = np.zeros((num_channels, 0), dtype=np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {**super().state(), "values": self.values}

    def _update(self, stats: BatchStatistics) -> None:
        if stats.values is not None and stats.values.size:
            self.values = np.concatenate([self.values, stats.values.astype(np.float32)], axis=1)

    def _result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.values.shape[1] == 0:
            return super()._result()
        lo = np.percentile(self.values, self.min_percentile, axis=1)
        hi = np.percentile(self.values, self.max_percentile, axis=1)
        return lo, hi


class MeanPercentileCollector(_ValuesCollector, _MeanCollector):
    def __init__(self, num_channels: int, min_percentile: float = 0.1, max_percentile: float = 99.9):
        _MeanCollector.__init__(self, num_channels)
        self.min_percentile = min_percentile
        self.max_percentile = max_percentile

    def _update(self, stats: BatchStatistics) -> None:
        if stats.values is not None and stats.values.shape[1]:
            lo = np.percentile(stats.values, self.min_percentile, axis=1)[None]
            hi = np.percentile(stats.values, self.max_percentile, axis=1)[None]
            self._add(lo, hi)

    def _result(self) -> tuple[np.ndarray, np.ndarray]:
        return self._means()


class ThreeSigmaCollector(PercentileCollector):
    def _result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.values.shape[1] == 0:
            return RangeCollector._result(self)
        median = np.median(self.values, axis=1)
        mad = np.median(np.abs(self.values - median[:, None]), axis=1)
        return median - 3 * mad, median + 3 * mad


def make_collector(
    init_type: str,
    num_channels: int,
    *,
    symmetric: bool,
    per_tensor_activation: bool,
    min_percentile: float = 0.1,
    max_percentile: float = 99.9,
) -> RangeCollector:
    """Collector for one quantizer, from the ``initializer.range.type`` of the config."""
    if init_type == "min_max":
        return MinMaxCollector(num_channels)
    if init_type == "mean_min_max":
        return MeanMinMaxCollector(num_channels)
    if init_type == "mixed_min_max":
        return MixedMinMaxCollector(
            num_channels,
            use_means_of_mins=per_tensor_activation and not symmetric,
            use_means_of_maxs=per_tensor_activation,
            use_abs_max=symmetric,
        )
    if init_type == "percentile":
        return PercentileCollector(num_channels, min_percentile, max_percentile)
    if init_type == "mean_percentile":
        return MeanPercentileCollector(num_channels, min_percentile, max_percentile)
    if init_type == "threesigma":
        return ThreeSigmaCollector(num_channels, min_percentile, max_percentile)
    raise ValueError(f"unknown range init type {init_type!r}")


def symmetric_range(
    lo: np.ndarray, hi: np.ndarray, global_min: np.ndarray, signedness_to_force: bool | None
) -> tuple[bool, np.ndarray]:
    """``(signed, scale)`` of a symmetric quantizer from per-channel statistics.

    ``signed`` comes from the data (any negative value seen) unless forced; ``scale`` is the
    absolute maximum of the estimates, at least :data:`MIN_SCALE`. Channels without finite
    statistics get the largest finite scale of the tensor (or 1.0 when there is none).
    """
    signed = bool(np.any(global_min < 0)) if signedness_to_force is None else bool(signedness_to_force)
    scale = _fill_missing(np.maximum(np.abs(lo), np.abs(hi)))
    return signed, np.maximum(scale, MIN_SCALE)


def asymmetric_range(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(input_low, input_range)`` of an asymmetric quantizer from per-channel statistics.

    Ranges narrower than 1% of the widest channel's range are widened symmetrically (NNCF's
    correction), and every range is at least :data:`MIN_SCALE`.
    """
    ok = np.isfinite(lo) & np.isfinite(hi)
    lo = np.where(ok, lo, np.nan)
    hi = np.where(ok, hi, np.nan)
    if not ok.any():
        lo, hi = np.zeros_like(lo), np.ones_like(hi)
    else:
        lo = np.where(ok, lo, np.nanmin(lo))
        hi = np.where(ok, hi, np.nanmax(hi))
    ranges = hi - lo
    max_range = max(float(ranges.max()), MIN_SCALE)
    correction = (np.clip(ranges, 1e-2 * max_range, None) - ranges) * 0.5
    return lo - correction, np.maximum(ranges + 2 * correction, MIN_SCALE)


def _fill_missing(scale: np.ndarray) -> np.ndarray:
    finite = np.isfinite(scale)
    if finite.all():
        return scale
    fill = float(scale[finite].max()) if finite.any() else 1.0
    return np.where(finite, scale, fill)


#: Largest random subsample per channel and batch kept for percentile-type range statistics.
MAX_VALUES_PER_BATCH = 1 << 16


def numpy_batch_statistics(
    x: np.ndarray, channel_axis: int | None, need_values: bool, seed: int = 0
) -> tuple[bool, BatchStatistics] | None:
    """Reduce an array to per-sample, per-channel statistics (non-finite values excluded).

    The NumPy counterpart of the PyTorch backend's reduction, for backends that calibrate on host
    arrays (Keras). Sample axis is 0; ``channel_axis`` (or ``None``, per-tensor) keeps channels apart.
    Returns ``(had_nonfinite, stats)``, or ``None`` for an empty array.
    """
    x = np.asarray(x)
    if x.size == 0:
        return None
    x = x.astype(np.float64) if x.dtype != np.float64 else x
    if x.ndim == 0:
        x = x.reshape(1)
    if channel_axis is None:
        x3 = x.reshape(x.shape[0], 1, -1)
    else:
        moved = np.moveaxis(x, channel_axis, 1) if x.ndim > 1 else x.reshape(1, -1)
        x3 = moved.reshape(moved.shape[0], moved.shape[1], -1)
    finite = np.isfinite(x3)
    nonfinite = not bool(finite.all())
    with np.errstate(invalid="ignore"):
        mins = np.where(finite, x3, np.inf).min(axis=2)
        maxs = np.where(finite, x3, -np.inf).max(axis=2)
        absmax = np.where(finite, np.abs(x3), -np.inf).max(axis=2)
    clean = lambda a: np.where(np.isfinite(a), a, np.nan)  # noqa: E731
    values = None
    if need_values:
        per_channel = np.swapaxes(x3, 0, 1).reshape(x3.shape[1], -1)
        if nonfinite:
            per_channel = per_channel[:, np.isfinite(per_channel).all(axis=0)]
        n = per_channel.shape[1]
        if n > MAX_VALUES_PER_BATCH:
            idx = np.random.default_rng(seed + n).integers(0, n, MAX_VALUES_PER_BATCH)
            per_channel = per_channel[:, idx]
        values = per_channel.astype(np.float32)
    return nonfinite, BatchStatistics(clean(mins), clean(maxs), clean(absmax), values)
