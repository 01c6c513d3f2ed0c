"""Section 2 worker: evaluation time of the fake-quantized PyTorch model against FP32, and the ONNX export.

In a fresh process::

    python -m scripts.benchmarks.eval_export --model minilm --batches 30 --out_dir DIR --json out.json

1. FP32 and hf_qat's default 8-bit QAT model (range init on ``--calibration_samples``) evaluate
   the same ``--batches`` batches of random sequence lengths (dynamic padding, as a Trainer's
   evaluation loop sees them), once untimed (warm-up: kernels compile), then timed, taking turns
   batch by batch. The graphs torch.compile builds during the timed pass are counted: a new
   sequence length must not compile anything.
2. ``export_onnx`` of the QAT model (int8 QDQ file plus hf_qat's verification in ONNX Runtime),
   timed end to end: the first export of the process (what a run pays: the exporter's own
   start-up included), then a second one.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .common import bert_overrides, build_model, random_batches
from .training_cost import prepare_hf_qat


def varied_batches(n: int, batch_size: int, max_len: int, vocab: int, seed: int = 0) -> list[dict]:
    """``n`` batches whose lengths are drawn from ``[8, max_len]``, each padded to its own length."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        seq = int(rng.integers(8, max_len + 1))
        b = random_batches(1, batch_size, seq, vocab, seed=seed + i, labels=False)[0]
        out.append(b)
    return out


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_len", type=int, default=128)
    parser.add_argument("--calibration_samples", type=int, default=32)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    overrides = bert_overrides(args.layers, args.hidden)

    from hf_qat import export_onnx

    torch.manual_seed(0)
    fp32 = build_model(args.model, **overrides).eval()
    vocab = fp32.config.vocab_size
    calibration = random_batches(max(1, -(-args.calibration_samples // args.batch_size)), args.batch_size, 64, vocab, seed=99)
    qat = prepare_hf_qat(copy.deepcopy(fp32), calibration, args.calibration_samples).eval()
    batches = varied_batches(args.batches, args.batch_size, args.max_len, vocab)
    models = {"fp32": fp32, "qat": qat}

    graphs_start = _graphs()
    with torch.no_grad():
        t0 = time.perf_counter()
        for b in batches:
            qat(**b)
        first_pass_qat = time.perf_counter() - t0
        for b in batches:
            fp32(**b)
        graphs_warm = _graphs()
        times = {k: 0.0 for k in models}
        for b in batches:
            for k, m in models.items():
                t0 = time.perf_counter()
                m(**b)
                times[k] += time.perf_counter() - t0
    graphs_timed = _graphs() - graphs_warm

    out = Path(args.out_dir)
    example = {k: v[:1] for k, v in batches[0].items()}
    t0 = time.perf_counter()
    result = export_onnx(qat, out / "eval_export_qat.onnx", example)
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    export_onnx(qat, out / "eval_export_qat_again.onnx", example)
    export_again_s = time.perf_counter() - t0
    res = {
        "model": args.model,
        "threads": torch.get_num_threads(),
        "batches": args.batches,
        "batch_size": args.batch_size,
        "lengths": [int(b["input_ids"].shape[1]) for b in batches],
        "eval_s": times,
        "eval_ratio": times["qat"] / times["fp32"],
        "first_pass_qat_s": first_pass_qat,
        "graphs_warmup": graphs_warm - graphs_start,
        "graphs_timed": graphs_timed,
        "export_s": export_s,
        "export_again_s": export_again_s,
        "onnx_mib": result.file_size / 2**20,
        "verification": str(result.verification[0]) if result.verification else None,
    }
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
