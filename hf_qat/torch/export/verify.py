"""Check an exported ONNX file against the PyTorch model it came from.

Two checks, both on the same inputs:

1. **Graph check** (ONNX Runtime, graph optimisations off, i.e. the graph as written): every
   activation ``QuantizeLinear → DequantizeLinear`` output is compared with the output of the
   PyTorch quantizer it came from, in units of that quantizer's step, in execution order. Both
   compute on the same integer grids, so up to the first *tie flip* (a value within float rounding
   of a grid boundary landing on the other side) they are identical, and at the first difference
   it is one step in a tiny fraction of elements; anything more is a wrong graph (see
   :class:`hf_qat.onnx.QuantizerComparison` for why later differences are not bounded).
2. **Runtime check** (each runtime asked for, default optimisations): the model outputs, as max/mean
   absolute difference and arg-max (top-1) agreement.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ...onnx.runtime import OnnxRunner
from ...onnx.verify import VerificationReport, compare_outputs, compare_quantized, tap_activation_quantizers
from .prepare import model_quantizers, reference_mode, restore_training_modes, training_modes
from .signature import ExportSignature, ExportWrapper, resolve_outputs, resolve_signature

__all__ = ["verify_onnx"]


def _as_numpy(t: Any) -> np.ndarray:
    return t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _capture_quantizers(model: nn.Module, run) -> tuple[Any, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run ``run()`` and record each enabled activation quantizer's output (quantizers called on
    more than one distinct tensor in the forward pass are left out)."""
    _, activations, _ = model_quantizers(model)
    seen: dict[str, list] = {}
    handles = []
    for qid, q in activations.items():
        if not q.is_enabled_quantization or q.spec.dynamic:  # dynamic ones are float operators, not Q/DQ nodes
            continue

        def hook(module, args, output, qid=qid):
            outs = seen.setdefault(qid, [])
            if not any(o is output for o in outs):
                outs.append(output)

        handles.append(q.register_forward_hook(hook))
    try:
        result = run()
    finally:
        for h in handles:
            h.remove()
    captured = {qid: _as_numpy(outs[0]) for qid, outs in seen.items() if len(outs) == 1}
    steps = {}
    for qid in captured:
        q = activations[qid]
        step = q.grid_tensors()[2].float().cpu()
        axis = q.spec.channel_axis
        ndim = captured[qid].ndim
        if axis is None:
            steps[qid] = np.asarray(float(step.reshape(-1)[0]))
        else:
            shape = [1] * ndim
            shape[axis + ndim - step.dim()] = -1
            steps[qid] = step.reshape(shape).numpy()
    return result, captured, steps


def verify_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    inputs: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]] | None = None,
    *,
    runtimes: Sequence[str] = ("onnxruntime",),
    check_graph: bool = True,
    atol: float | None = None,
    min_top1: float = 0.9,
    quantized: bool = True,
    signature: ExportSignature | None = None,
) -> list[VerificationReport]:
    """Run the ONNX file at ``path`` and compare it with ``model`` (see the module docstring).

    Args:
        model: the PyTorch model the file was exported from (fake-quantized, or FP32 with
            ``quantized=False``).
        path: the ONNX file.
        inputs: one batch or a list of batches ``{input_name: tensor}``; default: example inputs
            built as for export.
        runtimes: runtimes for the output check, ``"onnxruntime"`` and/or ``"openvino"``.
        check_graph: run the graph check (quantized exports).
        atol: largest allowed absolute output difference (``None``: not checked).
        min_top1: smallest allowed arg-max agreement on outputs with a class axis.
        quantized: whether the file holds the quantized model (``False``: compare with the model's
            float computation, quantizers off).
        signature: the export signature (names, constants); default: resolved from ``model``.

    Returns:
        One [`VerificationReport`] per runtime; the ONNX Runtime one carries the graph check. A
        report's ``ok`` says whether it passed.
    """

    if signature is None:
        signature = resolve_signature(model, dict(inputs) if isinstance(inputs, Mapping) else None)
    sig = signature
    batches = [sig.inputs] if inputs is None else ([inputs] if isinstance(inputs, Mapping) else list(inputs))
    modes = training_modes(model)
    model.eval()
    refs: list[dict[str, np.ndarray]] = []
    taps: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []
    try:
        with reference_mode(model, quantized), torch.no_grad():
            if not sig.output_names:
                resolve_outputs(model, sig)
            wrapper = ExportWrapper(model, sig)
            for batch in batches:
                args = [batch[n] for n in sig.input_names]
                outs, captured, steps = _capture_quantizers(model, lambda args=args: wrapper(*args))
                refs.append({n: _as_numpy(t) for n, t in zip(sig.output_names, outs)})
                taps.append((captured, steps))
    finally:
        restore_training_modes(modes)
    np_batches = [{k: v.detach().cpu().numpy() for k, v in b.items()} for b in batches]

    graph_check = None
    if check_graph and quantized and any(t[0] for t in taps):
        proto = onnx.load(str(path))
        tapped_bytes, tapped = tap_activation_quantizers(proto, sorted(taps[0][0]))
        runner = OnnxRunner(tapped_bytes, "onnxruntime", optimize=False)
        for batch, (captured, steps) in zip(np_batches, taps):
            out = runner(batch)
            actual = {tap.quantizer_id: out[name] for name, tap in tapped.items()}
            part = compare_quantized(captured, actual, steps)
            graph_check = part if graph_check is None else graph_check.merge(part)

    reports = []
    for runtime in runtimes:
        runner = OnnxRunner(path, runtime)
        actual = []
        for b in np_batches:
            out = runner(b)
            actual.append({n: out[n] for n in sig.output_names})
        report = compare_outputs(refs, actual, runtime, True, atol, min_top1)
        if runtime == "onnxruntime":
            report.quantizers = graph_check
        reports.append(report)
    if "onnxruntime" not in runtimes and graph_check is not None and reports:
        reports[0].quantizers = graph_check
    return reports
