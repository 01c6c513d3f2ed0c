"""Quantizers on the inputs and outputs of functional operations (``Q @ K^T``, ``P @ V``, fused
attention, and for states NNCF 2.x wrote, any traced operation: ``layer_norm``, ``__add__``, ``linear`` ...).

Functional operations are plain function calls, not modules, so they are reached with a
``TorchFunctionMode`` that is active only while a module owning such a quantization point runs (its
descendants' own operations, and the quantizers' own arithmetic, are skipped). Calls are counted per
operation name within the owner, exactly like the tracer counts them, so the ``k``-th ``matmul`` of a
module is the node ``<scope>/matmul_<k>``. A quantizer on port :data:`OUTPUT_PORT` acts on the
operation's result (NNCF's ``OPERATOR_POST_HOOK``, ids ending ``|OUTPUT``).

``scaled_dot_product_attention`` is decomposed into ``softmax(Q K^T * scale + mask) V`` so that
the attention probabilities can be quantized too: ports 0, 1, 2 are query, key, value and port 3
(:data:`SDPA_PROBS_PORT`) is the probabilities fed to the second product.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .functions import recompute_fake_quantized
from .quantizers import BaseQuantizer
from .tracing import op_name

__all__ = ["MATMUL_OPS", "SDPA_OP", "SDPA_PROBS_PORT", "OUTPUT_PORT", "OpHookManager", "quantize_inputs", "quantized_sdpa"]

MATMUL_OPS = frozenset({"matmul", "__matmul__", "bmm"})
SDPA_OP = "scaled_dot_product_attention"
SDPA_PROBS_PORT = 3
#: Port key of a quantizer on an operation's output.
OUTPUT_PORT = -1


def quantized_sdpa(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, *, quantizers=None
):
    """``F.scaled_dot_product_attention`` written out, with optional quantizers per port."""
    q = quantizers or {}
    if 0 in q:
        query = q[0](query)
    if 1 in q:
        key = q[1](key)
    if 2 in q:
        value = q[2](value)
    L, S = query.size(-2), key.size(-2)
    scale_factor = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if enable_gqa:
        rep = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(rep, dim=-3)
        value = value.repeat_interleave(rep, dim=-3)
    attn = torch.matmul(query, key.transpose(-2, -1)) * scale_factor
    if is_causal:
        causal = torch.ones(L, S, dtype=torch.bool, device=query.device).tril(diagonal=0)
        attn = attn.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn = attn.masked_fill(~attn_mask, float("-inf"))
        else:
            attn = attn + attn_mask
    attn = torch.softmax(attn, dim=-1)
    if SDPA_PROBS_PORT in q:
        attn = q[SDPA_PROBS_PORT](attn)
    if dropout_p > 0.0:
        attn = F.dropout(attn, p=dropout_p, training=True)
    return torch.matmul(attn, value)


def quantize_inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any], quantizers: dict[int, BaseQuantizer]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Apply ``quantizers`` (by input port) to a call's arguments.

    Ports number the arguments as NNCF does (NNCF 3 hook names carry them): positional arguments, then
    keyword arguments in the order given, one port each, except that a list or tuple of tensors takes one
    port per tensor. ``F.layer_norm`` reaches torch as ``(input, normalized_shape, weight=, bias=, eps=)``, so
    its weight is port 2.
    """
    port = 0

    def visit(value):
        nonlocal port
        if isinstance(value, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in value):
            items = []
            for t in value:
                items.append(quantizers[port](t) if port in quantizers else t)
                port += 1
            return tuple(items) if isinstance(value, tuple) else items
        out = quantizers[port](value) if port in quantizers else value
        port += 1
        return out

    new_args = tuple(visit(v) for v in args)
    new_kwargs = {k: visit(v) for k, v in kwargs.items()}
    return new_args, new_kwargs


class _Frame:
    __slots__ = ("module", "hooks", "counters", "prefix")

    def __init__(
        self, module: nn.Module, hooks: dict[tuple[str, int], dict[int, BaseQuantizer]] | None, counters, prefix: str = ""
    ):
        self.module = module
        self.hooks = hooks
        self.counters = counters
        self.prefix = prefix  # "ReLU/" inside a module the owner's forward created on the fly


class _State(threading.local):
    def __init__(self):
        self.stack: list[_Frame] = []
        self.mode: _OpHookMode | None = None
        self.depth = 0  # calls in progress of the model or of a module on the way to an owner

    def __deepcopy__(self, memo):  # per-thread call state is never copied with a model
        return _State()

    def __reduce__(self):
        return (_State, ())


class _OpHookMode(TorchFunctionMode):
    def __init__(self, state: _State):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        stack = self.state.stack
        frame = stack[-1] if stack else None
        if frame is None or frame.hooks is None:
            return func(*args, **kwargs)
        name = op_name(func)
        if name is None:
            return func(*args, **kwargs)
        name = frame.prefix + name
        idx = frame.counters[name]
        frame.counters[name] = idx + 1
        ports = frame.hooks.get((name, idx))
        if not ports:
            return func(*args, **kwargs)
        output_quantizer = ports.get(OUTPUT_PORT)
        inputs = {p: q for p, q in ports.items() if p != OUTPUT_PORT}
        if name == SDPA_OP and inputs:
            out = quantized_sdpa(*args, **kwargs, quantizers=inputs)
        else:
            if inputs:
                args, kwargs = quantize_inputs(args, kwargs, inputs)
            with recompute_fake_quantized():  # matmul keeps the quantizers' inputs, not their outputs
                out = func(*args, **kwargs)
        if output_quantizer is not None and isinstance(out, torch.Tensor) and out.is_floating_point():
            out = output_quantizer(out)
        return out


