"""Quantized versions of weighted layers, made by swapping a module's class in place.

A quantized ``nn.Linear`` stays an ``nn.Linear`` (same object, same parameters, same hooks); its
class becomes :class:`NNCFLinear`, a subclass whose ``forward`` fake-quantizes the weight
(``weight_quantizer`` submodule) and the input (a quantizer owned by the model's ``_hf_qat``
container, possibly shared with other consumers of the same tensor). ``NNCFLinear.from_module``
makes the swap and ``to_module`` reverses it (:func:`wrap_module` / :func:`unwrap_module` do the same
for any supported layer).

Supported: ``nn.Linear``, ``nn.Conv1d/2d/3d``, ``nn.Embedding`` and transformers' ``Conv1D`` (GPT-2),
plus subclasses of these that do not override ``forward``. The quantized classes of the base layers
are defined here and importable; a subclass ``MyLinear`` gets a class made on first use,
``NNCFUserMyLinear(NNCFLinear, MyLinear)``, so that ``isinstance(layer, MyLinear)`` stays true.
Quantized layers pickle (``torch.save(model)``, ``copy.deepcopy``) as their original class plus their
state: only the original class and :func:`_rebuild_quantized_layer` are referenced, and the quantized
class is looked up (or made again) when the pickle is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .functions import recompute_fake_quantized
from .quantizers import BaseQuantizer

__all__ = [
    "LayerKind",
    "QuantizedLayerMixin",
    "NNCFLinear",
    "NNCFConv1d",
    "NNCFConv2d",
    "NNCFConv3d",
    "NNCFEmbedding",
    "layer_kind",
    "wrap_module",
    "unwrap_module",
    "is_wrapped",
    "nncf_class_name",
]


@dataclass(frozen=True)
class LayerKind:
    base: type
    op_name: str  # traced operation that consumes the weight (node name "<scope>/<op_name>_0")
    channel_axis: int  # per-channel axis of the weight
    nncf_name: str  # class name in NNCF scopes (and of the quantized class of ``base``)
    quantize_input: bool  # whether the input is a float activation to quantize
    input_port: int = 0  # port of the activation input in the traced operation


_KINDS: list[LayerKind] = []
#: Quantized class by original class: the classes defined below for the base layers, made on first
#: use for subclasses of them.
_CLASS_CACHE: dict[type, type] = {}


def layer_kind(module: nn.Module) -> LayerKind | None:
    """The kind of a quantizable layer, or ``None`` (custom ``forward`` overrides are not quantized)."""
    return _kind_of_class(getattr(module, "_hf_qat_original_class", type(module)))


def _kind_of_class(cls: type) -> LayerKind | None:
    for kind in _KINDS:
        if issubclass(cls, kind.base) and cls.forward is kind.base.forward:
            return kind
    return None


def nncf_class_name(module: nn.Module) -> str:
    """Class name used in scopes: NNCF's wrapper names for quantizable layers, the class name otherwise."""
    kind = layer_kind(module)
    if kind is None:
        return type(module).__name__
    cls = getattr(module, "_hf_qat_original_class", type(module))
    return kind.nncf_name if cls is kind.base else "NNCFUser" + cls.__name__


