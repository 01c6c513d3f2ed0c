"""Section 2: SST-2 accuracy of every INT8 route, evaluated as deployed (ONNX in ONNX Runtime).

all-MiniLM-L6-v2 is fine-tuned in FP32 on SST-2 ``train.tsv``; from that one model:

- FP32: the float ONNX export;
- PTQ (hf_qat range init only): ``create_compressed_model`` with calibration, no training;
- ONNX Runtime static quantization: ``quantize_static`` of the FP32 file (QDQ, per-channel int8
  weights, uint8 activations, MinMax calibration) on the same calibration sentences;
- NNCF PTQ and NNCF QAT (``nncf.quantize`` then training), in NNCF's own environment;
- hf_qat QAT: the PTQ model trained with the same steps, batches and learning rate as NNCF QAT.

Accuracy is measured on ``test.tsv`` (872 sentences, GLUE's validation set). Token batches and
models go to the work folder outside the repository; nothing derived from the data is committed.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .common import (
    TextSplit,
    build_model,
    encode,
    load_sst2,
    minilm_path,
    runtime_threads,
    train_step,
)
from .nncf_env import NncfEnv
from .workers import WorkerError, run_worker

ROW_ORDER = ("fp32", "hf_qat_ptq", "ort_static", "nncf_ptq", "nncf_qat", "hf_qat_qat")


@dataclass
class AccuracyConfig:
    """Sizes of the accuracy run (see :mod:`.presets`)."""

    finetune_steps: int = 250
    finetune_lr: float = 5e-5
    qat_steps: int = 100
    qat_lr: float = 1e-5
    batch_size: int = 32
    calibration_samples: int = 256
    train_max_length: int = 32  # SST-2 training rows are phrases: few are longer
    eval_max_length: int = 128
    model: str = "minilm"
    model_overrides: dict = field(default_factory=dict)
    exporter: str = "auto"  # hf_qat's export_onnx exporter; the smoke preset uses the faster "torchscript"


def sample_batches(tokenizer, split: TextSplit, n_batches: int, batch_size: int, max_length: int, seed: int) -> list[dict]:
    """``n_batches`` random batches (with labels), padded to their longest sentence."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        idx = rng.choice(len(split), batch_size, replace=False)
        b = encode(tokenizer, [split.sentences[i] for i in idx], max_length)
        b["labels"] = torch.tensor([split.labels[i] for i in idx])
        out.append(b)
    return out


def train_loop(model: torch.nn.Module, batches: list[dict], optimizer, scheduler=None, log=print, what: str = "") -> float:
    """One optimizer step per batch (progress logged every 100 steps); returns the wall time."""
    model.train()
    t0 = time.perf_counter()
    for i, b in enumerate(batches, 1):
        train_step(model, optimizer, b)
        if scheduler is not None:
            scheduler.step()
        if i % 100 == 0:
            log(f"    {what} step {i}/{len(batches)}, {time.perf_counter() - t0:.0f} s")
    model.eval()
    return time.perf_counter() - t0


def finetune(model: torch.nn.Module, batches: list[dict], lr: float, log=print) -> float:
    """AdamW with 10% linear warm-up then linear decay; returns the wall time."""
    warm = max(1, len(batches) // 10)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (len(batches) - s) / max(1, len(batches) - warm)))
    )
    return train_loop(model, batches, opt, sched, log, "FP32 fine-tuning")


def onnx_accuracy(path: Path, test_batches: list[dict], labels: np.ndarray, runtime: str = "onnxruntime") -> float:
    """Top-1 accuracy of an ONNX classifier in ``runtime``."""
    from hf_qat.onnx import OnnxRunner

    runner = OnnxRunner(path, runtime, num_threads=runtime_threads())
    preds = [runner({n: b[n].numpy() for n in runner.input_names})[runner.output_names[0]].argmax(-1) for b in test_batches]
    return float(np.mean(np.concatenate(preds) == labels))


def ort_static_quantize(fp32_path: Path, out_path: Path, calibration: list[dict]) -> Path:
    """ONNX Runtime's own static INT8: QDQ, per-channel int8 weights, uint8 activations, MinMax."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    names = [i.name for i in onnx.load(str(fp32_path), load_external_data=False).graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{n: b[n].numpy() for n in names} for b in calibration])

        def get_next(self):
            return next(self._it, None)

    quantize_static(
        str(fp32_path),
        str(out_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out_path


def hf_qat_compress(model: torch.nn.Module, calibration: list[dict], num_samples: int):
    """hf_qat's default 8-bit config with range init on ``num_samples`` calibration samples."""
    from hf_qat import NNCFConfig, create_compressed_model, register_default_init_args

    config = NNCFConfig.from_dict(
        {"compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": num_samples}}}}
    )
    config = register_default_init_args(config, [{k: v for k, v in b.items() if k != "labels"} for b in calibration])
    return create_compressed_model(model, config)


