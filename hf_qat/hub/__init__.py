"""Framework-neutral hub support: one-commit pushes of saved QAT folders, pulls of exported files,
and model cards rendered from the packaged template. Framework-specific saving lives with each
backend (:mod:`hf_qat.transformers.hub`, :mod:`hf_qat.keras.hub`)."""

from .model_card import render_model_card, write_model_card
from .pull import load_onnx_from_hub
from .push import DEFAULT_ATTEMPTS, DEFAULT_TIMEOUT, check_push_access, push_qat_folder

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_TIMEOUT",
    "check_push_access",
    "load_onnx_from_hub",
    "push_qat_folder",
    "render_model_card",
    "write_model_card",
]
