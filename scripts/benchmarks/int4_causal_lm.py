"""4-bit group-wise causal LM: FP32 against 4-bit PTQ and QAT, perplexity, file sizes, tokens per second.

    python -m scripts.benchmarks.int4_causal_lm --data_dir ../shared/data/sst2 --threads 1

A small GPT-2 (4 blocks of width 128, a 1024-token byte-level BPE vocabulary trained on the same text) is trained
from scratch in FP32 on the SST-2 training phrases, then quantized with the repository's 4-bit preset
(``scripts/configs/causal_lm_int4.json``: INT4 weights in groups of 32, embeddings and ``lm_head`` INT8 per channel,
weight-only) three ways: round-to-nearest (``min_max`` ranges: each group's absolute maximum), hf_qat's default
range initialisation (``percentile``), and QAT from the round-to-nearest model. Perplexity is per predicted token on
the 872 held-out SST-2 test sentences. The INT4 model is exported (ONNX opset 21, then OpenVINO IR) and timed in
both runtimes on full 64-token sequences, beside the FP32 ONNX file.

Results go to ``<work_dir>/int4_results.json``; BENCHMARKS.md is then written again with them as its section 6
(the other sections come from the suite's last ``results.json``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .common import REPO_ROOT, read_tsv
from .nncf_env import DEFAULT_CACHE
from .run import set_threads

PRESET = REPO_ROOT / "scripts" / "configs" / "causal_lm_int4.json"
SEQ = 64
VOCAB = 1024


def log(message: str) -> None:
    print(message, flush=True)


def tokenize(train_text: list[str], eval_text: list[str]):
    """A byte-level BPE tokenizer trained on the training text; both splits as one token stream each (EOS between
    sentences)."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(train_text, vocab_size=VOCAB, min_frequency=2, special_tokens=["<eos>"], show_progress=False)
    eos = tok.token_to_id("<eos>")

    def stream(text: list[str]) -> torch.Tensor:
        ids: list[int] = []
        for enc in tok.encode_batch(text):
            ids.extend(enc.ids)
            ids.append(eos)
        return torch.tensor(ids)

    return stream(train_text), stream(eval_text), tok.get_vocab_size()


def blocks(stream: torch.Tensor) -> torch.Tensor:
    n = stream.numel() // SEQ
    return stream[: n * SEQ].view(n, SEQ)


def perplexity(model: torch.nn.Module, data: torch.Tensor, batch: int = 64) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(data), batch):
            x = data[i : i + batch]
            logits = model(input_ids=x).logits[:, :-1]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
            total += float(loss)
            count += x[:, 1:].numel()
    return math.exp(total / count)