def run_accuracy(
    cfg: AccuracyConfig,
    work: Path,
    nncf: NncfEnv,
    data_dir: str | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    log=print,
) -> dict:
    """Run every route; returns ``{"rows": [...], "files": {...}, ...}`` for the report."""
    from transformers import AutoTokenizer

    from hf_qat import export_onnx

    work.mkdir(parents=True, exist_ok=True)
    train, test = load_sst2(data_dir, dataset_name, dataset_config_name)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    log(f"  SST-2: {len(train)} training rows, {len(test)} test sentences")
    labels = np.array(test.labels)
    test_batches = [encode(tokenizer, test.sentences[i : i + 64], cfg.eval_max_length) for i in range(0, len(test), 64)]
    bs = cfg.batch_size
    ft_batches = sample_batches(tokenizer, train, cfg.finetune_steps, bs, cfg.train_max_length, seed=0)
    calibration = sample_batches(tokenizer, train, math.ceil(cfg.calibration_samples / bs), bs, cfg.train_max_length, seed=1)
    qat_batches = sample_batches(tokenizer, train, cfg.qat_steps, bs, cfg.train_max_length, seed=2)

    torch.manual_seed(0)
    fp32 = build_model(cfg.model, **cfg.model_overrides)
    ft_s = finetune(fp32, ft_batches, cfg.finetune_lr, log)
    log(f"  FP32 fine-tuning: {cfg.finetune_steps} steps x {bs} in {ft_s:.0f} s")
    fp32_dir = work / "fp32_model"
    fp32.save_pretrained(fp32_dir)
    example = {k: v for k, v in calibration[0].items() if k != "labels"}
    files = {"fp32": export_onnx(fp32, work / "fp32.onnx", example, quantized=False, verify=False, exporter=cfg.exporter).path}
    rows = [
        {
            "method": "FP32 (fine-tuned)",
            "key": "fp32",
            "train": f"{cfg.finetune_steps} steps, lr {cfg.finetune_lr:g}",
            "time_s": ft_s,
        }
    ]

    t0 = time.perf_counter()
    files["ort_static"] = ort_static_quantize(files["fp32"], work / "ort_static_int8.onnx", calibration)
    rows.append(
        {"method": "ONNX Runtime static INT8 (PTQ)", "key": "ort_static", "train": "-", "time_s": time.perf_counter() - t0}
    )

    t0 = time.perf_counter()
    _, ptq = hf_qat_compress(copy.deepcopy(fp32), calibration, cfg.calibration_samples)
    ptq_s = time.perf_counter() - t0
    files["hf_qat_ptq"] = export_onnx(ptq, work / "hf_qat_ptq.onnx", example, verify=False, exporter=cfg.exporter).path
    rows.append({"method": "hf_qat PTQ (range init only)", "key": "hf_qat_ptq", "train": "-", "time_s": ptq_s})

    qat = ptq  # the same calibrated model, now trained
    optimizer = torch.optim.AdamW(qat.parameters(), lr=cfg.qat_lr)
    qat_s = train_loop(qat, qat_batches, optimizer, log=log, what="hf_qat QAT")
    result = export_onnx(qat, work / "hf_qat_qat.onnx", example, verify=True, exporter=cfg.exporter)
    files["hf_qat_qat"] = result.path
    log(f"  hf_qat QAT: {cfg.qat_steps} steps in {qat_s:.0f} s; {result.verification[0] if result.verification else ''}")
    rows.append(
        {
            "method": "hf_qat QAT",
            "key": "hf_qat_qat",
            "train": f"{cfg.qat_steps} steps, lr {cfg.qat_lr:g}",
            "time_s": ptq_s + qat_s,
        }
    )

    nncf_rows = [
        {"method": "NNCF PTQ (`nncf.quantize`)", "key": "nncf_ptq", "train": "-"},
        {
            "method": "NNCF QAT (`nncf.quantize` + training)",
            "key": "nncf_qat",
            "train": f"{cfg.qat_steps} steps, lr {cfg.qat_lr:g}",
        },
    ]
    if nncf.python is None:
        for r in nncf_rows:
            r["skipped"] = nncf.reason
    else:
        torch.save({"calibration": calibration, "train": qat_batches}, work / "batches.pt")
        try:
            res = run_worker(
                "nncf_qat",
                [
                    "--model_dir",
                    str(fp32_dir),
                    "--batches",
                    str(work / "batches.pt"),
                    "--calibration_samples",
                    str(cfg.calibration_samples),
                    "--lr",
                    str(cfg.qat_lr),
                    "--out_dir",
                    str(work),
                ],
                python=nncf.python,
                env=nncf.env,
                timeout=3600,
                log=log,
            )
            files["nncf_ptq"], files["nncf_qat"] = Path(res["ptq"]["onnx"]), Path(res["qat"]["onnx"])
            nncf_rows[0]["time_s"] = res["ptq"]["setup_s"]
            nncf_rows[1]["time_s"] = res["ptq"]["setup_s"] + res["qat"]["train_s"]
        except WorkerError as e:
            log(f"  NNCF worker failed: {e}")
            for r in nncf_rows:
                r["skipped"] = f"NNCF run failed: {str(e).splitlines()[0]}"
    rows.extend(nncf_rows)
    rows.sort(key=lambda r: ROW_ORDER.index(r["key"]))

    for r in rows:
        path = files.get(r["key"])
        if path is None or "skipped" in r:
            continue
        r["accuracy"] = onnx_accuracy(path, test_batches, labels)
        r["size_mib"] = Path(path).stat().st_size / 2**20
    fp32_acc = rows[0]["accuracy"]
    for r in rows:
        if "accuracy" in r:
            r["delta_pt"] = 100 * (r["accuracy"] - fp32_acc)
    return {
        "rows": rows,
        "files": {k: str(v) for k, v in files.items()},
        "test_size": len(test),
        "train_size": len(train),
        "config": {k: v for k, v in cfg.__dict__.items()},
        "nncf_version": nncf.version,
    }
