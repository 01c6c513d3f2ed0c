"""Quantization-aware training of a Hugging Face model, end to end (the ``hf-qat-train`` command).

    python scripts/run_qat.py                      # built-in default: offline, about a minute on 2 CPU cores
    python scripts/run_qat.py --framework tf       # the same on Keras 3 / keras-hub
    python scripts/run_qat.py --help               # every argument (TrainingArguments flags included)

The flow lives in :mod:`hf_qat.cli`.
"""

from hf_qat.cli import RunError, console_main, main

__all__ = ["RunError", "main"]

if __name__ == "__main__":
    console_main()
