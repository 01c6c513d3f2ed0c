"""Run the benchmark suite and write ``BENCHMARKS.md`` with its plot.

From the repository root::

    python -m scripts.benchmarks                      # full preset: BENCHMARKS.md + scripts/benchmarks/scaling.png
    python -m scripts.benchmarks --preset quick --output /tmp/B.md
    python -m scripts.benchmarks --sections training,inference --no_nncf_setup

NNCF 3.4 is installed into its own virtual environment on first use (``--nncf_venv``; about a
minute with the extension build); with ``--no_nncf_setup`` and no environment, NNCF's rows are
reported as skipped with the reason. SST-2 comes from ``../shared/data/sst2`` (``--data_dir``) or the
hub (``--dataset_name glue --dataset_config_name sst2``); models and token batches go to
``--work_dir``, outside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

from .common import REPO_ROOT
from .nncf_env import DEFAULT_CACHE, DEFAULT_VENV, NncfEnv, prepare_nncf_env
from .presets import PRESETS, Preset
from .report import write_report
from .workers import WorkerError, run_worker

SECTIONS = ("training", "runs", "accuracy", "inference", "scaling")
VARIANT_LABELS = {
    "fp32": "FP32",
    "hf_qat": "hf_qat QAT",
    "hf_qat_linear": "hf_qat QAT, Linear only",
    "torch_ao": "torch.ao eager QAT",
    "nncf": "NNCF 3.4 QAT",
    "torchao": "torchao QAT",
}
TORCHAO_REASON = (
    "torchao's QAT (0.18) has no 8-bit static-activation scheme: its activation fake-quantizers are "
    "dynamic per-token (`IntxFakeQuantizeConfig(is_dynamic=True)`), Linear/Embedding only"
)
VARIANT_NOTES = (
    "*hf_qat QAT*: hf_qat's default 8-bit config (per-channel weights, activations at every Linear input and both "
    "inputs of the attention products, embeddings). *torch.ao eager QAT*: `prepare_qat` with the x86 default QAT "
    "qconfig on every `nn.Linear` (fused observer+fake-quant kernels; per-channel weights, per-tensor activations at "
    "the Linear outputs; no attention products, no embeddings), the closest torch's own QAT comes to the same "
    "scheme. *hf_qat QAT, Linear only*: hf_qat with torch.ao's coverage (`ignored_scopes` drop the attention products "
    "and embeddings: weights and inputs of the Linear layers), so that the kernels are compared like for like. *NNCF 3.4 QAT*: `nncf.quantize(model_type=TRANSFORMER)`, then training the returned model. "
    f"*torchao*: not run, {TORCHAO_REASON}."
)


def log(msg: str) -> None:
    print(msg, flush=True)


def machine() -> str:
    cpu = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({cpu})"


def versions() -> str:
    import onnxruntime
    import torch
    import transformers

    parts = [
        f"Python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"transformers {transformers.__version__}",
        f"onnxruntime {onnxruntime.__version__}",
    ]
    try:
        import openvino

        parts.append(f"openvino {openvino.__version__.split('-')[0]}")
    except ImportError:
        pass
    return ", ".join(parts)


class LoadSampler:
    """The machine's 1-minute load average, sampled every ``every`` seconds in a daemon thread while the suite runs."""

    def __init__(self, every: float = 30.0):
        import threading

        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict:
        self._stop.set()
        self.samples.append(os.getloadavg()[0])
        return {
            "start": self.samples[0],
            "end": self.samples[-1],
            "mean": sum(self.samples) / len(self.samples),
            "max": max(self.samples),
            "samples": len(self.samples),
        }


def read_int4(work_dir: Path) -> dict | None:
    """Section 6's results (``python -m scripts.benchmarks.int4_causal_lm``, a run of its own), if it ran."""
    path = work_dir / "int4_results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def set_threads(n: int) -> None:
    """Use ``n`` intra-op threads here and in every worker process (torch reads ``OMP_NUM_THREADS``)."""
    import torch

    torch.set_num_threads(n)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "HF_QAT_BENCH_THREADS"):
        os.environ[var] = str(n)


