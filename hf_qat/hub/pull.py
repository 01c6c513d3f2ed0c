"""Pull exported files of a QAT repo back from the Hugging Face Hub (framework-neutral).

Models themselves come back through their framework: ``from_pretrained`` of transformers (after
``import hf_qat``) or :func:`hf_qat.keras.hub.from_pretrained`. Nothing pulled runs code.
"""

from __future__ import annotations

from typing import Any

from ..core.layout import ONNX_NAME
from ..utils.imports import require

__all__ = ["load_onnx_from_hub"]


def load_onnx_from_hub(
    repo_id: str,
    *,
    runtime: str = "onnxruntime",
    filename: str = ONNX_NAME,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | None = None,
) -> Any:
    """Download ``model.onnx`` (and ``model.onnx.data`` when the repo has one) from ``repo_id`` and load it.

    Returns:
        An ``onnxruntime.InferenceSession`` (``runtime="onnxruntime"``) or an OpenVINO ``CompiledModel``
        on CPU (``runtime="openvino"``).

    Raises:
        `ValueError`: ``runtime`` is neither ``"onnxruntime"`` nor ``"openvino"``.
        [`MissingDependencyError`]: huggingface_hub or the runtime is not installed.
    """
    if runtime not in ("onnxruntime", "openvino"):
        raise ValueError(f"runtime must be 'onnxruntime' or 'openvino', got {runtime!r}")
    require("huggingface_hub", extra="hub", feature="load_onnx_from_hub")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    path = hf_hub_download(repo_id, filename, revision=revision, token=token, endpoint=endpoint, cache_dir=cache_dir)
    try:  # large models keep their weights next to the graph
        hf_hub_download(repo_id, filename + ".data", revision=revision, token=token, endpoint=endpoint, cache_dir=cache_dir)
    except EntryNotFoundError:  # absent for models under 2 GB
        pass
    require(runtime, extra="onnx", feature=f"load_onnx_from_hub(runtime={runtime!r})")
    if runtime == "onnxruntime":
        import onnxruntime as ort

        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(path), "CPU")
