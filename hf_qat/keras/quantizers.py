"""Trainable fake quantizers for Keras 3 (TensorFlow backend), NNCF-TF variable names.

A quantizer is not a layer: its variables live on the layer it quantizes (added the way Keras'
own ``Layer.quantize`` adds ``kernel_scale``), so they train with ``model.fit``, are tracked by
``tf.train.Checkpoint`` under the host layer, and are replicated by ``tf.distribute`` like the
layer's kernel.

Math: TensorFlow's ``fake_quant_with_min_max_vars`` (``_per_channel`` for per-channel weights)
with TF's built-in gradients, on the range

- symmetric: ``[-scale, scale]`` (signed) or ``[0, scale]`` (unsigned); ``scale`` trainable,
  ``signed_var`` (1 or 0) set by range initialisation;
- asymmetric: ``[input_low, input_low + |input_range|]`` widened to include 0.

TF nudges the range so that 0 is a grid point (see :func:`nudged_grid`). This differs from the
PyTorch backend, whose signed symmetric grid is ``[-scale * 128/127, scale]`` with NNCF's
custom gradients: each backend is consistent with its own export, and a compression state moves
between them unchanged (the spec is shared; the learned ranges are backend-specific).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from ..core.quantizer import Grid
from ..core.spec import QuantizerSpec
from ..core.statistics import (
    RangeCollector,
    asymmetric_range,
    numpy_batch_statistics,
    symmetric_range,
)
from ..errors import ExportError

__all__ = ["EPS", "KerasQuantizer", "nudged_grid"]

#: Added to ``|scale|`` / ``|input_range|`` so that the range never collapses to a point.
EPS = 1e-16


@dataclass(frozen=True)
class WeightLayout:
    """How a weight is viewed for per-channel quantization: ``channel_axes`` become the last axis.

    ``perm`` moves the channel axes last; the transposed weight is reshaped to ``[-1, C]`` when
    there are several channel axes (EinsumDense kernels ``[hidden, heads, head_dim]``).
    """

    shape: tuple[int, ...]
    channel_axes: tuple[int, ...]

    @property
    def num_channels(self) -> int:
        return int(np.prod([self.shape[a] for a in self.channel_axes])) if self.channel_axes else 1

    @property
    def perm(self) -> list[int]:
        others = [a for a in range(len(self.shape)) if a not in self.channel_axes]
        return others + list(self.channel_axes)

    @property
    def is_identity(self) -> bool:
        return self.channel_axes == (len(self.shape) - 1,)

    def to_channels_last(self, w: tf.Tensor) -> tf.Tensor:
        if self.is_identity:
            return w
        t = tf.transpose(w, self.perm)
        return tf.reshape(t, [-1, self.num_channels])

    def from_channels_last(self, w: tf.Tensor) -> tf.Tensor:
        if self.is_identity:
            return w
        t = tf.reshape(w, [self.shape[a] for a in self.perm])
        return tf.transpose(t, np.argsort(self.perm).tolist())


def nudged_grid(
    low: np.ndarray, high: np.ndarray, num_bits: int, narrow_range: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TensorFlow's fake-quant grid for the range ``[low, high]``: ``(step, int_low, int_high)``.

    Reproduces TF's ``Nudge`` in float32 (``fake_quant_ops_functor.h``): ``step = (high - low) /
    (qmax - qmin)``, zero point ``round(qmin - low / step)`` (half away from zero) clamped to the
    grid. The grid is ``k * step`` for ``k in [int_low, int_high]``, integers relative to the zero point.
    """
    low = np.asarray(low, np.float32)
    high = np.asarray(high, np.float32)
    qmin = np.float32(1 if narrow_range else 0)
    qmax = np.float32(2**num_bits - 1)
    step = ((high - low) / (qmax - qmin)).astype(np.float32)
    zp_from_min = (qmin - low / step).astype(np.float32)
    zp = np.clip(
        np.sign(zp_from_min) * np.floor(np.abs(zp_from_min) + np.float32(0.5)),
        qmin,
        qmax,
    )
    return step, (qmin - zp).astype(np.int64), (qmax - zp).astype(np.int64)


