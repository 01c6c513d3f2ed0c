"""From a traced graph and the config to a :class:`QuantizerSetup`, and from a setup to quantizers in the model.

Placement (NNCF's CPU hardware config restricted to what QAT on transformers needs):

- weights of ``Linear``, ``Conv1d/2d/3d``, ``Embedding`` and transformers' ``Conv1D``;
- activations at the input of those layers (except ``Embedding``, whose input is indices);
- both inputs of activation-by-activation products (``matmul``, ``@``, ``bmm``), i.e. ``Q @ K^T``
  and ``P @ V`` in eager attention, and query, key, value and probabilities of
  ``scaled_dot_product_attention``.

Points that quantize the same tensor (the hidden state feeding query, key and value) share one
quantizer: a *unified scale group* in the compression state.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from torch import nn

from ..core.algo_config import QuantizationSettings
from ..core.placement import group_spec as _group_spec
from ..core.placement import validate_scopes as _validate_scopes
from ..core.placement import weight_group_size as _weight_group_size
from ..core.spec import QuantizerGroup, QuantizerSpec, grouped_scale_shape
from ..core.state import QuantizationPoint, QuantizerSetup, TargetType
from ..errors import CompressionStateError, ConfigError, NothingToQuantizeError
from .layers import layer_kind, wrap_module
from .op_hooks import MATMUL_OPS, OUTPUT_PORT, SDPA_OP, SDPA_PROBS_PORT, OpHookManager
from .quantizers import BaseQuantizer, create_quantizer
from .tracing import GraphTrace, parse_node_name

__all__ = ["build_quantizer_setup", "QuantizationContainer", "apply_setup", "CONTAINER_NAME"]

CONTAINER_NAME = "_hf_qat"


def build_quantizer_setup(
    model: nn.Module, trace: GraphTrace, settings: QuantizationSettings, scope_names: list[str] | None = None
) -> QuantizerSetup:
    """Choose quantization points for ``model`` from its trace and the config.

    ``scope_names`` (default: the trace's node names) are the operations scopes are validated against: the
    backend passes every operation the model can run for its inputs, also those the traced batch did not reach
    (the attention-mask add that transformers 5 skips on batches without padding).

    Raises:
        [`ScopeError`]: a scope pattern matches no traced operation (unless ``validate_scopes`` is false).
        [`NothingToQuantizeError`]: no point is left to quantize.
    """
    names = trace.node_names
    if settings.validate_scopes:
        _validate_scopes(settings, list(dict.fromkeys([*names, *(scope_names or [])])))
    modules = dict(model.named_modules())
    points: list[QuantizationPoint] = []
    tensor_of: dict[int, int] = {}  # point index -> tensor key (activations)
    wq_potential = aq_potential = 0
    seen_modules: set[str] = set()
    first_conv_done = False

    for node in trace.nodes:
        module = modules.get(node.module_path)
        kind = layer_kind(module) if module is not None else None
        # -- weighted layers: first call of the layer's main op ----------------------------
        if kind is not None and node.op == kind.op_name and node.module_path not in seen_modules:
            seen_modules.add(node.module_path)
            wq_potential += 1
            weight = module.weight
            if settings.is_node_quantized(node.name, QuantizerGroup.WEIGHTS):
                shape = [1] * weight.dim()
                shape[kind.channel_axis] = weight.shape[kind.channel_axis]
                spec = _group_spec(settings, QuantizerGroup.WEIGHTS, [node.name], tuple(shape))
                spec = _grouped(spec, settings, node.name, weight, kind.channel_axis)
                is_conv = isinstance(module, (nn.Conv2d, nn.Conv3d))
                if spec.num_bits == 8 and (
                    settings.overflow_fix == "enable"
                    or (settings.overflow_fix == "first_layer_only" and is_conv and not first_conv_done)
                ):
                    spec.half_range = True
                first_conv_done = first_conv_done or is_conv
                spec.narrow_range = spec.num_bits == 8 and not spec.half_range
                points.append(QuantizationPoint(TargetType.OPERATION_WITH_WEIGHTS, node.name, None, spec, [node.name]))
            port_inputs = [(k, is_act) for p, k, is_act in node.inputs if p == kind.input_port]
            if kind.quantize_input and port_inputs and port_inputs[0][1]:
                aq_potential += 1
                _add_activation(points, tensor_of, settings, trace, node.name, kind.input_port, port_inputs[0][0])
            continue
        # -- activation products -----------------------------------------------------------
        if node.op in MATMUL_OPS:
            acts = [(p, k) for p, k, is_act in node.inputs[:2] if is_act]
            if len(acts) == 2:
                for port, key in acts:
                    aq_potential += 1
                    _add_activation(points, tensor_of, settings, trace, node.name, port, key)
        elif node.op == SDPA_OP:
            for port, key, is_act in node.inputs[:3]:
                if is_act:
                    aq_potential += 1
                    _add_activation(points, tensor_of, settings, trace, node.name, port, key)
            aq_potential += 1
            _add_activation(points, tensor_of, settings, trace, node.name, SDPA_PROBS_PORT, None)

    if not points:
        raise NothingToQuantizeError(
            "no weight or activation of the model is quantizable with this config "
            "(quantizable: Linear, Conv1d/2d/3d, Embedding, transformers Conv1D and activation matmuls), "
            "or ignored_scopes/target_scopes exclude all of them.",
            nearest=names[:20],
        )
    by_tensor: dict[int, list[int]] = defaultdict(list)
    for i, key in tensor_of.items():
        by_tensor[key].append(i)
    groups = [sorted(g) for g in by_tensor.values() if len(g) > 1]
    for g in groups:
        # a shared quantizer takes the spec of its first point; record the consumers on each
        consumers = [points[i].target_node_name for i in g]
        for i in g:
            points[i].qspec = QuantizerSpec.from_state(points[g[0]].qspec.to_state())
            points[i].directly_quantized_operator_node_names = consumers
    return QuantizerSetup(dict(enumerate(points)), groups, aq_potential, wq_potential)


def _grouped(spec: QuantizerSpec, settings: QuantizationSettings, node_name: str, weight, channel_axis: int) -> QuantizerSpec:
    """``spec`` made group-wise when the config gives the layer a ``group_size`` (2-D weights: Linear, Conv1D,
    Embedding; the input axis is the one that is not the output channel's).

    Raises:
        [`ConfigError`]: the layer is a convolution, or ``group_size`` does not divide its input dimension.
    """
    group_size, path = _weight_group_size(settings, [node_name])
    if group_size is None:
        return spec
    if weight.dim() != 2:
        raise ConfigError(
            path,
            group_size,
            f"no group_size for {node_name}: group-wise scales apply to 2-D weights (Linear, Conv1D, "
            f"Embedding), this weight has shape {list(weight.shape)}; exclude it with a scope_overrides entry whose "
            "group_size is null",
        )
    input_axis = 1 - channel_axis
    try:
        shape = grouped_scale_shape(tuple(weight.shape), input_axis, group_size)
    except ValueError:
        raise ConfigError(
            path, group_size, f"a divisor of the input dimension {weight.shape[input_axis]} of {node_name}"
        ) from None
    return dataclasses.replace(spec, scale_shape=shape, group_size=group_size, group_axis=input_axis)


def _add_activation(points, tensor_of, settings, trace, node_name, port, key) -> None:
    if not settings.is_node_quantized(node_name, QuantizerGroup.ACTIVATIONS):
        return
    if key is not None and not settings.quantize_inputs and key in trace.model_inputs:
        return
    qid = f"{node_name}|INPUT{port}"
    spec = _group_spec(settings, QuantizerGroup.ACTIVATIONS, [node_name, qid], None)
    if settings.activations.scheme == "dynamic_per_token":  # symmetric, narrow (a scale per token, [-127, 127])
        spec = QuantizerSpec(num_bits=spec.num_bits, narrow_range=True, signedness_to_force=True, dynamic=True)
    points.append(QuantizationPoint(TargetType.OPERATOR_PRE_HOOK, node_name, port, spec, [node_name]))
    if key is not None:
        tensor_of[len(points) - 1] = key


class QuantizationContainer(nn.Module):
    """Holds the activation quantizers of a compressed model (state-dict prefix ``_hf_qat.``)."""

    def __init__(self):
        super().__init__()
        self.external_quantizers = nn.ModuleDict()

    def forward(self, x):
        """Identity: the container only holds state. (Defined so that ``nn.Sequential`` models, which
        call every child in order, pass through it.)"""
        return x


def _resolve_module(model: nn.Module, node_name: str) -> tuple[nn.Module, str, int, str]:
    try:
        attrs, op, idx = parse_node_name(node_name)
    except ValueError as e:
        raise CompressionStateError(f"quantization point {node_name!r}: {e}") from None
    path = ".".join(attrs)
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError:
        raise CompressionStateError(
            f"quantization point {node_name!r} refers to module {path!r}, which the model does not have. "
            "The compression state was made for a different model architecture."
        ) from None
    return module, op, idx, path


def apply_setup(model: nn.Module, setup: QuantizerSetup) -> tuple[dict[str, BaseQuantizer], OpHookManager]:
    """Create the quantizers of ``setup`` and attach them to ``model`` (in place).

    Every point is resolved before anything is modified, so a setup that does not fit the model
    raises [`CompressionStateError`] listing the first mismatches and leaves the model untouched.
    Returns the quantizers by id and the operation-hook manager (already installed).
    """
    problems: list[str] = []
    resolved = {}
    for qp_id, qp in setup.points.items():
        try:
            module, op, idx, path = _resolve_module(model, qp.target_node_name)
        except CompressionStateError as e:
            problems.append(str(e))
            continue
        kind = layer_kind(module)
        if qp.is_weight:
            if kind is None or op != kind.op_name:
                problems.append(
                    f"weight point {qp.target_node_name!r}: module {path!r} is a {type(module).__name__}, "
                    "expected a quantizable layer (Linear, Conv, Embedding, Conv1D) with that operation"
                )
                continue
            shape = tuple(qp.qspec.scale_shape)
            expected = [1] * module.weight.dim()
            if qp.qspec.grouped:
                try:
                    fits = shape == grouped_scale_shape(tuple(module.weight.shape), qp.qspec.group_axis, qp.qspec.group_size)
                except (ValueError, IndexError):
                    fits = False
                if not fits:
                    problems.append(
                        f"weight point {qp.target_node_name!r}: group-wise scale_shape {list(shape)} (group_size "
                        f"{qp.qspec.group_size} along axis {qp.qspec.group_axis}) does not fit weight shape "
                        f"{list(module.weight.shape)}"
                    )
                    continue
            elif len(shape) > 1 or shape[0] != 1:
                if len(shape) != module.weight.dim() or any(s not in (1, module.weight.shape[i]) for i, s in enumerate(shape)):
                    problems.append(
                        f"weight point {qp.target_node_name!r}: scale_shape {list(shape)} does not fit "
                        f"weight shape {list(module.weight.shape)} (expected {expected} with one channel axis)"
                    )
                    continue
        elif not qp.is_output and kind is not None and op == kind.op_name and qp.input_port_id != kind.input_port:
            problems.append(
                f"activation point {qp.quantizer_id!r}: a {type(module).__name__} is quantized at input port {kind.input_port} only"
            )
            continue
        resolved[qp_id] = (module, op, idx, kind)
        if len(problems) >= 10:
            break
    if problems:
        raise CompressionStateError(
            f"The compression state does not fit the model ({len(problems)} mismatch(es) shown):\n  - "
            + "\n  - ".join(problems[:10])
        )

    container = getattr(model, CONTAINER_NAME, None)
    if not isinstance(container, QuantizationContainer):
        container = QuantizationContainer()
        setattr(model, CONTAINER_NAME, container)
    quantizers: dict[str, BaseQuantizer] = {}
    hooks = OpHookManager(model)
    for group in setup.groups():
        qid = setup.quantizer_id(group)
        first = setup.points[group[0]]
        quantizer = create_quantizer(first.qspec, shared=len(group) > 1)
        quantizer._hf_qat_id = qid
        quantizers[qid] = quantizer
        if first.is_weight:
            module = resolved[group[0]][0]
            wrap_module(module, quantizer, None)
            continue
        container.external_quantizers[qid] = quantizer
        for qp_id in group:
            module, op, idx, kind = resolved[qp_id]
            qp = setup.points[qp_id]
            if qp.is_output and kind is not None and op == kind.op_name and idx == 0:
                wrap_module(module, None, None, quantizer)  # the layer's result (also in export forwards)
            elif qp.is_output:
                hooks.add(module, op, idx, OUTPUT_PORT, quantizer)
            elif kind is not None and op == kind.op_name:
                wrap_module(module, None, quantizer)
            else:
                hooks.add(module, op, idx, qp.input_port_id, quantizer)
    hooks.install()
    return quantizers, hooks
