"""Compare what an ONNX runtime computes with what the training framework computes (framework-neutral).

The framework side (PyTorch or Keras) supplies reference outputs of its fake-quantized model; this
module runs the exported file on the same inputs and reports, per output, the largest and mean
absolute difference and, for outputs with a class axis (logits), how often the arg-max agrees.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from .names import read_quantizer_ids, short_index
from .runtime import OnnxRunner

__all__ = [
    "MAX_TIE_FRACTION",
    "MIN_TIE_COUNT",
    "OutputComparison",
    "QuantizerComparison",
    "VerificationReport",
    "compare_outputs",
    "compare_quantized",
    "QuantizerTap",
    "tap_activation_quantizers",
    "verify_outputs",
]


@dataclass
class OutputComparison:
    """One output of one runtime against the reference.

    Attributes:
        name: output name.
        max_abs_diff / mean_abs_diff: over all elements and all input batches.
        reference_max_abs: largest absolute reference value (puts the differences in scale).
        top1_agreement: fraction of rows whose arg-max over the last axis agrees (``None`` for
            outputs whose last axis has a single element).
        num_rows: rows the agreement was computed over.
    """

    name: str
    max_abs_diff: float
    mean_abs_diff: float
    reference_max_abs: float
    top1_agreement: float | None
    num_rows: int


#: Largest fraction of elements allowed to differ (by one step) at the first diverging quantizer.
MAX_TIE_FRACTION = 1e-3
#: Tie flips allowed at the first diverging quantizer however small it is (a tensor of a few hundred
#: elements cannot hold a fraction of 1e-3 of a flip).
MIN_TIE_COUNT = 2


@dataclass
class QuantizerComparison:
    """Activation quantizers of the graph (``DequantizeLinear`` outputs) against the framework's.

    Computed in ONNX Runtime with graph optimisations off, i.e. on the graph as written. Both sides
    compute on the same integer grids, but float accumulation order differs, so a value lying within
    float rounding of a grid boundary can land one step apart (a *tie flip*). Downstream of a flip the
    two computations see different inputs and, in a deep quantized network, differences compound
    (quantizing amplifies small perturbations into whole steps). The check therefore looks at the
    **first** quantizer, in execution order, where the two differ: a correct graph differs there by at
    most one step in a tiny fraction of elements (at most :data:`MAX_TIE_FRACTION`, or
    :data:`MIN_TIE_COUNT` elements in a small tensor); a wrong scale,
    zero point, grid or wiring differs by more.

    The Keras exporter checks differently (``method="own_input"``): TensorFlow and ONNX Runtime differ by
    float noise upstream of the quantizers, so each chain is run on *its own* input as the graph computes
    it and must reproduce the framework's grid exactly; only inputs exactly half-way between two levels
    may round the other way (``num_ties``). Chains off the grid are listed in ``off_grid``, quantizers
    whose chain is not in the graph in ``missing``.

    Attributes:
        num_checked: quantizers compared.
        num_elements / num_differing: elements compared, and those more than half a step apart.
        max_steps / worst: largest difference over all quantizers (in steps) and where it is.
        first_divergence: first quantizer (execution order) that differs at all, or ``None``.
        first_divergence_steps / first_divergence_fraction: its largest difference (in steps) and
            the fraction of its elements that differ.
        first_divergence_count / first_divergence_size: how many of its elements differ, out of how many.
        method: ``"first_divergence"`` (PyTorch) or ``"own_input"`` (Keras).
        num_ties: ``own_input``: half-step inputs rounded the other way (allowed).
        off_grid: ``own_input``: quantizer id -> largest difference (steps) of a chain off the grid.
        missing: ``own_input``: quantizers with no chain in the graph.
    """

    num_checked: int = 0
    num_elements: int = 0
    num_differing: int = 0
    max_steps: float = 0.0
    worst: str | None = None
    first_divergence: str | None = None
    first_divergence_steps: float = 0.0
    first_divergence_fraction: float = 0.0
    first_divergence_count: int = 0
    first_divergence_size: int = 0
    method: str = "first_divergence"
    num_ties: int = 0
    off_grid: dict[str, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if self.method == "own_input":
            return not self.off_grid and not self.missing
        allowed = max(MAX_TIE_FRACTION * self.first_divergence_size, MIN_TIE_COUNT)
        return self.first_divergence is None or (
            self.first_divergence_steps <= 1.0 + 1e-3 and self.first_divergence_count <= allowed
        )

    def merge(self, other: QuantizerComparison) -> QuantizerComparison:
        """Combine the comparisons of two input batches (the failing or earlier divergence is kept)."""
        merged = QuantizerComparison(
            max(self.num_checked, other.num_checked),
            self.num_elements + other.num_elements,
            self.num_differing + other.num_differing,
        )
        worst = max((self, other), key=lambda c: c.max_steps)
        merged.max_steps, merged.worst = worst.max_steps, worst.worst
        first = self if (self.first_divergence is not None and (not self.ok or other.ok)) else other
        if first.first_divergence is None:
            first = self
        merged.first_divergence = first.first_divergence
        merged.first_divergence_steps = first.first_divergence_steps
        merged.first_divergence_fraction = first.first_divergence_fraction
        merged.first_divergence_count = first.first_divergence_count
        merged.first_divergence_size = first.first_divergence_size
        return merged


@dataclass
class VerificationReport:
    """Result of running an exported file against reference outputs in one runtime.

    ``ok`` is true when every output has ``max_abs_diff <= atol`` (when ``atol`` is set) and an
    arg-max agreement of at least ``min_top1`` (when defined for the output).
    """

    runtime: str
    optimized: bool
    outputs: list[OutputComparison] = field(default_factory=list)
    atol: float | None = None
    min_top1: float = 0.0
    quantizers: QuantizerComparison | None = None

    @property
    def ok(self) -> bool:
        if self.quantizers is not None and not self.quantizers.ok:
            return False
        for o in self.outputs:
            if self.atol is not None and not o.max_abs_diff <= self.atol:
                return False
            if o.top1_agreement is not None and o.top1_agreement < self.min_top1:
                return False
        return True

    @property
    def max_abs_diff(self) -> float:
        return max((o.max_abs_diff for o in self.outputs), default=0.0)

    @property
    def top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    def __str__(self) -> str:
        mode = "optimised" if self.optimized else "unoptimised"
        lines = [f"{self.runtime} ({mode}): {'OK' if self.ok else 'MISMATCH'}"]
        for o in self.outputs:
            top1 = "" if o.top1_agreement is None else f", top-1 agreement {o.top1_agreement:.4f} over {o.num_rows} rows"
            lines.append(
                f"  {o.name}: max |diff| {o.max_abs_diff:.3g} (mean {o.mean_abs_diff:.3g}, |reference| up to "
                f"{o.reference_max_abs:.3g}){top1}"
            )
        q = self.quantizers
        if q is not None and q.method == "own_input":
            lines.append(
                f"  {q.num_checked} input quantizer chains checked on their own inputs: {len(q.off_grid)} off the grid"
                f"{': ' + str(dict(list(q.off_grid.items())[:3])) if q.off_grid else ''}, {len(q.missing)} missing"
                f"{': ' + str(q.missing[:3]) if q.missing else ''}, {q.num_ties} half-step ties rounded to even"
            )
        elif q is not None:
            if q.first_divergence is None:
                lines.append(f"  {q.num_checked} activation quantizers: identical ({q.num_elements} elements)")
            else:
                lines.append(
                    f"  {q.num_checked} activation quantizers: first difference at {q.first_divergence}: "
                    f"{q.first_divergence_steps:.3g} step(s) in {q.first_divergence_count} of its "
                    f"{q.first_divergence_size} elements ({q.first_divergence_fraction:.2e}); "
                    f"overall {q.num_differing} of {q.num_elements} elements differ, up to {q.max_steps:.3g} steps"
                )
        limits = [f"max |diff| <= {self.atol:.3g}"] if self.atol is not None else []
        limits.append(f"top-1 agreement >= {self.min_top1}")
        if q is not None and q.method == "own_input":
            limits.append("every chain on the framework's grid (ties excepted)")
        elif q is not None:
            limits.append(
                f"first differing quantizer within one step in <= {MAX_TIE_FRACTION:g} of its elements "
                f"(or <= {MIN_TIE_COUNT} elements)"
            )
        lines.append("  required: " + ", ".join(limits))
        return "\n".join(lines)


def compare_outputs(
    reference: Sequence[Mapping[str, np.ndarray]],
    actual: Sequence[Mapping[str, np.ndarray]],
    runtime: str,
    optimized: bool,
    atol: float | None = None,
    min_top1: float = 0.0,
) -> VerificationReport:
    """Compare batches of outputs (``reference[i]`` and ``actual[i]`` come from the same inputs)."""
    report = VerificationReport(runtime, optimized, atol=atol, min_top1=min_top1)
    names = list(reference[0]) if reference else []
    for name in names:
        max_diff = total = 0.0
        count = rows = agree = 0
        ref_max = 0.0
        has_classes = True
        for ref_b, act_b in zip(reference, actual):
            r = np.asarray(ref_b[name], dtype=np.float64)
            a = np.asarray(act_b[name], dtype=np.float64)
            if r.shape != a.shape:
                raise ValueError(f"output {name!r}: shape {list(a.shape)} from {runtime}, {list(r.shape)} expected")
            if r.size == 0:
                continue
            d = np.abs(r - a)
            d = np.where(np.isnan(r) & np.isnan(a), 0.0, d)
            max_diff = max(max_diff, float(np.nanmax(d)) if not np.isnan(d).all() else float("nan"))
            if np.isnan(d).any():
                max_diff = float("nan")
            total += float(np.nansum(d))
            count += d.size
            ref_max = max(ref_max, float(np.nanmax(np.abs(r))))
            if r.ndim == 0 or r.shape[-1] < 2:
                has_classes = False
                continue
            ra, aa = r.reshape(-1, r.shape[-1]).argmax(-1), a.reshape(-1, a.shape[-1]).argmax(-1)
            rows += ra.size
            agree += int((ra == aa).sum())
        report.outputs.append(
            OutputComparison(
                name,
                max_diff,
                total / max(count, 1),
                ref_max,
                (agree / rows) if has_classes and rows else None,
                rows,
            )
        )
    return report


def verify_outputs(
    path: str | os.PathLike,
    inputs: Sequence[Mapping[str, np.ndarray]],
    reference: Sequence[Mapping[str, np.ndarray]],
    runtime: str = "onnxruntime",
    optimize: bool = True,
    atol: float | None = None,
    min_top1: float = 0.0,
) -> VerificationReport:
    """Run ``path`` in ``runtime`` on each input batch and compare with ``reference``."""
    runner = OnnxRunner(path, runtime, optimize)
    actual = []
    for batch in inputs:
        out = runner(batch)
        actual.append({name: out[name] for name in reference[0]})
    return compare_outputs(reference, actual, runtime, optimize, atol, min_top1)


def compare_quantized(
    reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], steps: Mapping[str, np.ndarray | float]
) -> QuantizerComparison:
    """Compare quantized tensors by id, in ``reference``'s order (the execution order).

    Differences are measured in each quantizer's step; ``steps[id]`` is a scalar or a per-channel
    array that broadcasts against the tensor. See [`QuantizerComparison`].
    """
    result = QuantizerComparison()
    for qid, ref in reference.items():
        if qid not in actual:
            continue
        a, r = np.asarray(actual[qid], dtype=np.float64), np.asarray(ref, dtype=np.float64)
        if a.shape != r.shape and a.size == r.size and a.ndim and r.ndim and a.shape[-1] == r.shape[-1]:
            a = a.reshape(r.shape)  # the exporter quantized a flattened view ([B*T, C] for [B, T, C]): same values
        if a.shape != r.shape or r.size == 0:
            continue
        diff = np.abs(a - r) / np.asarray(steps[qid], dtype=np.float64)
        differing = int((diff > 0.5).sum())
        worst = float(diff.max())
        result.num_checked += 1
        result.num_elements += diff.size
        result.num_differing += differing
        if result.worst is None or worst > result.max_steps:
            result.max_steps, result.worst = worst, qid
        if result.first_divergence is None and worst > 1e-6:
            result.first_divergence = qid
            result.first_divergence_steps = worst
            result.first_divergence_fraction = differing / diff.size
            result.first_divergence_count = differing
            result.first_divergence_size = diff.size
    return result


@dataclass(frozen=True)
class QuantizerTap:
    """An activation quantizer's chain found in an exported graph.

    Attributes:
        quantizer_id: the quantizer's id.
        input: the tensor the chain's ``QuantizeLinear`` reads.
        permutation: the ``perm`` of a ``Transpose`` between ``QuantizeLinear`` and ``DequantizeLinear``
            (tf2onnx moves transposes there), else ``None``: apply it to compare the input with the output.
    """

    quantizer_id: str
    input: str
    permutation: list[int] | None = None


def tap_activation_quantizers(
    model: onnx.ModelProto, ids: Sequence[str], *, with_inputs: bool = False, every_chain: bool = False
) -> tuple[bytes, dict[str, QuantizerTap]]:
    """A copy of ``model`` that also outputs every activation ``DequantizeLinear`` it can attribute.

    A ``QuantizeLinear → [Clip | Transpose →] DequantizeLinear`` chain is attributed through the node's
    name or scale input name: ``aq<i>`` indexes the ids listed in the model metadata
    (:mod:`hf_qat.onnx.names`, written by both exporters); without that list, the longest id in ``ids``
    occurring in those names.

    Args:
        with_inputs: also output each chain's input (to check the chain on its own input).
        every_chain: tap every chain of a quantizer (a shared quantizer has one chain per consumer);
            by default only the first.

    Returns:
        The serialized copy, and ``{dequantized output name: QuantizerTap}``.
    """
    graph = model.graph
    short_ids = read_quantizer_ids(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_length = sorted(ids, key=len, reverse=True)
    tapped: dict[str, QuantizerTap] = {}
    existing = {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        haystack = node.name + " " + (node.input[1] if len(node.input) > 1 else "")
        if short_ids is not None:  # names shortened on export: aq<i> indexes the listed ids
            index = short_index(haystack)
            qid = short_ids[index] if index is not None and index < len(short_ids) else None
            qid = qid if qid in ids else None
        else:
            qid = next((i for i in by_length if i in haystack), None)
        if qid is None or (not every_chain and any(t.quantizer_id == qid for t in tapped.values())):
            continue
        perm = None
        nxt = consumers.get(node.output[0], [])
        if len(nxt) == 1 and nxt[0].op_type == "Clip":
            nxt = consumers.get(nxt[0].output[0], [])
        elif len(nxt) == 1 and nxt[0].op_type == "Transpose":
            perm = list(next(a.ints for a in nxt[0].attribute if a.name == "perm"))
            nxt = consumers.get(nxt[0].output[0], [])
        dq = next((n for n in nxt if n.op_type == "DequantizeLinear"), None)
        if dq is None or dq.output[0] in existing or dq.output[0] in tapped:
            continue
        tapped[dq.output[0]] = QuantizerTap(qid, node.input[0], perm)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    outputs = {o.name for o in copy.graph.output}
    for out, tap in tapped.items():
        for name in (out, tap.input) if with_inputs else (out,):
            if name not in outputs:
                copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
                outputs.add(name)
    return copy.SerializeToString(), tapped