class QuantizedLayerMixin:
    """Behaviour shared by every swapped-in quantized layer class.

    Attributes:
        weight_quantizer (`BaseQuantizer` or `None`): fake-quantizes the weight (a submodule).
        _hf_qat_original_class (`type`): the class the layer had before :meth:`from_module` (a class
            attribute of each quantized class).
        _hf_qat_kind (`LayerKind`): the supported base layer (a class attribute).

    The input quantizer, when there is one, is ``layer.__dict__["_hf_qat_input_quantizer"]``: not a
    submodule, since it belongs to the model's ``_hf_qat`` container and may be shared by several layers.
    Likewise the output quantizer (``layer.__dict__["_hf_qat_output_quantizer"]``), which states NNCF 2.x
    wrote place on a layer's result (``NNCFLinear[query]/linear_0|OUTPUT``).
    """

    weight_quantizer: BaseQuantizer | None
    _hf_qat_original_class: type
    _hf_qat_kind: LayerKind

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        weight_quantizer: BaseQuantizer | None = None,
        input_quantizer: BaseQuantizer | None = None,
    ) -> nn.Module:
        """Quantize ``module`` in place: swap its class and attach the quantizers.

        The module keeps its identity, parameters, buffers and hooks; its class becomes ``cls`` for an
        instance of the base layer, or a subclass of both ``cls`` and the module's class for a subclass
        of it (``MyLinear`` -> ``NNCFUserMyLinear``). On an already quantized module only the given
        quantizers are replaced (``None`` keeps the current one).

        Args:
            module (`nn.Module`): a layer of ``cls``'s base class (any supported layer when called on
                ``QuantizedLayerMixin``), whose class does not override ``forward``.
            weight_quantizer (`BaseQuantizer`, *optional*): registered as the ``weight_quantizer`` submodule.
            input_quantizer (`BaseQuantizer`, *optional*): applied to the input; kept out of the
                submodules (it lives in the model's ``_hf_qat`` container).

        Returns:
            `nn.Module`: ``module`` itself.

        Raises:
            `TypeError`: ``module`` is not a quantizable layer of ``cls``'s base class.
        """
        kind = layer_kind(module)
        expected = getattr(cls, "_hf_qat_kind", None)  # None on the mixin: any supported layer
        if kind is None or (expected is not None and kind is not expected):
            what = "a quantizable layer type" if expected is None else f"a {expected.base.__name__} for {cls.__name__}"
            raise TypeError(f"{type(module).__name__} is not {what} (or overrides forward)")
        if not isinstance(module, QuantizedLayerMixin):
            module.__class__ = _quantized_class(type(module))
            module.weight_quantizer = None
        if weight_quantizer is not None:
            module.weight_quantizer = weight_quantizer
        if input_quantizer is not None:
            # Not registered as a submodule: it lives in the model's ``_hf_qat`` container (it can be
            # shared by several layers) and must appear once in the state dict.
            module.__dict__["_hf_qat_input_quantizer"] = input_quantizer
        return module

    def to_module(self) -> nn.Module:
        """Undo :meth:`from_module` in place: restore the original class and drop the quantizers.

        Returns:
            `nn.Module`: the same object, now of its original class (weights unchanged, not quantized).
        """
        original = type(self)._hf_qat_original_class
        d = self.__dict__
        d["_modules"].pop("weight_quantizer", None)
        d.pop("weight_quantizer", None)
        d.pop("_hf_qat_input_quantizer", None)
        d.pop("_hf_qat_output_quantizer", None)
        self.__class__ = original
        return self

    def _hf_qat_weight(self) -> torch.Tensor:
        wq = self.weight_quantizer
        return self.weight if wq is None else wq(self.weight)

    def _hf_qat_quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        iq = self.__dict__.get("_hf_qat_input_quantizer")
        return x if iq is None else iq(x)

    def _hf_qat_quantize_output(self, y: torch.Tensor) -> torch.Tensor:
        oq = self.__dict__.get("_hf_qat_output_quantizer")
        return y if oq is None else oq(y)

    def __reduce_ex__(self, protocol: int) -> Any:
        # Pickled as "the quantized class of <original class>" plus the state, so that classes made
        # for subclasses (which no module attribute names) need not be importable: loading re-makes
        # them. The state (``nn.Module.__getstate__``, a copy of ``__dict__``) keeps the input
        # quantizer by reference, so the pickle memo ties it to the container's copy.
        cls = type(self)
        original = cls._hf_qat_original_class
        if _CLASS_CACHE.get(original) is not cls:  # a further subclass made elsewhere: by reference
            return super().__reduce_ex__(protocol)
        return _rebuild_quantized_layer, (original,), self.__getstate__()


def _rebuild_quantized_layer(original: type) -> nn.Module:
    """An empty instance of the quantized class of ``original`` (unpickling; the state is set next)."""
    cls = _quantized_class(original)
    return cls.__new__(cls)


def _quantized_class(original: type) -> type:
    cls = _CLASS_CACHE.get(original)
    if cls is None:
        kind = _kind_of_class(original)
        if kind is None:
            raise TypeError(f"{original.__qualname__} is not a quantizable layer type (or overrides forward)")
        base_cls = _CLASS_CACHE[kind.base]
        name = "NNCFUser" + original.__name__
        cls = type(
            name,
            (base_cls, original),
            {"_hf_qat_original_class": original, "__module__": __name__, "__qualname__": name},
        )
        _CLASS_CACHE[original] = cls
    return cls


def _register(kind: LayerKind):
    def decorate(cls: type) -> type:
        assert cls.__name__ == kind.nncf_name, "the class name is the NNCF scope name"
        cls._hf_qat_kind = kind
        cls._hf_qat_original_class = kind.base
        _KINDS.append(kind)
        _CLASS_CACHE[kind.base] = cls
        return cls

    return decorate