def train(model, data, steps: int, lr: float, batch: int, seed: int, teacher=None, kd_weight: float = 0.0) -> float:
    """AdamW with linear warm-up and decay; returns seconds. With ``teacher``: ``(1-w) * LM + w * KL(teacher)``."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / (steps - warm))))
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        x = data[torch.randint(len(data), (batch,), generator=g)]
        logits = model(input_ids=x).logits[:, :-1]
        flat = logits.reshape(-1, logits.shape[-1])
        loss = F.cross_entropy(flat, x[:, 1:].reshape(-1))
        if teacher is not None and kd_weight > 0:
            with torch.no_grad():
                t = teacher(input_ids=x).logits[:, :-1].reshape(-1, logits.shape[-1])
            kd = F.kl_div(F.log_softmax(flat, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
            loss = (1 - kd_weight) * loss + kd_weight * kd
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 200 == 0 or step == steps - 1:
            log(f"    step {step}/{steps}: loss {loss.item():.3f}")
    return time.perf_counter() - started


def compress(fp32, calibration: torch.Tensor, range_type: str):
    from hf_qat import NNCFConfig, create_compressed_model, register_default_init_args

    config = json.loads(PRESET.read_text())
    config["compression"]["initializer"]["range"]["type"] = range_type
    batches = [{"input_ids": calibration[i : i + 8]} for i in range(0, len(calibration), 8)]
    config = register_default_init_args(NNCFConfig.from_dict(config), batches)
    return create_compressed_model(copy.deepcopy(fp32), config)


def tokens_per_second(path: Path, runtime: str, threads: int | None, reps: int, vocab: int) -> float:
    from hf_qat.onnx import OnnxRunner

    runner = OnnxRunner(path, runtime, num_threads=threads)
    x = {"input_ids": np.arange(SEQ, dtype=np.int64)[None] % vocab}
    extra = {n: np.ones((1, SEQ), dtype=np.int64) for n in runner.input_names if n != "input_ids"}
    feed = {**x, **extra}
    for _ in range(3):
        runner(feed)
    started = time.perf_counter()
    for _ in range(reps):
        runner(feed)
    return reps * SEQ / (time.perf_counter() - started)


def file_mib(path: Path) -> float:
    size = path.stat().st_size
    data = path.with_suffix(".bin")
    if path.suffix == ".xml" and data.exists():
        size += data.stat().st_size
    return size / 2**20


def run(args) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_qat.onnx import convert_to_openvino
    from hf_qat.torch.export import export_onnx

    train_split = read_tsv(Path(args.data_dir) / "train.tsv")
    test_split = read_tsv(Path(args.data_dir) / "test.tsv")
    train_stream, eval_stream, vocab = tokenize(list(train_split.sentences), list(test_split.sentences))
    train_blocks, eval_blocks = blocks(train_stream), blocks(eval_stream)
    log(f"  corpus: {train_stream.numel()} training tokens ({len(train_blocks)} blocks of {SEQ}), {eval_stream.numel()} held-out")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_embd=128, n_layer=4, n_head=4, n_positions=SEQ, bos_token_id=0, eos_token_id=0)
    fp32 = GPT2LMHeadModel(config)
    params = sum(p.numel() for p in fp32.parameters())
    log(f"[fp32] training from scratch: {params / 1e6:.2f} M parameters, {args.fp32_steps} steps")
    fp32_s = train(fp32, train_blocks, args.fp32_steps, 3e-3, 32, seed=0)
    fp32.eval()
    results: dict = {"parameters": params, "train_tokens": int(train_stream.numel()), "eval_tokens": int(eval_stream.numel())}
    results["perplexity"] = {"fp32": perplexity(fp32, eval_blocks)}
    results["seconds"] = {"fp32_training": fp32_s}
    log(f"  FP32 perplexity {results['perplexity']['fp32']:.2f}")

    calibration = train_blocks[:64]
    for name, range_type in (("ptq_rtn", "min_max"), ("ptq_hf_qat_init", "percentile")):
        _, model = compress(fp32, calibration, range_type)
        results["perplexity"][name] = perplexity(model, eval_blocks)
        log(f"  {name} ({range_type}) perplexity {results['perplexity'][name]:.2f}")

    ctrl, qat = compress(fp32, calibration, "min_max")
    log(f"[qat] {args.qat_steps} steps from the round-to-nearest model, lr {args.qat_lr}, distillation {args.kd_weight}")
    results["seconds"]["qat_training"] = train(
        qat, train_blocks, args.qat_steps, args.qat_lr, 32, seed=1, teacher=fp32, kd_weight=args.kd_weight
    )
    qat.eval()
    results["perplexity"]["qat"] = perplexity(qat, eval_blocks)
    log(f"  QAT perplexity {results['perplexity']['qat']:.2f}")
    p = results["perplexity"]
    gap = p["ptq_rtn"] - p["fp32"]
    results["gap_closed"] = (p["ptq_rtn"] - p["qat"]) / gap if gap > 0 else None
    results["settings"] = {
        "fp32_steps": args.fp32_steps,
        "qat_steps": args.qat_steps,
        "qat_lr": args.qat_lr,
        "kd_weight": args.kd_weight,
        "batch": 32,
        "sequence": SEQ,
        "vocab": vocab,
        "preset": str(PRESET.relative_to(REPO_ROOT)),
    }

    with tempfile.TemporaryDirectory(prefix="hf_qat_int4_") as tmp:
        tmp = Path(tmp)
        example = {"input_ids": eval_blocks[:2]}
        fp32_onnx = export_onnx(fp32, tmp / "fp32" / "model.onnx", example, verify=False)
        int4 = export_onnx(qat, tmp / "int4" / "model.onnx", example, opset=21)
        ir = convert_to_openvino(int4.path, inputs=int4.inputs)
        results["files_mib"] = {
            "fp32_onnx": file_mib(fp32_onnx.path),
            "int4_onnx": file_mib(int4.path),
            "int4_openvino_ir": file_mib(ir.xml_path),
        }
        results["onnx"] = {
            "int4_initializers": len(int4.summary.int4_initializers),
            "int8_initializers": len(int4.summary.int8_initializers),
            "onnxruntime_ops": int4.onnxruntime_ops,
            "verified": all(r.ok for r in int4.verification),
            "openvino_constant_types": dict(ir.constant_types),
            "openvino_ok": ir.ok,
        }
        results["tokens_per_second"] = {
            "fp32_onnxruntime": tokens_per_second(fp32_onnx.path, "onnxruntime", args.threads, args.reps, vocab),
            "int4_onnxruntime": tokens_per_second(int4.path, "onnxruntime", args.threads, args.reps, vocab),
            "fp32_openvino": tokens_per_second(fp32_onnx.path, "openvino", args.threads, args.reps, vocab),
            "int4_openvino": tokens_per_second(int4.path, "openvino", args.threads, args.reps, vocab),
        }
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmarks.int4_causal_lm", description=__doc__)
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared" / "data" / "sst2"))
    parser.add_argument("--work_dir", type=Path, default=DEFAULT_CACHE / "work")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fp32_steps", type=int, default=3000)
    parser.add_argument("--qat_steps", type=int, default=600)
    parser.add_argument("--qat_lr", type=float, default=3e-4)
    parser.add_argument("--kd_weight", type=float, default=0.5, help="distillation from the FP32 model (0: LM loss only)")
    parser.add_argument("--reps", type=int, default=50, help="timed forward passes per file and runtime")
    args = parser.parse_args(argv)
    if args.threads is not None:
        set_threads(args.threads)
    started = time.perf_counter()
    results = run(args)
    results["meta"] = {
        "command": "python -m scripts.benchmarks.int4_causal_lm "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "wall_s": time.perf_counter() - started,
        "started": time.strftime("%Y-%m-%d %H:%M"),
        "threads": args.threads,
    }
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / "int4_results.json").write_text(json.dumps(results, indent=2))
    log(json.dumps({k: results[k] for k in ("perplexity", "gap_closed", "files_mib", "tokens_per_second")}, indent=2))
    main_results = args.work_dir / "results.json"
    if main_results.is_file():
        from .report import write_report

        write_report(json.loads(main_results.read_text()), args.output, Path(__file__).resolve().parent / "scaling.png", results)
        log(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