def _is_alive(handle: Any) -> bool:
    refs = [handle.hooks_dict_ref, *(getattr(handle, "extra_dict_ref", None) or ())]
    return all(ref() is not None for ref in refs)


class OpHookManager:
    """Installs and removes the forward hooks that activate operation-level quantizers."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.state = _State()
        self.handles: list[Any] = []
        self.owners: dict[nn.Module, dict[tuple[str, int], dict[int, BaseQuantizer]]] = {}
        self.generation = 0
        self._counters: dict[int, tuple[int, dict[str, int]]] = {}
        self._global_handles: list[Any] | None = None  # process-wide hooks for on-the-fly modules

    def __getstate__(self) -> dict[str, Any]:
        # Call counters are keyed by ``id(owner)``, which means nothing in a copy. Handles of hooks on
        # modules that no longer exist (weight quantizers dropped by ``strip``) are left out: torch
        # pickles their dead references as ``None`` and then fails to load them.
        handles = [h for h in self.handles if _is_alive(h)]
        return {**self.__dict__, "_counters": {}, "handles": handles, "_global_handles": None}

    def add(self, owner: nn.Module, op: str, index: int, port: int, quantizer: BaseQuantizer) -> None:
        """Quantize input ``port`` (or the output, ``port=OUTPUT_PORT``) of the ``index``-th ``op`` call in ``owner``."""
        self.owners.setdefault(owner, {}).setdefault((op, index), {})[port] = quantizer

    def install(self) -> None:
        self.remove()
        if not self.owners:
            return
        # Call counters restart when a forward enters the model from outside: at the model itself, or at any
        # module between it and an owner when that module is called directly (``model.bert(...)``).
        parents = {child: parent for parent in self.model.modules() for child in parent.children()}
        entries = set()
        for owner in self.owners:
            m = owner
            while m is not None and m not in entries:
                entries.add(m)
                m = parents.get(m)
        for m in entries:
            self.handles.append(m.register_forward_pre_hook(self._enter))
            self.handles.append(m.register_forward_hook(self._leave, always_call=True))
        owned = set()
        for owner in self.owners:
            for m in owner.modules():
                owned.add(m)
        # quantizers run inside owners (a layer's input quantizer, a hook's quantizer): their arithmetic
        # is not an operation of the owner and must not move its call counts
        for ports in list(self.owners.values()):
            for by_port in ports.values():
                owned.update(by_port.values())
        for attr in ("_hf_qat_input_quantizer", "_hf_qat_output_quantizer"):
            owned.update([m.__dict__[attr] for m in owned if attr in m.__dict__])
        for m in owned:
            if m in self.owners:
                self.handles.append(m.register_forward_pre_hook(self._owner_pre))
            else:
                self.handles.append(m.register_forward_pre_hook(self._suspend_pre))
            self.handles.append(m.register_forward_hook(self._post, always_call=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for h in self._global_handles or ():
            h.remove()
        self._global_handles = None

    @property
    def _has_anonymous_points(self) -> bool:
        return any("/" in op for hooks in self.owners.values() for op, _ in hooks)

    # -- hooks --------------------------------------------------------------------------------
    def _enter(self, module, args):
        st = self.state
        st.depth += 1
        if st.depth > 1:
            return
        self.generation += 1  # a new forward from outside: call counters restart
        if self._global_handles is None and self._has_anonymous_points:
            # Points inside modules a forward creates on the fly (``nn.ReLU()(x)``) need to see those
            # modules enter and leave; only process-wide hooks do. Installed here, on the first forward,
            # so that copies of the model (deepcopy, pickling) install their own.
            self._global_handles = [
                torch.nn.modules.module.register_module_forward_pre_hook(self._anonymous_pre),
                torch.nn.modules.module.register_module_forward_hook(self._post, always_call=True),
            ]

    def _counters_for(self, owner: nn.Module) -> dict[str, int]:
        gen, counters = self._counters.get(id(owner), (-1, None))
        if gen != self.generation:
            counters = defaultdict(int)
            self._counters[id(owner)] = (self.generation, counters)
        return counters

    def _push(self, frame: _Frame) -> None:
        st = self.state
        st.stack.append(frame)
        if st.mode is None:
            st.mode = _OpHookMode(st)
            st.mode.__enter__()

    # Hooks are bound methods (no closures) so that ``copy.deepcopy(model)`` copies them with the manager.
    def _owner_pre(self, module, args):
        self._push(_Frame(module, self.owners[module], self._counters_for(module)))

    def _suspend_pre(self, module, args):
        if self.state.stack:
            self._push(_Frame(module, None, None))

    def _leave(self, module, args, output):
        self.state.depth = max(self.state.depth - 1, 0)

    def _anonymous_pre(self, module, args):
        stack = self.state.stack
        if not stack or stack[-1].hooks is None:
            return
        if any(getattr(h, "__self__", None) is self for h in module._forward_pre_hooks.values()):
            return  # a module of the model: its own hooks push its frame
        top = stack[-1]
        self._push(_Frame(module, top.hooks, top.counters, f"{top.prefix}{type(module).__name__}/"))

    def _post(self, module, args, output):
        st = self.state
        if not st.stack or st.stack[-1].module is not module:
            return  # this call pushed nothing (a descendant called outside its owner)
        st.stack.pop()
        if not st.stack and st.mode is not None:
            mode, st.mode = st.mode, None
            mode.__exit__(None, None, None)
