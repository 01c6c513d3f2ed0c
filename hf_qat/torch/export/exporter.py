"""``export_onnx``: an INT8 ONNX file from a compressed PyTorch model, verified in ONNX Runtime.

Exporter choice (``exporter=``):

- ``"dynamo"`` — torch's default exporter: ``torch.export.export(strict=False)`` then
  ``torch.onnx.export``. Quantizers are emitted with :func:`torch.onnx.ops.symbolic`, so the graph
  holds standard ``QuantizeLinear``/``DequantizeLinear`` nodes (no decomposition into arithmetic).
- ``"torchscript"`` — the TorchScript exporter (``torch.onnx.export(dynamo=False)``). It traces the
  Python code with real tensors, so it also handles what ``torch.export`` refuses (data-dependent
  Python control flow is baked in for the example input, as ``torch.jit.trace`` does).
- ``"auto"`` (default) — ``"dynamo"``; if torch.export or the ONNX translation fails, a warning
  gives the reason and the TorchScript exporter is used. :attr:`ExportResult.exporter` and
  :attr:`ExportResult.fallback_reason` say what happened.

The file is written atomically (temporary file, then rename); when verification is on (default)
it is then run in ONNX Runtime on the example inputs and on inputs grown along every dynamic axis,
and compared with the PyTorch model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ..._version import __version__
from ...errors import ExportError
from ...onnx.passes import pack_int4_weights, shorten_quantizer_names, split_shared_quantizers
from ...onnx.runtime import optimized_op_counts
from ...onnx.summary import OnnxSummary, summarize
from ...onnx.verify import VerificationReport
from ...utils.io import atomic_path
from ..init import QuantizationRangeInitArgs
from ..inputs import example_inputs_from_input_info, filter_kwargs
from .prepare import ExportPlan, onnx_export_mode, reference_mode, restore_training_modes, training_modes
from .qdq import emitting_for
from .signature import ExportSignature, ExportWrapper, grow_inputs, resolve_outputs, resolve_signature
from .verify import verify_onnx

__all__ = ["ExportResult", "export_onnx", "DEFAULT_OPSET"]

logger = logging.getLogger(__name__)

#: Default ONNX opset (per-channel QuantizeLinear needs >= 13; 18 is the dynamo exporter's native opset).
DEFAULT_OPSET = 18
_PROTOBUF_LIMIT = 2**31 - 1
_EXPORTER_CHOICES = ("auto", "dynamo", "torchscript")


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ONNX file.
        exporter: ``"dynamo"`` or ``"torchscript"`` (the one that produced the file).
        fallback_reason: why ``"auto"`` fell back to TorchScript (``None`` if it did not).
        opset: default-domain opset of the file.
        input_names / output_names / dynamic_axes: the graph's signature.
        summary: operator counts and initializer sizes (:class:`hf_qat.onnx.OnnxSummary`).
        num_weight_quantizers / num_activation_quantizers: quantizers exported as integer weights
            and as ``QuantizeLinear``/``DequantizeLinear`` pairs.
        file_size: bytes on disk (ONNX file plus external data, if any).
        verification: one report per runtime checked (empty when verification was off).
        inputs: the batches the file was run on for verification (``{input_name: array}``; the example
            inputs, and the example grown along its dynamic axes): an IR converted from the file is
            verified on them (:func:`hf_qat.onnx.convert_to_openvino`).
        onnxruntime_ops: with int4 weights and verification on: the operators of the graph ONNX Runtime runs
            (``MatMulNBits``: its 4-bit matmul kernel), see :func:`hf_qat.onnx.optimized_op_counts`.
    """

    path: Path
    exporter: str
    fallback_reason: str | None
    opset: int
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    summary: OnnxSummary
    num_weight_quantizers: int
    num_activation_quantizers: int
    file_size: int
    verification: list[VerificationReport] = field(default_factory=list)
    inputs: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)
    onnxruntime_ops: dict[str, int] | None = None

    def __str__(self) -> str:
        s = self.summary
        int4 = len(s.int4_initializers)
        kinds = "int8" if not int4 else ("int4" if int4 == self.num_weight_quantizers else f"integer ({int4} int4)")
        lines = [
            f"{self.path} ({self.file_size / 2**20:.2f} MiB, opset {self.opset}, {self.exporter} exporter)",
            f"  inputs {self.input_names} -> outputs {self.output_names}",
            f"  {self.num_weight_quantizers} {kinds} weights, {self.num_activation_quantizers} activation quantizers "
            f"({s.num_quantize_linear} QuantizeLinear, {s.num_dequantize_linear} DequantizeLinear)",
        ]
        if self.onnxruntime_ops is not None:
            fused = {op: n for op, n in self.onnxruntime_ops.items() if op in _INTEGER_KERNELS}
            lines.append(
                "  ONNX Runtime runs it with "
                + (", ".join(f"{n} {op}" for op, n in fused.items()) if fused else "no integer matmul kernel")
                + f" ({sum(self.onnxruntime_ops.values())} nodes after its optimisations)"
            )
        if self.fallback_reason:
            lines.append(f"  fell back to TorchScript: {self.fallback_reason}")
        lines.extend(str(r) for r in self.verification)
        return "\n".join(lines)