# -- sections -----------------------------------------------------------------------------------
def run_training(preset: Preset, nncf: NncfEnv, threads: int | None) -> dict:
    cfg = preset.training
    out = {k: getattr(cfg, k) for k in ("batch_size", "seq_len", "steps", "warmup", "calibration_samples")}
    out.update(models=[], variant_notes=VARIANT_NOTES)
    passes = [(name, label, overrides, sw, None) for name, label, overrides, sw in cfg.models]
    # the first model again with more threads (the targets hold at 1 and 2 threads)
    more = [n for n in cfg.extra_threads if n != threads and n <= (os.cpu_count() or 1)]
    if cfg.models and more:
        name, label, overrides, sw = cfg.models[0]
        passes += [(name, label, overrides, sw, n) for n in more]
    for name, label, overrides, steps_warmup, n_threads in passes:
        shown = label + (f", {n_threads} threads" if n_threads else "")
        log(f"  {shown}")
        steps, warmup = steps_warmup or (cfg.steps, cfg.warmup)
        args = [
            "--model",
            name,
            "--batch_size",
            str(cfg.batch_size),
            "--seq_len",
            str(cfg.seq_len),
            "--steps",
            str(steps),
            "--warmup",
            str(warmup),
            "--calibration_samples",
            str(cfg.calibration_samples),
        ]
        if overrides:
            args += ["--layers", str(overrides["num_hidden_layers"]), "--hidden", str(overrides["hidden_size"])]
        env = {v: str(n_threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "HF_QAT_BENCH_THREADS")} if n_threads else None
        rows = []
        res = run_worker("training_cost", args + ["--variants", "fp32,hf_qat,hf_qat_linear,torch_ao"], env=env, log=log)
        rows += _rows(res, "")
        if n_threads is None:
            out["threads"] = res["threads"]
            if nncf.python is None:
                rows.append({"variant": "nncf", "label": VARIANT_LABELS["nncf"], "skipped": nncf.reason})
            else:
                try:
                    res = run_worker(
                        "training_cost", args + ["--variants", "fp32,nncf"], python=nncf.python, env=nncf.env, log=log
                    )
                    rows += _rows(res, " (NNCF process)")
                except WorkerError as e:
                    log(f"  {e}")
                    rows.append(
                        {"variant": "nncf", "label": VARIANT_LABELS["nncf"], "skipped": f"failed: {str(e).splitlines()[0]}"}
                    )
            rows.append({"variant": "torchao", "label": VARIANT_LABELS["torchao"], "skipped": "not expressible (see below)"})
        for r in rows:
            if "median_s" in r:
                log(f"  {r['label']}: {r['median_s']:.3f} s" + (f" (x{r['ratio']:.2f})" if "ratio" in r else ""))
        out["models"].append(
            {"name": name, "label": shown, "rows": rows, "steps": steps, "warmup": warmup, "threads": res["threads"]}
        )
    return out


def _rows(res: dict, fp32_suffix: str) -> list[dict]:
    v = res["variants"]
    fp = v["fp32"]
    rows = []
    for name, s in v.items():
        row = {"variant": name, "label": VARIANT_LABELS[name] + (fp32_suffix if name == "fp32" else ""), **s}
        if name != "fp32":
            row["ratio"] = s["median_s"] / fp["median_s"]
            if s.get("peak_mem_mib") and fp.get("peak_mem_mib"):
                row["mem_ratio"] = s["peak_mem_mib"] / fp["peak_mem_mib"]
        rows.append(row)
    return rows


def _training_section(preset: Preset, nncf: NncfEnv, results: dict, threads: int | None) -> None:
    results["training"] = run_training(preset, nncf, threads)


def _runs_section(preset: Preset, args, results: dict) -> None:
    from .runs import run_runs

    results["runs"] = run_runs(preset.runs, args.work_dir / "runs", log=log)


def _accuracy_section(preset: Preset, nncf: NncfEnv, args, results: dict, state: dict) -> None:
    from .accuracy import run_accuracy

    try:
        acc = run_accuracy(
            preset.accuracy, args.work_dir / "accuracy", nncf, args.data_dir, args.dataset_name, args.dataset_config_name, log=log
        )
    except FileNotFoundError as e:
        results["skipped_sections"]["accuracy"] = str(e)
        log(f"  skipped: {e}")
        return
    acc["model_label"] = "all-MiniLM-L6-v2" if preset.accuracy.model == "minilm" else "A tiny random BERT"
    results["accuracy"] = acc
    state["files"] = acc["files"]


