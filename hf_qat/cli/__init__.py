"""The ``run_qat`` command: one argument set for both frameworks, data loading, the PyTorch and Keras
run flows and the closing summary. ``scripts/run_qat.py`` and the ``hf-qat-train`` console command
call :func:`main`; the framework flows (:mod:`~hf_qat.cli.run_torch`, :mod:`~hf_qat.cli.run_keras`)
load only when chosen."""

from .args import DataArguments, ModelArguments, RunError
from .command import console_main, main, parse_args

__all__ = ["DataArguments", "ModelArguments", "RunError", "console_main", "main", "parse_args"]
