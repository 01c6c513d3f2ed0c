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

import re
from typing import Any

import numpy as np
import onnx

from ..onnx.runtime import OnnxRunner
from ..onnx.verify import compare_outputs
from .export import _signature, feed_arrays
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


def _as_outputs(out: Any, output_names: list[str]) -> dict[str, np.ndarray]:
    if isinstance(out, dict):
        return {n: np.asarray(out[k]) for n, k in zip(output_names, sorted(out))}
    values = list(out) if isinstance(out, (list, tuple)) else [out]
    return {n: np.asarray(v) for n, v in zip(output_names, values)}


_SHORT_ID = re.compile(r"(?<![\w])aq(\d+)(?!\d)")


def tap_input_quantizers(
    model: onnx.ModelProto, ids: list[str]
) -> tuple[bytes, dict[str, tuple[str, str, list[int] | None]]]:
    """A copy of ``model`` that also outputs each input quantizer's input and ``DequantizeLinear`` output.

    ``QuantizeLinear`` nodes are attributed through their op name ``aq<i>`` (``ids[i]``); tf2onnx may
    move a ``Transpose`` between ``QuantizeLinear`` and ``DequantizeLinear``. Returns the serialized
    copy and ``{dequantized output: (quantizer id, quantizer input, permutation or None)}``.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tapped: dict[str, tuple[str, str, list[int] | None]] = {}
    for node in model.graph.node:
        m = _SHORT_ID.search(node.name)
        if node.op_type != "QuantizeLinear" or m is None or int(m.group(1)) >= len(ids):
            continue
        perm = None
        nxt = consumers.get(node.output[0], [])
        if len(nxt) == 1 and nxt[0].op_type == "Transpose":
            perm = list(next(a.ints for a in nxt[0].attribute if a.name == "perm"))
            nxt = consumers.get(nxt[0].output[0], [])
        dq = next((n for n in nxt if n.op_type == "DequantizeLinear"), None)
        if dq is not None:
            tapped[dq.output[0]] = (ids[int(m.group(1))], node.input[0], perm)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for out, (_, inp, _) in tapped.items():
        for name in (out, inp):
            if name not in existing:
                copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
                existing.add(name)
    return copy.SerializeToString(), tapped


def tf_grid(x: np.ndarray, quantizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(quantized, tie)``: ``x`` on the Keras quantizer's grid (TF's arithmetic), and where ``x`` is a tie."""
    step, k_low, k_high = quantizer.grid()
    step = float(step.reshape(-1)[0])
    lo, hi = float(k_low.reshape(-1)[0]), float(k_high.reshape(-1)[0])
    r = np.clip(x.astype(np.float64) / step, lo, hi)
    q = np.floor(r + 0.5)
    tie = np.abs(r - np.floor(r) - 0.5) < 1e-4
    return q * step, tie


def verify_keras_onnx(ctrl: Any, path: str, min_top1: float = 0.9) -> dict[str, Any]:
    """Run ``path`` in ONNX Runtime on example batches and compare with the Keras model (see module docstring).

    Returns a dict: ``ok``, ``summary``, ``grid_errors`` (quantizer id -> largest difference in
    steps, for quantizers whose chain maps its input differently from TF), ``ties`` (half-step inputs
    rounded the other way), ``checked`` (quantizers checked), ``missing`` and the output comparisons.
    """
    model_proto = onnx.load(path)
    output_names = [o.name for o in model_proto.graph.output]
    acts = ctrl.activation_quantizers
    tapped_bytes, tapped = tap_input_quantizers(model_proto, list(acts))
    plain = OnnxRunner(tapped_bytes, "onnxruntime", optimize=False)
    optimized = OnnxRunner(path, "onnxruntime", optimize=True)
    grid_errors: dict[str, float] = {}
    ties = 0
    refs, actual_plain, actual_opt = [], [], []
    for features in example_batches(ctrl):
        reference = call_model(ctrl.model, features)
        feed = feed_arrays(ctrl.model, features)
        out = plain(feed)
        for dq_name, (qid, input_name, perm) in tapped.items():
            expected, tie = tf_grid(out[input_name], acts[qid])
            if perm is not None:
                expected, tie = np.transpose(expected, perm), np.transpose(tie, perm)
            step = float(acts[qid].grid()[0].reshape(-1)[0])
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
    seen = {qid for qid, _, _ in tapped.values()}
    ranges = {qid: tuple(np.round(np.concatenate([t.numpy().ravel() for t in q.range_tensors()]), 9)) for qid, q in acts.items()}
    missing = [qid for qid in acts if qid not in seen and not any(ranges[qid] == ranges[t] for t in seen)]
    ok = bool(not grid_errors and not missing and opt_report.ok)
    merged = len(acts) - len(seen) - len(missing)
    summary = (
        f"{len(seen)}/{len(acts)} input quantizer chains checked on their own inputs ({merged} merged with an identical "
        f"one, {len(missing)} missing{': ' + str(missing[:3]) if missing else ''}); "
        f"{len(grid_errors)} off TF's grid{': ' + str(dict(list(grid_errors.items())[:3])) if grid_errors else ''}; "
        f"{ties} half-step ties rounded to even; outputs max |diff| unoptimised "
        f"{max((o.max_abs_diff for o in plain_report.outputs), default=0.0):.3g}, optimised "
        f"{max((o.max_abs_diff for o in opt_report.outputs), default=0.0):.3g}, top-1 agreement "
        f"{min((o.top1_agreement for o in opt_report.outputs if o.top1_agreement is not None), default=1.0):.4f}"
    )
    return {
        "ok": ok,
        "summary": summary,
        "grid_errors": grid_errors,
        "ties": ties,
        "checked": len(seen),
        "missing": missing,
        "unoptimized": plain_report,
        "optimized": opt_report,
    }
