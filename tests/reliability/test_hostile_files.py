"""Hostile files: nothing hf_qat loads from disk or the hub runs code, and oversized or malformed
JSON in a checkpoint is refused with an error naming the file."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from testing_utils import (
    inputs_of,
    quant_config,
    text_batches,
    tiny_bert,
    tiny_text_dataset,
)
from transformers import AutoModelForSequenceClassification

import hf_qat
from hf_qat import (
    CompressionStateError,
    NNCFConfig,
    create_compressed_model,
    load_state,
    register_default_init_args,
)
from hf_qat.transformers import QATTrainer, QATTrainingArguments, check_checkpoint, save_qat_model

HF_QAT_SOURCE = Path(hf_qat.__file__).parent


class RunsACommand:
    """Unpickling this runs ``touch <marker>`` (what an attacker would replace with anything else)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_file(path: Path, marker: Path, kind: str) -> Path:
    if kind == "raw pickle":
        path.write_bytes(pickle.dumps({"weight": torch.zeros(2), "x": RunsACommand(marker)}))
    else:  # a regular torch.save zip archive whose data.pkl names os.system
        torch.save({"weight": torch.zeros(2), "x": RunsACommand(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


@pytest.mark.parametrize("kind", ["raw pickle", "torch.save"])
def test_the_hostile_file_really_runs_a_command_when_unpickled(tmp_path: Path, marker: Path, kind: str) -> None:
    """The exploit used below is real: plain torch.load (weights_only=False) runs it."""
    path = hostile_file(tmp_path / "model.pth", marker, kind)
    if kind == "raw pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pth", "checkpoint.pt", "last.ckpt"])
@pytest.mark.parametrize("kind", ["raw pickle", "torch.save"])
def test_load_state_refuses_a_pickle_that_runs_code(tmp_path: Path, marker: Path, name: str, kind: str) -> None:
    _, model = create_compressed_model(
        tiny_bert(), register_default_init_args(NNCFConfig.from_dict(quant_config()), [inputs_of(b) for b in text_batches()])
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = hostile_file(tmp_path / name, marker, kind)
    with pytest.raises(CompressionStateError, match=rf"Refused to load {re.escape(str(path))}.*weights_only=True") as err:
        load_state(model, path)
    assert "never unpickles arbitrary objects" in str(err.value)
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_state_reads_tensor_only_pickles_and_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), [inputs_of(b) for b in text_batches()])
    _, model = create_compressed_model(tiny_bert(), config)
    state = {k: v.clone() + 0.5 if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "compression_state": {}}, tmp_path / "nncf.pth")  # NNCF's checkpoint layout
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    for path in (tmp_path / "nncf.pth", tmp_path / "model.safetensors"):
        _, fresh = create_compressed_model(tiny_bert(), config)
        assert load_state(fresh, path, is_resume=True) == len(state)
        assert all(torch.equal(state[k], v) for k, v in fresh.state_dict().items())


def test_no_unsafe_loader_in_hf_qat_source() -> None:
    """Every torch.load in hf_qat passes weights_only=True; nothing calls pickle/joblib/dill/marshal loaders."""
    offenders = []
    for path in HF_QAT_SOURCE.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(([^()]*(?:\([^()]*\)[^()]*)*)\)", text):
            if "weights_only=True" not in match.group(1):
                offenders.append(f"{path}: {match.group(0)}")
        offenders += [f"{path}: {m}" for m in re.findall(r"\b(?:pickle|cPickle|dill|joblib|marshal|cloudpickle)\.loads?\(", text)]
        offenders += [f"{path}: {m}" for m in re.findall(r"weights_only\s*=\s*False|trust_remote_code\s*=\s*True", text)]
    assert not offenders, offenders


# -- QAT checkpoints --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    args = QATTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=8,
        max_steps=2,
        save_steps=2,
        save_strategy="steps",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        num_calibration_samples=16,
    )
    QATTrainer(model=tiny_bert(), args=args, train_dataset=tiny_text_dataset()).train()
    return out / "checkpoint-2"


def copy_of(checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoint, tmp_path / "checkpoint-2"))


def resume(folder: Path, tmp_path: Path) -> None:
    args = QATTrainingArguments(
        output_dir=str(tmp_path / "resumed"),
        per_device_train_batch_size=8,
        max_steps=4,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
    )
    QATTrainer(model=tiny_bert(), args=args, train_dataset=tiny_text_dataset()).train(resume_from_checkpoint=str(folder))


