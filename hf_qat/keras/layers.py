"""Which Keras layers hf_qat quantizes, and how a built layer is turned into a quantized one in place.

Quantized layers keep their object, name, config and weights: the layer's class is swapped for
a subclass of it (same name and module, so ``get_config``/``model.save`` describe the original
architecture) whose ``call`` quantizes the layer's input and weight. The quantizer variables are
added to the layer the way Keras' own ``Layer.quantize`` adds its scales, so they train with
``model.fit`` and are tracked by ``tf.train.Checkpoint``; ``save_own_variables`` and
``load_own_variables`` leave them out, so ``model.save``/``save_weights``/keras-hub presets stay
loadable by the plain architecture (hf_qat stores the quantizer variables in its own files).

| layer | weight | channel axes (per-channel weights) | input quantized |
|---|---|---|---|
| ``Dense`` | ``kernel [in, out]`` | ``out`` | yes |
| ``EinsumDense`` | ``kernel`` | kernel axes that appear in the output | yes |
| ``Conv1D/2D/3D`` | ``kernel [..., in, out]`` | ``out`` | yes |
| ``Embedding`` (incl. ``ReversibleEmbedding``) | ``embeddings [vocab, dim]`` | rows (``vocab``) | no (indices) |
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras
from keras import ops

from .quantizers import KerasQuantizer, WeightLayout

__all__ = [
    "FLOAT_BY_DESIGN",
    "LayerKind",
    "layer_kind",
    "layer_quantizers",
    "quantize_layer",
    "unquantize_layer",
]

try:  # private module path, stable across Keras 3 releases
    from keras.src.layers.convolutional.base_conv import BaseConv as _BaseConv
except ImportError:  # pragma: no cover
    _BaseConv = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)

#: Layer classes that hold matrices but stay in float by design (normalisations, additive
#: position tables). Any other layer with a weight of rank >= 2 that hf_qat cannot quantize is an
#: error, never silently left in float.
FLOAT_BY_DESIGN = (
    "LayerNormalization",
    "BatchNormalization",
    "GroupNormalization",
    "RMSNormalization",
    "UnitNormalization",
    "PositionEmbedding",
    "RotaryEmbedding",
    "SinePositionEncoding",
)


@dataclass(frozen=True)
class LayerKind:
    """How hf_qat quantizes one class of layer."""

    name: str
    weight_attr: str
    quantize_input: bool


DENSE = LayerKind("Dense", "kernel", True)
EINSUM_DENSE = LayerKind("EinsumDense", "kernel", True)
CONV = LayerKind("Conv", "kernel", True)
EMBEDDING = LayerKind("Embedding", "embeddings", False)


def layer_kind(layer: Any) -> LayerKind | None:
    """The :class:`LayerKind` of a layer, or ``None`` if hf_qat does not quantize it."""
    if isinstance(layer, keras.layers.EinsumDense):
        return EINSUM_DENSE
    if isinstance(layer, keras.layers.Dense):
        return DENSE
    if isinstance(layer, _BaseConv):
        return CONV
    if isinstance(layer, keras.layers.Embedding):
        return EMBEDDING
    return None


def weight_layout(layer: Any, kind: LayerKind) -> WeightLayout:
    """Channel layout of the layer's weight (see the module table)."""
    weight = getattr(layer, kind.weight_attr)
    shape = tuple(int(s) for s in weight.shape)
    if kind is EMBEDDING:
        return WeightLayout(shape, (0,))
    if kind is EINSUM_DENSE:
        inputs, output = layer.equation.split("->")
        kernel_spec = inputs.split(",")[1].strip()
        axes = tuple(i for i, c in enumerate(kernel_spec) if c in output)
        return WeightLayout(shape, axes or (len(shape) - 1,))
    return WeightLayout(shape, (len(shape) - 1,))


@dataclass
class LayerQuantizers:
    """The quantizers attached to one layer."""

    kind: LayerKind
    weight: KerasQuantizer | None = None
    input: KerasQuantizer | None = None

    def all(self) -> list[KerasQuantizer]:
        return [q for q in (self.weight, self.input) if q is not None]


def layer_quantizers(layer: Any) -> LayerQuantizers | None:
    return layer.__dict__.get("_hf_qat")


def _q_input(layer: Any, x: Any) -> Any:
    q = layer.__dict__["_hf_qat"].input
    return q(x) if q is not None else x


def _q_weight(layer: Any, w: Any) -> Any:
    q = layer.__dict__["_hf_qat"].weight
    return q(w) if q is not None else w


class _QuantizedLayerMixin:
    """Shared overrides: hf_qat variables are not part of the layer's saved variables."""

    def save_own_variables(self, store):
        with hidden_quantizer_variables(self):
            super().save_own_variables(store)

    def load_own_variables(self, store):
        with hidden_quantizer_variables(self):
            super().load_own_variables(store)


