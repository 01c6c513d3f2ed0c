"""The NNCF config hf_qat uses when none is given, for both backends."""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_NUM_INIT_SAMPLES", "default_nncf_config"]

#: Calibration samples of the default config (``initializer.range.num_init_samples``).
DEFAULT_NUM_INIT_SAMPLES = 128


def default_nncf_config(num_init_samples: int = DEFAULT_NUM_INIT_SAMPLES) -> dict[str, Any]:
    """8-bit QAT as in NNCF's transformers configs: symmetric, per-channel weights, per-tensor
    activations, percentile range initialisation (0.01 / 99.99), no batch-norm adaptation.

    Returns a new ``dict`` each call (``NNCFConfig.from_dict`` validates it); ``input_info`` is left
    out because trainers register calibration data.
    """
    return {
        "compression": {
            "algorithm": "quantization",
            "initializer": {
                "range": {
                    "num_init_samples": int(num_init_samples),
                    "type": "percentile",
                    "params": {"min_percentile": 0.01, "max_percentile": 99.99},
                },
                "batchnorm_adaptation": {"num_bn_adaptation_samples": 0},
            },
        }
    }
