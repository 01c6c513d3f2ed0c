"""Section 2: real runs. ``scripts/run_qat.py`` as a user starts it, evaluation of the fake-quantized
model, and the ONNX export.

- **run_qat.py**: the README's first command in a child process, twice, with a fresh compile cache
  (``TORCHINDUCTOR_CACHE_DIR``) the first time and the same cache the second time: wall time of
  each (start-up included), the phases the run records in ``qat_results.json`` (``timings_s``) and
  the Trainer's own optimizer-step times (``step_times_s``: dynamic padding, the run's batches). It
  runs with every core, as a user runs it (not the suite's ``--threads``).
- **evaluation and export** (worker :mod:`.eval_export`, the suite's threads): FP32 against the
  fake-quantized model on the same dynamically padded batches after a warm-up pass, with the
  graphs compiled during the timed pass counted; then ``export_onnx`` of the QAT model, timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import REPO_ROOT
from .workers import run_worker

#: what the suite's ``--threads`` sets; the run_qat children run without it, as a user runs them
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "HF_QAT_BENCH_THREADS")


@dataclass
class RunsConfig:
    """``run_qat_args``: extra arguments of run_qat.py (``[]``: the built-in default run, the README's
    first command); ``tiny_model``: run it on a tiny random BERT folder instead (smoke preset);
    ``eval_model``/``eval_overrides``: the model of the evaluation and export worker."""

    run_qat_args: list = field(default_factory=list)
    repeats: int = 2  # the first with an empty compile cache, the others with the cache the first filled
    tiny_model: bool = False
    eval_model: str = "minilm"
    eval_overrides: dict = field(default_factory=dict)
    eval_batches: int = 30
    eval_batch_size: int = 16
    eval_max_len: int = 128
    calibration_samples: int = 32


def _tiny_model_folder(path: Path) -> Path:
    """A tiny random BERT classifier with all-MiniLM-L6-v2's tokenizer (for the smoke preset)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from .common import minilm_path

    if not (path / "config.json").exists():
        config = BertConfig(
            vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, num_labels=2
        )
        BertForSequenceClassification(config).save_pretrained(path)
        AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return path


def run_qat_once(args: list[str], out_dir: Path, cache_dir: Path, log=print, timeout: float = 1800) -> dict:
    """``python scripts/run_qat.py <args> --output_dir out_dir`` with ``cache_dir`` as Inductor's cache;
    returns the wall time and the run's ``qat_results.json``."""
    cmd = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "run_qat.py"),
        *args,
        "--output_dir",
        str(out_dir),
        "--disable_tqdm",
        "true",
    ]
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_VARS}
    env.update(TORCHINDUCTOR_CACHE_DIR=str(cache_dir), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    log(f"  $ TORCHINDUCTOR_CACHE_DIR={cache_dir} python scripts/run_qat.py {' '.join(args + ['--output_dir', str(out_dir)])}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"run_qat.py failed (exit {proc.returncode}):\n{tail}")
    results = json.loads((out_dir / "qat_results.json").read_text())
    return {
        "wall_s": wall,
        "timings_s": results["timings_s"],
        "step_times_s": results["step_times_s"],
        "values": results["values"],
    }


def run_runs(cfg: RunsConfig, work: Path, log=print) -> dict:
    import shutil

    work.mkdir(parents=True, exist_ok=True)
    args = list(cfg.run_qat_args)
    if cfg.tiny_model:
        args = ["--model_name", str(_tiny_model_folder(work / "tiny_model")), *args]
    runs = []
    with tempfile.TemporaryDirectory(prefix="hf_qat_bench_inductor_") as cache:
        for i in range(cfg.repeats):
            out = work / f"run_qat_{i}"
            shutil.rmtree(out, ignore_errors=True)
            run = run_qat_once(args, out, Path(cache), log=log)
            run["compile_cache"] = "empty" if i == 0 else "warm"
            log(f"  run {i + 1} ({run['compile_cache']} compile cache): {run['wall_s']:.1f} s wall")
            runs.append(run)
    worker_args = [
        "--model",
        cfg.eval_model,
        "--batches",
        str(cfg.eval_batches),
        "--batch_size",
        str(cfg.eval_batch_size),
        "--max_len",
        str(cfg.eval_max_len),
        "--calibration_samples",
        str(cfg.calibration_samples),
        "--out_dir",
        str(work),
    ]
    if cfg.eval_overrides:
        worker_args += [
            "--layers",
            str(cfg.eval_overrides["num_hidden_layers"]),
            "--hidden",
            str(cfg.eval_overrides["hidden_size"]),
        ]
    evaluation = run_worker("eval_export", worker_args, log=log)
    return {
        "command": "python scripts/run_qat.py" + "".join(" " + a for a in cfg.run_qat_args),
        "tiny_model": cfg.tiny_model,
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "eval_export": evaluation,
    }
