"""NNCF 3's checkpoint format, both ways: read what ``nncf.quantize`` made, write what ``nncf.torch.load_from_config`` reads.

NNCF 3 saves a quantized model as ``nncf.torch.get_config(model)``::

    {"compression_state": [{"hook_names_in_model": ["pre_hooks.bert/encoder/attention/self/query/linear/0__1.0"],
                            "module_path": "nncf.torch.quantization.layers",
                            "module_cls_name": "SymmetricQuantizer",
                            "module_config": {num_bits, mode, signedness_to_force, narrow_range, half_range,
                                              scale_shape, logarithm_scale, is_quantized_on_export}}, ...]}

plus ``model.state_dict()``, whose quantizers are ``__nncf_hooks.<hook name>.<parameter>``. A hook name is
``pre_hooks.<op>__<input port>.<i>`` or ``post_hooks.<op>__<output port>.<i>``; ``<op>`` is
``<module>/<function>/<call>``, where ``<module>`` joins the attribute names of the modules on the call
stack that are named children of the module calling them (``bert/encoder/attention/self/query``: the
``ModuleList`` index is not part of it) and ``<call>`` counts the calls of that function under that name in
one forward (layer 1's query projection is ``.../query/linear/1``). Ports count a call's arguments
(positional, then keyword) the way :func:`hf_qat.torch.op_hooks.quantize_inputs` does.

These names are therefore computed from a trace of the model, then matched to hf_qat's NNCF 2-style node
names, and the quantizers become an hf_qat :class:`~hf_qat.core.state.QuantizerSetup` (weights of quantized
layers, inputs of any operation, outputs of any operation, shared quantizers as unified groups).
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..core.scopes import nearest_names
from ..core.spec import QuantizerSpec
from ..core.state import QuantizationPoint, QuantizerSetup, TargetType, make_compression_state
from ..errors import CompressionStateError
from .checkpoint import NNCF3_STATE_PREFIX, load_state
from .checkpoint import rename_nncf3_keys as from_nncf3_state_dict
from .controller import QuantizationController
from .inputs import example_forward_from_input_info
from .insertion import CONTAINER_NAME
from .layers import is_wrapped, layer_kind
from .model_creation import create_compressed_model, remove_compression, switched_to_eager_attention
from .op_hooks import SDPA_OP, SDPA_PROBS_PORT
from .tracing import GraphTrace, trace_model

__all__ = [
    "NNCF3_STATE_PREFIX",
    "nncf3_op_names",
    "compression_state_from_nncf3",
    "load_nncf3",
    "from_nncf3_state_dict",
    "get_nncf3_config",
    "nncf3_state_dict",
    "example_forward",
    "input_info_of",
]

_QUANTIZER_MODULE = "nncf.torch.quantization.layers"
_CLASS_OF_MODE = {"symmetric": "SymmetricQuantizer", "asymmetric": "AsymmetricQuantizer"}
_MODE_OF_CLASS = {v: k for k, v in _CLASS_OF_MODE.items()}
_SPEC_KEYS = (
    "num_bits",
    "mode",
    "signedness_to_force",
    "narrow_range",
    "half_range",
    "scale_shape",
    "logarithm_scale",
    "is_quantized_on_export",
)
_HOOK_RE = re.compile(r"^(?P<kind>pre_hooks|post_hooks)\.(?P<op>.+)__(?P<port>\d+)\.(?P<index>\d+)$")


# -- names ------------------------------------------------------------------------------------------
def _relative_name(call_stack: tuple[str, ...]) -> str:
    names = []
    prev = call_stack[0] if call_stack else ""
    for path in call_stack[1:]:
        parent, _, attr = path.rpartition(".")
        if path != prev and parent == prev:
            names.append(attr)
        prev = path
    return "/".join(names)


def nncf3_op_names(trace: GraphTrace) -> dict[str, str]:
    """NNCF 3's operation name (``bert/encoder/attention/self/query/linear/1``) of every traced node, by node name."""
    calls: dict[str, int] = defaultdict(int)
    out = {}
    for node in trace.nodes:
        key = f"{_relative_name(node.call_stack)}/{node.fn}"
        out[node.name] = f"{key}/{calls[key]}"
        calls[key] += 1
    return out


