"""Save, push and load compressed Keras models: keras-hub presets (or ``.keras`` files) plus hf_qat's files.

A saved Keras QAT folder holds

- the model in its own format, loadable without hf_qat: a keras-hub preset (``config.json``,
  ``metadata.json``, ``model.weights.h5``, ``task.json``, ``task.weights.h5``, tokenizer assets) for
  keras-hub models, else ``model.keras``; the QAT-trained float weights, no quantizer variables;
- ``compression_state.json`` (NNCF layout, the same as PyTorch's) and ``nncf_config.json``;
- ``hf_qat_quantizers.safetensors``: the learned quantizer ranges, keyed ``<quantizer id>/<variable>``;
- after export: ``model.pb`` (frozen graph), ``saved_model/`` and ``model.onnx``; ``README.md``.

Pull back with keras-hub or Keras and restore the quantizers::

    model = keras_hub.models.BertTextClassifier.from_preset("hf://user/repo")
    ctrl, model = hf_qat.keras.hub.restore_quantizers(model, "hf://user/repo")

or in one call ``ctrl, model = hf_qat.keras.hub.from_pretrained("hf://user/repo")``.
Nothing loaded runs code: JSON, safetensors and Keras' safe-mode deserialisation only.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import NNCFConfig
from ..core.layout import (
    COMPRESSION_STATE_NAME,
    KERAS_LAYOUT,
    NNCF_CONFIG_NAME,
    OPENVINO_XML_NAME,
    QUANTIZERS_FILE,
    RESULTS_NAME,
    read_json_file,
    remove_openvino_files,
)
from ..errors import ExportError
from ..hub.model_card import license_of, write_model_card
from ..hub.push import push_qat_folder
from ..utils.io import atomic_path, atomic_write_text
from .model_creation import create_compressed_model

logger = logging.getLogger(__name__)

__all__ = [
    "from_pretrained",
    "push_keras_folder",
    "push_to_hub_keras",
    "restore_quantizers",
    "save_keras_qat_model",
]

HF_PREFIX = "hf://"


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the folder is not a saved hf_qat Keras model")
    return read_json_file(path, "loading a Keras QAT model")


def save_keras_qat_model(model: Any, ctrl: Any, output_dir: str | os.PathLike) -> Path:
    """Save a compressed Keras model (see the module docstring); returns the folder."""
    from safetensors.numpy import save_file

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_to_preset"):
        model.save_to_preset(str(output_dir))
    else:
        with atomic_path(output_dir / "model.keras", "Keras model file") as tmp:
            os.replace(tmp, tmp + ".keras")
            model.save(tmp + ".keras")
            os.replace(tmp + ".keras", tmp)
    atomic_write_text(
        output_dir / COMPRESSION_STATE_NAME,
        json.dumps(ctrl.get_compression_state(), indent=2),
    )
    atomic_write_text(output_dir / NNCF_CONFIG_NAME, json.dumps(dict(ctrl.config), indent=2))
    arrays = {k: np.array(v, dtype=np.float32) for k, v in ctrl.quantizer_arrays().items()}  # keeps 0-d shapes
    with atomic_path(output_dir / QUANTIZERS_FILE, "quantizer file") as tmp:
        save_file(
            arrays,
            tmp,
            metadata={
                "format": "hf_qat.keras",
                "quantizers": str(len(ctrl.quantizers)),
            },
        )
    return output_dir


def _local_folder(source: str | os.PathLike, revision: str | None = None, token: str | None = None) -> Path:
    source = str(source)
    if not source.startswith(HF_PREFIX):
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            source[len(HF_PREFIX) :],
            revision=revision,
            token=token,
            allow_patterns=list(KERAS_LAYOUT.pushed),
        )
    )


def restore_quantizers(
    model: Any,
    source: str | os.PathLike,
    revision: str | None = None,
    token: str | None = None,
):
    """Recreate the quantizers of a saved Keras QAT model on ``model`` and load their learned ranges.

    ``model`` is the float model loaded from the same folder or repo (keras-hub ``from_preset``,
    ``keras.saving.load_model``); ``source`` is that folder or ``"hf://<repo id>"``.
    Returns ``(ctrl, model)``; outputs equal those of the model that was saved.
    """
    from safetensors.numpy import load_file

    folder = _local_folder(source, revision, token)
    state = _read_json(folder / COMPRESSION_STATE_NAME)
    config = NNCFConfig.from_dict(_read_json(folder / NNCF_CONFIG_NAME))
    quantizers_path = folder / QUANTIZERS_FILE
    if not quantizers_path.is_file():
        raise FileNotFoundError(f"{quantizers_path} is missing: the folder is not a saved hf_qat Keras model")
    ctrl, model = create_compressed_model(model, config, compression_state=state)
    ctrl.load_quantizer_arrays(load_file(str(quantizers_path)))
    return ctrl, model


def from_pretrained(source: str | os.PathLike, revision: str | None = None, token: str | None = None):
    """Load a saved Keras QAT model (folder or ``"hf://<repo id>"``) and restore its quantizers.

    keras-hub presets are built with the class named in ``task.json`` (or ``config.json``) through
    ``keras_hub.models.<Class>.from_preset``; ``model.keras`` through ``keras.saving.load_model`` in safe mode.
    Returns ``(ctrl, model)``.
    """
    import keras

    folder = _local_folder(source, revision, token)
    if (folder / "metadata.json").is_file():
        import keras_hub

        spec = _read_json(folder / ("task.json" if (folder / "task.json").is_file() else "config.json"))
        cls = getattr(keras_hub.models, spec.get("class_name", ""), None)
        if cls is None:
            raise ValueError(f"{folder}: keras-hub has no model class {spec.get('class_name')!r}")
        model = cls.from_preset(str(folder))
    elif (folder / "model.keras").is_file():
        model = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    else:
        raise FileNotFoundError(f"{folder} holds neither a keras-hub preset (metadata.json) nor model.keras")
    return restore_quantizers(model, folder)


def push_keras_folder(folder: str | os.PathLike, repo_id: str, **kwargs: Any) -> Any:
    """Upload a saved Keras QAT folder to ``repo_id`` in one commit (retries and errors as
    :func:`hf_qat.hub.push_qat_folder`, files as :data:`~hf_qat.core.layout.KERAS_LAYOUT`)."""
    return push_qat_folder(folder, repo_id, layout=KERAS_LAYOUT, **kwargs)


def push_to_hub_keras(
    model: Any,
    ctrl: Any,
    repo_id: str,
    *,
    results: dict[str, Any] | None = None,
    base_model: str | None = None,
    dataset: str | None = None,
    license: str | None = None,
    formats: tuple[str, ...] = ("frozen_graph", "saved_model", "onnx", "openvino"),
    **push_kwargs: Any,
) -> Any:
    """Save, export (``formats``), write the model card and push a compressed Keras model in one commit."""
    exports = {
        "frozen_graph": "model.pb",
        "saved_model": "saved_model",
        "onnx": "model.onnx",
        "openvino": OPENVINO_XML_NAME,
    }
    with tempfile.TemporaryDirectory(prefix="hf_qat_push_") as tmp:
        save_keras_qat_model(model, ctrl, tmp)
        for fmt in formats:
            try:
                ctrl.export_model(str(Path(tmp) / exports[fmt]), save_format=fmt)
            except (ImportError, ExportError) as e:
                if fmt != "openvino":
                    raise
                remove_openvino_files(tmp)  # the push goes on without an IR, and says so
                logger.warning("hf_qat: the push of %s holds no OpenVINO IR: %s", repo_id, e)
        card_results = dict(results) if results else {"metric": "n/a", "values": {}}
        card_results.setdefault("task", "text-classification")
        write_model_card(
            tmp,
            ctrl,
            card_results,
            base_model=base_model,
            dataset=dataset,
            repo_id=repo_id,
            framework="keras",
            license=license or license_of(base_model),
        )
        if results:
            atomic_write_text(
                Path(tmp) / RESULTS_NAME,
                json.dumps(results, indent=2, default=float),
            )
        return push_keras_folder(tmp, repo_id, **push_kwargs)
