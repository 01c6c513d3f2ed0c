"""The ``run_qat`` command (``hf-qat-train``): parse one argument set, pick the framework, run its flow.

    python scripts/run_qat.py                      # built-in default: offline, about a minute on 2 CPU cores
    hf-qat-train --framework tf                    # the same on Keras 3 / keras-hub
    hf-qat-train --model_name <hub id or dir> --task text-classification \\
        --dataset_name glue --dataset_config_name sst2 --output_dir out [any TrainingArguments flag]

Ends with a table: FP32 vs INT8 metric, ONNX file sizes and latency; writes ``qat_results.json``, the
QAT model and its model card into ``--output_dir``.
"""

from __future__ import annotations

import sys
from typing import Any

from .args import BUILTIN_ARGS, DataArguments, KerasRunArguments, ModelArguments, RunError
from .data import default_model

__all__ = ["parse_args", "main", "console_main"]


def _parser(dataclass_types: tuple, **kwargs: Any):
    from transformers import HfArgumentParser

    return HfArgumentParser(dataclass_types, allow_abbrev=False, **kwargs)


def parse_args(argv: list[str]) -> tuple[str, tuple, bool]:
    """``(framework, parsed dataclasses, builtin)`` for ``argv``.

    The framework comes from ``--framework`` (read with the model and data arguments first); the whole
    command line is then parsed with that framework's arguments, so a flag the framework does not know
    is an error naming it. With no model and no data named, the framework's :data:`BUILTIN_ARGS` come
    first and the given flags apply on top.
    """
    first, data, _ = _parser((ModelArguments, DataArguments), add_help=False).parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    builtin = first.model_name is None and not data.names_data
    if builtin:
        argv = [*BUILTIN_ARGS[first.framework], *argv]
    if first.framework == "tf":
        from ..keras.trainer import KerasQATArguments

        types: tuple = (ModelArguments, DataArguments, KerasQATArguments, KerasRunArguments)
    else:
        from ..transformers.trainer import QATTrainingArguments

        types = (ModelArguments, DataArguments, QATTrainingArguments)
    parsed = _parser(types).parse_args_into_dataclasses(args=argv)
    if parsed[0].model_name is None:
        parsed[0].model_name = default_model()
    return first.framework, tuple(parsed), builtin


def main(argv: list[str] | None = None) -> dict:
    """Run QAT end to end for ``argv`` (default: ``sys.argv[1:]``); returns the run's results.

    Raises:
        [`RunError`]: a problem found before training (bad arguments, data or model), exit status 2.
        [`MissingDependencyError`]: the chosen framework's extra is not installed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    framework, parsed, builtin = parse_args(argv)
    if framework == "tf":
        from .run_keras import run as run_keras

        return run_keras(*parsed, builtin)
    from .run_torch import run as run_torch

    return run_torch(*parsed, builtin)


def console_main() -> None:
    """The ``hf-qat-train`` command: :func:`main`, with a :class:`RunError` printed as one line (exit 2)."""
    try:
        main()
    except RunError as e:
        print(f"hf-qat-train: error: {e}", file=sys.stderr)
        raise