def _weight_port(kind) -> int:
    """Port of the weight in the layer's call as NNCF counts it: ``F.linear(x, w, b)``, ``F.embedding(ids, w)``,
    ``F.conv2d(x, w, b)`` -> 1; transformers' ``Conv1D`` calls ``torch.addmm(b, x, w)`` -> 2."""
    return 2 if kind.op_name == "addmm" else 1


def example_forward(model: nn.Module, example_input: Any) -> Callable[[nn.Module], Any]:
    """A forward on ``example_input`` (dict: keywords; tuple: positional; else one argument); ``None`` for a
    transformers text model means ``input_ids`` and ``attention_mask`` of shape ``[1, 16]``."""
    if example_input is None:
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "vocab_size"):
            raise ValueError(
                "example_input is required for a model that is not a transformers text model: pass the inputs of one "
                "forward (a dict of tensors, a tuple of positional arguments or one tensor)."
            )
        ids = torch.ones(1, 16, dtype=torch.long)
        example_input = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if isinstance(example_input, Mapping):
        return lambda m: m(**example_input)
    if isinstance(example_input, (tuple, list)):
        return lambda m: m(*example_input)
    return lambda m: m(example_input)


def input_info_of(example_input: Any) -> list[dict[str, Any]] | None:
    """NNCF ``input_info`` describing ``example_input`` (a dict of tensors, or ``None`` as in `example_forward`)."""
    if example_input is None:
        example_input = {"input_ids": torch.ones(1, 16, dtype=torch.long), "attention_mask": torch.ones(1, 16, dtype=torch.long)}
    if not isinstance(example_input, Mapping) or not all(isinstance(v, torch.Tensor) for v in example_input.values()):
        return None
    return [
        {"sample_size": list(v.shape), "type": "long" if not v.is_floating_point() else "float", "keyword": k}
        for k, v in example_input.items()
    ]


# -- reading ----------------------------------------------------------------------------------------
def _entries(config: Any) -> list[dict[str, Any]]:
    if not isinstance(config, Mapping) or not isinstance(config.get("compression_state"), list):
        found = sorted(config)[:6] if isinstance(config, Mapping) else type(config).__name__
        raise CompressionStateError(
            "An NNCF 3 config is the dict nncf.torch.get_config(model) returns, {'compression_state': [ ... ]}; "
            f"found {found}. A legacy state ({{'builder_state', 'ctrl_state'}}) goes to create_compressed_model(..., "
            "compression_state=...)."
        )
    entries = config["compression_state"]
    for i, entry in enumerate(entries):
        where = f"compression_state[{i}]"
        if not isinstance(entry, Mapping):
            raise CompressionStateError(f"{where} is a {type(entry).__name__}; expected an object")
        hooks = entry.get("hook_names_in_model")
        if not isinstance(hooks, list) or not hooks or not all(isinstance(h, str) for h in hooks):
            raise CompressionStateError(f"{where}['hook_names_in_model'] is {hooks!r}; expected a non-empty list of strings")
        cls, path = entry.get("module_cls_name"), entry.get("module_path")
        if path != _QUANTIZER_MODULE or cls not in _MODE_OF_CLASS:
            raise CompressionStateError(
                f"{where} is a {cls!r} from {path!r}; hf_qat reads NNCF 3's quantizers ({', '.join(_MODE_OF_CLASS)} from "
                f"{_QUANTIZER_MODULE!r}). Other NNCF 3 modules (weight compression, pruning ...) are not quantization-aware "
                "training state; nothing was modified."
            )
        if not isinstance(entry.get("module_config"), Mapping):
            raise CompressionStateError(f"{where}['module_config'] must be an object")
    return entries


def _spec(entry: Mapping[str, Any], where: str) -> QuantizerSpec:
    cfg = dict(entry["module_config"])
    mode = _MODE_OF_CLASS[entry["module_cls_name"]]
    if cfg.get("mode", mode) != mode:
        raise CompressionStateError(f"{where}: module_config mode {cfg.get('mode')!r} contradicts {entry['module_cls_name']}")
    cfg["mode"] = mode
    try:
        return QuantizerSpec.from_state({k: cfg[k] for k in _SPEC_KEYS if k in cfg})
    except (KeyError, TypeError, ValueError) as e:
        raise CompressionStateError(f"{where}: module_config is malformed ({type(e).__name__}: {e})") from e


