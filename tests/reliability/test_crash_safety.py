"""Checkpoints survive a SIGKILL or a full disk in the middle of a save, and resuming is exact."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from testing_utils import tiny_bert, tiny_text_dataset
from transformers import AutoModelForSequenceClassification
from transformers.trainer_utils import get_last_checkpoint

import hf_qat  # noqa: F401 - registers quant_method "hf_qat"
from hf_qat import CheckpointError
from hf_qat.transformers import QATTrainer, QATTrainingArguments, check_checkpoint

WORKER = Path(__file__).with_name("train_worker.py")
COMPLETE = {
    "model.safetensors",
    "config.json",
    "compression_state.json",
    "nncf_config.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
}


def run_worker(out: Path, max_steps: int, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(WORKER), str(out), str(max_steps), *flags],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "model.safetensors")


def assert_loadable(checkpoint: Path) -> None:
    assert COMPLETE <= set(os.listdir(checkpoint)), sorted(os.listdir(checkpoint))
    check_checkpoint(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    assert model.is_quantized
    saved = weights(checkpoint)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items() if k in state)


@pytest.mark.slow
def test_sigkill_during_checkpoint_save_keeps_the_previous_one_and_resume_is_exact(tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    proc = run_worker(killed, 6, "--kill-at", "4")
    assert proc.returncode == -9, proc.stderr[-3000:]
    # the interrupted save left no checkpoint-4; the last complete checkpoint is the one resumed from
    assert not (killed / "checkpoint-4").exists(), sorted(os.listdir(killed / "checkpoint-4"))
    assert get_last_checkpoint(str(killed)) == str(killed / "checkpoint-2")
    assert_loadable(killed / "checkpoint-2")

    proc = run_worker(killed, 6, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [p for p in os.listdir(killed) if p.startswith(".")]  # the stale staging folder was removed

    straight = tmp_path / "straight"
    proc = run_worker(straight, 6)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected, got = weights(straight / "checkpoint-6"), weights(killed / "checkpoint-6")
    assert expected.keys() == got.keys()
    assert not [k for k in expected if not torch.equal(expected[k], got[k])]
    assert_loadable(killed / "checkpoint-6")


@pytest.mark.slow
def test_file_size_limit_during_save_raises_checkpoint_error_and_leaves_no_partial_checkpoint(tmp_path: Path) -> None:
    """A real OS-level write failure (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC) in safetensors' native writer."""
    out = tmp_path / "out"
    proc = run_worker(out, 6, "--fsize-limit-at", "4")
    assert proc.returncode != 0
    assert "CheckpointError" in proc.stderr and "checkpoint-4" in proc.stderr, proc.stderr[-3000:]
    assert "full or over a size limit" in proc.stderr and "Last complete checkpoint" in proc.stderr
    assert sorted(os.listdir(out)) == ["checkpoint-2"]
    assert_loadable(out / "checkpoint-2")


def _trainer(out: Path, **kw) -> QATTrainer:
    args = QATTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_steps=4,
        report_to=[],
        seed=0,
        use_cpu=True,
        save_strategy="steps",
        save_steps=2,
        disable_tqdm=True,
        num_calibration_samples=16,
        **kw,
    )
    return QATTrainer(model=tiny_bert(), args=args, train_dataset=tiny_text_dataset())


def test_disk_full_while_writing_the_optimizer_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC half-way through a file: CheckpointError, and neither checkpoint-4 nor a temp folder is left."""
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if isinstance(f, str) and "checkpoint-4" in f:
            with open(f, "wb") as out:
                out.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    trainer = _trainer(tmp_path)
    with pytest.raises(CheckpointError) as err:
        trainer.train()
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    message = str(err.value)
    assert str(tmp_path / "checkpoint-4") in message and "No space left on device" in message
    assert f"Last complete checkpoint: {tmp_path / 'checkpoint-2'}" in message
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]
    monkeypatch.setattr(torch, "save", real_save)
    assert_loadable(tmp_path / "checkpoint-2")


def test_rotation_and_best_checkpoint_use_final_names(tmp_path: Path) -> None:
    ds = tiny_text_dataset()
    args = QATTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=1e-3,
        max_steps=6,
        report_to=[],
        seed=0,
        use_cpu=True,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        disable_tqdm=True,
        num_calibration_samples=16,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
    )
    (tmp_path / ".checkpoint-2.tmp" / "checkpoint-2").mkdir(parents=True)  # left by a killed run
    trainer = QATTrainer(model=tiny_bert(), args=args, train_dataset=ds, eval_dataset=ds)
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and Path(best).parent == tmp_path and Path(best).is_dir()
    kept = sorted(p for p in os.listdir(tmp_path))
    assert kept == sorted({"checkpoint-6", Path(best).name}), kept
    import json

    assert json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())["best_model_checkpoint"] == best


def test_a_second_run_over_the_same_output_dir_replaces_checkpoints_whole(tmp_path: Path) -> None:
    _trainer(tmp_path).train()
    first = weights(tmp_path / "checkpoint-2")
    trainer = _trainer(tmp_path, warmup_steps=1)  # a different run
    trainer.train()  # saves checkpoint-2 and checkpoint-4 again, over the first run's
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "checkpoint-4"]
    assert_loadable(tmp_path / "checkpoint-2")
    assert any(not torch.equal(first[k], v) for k, v in weights(tmp_path / "checkpoint-2").items())
