"""Export of compressed Keras models: TF2 frozen graph, SavedModel, and INT8 ONNX through tf2onnx.

- ``frozen_graph``: the model's inference function with every variable folded to a constant
  (``convert_variables_to_constants_v2``), written as a binary GraphDef. Quantizers appear as
  ``FakeQuantWithMinMaxVars`` (inputs) and ``FakeQuantWithMinMaxVarsPerChannel`` (per-channel
  weights) nodes with constant ranges; TF runtimes and converters recognise them.
- ``saved_model``: a SavedModel folder with a ``serving_default`` signature (same graph, weights
  kept as variables).
- ``onnx``: tf2onnx maps input quantizers to uint8 ``QuantizeLinear``/``DequantizeLinear``; weight
  quantizers are emitted as ``QuantizeAndDequantizeV3`` on the trained int8 grid, which tf2onnx
  maps to per-channel int8 ``QuantizeLinear``/``DequantizeLinear``. hf_qat then folds each
  weight's ``QuantizeLinear`` into an int8 initializer, so the file stores int8 weights and the
  graph dequantizes them. The file is verified against the Keras model in ONNX Runtime.

Every format is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from ..errors import ExportError
from ..utils.io import atomic_path
from .init import input_names as dict_input_names

__all__ = ["FORMATS", "KerasExportResult", "export_keras"]

logger = logging.getLogger(__name__)

FORMATS = ("frozen_graph", "saved_model", "onnx")
DEFAULT_OPSET = 17


@dataclass
class KerasExportResult:
    """What an export wrote and how it was checked.

    Attributes:
        path: the file (frozen graph, ONNX) or folder (SavedModel) written.
        save_format: ``"frozen_graph"``, ``"saved_model"`` or ``"onnx"``.
        input_names / output_names: names in the exported graph.
        num_fake_quant: FakeQuant nodes in the graph (TF formats).
        num_quantize_linear / num_int8_weights: QuantizeLinear nodes and int8 weight initializers (ONNX).
        verification: ONNX Runtime comparison with the Keras model (ONNX, when verified).
    """

    path: str
    save_format: str
    input_names: list[str]
    output_names: list[str]
    num_fake_quant: int = 0
    num_quantize_linear: int = 0
    num_int8_weights: int = 0
    verification: dict[str, Any] = field(default_factory=dict)


# -- signature -----------------------------------------------------------------------------------
def _signature(
    model: Any, input_names: list[str] | None
) -> tuple[list[tf.TensorSpec], list[str], bool]:
    """Input specs (batch and other unknown dims dynamic), names, and whether the model takes a dict."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ExportError(
            f"Cannot export {type(model).__name__}: it has no symbolic inputs (a subclassed or unbuilt Sequential "
            "model). Build it on keras.Input(...) (Functional API) or give Sequential an Input layer.",
            module=type(model).__name__,
        )
    dict_names = dict_input_names(model)
    if dict_names is not None:
        ordered = [model._inputs_struct[n] for n in dict_names]
        names = dict_names
    else:
        ordered = list(inputs)
        names = input_names or [t.name for t in ordered]
    if len(names) != len(ordered):
        raise ExportError(
            f"input_names has {len(names)} names; the model takes {len(ordered)} inputs"
        )
    specs = [
        tf.TensorSpec([None] + list(t.shape[1:]), t.dtype, name=n)
        for t, n in zip(ordered, names)
    ]
    return specs, names, dict_names is not None


def feed_arrays(model: Any, features: Any) -> dict[str, np.ndarray]:
    """``{input name: array}`` for an exported graph from model features (dict, tuple or tensor),
    cast to the graph's input dtypes (keras-hub preprocessors emit boolean padding masks, for example)."""
    specs, names, takes_dict = _signature(model, None)
    if takes_dict:
        values = [features[n] for n in names]
    else:
        values = list(features) if isinstance(features, (tuple, list)) else [features]
    return {
        n: np.asarray(v).astype(s.dtype.as_numpy_dtype)
        for n, v, s in zip(names, values, specs)
    }


def _inference_fn(model: Any, names: list[str], takes_dict: bool):
    def fn(*args):
        features = (
            dict(zip(names, args))
            if takes_dict
            else (args[0] if len(args) == 1 else tuple(args))
        )
        out = model(features, training=False)
        if isinstance(out, dict):
            return {k: out[k] for k in sorted(out)}
        if isinstance(out, (list, tuple)):
            return {f"output_{i}": o for i, o in enumerate(out)}
        return {"output_0": out}

    return fn


@contextlib.contextmanager
def export_mode(ctrl: Any, mode: str) -> Iterator[None]:
    """Quantizers emit their export ops (constant ranges, no ``tf.cond``) while tracing."""
    uninitialized = [qid for qid, q in ctrl.quantizers.items() if not q.initialized]
    if uninitialized:
        raise ExportError(
            f"{len(uninitialized)} quantizer(s) have no initialised range (e.g. {uninitialized[:3]}): register calibration "
            "data before create_compressed_model, or restore a checkpoint, then export.",
            module=uninitialized[0],
        )
    for q in ctrl.quantizers.values():
        q.freeze_for_export(mode)
    try:
        yield
    finally:
        for q in ctrl.quantizers.values():
            q.freeze_for_export(None)


