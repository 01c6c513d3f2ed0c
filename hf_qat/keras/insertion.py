"""From a Keras model and the config to a :class:`QuantizerSetup`, and from a setup to quantized layers.

Layers are found by walking the model's layer tree (layers nested in other layers included, such
as keras-hub's transformer blocks and the ``EinsumDense`` projections inside attention). A layer's
node name is its path of layer names, ``"bert_backbone/transformer_layer_0/self_attention_layer/query"``;
weight quantizers are ``OPERATION_WITH_WEIGHTS`` points on it, input quantizers ``OPERATOR_PRE_HOOK``
points on its input port 0, exactly the ids the PyTorch backend writes (``<node>|INPUT0``).
"""

from __future__ import annotations

import gc
import re
from dataclasses import dataclass
from typing import Any

import keras

from ..core.algo_config import QuantizationSettings
from ..core.placement import group_spec, validate_scopes, weight_group_size
from ..core.spec import QuantizerGroup, QuantizerSpec
from ..core.state import QuantizationPoint, QuantizerSetup, TargetType
from ..errors import (
    CompressionStateError,
    ConfigError,
    NothingToQuantizeError,
    UnsupportedLayerError,
)
from .layers import (
    FLOAT_BY_DESIGN,
    LayerKind,
    LayerQuantizers,
    create_layer_variables,
    layer_kind,
    layer_quantizers,
    quantize_layer,
    unquantize_layer,
    weight_layout,
)
from .quantizers import KerasQuantizer

__all__ = [
    "LayerNode",
    "apply_setup",
    "build_quantizer_setup",
    "remove_quantizers",
    "walk_layers",
]


@dataclass
class LayerNode:
    """A layer of the model with its path."""

    path: str
    layer: Any
    kind: LayerKind | None


def _children(layer: Any) -> list[Any]:
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _variable_scope_path(layer: Any, kind: LayerKind | None) -> str | None:
    """The layer's path as Keras writes it in its variables' paths (``"transformer_layer_0/.../query"``)."""
    if kind is None:
        return None
    var = getattr(layer, "_" + kind.weight_attr, None)
    if var is None:
        var = getattr(layer, kind.weight_attr, None)
    path = getattr(var, "path", None)
    return path.rsplit("/", 1)[0] if isinstance(path, str) and "/" in path else None


def walk_layers(model: Any) -> list[LayerNode]:
    """Every layer under ``model`` once (depth first, in tracking order), with its node name.

    Quantizable layers are named by the path Keras gives their weights (``"d1"``,
    ``"transformer_layer_0/self_attention_layer/query"``): it does not depend on the auto-numbered
    names of enclosing models (``bert_backbone_1``), so a compression state fits a fresh copy of
    the model built in the same process. Other layers, and any path two layers share, use the
    chain of layer names from the model down.
    """
    seen: set[int] = set()
    nodes: list[LayerNode] = []

    def visit(layer: Any, prefix: str) -> None:
        for child in _children(layer):
            if id(child) in seen or isinstance(child, keras.layers.InputLayer):
                continue
            seen.add(id(child))
            path = f"{prefix}/{child.name}" if prefix else child.name
            nodes.append(LayerNode(path, child, layer_kind(child)))
            visit(child, path)

    visit(model, "")
    preferred = [_variable_scope_path(n.layer, n.kind) for n in nodes]
    counts: dict[str, int] = {}
    for p in preferred:
        if p:
            counts[p] = counts.get(p, 0) + 1
    names = {n.path for n in nodes}
    for node, p in zip(nodes, preferred):
        if p and counts[p] == 1 and (p == node.path or p not in names):
            node.path = p
    return nodes


#: Names of variables that are added to activations rather than multiplied with them (class
#: tokens, position tables, norms): kept in float, as the PyTorch backend keeps such parameters.
_ADDITIVE = re.compile(r"(token|position|embedding|cls|bias|gamma|beta|scale|mean|variance)", re.IGNORECASE)


def _own_matrices(layer: Any) -> list[str]:
    """The layer's own (not its sublayers') rank >= 2 variables that look like weights of a product."""
    own = list(getattr(layer, "_trainable_variables", []))
    own += list(getattr(layer, "_non_trainable_variables", []))
    return [f"{v.name} {list(v.shape)}" for v in own if len(v.shape) >= 2 and not _ADDITIVE.search(v.name)]


def _fed_by_model_input(model: Any, layer: Any) -> bool:
    """Whether a top-level functional layer reads a model input directly."""
    try:
        nodes = layer._inbound_nodes
    except AttributeError:
        return False
    for node in nodes:
        for t in getattr(node, "input_tensors", []):
            history = getattr(t, "_keras_history", None)
            if history is not None and isinstance(history.operation, keras.layers.InputLayer):
                return True
    return False