def _inference_section(preset: Preset, args, results: dict, state: dict) -> None:
    from .inference import export_untrained, run_inference

    files = state["files"]
    source = "Files: the fine-tuned FP32 model, its hf_qat QAT INT8 export and ONNX Runtime's static INT8 of it (section 3)."
    if files is None:
        acc_cfg = preset.accuracy
        files = export_untrained(
            args.work_dir / "inference", model=acc_cfg.model, exporter=acc_cfg.exporter, **acc_cfg.model_overrides
        )
        source = (
            "Files: the untrained classifier, exported FP32, hf_qat INT8 (range init on random tokens) and ONNX "
            "Runtime static INT8."
        )
    inf = run_inference(files, tuple(preset.inference_batches), dict(preset.inference_repeats), preset.inference_seq_len, log=log)
    inf["source"] = source
    results["inference"] = inf


def _scaling_section(preset: Preset, results: dict) -> None:
    from .scaling import run_scaling

    results["scaling"] = run_scaling(preset.scaling, log=log)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent / "scaling.png")
    parser.add_argument("--work_dir", type=Path, default=DEFAULT_CACHE / "work", help="models, ONNX files, token batches")
    parser.add_argument("--nncf_venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--no_nncf_setup", action="store_true", help="do not create NNCF's environment if it is missing")
    parser.add_argument("--data_dir", default=None, help="folder with SST-2 train.tsv and test.tsv (default ../shared/data/sst2)")
    parser.add_argument("--dataset_name", default=None, help="hub dataset instead of --data_dir, e.g. glue")
    parser.add_argument("--dataset_config_name", default=None, help="e.g. sst2")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads for torch, ONNX Runtime and OpenVINO (default: each library's own, all "
        "cores); 1 keeps a machine shared with other jobs from stalling multi-threaded kernels",
    )
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="run nothing: write BENCHMARKS.md again from the last run's results.json in --work_dir (the report's "
        "wording changed, the numbers stay those of that run)",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        results = json.loads((args.work_dir / "results.json").read_text())
        write_report(results, args.output, args.plot, read_int4(args.work_dir))
        log(f"wrote {args.output} from {args.work_dir / 'results.json'} (run {results['meta']['started']})")
        return results
    sections = [s for s in args.sections.split(",") if s]
    if not sections or set(sections) - set(SECTIONS):
        parser.error(f"--sections: choose from {SECTIONS}")
    preset = PRESETS[args.preset]
    warnings.filterwarnings("ignore")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        set_threads(args.threads)

    started = time.perf_counter()
    load = LoadSampler()
    results: dict = {"skipped_sections": {}, "notes": []}
    nncf = NncfEnv(None, {}, "NNCF not needed by the selected sections")
    if {"training", "accuracy"} & set(sections):
        log(f"[nncf] environment {args.nncf_venv}")
        nncf = prepare_nncf_env(args.nncf_venv, create=not args.no_nncf_setup, log=log)
        log(f"  {'NNCF ' + nncf.version if nncf.python else 'NNCF skipped: ' + nncf.reason}")
    timings: dict[str, float] = {}
    state: dict = {"files": None}
    steps = {
        "training": lambda: _training_section(preset, nncf, results, args.threads),
        "runs": lambda: _runs_section(preset, args, results),
        "accuracy": lambda: _accuracy_section(preset, nncf, args, results, state),
        "inference": lambda: _inference_section(preset, args, results, state),
        "scaling": lambda: _scaling_section(preset, results),
    }
    for name in SECTIONS:
        if name not in sections:
            continue
        log(f"[{name}]")
        mark = time.perf_counter()
        try:
            steps[name]()
        except Exception as e:  # noqa: BLE001 - one failed section must not lose the others' numbers
            traceback.print_exc()
            results["skipped_sections"][name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        timings[name] = time.perf_counter() - mark

    argv_used = sys.argv[1:] if argv is None else argv
    results["meta"] = {
        "command": "python -m scripts.benchmarks" + "".join(" " + shlex.quote(a) for a in argv_used),
        "preset": preset.name,
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "wall_s": time.perf_counter() - started,
        "machine": machine(),
        "versions": versions(),
        "section_s": timings,
        "load_avg": load.stop(),
        "threads": args.threads,
    }
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_report(results, args.output, args.plot, read_int4(args.work_dir))
    log(f"wrote {args.output} ({results['meta']['wall_s'] / 60:.1f} min)")
    return results