#: ONNX Runtime's fused integer kernels reported for int4 exports
_INTEGER_KERNELS = ("MatMulNBits", "MatMulIntegerToFloat", "QLinearMatMul", "DynamicQuantizeMatMul", "QGemm")


# -- locating failures ----------------------------------------------------------------------------
class _ModuleTracker:
    """Keeps the stack of modules currently running, to name the module an exporter failed in."""

    def __init__(self, model: nn.Module):
        self.stack: list[tuple[str, str]] = []
        self.failed_at: tuple[str, str] | None = None
        self._handles = []
        for name, m in model.named_modules():
            self._handles.append(m.register_forward_pre_hook(self._pre(name or "<root>", type(m).__name__)))
            self._handles.append(m.register_forward_hook(self._post))

    def _pre(self, name: str, cls: str):
        def hook(module, args):
            self.stack.append((name, cls))

        return hook

    def _post(self, module, args, output):
        if self.stack:
            self.stack.pop()

    def reset(self) -> None:
        self.stack.clear()

    def innermost(self) -> str | None:
        entry = self.stack[-1] if self.stack else self.failed_at
        return None if entry is None else f"{entry[0]} ({entry[1]})"

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


_OP_PATTERNS = (re.compile(r"operator '([\w:.]+)'"), re.compile(r"op='([\w:.]+)'"))


def _op_from_message(message: str) -> str | None:
    for pattern in _OP_PATTERNS:
        m = pattern.search(message)
        if m:
            return m.group(1)
    m = re.search(r"\b(aten\.[\w.]+|[a-z_]+::[\w.]+)", message)
    return m.group(1) if m else None


def _module_of_graph_node(ep: Any, message: str) -> str | None:
    """Module that produced the FX node named in a translation error (from ``nn_module_stack``)."""
    if ep is None:
        return None
    names = set(re.findall(r"%?([A-Za-z_][\w]*)", message))
    for node in ep.graph.nodes:
        if node.name in names and node.op == "call_function":
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, cls = list(stack.values())[-1]
                cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
                path = re.sub(r"^L\['self'\]\.?|^self\.?", "", str(path)).replace("model.", "", 1) or "<root>"
                return f"{path} ({cls_name.rsplit('.', 1)[-1]})"
    return None


def _first_line(e: BaseException, limit: int = 400) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line[:limit]


# -- exporters ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints and the deprecation warnings of a knowing fallback."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            registration.setLevel(level)


