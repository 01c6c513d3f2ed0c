"""Render the suite's results as ``BENCHMARKS.md`` tables, target verdicts and the scaling plot."""

from __future__ import annotations

import os
from pathlib import Path

TARGETS = {
    "step_ratio": 1.10,
    "mem_ratio": 1.20,
    "run_step_ratio": 1.20,
    "startup_s": 60.0,
    "eval_ratio": 1.5,
    "export_s": 20.0,
    "acc_drop_pt": 0.3,
    "size_ratio": 0.30,
    "ort_b1_ratio": 0.85,
}


def _f(x, fmt=".3f", none="-") -> str:
    return none if x is None else format(x, fmt)


def verdict(value: float | None, target: float, higher_is_better: bool = False) -> str:
    """``met`` or ``MISSED by <margin>`` (``not measured`` when there is no value)."""
    if value is None:
        return "not measured"
    miss = (target - value) if higher_is_better else (value - target)
    return "met" if miss <= 1e-12 else f"**MISSED** by {miss:.3g}"


# -- sections -----------------------------------------------------------------------------------
def training_md(t: dict) -> list[str]:
    lines = [
        "## 1. Training cost: QAT vs FP32",
        "",
        (
            f"Batch {t['batch_size']}, sequence {t['seq_len']}, AdamW, CPU ({t['threads']} threads). Median of "
            + ", ".join(f"{m['steps']} steps after {m['warmup']} warm-up steps ({m['label']})" for m in t["models"])
            + " per variant; the variants of one process take turns step by step, and "
            "each ratio is to the FP32 copy timed **in the same process** (NNCF runs in its own virtual environment, "
            "with its own FP32 baseline). *Step memory* is the median increase of the process's peak resident memory "
            "during one step over its resident memory before it (activations, gradients, optimizer temporaries), "
            "measured with Linux's peak-RSS counter (`clear_refs`) and `MALLOC_MMAP_THRESHOLD_=65536`. *Setup* is "
            "the time to build the QAT model (insertion and range init on "
            f"{t['calibration_samples']} samples)."
        ),
        "",
        "| model | variant | step (s), median [min-max] | QAT/FP32 step | step memory (MiB) | memory / FP32 | setup (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in t["models"]:
        for row in m["rows"]:
            if "skipped" in row:
                lines.append(f"| {m['label']} | {row['label']} | skipped: {row['skipped']} | | | | |")
                continue
            lines.append(
                f"| {m['label']} | {row['label']} | {row['median_s']:.3f} [{row['min_s']:.3f}-{row['max_s']:.3f}] | "
                f"{_f(row.get('ratio'), '.2f')} | {_f(row.get('peak_mem_mib'), '.0f')} | {_f(row.get('mem_ratio'), '.2f')} | "
                f"{_f(row.get('setup_s'), '.1f') if row['variant'] != 'fp32' else '-'} |"
            )
    lines += ["", "Variants: " + t["variant_notes"], ""]
    return lines


def runs_md(r: dict) -> list[str]:
    import statistics

    runs = r["runs"]
    lines = [
        "## 2. Real runs: `scripts/run_qat.py`, evaluation, ONNX export",
        "",
        (
            f"`{r['command']}`"
            + (" on a tiny random BERT folder (smoke preset)" if r.get("tiny_model") else " (the README's first command)")
            + f", run {len(runs)} time(s) in a child process with all {r['cpu_count']} cores, as a user runs it: the "
            "first time with an empty compile cache (`TORCHINDUCTOR_CACHE_DIR`), then with the cache the first run "
            "filled. *Wall* is the child's whole life (interpreter start, imports, everything); the phases are the "
            "ones the run writes to `qat_results.json` (`timings_s`); the step times are the Trainer's own "
            "(`step_times_s`: forward, backward and optimizer of each step, dynamically padded batches)."
        ),
        "",
        "| run | compile cache | wall (s) | run total (s) | FP32 step, median (s) | QAT step, median (s) | QAT/FP32 step | "
        "first QAT step (s) | QAT steps, mean (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, run in enumerate(runs, 1):
        st = run["step_times_s"]
        fp, q = statistics.median(st["fp32"]), statistics.median(st["qat"])
        lines.append(
            f"| {i} | {run['compile_cache']} | {run['wall_s']:.1f} | {run['timings_s']['total']:.1f} | {fp:.3f} | {q:.3f} | "
            f"{q / fp:.2f} | {st['qat'][0]:.2f} | {statistics.mean(st['qat']):.3f} |"
        )
    lines += [
        "",
        "Phases (s): "
        + ", ".join(
            f"run {i}: " + ", ".join(f"{k} {v:.1f}" for k, v in run["timings_s"].items()) for i, run in enumerate(runs, 1)
        ),
        "",
    ]
    e = r["eval_export"]
    lines += [
        (
            f"Evaluation ({e['model']}, {e['threads']} thread(s)): FP32 and the fake-quantized model (hf_qat's default "
            f"config) in `eval()` under `no_grad` on the same {e['batches']} batches of {e['batch_size']} with sequence "
            f"lengths {min(e['lengths'])}-{max(e['lengths'])} (each padded to its own length), after one untimed pass; the "
            "models take turns batch by batch. ONNX export: `export_onnx` of that model (int8 QDQ file, then hf_qat's "
            "verification in ONNX Runtime), in the same process after the evaluation: the first export of a process "
            "also pays the exporter's own start-up (loading the ONNX translation tables), the second one not."
        ),
        "",
        "| measure | value |",
        "|---|---|",
        f"| FP32 evaluation (s) | {e['eval_s']['fp32']:.3f} |",
        f"| fake-quantized evaluation (s) | {e['eval_s']['qat']:.3f} |",
        f"| fake-quantized / FP32 | {e['eval_ratio']:.2f} |",
        f"| fake-quantized first (untimed) pass (s) | {e['first_pass_qat_s']:.2f} |",
        f"| graphs compiled: first pass / timed pass | {e['graphs_warmup']} / {e['graphs_timed']} |",
        f"| ONNX export, verification included: first in the process (s) | {e['export_s']:.1f} |",
        f"| ONNX export, verification included: again (s) | {e['export_again_s']:.1f} |",
        f"| INT8 ONNX size (MiB) | {e['onnx_mib']:.1f} |",
        "",
    ]
    return lines


def accuracy_md(a: dict) -> list[str]:
    c = a["config"]
    by = {r["key"]: r for r in a["rows"]}
    fp = by["fp32"]
    q = by.get("hf_qat_qat", {})
    cached = " (loaded from the suite's cache: it was trained by an earlier run with the same data and settings)"
    lines = [
        "## 3. Accuracy: SST-2, INT8 as deployed",
        "",
        f"{a['model_label']} fine-tuned in FP32 for {fp['train'].split(',')[0]} "
        + ("(one epoch of `train.tsv`, shuffled, " if c["finetune_steps"] is None else "(")
        + f"batch {c['batch_size']}, lr {c['finetune_lr']:g}, warm-up and linear decay, dynamic padding) on SST-2 "
        f"`train.tsv` ({a['train_size']} rows)"
        + (cached if fp.get("cached") else "")
        + f"; every INT8 route starts from that model and calibrates on the same {c['calibration_samples']} training "
        f"sentences; the QAT rows train {c['qat_steps']} steps with AdamW at lr {c['qat_lr']:g} (constant). hf_qat QAT "
        f"is trained once per seed ({', '.join(str(x['seed']) for x in q.get('seeds', []))}: the seed picks the batches "
        "and the dropout masks); its row gives the mean, and the seed-to-seed spread (max - min) is the noise "
        "against which a difference is called a tie. NNCF QAT trains on seed "
        f"{q.get('seeds', [{'seed': 0}])[0]['seed']}'s batches, in NNCF's process, at the same time as hf_qat's seeds "
        "(each process has one thread). Accuracy of the ONNX file in ONNX Runtime (CPU, default optimisations) on "
        f"`test.tsv` ({a['test_size']} sentences"
        + (", GLUE's validation set" if a["test_size"] == 872 else "")
        + f"); one sentence is {100 / a['test_size']:.2f} points.",
        "",
        "| route | accuracy (%) | vs FP32 (points) | ONNX size (MiB) | time (s) | training |",
        "|---|---|---|---|---|---|",
    ]
    for r in a["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['method']} | skipped: {r['skipped']} | | | | |")
            continue
        acc = f"{100 * r['accuracy']:.2f}"
        if r.get("seeds"):
            acc += " (" + ", ".join(f"{100 * x['accuracy']:.2f}" for x in r["seeds"]) + f"; spread {r['spread_pt']:.2f})"
        time_s = _f(r.get("time_s"), ".0f") + (" (cached)" if r.get("cached") else "")
        lines.append(f"| {r['method']} | {acc} | {r['delta_pt']:+.2f} | {r['size_mib']:.1f} | {time_s} | {r['train']} |")
    lines += [
        "",
        (
            "NNCF's ONNX files come from its legacy `QuantizeLinear`/`DequantizeLinear` export mode (float "
            "weights behind Q/DQ pairs, hence the size); ONNX Runtime's from `quantize_static` (QDQ, per-channel "
            "int8 weights, uint8 activations, MinMax). The hf_qat QAT time is per seed (range init included); the "
            "FP32 time is its fine-tuning" + (f" ({fp['threads']} thread(s))" if fp.get("threads") else "") + "."
        ),
        "",
    ]
    return lines


def inference_md(i: dict) -> list[str]:
    sizes, lat, labels = i["sizes_mib"], i["latency_ms"], i["labels"]
    runtimes = list(lat)
    batches = sorted({int(b) for rt in lat.values() for per in rt.values() for b in per})
    head = (
        "| model | size (MiB) | size / FP32 | "
        + " | ".join(f"{rt} b{b} (ms) | / FP32" for rt in runtimes for b in batches)
        + " |"
    )
    lines = [
        "## 4. Inference: ONNX latency and size",
        "",
        f"Sequence {i['seq_len']}, CPU, "
        + (f"{i['threads']} intra-op thread(s)" if i.get("threads") else "each runtime's default threading")
        + ", median of "
        + ", ".join(f"{v} runs at batch {k}" for k, v in i["repeats"].items())
        + " (files take turns). "
        + i["source"],
        "",
        head,
        "|" + "---|" * (3 + 2 * len(runtimes) * len(batches)),
    ]
    for k in sizes:
        cells = [labels[k], f"{sizes[k]:.1f}", f"{sizes[k] / sizes['fp32']:.3f}"]
        for rt in runtimes:
            for b in batches:
                v, ref = lat[rt][k].get(b, lat[rt][k].get(str(b))), lat[rt]["fp32"].get(b, lat[rt]["fp32"].get(str(b)))
                cells += [f"{v:.1f}", f"{v / ref:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if i.get("openvino_ir"):
        lines += openvino_ir_md(i["openvino_ir"], labels, batches)
    return lines


def openvino_ir_md(ir: dict, labels: dict, batches: list[int]) -> list[str]:
    sizes, lat, used = ir["sizes_mib"], ir["latency_ms"], ir["precision"]
    precisions = list(lat)
    head = "| IR | size (MiB) | / FP32 | int8 weight constants | " + " | ".join(
        f"{p} ({used[p]}) b{b} (ms) | / FP32" for p in precisions for b in batches
    )
    lines = [
        "OpenVINO IR as hf_qat saves it (`openvino_model.xml` + `.bin`, converted from the ONNX file, float constants "
        "kept in f32), in OpenVINO's default inference precision and in f32 (`INFERENCE_PRECISION_HINT`); the FP32 row "
        "is the FP32 ONNX file converted the same way:",
        "",
        head + " |",
        "|" + "---|" * (4 + 2 * len(precisions) * len(batches)),
    ]
    for k in sizes:
        cells = [
            labels[k].replace("ONNX", "IR"),
            f"{sizes[k]:.1f}",
            f"{sizes[k] / sizes['fp32']:.3f}",
            str(ir["integer_weights"][k]),
        ]
        for p in precisions:
            for b in batches:
                v, ref = lat[p][k].get(b, lat[p][k].get(str(b))), lat[p]["fp32"].get(b, lat[p]["fp32"].get(str(b)))
                cells += [f"{v:.1f}", f"{v / ref:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def scaling_md(s: dict, plot_rel: str | None) -> list[str]:
    base = s["base"]
    lines = [
        "## 5. Scaling",
        "",
        (
            f"BERT configs with random weights, batch {s['batch_size']}; one dimension varies at a time around layers "
            f"{base['layers']}, hidden {base['hidden']}, sequence {base['seq_len']} (head size 32, FFN 4x hidden). "
            f"Calibration: `create_compressed_model` with range init on {s['calibration_samples']} samples."
        ),
        "",
    ]
    if plot_rel:
        lines += [f"![step and calibration time vs layers, hidden size, sequence length]({plot_rel})", ""]
    lines += [
        "| layers | hidden | seq | params (M) | FP32 step (s) | QAT step (s) | QAT/FP32 | calibration (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    seen = set()
    for pts in s["sweeps"].values():
        for p in pts:
            key = (p["layers"], p["hidden"], p["seq_len"])
            if key in seen:
                continue
            seen.add(key)
            lines.append(
                f"| {p['layers']} | {p['hidden']} | {p['seq_len']} | {p['parameters_m']:.1f} | {p['fp32_s']:.3f} | "
                f"{p['qat_s']:.3f} | {p['ratio']:.2f} | {p['calibration_s']:.1f} |"
            )
    return lines + [""]


def _tie_verdict(margin: float, noise: float) -> str:
    """``margin`` (points) of hf_qat QAT over another row, judged against the seed-to-seed ``noise``."""
    if abs(margin) <= noise:
        return f"**MISSED** (tie: within the seed spread of {noise:.2f} pt)"
    return "met" if margin > 0 else f"**MISSED** by {-margin:.2f} pt"


def targets_md(results: dict) -> list[str]:
    import statistics

    rows = []
    t = results.get("training")
    if t:
        for m in t["models"]:
            by = {r["variant"]: r for r in m["rows"] if "ratio" in r}
            hq = by.get("hf_qat")
            peers = ", ".join(f"{r['label']} {r['ratio']:.2f}" for k, r in by.items() if k not in ("hf_qat", "hf_qat_linear"))
            value = hq["ratio"] if hq else None
            rows.append(
                (
                    f"QAT/FP32 step time, {m['label']}",
                    f"<= {TARGETS['step_ratio']}",
                    f"{_f(value, '.2f')}" + (f" (peers: {peers})" if peers else ""),
                    verdict(value, TARGETS["step_ratio"]),
                )
            )
            if hq and hq.get("mem_ratio") is not None:
                rows.append(
                    (
                        f"QAT/FP32 step memory, {m['label']}",
                        f"<= {TARGETS['mem_ratio']}",
                        f"{hq['mem_ratio']:.2f}",
                        verdict(hq["mem_ratio"], TARGETS["mem_ratio"]),
                    )
                )
            lin, ao = by.get("hf_qat_linear"), by.get("torch_ao")
            if lin and ao:
                rows.append(
                    (
                        f"Linear-only coverage: hf_qat below torch.ao eager QAT, {m['label']}",
                        "QAT/FP32 step lower",
                        f"{lin['ratio']:.2f} vs {ao['ratio']:.2f}",
                        "met" if lin["ratio"] < ao["ratio"] else f"**MISSED** by {lin['ratio'] - ao['ratio']:.2f}",
                    )
                )
    r = results.get("runs")
    if r:
        runs = r["runs"]
        warm = runs[-1]
        st = warm["step_times_s"]
        ratio = statistics.median(st["qat"]) / statistics.median(st["fp32"])
        rows.append(
            (
                "run_qat.py QAT/FP32 step (Trainer's step times, median, last run)",
                f"<= {TARGETS['run_step_ratio']}",
                f"{ratio:.2f}",
                verdict(ratio, TARGETS["run_step_ratio"]),
            )
        )
        cold = runs[0]["wall_s"]
        rows.append(
            (
                "run_qat.py wall time, empty compile cache" + (" (tiny model)" if r.get("tiny_model") else ""),
                f"<= {TARGETS['startup_s']:.0f} s",
                f"{cold:.1f} s",
                verdict(cold, TARGETS["startup_s"]),
            )
        )
        if len(runs) > 1:
            rows.append(
                (
                    "run_qat.py wall time, second run (warm compile cache)",
                    "less than the first",
                    f"{warm['wall_s']:.1f} s vs {cold:.1f} s",
                    "met" if warm["wall_s"] < cold else f"**MISSED** by {warm['wall_s'] - cold:.1f} s",
                )
            )
        e = r["eval_export"]
        rows.append(
            (
                "fake-quantized / FP32 evaluation time",
                f"<= {TARGETS['eval_ratio']}",
                f"{e['eval_ratio']:.2f} ({e['graphs_timed']} graphs compiled in the timed pass)",
                verdict(e["eval_ratio"], TARGETS["eval_ratio"]),
            )
        )
        rows.append(
            (
                f"ONNX export of the QAT model ({e['model']}), verification included",
                f"< {TARGETS['export_s']:.0f} s",
                f"{e['export_s']:.1f} s",
                verdict(e["export_s"], TARGETS["export_s"]),
            )
        )
    a = results.get("accuracy")
    if a:
        by = {r["key"]: r for r in a["rows"]}
        q = by.get("hf_qat_qat", {})
        fp = by["fp32"]["accuracy"]
        if "accuracy" in q:
            noise = q.get("spread_pt", 0.0)
            drop = 100 * (fp - q["accuracy"])
            rows.append(
                (
                    "hf_qat QAT INT8 accuracy vs FP32 (mean of the seeds)",
                    f"drop <= {TARGETS['acc_drop_pt']} pt",
                    f"{100 * q['accuracy']:.2f} vs {100 * fp:.2f} (drop {drop:+.2f} pt, seed spread {noise:.2f} pt)",
                    verdict(drop, TARGETS["acc_drop_pt"]),
                )
            )
            for key in ("hf_qat_ptq", "ort_static", "nncf_ptq", "nncf_qat"):
                other = by.get(key)
                if other is None:
                    continue
                if "accuracy" not in other:
                    rows.append((f"hf_qat QAT above {other['method']}", "higher", "skipped", "not measured"))
                    continue
                margin = 100 * (q["accuracy"] - other["accuracy"])
                rows.append(
                    (
                        f"hf_qat QAT above {other['method']}",
                        "> 0 pt, beyond the seed spread",
                        f"{margin:+.2f} pt",
                        _tie_verdict(margin, noise),
                    )
                )
    i = results.get("inference")
    if i:
        s = i["sizes_mib"]
        if "hf_qat_qat" in s:
            ratio = s["hf_qat_qat"] / s["fp32"]
            rows.append(
                (
                    "hf_qat INT8 ONNX size / FP32",
                    f"<= {TARGETS['size_ratio']}",
                    f"{ratio:.3f}",
                    verdict(ratio, TARGETS["size_ratio"]),
                )
            )
            ort = i["latency_ms"].get("onnxruntime")
            if ort:

                def b1(k, ort=ort):
                    return ort[k].get(1, ort[k].get("1"))

                ratio = b1("hf_qat_qat") / b1("fp32")
                rows.append(
                    (
                        "hf_qat INT8 ONNX Runtime latency / FP32, batch 1",
                        f"<= {TARGETS['ort_b1_ratio']}",
                        f"{ratio:.2f}",
                        verdict(ratio, TARGETS["ort_b1_ratio"]),
                    )
                )
    lines = ["## Targets", "", "| target | goal | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return lines + [""]


def causes_md(results: dict) -> list[str]:
    """For each missed target, the numbers of the same run that locate the cost."""
    import statistics

    notes = []
    t = results.get("training")
    for m in (t or {}).get("models", []):
        by: dict = {}
        for row in m["rows"]:  # the first FP32 row is the one timed beside hf_qat (the NNCF process has its own)
            if "median_s" in row:
                by.setdefault(row["variant"], row)
        fp, hq, lin, ao = by.get("fp32"), by.get("hf_qat"), by.get("hf_qat_linear"), by.get("torch_ao")
        if not (fp and hq) or hq["median_s"] / fp["median_s"] <= TARGETS["step_ratio"]:
            continue
        extra = hq["median_s"] - fp["median_s"]
        text = (
            f"QAT/FP32 step, {m['label']}: hf_qat adds {extra:.3f} s to a {fp['median_s']:.3f} s FP32 step "
            f"({hq['median_s'] / fp['median_s']:.2f})"
        )
        qn = hq.get("quantizers")
        if qn:
            text += f" with {qn['weights']} weight and {qn['activations']} activation quantizers"
        if lin and lin["median_s"] < fp["median_s"]:
            text += (
                f". With torch.ao's coverage it measured {lin['median_s'] / fp['median_s']:.2f}, below FP32: the "
                f"{fp['steps']} timed FP32 steps themselves spread over {fp['min_s']:.3f}-{fp['max_s']:.3f} s, so "
                "this model's split between coverage and kernels is within the noise"
            )
        elif lin:
            lq = lin.get("quantizers") or {}
            text += (
                f". With torch.ao's coverage ({lq.get('weights', '?')} weight and {lq.get('activations', '?')} "
                f"activation quantizers: Linear layers only) it adds {lin['median_s'] - fp['median_s']:.3f} s "
                f"({lin['median_s'] / fp['median_s']:.2f}"
                + (f"; torch.ao eager QAT {ao['median_s'] / fp['median_s']:.2f}" if ao else "")
                + f"), so the attention products and embeddings that torch.ao does not quantize cost "
                f"{hq['median_s'] - lin['median_s']:.3f} s of it"
            )
        notes.append(
            text + ". Each quantizer runs a fused forward kernel, a fused backward kernel with the range-gradient "
            "reduction, and (for Linear and matmul inputs) the forward again in backward instead of keeping a "
            "fake-quantized copy: that recomputation is what keeps step memory at FP32's level."
        )
        if hq.get("mem_ratio") and hq["mem_ratio"] > TARGETS["mem_ratio"]:
            notes.append(f"Step memory, {m['label']}: {hq['peak_mem_mib']:.0f} MiB against {fp['peak_mem_mib']:.0f} MiB in FP32.")
    r = results.get("runs")
    if r:
        runs = r["runs"]
        warm = runs[-1]
        st = warm["step_times_s"]
        fp, q = statistics.median(st["fp32"]), statistics.median(st["qat"])
        if q / fp > TARGETS["run_step_ratio"]:
            text = (
                f"run_qat.py step: the Trainer's median QAT step is {q:.3f} s against {fp:.3f} s for FP32 (+{q - fp:.3f} s "
                f"per step; first QAT step {st['qat'][0]:.2f} s with the compile cache {warm['compile_cache']}, the "
                "rest do not compile: the evaluation worker counts 0 graphs on new shapes)"
            )
            fixed = next((mm for mm in (t or {}).get("models", []) if "threads" not in mm["label"]), None)
            if fixed:
                byf: dict = {}
                for x in fixed["rows"]:
                    if "median_s" in x:
                        byf.setdefault(x["variant"], x)
                if "fp32" in byf and "hf_qat" in byf:
                    text += (
                        f". At section 1's fixed batch (16 x 128 tokens) the same quantizers add "
                        f"{byf['hf_qat']['median_s'] - byf['fp32']['median_s']:.3f} s to {byf['fp32']['median_s']:.3f} s; "
                        "the run's batches (16 reviews of at most 64 tokens) make the FP32 step short while the weight "
                        "quantizers' work (every weight, every step) does not shrink with the batch"
                    )
            notes.append(text + ".")
        cold = runs[0]
        if cold["wall_s"] > TARGETS["startup_s"]:
            top = sorted(((v, k) for k, v in cold["timings_s"].items() if k != "total"), reverse=True)[:5]
            notes.append(
                f"run_qat.py wall time with an empty compile cache: {cold['wall_s']:.1f} s, of which "
                f"{cold['wall_s'] - cold['timings_s']['total']:.1f} s before the run's clock starts (interpreter, "
                "imports) and, largest phases first, "
                + ", ".join(f"{k} {v:.1f} s" for v, k in top)
                + (f"; with the cache warm: {warm['wall_s']:.1f} s." if len(runs) > 1 else ".")
            )
        e = r["eval_export"]
        if e["eval_ratio"] > TARGETS["eval_ratio"]:
            n = e["batches"]
            notes.append(
                f"Evaluation: the fake-quantized model takes {e['eval_s']['qat']:.2f} s against "
                f"{e['eval_s']['fp32']:.2f} s on {n} batches ({1000 * (e['eval_s']['qat'] - e['eval_s']['fp32']) / n:.0f} ms "
                f"more per batch), with {e['graphs_timed']} graphs compiled in the timed pass."
            )
        if e["export_s"] >= TARGETS["export_s"]:
            notes.append(
                f"ONNX export: {e['export_s']:.1f} s the first time in the process, {e['export_again_s']:.1f} s the "
                "second time: the difference is the exporter's own start-up."
            )
    a = results.get("accuracy")
    if a:
        by = {x["key"]: x for x in a["rows"]}
        q = by.get("hf_qat_qat", {})
        if "accuracy" in q and q.get("seeds"):
            per_seed = ", ".join(f"seed {x['seed']} {100 * x['accuracy']:.2f}" for x in q["seeds"])
            ties = [
                x["method"]
                for k, x in by.items()
                if k not in ("fp32", "hf_qat_qat")
                and "accuracy" in x
                and abs(100 * (q["accuracy"] - x["accuracy"])) <= q["spread_pt"]
            ]
            fp = by["fp32"]["accuracy"]
            drop = 100 * (fp - q["accuracy"])
            if drop > TARGETS["acc_drop_pt"]:
                ptq = by.get("hf_qat_ptq", {})
                notes.append(
                    f"Accuracy against FP32: the FP32 model scores {100 * fp:.2f}; range init alone (hf_qat PTQ) "
                    + (
                        f"keeps {100 * ptq['accuracy']:.2f} ({100 * (ptq['accuracy'] - fp):+.2f} pt); "
                        if "accuracy" in ptq
                        else ""
                    )
                    + f"the {a['config']['qat_steps']} QAT steps at lr {a['config']['qat_lr']:g} from that model give {per_seed}: "
                    "on this converged model, with 8-bit per-channel weights, the QAT budget of the table does not "
                    "move accuracy beyond the seed-to-seed noise."
                )
            if ties:
                notes.append(
                    f"Ties: hf_qat QAT's seeds spread over {q['spread_pt']:.2f} pt "
                    f"({q['spread_pt'] * a['test_size'] / 100:.0f} sentences of {a['test_size']}); "
                    + ", ".join(ties)
                    + (" falls" if len(ties) == 1 else " fall")
                    + " within that spread of its mean: a tie on this test set, not a measured difference."
                )
    if not notes:
        return []
    return ["## Misses and their measured causes", ""] + [f"- {n}" for n in notes] + [""]


# -- document -----------------------------------------------------------------------------------
def int4_md(r: dict) -> list[str]:
    """Section 6, from its own run (:mod:`scripts.benchmarks.int4_causal_lm`)."""
    meta, p, st = r["meta"], r["perplexity"], r["settings"]
    gap = r.get("gap_closed")
    lines = [
        "## 6. 4-bit group-wise causal LM",
        "",
        f"From its own run, {meta['started']} in {meta['wall_s'] / 60:.1f} min"
        + (f" at {meta['threads']} thread(s)" if meta.get("threads") else "")
        + ":",
        "",
        "```bash",
        meta["command"],
        "```",
        "",
        f"A GPT-2 of {r['parameters'] / 1e6:.2f} M parameters (4 blocks of width 128, a {st['vocab']}-token byte-level "
        f"BPE vocabulary trained on the same text) trained from scratch in FP32 for {st['fp32_steps']} steps "
        f"(batch {st['batch']} x {st['sequence']} tokens) on the SST-2 training phrases ({r['train_tokens']:,} tokens). "
        f"Quantized with `{st['preset']}`: INT4 weights in groups of 32, embeddings and `lm_head` INT8 per channel, "
        f"weight-only. Perplexity per predicted token on the 872 SST-2 test sentences ({r['eval_tokens']:,} tokens).",
        "",
        "| model | perplexity | vs FP32 |",
        "|---|---|---|",
    ]
    names = {
        "fp32": "FP32",
        "ptq_rtn": "4-bit PTQ, round to nearest (`min_max`: each group's absolute maximum)",
        "ptq_hf_qat_init": "4-bit PTQ, hf_qat's default range init (`percentile` 0.1/99.9)",
        "qat": f"4-bit QAT, {st['qat_steps']} steps from the round-to-nearest model, lr {st['qat_lr']}, "
        f"distillation weight {st['kd_weight']}",
    }
    for key, name in names.items():
        lines.append(f"| {name} | {p[key]:.2f} | {p[key] / p['fp32']:.3f}x |")
    lines.append("")
    if gap is not None:
        verdict = "met" if gap >= 0.5 else "MISSED"
        lines.append(
            f"QAT closes {gap * 100:.0f}% of the gap between round-to-nearest 4-bit PTQ and FP32 "
            f"({p['ptq_rtn']:.2f} -> {p['qat']:.2f}, FP32 {p['fp32']:.2f}); target at least 50%: **{verdict}**. "
            "The QAT steps also train: part of the drop can come from training longer than FP32 did."
        )
    else:
        lines.append(
            f"Round-to-nearest 4-bit PTQ is not worse than FP32 here ({p['ptq_rtn']:.2f} against {p['fp32']:.2f}), "
            "so there is no gap for QAT to close; the target does not apply to this model."
        )
    f, t, o = r["files_mib"], r["tokens_per_second"], r["onnx"]
    ops = o.get("onnxruntime_ops") or {}
    lines += [
        "",
        "| file | size (MiB) | vs FP32 ONNX | ONNX Runtime tokens/s | OpenVINO tokens/s |",
        "|---|---|---|---|---|",
        f"| FP32 ONNX | {f['fp32_onnx']:.2f} | 1.00x | {t['fp32_onnxruntime']:,.0f} | {t['fp32_openvino']:,.0f} |",
        f"| INT4 ONNX (opset 21) | {f['int4_onnx']:.2f} | {f['int4_onnx'] / f['fp32_onnx']:.2f}x | "
        f"{t['int4_onnxruntime']:,.0f} | {t['int4_openvino']:,.0f} |",
        f"| INT4 OpenVINO IR (.xml + .bin) | {f['int4_openvino_ir']:.2f} | {f['int4_openvino_ir'] / f['fp32_onnx']:.2f}x | | |",
        "",
        f"Tokens per second: full {st['sequence']}-token sequences at batch 1 (no key/value cache), the ONNX files in "
        "each runtime's CPU plugin. The INT4 file holds "
        f"{o['int4_initializers']} int4 and {o['int8_initializers']} int8 weight initializers and passed verification "
        f"({'yes' if o['verified'] else 'no'}); ONNX Runtime runs it with "
        + (", ".join(f"{n} {op}" for op, n in ops.items() if op in ("MatMulNBits", "MatMulIntegerToFloat")) or "no 4-bit kernel")
        + "; OpenVINO's constants by type: "
        + ", ".join(f"{k} {v}" for k, v in sorted(o["openvino_constant_types"].items()))
        + ".",
        "",
    ]
    return lines


def write_report(results: dict, path: Path, plot_path: Path | None, int4: dict | None = None) -> None:
    """Write ``BENCHMARKS.md`` (and the plot, when scaling results exist); ``int4``: section 6's results, from
    their own run."""
    meta = results["meta"]
    plot_rel = None
    if results.get("scaling") and plot_path is not None:
        plot_scaling(results["scaling"], plot_path)
        plot_rel = os.path.relpath(plot_path, path.parent)
    lines = [
        "# Benchmarks",
        "",
        "Generated by the benchmark suite, every number from one run of:",
        "",
        "```bash",
        meta["command"],
        "```",
        "",
        f"Preset `{meta['preset']}`, run {meta['started']} in {meta['wall_s'] / 60:.1f} min on {meta['machine']}. "
        f"{meta['versions']}. Section wall times: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in meta.get("section_s", {}).items())
        + f". 1-minute load average (all processes on the machine) {meta['load_avg']['start']:.1f} at the start, "
        f"{meta['load_avg']['end']:.1f} at the end. Do not edit by hand: rerun the command.",
    ]
    la = meta["load_avg"]
    if "mean" in la:
        threads = meta.get("threads") or 0
        quiet = la["max"] <= (threads or 1) + 1.5
        lines += [
            "",
            (
                f"**{'Quiet' if quiet else 'Busy'} machine**: the 1-minute load average, sampled every 30 s "
                f"({la['samples']} samples), was {la['mean']:.1f} on average and {la['max']:.1f} at most"
                + (
                    f", about what the suite itself puts on the machine ({threads} thread(s), plus NNCF's concurrent "
                    "process in section 3 and run_qat.py with all cores in section 2)."
                    if quiet
                    else f": other work shared the machine (the suite itself accounts for about {max(threads, 1) + 1} "
                    "at most); absolute times are inflated, side-by-side ratios less so."
                )
            ),
        ]
    if meta.get("threads"):
        lines += [
            "",
            (
                f"**Run with `--threads {meta['threads']}`**: torch, ONNX Runtime and OpenVINO used {meta['threads']} "
                "intra-op thread(s), because other jobs shared the machine (with all cores, their load stalls "
                "multi-threaded kernels at every barrier and the run takes several times longer). Absolute times are "
                f"{meta['threads']}-thread times; ratios compare like with like."
            ),
        ]
    if meta["preset"] != "full":
        lines += ["", f"**This is the `{meta['preset']}` preset (fewer steps and sizes), not the full benchmark.**"]
    lines.append("")
    lines += targets_md(results)
    lines += causes_md(results)
    if results.get("training"):
        lines += training_md(results["training"])
    if results.get("runs"):
        lines += runs_md(results["runs"])
    if results.get("accuracy"):
        lines += accuracy_md(results["accuracy"])
    if results.get("inference"):
        lines += inference_md(results["inference"])
    if results.get("scaling"):
        lines += scaling_md(results["scaling"], plot_rel)
    if int4:
        lines += int4_md(int4)
    for name, reason in results.get("skipped_sections", {}).items():
        lines += [f"Section `{name}` skipped: {reason}", ""]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    path.write_text("\n".join(lines).rstrip() + "\n")


def plot_scaling(s: dict, path: Path) -> None:
    """Two rows (step time, calibration time) by three sweeps (layers, hidden size, sequence length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [("layers", "layers"), ("hidden", "hidden size"), ("seq_len", "sequence length")]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), constrained_layout=True)
    for col, (key, label) in enumerate(names):
        pts = s["sweeps"][key]
        x = [p[key] for p in pts]
        ax = axes[0][col]
        ax.plot(x, [p["fp32_s"] for p in pts], "o-", label="FP32")
        ax.plot(x, [p["qat_s"] for p in pts], "s--", label="hf_qat QAT")
        for xi, p in zip(x, pts):
            ax.annotate(
                f"x{p['ratio']:.2f}", (xi, p["qat_s"]), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8
            )
        ax.set_xlabel(label)
        ax.set_ylabel("step time (s)")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[1][col]
        ax.plot(x, [p["calibration_s"] for p in pts], "d-", color="tab:green")
        ax.set_xlabel(label)
        ax.set_ylabel("calibration time (s)")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    fig.suptitle(f"hf_qat scaling (batch {s['batch_size']}, CPU); labels: QAT/FP32 step-time ratio")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
