"""Model cards of QAT models, rendered with ``huggingface_hub.ModelCard`` from the card template.

The template's source is ``model_cards/hf_qat_model_card.md`` at the top of the repository; it is
installed as package data of ``hf_qat.hub.templates`` (a package mapped onto that folder) and read
with ``importlib.resources``, so a wheel install renders cards like a checkout does.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.layout import quantization_scheme
from ..utils.io import atomic_write_text

__all__ = ["TEMPLATE_NAME", "TEMPLATE_PACKAGE", "template_text", "render_model_card", "write_model_card"]

TEMPLATE_NAME = "hf_qat_model_card.md"
#: The package the template is installed in (``model_cards/`` mapped by ``pyproject.toml``).
TEMPLATE_PACKAGE = "hf_qat.hub.templates"
_AUTO_CLASSES = {
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "image-classification": "AutoModelForImageClassification",
    "causal-lm": "AutoModelForCausalLM",
}
_PIPELINE_TAGS = {"causal-lm": "text-generation"}


def template_text() -> str:
    """The card template (``model_cards/hf_qat_model_card.md``), read from the installed package.

    Raises:
        `FileNotFoundError`: the installation lacks the template (a build that dropped package data);
            reinstall hf_qat.
    """
    try:
        return resources.files(TEMPLATE_PACKAGE).joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise FileNotFoundError(
            f"The model card template {TEMPLATE_NAME} is not installed with hf_qat (package {TEMPLATE_PACKAGE}: {e}). "
            "Reinstall hf_qat (pip install --force-reinstall hf_qat)."
        ) from None


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def render_model_card(
    ctrl: Any,
    results: dict[str, Any],
    base_model: str | None,
    dataset: str | None = None,
    repo_id: str | None = None,
    framework: str = "pytorch",
):
    """A ``ModelCard`` for a QAT model: metadata (base model, relation, tags, model-index) and body.

    ``framework`` is ``"pytorch"`` (transformers checkpoint) or ``"keras"`` (keras-hub preset or
    ``model.keras``); it selects the card's library and usage section.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    task = results["task"]
    metric = results["metric"]
    values = results["values"]
    # a hub id ("org/name" or "name") rather than a local folder or a bare class name
    base_is_hub_id = (
        bool(base_model)
        and not os.path.exists(base_model)
        and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", base_model) is not None
        and "/" in base_model
    )
    base_model = base_model or "a model built from its config"
    repo_id = repo_id or f"<user>/{Path(base_model).name}-hf-qat-int8"
    eval_results = []
    for name, key in (("FP32", "fp32"), ("INT8 ONNX", "int8_onnx")):
        if values.get(key) is not None:
            eval_results.append(
                EvalResult(
                    task_type=_PIPELINE_TAGS.get(task, task),
                    dataset_type=dataset or "custom",
                    dataset_name=dataset or "custom",
                    metric_type=metric,
                    metric_name=f"{metric} ({name})",
                    metric_value=float(values[key]),
                )
            )
    card_data = ModelCardData(
        base_model=base_model if base_is_hub_id else None,
        base_model_relation="quantized" if base_is_hub_id else None,
        library_name="keras" if framework == "keras" else "transformers",
        pipeline_tag=_PIPELINE_TAGS.get(task, task),
        tags=["hf_qat", "qat", "int8", "onnx", "nncf"] + (["tensorflow", "keras"] if framework == "keras" else []),
        datasets=[dataset] if dataset else None,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
    )
    sizes, latency = results.get("onnx_file_size") or {}, results.get("onnx_latency_batch1_s") or {}
    return ModelCard.from_template(
        card_data,
        template_str=template_text(),
        model_name=repo_id.split("/")[-1],
        base_model=base_model,
        base_model_url=f"https://huggingface.co/{base_model}" if base_is_hub_id else base_model,
        task=task,
        metric=metric,
        fp32_value=_fmt(values.get("fp32")),
        int8_value=_fmt(values.get("int8")),
        onnx_value=_fmt(values.get("int8_onnx")),
        onnx_size_fp32=f"{sizes['fp32'] / 2**20:.2f} MiB" if sizes else None,
        onnx_size_int8=f"{sizes['int8'] / 2**20:.2f} MiB ({sizes['int8'] / sizes['fp32']:.2f}x)" if sizes else None,
        latency_fp32=f"{latency['fp32'] * 1e3:.2f} ms" if latency else None,
        latency_int8=f"{latency['int8'] * 1e3:.2f} ms ({latency['int8'] / latency['fp32']:.2f}x)" if latency else None,
        eval_samples=results.get("eval_samples"),
        train_samples=results.get("train_samples"),
        dataset=dataset,
        scheme=quantization_scheme(ctrl),
        auto_class=_AUTO_CLASSES.get(task, "AutoModel"),
        repo_id=repo_id,
        framework=framework,
    )


def write_model_card(
    output_dir: str | os.PathLike,
    ctrl: Any,
    results: dict[str, Any],
    base_model: str | None,
    dataset: str | None = None,
    repo_id: str | None = None,
    framework: str = "pytorch",
) -> Path:
    """Render the card and write ``README.md`` into ``output_dir`` (atomically)."""
    card = render_model_card(ctrl, results, base_model, dataset, repo_id, framework)
    path = Path(output_dir) / "README.md"
    atomic_write_text(path, str(card))
    return path