def _export_dynamo(wrapper: ExportWrapper, sig: ExportSignature, opset: int, tracker: _ModuleTracker) -> onnx.ModelProto:
    dynamic_shapes = tuple(
        ({a: torch.export.Dim.DYNAMIC for a in sig.dynamic_axes[n]} if n in sig.dynamic_axes else None) for n in sig.input_names
    )
    ep = None
    try:
        with _quiet(), emitting_for("dynamo", opset):
            ep = torch.export.export(wrapper, sig.args(), dynamic_shapes={"tensors": dynamic_shapes}, strict=False)
            tracker.failed_at = None
            program = torch.onnx.export(
                ep,
                sig.args(),
                input_names=sig.input_names,
                output_names=sig.output_names,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                optimize=True,
                verify=False,
                report=False,
                verbose=False,
            )
        proto = program.model_proto
    except Exception as e:
        module = tracker.innermost() if ep is None else _module_of_graph_node(ep, str(e))
        raise ExportError(
            f"torch.export/ONNX translation failed{f' in {module}' if module else ''}: {_first_line(e)}",
            module=module,
            op=_op_from_message(str(e)),
        ) from e
    produced = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if produced != opset:
        # the dynamo exporter writes opset 18 and converts down; the converter gives up on some ops
        raise ExportError(f"the dynamo exporter could not convert the graph to opset {opset} (it produced opset {produced})")
    return proto


def _output_axes(
    model: nn.Module, sig: ExportSignature, reference: list[torch.Tensor]
) -> tuple[dict[str, dict[int, str]], list[torch.Tensor], dict[str, torch.Tensor]]:
    """Dynamic axes of the outputs, found by running the model on inputs grown along each input axis."""
    if not sig.dynamic_axes:
        return {}, [], {}
    grown, growth = grow_inputs(sig.inputs, sig.dynamic_axes)
    args = [grown[n] for n in sig.input_names]
    tracker = _ModuleTracker(model)
    try:
        with torch.no_grad():
            out = ExportWrapper(model, sig)(*args)
    except Exception as e:
        shapes = {n: list(t.shape) for n, t in grown.items()}
        raise ExportError(
            f"running the model on inputs grown along their dynamic axes {shapes} (to find the outputs' dynamic "
            f"axes) failed in module {tracker.innermost() or '<root>'}: {type(e).__name__}: {_first_line(e)}. Pass "
            "dynamic_axes=False for a fixed-shape export, or shorter example inputs."
        ) from e
    finally:
        tracker.remove()
    by_delta = {d: name for name, d in growth.items()}
    axes: dict[str, dict[int, str]] = {}
    for name, before, after in zip(sig.output_names, reference, out):
        for i, (b, a) in enumerate(zip(before.shape, after.shape)):
            if a != b and (a - b) in by_delta:
                axes.setdefault(name, {})[i] = by_delta[a - b]
    return axes, list(out), grown