def compression_state_from_nncf3(
    model: nn.Module, config: Mapping[str, Any], example_input: Any = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Convert an NNCF 3 config (``nncf.torch.get_config``) into hf_qat's (NNCF 2 layout) compression state.

    The model is traced once on ``example_input`` (default, for transformers text models: ``input_ids`` and
    ``attention_mask`` of shape ``[1, 16]``) to name its operations as NNCF 3 does.

    Returns:
        ``(compression_state, hook_prefixes)``: the state for ``create_compressed_model(...,
        compression_state=...)`` and, per NNCF 3 hook name, the state-dict prefix its quantizer gets in hf_qat.

    Raises:
        [`CompressionStateError`]: a malformed config, a non-quantizer entry, or hooks naming operations the model
            does not run (listed, with the nearest names it does run); nothing is modified.
    """
    entries = _entries(config)
    with switched_to_eager_attention(model):
        trace = trace_model(model, example_forward(model, example_input))
    names = nncf3_op_names(trace)
    by_op = {op: node for node, op in zip(trace.nodes, names.values())}
    modules = dict(model.named_modules())
    points: dict[int, QuantizationPoint] = {}
    groups: list[list[int]] = []
    point_hooks: dict[int, str] = {}
    missing: list[str] = []
    for i, entry in enumerate(entries):
        where = f"compression_state[{i}]"
        spec = _spec(entry, where)
        group = []
        for hook in entry["hook_names_in_model"]:
            m = _HOOK_RE.match(hook)
            if m is None:
                raise CompressionStateError(
                    f"{where}: hook name {hook!r} is not of NNCF 3's form 'pre_hooks.<op>__<port>.<i>' or 'post_hooks.<op>__<port>.<i>'"
                )
            node = by_op.get(m["op"])
            if node is None:
                missing.append(hook)
                continue
            port = int(m["port"])
            module = modules.get(node.module_path)
            kind = layer_kind(module) if module is not None else None
            on_layer = kind is not None and node.op == kind.op_name and node.index == 0
            if m["kind"] == "post_hooks":
                if port != 0:
                    raise CompressionStateError(
                        f"{where}: {hook!r} quantizes output {port}; hf_qat quantizes an operation's output 0"
                    )
                qp = QuantizationPoint(TargetType.OPERATOR_POST_HOOK, node.name, None, spec, [node.name])
            elif on_layer and port == _weight_port(kind):
                qp = QuantizationPoint(TargetType.OPERATION_WITH_WEIGHTS, node.name, None, spec, [node.name])
            else:
                qp = QuantizationPoint(TargetType.OPERATOR_PRE_HOOK, node.name, port, spec, [node.name])
            idx = len(points)
            points[idx] = qp
            point_hooks[idx] = hook
            group.append(idx)
        if len(group) > 1:
            if any(points[j].is_weight for j in group):
                raise CompressionStateError(f"{where}: a weight quantizer shared by several hooks is not supported ({group})")
            groups.append(group)
    if missing:
        known = sorted(names.values())
        shown = "\n  - ".join(f"{h} (nearest: {nearest_names(_HOOK_RE.match(h)['op'], known, 3)})" for h in missing[:10])
        raise CompressionStateError(
            f"The NNCF 3 config names {len(missing)} operation(s) this model does not run:\n  - {shown}\n"
            "It was made for another model, another transformers version, or other inputs (transformers 5 skips the "
            "attention-mask add on batches without padding: pass the example_input NNCF quantized with). Nothing was modified."
        )
    layers = sum(1 for m in model.modules() if layer_kind(m) is not None)
    setup = QuantizerSetup(points, groups, sum(not p.is_weight for p in points.values()), layers)
    prefixes = {}
    for group in setup.groups():
        first = setup.points[group[0]]
        if first.is_weight:
            path = next(n.module_path for n in trace.nodes if n.name == first.target_node_name)
            prefix = f"{path}.weight_quantizer."
        else:
            prefix = f"{CONTAINER_NAME}.external_quantizers.{setup.quantizer_id(group)}."
        for j in group:
            prefixes[point_hooks[j]] = prefix
    return make_compression_state(setup, {}), prefixes


class _Nncf3KeysHook:
    """``load_state_dict`` pre-hook of a model restored from NNCF 3: renames ``__nncf_hooks.`` keys in place, so
    NNCF 3's own flow (``model.load_state_dict(sd)``) works. An object, not a closure, so the model pickles."""

    def __init__(self, prefixes: dict[str, str]):
        self.prefixes = prefixes

    def __call__(self, module, state_dict, prefix, *args) -> None:
        keys = [k for k in state_dict if k.startswith(prefix + NNCF3_STATE_PREFIX)]
        if not keys:
            return
        renamed = from_nncf3_state_dict({k[len(prefix) :]: state_dict.pop(k) for k in keys}, self.prefixes)
        for k, v in renamed.items():
            state_dict.setdefault(prefix + k, v)


def load_nncf3(
    model: nn.Module,
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    example_input: Any = None,
    nncf_config: Mapping[str, Any] | None = None,
) -> tuple[QuantizationController, nn.Module]:
    """Make ``model`` (a fresh float model) the hf_qat model that an NNCF 3 config describes; load ``state_dict``.

    The hf_qat counterpart of ``nncf.torch.load_from_config(model, config)`` + ``model.load_state_dict(sd)``,
    returning a controller, so that a model NNCF 3 quantized (``nncf.quantize``) can be fine-tuned with
    QATTrainer (``compression_ctrl=ctrl``) and exported. ``model.load_state_dict`` of the returned model also
    accepts NNCF 3's keys.

    Args:
        model: the float model NNCF quantized (same architecture and transformers version).
        config: ``nncf.torch.get_config(quantized_model)``.
        state_dict: ``quantized_model.state_dict()`` (loaded strictly when given).
        example_input: inputs of one forward used to name operations (see [`compression_state_from_nncf3`]).
        nncf_config: the NNCF config the controller keeps (default: ``input_info`` from ``example_input`` and
            8-bit quantization), used by training and export.

    Raises:
        [`CompressionStateError`]: the config or state dict does not fit the model; nothing is modified.
    """
    state, prefixes = compression_state_from_nncf3(model, config, example_input)
    if nncf_config is None:
        nncf_config = {"compression": {"algorithm": "quantization"}}
        info = input_info_of(example_input)
        if info is not None:
            nncf_config["input_info"] = info
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    ctrl, model = create_compressed_model(
        model, dict(nncf_config), compression_state=state, dummy_forward_fn=example_forward(model, example_input)
    )
    container = getattr(model, CONTAINER_NAME)
    container.nncf3_hook_prefixes = dict(prefixes)
    if state_dict is not None:
        try:
            load_state(model, dict(state_dict), is_resume=True)  # NNCF 3 keys mapped by the prefixes set above
        except CompressionStateError:
            remove_compression(ctrl, attention)  # nothing half-applied
            raise
    model.register_load_state_dict_pre_hook(_Nncf3KeysHook(container.nncf3_hook_prefixes))
    return ctrl, model


# -- writing ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _float_view(ctrl: QuantizationController) -> Iterator[nn.Module]:
    """The compressed model with every quantizer out of the computation (so a trace names the float model's
    operations only), restored on exit."""
    model = ctrl.model
    saved = []
    for m in model.modules():
        if is_wrapped(m):
            d = m.__dict__
            saved.append(
                (
                    m,
                    m._modules.get("weight_quantizer"),
                    d.pop("_hf_qat_input_quantizer", None),
                    d.pop("_hf_qat_output_quantizer", None),
                )
            )
            m._modules["weight_quantizer"] = None
    hooks = ctrl._hooks
    hooks.remove()
    try:
        yield model
    finally:
        for m, wq, iq, oq in saved:
            m._modules["weight_quantizer"] = wq
            if iq is not None:
                m.__dict__["_hf_qat_input_quantizer"] = iq
            if oq is not None:
                m.__dict__["_hf_qat_output_quantizer"] = oq
        hooks.install()


def _hook_names(ctrl: QuantizationController, example_input: Any) -> dict[str, list[str]]:
    """NNCF 3 hook names of every quantizer of ``ctrl``, by hf_qat quantizer id."""
    model = ctrl.model
    if example_input is None and isinstance(ctrl.config, Mapping) and "input_info" in ctrl.config:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        forward = example_forward_from_input_info(ctrl.config["input_info"], device)
    else:
        forward = example_forward(model, example_input)
    with _float_view(ctrl), torch.no_grad():
        trace = trace_model(model, forward)
    names = nncf3_op_names(trace)
    modules = dict(model.named_modules())
    nodes = {n.name: n for n in trace.nodes}
    setup = ctrl.setup
    out: dict[str, list[str]] = {}
    missing = []
    for group in setup.groups():
        hooks = []
        for j in group:
            qp = setup.points[j]
            op = names.get(qp.target_node_name)
            if op is None:
                missing.append(qp.quantizer_id)
                continue
            if qp.is_weight:
                hooks.append(f"pre_hooks.{op}__{_weight_port(layer_kind(modules[nodes[qp.target_node_name].module_path]))}.0")
            elif qp.is_output:
                hooks.append(f"post_hooks.{op}__0.0")
            else:
                if nodes[qp.target_node_name].op == SDPA_OP and qp.input_port_id == SDPA_PROBS_PORT:
                    raise CompressionStateError(
                        f"{qp.quantizer_id}: the attention probabilities inside scaled_dot_product_attention have no NNCF 3 "
                        "hook (NNCF 3 does not decompose it); compress with eager attention to write an NNCF 3 config."
                    )
                hooks.append(f"pre_hooks.{op}__{qp.input_port_id}.0")
        out[setup.quantizer_id(group)] = hooks
    if missing:
        raise CompressionStateError(
            f"{len(missing)} quantizer(s) sit on operations a trace of the model does not run (first: {missing[:3]}); "
            "pass the example_input the model was compressed with."
        )
    return out


def get_nncf3_config(ctrl: QuantizationController, example_input: Any = None) -> dict[str, Any]:
    """The model's quantizers as ``nncf.torch.get_config`` writes them, for ``nncf.torch.load_from_config(model, config)``.

    Operations are named from a trace on ``example_input`` (default: the controller's ``input_info``).
    Save it as JSON with [`nncf3_state_dict`]; NNCF 3 restores a fresh float model with
    ``load_from_config(model, config)`` and ``model.load_state_dict(state_dict)``.
    """
    ctrl.refuse_hf_qat_only("An NNCF 3 config")
    hooks = _hook_names(ctrl, example_input)
    entries = []
    for group in ctrl.setup.groups():
        spec = ctrl.setup.points[group[0]].qspec.to_state()
        entries.append(
            {
                "hook_names_in_model": hooks[ctrl.setup.quantizer_id(group)],
                "module_path": _QUANTIZER_MODULE,
                "module_cls_name": _CLASS_OF_MODE[spec["mode"]],
                "module_config": {k: spec[k] for k in _SPEC_KEYS},
            }
        )
    return {"compression_state": entries}


def nncf3_state_dict(ctrl: QuantizationController, example_input: Any = None) -> dict[str, torch.Tensor]:
    """The model's state dict in NNCF 3's layout: the float model's keys plus ``__nncf_hooks.<hook>.<p>`` per quantizer.

    Pairs with [`get_nncf3_config`] (same ``example_input``).
    """
    hooks = _hook_names(ctrl, example_input)
    quantizer_keys = set()
    out: dict[str, torch.Tensor] = {}
    for qid, q in ctrl.quantizers.items():
        for name, value in q.state_dict().items():
            for hook in hooks[qid]:
                out[f"{NNCF3_STATE_PREFIX}{hook}.{name}"] = value
    for key, value in ctrl.model.state_dict().items():
        if ".weight_quantizer." in key or key.startswith(f"{CONTAINER_NAME}."):
            quantizer_keys.add(key)
            continue
        out[key] = value
    return out
