"""Section 1 worker: optimizer-step time and peak memory of QAT variants against FP32, side by side.

Runs in a fresh process per model (the orchestrator starts it; NNCF's variant runs under NNCF's
own virtual environment), so that memory numbers are not polluted by earlier work::

    python -m scripts.benchmarks.training_cost --model minilm --variants fp32,hf_qat,torch_ao --json out.json

Every variant is a copy of the same model, trained with AdamW on the same random batches; the
variants take turns step by step and the median of ``--steps`` steps after ``--warmup`` is kept.
Each variant's ratio is taken against the FP32 copy timed in the same process.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
import warnings
from collections.abc import Callable

import torch

from .common import bert_overrides, build_model, random_batches, time_alternating, train_step

VARIANTS = ("fp32", "hf_qat", "hf_qat_linear", "torch_ao", "nncf")

#: hf_qat with torch.ao eager mode's coverage: Linear layers only (no attention products, no embeddings)
LINEAR_ONLY_SCOPES = ["{re}.*matmul_\\d+$", "{re}.*NNCFEmbedding\\[.*"]


def prepare_hf_qat(
    model: torch.nn.Module, calibration: list[dict], num_samples: int, ignored_scopes: list[str] | None = None
) -> torch.nn.Module:
    """hf_qat's default 8-bit QAT (NNCF legacy defaults), range init on ``num_samples`` samples."""
    from hf_qat import NNCFConfig, create_compressed_model, register_default_init_args

    compression = {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": num_samples}}}
    if ignored_scopes:
        compression["ignored_scopes"] = ignored_scopes
    config = NNCFConfig.from_dict({"compression": compression})
    config = register_default_init_args(config, [{k: v for k, v in b.items() if k != "labels"} for b in calibration])
    ctrl, model = create_compressed_model(model, config)
    model._bench_quantizers = (len(ctrl.weight_quantizers), len(ctrl.activation_quantizers))
    return model


def prepare_hf_qat_linear(model: torch.nn.Module, calibration: list[dict], num_samples: int) -> torch.nn.Module:
    """hf_qat restricted to torch.ao eager mode's coverage: weights and inputs of Linear layers only."""
    return prepare_hf_qat(model, calibration, num_samples, LINEAR_ONLY_SCOPES)


def prepare_torch_ao(model: torch.nn.Module, calibration: list[dict], num_samples: int) -> torch.nn.Module:
    """torch.ao eager QAT on every ``nn.Linear``: the x86 default QAT qconfig (fused observer +
    fake-quant kernels: per-channel int8 weights, per-tensor uint8 activations on the layer outputs).

    Eager mode cannot quantize the attention products or embeddings; observers are calibrated on
    the calibration batches first so that the timed steps start from initialised ranges.
    """
    from torch.ao import quantization as tq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qconfig = tq.get_default_qat_qconfig("x86")
        for module in model.modules():
            if type(module) is torch.nn.Linear:
                module.qconfig = qconfig
        tq.prepare_qat(model, inplace=True)
    with torch.no_grad():
        seen = 0
        for b in calibration:
            if seen >= num_samples:
                break
            model(**{k: v for k, v in b.items() if k != "labels"})
            seen += b["input_ids"].shape[0]
    return model


def prepare_nncf(model: torch.nn.Module, calibration: list[dict], num_samples: int) -> torch.nn.Module:
    """NNCF 3.x: ``nncf.quantize(model_type=TRANSFORMER)``, then the returned model is trained."""
    import nncf

    data = nncf.Dataset([{k: v for k, v in b.items() if k != "labels"} for b in calibration])
    return nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=num_samples)


PREPARE: dict[str, Callable] = {
    "hf_qat": prepare_hf_qat,
    "hf_qat_linear": prepare_hf_qat_linear,
    "torch_ao": prepare_torch_ao,
    "nncf": prepare_nncf,
}


def measure(
    model_name: str,
    variants: list[str],
    batch_size: int,
    seq_len: int,
    steps: int,
    warmup: int,
    calibration_samples: int,
    **model_overrides,
) -> dict:
    """Build every variant from one model, time them in turns; returns a JSON-able result."""
    torch.manual_seed(0)
    base = build_model(model_name, **model_overrides).train()
    vocab = base.config.vocab_size
    batches = random_batches(4, batch_size, seq_len, vocab)
    calibration = random_batches(max(1, -(-calibration_samples // batch_size)), batch_size, seq_len, vocab, seed=1)
    models, setup_s = {}, {}
    for v in variants:
        m = copy.deepcopy(base)
        t0 = time.perf_counter()
        models[v] = m if v == "fp32" else PREPARE[v](m, calibration, calibration_samples)
        models[v].train()
        setup_s[v] = time.perf_counter() - t0
    del base
    optimizers = {v: torch.optim.AdamW(m.parameters(), lr=1e-5) for v, m in models.items()}
    fns = {v: (lambda i, v=v: train_step(models[v], optimizers[v], batches[i % len(batches)])) for v in variants}
    stats = time_alternating(fns, steps, warmup)
    result = {
        "model": model_name,
        "overrides": model_overrides,
        "parameters_m": sum(p.numel() for p in models[variants[0]].parameters()) / 1e6,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "variants": {v: {**stats[v].to_dict(), "setup_s": setup_s[v]} for v in variants},
    }
    for v in variants:
        counts = getattr(models[v], "_bench_quantizers", None)
        if counts is not None:
            result["variants"][v]["quantizers"] = {"weights": counts[0], "activations": counts[1]}
    if "nncf" in variants:
        import nncf

        result["nncf"] = nncf.__version__
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", help="minilm, bert-base, or bert (with --layers/--hidden)")
    parser.add_argument("--variants", default="fp32,hf_qat", help=f"comma-separated, from {VARIANTS}")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--calibration_samples", type=int, default=32)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--json", required=True, help="where to write the result")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        parser.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    overrides = bert_overrides(args.layers, args.hidden)
    result = measure(
        args.model, variants, args.batch_size, args.seq_len, args.steps, args.warmup, args.calibration_samples, **overrides
    )
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
