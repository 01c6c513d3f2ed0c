"""Model cards of QAT models, rendered with ``huggingface_hub.ModelCard`` from the card template.

The template's source is ``model_cards/hf_qat_model_card.md`` at the top of the repository; it is
installed as package data of ``hf_qat.hub.templates`` (a package mapped onto that folder) and read
with ``importlib.resources``, so a wheel install renders cards like a checkout does.

Metadata is written only from what the caller knows: the license, datasets and languages when given,
``base_model`` only for a hub id (never a local folder's path). A card rendered without ``repo_id``
(a saved folder) points its snippets at the placeholder :data:`LOCAL_PLACEHOLDER`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from ..core.layout import quantization_scheme
from ..utils.io import atomic_write_text

__all__ = [
    "TEMPLATE_NAME",
    "TEMPLATE_PACKAGE",
    "LOCAL_PLACEHOLDER",
    "DEPLOYABLE_FILES",
    "template_text",
    "license_of",
    "render_model_card",
    "write_model_card",
]

logger = logging.getLogger(__name__)

TEMPLATE_NAME = "hf_qat_model_card.md"
#: The package the template is installed in (``model_cards/`` mapped by ``pyproject.toml``).
TEMPLATE_PACKAGE = "hf_qat.hub.templates"
#: Where the snippets of a card without ``repo_id`` (a saved folder, not pushed) load the model from.
LOCAL_PLACEHOLDER = "path/to/this-folder"
_ONNX = "model.onnx"
_OV_XML = "openvino_model.xml"
_OV_BIN = "openvino_model.bin"
#: The deployable files a card describes when they are present (``artifacts``).
DEPLOYABLE_FILES = (_ONNX, _OV_XML, _OV_BIN)
_AUTO_CLASSES = {
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "image-classification": "AutoModelForImageClassification",
    "causal-lm": "AutoModelForCausalLM",
}
#: optimum's ``ORTModelFor<suffix>`` (optimum-onnx) and ``OVModelFor<suffix>`` (optimum-intel) by task.
_OPTIMUM_SUFFIXES = {
    "text-classification": "SequenceClassification",
    "token-classification": "TokenClassification",
    "image-classification": "ImageClassification",
    "causal-lm": "CausalLM",
    "feature-extraction": "FeatureExtraction",
}
_PIPELINE_TAGS = {"causal-lm": "text-generation"}
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
# a folder of the hub cache: <cache>/models--<org>--<name>/snapshots/<revision> (hub ids cannot contain "--")
_CACHE_SNAPSHOT = re.compile(r"(?:^|/)models--(?P<org>[\w.-]+?)--(?P<name>[\w.-]+)/snapshots/[^/]+/?$")
_WORST_LAYERS = 10


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


def license_of(base_model: str | os.PathLike | None) -> str | None:
    """The license of a base model, read from the ``license:`` key of its model card's metadata, without network.

    Args:
        base_model (`str` or `os.PathLike`, *optional*): a local model folder (its ``README.md``), or a hub id whose
            ``README.md`` is in the local hub cache (``huggingface_hub.try_to_load_from_cache``).

    Returns:
        `str` or `None`: the license identifier (``"apache-2.0"``, ``"mit"``, ``"other"`` ...), or `None` when it
        is not known here: no ``README.md`` (or not cached), no metadata block, no ``license`` key, a value that
        is not one string, or metadata that does not parse (logged as a warning).
    """
    if base_model is None:
        return None
    readme: str | None = None
    if os.path.isdir(base_model):
        candidate = Path(base_model) / "README.md"
        readme = str(candidate) if candidate.is_file() else None
    elif _HUB_ID.fullmatch(str(base_model)) or re.fullmatch(r"[\w.-]+", str(base_model)):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(base_model), "README.md")
        readme = cached if isinstance(cached, str) else None
    if readme is None:
        return None
    import yaml
    from huggingface_hub.repocard import metadata_load

    try:
        metadata = metadata_load(readme)
    except (ValueError, yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        logger.warning("hf_qat: the metadata of %s does not parse (%s); the card gets no license from it.", readme, e)
        return None
    value = (metadata or {}).get("license")
    return value if isinstance(value, str) and value.strip() else None


def _base_model_hub_id(base_model: str | None) -> str | None:
    """The hub id for ``base_model`` metadata: a hub id as given, a hub-cache snapshot folder's id; else `None`."""
    if not base_model:
        return None
    if os.path.exists(base_model):
        match = _CACHE_SNAPSHOT.search(Path(base_model).resolve().as_posix())
        return f"{match['org']}/{match['name']}" if match and os.path.isdir(base_model) else None
    return base_model if _HUB_ID.fullmatch(base_model) else None


