"""Integrations with the Hugging Face stack: Trainer, transformers quantizer, hub, metrics, model cards.

Submodules are imported on first use (``transformers.Trainer`` alone takes seconds to import).
"""

from __future__ import annotations

import importlib

from .quantization_config import COMPRESSION_STATE_NAME, NNCF_CONFIG_NAME, QUANT_METHOD, quantization_config_dict

_LAZY = {
    "QATTrainer": "trainer",
    "QATTrainingArguments": "trainer",
    "CompressionSchedulerCallback": "trainer",
    "default_nncf_config": "trainer",
    "KerasQATTrainer": "keras_trainer",
    "KerasQATArguments": "keras_trainer",
}

__all__ = [
    "QATTrainer",
    "QATTrainingArguments",
    "CompressionSchedulerCallback",
    "default_nncf_config",
    "KerasQATTrainer",
    "KerasQATArguments",
    "quantization_config_dict",
    "QUANT_METHOD",
    "COMPRESSION_STATE_NAME",
    "NNCF_CONFIG_NAME",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
