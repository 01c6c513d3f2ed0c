"""Check an exported ONNX file against the compressed Keras model in ONNX Runtime.

Same two checks as the PyTorch export (see :mod:`hf_qat.onnx.verify`): every input quantizer's
``DequantizeLinear`` output (graph optimisations off) against the Keras quantizer's output, in
quantization steps, judged at the first divergence; then the model outputs, unoptimised (tight)
and with ONNX Runtime's default optimisations (arg-max agreement).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..onnx.runtime import OnnxRunner
from ..onnx.verify import compare_outputs, compare_quantized, tap_activation_quantizers
from .export import _signature
from .init import KerasRangeInitArgs, call_model, split_features
from .model_creation import inputs_from_input_info

__all__ = ["example_batches", "verify_keras_onnx"]


def example_batches(ctrl: Any, max_batches: int = 2) -> list[Any]:
    """Feature batches for checks: calibration data, else ``input_info``, else small random inputs."""
    config = ctrl.config
    if config.has_extra_struct(KerasRangeInitArgs):
        out = []
        for element in config.get_extra_struct(KerasRangeInitArgs).dataset:
            out.append(split_features(element))
            if len(out) >= max_batches:
                break
        if out:
            return out
    if "input_info" in config:
        return [inputs_from_input_info(config["input_info"])]
    specs, names, takes_dict = _signature(ctrl.model, None)
    rng = np.random.default_rng(0)
    arrays = []
    for s in specs:
        shape = [2] + [d or 8 for d in s.shape[1:]]
        arrays.append(
            rng.random(shape).astype(s.dtype.as_numpy_dtype)
            if s.dtype.is_floating
            else np.ones(shape, s.dtype.as_numpy_dtype)
        )
    return [
        dict(zip(names, arrays))
        if takes_dict
        else (arrays[0] if len(arrays) == 1 else tuple(arrays))
    ]


def _feed(features: Any, names: list[str], takes_dict: bool) -> dict[str, np.ndarray]:
    if takes_dict:
        return {n: np.asarray(features[n]) for n in names}
    values = list(features) if isinstance(features, (tuple, list)) else [features]
    return {n: np.asarray(v) for n, v in zip(names, values)}


def _as_outputs(out: Any, output_names: list[str]) -> dict[str, np.ndarray]:
    if isinstance(out, dict):
        return {n: np.asarray(out[k]) for n, k in zip(output_names, sorted(out))}
    values = list(out) if isinstance(out, (list, tuple)) else [out]
    return {n: np.asarray(v) for n, v in zip(output_names, values)}


def _only_rounding_ties(
    qid: str, reference: np.ndarray, actual: np.ndarray, x: np.ndarray, step: float
) -> tuple[bool, int]:
    """Whether every element of ``qid`` that differs is a one-step difference at an exact half-step input.

    TF's fake quant rounds ``x / step`` half up, ONNX ``QuantizeLinear`` half to even, so an input
    exactly half-way between two levels legitimately lands one level apart (the calibration extreme
    of a signed symmetric range always does: ``-scale`` is level ``-127.5``). Returns ``(all_ties, n_ties)``.
    """
    r = x.astype(np.float64) / step
    frac = np.abs(r - np.floor(r) - 0.5)
    diff = np.abs(actual.astype(np.float64) - reference) / step
    differing = diff > 0.5
    tie = differing & (frac < 1e-3) & (diff < 1.5)
    return bool((tie == differing).all()), int(tie.sum())


def verify_keras_onnx(ctrl: Any, path: str, min_top1: float = 0.9) -> dict[str, Any]:
    """Run ``path`` in ONNX Runtime on example batches and compare with the Keras model.

    Returns a dict with ``ok``, ``summary``, the quantizer comparison and the output comparisons.
    """
    _specs, names, takes_dict = _signature(ctrl.model, None)
    model_proto = onnx.load(path)
    output_names = [o.name for o in model_proto.graph.output]
    acts = ctrl.activation_quantizers
    tapped_bytes, tapped = tap_activation_quantizers(model_proto, list(acts))
    plain = OnnxRunner(tapped_bytes, "onnxruntime", optimize=False)
    optimized = OnnxRunner(path, "onnxruntime", optimize=True)
    steps = {qid: float(q.grid()[0].reshape(-1)[0]) for qid, q in acts.items()}
    comparison = None
    ties = 0
    refs, actual_plain, actual_opt = [], [], []
    for features in example_batches(ctrl):
        recorded: dict[str, np.ndarray] = {}
        for q in acts.values():
            q.recorder = recorded
        try:
            reference = call_model(ctrl.model, features)
        finally:
            for q in acts.values():
                q.recorder = None
        feed = _feed(features, names, takes_dict)
        out = plain(feed)
        onnx_q = {qid: out[name] for name, qid in tapped.items()}
        reference_q = {qid: recorded[qid] for qid in acts if qid in recorded}
        c = compare_quantized(reference_q, onnx_q, steps)
        if c.first_divergence is not None:
            qid = c.first_divergence
            all_ties, n = _only_rounding_ties(
                qid, reference_q[qid], onnx_q[qid], recorded[qid + "#input"], steps[qid]
            )
            ties += n
            if all_ties:  # a rounding-mode tie: downstream quantizers see different inputs, judge no further
                c.first_divergence_fraction = 0.0
        comparison = c if comparison is None else comparison.merge(c)
        refs.append(_as_outputs(reference, output_names))
        actual_plain.append({n: out[n] for n in output_names})
        actual_opt.append(optimized(feed))
    plain_report = compare_outputs(refs, actual_plain, "onnxruntime", optimized=False)
    opt_report = compare_outputs(
        refs, actual_opt, "onnxruntime", optimized=True, min_top1=min_top1
    )
    # tf2onnx merges identical QuantizeLinear nodes (query/key/value inputs with equal ranges)
    seen = set(tapped.values())
    ranges = {
        qid: tuple(
            np.round(np.concatenate([t.numpy().ravel() for t in q.range_tensors()]), 9)
        )
        for qid, q in acts.items()
    }
    unmatched = [
        qid
        for qid in acts
        if qid not in seen and not any(ranges[qid] == ranges[t] for t in seen)
    ]
    ok = bool(comparison.ok and opt_report.ok and not unmatched)
    summary = (
        f"{len(tapped)}/{len(acts)} input quantizers compared ({len(acts) - len(tapped) - len(unmatched)} merged with an "
        f"identical one, {len(unmatched)} missing{': ' + str(unmatched[:3]) if unmatched else ''}); first divergence "
        f"{comparison.first_divergence or 'none'} ({comparison.first_divergence_steps:.3g} steps in "
        f"{comparison.first_divergence_fraction:.2%} of elements; {ties} exact half-step ties rounded differently); outputs max |diff| unoptimised "
        f"{max((o.max_abs_diff for o in plain_report.outputs), default=0.0):.3g}, optimised "
        f"{max((o.max_abs_diff for o in opt_report.outputs), default=0.0):.3g}"
    )
    return {
        "ok": ok,
        "summary": summary,
        "quantizers": comparison,
        "tapped": len(tapped),
        "rounding_ties": ties,
        "unoptimized": plain_report,
        "optimized": opt_report,
    }
