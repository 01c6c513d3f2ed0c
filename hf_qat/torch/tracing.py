"""Operation-level tracing of one forward pass, with NNCF-style node names.

The tracer runs the model once under a ``TorchFunctionMode`` and records every torch operation as
a node named like NNCF's legacy graph: ``<scope>/<op>_<k>``, where the scope is the chain of
modules on the call stack (``BertForSequenceClassification/BertModel[bert]/.../NNCFLinear[query]``)
and ``k`` counts calls of ``<op>`` in that scope. It also follows which tensors derive from the
model inputs (activations) so that only those are quantized.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .layers import nncf_class_name

__all__ = ["TracedNode", "GraphTrace", "trace_model", "op_name", "parse_node_name", "relative_op", "MODEL_INPUT_SCOPE"]

MODEL_INPUT_SCOPE = "/nncf_model_input"
_SKIPPED_OPS = {"__get__", "__set__", "__torch_function__", "__repr__", "__format__", "__len__", "__bool__"}
_NODE_RE = re.compile(r"^(?P<scope>.*)/(?P<op>[^/\[\]]+)_(?P<idx>\d+)$")
_COMPONENT_RE = re.compile(r"^(?P<cls>[^\[\]]+)\[(?P<attr>[^\]]+)\]$")


#: Tensor methods that Python operators dispatch to (``a + b`` arrives as ``Tensor.add``), named as
#: NNCF names the operators.
_OPERATOR_NAMES = {
    "add": "__add__",
    "sub": "__sub__",
    "mul": "__mul__",
    "div": "__truediv__",
    "matmul": "__matmul__",
    "pow": "__pow__",
}


def op_name(func: Callable) -> str | None:
    """Name of a torch callable as NNCF writes it in node names, or ``None`` for untraced callables.

    Tensor methods behind Python operators get NNCF's operator names (``__add__``, ``__mul__``,
    ``__truediv__``, ``__matmul__`` ...); ``torch.add(...)`` and friends keep their plain names.
    """
    name = getattr(func, "__name__", None)
    if name is None or name in _SKIPPED_OPS:
        return None
    if name in _OPERATOR_NAMES and getattr(func, "__qualname__", "").startswith("TensorBase."):
        return _OPERATOR_NAMES[name]
    return name


def parse_node_name(node_name: str) -> tuple[list[str], str, int]:
    """Split ``A/B[b]/C[c]/op_3`` into ``(["b", "c"], "op", 3)`` (module attribute path, op, call index).

    Modules a forward creates on the fly (``nn.ReLU()(x)`` in DistilBERT's classifier) are not attributes
    of the model: their scope components have no ``[attribute]`` (``A/B[b]/ReLU/relu_0``) and their
    operations belong to the enclosing module under a relative op name: ``(["b"], "ReLU/relu", 0)``.

    Raises:
        ValueError: if the name does not have NNCF's node-name shape.
    """
    m = _NODE_RE.match(node_name)
    if not m:
        raise ValueError(f"{node_name!r} is not a node name of the form '<scope>/<op>_<index>'")
    parts = m.group("scope").split("/")
    attrs: list[str] = []
    anonymous: list[str] = []
    for comp in parts[1:]:
        cm = _COMPONENT_RE.match(comp)
        if cm and not anonymous:
            attrs.append(cm.group("attr"))
        elif not cm and comp and "[" not in comp and "]" not in comp:
            anonymous.append(comp)
        else:
            raise ValueError(f"scope component {comp!r} of {node_name!r} is not of the form 'Class[attribute]'")
    return attrs, "/".join([*anonymous, m.group("op")]), int(m.group("idx"))


def relative_op(node: TracedNode, trace: GraphTrace) -> str:
    """The node's op name relative to its module (``"relu"``, or ``"ReLU/relu"`` inside an on-the-fly module)."""
    own = trace.module_scopes.get(node.module_path, node.scope)
    extra = node.scope[len(own) + 1 :] if node.scope.startswith(own + "/") else ""
    return f"{extra}/{node.op}" if extra else node.op


@dataclass
class TracedNode:
    name: str
    scope: str
    module_path: str  # dotted path of the innermost module ("" for the root)
    op: str
    index: int
    inputs: list[tuple[int, int, bool]]  # (port, tensor key, is float activation)
    outputs: list[int]
    fn: str = ""  # the callable's own name (``add`` for ``a + b``), as NNCF 3 names operations
    call_stack: tuple[str, ...] = ()  # paths of the model's modules being called, outermost first


@dataclass
class GraphTrace:
    nodes: list[TracedNode] = field(default_factory=list)
    producers: dict[int, str] = field(default_factory=dict)  # tensor key -> producing node name
    model_inputs: set[int] = field(default_factory=set)
    module_scopes: dict[str, str] = field(default_factory=dict)  # module path -> scope (first call)

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def nodes_in(self, module_path: str) -> Iterator[TracedNode]:
        return (n for n in self.nodes if n.module_path == module_path)


class _Tracer(TorchFunctionMode):
    def __init__(self, trace: GraphTrace, names: dict[int, str], root: nn.Module):
        super().__init__()
        self.trace = trace
        self.names = names
        self.stack: list[tuple[str, str]] = []  # (scope, module path)
        self.called: list[str] = []  # paths of the model's modules on the call stack (not on-the-fly ones)
        self.counters: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.activations: set[int] = set()
        self.keep_alive: list[Any] = []
        self.root = root
        self.modules = dict(root.named_modules(remove_duplicate=False))
        self.scopes: dict[str, str] = {}

    def key(self, t: torch.Tensor) -> int:
        self.keep_alive.append(t)
        return id(t)

    def push(self, module: nn.Module) -> None:
        path = self.names.get(id(module))
        if path is None:  # a module created on the fly, not part of the model
            scope = (self.stack[-1][0] if self.stack else "") + f"/{type(module).__name__}"
            self.stack.append((scope, self.stack[-1][1] if self.stack else ""))
            return
        scope = self.scope_of(path)
        self.trace.module_scopes.setdefault(path, scope)
        self.stack.append((scope, path))

    def scope_of(self, path: str) -> str:
        """Structural scope of a module: ``Root/Child[attr]/...`` along its dotted path (NNCF's naming)."""
        if path in self.scopes:
            return self.scopes[path]
        if path == "":
            scope = nncf_class_name(self.root)
        else:
            parent, _, attr = path.rpartition(".")
            scope = f"{self.scope_of(parent)}/{nncf_class_name(self.modules[path])}[{attr}]"
        self.scopes[path] = scope
        return scope

    def pop(self) -> None:
        self.stack.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = op_name(func)
        if name is None or not self.stack:
            return func(*args, **kwargs)
        scope, path = self.stack[-1]
        idx = self.counters[scope][name]
        self.counters[scope][name] += 1
        node_name = f"{scope}/{name}_{idx}"
        flat_in, _ = tree_flatten((args, kwargs))
        inputs = []
        port = 0
        for t in flat_in:
            if isinstance(t, torch.Tensor):
                k = self.key(t)
                inputs.append((port, k, k in self.activations and t.is_floating_point()))
                port += 1
        out = func(*args, **kwargs)
        is_act = any(k in self.activations for _, k, _ in inputs)
        outputs = []
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                k = self.key(t)
                outputs.append(k)
                if is_act:
                    self.activations.add(k)
                    self.trace.producers.setdefault(k, node_name)
        fn = getattr(func, "__name__", name)
        self.trace.nodes.append(TracedNode(node_name, scope, path, name, idx, inputs, outputs, fn, tuple(self.called)))
        return out


def trace_model(model: nn.Module, forward: Callable[[nn.Module], Any]) -> GraphTrace:
    """Run ``forward(model)`` once in eval mode without gradients and record its operations."""
    trace = GraphTrace()
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    tracer = _Tracer(trace, names, model)

    def pre_hook(module, args, kwargs):
        if module is model:
            for i, t in enumerate(t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)):
                k = tracer.key(t)
                tracer.activations.add(k)
                trace.model_inputs.add(k)
                trace.producers[k] = f"{MODEL_INPUT_SCOPE}_{i}"
        tracer.push(module)
        tracer.called.append(names[id(module)])

    def post_hook(module, args, kwargs, output):
        tracer.pop()
        tracer.called.pop()

    anonymous: list[nn.Module] = []

    def anonymous_pre(module, args):  # modules the forward creates on the fly: NNCF scopes them as ``.../ReLU``
        if id(module) not in names and tracer.stack:
            anonymous.append(module)
            tracer.push(module)

    def anonymous_post(module, args, output):
        if anonymous and anonymous[-1] is module:
            anonymous.pop()
            tracer.pop()

    hooks = [
        torch.nn.modules.module.register_module_forward_pre_hook(anonymous_pre),
        torch.nn.modules.module.register_module_forward_hook(anonymous_post, always_call=True),
    ]
    for m in model.modules():
        hooks.append(m.register_forward_pre_hook(pre_hook, with_kwargs=True))
        hooks.append(m.register_forward_hook(post_hook, with_kwargs=True, always_call=True))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tracer:
            forward(model)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
        tracer.keep_alive.clear()
    return trace