def _export_torchscript(
    wrapper: ExportWrapper, sig: ExportSignature, opset: int, output_axes: dict[str, dict[int, str]], tracker: _ModuleTracker
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    try:
        with _quiet(), emitting_for("torchscript", opset):
            torch.onnx.export(
                wrapper,
                sig.args(),
                buffer,
                dynamo=False,
                input_names=sig.input_names,
                output_names=sig.output_names,
                dynamic_axes={**sig.dynamic_axes, **output_axes},
                opset_version=opset,
                do_constant_folding=True,
            )
    except Exception as e:
        module = tracker.innermost()
        raise ExportError(
            f"TorchScript ONNX export failed{f' in {module}' if module else ''}: {_first_line(e)}",
            module=module,
            op=_op_from_message(str(e)),
        ) from e
    return onnx.load_from_string(buffer.getvalue())


# -- post-processing ------------------------------------------------------------------------------
def _name_dynamic_dims(proto: onnx.ModelProto, sig: ExportSignature, output_axes: dict[str, dict[int, str]]) -> None:
    """Give the dynamic dimensions the axis names (``batch_size``, ``sequence_length``) everywhere."""
    rename: dict[str, str] = {}
    for vi in proto.graph.input:
        for axis, axis_name in sig.dynamic_axes.get(vi.name, {}).items():
            dim = vi.type.tensor_type.shape.dim[axis]
            if dim.dim_param and dim.dim_param != axis_name:
                rename.setdefault(dim.dim_param, axis_name)
            dim.dim_param = axis_name
    for vi in list(proto.graph.output) + list(proto.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]
    for vi in proto.graph.output:
        for axis, axis_name in output_axes.get(vi.name, {}).items():
            dims = vi.type.tensor_type.shape.dim
            if axis < len(dims) and not dims[axis].dim_param:
                dims[axis].dim_param = axis_name


def _write(proto: onnx.ModelProto, path: Path) -> int:
    """Write atomically; models above the protobuf limit keep their weights in ``<name>.data``."""
    size = proto.ByteSize()
    if size < _PROTOBUF_LIMIT:
        data = proto.SerializeToString()
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        return len(data)
    data_name = path.name + ".data"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as staging:
        # both files are written in a staging folder, then renamed into place: an interrupted export
        # never pairs an old graph with new weights (or the reverse)
        onnx.save_model(
            proto, os.path.join(staging, path.name), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name
        )
        os.replace(os.path.join(staging, data_name), path.with_name(data_name))
        os.replace(os.path.join(staging, path.name), path)
    return path.stat().st_size + path.with_name(data_name).stat().st_size


# -- verification ---------------------------------------------------------------------------------
def _as_array(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def verification_tolerance(reference: Sequence[np.ndarray]) -> float:
    """Output tolerance of an FP32 export: 0.1% of the largest reference magnitude, at least 1e-5.

    (Quantized exports are checked quantizer by quantizer instead; see :mod:`.verify`.)
    """
    peak = max((float(np.max(np.abs(r))) for r in reference if r.size), default=0.0)
    return max(1e-5, 1e-3 * peak)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs: Any = None,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Any = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    quantized: bool = True,
    verify: bool = True,
    runtimes: Sequence[str] = ("onnxruntime",),
    atol: float | None = None,
    min_top1: float = 0.9,
    config: Any = None,
) -> ExportResult:
    """Export ``model`` to ONNX with INT8 weights and ``QuantizeLinear``/``DequantizeLinear`` activations.

    Works on a model compressed by [`create_compressed_model`] (including one restored from a
    checkpoint) and, with ``quantized=False`` or on an uncompressed model, exports the FP32 graph the
    same way (same names, axes and verification) for comparison.

    Args:
        model: the model (any device; exported in eval mode, then restored).
        path: destination ``.onnx`` file (written atomically; parent folders are created).
        example_inputs: a tensor, a dict of tensors (e.g. a tokenizer's output), or NNCF's
            ``model_args`` layout ``(a, b, {"x": x})``. Default: ``config``'s calibration batch or
            ``input_info``, then the transformers config of the model.
        input_names / output_names: override the names taken from the model.
        dynamic_axes: ``None``: batch axis of every input and sequence axis of token inputs;
            ``False``: static shapes; or ``{input_name: {axis: axis_name}}``.
        opset: ONNX opset (>= 13, for per-channel ``QuantizeLinear``).
        exporter: ``"auto"``, ``"dynamo"`` or ``"torchscript"`` (see the module docs).
        quantized: export quantizers (default) or the float computation.
        verify: run the file in each of ``runtimes`` and compare with the PyTorch model.
        runtimes: ``"onnxruntime"`` and/or ``"openvino"``.
        atol: largest allowed absolute difference per output (default: none for quantized exports,
            which are checked quantizer by quantizer; :func:`verification_tolerance` for FP32 ones).
        min_top1: smallest allowed arg-max agreement for outputs with a class axis.
        config: an NNCF config that may supply example inputs (calibration data or ``input_info``).

    Returns:
        [`ExportResult`].

    Raises:
        [`ExportError`]: uninitialised quantizers (nothing written), no usable example input, an
            operation no exporter can represent (the error names the module and the operation), or a
            verification mismatch (the file stays, the error holds the report).
    """
    if exporter not in _EXPORTER_CHOICES:
        raise ValueError(f"exporter must be one of {_EXPORTER_CHOICES}, got {exporter!r}")
    if not 13 <= int(opset) <= 21:
        raise ValueError(f"opset must be between 13 (per-channel QuantizeLinear) and 21, got {opset}")
    for r in runtimes:
        if r not in ("onnxruntime", "openvino"):
            raise ValueError(f"unknown runtime {r!r}; choose from 'onnxruntime', 'openvino'")
    low_precision = {p.dtype for p in model.parameters() if p.dtype in (torch.float16, torch.bfloat16)}
    if quantized and low_precision and opset < 19:
        raise ExportError(
            f"The model has {sorted(str(d) for d in low_precision)} parameters; QuantizeLinear/DequantizeLinear take "
            f"half-precision scales only from opset 19 (asked: {opset}). Pass opset=19 or more, or export a float32 "
            "copy (copy.deepcopy(model).float())."
        )
    if quantized and int(opset) < 21:
        grouped = next(
            (
                (getattr(m.weight_quantizer, "_hf_qat_id", name), m.weight_quantizer.spec.group_size)
                for name, m in model.named_modules()
                if getattr(m, "weight_quantizer", None) is not None
                and m.weight_quantizer.spec.grouped
                and m.weight_quantizer.is_enabled_quantization
            ),
            None,
        )
        if grouped is not None:
            raise ExportError(
                f"weight quantizer {grouped[0]!r} is group-wise (group_size {grouped[1]}): its blocked "
                f"DequantizeLinear needs opset 21, asked: {opset}. Pass opset=21 (--onnx_opset 21). Nothing was written.",
                module=grouped[0],
            )
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a directory; pass the path of the .onnx file to write")
    with _without_mixed_precision_forward(model):
        return _export(
            model, path, example_inputs, input_names, output_names, dynamic_axes, opset, exporter, quantized, verify,
            runtimes, atol, min_top1, config,
        )  # fmt: skip


@contextlib.contextmanager
def _without_mixed_precision_forward(model: nn.Module) -> Iterator[None]:
    """The model's own ``forward`` for the duration of the export: accelerate's mixed precision (``bf16=True``,
    ``fp16=True``) replaces ``model.forward`` by an autocast wrapper and keeps the original in
    ``_original_forward``; traced through the wrapper, activations would reach the quantizers in half precision,
    which ``QuantizeLinear`` does not take. The export and its verification run in float32."""
    patched = model.__dict__.get("forward")
    original = model.__dict__.get("_original_forward")
    if patched is None or original is None:
        yield
        return
    model.forward = original
    try:
        yield
    finally:
        model.forward = patched


def _export(
    model, path, example_inputs, input_names, output_names, dynamic_axes, opset, exporter, quantized, verify,
    runtimes, atol, min_top1, config,
) -> ExportResult:  # fmt: skip
    fallback = _fallback_inputs(model, config) if example_inputs is None else None
    sig = resolve_signature(
        model,
        example_inputs,
        input_names=list(input_names) if input_names is not None else None,
        dynamic_axes=dynamic_axes,
        fallback_inputs=fallback,
    )
    modes = training_modes(model)
    model.eval()
    try:
        with reference_mode(model, quantized):
            reference = resolve_outputs(model, sig, list(output_names) if output_names is not None else None)
            output_axes, grown_reference, grown_inputs = _output_axes(model, sig, reference)
        wrapper = ExportWrapper(model, sig)
        tracker = _ModuleTracker(model)
        fallback_reason = None
        try:
            with onnx_export_mode(model, quantized) as plan:
                proto, used, fallback_reason = _run_exporters(wrapper, sig, opset, exporter, output_axes, tracker, plan)
                num_weights = len(plan.emitted_weights)
                num_activations = len(plan.emitted_activations)
                activation_ids = list(plan.activation_quantizers)
        finally:
            tracker.remove()
    finally:
        restore_training_modes(modes)

    _name_dynamic_dims(proto, sig, output_axes)
    graph = proto.graph  # exporter debug info (stack traces, FX node names): not needed to run
    for items in (graph.node, graph.value_info, graph.input, graph.output, graph.initializer):
        for item in items:
            del item.metadata_props[:]
    del graph.metadata_props[:]
    split_shared_quantizers(proto)
    pack_int4_weights(proto)
    shorten_quantizer_names(proto, list(activation_ids))
    summary = summarize(proto)
    if summary.custom_domains:
        raise ExportError(f"the exported graph uses non-standard operator domains {sorted(summary.custom_domains)}")
    proto.producer_name = "hf_qat"
    proto.producer_version = __version__
    onnx.helper.set_model_props(
        proto,
        {
            **{p.key: p.value for p in proto.metadata_props},
            "hf_qat.quantized": str(bool(quantized and (num_weights or num_activations))).lower(),
            "hf_qat.weight_quantizers": str(num_weights),
            "hf_qat.activation_quantizers": str(num_activations),
            "hf_qat.exporter": used,
        },
    )
    file_size = _write(proto, path)
    result = ExportResult(
        path,
        used,
        fallback_reason,
        summary.opset or opset,
        list(sig.input_names),
        list(sig.output_names),
        {**sig.dynamic_axes, **output_axes},
        summary,
        num_weights,
        num_activations,
        file_size,
    )
    logger.info("hf_qat: exported %s", result)
    batches = [sig.inputs] + ([grown_inputs] if grown_inputs else [])
    result.inputs = [{k: v.detach().cpu().numpy() for k, v in b.items()} for b in batches]
    if verify:
        if atol is None and not (num_weights or num_activations):  # an FP32 graph: compare outputs directly
            atol = verification_tolerance([_as_array(t) for t in reference])
        try:
            result.verification = verify_onnx(
                model, path, batches, runtimes=runtimes, atol=atol, min_top1=min_top1, quantized=quantized, signature=sig
            )
        except (ImportError, ValueError):
            raise
        except Exception as e:  # the runtime refused to load or run the file
            raise ExportError(
                f"The exported file {path} could not be run for verification: {type(e).__name__}: {_first_line(e)}. "
                "The file was written; pass verify=False to skip this check."
            ) from e
        if summary.int4_initializers and "onnxruntime" in runtimes:
            result.onnxruntime_ops = optimized_op_counts(path)
        failed = [r for r in result.verification if not r.ok]
        if failed:
            raise ExportError(
                f"The exported file {path} does not match the PyTorch model:\n"
                + "\n".join(str(r) for r in failed)
                + "\nThe file was written; pass verify=False to skip this check."
            )
    return result


def _run_exporters(wrapper, sig, opset, exporter, output_axes, tracker, plan: ExportPlan):
    if exporter in ("auto", "dynamo"):
        try:
            return _export_dynamo(wrapper, sig, opset, tracker), "dynamo", None
        except ExportError as e:
            if exporter == "dynamo":
                raise
            reason = str(e)
            logger.warning(
                "hf_qat: the dynamo ONNX exporter cannot export this model (%s); falling back to the TorchScript "
                "exporter. Pass exporter='torchscript' to choose it directly.",
                reason,
            )
            warnings.warn(f"ONNX export fell back to the TorchScript exporter: {reason}", UserWarning, stacklevel=4)
            plan.reset()
            tracker.reset()
            try:
                return _export_torchscript(wrapper, sig, opset, output_axes, tracker), "torchscript", reason
            except ExportError as ts_error:
                module = ts_error.module or e.module
                op = ts_error.op or e.op
                raise ExportError(
                    f"Neither ONNX exporter can export {module or 'this model'}"
                    f"{f' (operation {op})' if op else ''}.\n  dynamo: {e}\n  TorchScript: {ts_error}\n"
                    "Replace the operation with one ONNX supports, or exclude the module from export.",
                    module=module,
                    op=op,
                ) from ts_error
    return _export_torchscript(wrapper, sig, opset, output_axes, tracker), "torchscript", None


def _fallback_inputs(model: nn.Module, config: Any) -> tuple[tuple, dict] | None:
    """Example inputs from an NNCF config: the first calibration batch, else ``input_info``."""
    if config is None:
        return None
    if hasattr(config, "has_extra_struct") and config.has_extra_struct(QuantizationRangeInitArgs):
        loader = config.get_extra_struct(QuantizationRangeInitArgs).data_loader
        for batch in loader:
            args, kwargs = loader.get_inputs(batch)
            return tuple(args), filter_kwargs(model, dict(kwargs))
    if "input_info" in config:
        return example_inputs_from_input_info(config["input_info"])
    return None
