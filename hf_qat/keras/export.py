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
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from ..errors import ExportError
from ..onnx.names import short_name, write_quantizer_ids
from ..onnx.passes import fold_weight_quantize_linear, replace_erfc, set_quantizer_grids
from ..onnx.verify import VerificationReport
from ..utils.io import atomic_path
from .signature import inference_fn, signature
from .verify import verify_keras_onnx

__all__ = ["FORMATS", "KerasExportResult", "export_keras", "export_float_onnx"]

logger = logging.getLogger(__name__)

FORMATS = ("frozen_graph", "saved_model", "onnx", "openvino")
DEFAULT_OPSET = 17


@dataclass
class KerasExportResult:
    """What an export wrote and how it was checked.

    Attributes:
        path: the file (frozen graph, ONNX) or folder (SavedModel) written.
        save_format: ``"frozen_graph"``, ``"saved_model"``, ``"onnx"`` or ``"openvino"``.
        input_names / output_names: names in the exported graph.
        num_fake_quant: FakeQuant nodes in the graph (TF formats).
        num_quantize_linear / num_int8_weights: QuantizeLinear nodes and int8 weight initializers (ONNX).
        verification: ONNX Runtime comparisons with the Keras model (ONNX, when verified): one
            [`VerificationReport`] per runtime mode, as the PyTorch exporter's ``ExportResult`` has.
        openvino: for ``"openvino"``, the [`hf_qat.onnx.OpenVINOResult`] of the IR (converted from the verified
            INT8 ONNX export, integer weights checked, verified in OpenVINO).
    """

    path: str
    save_format: str
    input_names: list[str]
    output_names: list[str]
    num_fake_quant: int = 0
    num_quantize_linear: int = 0
    num_int8_weights: int = 0
    verification: list[VerificationReport] = field(default_factory=list)
    openvino: Any = None


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
    specs, names, takes_dict = signature(ctrl.model, input_names)
    fn = tf.function(
        inference_fn(ctrl.model, names, takes_dict),
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
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return sum(n.op.startswith(prefix) for n in nodes)


def export_frozen_graph(ctrl: Any, path: str, input_names: list[str] | None = None) -> KerasExportResult:
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


def export_saved_model(ctrl: Any, path: str, input_names: list[str] | None = None) -> KerasExportResult:
    specs, names, takes_dict = signature(ctrl.model, input_names)
    fn = tf.function(
        inference_fn(ctrl.model, names, takes_dict),
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
        q.export_name = short_name(i)
    ids = [q.id for q in ctrl.activation_quantizers.values()]
    frozen, specs, names = _freeze(ctrl, input_names, mode="onnx")
    try:
        model_proto, _ = tf2onnx.convert.from_function(tf.function(frozen), input_signature=specs, opset=opset, output_path=None)
    except Exception as e:
        raise ExportError(f"tf2onnx could not convert the model: {type(e).__name__}: {e}") from e
    replace_erfc(model_proto)
    set_quantizer_grids(model_proto, [q.grid() for q in ctrl.activation_quantizers.values()])
    num_folded = fold_weight_quantize_linear(model_proto)
    write_quantizer_ids(model_proto, ids)
    with atomic_path(path, "ONNX file") as tmp:
        onnx.save(model_proto, tmp)
    outputs = [o.name for o in model_proto.graph.output]
    result = KerasExportResult(
        path,
        "onnx",
        names,
        outputs,
        num_quantize_linear=sum(n.op_type == "QuantizeLinear" for n in model_proto.graph.node),
        num_int8_weights=num_folded,
    )
    if verify:
        result.verification = verify_keras_onnx(ctrl, path)
        failed = [r for r in result.verification if not r.ok]
        if failed:
            raise ExportError("The exported ONNX file does not match the Keras model:\n" + "\n".join(str(r) for r in failed))
    return result


def export_openvino_model(ctrl: Any, path: str, input_names: list[str] | None = None, verify: bool = True) -> KerasExportResult:
    """OpenVINO IR (``path`` is the ``.xml``; the ``.bin`` goes beside it) converted from the verified INT8 ONNX
    export, its integer weights kept and the IR verified in OpenVINO (:func:`hf_qat.onnx.convert_to_openvino`)."""
    from ..onnx.openvino import convert_to_openvino
    from .signature import feed_arrays
    from .verify import example_batches

    with tempfile.TemporaryDirectory(prefix="hf_qat_ov_") as tmp:
        onnx_path = os.path.join(tmp, "model.onnx")
        onnx_result = export_onnx_model(ctrl, onnx_path, DEFAULT_OPSET, input_names, verify)
        feeds = [feed_arrays(ctrl.model, features) for features in example_batches(ctrl)] if verify else None
        ov_result = convert_to_openvino(onnx_path, path, feeds, verify=verify)
    onnx_result.path, onnx_result.save_format, onnx_result.openvino = path, "openvino", ov_result
    return onnx_result


def export_float_onnx(model: Any, path: str | os.PathLike, opset: int = DEFAULT_OPSET) -> int:
    """Export an uncompressed Keras model to FP32 ONNX through tf2onnx, the same way as the INT8 export
    (variables folded to constants, same signature, ``Erfc`` rewritten): the baseline its size and
    latency are compared with. Written atomically; returns the file size in bytes."""
    import onnx
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    specs, names, takes_dict = signature(model, None)
    fn = tf.function(inference_fn(model, names, takes_dict), input_signature=specs, autograph=False)
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    try:
        proto, _ = tf2onnx.convert.from_function(tf.function(frozen), input_signature=specs, opset=opset)
    except Exception as e:
        raise ExportError(f"tf2onnx could not convert the model: {type(e).__name__}: {e}") from e
    replace_erfc(proto)
    with atomic_path(path, "ONNX file") as tmp:
        onnx.save(proto, tmp)
    return os.path.getsize(path)


def export_keras(
    ctrl: Any,
    save_path: str,
    save_format: str = "frozen_graph",
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    verify: bool = True,
) -> KerasExportResult:
    """Export a compressed Keras model; see the module docstring for the formats."""
    fmt, _, opset = save_format.partition("_") if save_format.startswith("onnx") else (save_format, "", "")
    if fmt not in FORMATS:
        raise ValueError(f"save_format must be one of {FORMATS} or 'onnx_<opset>', got {save_format!r}")
    if output_names is not None:
        logger.info(
            "hf_qat: output_names are taken from the model's outputs for Keras exports; ignoring %s",
            output_names,
        )
    if fmt == "frozen_graph":
        return export_frozen_graph(ctrl, save_path, input_names)
    if fmt == "saved_model":
        return export_saved_model(ctrl, save_path, input_names)
    if fmt == "openvino":
        return export_openvino_model(ctrl, save_path, input_names, verify)
    return export_onnx_model(ctrl, save_path, int(opset) if opset else DEFAULT_OPSET, input_names, verify)
