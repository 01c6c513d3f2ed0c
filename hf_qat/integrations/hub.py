"""Push QAT models to the Hugging Face Hub and pull them back.

A push is one commit holding exactly the files of a QAT model (:data:`PUSHED_FILES`): the
safetensors checkpoint with quantizer parameters, ``config.json`` with ``quantization_config``,
``compression_state.json``, ``nncf_config.json``, ``model.onnx`` (INT8), the tokenizer or
processor files, ``qat_results.json`` when there are results, and ``README.md`` rendered from
``model_cards/``. Pickled files (``training_args.bin``, optimizer states) and Trainer checkpoints
are never pushed.

Pulling reads only JSON and safetensors: ``from_pretrained`` (after ``import hf_qat``) rebuilds
the quantizers, :func:`load_onnx_from_hub` downloads ``model.onnx`` into a runtime session.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ExportError, HubError
from .quantization_config import quantization_config_dict, write_qat_files

__all__ = [
    "PUSHED_FILES",
    "save_qat_model",
    "check_push_access",
    "push_qat_folder",
    "push_to_hub",
    "load_onnx_from_hub",
]

#: Patterns of the files a push uploads (everything else in the folder stays local).
PUSHED_FILES = [
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "config.json",
    "generation_config.json",
    "compression_state.json",
    "nncf_config.json",
    "model.onnx",
    "model.onnx.data",
    "README.md",
    "qat_results.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.jinja",
]


def save_qat_model(model: Any, ctrl: Any, output_dir: str | os.PathLike, processor: Any = None) -> Path:
    """Save a compressed model the way :class:`~hf_qat.QATTrainer` does (weights, config with
    ``quantization_config``, ``compression_state.json``, ``nncf_config.json``, processor)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} is not a transformers PreTrainedModel; save its state_dict and compression state instead")
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


def push_qat_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload QAT model (hf_qat)",
    endpoint: str | None = None,
) -> Any:
    """Upload the QAT files of ``folder`` (:data:`PUSHED_FILES`) to ``repo_id`` in one commit.

    Raises:
        `FileNotFoundError`: the folder lacks the files every QAT repo needs.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    required = ["config.json", "compression_state.json", "nncf_config.json"]
    missing = [f for f in required if not (folder / f).is_file()]
    if not any(folder.glob("model*.safetensors")):
        missing.append("model.safetensors")
    if missing:
        raise FileNotFoundError(f"{folder} is not a saved QAT model: missing {missing}")
    api = HfApi(token=token, endpoint=endpoint)
    check_push_access(api, repo_id)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            allow_patterns=PUSHED_FILES,
            commit_message=commit_message,
            revision=revision,
        )
    except Exception as e:  # HTTP errors after the client's retries, dropped connections, ...
        raise HubError(
            f"Pushing {folder} to {repo_id} failed: {type(e).__name__}: {e}. A push is a single commit, so "
            f"{repo_id} is unchanged (uploaded large files may remain stored but unreferenced); the local "
            "files are untouched. Run the push again."
        ) from e


def check_push_access(api: Any, repo_id: str) -> str:
    """Fail before any upload when the token is missing, refused, or not allowed to write ``repo_id``'s
    namespace. Returns the user name."""
    try:
        me = api.whoami()
    except Exception as e:
        raise HubError(
            f"Cannot push to {repo_id}: no usable Hugging Face token ({type(e).__name__}: {e}). Run `hf auth login`, "
            "set HF_TOKEN, or pass token=..."
        ) from e
    namespace = repo_id.split("/")[0] if "/" in repo_id else me.get("name")
    allowed = {me.get("name")} | {o.get("name") for o in me.get("orgs", []) if isinstance(o, dict)}
    if namespace not in allowed:
        raise HubError(
            f"Cannot push to {repo_id}: the token belongs to {me.get('name')!r}, who can write to "
            f"{sorted(n for n in allowed if n)}, not to {namespace!r}. Nothing was uploaded."
        )
    return str(me.get("name"))


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
    model card and uploads everything in one commit. Returns the ``CommitInfo``.
    """
    from ..torch.export import export_onnx
    from .model_card import write_model_card

    with tempfile.TemporaryDirectory(prefix="hf_qat_push_") as tmp:
        save_qat_model(model, ctrl, tmp, processor)
        try:
            export_onnx(model, Path(tmp) / "model.onnx", example_inputs, config=ctrl.config)
        except ExportError as e:
            raise ExportError(f"push_to_hub: the INT8 ONNX export failed, nothing was pushed. {e}", e.module, e.op) from e
        card_results = dict(results) if results else {"metric": "n/a", "values": {}}
        card_results.setdefault("task", _task_of(model))
        write_model_card(tmp, ctrl, card_results, base_model=base_model or _base_model_of(model), dataset=dataset, repo_id=repo_id)
        if results:
            (Path(tmp) / "qat_results.json").write_text(json.dumps(results, indent=2, default=float))
        return push_qat_folder(
            tmp, repo_id, token=token, private=private, revision=revision, commit_message=commit_message, endpoint=endpoint
        )


def _task_of(model: Any) -> str:
    name = type(model).__name__
    for suffix, task in (
        ("ForSequenceClassification", "text-classification"),
        ("ForTokenClassification", "token-classification"),
        ("ForImageClassification", "image-classification"),
        ("ForCausalLM", "causal-lm"),
        ("LMHeadModel", "causal-lm"),
    ):
        if name.endswith(suffix):
            return task
    return "feature-extraction"


def _base_model_of(model: Any) -> str | None:
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or "") or None


def load_onnx_from_hub(
    repo_id: str,
    *,
    runtime: str = "onnxruntime",
    filename: str = "model.onnx",
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | None = None,
):
    """Download ``model.onnx`` from ``repo_id`` and load it.

    Returns an ``onnxruntime.InferenceSession`` (``runtime="onnxruntime"``) or an OpenVINO
    ``CompiledModel`` on CPU (``runtime="openvino"``).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    if runtime not in ("onnxruntime", "openvino"):
        raise ValueError(f"runtime must be 'onnxruntime' or 'openvino', got {runtime!r}")
    path = hf_hub_download(repo_id, filename, revision=revision, token=token, endpoint=endpoint, cache_dir=cache_dir)
    try:  # large models keep their weights next to the graph
        hf_hub_download(repo_id, filename + ".data", revision=revision, token=token, endpoint=endpoint, cache_dir=cache_dir)
    except EntryNotFoundError:  # absent for models under 2 GB
        pass
    if runtime == "onnxruntime":
        import onnxruntime as ort

        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(path), "CPU")