def build_quantizer_setup(model: Any, settings: QuantizationSettings) -> QuantizerSetup:
    """Choose quantization points for a built Keras model from the config.

    Raises:
        [`ScopeError`]: a scope pattern matches no layer (unless ``validate_scopes`` is false).
        [`UnsupportedLayerError`]: a layer in scope holds a matrix hf_qat cannot quantize.
        [`NothingToQuantizeError`]: no point is left to quantize.
    """
    nodes = list(walk_layers(model))
    names = [n.path for n in nodes]
    if settings.validate_scopes:
        validate_scopes(
            settings,
            names + [f"{n.path}|INPUT0" for n in nodes if n.kind is not None and n.kind.quantize_input],
        )
    own = _own_matrices(model)
    if own and not settings.ignored_scopes:
        raise UnsupportedLayerError(
            getattr(model, "name", "<model>"),
            type(model).__name__,
            f"holds weight(s) {own} directly (a subclassed model computing with its own variables): hf_qat "
            "quantizes layers and cannot see into such a computation. Move the computation into "
            'keras.layers.Dense/EinsumDense/Conv layers, or set "ignored_scopes" to accept leaving it in float.',
        )
    points: list[QuantizationPoint] = []
    wq_potential = aq_potential = 0
    first_conv_done = False
    for node in nodes:
        if node.kind is None:
            matrices = _own_matrices(node.layer)
            if (
                matrices
                and type(node.layer).__name__ not in FLOAT_BY_DESIGN
                and settings.is_node_quantized(node.path, QuantizerGroup.WEIGHTS)
            ):
                raise UnsupportedLayerError(
                    node.path,
                    type(node.layer).__name__,
                    f"holds weight(s) {matrices} that hf_qat cannot quantize: it is not a Dense, EinsumDense, "
                    "Conv1D/2D/3D or Embedding layer (or a subclass of one), nor a layer kept in float by design "
                    f"({', '.join(FLOAT_BY_DESIGN)}). hf_qat never leaves a weight silently unquantized: build the "
                    f'layer from keras.layers.Dense/EinsumDense, or add {node.path!r} to "ignored_scopes" to keep it '
                    "in float.",
                )
            continue
        if getattr(node.layer, "quantization_mode", None):
            raise UnsupportedLayerError(
                node.path,
                type(node.layer).__name__,
                f"is already quantized by Keras (quantization_mode {node.layer.quantization_mode!r}); "
                "hf_qat trains fake quantizers on a float model: start from the unquantized model.",
            )
        layout = weight_layout(node.layer, node.kind)
        wq_potential += 1
        if settings.is_node_quantized(node.path, QuantizerGroup.WEIGHTS):
            scale_shape = [1] * len(layout.shape)
            for a in layout.channel_axes:
                scale_shape[a] = layout.shape[a]
            group_size, where = weight_group_size(settings, [node.path])
            if group_size is not None:
                raise ConfigError(
                    where,
                    group_size,
                    f"no group_size for {node.path}: group-wise weights are PyTorch-only in hf_qat (the Keras "
                    "backend quantizes weights per channel or per tensor)",
                )
            spec = group_spec(settings, QuantizerGroup.WEIGHTS, [node.path], tuple(scale_shape))
            # NNCF-TF rules: overflow fix trains 8-bit weights on 7 bits; weights are narrow-range otherwise
            is_conv = node.kind.name == "Conv"
            if spec.num_bits == 8 and (
                settings.overflow_fix == "enable"
                or (settings.overflow_fix == "first_layer_only" and is_conv and not first_conv_done)
            ):
                spec.half_range = True
            first_conv_done = first_conv_done or is_conv
            spec.narrow_range = not spec.half_range
            points.append(
                QuantizationPoint(
                    TargetType.OPERATION_WITH_WEIGHTS,
                    node.path,
                    None,
                    spec,
                    [node.path],
                )
            )
        if node.kind.quantize_input:
            aq_potential += 1
            qid = f"{node.path}|INPUT0"
            if not settings.is_node_quantized(node.path, QuantizerGroup.ACTIVATIONS):
                continue
            if not settings.quantize_inputs and _fed_by_model_input(model, node.layer):
                continue
            if settings.activations.scheme == "dynamic_per_token":
                raise ConfigError(
                    "$.compression.activations.scheme",
                    "dynamic_per_token",
                    "'static' or 'none': per-token dynamic activations are PyTorch-only in hf_qat",
                )
            spec = group_spec(settings, QuantizerGroup.ACTIVATIONS, [node.path, qid], None)
            points.append(QuantizationPoint(TargetType.OPERATOR_PRE_HOOK, node.path, 0, spec, [node.path]))
    if not points:
        raise NothingToQuantizeError(
            "no layer of the model is quantizable with this config (quantizable: Dense, EinsumDense, Conv1D/2D/3D, "
            "Embedding), or ignored_scopes/target_scopes exclude all of them.",
            nearest=names[:20],
        )
    return QuantizerSetup(dict(enumerate(points)), [], aq_potential, wq_potential)