class _DenseMixin(_QuantizedLayerMixin):
    def call(self, inputs, training=None):
        x = ops.matmul(_q_input(self, inputs), _q_weight(self, self.kernel))
        if self.bias is not None:
            x = ops.add(x, self.bias)
        return self.activation(x) if self.activation is not None else x


class _EinsumDenseMixin(_QuantizedLayerMixin):
    def call(self, inputs, training=None):
        x = ops.einsum(self.equation, _q_input(self, inputs), _q_weight(self, self.kernel))
        if self.bias is not None:
            x = ops.add(x, self.bias)
        return self.activation(x) if self.activation is not None else x


class _ConvMixin(_QuantizedLayerMixin):
    def convolution_op(self, inputs, kernel):
        return super().convolution_op(_q_input(self, inputs), _q_weight(self, kernel))


class _EmbeddingMixin(_QuantizedLayerMixin):
    def call(self, inputs, *args, **kwargs):
        reverse = kwargs.get("reverse", args[0] if args else False)
        if reverse:  # ReversibleEmbedding's output projection stays in float
            return super().call(inputs, *args, **kwargs)
        if inputs.dtype not in ("int32", "int64"):
            inputs = ops.cast(inputs, "int32")
        q = self.__dict__["_hf_qat"].weight
        out = ops.take(self.embeddings, inputs, axis=0) if q is None else q.quantize_rows(self.embeddings, inputs)
        return ops.cast(out, dtype=self.compute_dtype)


_MIXINS = {
    "Dense": _DenseMixin,
    "EinsumDense": _EinsumDenseMixin,
    "Conv": _ConvMixin,
    "Embedding": _EmbeddingMixin,
}
_QUANTIZED_CLASSES: dict[type, type] = {}


def _quantized_class(base: type, kind: LayerKind) -> type:
    cls = _QUANTIZED_CLASSES.get(base)
    if cls is None:
        cls = type(
            base.__name__,
            (_MIXINS[kind.name], base),
            {
                "__module__": base.__module__,
                "__qualname__": base.__qualname__,
                "_hf_qat_base_class": base,
            },
        )
        _QUANTIZED_CLASSES[base] = cls
    return cls


def _own_hf_qat_variables(layer: Any) -> list[Any]:
    lq = layer_quantizers(layer)
    return [v for q in (lq.all() if lq else []) for v in q.variables.values()]


@contextlib.contextmanager
def hidden_quantizer_variables(layer: Any) -> Iterator[None]:
    """Temporarily remove the layer's hf_qat variables from its variable lists."""
    ours = {id(v) for v in _own_hf_qat_variables(layer)}
    saved = (list(layer._trainable_variables), list(layer._non_trainable_variables))
    layer._trainable_variables[:] = [v for v in saved[0] if id(v) not in ours]
    layer._non_trainable_variables[:] = [v for v in saved[1] if id(v) not in ours]
    try:
        yield
    finally:
        layer._trainable_variables[:] = saved[0]
        layer._non_trainable_variables[:] = saved[1]


def quantize_layer(layer: Any, kind: LayerKind, quantizers: LayerQuantizers) -> None:
    """Turn ``layer`` into its quantized class with ``quantizers`` (already created on it)."""
    layer.__dict__["_hf_qat"] = quantizers
    layer.__dict__["_hf_qat_supports_jit"] = layer.supports_jit
    # TF's fake-quant ops (and their gradients) are not compiled by XLA: jit_compile="auto" stays off
    layer.supports_jit = False
    layer.__class__ = _quantized_class(type(layer), kind)


def unquantize_layer(layer: Any) -> None:
    """Undo :func:`quantize_layer`: the original class, without hf_qat variables."""
    lq = layer_quantizers(layer)
    if lq is None:
        return
    ours = {id(v) for v in _own_hf_qat_variables(layer)}
    # untracked here (the tracker's stores are these lists); the attributes are then removed without
    # Keras' Layer.__delattr__, which runs a full gc.collect() per variable (0.5 s each: 40 s to undo a
    # failed compression of a tiny BERT). remove_quantizers collects once at the end.
    layer._trainable_variables[:] = [v for v in layer._trainable_variables if id(v) not in ours]
    layer._non_trainable_variables[:] = [v for v in layer._non_trainable_variables if id(v) not in ours]
    for q in lq.all():
        for key in q.variables:
            name = f"{q.prefix}_{key}"
            if name in layer.__dict__:
                object.__delattr__(layer, name)
    del layer.__dict__["_hf_qat"]
    layer.supports_jit = layer.__dict__.pop("_hf_qat_supports_jit", True)
    base = getattr(type(layer), "_hf_qat_base_class", None)
    if base is not None:
        layer.__class__ = base


def create_layer_variables(layer: Any, build: Any) -> Any:
    """Run ``build()`` with the layer's variable tracker unlocked (it is locked once built)."""
    tracker = getattr(layer, "_tracker", None)
    locked = bool(tracker is not None and getattr(tracker, "locked", False))
    if locked:
        tracker.unlock()
    try:
        return build()
    finally:
        if locked:
            tracker.lock()
