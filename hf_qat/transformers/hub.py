"""Save a compressed transformers model as a QAT folder, and push one made with the bare API.

The folder follows :data:`hf_qat.core.layout.TRANSFORMERS_LAYOUT`; ``from_pretrained`` (after
``import hf_qat``) loads it back with its quantizers (:mod:`hf_qat.transformers.quantizer`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ..core.layout import ONNX_NAME, RESULTS_NAME, quantization_config_dict, write_qat_files
from ..errors import ExportError
from ..hub.model_card import write_model_card
from ..hub.push import push_qat_folder
from ..utils.io import atomic_write_text

__all__ = ["save_qat_model", "push_to_hub", "task_of", "base_model_of"]

logger = logging.getLogger(__name__)

_TASK_SUFFIXES = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForImageClassification", "image-classification"),
    ("ForCausalLM", "causal-lm"),
    ("LMHeadModel", "causal-lm"),
)


def save_qat_model(model: Any, ctrl: Any, output_dir: str | os.PathLike, processor: Any = None) -> Path:
    """Save a compressed model the way :class:`~hf_qat.QATTrainer` does (weights, config with
    ``quantization_config``, ``compression_state.json``, ``nncf_config.json``, processor).

    Raises:
        `TypeError`: ``model`` is not a transformers ``PreTrainedModel`` (save its ``state_dict`` and
            ``ctrl.get_compression_state()`` instead).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "save_pretrained"):
        raise TypeError(
            f"{type(model).__name__} is not a transformers PreTrainedModel; save its state_dict and compression state instead"
        )
    previous = getattr(config, "quantization_config", None)
    config.quantization_config = quantization_config_dict(ctrl)
    try:
        model.save_pretrained(output_dir)
    finally:
        if previous is None:
            del config.quantization_config
        else:
            config.quantization_config = previous
    write_qat_files(output_dir, ctrl)
    if processor is not None:
        processor.save_pretrained(output_dir)
    return output_dir


def push_to_hub(
    model: Any,
    ctrl: Any,
    repo_id: str,
    *,
    processor: Any = None,
    example_inputs: Any = None,
    results: dict[str, Any] | None = None,
    base_model: str | None = None,
    dataset: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload QAT model (hf_qat)",
    endpoint: str | None = None,
) -> Any:
    """Push a model compressed with the bare API (``create_compressed_model``) to the hub.

    Saves the QAT checkpoint, exports ``model.onnx`` (INT8, verified in ONNX Runtime; example inputs
    from ``example_inputs``, the controller's calibration data or the model config), renders the
    model card and uploads everything in one commit. The INT8 ONNX file is converted to OpenVINO IR
    (``openvino_model.xml`` + ``.bin``, verified in OpenVINO); when OpenVINO cannot convert or run it, a warning says
    why and the push holds no IR. Returns the ``CommitInfo``.

    Raises:
        [`ExportError`]: the ONNX export failed (nothing was pushed).
        [`HubError`]: see :func:`hf_qat.hub.push_qat_folder`.
        [`MissingDependencyError`]: the ``onnx`` extra is not installed.
    """
    from ..torch.export import export_onnx  # the onnx extra is optional for training and saving

    with tempfile.TemporaryDirectory(prefix="hf_qat_push_") as tmp:
        save_qat_model(model, ctrl, tmp, processor)
        try:
            exported = export_onnx(model, Path(tmp) / ONNX_NAME, example_inputs, config=ctrl.config)
        except ExportError as e:
            raise ExportError(f"push_to_hub: the INT8 ONNX export failed, nothing was pushed. {e}", e.module, e.op) from e
        try:
            from ..onnx.openvino import convert_to_openvino

            convert_to_openvino(exported.path, inputs=exported.inputs)
        except (ImportError, ExportError) as e:  # convert_to_openvino leaves no IR behind on failure
            logger.warning("hf_qat: the push to %s holds no OpenVINO IR: %s", repo_id, e)
        card_results = dict(results) if results else {"metric": "n/a", "values": {}}
        card_results.setdefault("task", task_of(model))
        write_model_card(tmp, ctrl, card_results, base_model=base_model or base_model_of(model), dataset=dataset, repo_id=repo_id)
        if results:
            atomic_write_text(Path(tmp) / RESULTS_NAME, json.dumps(results, indent=2, default=float))
        return push_qat_folder(
            tmp, repo_id, token=token, private=private, revision=revision, commit_message=commit_message, endpoint=endpoint
        )


def task_of(model: Any) -> str:
    """The run_qat task name of a transformers model, from its class name (``feature-extraction`` otherwise)."""
    name = type(model).__name__
    for suffix, task in _TASK_SUFFIXES:
        if name.endswith(suffix):
            return task
    return "feature-extraction"


def base_model_of(model: Any) -> str | None:
    """The model's ``config._name_or_path`` (hub id or folder it was loaded from), if any."""
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or "") or None