class KerasQuantizer:
    """One fake quantizer: a weight quantizer or the input quantizer of a layer.

    Args:
        quantizer_id (`str`): NNCF-style id (``<layer path>`` or ``<layer path>|INPUT0``).
        spec (`QuantizerSpec`): bits, mode, narrow/half range, scale shape.
        host (`keras.layers.Layer`): the built layer that owns the variables.
        prefix (`str`): attribute prefix on the host (``hf_qat_weight`` or ``hf_qat_input``).
        layout (`WeightLayout`, *optional*): channel layout of a per-channel weight.
    """

    def __init__(
        self,
        quantizer_id: str,
        spec: QuantizerSpec,
        host: Any,
        prefix: str,
        layout: WeightLayout | None = None,
        host_path: str = "",
        host_weight_attr: str = "kernel",
    ):
        self.id = quantizer_id
        self.host_path = host_path or quantizer_id.split("|")[0]
        self.host_weight_attr = host_weight_attr
        self.spec = spec
        self.host = host
        self.prefix = prefix
        self.layout = layout
        self.is_weight = prefix == "hf_qat_weight"
        self.collector: RangeCollector | None = None
        #: ``None`` while training; ``"graph"`` or ``"onnx"`` while an export traces the model.
        self.export_mode: str | None = None
        #: name of the activation fake-quant op in exported graphs (``aq<i>``, listed in ONNX metadata)
        self.export_name: str | None = None
        #: when a dict, eager calls store their output there under the quantizer id (verification)
        self.recorder: dict[str, np.ndarray] | None = None
        self.initialized = False
        self.warned_nonfinite = False
        channels = layout.num_channels if (layout is not None and spec.per_channel) else None
        shape = (channels,) if channels else ()
        add = host.add_weight
        if spec.symmetric:
            self.scale = add(name=f"{prefix}_scale", shape=shape, initializer="ones", trainable=True)
            self.signed_var = add(name=f"{prefix}_signed", shape=(), initializer="ones", trainable=False)
            range_vars = {"scale": self.scale, "signed": self.signed_var}
        else:
            self.input_low = add(
                name=f"{prefix}_input_low",
                shape=shape,
                initializer="zeros",
                trainable=True,
            )
            self.input_range = add(
                name=f"{prefix}_input_range",
                shape=shape,
                initializer="ones",
                trainable=True,
            )
            range_vars = {"input_low": self.input_low, "input_range": self.input_range}
        self.enabled_var = add(name=f"{prefix}_enabled", shape=(), initializer="ones", trainable=False)
        # attributes make the variables checkpoint children of the host under stable names
        for key, var in {**range_vars, "enabled": self.enabled_var}.items():
            setattr(host, f"{prefix}_{key}", var)

    # -- variables ----------------------------------------------------------------------------
    @property
    def variables(self) -> dict[str, Any]:
        """The quantizer's variables by short name (``scale``/``signed``/``input_low``/``input_range``/``enabled``)."""
        if self.spec.symmetric:
            out = {"scale": self.scale, "signed": self.signed_var}
        else:
            out = {"input_low": self.input_low, "input_range": self.input_range}
        out["enabled"] = self.enabled_var
        return out

    @property
    def per_channel(self) -> bool:
        return self.spec.per_channel and self.layout is not None

    @property
    def enabled(self) -> bool:
        return bool(self.enabled_var.numpy() > 0)

    def set_enabled(self, enabled: bool) -> None:
        self.enabled_var.assign(1.0 if enabled else 0.0)

    # NNCF's quantizer switch names, used by the shared controller
    @property
    def is_enabled_quantization(self) -> bool:
        return self.enabled

    def enable_quantization(self) -> None:
        self.set_enabled(True)

    def disable_quantization(self) -> None:
        self.set_enabled(False)

    @property
    def signed(self) -> bool:
        return bool(self.spec.symmetric and self.signed_var.numpy() > 0)

    # -- range ----------------------------------------------------------------------------------
    def range_tensors(self) -> tuple[tf.Tensor, tf.Tensor]:
        """``(min, max)`` passed to the fake-quant op (before TF's nudging)."""
        if self.spec.symmetric:
            scale = tf.abs(tf.convert_to_tensor(self.scale)) + EPS
            return -scale * tf.convert_to_tensor(self.signed_var), scale
        low = tf.convert_to_tensor(self.input_low)
        high = low + tf.abs(tf.convert_to_tensor(self.input_range)) + EPS
        return tf.minimum(low, 0.0), tf.maximum(high, 0.0)

    def nudged_range(self) -> tuple[np.ndarray, np.ndarray]:
        """The range TF's fake-quant op actually clamps to (after its zero-point nudging), per channel.

        Read from the op itself (a probe far outside the range comes back clamped to it), so it is
        exactly what training uses, including TF's float32 rounding of a zero point at ``.5``.
        """
        low, high = self.range_tensors()
        far = tf.abs(low) + tf.abs(high) + 1.0
        kw = {"num_bits": self.spec.train_bits, "narrow_range": self.spec.narrow_range}
        probe = tf.stack([low - far, high + far])
        if self.per_channel:
            out = tf.quantization.fake_quant_with_min_max_vars_per_channel(probe, low, high, **kw)
        else:
            out = tf.quantization.fake_quant_with_min_max_vars(probe, low, high, **kw)
        out = out.numpy().astype(np.float32)
        return np.atleast_1d(out[0]), np.atleast_1d(out[1])

    def grid(self) -> Grid:
        """The grid ``quantize`` uses, per channel: TF's float32 step, and TF's integer range
        ``[qmin, qmax]`` (``[0, 2^b - 1]``, ``[1, 2^b - 1]`` when narrow) with the nudged zero point.
        """
        low, high = (np.atleast_1d(t.numpy()) for t in self.range_tensors())
        step, _, _ = nudged_grid(low, high, self.spec.train_bits, self.spec.narrow_range)
        nmin, _nmax = self.nudged_range()
        qmin = 1 if self.spec.narrow_range else 0
        return Grid(step, qmin - np.rint(nmin / step).astype(np.int64), qmin, 2**self.spec.train_bits - 1)

    # -- forward ----------------------------------------------------------------------------------
    def fake_quant(self, x: tf.Tensor, name: str | None = None) -> tf.Tensor:
        """``x`` on the quantizer's grid, regardless of ``enabled`` (TF's op and gradients)."""
        low, high = self.range_tensors()
        kw = {"num_bits": self.spec.train_bits, "narrow_range": self.spec.narrow_range}
        if self.per_channel:
            flat = self.layout.to_channels_last(x)
            out = tf.quantization.fake_quant_with_min_max_vars_per_channel(flat, low, high, name=name, **kw)
            return self.layout.from_channels_last(out)
        return tf.quantization.fake_quant_with_min_max_vars(x, low, high, name=name, **kw)

    def __call__(self, x: Any) -> tf.Tensor:
        """Quantize ``x`` (or, during range initialisation, record its statistics and return it)."""
        if self.collector is not None:
            self._collect(x)
            return x
        x = tf.convert_to_tensor(x)
        dtype = x.dtype
        xf = tf.cast(x, tf.float32) if dtype != tf.float32 else x
        if self.export_mode is not None:
            out = self.export_op(xf) if self._export_state["enabled"] else xf
            return tf.cast(out, dtype) if dtype != tf.float32 else out
        out = tf.cond(
            self.enabled_var > 0,
            lambda: self.fake_quant(xf),
            lambda: tf.identity(xf),
        )
        if self.recorder is not None and tf.executing_eagerly():
            self.recorder[self.id] = out.numpy()
            self.recorder[self.id + "#input"] = xf.numpy()
        return tf.cast(out, dtype) if dtype != tf.float32 else out

    def freeze_for_export(self, mode: str | None) -> None:
        """Enter (``mode``) or leave (``None``) export mode: the range and switch are read now, eagerly,
        and written into traced graphs as constants."""
        self.export_mode = mode
        if mode is None:
            self._export_state = None
            return
        shape = tuple(self.range_tensors()[0].shape)
        grid = self.grid()
        # the very range training uses: TF nudges it the same way (re-nudging an already nudged range
        # can resolve a zero point or an extreme value that sits on a half step the other way)
        low, high = (t.numpy().astype(np.float32).reshape(shape) for t in self.range_tensors())
        self._export_state = {
            "enabled": self.enabled,
            "low": low,
            "high": high,
            "grid": grid,
        }

    def export_op(self, x: tf.Tensor) -> tf.Tensor:
        """The op written to an exported graph, with the range frozen to constants.

        ``"graph"`` (frozen graph, SavedModel): TF's fake-quant ops. ``"onnx"``: activations keep
        ``FakeQuantWithMinMaxVars`` (tf2onnx maps it to uint8 QuantizeLinear/DequantizeLinear);
        weights are fake-quantized, then passed through ``QuantizeAndDequantizeV3`` on the same
        int8 grid, which tf2onnx turns into per-channel int8 QuantizeLinear/DequantizeLinear.
        """
        state = self._export_state
        if self.export_mode != "onnx" or not self.is_weight:
            low, high = tf.constant(state["low"]), tf.constant(state["high"])
            kw = {
                "num_bits": self.spec.train_bits,
                "narrow_range": self.spec.narrow_range,
            }
            if self.per_channel:
                flat = self.layout.to_channels_last(x)
                out = tf.quantization.fake_quant_with_min_max_vars_per_channel(flat, low, high, **kw)
                return self.layout.from_channels_last(out)
            return tf.quantization.fake_quant_with_min_max_vars(x, low, high, name=self.export_name, **kw)
        grid: Grid = state["grid"]
        step, k_low, k_high = grid.step, grid.int_low, grid.int_high
        if k_low.min() < -128 or k_high.max() > 127:
            raise ExportError(
                f"Cannot export the weight quantizer {self.id!r} to ONNX: its integer grid "
                f"[{int(k_low.min())}, {int(k_high.max())}] does not fit int8 with a zero point of 0 (asymmetric or "
                "unsigned weights). Export to 'frozen_graph' or 'saved_model', or quantize weights symmetrically.",
                module=self.id,
                op="QuantizeAndDequantizeV3",
            )
        low, high = tf.constant(state["low"]), tf.constant(state["high"])
        kw = {"num_bits": self.spec.train_bits, "narrow_range": self.spec.narrow_range}
        if self.per_channel:
            flat = tf.quantization.fake_quant_with_min_max_vars_per_channel(self.layout.to_channels_last(x), low, high, **kw)
        else:
            flat = tf.quantization.fake_quant_with_min_max_vars(x, low, high, **kw)
        step32 = tf.constant(np.asarray(step, np.float32).reshape(-1) if self.per_channel else np.float32(step.reshape(-1)[0]))
        out = tf.raw_ops.QuantizeAndDequantizeV3(
            input=flat,
            input_min=-128.0 * step32,
            input_max=127.0 * step32,
            num_bits=tf.constant(8),
            signed_input=True,
            range_given=True,
            narrow_range=False,
            axis=len(flat.shape) - 1 if self.per_channel else -1,
        )
        return self.layout.from_channels_last(out) if self.per_channel else out

    def quantize_rows(self, table: Any, ids: tf.Tensor) -> tf.Tensor:
        """``take(quantize(table), ids)`` computed on the gathered rows only (per-row quantized tables).

        The rows of an embedding table quantized per row (axis 0) are fake-quantized after the
        lookup with their own ranges: the same values and gradients as quantizing the whole table
        first, at the cost of the batch's rows instead of the vocabulary's. Per-tensor tables and
        exports use the whole table.
        """
        if self.export_mode is not None or not (self.per_channel and self.layout.channel_axes == (0,)):
            return tf.gather(self(table), ids, axis=0)
        rows = tf.gather(tf.convert_to_tensor(table), ids, axis=0)
        dtype = rows.dtype
        flat_ids = tf.reshape(ids, [-1])
        flat = tf.reshape(tf.cast(rows, tf.float32), [-1, tf.shape(rows)[-1]])

        def quantized() -> tf.Tensor:
            low, high = self.range_tensors()
            low, high = tf.gather(low, flat_ids), tf.gather(high, flat_ids)
            kw = {
                "num_bits": self.spec.train_bits,
                "narrow_range": self.spec.narrow_range,
            }
            out = tf.quantization.fake_quant_with_min_max_vars_per_channel(tf.transpose(flat), low, high, **kw)
            return tf.transpose(out)

        out = tf.cond(self.enabled_var > 0, quantized, lambda: tf.identity(flat))
        return tf.cast(tf.reshape(out, tf.shape(rows)), dtype)

    # -- range initialisation -----------------------------------------------------------------
    def _collect(self, x: Any) -> None:
        if not tf.executing_eagerly():
            raise RuntimeError(f"range initialisation of {self.id!r} must run eagerly; call the model outside tf.function")
        arr = np.asarray(tf.convert_to_tensor(x))
        axis = (arr.ndim - 1) if self.spec.per_channel and arr.ndim > 1 else None
        stats = numpy_batch_statistics(arr, axis, self.collector.needs_values)
        if stats is None:
            return
        nonfinite, batch = stats
        if nonfinite and not self.warned_nonfinite:
            self.warned_nonfinite = True
            import warnings

            warnings.warn(
                f"Calibration: the input of {self.id!r} holds NaN/inf values; they are excluded from the range statistics.",
                RuntimeWarning,
                stacklevel=3,
            )
        self.collector.update(batch)

    def collect_weight(self, weight: np.ndarray, collector: RangeCollector) -> None:
        """Feed a weight (one sample, channels on the layout's channel axes) to ``collector``."""
        w = np.asarray(weight)
        if self.per_channel:
            w = np.transpose(w, self.layout.perm).reshape(-1, self.layout.num_channels)
            stats = numpy_batch_statistics(w[None], 2, collector.needs_values)
        else:
            stats = numpy_batch_statistics(w[None], None, collector.needs_values)
        if stats is not None:
            collector.update(stats[1])

    def init_from_collector(self, collector: RangeCollector) -> None:
        """Set the range from collected statistics (NNCF's rules, see :mod:`hf_qat.core.statistics`)."""
        lo, hi = collector.result()
        shape = tuple(self.scale.shape if self.spec.symmetric else self.input_low.shape)
        if self.spec.symmetric:
            signed, scale = symmetric_range(lo, hi, collector.global_min, self.spec.signedness_to_force)
            self.signed_var.assign(1.0 if signed else 0.0)
            self.scale.assign(np.asarray(scale, np.float32).reshape(shape))
        else:
            low, rng = asymmetric_range(lo, hi)
            self.input_low.assign(np.asarray(low, np.float32).reshape(shape))
            self.input_range.assign(np.asarray(rng, np.float32).reshape(shape))
        self.initialized = True

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The variables as arrays, keyed ``<quantizer id>/<name>`` (for safetensors files)."""
        return {f"{self.id}/{k}": np.asarray(v.numpy()) for k, v in self.variables.items()}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        for k, v in self.variables.items():
            v.assign(arrays[f"{self.id}/{k}"])
        self.initialized = True
