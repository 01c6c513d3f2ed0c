"""Quantization-aware training of a Keras 3 / keras-hub model: ``run_qat.py --framework tf``.

    python scripts/run_qat_tf.py --model_name <keras-hub preset, hf:// repo or transformers-format dir> \\
        --task text-classification --train_file train.csv --output_dir out

The flow lives in :mod:`hf_qat.cli.run_keras`.
"""

import sys

from hf_qat.cli import RunError
from hf_qat.cli import main as _main

__all__ = ["RunError", "main"]


def main(argv: list[str] | None = None) -> dict:
    """``run_qat`` with ``--framework tf`` (a later ``--framework`` in ``argv`` wins)."""
    return _main(["--framework", "tf", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    try:
        main()
    except RunError as e:
        print(f"run_qat_tf: error: {e}", file=sys.stderr)
        raise
