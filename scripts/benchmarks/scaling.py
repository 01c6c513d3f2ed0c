"""Section 5: how FP32 and QAT step time and hf_qat's calibration time grow with the number of
layers, the hidden size and the sequence length (BERT configs, random weights, MiniLM's shape
as the centre point). Each point times FP32 and QAT steps in turns (:func:`.training_cost.measure`);
calibration time is ``create_compressed_model`` with range init on the calibration samples.
"""

from __future__ import annotations

from dataclasses import dataclass

from .training_cost import measure


@dataclass
class ScalingConfig:
    layers: tuple[int, ...] = (2, 6, 12)
    hidden: tuple[int, ...] = (256, 384, 768)
    seq_len: tuple[int, ...] = (64, 128, 256)
    base_layers: int = 6
    base_hidden: int = 384
    base_seq_len: int = 128
    batch_size: int = 16
    steps: int = 2
    warmup: int = 1
    calibration_samples: int = 32


def _point(cfg: ScalingConfig, layers: int, hidden: int, seq_len: int) -> dict:
    r = measure(
        "bert",
        ["fp32", "hf_qat"],
        cfg.batch_size,
        seq_len,
        cfg.steps,
        cfg.warmup,
        cfg.calibration_samples,
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_attention_heads=max(1, hidden // 32),
    )
    v = r["variants"]
    return {
        "layers": layers,
        "hidden": hidden,
        "seq_len": seq_len,
        "parameters_m": r["parameters_m"],
        "fp32_s": v["fp32"]["median_s"],
        "qat_s": v["hf_qat"]["median_s"],
        "ratio": v["hf_qat"]["median_s"] / v["fp32"]["median_s"],
        "calibration_s": v["hf_qat"]["setup_s"],
    }


def run_scaling(cfg: ScalingConfig, log=print) -> dict:
    """One point per distinct (layers, hidden, seq_len); returns the points and the three sweeps."""
    sweeps = {
        "layers": [(n, cfg.base_hidden, cfg.base_seq_len) for n in cfg.layers],
        "hidden": [(cfg.base_layers, h, cfg.base_seq_len) for h in cfg.hidden],
        "seq_len": [(cfg.base_layers, cfg.base_hidden, s) for s in cfg.seq_len],
    }
    points: dict[tuple[int, int, int], dict] = {}
    for key in dict.fromkeys(k for ks in sweeps.values() for k in ks):
        points[key] = _point(cfg, *key)
        p = points[key]
        log(
            f"  layers {key[0]}, hidden {key[1]}, seq {key[2]}: FP32 {p['fp32_s']:.3f} s, QAT {p['qat_s']:.3f} s "
            f"(x{p['ratio']:.2f}), calibration {p['calibration_s']:.1f} s"
        )
    return {
        "batch_size": cfg.batch_size,
        "calibration_samples": cfg.calibration_samples,
        "base": {"layers": cfg.base_layers, "hidden": cfg.base_hidden, "seq_len": cfg.base_seq_len},
        "sweeps": {name: [points[k] for k in keys] for name, keys in sweeps.items()},
    }