def concrete_function(ctrl: Any, mode: str, input_names: list[str] | None = None):
    specs, names, takes_dict = _signature(ctrl.model, input_names)
    fn = tf.function(
        _inference_fn(ctrl.model, names, takes_dict),
        input_signature=specs,
        autograph=False,
    )
    with export_mode(ctrl, mode):
        cf = fn.get_concrete_function()
    return cf, specs, names


# -- TF formats ----------------------------------------------------------------------------------
def _freeze(ctrl: Any, input_names: list[str] | None, mode: str = "graph"):
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    cf, specs, names = concrete_function(ctrl, mode, input_names)
    return convert_variables_to_constants_v2(cf), specs, names


def _count_ops(graph_def: Any, prefix: str) -> int:
    nodes = list(graph_def.node) + [
        n for f in graph_def.library.function for n in f.node_def
    ]
    return sum(n.op.startswith(prefix) for n in nodes)


def export_frozen_graph(
    ctrl: Any, path: str, input_names: list[str] | None = None
) -> KerasExportResult:
    frozen, _specs, names = _freeze(ctrl, input_names)
    graph_def = frozen.graph.as_graph_def()
    with atomic_path(path, "frozen graph") as tmp, open(tmp, "wb") as f:
        f.write(graph_def.SerializeToString())
    outputs = [t.name.split(":")[0] for t in frozen.outputs]
    return KerasExportResult(
        path,
        "frozen_graph",
        names,
        outputs,
        num_fake_quant=_count_ops(graph_def, "FakeQuant"),
    )


class _Servable(tf.Module):
    def __init__(self, model: Any, fn: Any):
        super().__init__()
        self.model = model
        self.serve = fn


def export_saved_model(
    ctrl: Any, path: str, input_names: list[str] | None = None
) -> KerasExportResult:
    specs, names, takes_dict = _signature(ctrl.model, input_names)
    fn = tf.function(
        _inference_fn(ctrl.model, names, takes_dict),
        input_signature=specs,
        autograph=False,
    )
    with export_mode(ctrl, "graph"):
        cf = fn.get_concrete_function()
        module = _Servable(ctrl.model, fn)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
        try:
            tf.saved_model.save(module, tmp, signatures={"serving_default": cf})
            if os.path.isdir(path):
                old = tmp + ".old"
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    graph_def = cf.graph.as_graph_def()
    return KerasExportResult(
        path,
        "saved_model",
        names,
        sorted(cf.structured_outputs),
        num_fake_quant=_count_ops(graph_def, "FakeQuant"),
    )


# -- ONNX ----------------------------------------------------------------------------------------
def _check_onnx_exportable(ctrl: Any) -> None:
    for q in ctrl.activation_quantizers.values():
        if q.spec.train_bits != 8 or q.spec.narrow_range or q.spec.per_channel:
            raise ExportError(
                f"Cannot export the input quantizer {q.id!r} to ONNX: tf2onnx maps 8-bit, per-tensor, full-range "
                f"input quantizers only (this one: {q.spec.train_bits} bits, narrow_range={q.spec.narrow_range}, "
                f"per_channel={q.spec.per_channel}). Export to 'frozen_graph' or 'saved_model' instead.",
                module=q.id,
                op="FakeQuantWithMinMaxVars",
            )


def replace_erfc(model: Any) -> int:
    """Rewrite TF's ``Erfc`` (exact GELU: ``0.5 * x * erfc(-x / sqrt(2))``), which tf2onnx passes
    through but ONNX lacks, as ``1 - Erf(x)``. Returns the number of nodes rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    count = 0
    nodes = []
    one = None
    for node in graph.node:
        if node.op_type != "Erfc" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        if one is None:
            one = "hf_qat_erfc_one"
            graph.initializer.append(
                numpy_helper.from_array(np.array(1.0, np.float32), one)
            )
        erf_out = f"{node.output[0]}__erf"
        nodes.append(
            helper.make_node(
                "Erf", [node.input[0]], [erf_out], name=f"{node.name}__erf"
            )
        )
        nodes.append(
            helper.make_node(
                "Sub", [one, erf_out], [node.output[0]], name=f"{node.name}__one_minus"
            )
        )
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.checker.check_model(model)
    return count


def set_activation_grids(model: Any, ctrl: Any) -> int:
    """Give every activation ``QuantizeLinear``/``DequantizeLinear`` TF's exact step and zero point.

    tf2onnx recomputes them from the fake-quant range in float64 (``zp = round(-min / scale)``), while
    TF nudges in float32: a zero point at exactly ``.5`` (a signed symmetric range has 127.5) can
    round differently. tf2onnx also shares equal-valued initializers between quantizers, so each
    quantizer gets its own ``hf_qat_aq<i>_scale``/``_zero_point`` initializers. The nodes are found
    by their op name ``aq<i>``. Returns the nodes updated.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    updated = 0
    for i, q in enumerate(ctrl.activation_quantizers.values()):
        step, k_low, _ = q.grid()
        pattern = re.compile(rf"(?<![\w])aq{i}(?!\d)")
        names = None
        for node in model.graph.node:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or not pattern.search(node.name):
                continue
            if len(node.input) < 3 or node.input[2] not in inits:
                continue
            if names is None:
                zp_dtype = numpy_helper.to_array(inits[node.input[2]]).dtype
                names = (f"hf_qat_aq{i}_scale", f"hf_qat_aq{i}_zero_point")
                model.graph.initializer.append(numpy_helper.from_array(np.asarray(step.reshape(-1)[0], np.float32), names[0]))
                model.graph.initializer.append(numpy_helper.from_array(np.asarray(-k_low.reshape(-1)[0], zp_dtype), names[1]))
            node.input[1], node.input[2] = names
            updated += 1
    return updated


