"""Atomic Trainer checkpoints and the checks made before resuming from one.

A checkpoint is written into a staging folder ``.checkpoint-<step>.tmp/checkpoint-<step>`` beside its
final place, every file and folder is fsynced, then it is renamed to ``checkpoint-<step>``. A crash or
kill mid-save leaves the previous checkpoints as they were and no ``checkpoint-<step>`` folder, so
``resume_from_checkpoint=True`` picks the last complete one. The leading dot matters: transformers'
rotation (``sort_checkpoints``) globs ``checkpoint-*`` and would count ``checkpoint-<step>.tmp`` as a
checkpoint; ``get_last_checkpoint`` only takes ``checkpoint-<digits>``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..core.layout import COMPRESSION_STATE_NAME, read_json_file
from ..core.state import parse_compression_state
from ..errors import CheckpointError, CompressionStateError
from ..utils.io import fsync_dir

__all__ = ["STAGING_PREFIX", "StagedCheckpoint", "check_checkpoint", "is_sharded_checkpoint", "remove_stale_staging"]

logger = logging.getLogger(__name__)

STAGING_PREFIX = "." + PREFIX_CHECKPOINT_DIR


@dataclass(frozen=True)
class StagedCheckpoint:
    """Where checkpoint ``step`` of ``run_dir`` is staged and where it lands.

    Attributes:
        run_dir: the Trainer's output (or trial) folder.
        step: the global step of the checkpoint.
    """

    run_dir: str
    step: int

    @property
    def name(self) -> str:
        return f"{PREFIX_CHECKPOINT_DIR}-{self.step}"

    @property
    def final(self) -> str:
        """``<run_dir>/checkpoint-<step>``."""
        return os.path.join(self.run_dir, self.name)

    @property
    def root(self) -> str:
        """The staging root, given to Trainer as the run folder while it writes the checkpoint."""
        return os.path.join(self.run_dir, f"{STAGING_PREFIX}-{self.step}.tmp")

    @property
    def folder(self) -> str:
        """The staged checkpoint folder (inside :attr:`root`)."""
        return os.path.join(self.root, self.name)

    def prepare(self) -> None:
        """Remove staging left by killed runs and create the staging root (main process only)."""
        remove_stale_staging(self.run_dir)
        os.makedirs(self.root, exist_ok=True)

    def discard(self) -> None:
        """Delete the staging root (a failed save)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def commit(self) -> None:
        """fsync the staged checkpoint and rename it into place (an existing one is moved aside first)."""
        _fsync_tree(self.folder)
        _replace_dir(self.folder, self.final)
        shutil.rmtree(self.root, ignore_errors=True)
        fsync_dir(self.run_dir)

    def error(self, error: BaseException) -> CheckpointError:
        """The [`CheckpointError`] of a failed save, naming the last complete checkpoint."""
        cause = error if isinstance(error, OSError) else OSError(_errno_of(error), f"{type(error).__name__}: {error}")
        last = get_last_checkpoint(self.run_dir) if os.path.isdir(self.run_dir) else None
        return CheckpointError(
            self.final,
            cause,
            "checkpoint",
            detail=f"Last complete checkpoint: {last or 'none'}; resume from it with resume_from_checkpoint=True.",
        )


def _errno_of(error: BaseException) -> int | None:
    """The errno behind an exception raised by native writers (safetensors reports "... (os error 28)")."""
    match = re.search(r"os error (\d+)", str(error))
    return int(match.group(1)) if match else None


def _fsync_tree(folder: str) -> None:
    """Flush every file of ``folder`` (and the folder) to disk before it is renamed into place."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def _replace_dir(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` (a re-run over the same output_dir) is moved aside first."""
    if os.path.exists(dst):
        aside = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.old")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(dst, aside)
        os.replace(src, dst)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(src, dst)


def remove_stale_staging(run_dir: str) -> None:
    """Delete staging folders of saves that never finished (a killed run); they are never checkpoints."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(run_dir):
            if entry.startswith(STAGING_PREFIX + "-") and entry.endswith((".tmp", ".old")):
                logger.warning("hf_qat: removing %s, left by an interrupted checkpoint save", os.path.join(run_dir, entry))
                shutil.rmtree(os.path.join(run_dir, entry), ignore_errors=True)


#: the folder (``<name>_<i>``) in which accelerate writes an FSDP model's shards (torch.distributed.checkpoint)
FSDP_SHARDS_NAME = "pytorch_model_fsdp"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """Whether a checkpoint folder holds FSDP shards (written under ``fsdp_state_dict_type: SHARDED_STATE_DICT``)."""
    return os.path.isdir(os.path.join(os.fspath(path), f"{FSDP_SHARDS_NAME}_0"))


def check_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Validate a QAT checkpoint folder before anything is trained or written; return its compression state.

    Raises:
        [`CompressionStateError`]: missing folder, weights or compression state, or malformed JSON.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CompressionStateError(f"resume_from_checkpoint: {path} is not a directory")
    weights = ("model.safetensors", "model.safetensors.index.json")
    if not any(os.path.isfile(os.path.join(path, n)) for n in weights) and not is_sharded_checkpoint(path):
        raise CompressionStateError(
            f"resume_from_checkpoint: {path} holds no model.safetensors (nor FSDP shards, {FSDP_SHARDS_NAME}_0/); "
            "expected a checkpoint written by QATTrainer"
        )
    if not os.path.isfile(os.path.join(path, COMPRESSION_STATE_NAME)):
        raise CompressionStateError(
            f"resume_from_checkpoint: {path} has no {COMPRESSION_STATE_NAME}; it was not written by QATTrainer "
            "(an FP32 checkpoint cannot resume QAT: start a new run from it with --model_name instead)"
        )
    state = read_json_file(os.path.join(path, COMPRESSION_STATE_NAME), "resume_from_checkpoint")
    if not isinstance(state, dict) or "builder_state" not in state:
        raise CompressionStateError(
            f"resume_from_checkpoint: {os.path.join(path, COMPRESSION_STATE_NAME)} is not an NNCF compression state "
            "(expected an object with 'builder_state' and 'ctrl_state')"
        )
    parse_compression_state(state)
    config_path = os.path.join(path, "config.json")
    if os.path.isfile(config_path):  # Trainer reads it on resume; fail here, with the file named
        config = read_json_file(config_path, "resume_from_checkpoint", strict=False)
        if not isinstance(config, dict):
            raise CompressionStateError(f"resume_from_checkpoint: {config_path} is not a JSON object")
    return state