def _dataset_ids(dataset: str | None, datasets: Sequence[str] | None) -> list[str] | None:
    if datasets is not None:
        if isinstance(datasets, str):
            raise TypeError(f"datasets={datasets!r} is a string: expected a list of dataset ids, e.g. [{datasets!r}].")
        return list(datasets) or None
    # the run's dataset (a name for datasets.load_dataset) is metadata unless it is a local path
    return [dataset] if dataset and not os.path.exists(dataset) else None


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _db(value: Any) -> str:
    """A dB value of a layer report (``float``, ``"inf"``/``"-inf"``/``"nan"`` or ``None``) for a table cell."""
    if value is None:
        return "n/a"
    v = float(value)
    return f"{v:.1f}" if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))


def _badness(value: Any) -> tuple[int, float]:
    # as LayerReport.worst (hf_qat.torch.report): NaN first, then ascending, then not computed
    if value is None:
        return (2, 0.0)
    v = float(value)
    return (0, 0.0) if math.isnan(v) else (1, v)


def _worst_layers(layer_report: Mapping[str, Any], n: int = _WORST_LAYERS) -> list[dict[str, str]]:
    """Table rows of the ``n`` worst layers of a ``LayerReport.to_dict()``, worst first."""
    rows = layer_report.get("rows")
    if not isinstance(rows, list):
        raise ValueError(
            f"layer_report has no 'rows' list (keys: {sorted(layer_report)}): expected LayerReport.to_dict() "
            "(hf_qat.torch.report)."
        )
    worst = sorted(rows, key=lambda r: _badness(r.get("sqnr_db")))[:n]
    return [
        {
            "scope": str(r.get("scope") or r.get("path")).replace("|", "\\|"),
            "type": str(r.get("layer_type", "")),
            "sqnr": _db(r.get("sqnr_db")),
            "local": _db(r.get("local_sqnr_db")),
        }
        for r in worst
    ]


def _openvino_rows(openvino: Mapping[str, Any]) -> list[dict[str, str]]:
    """Table rows of OpenVINO verification results (see :func:`render_model_card`), default precision first."""
    checks = openvino.get("checks", openvino)
    if not isinstance(checks, Mapping):
        raise ValueError(f"openvino['checks'] is a {type(checks).__name__}: expected a mapping of precision name -> results.")
    names = [p for p in ("default", "f32") if p in checks] + [p for p in checks if p not in ("default", "f32")]
    rows = []
    for name in names:
        c = checks[name]
        if not isinstance(c, Mapping):
            continue
        top1, num_rows = c.get("top1_agreement"), c.get("num_rows")
        agreement = "n/a" if top1 is None else f"{float(top1):.1%}" + (f" of {num_rows}" if num_rows else "")
        inference = c.get("inference_precision")
        rows.append(
            {
                "precision": f"{name} ({inference})" if inference and inference != name else str(name),
                "top1": agreement,
                "max_abs": "n/a" if c.get("max_abs_diff") is None else f"{float(c['max_abs_diff']):.3g}",
                "mean_abs": "n/a" if c.get("mean_abs_diff") is None else f"{float(c['mean_abs_diff']):.3g}",
            }
        )
    return rows


def _check_plot_name(name: str) -> str:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts or re.match(r"^[a-z][a-z0-9+.-]*:", name):
        raise ValueError(
            f"layer_report_plot={name!r} is not a file name inside the repository: expected a relative path such as 'sqnr.png'."
        )
    return path.as_posix()