def apply_setup(model: Any, setup: QuantizerSetup) -> dict[str, KerasQuantizer]:
    """Create the quantizers of ``setup`` on the model's layers (in place).

    Every point is resolved and checked before anything is modified, so a setup that does not fit
    the model raises [`CompressionStateError`] listing the first mismatches and leaves the model
    untouched. Returns the quantizers by id.
    """
    by_path = {n.path: n for n in walk_layers(model)}
    problems: list[str] = []
    plan: dict[str, dict[str, QuantizationPoint]] = {}
    for qp in setup.points.values():
        node = by_path.get(qp.target_node_name)
        if node is None:
            problems.append(
                f"point {qp.quantizer_id!r}: the model has no layer at path {qp.target_node_name!r}"
                " (the compression state was made for a different architecture)"
            )
        elif node.kind is None:
            problems.append(f"point {qp.quantizer_id!r}: layer is a {type(node.layer).__name__}, which hf_qat does not quantize")
        elif layer_quantizers(node.layer) is not None:
            problems.append(f"point {qp.quantizer_id!r}: layer is already quantized (create_compressed_model ran twice?)")
        elif qp.is_weight:
            layout = weight_layout(node.layer, node.kind)
            channels = 1
            for s in qp.qspec.scale_shape:
                channels *= int(s)
            if qp.qspec.per_channel and channels != layout.num_channels:
                problems.append(
                    f"weight point {qp.quantizer_id!r}: scale_shape {list(qp.qspec.scale_shape)} has {channels} channels, "
                    f"the layer's {node.kind.weight_attr} {list(layout.shape)} has {layout.num_channels}"
                )
            else:
                plan.setdefault(node.path, {})["weight"] = qp
        elif qp.is_output:
            problems.append(
                f"activation point {qp.quantizer_id!r}: quantizers on layer outputs (NNCF's OPERATOR_POST_HOOK) are "
                "restored by the PyTorch backend only; Keras models quantize layer inputs"
            )
        elif qp.input_port_id != 0 or not node.kind.quantize_input:
            problems.append(f"activation point {qp.quantizer_id!r}: a {node.kind.name} layer is quantized at input port 0 only")
        else:
            plan.setdefault(node.path, {})["input"] = qp
        if len(problems) >= 10:
            break
    if problems:
        raise CompressionStateError(
            f"The compression state does not fit the model ({len(problems)} mismatch(es) shown):\n  - " + "\n  - ".join(problems)
        )
    quantizers: dict[str, KerasQuantizer] = {}
    done: list[Any] = []
    try:
        for path, entries in plan.items():
            node = by_path[path]
            lq = LayerQuantizers(node.kind)

            def build(node=node, entries=entries, lq=lq) -> None:
                if "weight" in entries:
                    qp = entries["weight"]
                    lq.weight = KerasQuantizer(
                        qp.quantizer_id,
                        _copy(qp.qspec),
                        node.layer,
                        "hf_qat_weight",
                        weight_layout(node.layer, node.kind),
                        host_path=node.path,
                        host_weight_attr=node.kind.weight_attr,
                    )
                if "input" in entries:
                    qp = entries["input"]
                    lq.input = KerasQuantizer(
                        qp.quantizer_id,
                        _copy(qp.qspec),
                        node.layer,
                        "hf_qat_input",
                        host_path=node.path,
                    )

            create_layer_variables(node.layer, build)
            quantize_layer(node.layer, node.kind, lq)
            done.append(node.layer)
            for q in lq.all():
                quantizers[q.id] = q
    except Exception:
        for layer in done:
            unquantize_layer(layer)
        raise
    return quantizers


def _copy(spec: QuantizerSpec) -> QuantizerSpec:
    return QuantizerSpec.from_state(spec.to_state())


def remove_quantizers(model: Any) -> None:
    """Undo :func:`apply_setup` on every layer of ``model`` (the removed variables' buffers are freed by one
    garbage collection at the end)."""
    for node in walk_layers(model):
        unquantize_layer(node.layer)
    gc.collect()
