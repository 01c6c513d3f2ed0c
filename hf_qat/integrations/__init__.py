"""Integrations with the Hugging Face stack: Trainer, metrics, saved-model metadata."""

from .quantization_config import COMPRESSION_STATE_NAME, NNCF_CONFIG_NAME, QUANT_METHOD, quantization_config_dict
from .trainer import CompressionSchedulerCallback, QATTrainer, QATTrainingArguments, default_nncf_config

__all__ = [
    "QATTrainer",
    "QATTrainingArguments",
    "CompressionSchedulerCallback",
    "default_nncf_config",
    "quantization_config_dict",
    "QUANT_METHOD",
    "COMPRESSION_STATE_NAME",
    "NNCF_CONFIG_NAME",
]