def render_model_card(
    ctrl: Any,
    results: dict[str, Any],
    base_model: str | None,
    dataset: str | None = None,
    repo_id: str | None = None,
    framework: str = "pytorch",
    *,
    license: str | None = None,
    datasets: Sequence[str] | None = None,
    language: str | Sequence[str] | None = None,
    artifacts: Iterable[str] | None = None,
    openvino: Mapping[str, Any] | None = None,
    layer_report: Mapping[str, Any] | None = None,
    layer_report_plot: str | None = None,
):
    """A ``ModelCard`` for a QAT model: metadata (base model, relation, tags, model-index ...) and body.

    Args:
        ctrl: the compression controller (its quantization scheme is described).
        results (`dict`): ``{"task", "metric", "values": {"fp32", "int8", "int8_onnx"}}`` plus optional
            ``onnx_file_size``/``onnx_latency_batch1_s`` (``{"fp32", "int8"}``), ``eval_samples``, ``train_samples``,
            ``openvino`` and ``layer_report`` (used when the arguments of those names are not given).
        base_model (`str`, *optional*): the base model: a hub id (``"org/name"``: linked, and ``base_model``
            metadata with relation ``quantized``), a local folder (named by its folder name only; no metadata unless
            it is a hub-cache snapshot, whose hub id is used), or anything else (named, no metadata).
        dataset (`str`, *optional*): the dataset of the results (model-index); also ``datasets`` metadata unless it
            is a local path or ``datasets`` is given.
        repo_id (`str`, *optional*): the hub repository the card is pushed to; without it (a saved folder) the
            snippets load from :data:`LOCAL_PLACEHOLDER`.
        framework (`str`, *optional*, defaults to ``"pytorch"``): ``"pytorch"`` (transformers checkpoint) or
            ``"keras"`` (keras-hub preset or ``model.keras``); selects the library and the usage snippets.
        license (`str`, *optional*): ``license`` metadata (e.g. from :func:`license_of`); none is written without it.
        datasets (`list[str]`, *optional*): ``datasets`` metadata (hub dataset ids).
        language (`str` or `list[str]`, *optional*): ``language`` metadata (ISO 639-1 codes).
        artifacts (iterable of `str`, *optional*): names of the files the repository holds; the Deployment section
            shows ONNX Runtime snippets when ``model.onnx`` is among them and OpenVINO ones when
            ``openvino_model.xml`` and ``openvino_model.bin`` are. `None` (default): no deployable file is known and
            the section is left out (:func:`write_model_card` lists the folder instead).
        openvino (`dict`, *optional*): OpenVINO verification of the IR against ONNX Runtime on ``model.onnx``,
            rendered as a table: ``{"checks": {<precision>: {"inference_precision": str, "top1_agreement": float |
            None, "num_rows": int, "max_abs_diff": float, "mean_abs_diff": float}}}`` with precisions such as
            ``"default"`` (the CPU plugin's choice) and ``"f32"``; every inner key is optional, and the ``checks``
            mapping may be passed directly. ``OpenVINOResult.to_dict()`` (``hf_qat.onnx.openvino``) has this form.
        layer_report (`dict`, *optional*): ``LayerReport.to_dict()`` (``hf_qat.torch.report``); the ten layers with
            the lowest SQNR are tabled (scope, type, SQNR dB, local SQNR dB).
        layer_report_plot (`str`, *optional*): the plot's file name in the repository (``"sqnr.png"``), linked as an
            image under that table.

    Returns:
        `huggingface_hub.ModelCard`: the card.

    Raises:
        `ValueError`: ``artifacts`` names only one of the two OpenVINO IR files; ``layer_report`` has no ``rows``;
            ``openvino``'s checks are not a mapping; ``layer_report_plot`` is not a relative path.
        `TypeError`: ``datasets`` is a single string.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    task = results["task"]
    metric = results["metric"]
    values = results["values"]
    hub_base = _base_model_hub_id(base_model)
    if hub_base is not None:
        base_name, base_url = hub_base, f"https://huggingface.co/{hub_base}"
    elif base_model and os.path.exists(base_model):
        base_name, base_url = f"a local model (`{Path(base_model).resolve().name}`)", None
    elif base_model:
        base_name, base_url = f"`{base_model}`", None
    else:
        base_name, base_url = "a model built from its config", None
    stem = Path(hub_base or base_model or "").name
    model_name = repo_id.split("/")[-1] if repo_id else (f"{stem}-hf-qat-int8" if stem else "hf-qat-int8")

    files = None if artifacts is None else set(artifacts)
    if files is not None and (_OV_XML in files) != (_OV_BIN in files):
        raise ValueError(
            f"artifacts names {_OV_XML if _OV_XML in files else _OV_BIN} without "
            f"{_OV_BIN if _OV_XML in files else _OV_XML}: the OpenVINO IR is the pair of files."
        )
    has_onnx = files is not None and _ONNX in files
    has_openvino = files is not None and _OV_XML in files
    suffix = _OPTIMUM_SUFFIXES.get(task) if framework != "keras" else None

    openvino = openvino if openvino is not None else results.get("openvino")
    ov_rows = _openvino_rows(openvino) if isinstance(openvino, Mapping) else []
    layer_report = layer_report if layer_report is not None else results.get("layer_report")
    layer_rows = _worst_layers(layer_report) if layer_report is not None else []
    plot = _check_plot_name(layer_report_plot) if layer_report_plot else None

    eval_results = []
    for name, key in (("FP32", "fp32"), (f"{precision_name(quantization_scheme(ctrl))} ONNX", "int8_onnx")):
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
    scheme = quantization_scheme(ctrl)
    bits = sorted({*scheme["weights"]["bits"], *scheme["activations"]["bits"]})
    tags = ["hf_qat", "qat", *(f"int{b}" for b in bits if b in (4, 8)), "onnx", "nncf"] + (["openvino"] if has_openvino else [])
    card_data = ModelCardData(
        base_model=hub_base,
        base_model_relation="quantized" if hub_base else None,
        license=license or None,
        language=[language] if isinstance(language, str) else (list(language) if language else None),
        library_name="keras" if framework == "keras" else "transformers",
        pipeline_tag=_PIPELINE_TAGS.get(task, task),
        tags=tags + (["tensorflow", "keras"] if framework == "keras" else []),
        datasets=_dataset_ids(dataset, datasets),
        model_name=model_name,
        eval_results=eval_results or None,
    )
    sizes, latency = results.get("onnx_file_size") or {}, results.get("onnx_latency_batch1_s") or {}
    location = repo_id or LOCAL_PLACEHOLDER
    if repo_id:
        onnx_path = f'hf_hub_download("{repo_id}", "{_ONNX}")'
        ir_path = f'snapshot_download("{repo_id}", allow_patterns=["openvino_model.*"]) + "/{_OV_XML}"'
    else:
        onnx_path, ir_path = f'"{LOCAL_PLACEHOLDER}/{_ONNX}"', f'"{LOCAL_PLACEHOLDER}/{_OV_XML}"'
    return ModelCard.from_template(
        card_data,
        template_str=template_text(),
        model_name=model_name,
        base_model=base_name,
        base_model_url=base_url,
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
        scheme=scheme,
        precision=precision_name(scheme),
        auto_class=_AUTO_CLASSES.get(task, "AutoModel"),
        repo_id=repo_id,
        location=location,
        keras_source=f"hf://{repo_id}" if repo_id else LOCAL_PLACEHOLDER,
        framework=framework,
        has_onnx=has_onnx,
        has_openvino=has_openvino,
        ort_class=f"ORTModelFor{suffix}" if suffix else None,
        ov_class=f"OVModelFor{suffix}" if suffix else None,
        load_kwargs=", use_cache=False" if task == "causal-lm" else "",
        onnx_path=onnx_path,
        ir_path=ir_path,
        openvino_rows=ov_rows,
        openvino_reference=(openvino or {}).get("reference") if isinstance(openvino, Mapping) else None,
        layer_rows=layer_rows,
        layer_samples=(layer_report or {}).get("num_samples"),
        layer_plot=plot,
    )


def write_model_card(
    output_dir: str | os.PathLike,
    ctrl: Any,
    results: dict[str, Any],
    base_model: str | None,
    dataset: str | None = None,
    repo_id: str | None = None,
    framework: str = "pytorch",
    *,
    license: str | None = None,
    datasets: Sequence[str] | None = None,
    language: str | Sequence[str] | None = None,
    artifacts: Iterable[str] | None = None,
    openvino: Mapping[str, Any] | None = None,
    layer_report: Mapping[str, Any] | None = None,
    layer_report_plot: str | None = None,
) -> Path:
    """Render the card (:func:`render_model_card`) and write ``README.md`` into ``output_dir`` (atomically).

    ``artifacts`` defaults to the deployable files (:data:`DEPLOYABLE_FILES`) present in ``output_dir``, so write
    the card after the exports.

    Returns:
        `Path`: the ``README.md`` written.

    Raises:
        `FileNotFoundError`: ``layer_report_plot`` is not a file in ``output_dir`` (write the plot first).
        `ValueError`, `TypeError`: see :func:`render_model_card`.
        [`WriteError`]: ``README.md`` could not be written.
    """
    folder = Path(output_dir)
    if artifacts is None:
        artifacts = [name for name in DEPLOYABLE_FILES if (folder / name).is_file()]
    if layer_report_plot and not (folder / _check_plot_name(layer_report_plot)).is_file():
        raise FileNotFoundError(
            f"layer_report_plot {layer_report_plot!r} is not in {folder}: the card would link a missing image. "
            f"Write it first (LayerReport.plot({str(folder / layer_report_plot)!r}))."
        )
    card = render_model_card(
        ctrl,
        results,
        base_model,
        dataset,
        repo_id,
        framework,
        license=license,
        datasets=datasets,
        language=language,
        artifacts=artifacts,
        openvino=openvino,
        layer_report=layer_report,
        layer_report_plot=layer_report_plot,
    )
    path = folder / "README.md"
    atomic_write_text(path, str(card))
    return path


def precision_name(scheme: Mapping[str, Any]) -> str:
    """How a card names a quantization scheme (:func:`hf_qat.core.layout.quantization_scheme`): ``INT8`` for
    8-bit weights and activations, ``INT4 weight-only``, ``INT4/INT8 weight-only``, ``INT4 weights, INT8
    activations`` or ``INT4/INT8 weights, INT8 per-token dynamic activations``."""
    weights = "/".join(f"INT{b}" for b in scheme["weights"]["bits"]) or "float"
    if not scheme["activations"]["count"]:
        return f"{weights} weight-only"
    activations = "/".join(f"INT{b}" for b in scheme["activations"]["bits"])
    if scheme["activations"].get("dynamic_per_token"):
        return f"{weights} weights, {activations} per-token dynamic activations"
    if weights == activations:
        return weights
    return f"{weights} weights, {activations} activations"
