"""Quantized versions of weighted layers, made by swapping a module's class in place.

A quantized ``nn.Linear`` stays an ``nn.Linear`` (same object, same parameters, same hooks); its
class becomes ``NNCFLinear``, a subclass whose ``forward`` fake-quantizes the weight (``weight_quantizer``
submodule) and the input (a quantizer owned by the model's ``_hf_qat`` container, possibly shared
with other consumers of the same tensor). :func:`unwrap_module` reverses the swap.

Supported: ``nn.Linear``, ``nn.Conv1d/2d/3d``, ``nn.Embedding`` and transformers' ``Conv1D`` (GPT-2),
plus subclasses of these that do not override ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .quantizers import BaseQuantizer

__all__ = ["LayerKind", "layer_kind", "wrap_module", "unwrap_module", "is_wrapped", "nncf_class_name"]


@dataclass(frozen=True)
class LayerKind:
    base: type
    op_name: str  # traced operation that consumes the weight (node name "<scope>/<op_name>_0")
    channel_axis: int  # per-channel axis of the weight
    nncf_name: str  # class name in NNCF scopes
    quantize_input: bool  # whether the input is a float activation to quantize
    input_port: int = 0  # port of the activation input in the traced operation


def _linear_forward(self, x):
    return F.linear(self._hf_qat_quantize_input(x), self._hf_qat_weight(), self.bias)


def _conv_forward(self, x):
    return self._conv_forward(self._hf_qat_quantize_input(x), self._hf_qat_weight(), self.bias)


def _conv1d_transformers_forward(self, x):
    size_out = x.size()[:-1] + (self.nf,)
    x = torch.addmm(self.bias, self._hf_qat_quantize_input(x).view(-1, x.size(-1)), self._hf_qat_weight())
    return x.view(size_out)


def _embedding_forward(self, ids):
    wq = self.weight_quantizer
    if wq is None or self.max_norm is not None or not wq.is_enabled_quantization or wq._collector is not None:
        weight = self._hf_qat_weight()
        return F.embedding(ids, weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)
    # Quantization is element-wise given the row's scale, so quantizing only the looked-up rows
    # (with their gathered scales) equals looking up rows of the quantized table, at a fraction of
    # the cost for large vocabularies.
    rows = F.embedding(ids, self.weight, self.padding_idx, None, 2.0, self.scale_grad_by_freq, self.sparse)
    return wq.quantize_rows(rows, ids)


_FORWARDS: dict[type, Callable] = {}
_KINDS: list[LayerKind] = []


def _register(kind: LayerKind, forward: Callable) -> None:
    _KINDS.append(kind)
    _FORWARDS[kind.base] = forward


_register(LayerKind(nn.Linear, "linear", 0, "NNCFLinear", True), _linear_forward)
_register(LayerKind(nn.Conv1d, "conv1d", 0, "NNCFConv1d", True), _conv_forward)
_register(LayerKind(nn.Conv2d, "conv2d", 0, "NNCFConv2d", True), _conv_forward)
_register(LayerKind(nn.Conv3d, "conv3d", 0, "NNCFConv3d", True), _conv_forward)
_register(LayerKind(nn.Embedding, "embedding", 0, "NNCFEmbedding", False), _embedding_forward)
try:  # transformers is optional for the bare API
    from transformers.pytorch_utils import Conv1D as _HFConv1D

    _register(LayerKind(_HFConv1D, "addmm", 1, "NNCFUserConv1D", True, input_port=1), _conv1d_transformers_forward)
except ImportError:  # pragma: no cover
    pass


def layer_kind(module: nn.Module) -> LayerKind | None:
    """The kind of a quantizable layer, or ``None`` (custom ``forward`` overrides are not quantized)."""
    cls = getattr(module, "_hf_qat_original_class", type(module))
    for kind in _KINDS:
        if isinstance(module, kind.base) and cls.forward is kind.base.forward:
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
    """Behaviour shared by every swapped-in quantized layer class."""

    weight_quantizer: BaseQuantizer | None

    def _hf_qat_weight(self) -> torch.Tensor:
        wq = self.weight_quantizer
        return self.weight if wq is None else wq(self.weight)

    def _hf_qat_quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        iq = self.__dict__.get("_hf_qat_input_quantizer")
        return x if iq is None else iq(x)


_CLASS_CACHE: dict[type, type] = {}


def _quantized_class(cls: type, kind: LayerKind) -> type:
    if cls not in _CLASS_CACHE:
        name = kind.nncf_name if cls is kind.base else "NNCFUser" + cls.__name__
        _CLASS_CACHE[cls] = type(name, (QuantizedLayerMixin, cls), {"forward": _FORWARDS[kind.base], "__module__": __name__})
    return _CLASS_CACHE[cls]


def is_wrapped(module: nn.Module) -> bool:
    return isinstance(module, QuantizedLayerMixin)


def wrap_module(module: nn.Module, weight_quantizer: BaseQuantizer | None, input_quantizer: BaseQuantizer | None) -> None:
    """Turn ``module`` into its quantized class in place (idempotent: updates the quantizers)."""
    kind = layer_kind(module)
    if kind is None:
        raise TypeError(f"{type(module).__name__} is not a quantizable layer type")
    if not is_wrapped(module):
        original = type(module)
        module.__class__ = _quantized_class(original, kind)
        module._hf_qat_original_class = original
        module.weight_quantizer = None
    if weight_quantizer is not None:
        module.weight_quantizer = weight_quantizer
    if input_quantizer is not None:
        # Not registered as a submodule: it lives in the model's ``_hf_qat`` container (it can be
        # shared by several layers) and must appear once in the state dict.
        module.__dict__["_hf_qat_input_quantizer"] = input_quantizer


def unwrap_module(module: nn.Module) -> None:
    """Restore the original class and drop the quantizers (inverse of :func:`wrap_module`)."""
    if not is_wrapped(module):
        return
    module.__class__ = module._hf_qat_original_class
    del module._hf_qat_original_class
    if "weight_quantizer" in module._modules:
        del module._modules["weight_quantizer"]
    module.__dict__.pop("weight_quantizer", None)
    module.__dict__.pop("_hf_qat_input_quantizer", None)