@_register(LayerKind(nn.Linear, "linear", 0, "NNCFLinear", True))
class NNCFLinear(QuantizedLayerMixin, nn.Linear):
    """``nn.Linear`` with fake-quantized weight (per output channel) and input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._hf_qat_quantize_input(x), self._hf_qat_weight()
        with recompute_fake_quantized():
            y = F.linear(x, w, self.bias)
        return self._hf_qat_quantize_output(y)


class _NNCFConvNd(QuantizedLayerMixin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._hf_qat_quantize_input(x), self._hf_qat_weight()
        with recompute_fake_quantized():
            y = self._conv_forward(x, w, self.bias)
        return self._hf_qat_quantize_output(y)


@_register(LayerKind(nn.Conv1d, "conv1d", 0, "NNCFConv1d", True))
class NNCFConv1d(_NNCFConvNd, nn.Conv1d):
    """``nn.Conv1d`` with fake-quantized weight (per output channel) and input."""


@_register(LayerKind(nn.Conv2d, "conv2d", 0, "NNCFConv2d", True))
class NNCFConv2d(_NNCFConvNd, nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized weight (per output channel) and input."""


@_register(LayerKind(nn.Conv3d, "conv3d", 0, "NNCFConv3d", True))
class NNCFConv3d(_NNCFConvNd, nn.Conv3d):
    """``nn.Conv3d`` with fake-quantized weight (per output channel) and input."""


@_register(LayerKind(nn.Embedding, "embedding", 0, "NNCFEmbedding", False))
class NNCFEmbedding(QuantizedLayerMixin, nn.Embedding):
    """``nn.Embedding`` with a fake-quantized table (per row); its input (indices) is not quantized."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        wq = self.weight_quantizer
        if (
            wq is None
            or self.max_norm is not None
            or not wq.is_enabled_quantization
            or wq._collector is not None
            or wq.spec.grouped
        ):
            weight = self._hf_qat_weight()
            return self._hf_qat_quantize_output(
                F.embedding(ids, weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)
            )
        # Quantization is element-wise given the row's scale, so quantizing only the looked-up rows
        # (with their gathered scales) equals looking up rows of the quantized table, at a fraction of
        # the cost for large vocabularies.
        rows = F.embedding(ids, self.weight, self.padding_idx, None, 2.0, self.scale_grad_by_freq, self.sparse)
        return self._hf_qat_quantize_output(wq.quantize_rows(rows, ids))


try:  # transformers is optional for the bare API
    from transformers.pytorch_utils import Conv1D as _HFConv1D
except ImportError:  # pragma: no cover
    _HFConv1D = None

if _HFConv1D is not None:

    @_register(LayerKind(_HFConv1D, "addmm", 1, "NNCFUserConv1D", True, input_port=1))
    class NNCFUserConv1D(QuantizedLayerMixin, _HFConv1D):
        """transformers' ``Conv1D`` (GPT-2; weight ``[in, out]``) with fake-quantized weight (per output
        channel, axis 1) and input. Defined only when transformers is installed."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            size_out = x.size()[:-1] + (self.nf,)
            x = torch.addmm(self.bias, self._hf_qat_quantize_input(x).view(-1, x.size(-1)), self._hf_qat_weight())
            return self._hf_qat_quantize_output(x.view(size_out))

    __all__.append("NNCFUserConv1D")


def is_wrapped(module: nn.Module) -> bool:
    return isinstance(module, QuantizedLayerMixin)


def wrap_module(
    module: nn.Module,
    weight_quantizer: BaseQuantizer | None,
    input_quantizer: BaseQuantizer | None,
    output_quantizer: BaseQuantizer | None = None,
) -> None:
    """Turn ``module`` into its quantized class in place (idempotent: updates the quantizers).

    Same as ``QuantizedLayerMixin.from_module(module, weight_quantizer, input_quantizer)``, plus an
    optional quantizer on the layer's result (kept, like the input quantizer, out of the submodules).
    """
    QuantizedLayerMixin.from_module(module, weight_quantizer, input_quantizer)
    if output_quantizer is not None:
        module.__dict__["_hf_qat_output_quantizer"] = output_quantizer


def unwrap_module(module: nn.Module) -> None:
    """Restore the original class and drop the quantizers (inverse of :func:`wrap_module`; no-op on
    a module that is not quantized)."""
    if is_wrapped(module):
        module.to_module()
