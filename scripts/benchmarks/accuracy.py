"""Section 3: SST-2 accuracy of every INT8 route, evaluated as deployed (ONNX in ONNX Runtime).

all-MiniLM-L6-v2 is fine-tuned in FP32 on SST-2 ``train.tsv`` (one full epoch in the ``full``
preset; the model is cached in the work folder, keyed by the data and the fine-tuning settings, so
a rerun starts from it); from that one model:

- FP32: the float ONNX export;
- PTQ (hf_qat range init only): ``create_compressed_model`` with calibration, no training;
- ONNX Runtime static quantization: ``quantize_static`` of the FP32 file (QDQ, per-channel int8
  weights, uint8 activations, MinMax calibration) on the same calibration sentences;
- NNCF PTQ and NNCF QAT (``nncf.quantize`` then training), in NNCF's own environment;
- hf_qat QAT: the PTQ model trained with the same steps, batches and learning rate as NNCF QAT,
  once per seed (the seed picks the batches and the dropout masks; seed 0 has NNCF's batches), so
  that the table shows the seed-to-seed spread.

NNCF's worker runs in its own process while hf_qat's seeds train here (the suite runs with one
intra-op thread, so the two share a 2-core machine without contending).

Accuracy is measured on ``test.tsv`` (872 sentences, GLUE's validation set). Token batches and
models go to the work folder outside the repository; nothing derived from the data is committed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import statistics
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
from .workers import WorkerError, start_worker

ROW_ORDER = ("fp32", "hf_qat_ptq", "ort_static", "nncf_ptq", "nncf_qat", "hf_qat_qat")


@dataclass
class AccuracyConfig:
    """Sizes of the accuracy run (see :mod:`.presets`)."""

    finetune_steps: int | None = None  # None: one epoch of train.tsv, shuffled
    finetune_lr: float = 5e-5
    qat_steps: int = 400
    qat_lr: float = 1e-5
    qat_seeds: tuple = (0, 1, 2)
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


def epoch_batches(tokenizer, split: TextSplit, batch_size: int, max_length: int, seed: int) -> list[dict]:
    """One epoch of ``split`` in a random order, ``batch_size`` rows per batch (the last partial batch
    dropped), each padded to its longest sentence (dynamic padding)."""
    order = np.random.default_rng(seed).permutation(len(split))
    out = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
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


def fp32_cache_key(cfg: AccuracyConfig, train_file_digest: str) -> str:
    """What the fine-tuned FP32 model depends on: the data, the model and the fine-tuning settings."""
    import transformers

    parts = {
        "data": train_file_digest,
        "model": cfg.model,
        "overrides": cfg.model_overrides,
        "steps": cfg.finetune_steps,
        "lr": cfg.finetune_lr,
        "batch_size": cfg.batch_size,
        "max_length": cfg.train_max_length,
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def fine_tuned_fp32(cfg: AccuracyConfig, work: Path, tokenizer, train: TextSplit, digest: str, log=print):
    """The FP32 model fine-tuned on ``train``: from the cache when a run with the same key made it,
    else trained now and cached (written to a temporary folder, then renamed).

    Returns ``(model, folder, info)`` with ``info = {"steps", "time_s", "threads", "cached"}``.
    """
    folder = work / "fp32_cache" / fp32_cache_key(cfg, digest)
    meta_file = folder / "finetune.json"
    if meta_file.exists():
        info = json.loads(meta_file.read_text())
        log(f"  FP32 model from the cache: {folder} ({info['steps']} steps, trained in {info['time_s']:.0f} s)")
        return build_model(str(folder)).eval(), folder, {**info, "cached": True}
    bs = cfg.batch_size
    if cfg.finetune_steps is None:
        batches = epoch_batches(tokenizer, train, bs, cfg.train_max_length, seed=0)
    else:
        batches = sample_batches(tokenizer, train, cfg.finetune_steps, bs, cfg.train_max_length, seed=0)
    torch.manual_seed(0)
    model = build_model(cfg.model, **cfg.model_overrides)
    log(f"  FP32 fine-tuning: {len(batches)} steps x {bs} (no cached model at {folder})")
    seconds = finetune(model, batches, cfg.finetune_lr, log)
    info = {"steps": len(batches), "time_s": seconds, "threads": torch.get_num_threads()}
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / "finetune.json").write_text(json.dumps(info))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    log(f"  FP32 fine-tuning: {len(batches)} steps in {seconds:.0f} s, cached at {folder}")
    return model.eval(), folder, {**info, "cached": False}


def split_digest(split: TextSplit) -> str:
    """A digest of the rows (sentence and label), whether they came from files or the hub."""
    h = hashlib.sha256()
    for sentence, label in zip(split.sentences, split.labels):
        h.update(f"{sentence}\t{label}\n".encode())
    return h.hexdigest()


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
    calibration = sample_batches(tokenizer, train, math.ceil(cfg.calibration_samples / bs), bs, cfg.train_max_length, seed=1)
    seeds = list(cfg.qat_seeds)
    # seed s trains on its own sampled batches; seed 0's are NNCF's too
    qat_batches = {
        seed: sample_batches(tokenizer, train, cfg.qat_steps, bs, cfg.train_max_length, seed=2 + seed) for seed in seeds
    }

    fp32, fp32_dir, ft = fine_tuned_fp32(cfg, work, tokenizer, train, split_digest(train), log)
    example = {k: v for k, v in calibration[0].items() if k != "labels"}
    files = {"fp32": export_onnx(fp32, work / "fp32.onnx", example, quantized=False, verify=False, exporter=cfg.exporter).path}
    rows = [
        {
            "method": "FP32 (fine-tuned)",
            "key": "fp32",
            "train": f"{ft['steps']} steps, lr {cfg.finetune_lr:g}",
            "time_s": ft["time_s"],
            "cached": ft["cached"],
            "threads": ft.get("threads"),
        }
    ]

    nncf_rows = [
        {"method": "NNCF PTQ (`nncf.quantize`)", "key": "nncf_ptq", "train": "-"},
        {
            "method": "NNCF QAT (`nncf.quantize` + training)",
            "key": "nncf_qat",
            "train": f"{cfg.qat_steps} steps, lr {cfg.qat_lr:g}, seed {seeds[0]}'s batches",
        },
    ]
    nncf_worker = None
    if nncf.python is None:
        for r in nncf_rows:
            r["skipped"] = nncf.reason
    else:  # NNCF trains in its own process while hf_qat's seeds train here
        torch.save({"calibration": calibration, "train": qat_batches[seeds[0]]}, work / "batches.pt")
        nncf_worker = start_worker(
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
            log=log,
        )

    try:
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

        seed_runs = []
        for seed in seeds:
            torch.manual_seed(seed)
            qat = copy.deepcopy(ptq)  # every seed starts from the same calibrated model
            optimizer = torch.optim.AdamW(qat.parameters(), lr=cfg.qat_lr)
            qat_s = train_loop(qat, qat_batches[seed], optimizer, log=log, what=f"hf_qat QAT seed {seed}")
            result = export_onnx(qat, work / f"hf_qat_qat_seed{seed}.onnx", example, verify=True, exporter=cfg.exporter)
            check = result.verification[0] if result.verification else ""
            log(f"  hf_qat QAT seed {seed}: {cfg.qat_steps} steps in {qat_s:.0f} s; {check}")
            seed_runs.append({"seed": seed, "path": result.path, "time_s": ptq_s + qat_s})
            del qat, optimizer
    except BaseException:
        if nncf_worker is not None:
            nncf_worker.kill()
        raise
    files["hf_qat_qat"] = seed_runs[0]["path"]

    if nncf_worker is not None:
        try:
            res = nncf_worker.result(timeout=3600)
            files["nncf_ptq"], files["nncf_qat"] = Path(res["ptq"]["onnx"]), Path(res["qat"]["onnx"])
            nncf_rows[0]["time_s"] = res["ptq"]["setup_s"]
            nncf_rows[1]["time_s"] = res["ptq"]["setup_s"] + res["qat"]["train_s"]
        except WorkerError as e:
            log(f"  NNCF worker failed: {e}")
            for r in nncf_rows:
                r["skipped"] = f"NNCF run failed: {str(e).splitlines()[0]}"
    rows.extend(nncf_rows)

    for run in seed_runs:
        run["accuracy"] = onnx_accuracy(run["path"], test_batches, labels)
    accs = [r["accuracy"] for r in seed_runs]
    rows.append(
        {
            "method": "hf_qat QAT",
            "key": "hf_qat_qat",
            "train": f"{cfg.qat_steps} steps, lr {cfg.qat_lr:g}, seeds {', '.join(map(str, seeds))}",
            "time_s": statistics.mean(r["time_s"] for r in seed_runs),
            "seeds": [{"seed": r["seed"], "accuracy": r["accuracy"]} for r in seed_runs],
            "spread_pt": 100 * (max(accs) - min(accs)),
            "accuracy_mean": statistics.mean(accs),
        }
    )
    rows.sort(key=lambda r: ROW_ORDER.index(r["key"]))

    for r in rows:
        path = files.get(r["key"])
        if path is None or "skipped" in r:
            continue
        r["accuracy"] = r["accuracy_mean"] if "seeds" in r else onnx_accuracy(path, test_batches, labels)
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
