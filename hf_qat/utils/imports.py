"""Optional dependencies: availability checks that import nothing, and one error naming the extra.

hf_qat's extras: ``torch`` (torch, transformers, accelerate, datasets, evaluate, safetensors),
``tf`` (tensorflow, keras, keras-hub, tf2onnx, safetensors), ``onnx`` (onnx, onnxscript,
onnxruntime, openvino) and ``hub`` (huggingface_hub, jinja2).
"""

from __future__ import annotations

import importlib.util
import sys

from ..errors import MissingDependencyError

__all__ = ["EXTRAS", "is_available", "require"]

#: The extra that installs each optional top-level package.
EXTRAS: dict[str, str] = {
    "torch": "torch",
    "transformers": "torch",
    "accelerate": "torch",
    "datasets": "torch",
    "evaluate": "torch",
    "safetensors": "torch",
    "tensorflow": "tf",
    "keras": "tf",
    "keras_hub": "tf",
    "tf2onnx": "tf",
    "onnx": "onnx",
    "onnxscript": "onnx",
    "onnxruntime": "onnx",
    "openvino": "onnx",
    "huggingface_hub": "hub",
    "jinja2": "hub",
}


def is_available(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it (a blocked import counts as absent)."""
    if package in sys.modules:
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def require(package: str, *, feature: str, extra: str | None = None) -> None:
    """Raise [`MissingDependencyError`] naming the extra to install when ``package`` is not importable.

    Args:
        package: top-level import name.
        feature: what needs it, for the message (``"hf_qat.keras"``, ``"ONNX export"`` ...).
        extra: the extra that installs it (default: :data:`EXTRAS`' entry).
    """
    if not is_available(package):
        raise MissingDependencyError(package, extra or EXTRAS.get(package, "all"), feature)
