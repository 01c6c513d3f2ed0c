"""Check an exported ONNX file against the compressed Keras model in ONNX Runtime.

Two checks, on the calibration batches:

1. **Grids.** Every input quantizer's ``QuantizeLinear -> DequantizeLinear`` chain, run in ONNX
   Runtime with graph optimisations off, must map *its own input* exactly as the Keras quantizer's
   grid maps it (TF's step, zero point and clamping). Comparing on the same input makes the check
   independent of the float noise between TF and ONNX Runtime upstream (oneDNN kernels, GELU through
   ``erfc``, masked attention rows that never reach the output): a wrong scale, zero point, bit width
   or clamp shows as whole steps; the only accepted differences are inputs exactly half-way between
   two levels (TF rounds half up, ONNX half to even).
2. **Outputs.** The model outputs against Keras', unoptimised and with ONNX Runtime's default
   optimisations (arg-max agreement at least ``min_top1``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..onnx.runtime import OnnxRunner
from ..onnx.verify import QuantizerComparison, VerificationReport, compare_outputs, tap_activation_quantizers
from .init import KerasRangeInitArgs, call_model, split_features
from .inputs import inputs_from_input_info
from .signature import feed_arrays, signature

__all__ = ["example_batches", "verify_keras_onnx"]


def example_batches(ctrl: Any, max_batches: int = 2) -> list[Any]:
    """Feature batches for checks: calibration data, else ``input_info``, else small random inputs."""
    config = ctrl.config
    if config.has_extra_struct(KerasRangeInitArgs):
        out = []
        for element in config.get_extra_struct(KerasRangeInitArgs).batches(ctrl.model):
            out.append(split_features(element))
            if len(out) >= max_batches:
                break
        if out:
            return out
    if "input_info" in config:
        return [inputs_from_input_info(config["input_info"])]
    specs, names, takes_dict = signature(ctrl.model, None)
    rng = np.random.default_rng(0)
    arrays = []
    for s in specs:
        shape = [2] + [d or 8 for d in s.shape[1:]]
        arrays.append(
            rng.random(shape).astype(s.dtype.as_numpy_dtype) if s.dtype.is_floating else np.ones(shape, s.dtype.as_numpy_dtype)
        )
    return [dict(zip(names, arrays)) if takes_dict else (arrays[0] if len(arrays) == 1 else tuple(arrays))]


def _as_outputs(out: Any, output_names: list[str]) -> dict[str, np.ndarray]:
    if isinstance(out, dict):
        return {n: np.asarray(out[k]) for n, k in zip(output_names, sorted(out))}
    values = list(out) if isinstance(out, (list, tuple)) else [out]
    return {n: np.asarray(v) for n, v in zip(output_names, values)}


def tf_grid(x: np.ndarray, quantizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(quantized, tie)``: ``x`` on the Keras quantizer's grid (TF's arithmetic), and where ``x`` is a tie."""
    grid = quantizer.grid()
    step = float(grid.step[0])
    lo, hi = float(grid.int_low[0]), float(grid.int_high[0])
    r = np.clip(x.astype(np.float64) / step, lo, hi)
    q = np.floor(r + 0.5)
    tie = np.abs(r - np.floor(r) - 0.5) < 1e-4
    return q * step, tie


def verify_keras_onnx(ctrl: Any, path: str, min_top1: float = 0.9) -> list[VerificationReport]:
    """Run ``path`` in ONNX Runtime on example batches and compare with the Keras model (see module docstring).

    Returns two reports, as the PyTorch exporter's verification does: ONNX Runtime unoptimised, whose
    ``quantizers`` check every input quantizer's chain on its own input (``method="own_input"``), and
    ONNX Runtime optimised (outputs, top-1 agreement of at least ``min_top1``).
    """
    model_proto = onnx.load(path)
    output_names = [o.name for o in model_proto.graph.output]
    acts = ctrl.activation_quantizers
    tapped_bytes, tapped = tap_activation_quantizers(model_proto, list(acts), with_inputs=True, every_chain=True)
    plain = OnnxRunner(tapped_bytes, "onnxruntime", optimize=False)
    optimized = OnnxRunner(path, "onnxruntime", optimize=True)
    grid_errors: dict[str, float] = {}
    ties = 0
    refs, actual_plain, actual_opt = [], [], []
    for features in example_batches(ctrl):
        reference = call_model(ctrl.model, features)
        feed = feed_arrays(ctrl.model, features)
        out = plain(feed)
        for dq_name, tap in tapped.items():
            qid, input_name, perm = tap.quantizer_id, tap.input, tap.permutation
            expected, tie = tf_grid(out[input_name], acts[qid])
            if perm is not None:
                expected, tie = np.transpose(expected, perm), np.transpose(tie, perm)
            step = float(acts[qid].grid().step[0])
            diff = np.abs(out[dq_name].astype(np.float64) - expected) / step
            wrong = diff > 1e-3
            ties += int((wrong & tie & (diff < 1.0 + 1e-3)).sum())
            bad = wrong & ~(tie & (diff < 1.0 + 1e-3))
            if bad.any():
                grid_errors[qid] = max(grid_errors.get(qid, 0.0), float(diff.max()))
        refs.append(_as_outputs(reference, output_names))
        actual_plain.append({n: out[n] for n in output_names})
        actual_opt.append(optimized(feed))
    plain_report = compare_outputs(refs, actual_plain, "onnxruntime", optimized=False)
    opt_report = compare_outputs(refs, actual_opt, "onnxruntime", optimized=True, min_top1=min_top1)
    # tf2onnx merges identical QuantizeLinear nodes (query/key/value inputs with equal ranges)
    seen = {t.quantizer_id for t in tapped.values()}
    ranges = {qid: tuple(np.round(np.concatenate([t.numpy().ravel() for t in q.range_tensors()]), 9)) for qid, q in acts.items()}
    missing = [qid for qid in acts if qid not in seen and not any(ranges[qid] == ranges[t] for t in seen)]
    plain_report.quantizers = QuantizerComparison(
        num_checked=len(seen),
        worst=max(grid_errors, key=grid_errors.get) if grid_errors else None,
        max_steps=max(grid_errors.values(), default=0.0),
        method="own_input",
        num_ties=ties,
        off_grid=grid_errors,
        missing=missing,
    )
    return [plain_report, opt_report]