def fold_weight_quantize_linear(model: Any) -> int:
    """Replace every ``QuantizeLinear`` of a constant by its int8/uint8 result (in place).

    ONNX's rounding (half to even) and saturation are applied; the ``DequantizeLinear`` reading it
    then takes the integer initializer. Returns the number of weights folded.
    """
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    folded = 0
    keep = []
    for node in graph.node:
        if (
            node.op_type == "QuantizeLinear"
            and node.input[0] in inits
            and all(i in inits for i in node.input[1:3])
        ):
            w = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            zp_arr = (
                numpy_helper.to_array(inits[node.input[2]])
                if len(node.input) > 2
                else np.zeros((), np.uint8)
            )
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and w.ndim > 0:
                shape = [1] * w.ndim
                shape[axis % w.ndim] = -1
                scale = scale.reshape(shape)
                zp = zp_arr.astype(np.float64).reshape(shape)
            else:
                zp = zp_arr.astype(np.float64)
            info = np.iinfo(zp_arr.dtype)
            q = np.clip(np.rint(w / scale) + zp, info.min, info.max).astype(
                zp_arr.dtype
            )
            name = node.output[0]
            graph.initializer.append(numpy_helper.from_array(q, name))
            consumers[node.input[0]] -= 1
            folded += 1
            continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept_inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    onnx.checker.check_model(model)
    return folded


def export_onnx_model(
    ctrl: Any,
    path: str,
    opset: int = DEFAULT_OPSET,
    input_names: list[str] | None = None,
    verify: bool = True,
) -> KerasExportResult:
    import onnx
    import tf2onnx

    _check_onnx_exportable(ctrl)
    for i, q in enumerate(ctrl.activation_quantizers.values()):
        q.export_name = f"aq{i}"
    ids = [q.id for q in ctrl.activation_quantizers.values()]
    frozen, specs, names = _freeze(ctrl, input_names, mode="onnx")
    try:
        model_proto, _ = tf2onnx.convert.from_function(
            tf.function(frozen), input_signature=specs, opset=opset, output_path=None
        )
    except Exception as e:
        raise ExportError(
            f"tf2onnx could not convert the model: {type(e).__name__}: {e}"
        ) from e
    replace_erfc(model_proto)
    set_activation_grids(model_proto, ctrl)
    num_folded = fold_weight_quantize_linear(model_proto)
    meta = model_proto.metadata_props.add()
    meta.key, meta.value = "hf_qat.activation_quantizer_ids", json.dumps(ids)
    with atomic_path(path, "ONNX file") as tmp:
        onnx.save(model_proto, tmp)
    outputs = [o.name for o in model_proto.graph.output]
    result = KerasExportResult(
        path,
        "onnx",
        names,
        outputs,
        num_quantize_linear=sum(
            n.op_type == "QuantizeLinear" for n in model_proto.graph.node
        ),
        num_int8_weights=num_folded,
    )
    if verify:
        from .verify import verify_keras_onnx

        report = verify_keras_onnx(ctrl, path)
        result.verification = report
        if not report["ok"]:
            raise ExportError(
                f"The exported ONNX file does not match the Keras model: {report['summary']}"
            )
    return result


def export_keras(
    ctrl: Any,
    save_path: str,
    save_format: str = "frozen_graph",
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    verify: bool = True,
) -> KerasExportResult:
    """Export a compressed Keras model; see the module docstring for the formats."""
    fmt, _, opset = (
        save_format.partition("_")
        if save_format.startswith("onnx")
        else (save_format, "", "")
    )
    if fmt not in FORMATS:
        raise ValueError(
            f"save_format must be one of {FORMATS} or 'onnx_<opset>', got {save_format!r}"
        )
    if output_names is not None:
        logger.info(
            "hf_qat: output_names are taken from the model's outputs for Keras exports; ignoring %s",
            output_names,
        )
    if fmt == "frozen_graph":
        return export_frozen_graph(ctrl, save_path, input_names)
    if fmt == "saved_model":
        return export_saved_model(ctrl, save_path, input_names)
    return export_onnx_model(
        ctrl, save_path, int(opset) if opset else DEFAULT_OPSET, input_names, verify
    )