@pytest.mark.parametrize("victim", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_resume_refuses_hostile_trainer_pickles(checkpoint: Path, tmp_path: Path, marker: Path, victim: str) -> None:
    folder = copy_of(checkpoint, tmp_path)
    hostile_file(folder / victim, marker, "torch.save")
    with pytest.raises(CompressionStateError, match=r"weights_only=True\) refuses to build.*Nothing in it was run"):
        resume(folder, tmp_path)
    assert not marker.exists()


def test_checkpoint_with_pickled_weights_only_is_refused(checkpoint: Path, tmp_path: Path, marker: Path) -> None:
    folder = copy_of(checkpoint, tmp_path)
    (folder / "model.safetensors").unlink()
    hostile_file(folder / "pytorch_model.bin", marker, "torch.save")
    with pytest.raises(CompressionStateError, match="holds no model.safetensors"):
        resume(folder, tmp_path)
    with pytest.raises(pickle.UnpicklingError, match="GLOBAL posix.system"):  # transformers: weights_only=True
        AutoModelForSequenceClassification.from_pretrained(folder)
    assert not marker.exists()


# -- oversized and malformed JSON ---------------------------------------------------------------------

BAD_JSON = {
    "truncated": b'{"builder_state": {"quantization": ',
    "not utf-8": b'{"builder_state": "\xff\xfe"}',
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "NaN": b'{"builder_state": NaN}',
    "duplicate keys": b'{"builder_state": {}, "builder_state": {}}',
    "huge integer": b'{"builder_state": ' + b"9" * 5000 + b"}",
    "wrong types": json.dumps(
        {
            "builder_state": {
                "quantization": {
                    "quantizer_setup": {
                        "quantization_points": {
                            "0": {
                                "target_point": {"target_type": {"name": "OPERATION_WITH_WEIGHTS"}, "target_node_name": "x"},
                                "qspec": {"num_bits": "8", "scale_shape": [-1]},
                            }
                        }
                    },
                    "version": 2,
                }
            }
        }
    ).encode(),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_malformed_compression_state_json_is_refused_before_training(checkpoint: Path, tmp_path: Path, case: str) -> None:
    folder = copy_of(checkpoint, tmp_path)
    (folder / "compression_state.json").write_bytes(BAD_JSON[case])
    with pytest.raises(CompressionStateError, match="compression_state") as err:
        check_checkpoint(folder)
    assert "resume_from_checkpoint" in str(err.value) or "malformed" in str(err.value)
    with pytest.raises(CompressionStateError):
        resume(folder, tmp_path)
    assert not (tmp_path / "resumed").exists() or not list((tmp_path / "resumed").iterdir())


@pytest.mark.parametrize("name", ["compression_state.json", "config.json"])
def test_oversized_json_is_refused_without_reading_it(
    checkpoint: Path, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hf_qat.utils import jsonfile

    folder = copy_of(checkpoint, tmp_path)
    limit = max(p.stat().st_size for p in folder.glob("*.json")) + 100
    monkeypatch.setattr(jsonfile, "MAX_JSON_BYTES", limit)
    path = folder / name
    data = json.loads(path.read_text())
    data["padding"] = "x" * limit
    path.write_text(json.dumps(data))
    with pytest.raises(CompressionStateError, match=rf"{re.escape(str(path))}: it is \d+ bytes, more than the {limit}"):
        check_checkpoint(folder)


@pytest.mark.parametrize("case", ["truncated", "not utf-8", "deeply nested"])
def test_malformed_config_json_is_refused_before_training(checkpoint: Path, tmp_path: Path, case: str) -> None:
    folder = copy_of(checkpoint, tmp_path)
    (folder / "config.json").write_bytes(BAD_JSON[case])
    with pytest.raises(CompressionStateError, match=r"config\.json"):
        check_checkpoint(folder)


def test_malformed_quantization_config_in_config_json_fails_clearly_on_load(tmp_path: Path) -> None:
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), [inputs_of(b) for b in text_batches()])
    ctrl, model = create_compressed_model(tiny_bert(), config)
    folder = save_qat_model(model, ctrl, tmp_path / "saved")
    data = json.loads((folder / "config.json").read_text())
    points = data["quantization_config"]["compression_state"]["builder_state"]["quantization"]["quantizer_setup"][
        "quantization_points"
    ]
    next(iter(points.values()))["qspec"]["scale_shape"] = [0]
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CompressionStateError, match=r"scale_shape.*malformed"):
        AutoModelForSequenceClassification.from_pretrained(folder)
