"""The closing table of a run and the ONNX latency probe behind it."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

from ..onnx.runtime import OnnxRunner

__all__ = ["onnx_latency", "summary_table", "phase_line", "timed", "ordered_phases", "PHASES"]

#: phases in the order a run goes through them (``qat_results.json`` → ``timings_s``; a framework's run
#: has the ones it goes through)
PHASES = ("load", "fp32_finetune", "fp32_evaluation", "compression", "training", "onnx_export", "openvino", "export",
          "int8_evaluation", "save", "onnx_evaluation", "fp32_reference", "layer_report", "card")  # fmt: skip


@contextlib.contextmanager
def timed(phases: dict[str, float], name: str):
    """Add the wall seconds of the block to ``phases[name]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0


def ordered_phases(*parts: dict[str, float]) -> dict[str, float]:
    """The phases of ``parts`` (merged, later ones win), in :data:`PHASES` order, rounded to milliseconds."""
    merged = {k: v for part in parts for k, v in part.items()}
    return {k: round(merged[k], 3) for k in PHASES if k in merged}


def onnx_latency(paths: dict[str, str], feed: dict[str, Any], runs: int) -> dict[str, float]:
    """Median ONNX Runtime latency (seconds) of each file on ``feed``, runs interleaved, after 3 warm-ups."""
    runners = {k: OnnxRunner(p) for k, p in paths.items()}
    for r in runners.values():
        for _ in range(3):
            r(feed)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(runs):
        for k, r in runners.items():
            t0 = time.perf_counter()
            r(feed)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def summary_table(
    task: str, metric: str, values: dict, sizes: dict, latency: dict, framework: str, max_seq_length: int
) -> list[str]:
    """The closing table of a run: FP32 vs INT8 (framework) vs INT8 ONNX, ONNX sizes and latency."""

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    lines = [
        "",
        f"| {task} | FP32 | INT8 ({framework}) | INT8 (ONNX Runtime) |",
        "|---|---|---|---|",
        f"| {metric} | {fmt(values['fp32'])} | {fmt(values['int8'])} | {fmt(values['int8_onnx'])} |",
    ]
    if sizes.get("int8"):
        seq = "" if task == "image-classification" else f", sequence {max_seq_length}"
        lines.append(
            f"| ONNX size (MiB) | {sizes['fp32'] / 2**20:.2f} | | {sizes['int8'] / 2**20:.2f} ({sizes['int8'] / sizes['fp32']:.2f}x) |"
        )
        lines.append(
            f"| ONNX Runtime latency, batch 1{seq} (ms) | {latency['fp32'] * 1e3:.2f} | | "
            f"{latency['int8'] * 1e3:.2f} ({latency['int8'] / latency['fp32']:.2f}x) |"
        )
    return lines


def phase_line(timings: dict[str, float], step_times: dict[str, list[float]] | None = None) -> str:
    """``Time (s): load 3.1, fp32_finetune 12.0, ..., total 61.2`` (the run's phases, as in ``qat_results.json``),
    then the median optimizer step of each training (``step_times``: ``{"fp32": [...], "qat": [...]}``)."""
    line = "\nTime (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    medians = {k: statistics.median(v) for k, v in (step_times or {}).items() if v}
    if medians:
        line += "\nMedian step (s): " + ", ".join(f"{k} {v:.3f}" for k, v in medians.items())
        if "fp32" in medians and "qat" in medians:
            line += f" (QAT/FP32 {medians['qat'] / medians['fp32']:.2f})"
    return line
