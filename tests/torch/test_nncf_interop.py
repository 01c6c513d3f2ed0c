"""Interop with real NNCF, on fixtures NNCF 2.19 and NNCF 3.4 made (scripts/nncf_interop/regenerate.sh).

Every direction:
- NNCF 2.19 ``.pth`` -> hf_qat (``create_compressed_model(..., compression_state=...)`` + ``load_state``);
- NNCF 3.4 ``get_config`` + ``state_dict`` (``nncf.quantize``) -> hf_qat (``load_nncf3``);
- hf_qat -> NNCF 2.19 and NNCF 3.4: hf_qat rebuilds its checkpoints here; they must equal (keys, shapes, states)
  what the referees restored with NNCF's own API, and hf_qat's logits must equal the logits NNCF computed from them.
Outputs are compared with NNCF's within 1e-5. The last test runs real NNCF when its environments exist.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hf_qat
from hf_qat import CompressionStateError

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "nncf_interop"
FIXTURES = ROOT / "tests" / "fixtures" / "nncf_interop"
sys.path.insert(0, str(SCRIPTS))

from common import build, calibration_batches, eval_inputs, logits_of  # noqa: E402
from hfqat_read import restore_nncf2, restore_nncf3  # noqa: E402
from hfqat_write import compress, manifest  # noqa: E402

TOLERANCE = 1e-5
NNCF2_ARCHS = ["bert", "distilbert"]
NNCF3_ARCHS = ["bert", "distilbert", "gpt2"]


def _logits(name: str) -> torch.Tensor:
    return load_file(FIXTURES / name)["logits"]


def _state_dict_unchanged(model, before):
    after = model.state_dict()
    return set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


# -- NNCF -> hf_qat ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", NNCF2_ARCHS)
def test_nncf2_checkpoint_gives_nncfs_outputs(arch):
    ctrl, model = restore_nncf2(arch, FIXTURES / f"nncf2_{arch}.pth")
    diff = (logits_of(model, arch) - _logits(f"nncf2_{arch}_logits.safetensors")).abs().max().item()
    assert diff <= TOLERANCE
    # NNCF places most activation quantizers on operation outputs; they were restored, not dropped
    outputs = [qp for qp in ctrl.setup.points.values() if qp.is_output]
    assert len(outputs) >= 20 and len(ctrl.quantizers) == len(ctrl.setup.groups())


@pytest.mark.parametrize("arch", NNCF3_ARCHS)
def test_nncf3_quantized_model_gives_nncfs_outputs(arch):
    ctrl, model = restore_nncf3(arch, FIXTURES)
    diff = (logits_of(model, arch) - _logits(f"nncf3_{arch}_logits.safetensors")).abs().max().item()
    assert diff <= TOLERANCE
    config = json.loads((FIXTURES / f"nncf3_{arch}_config.json").read_text())
    assert len(ctrl.quantizers) == len(config["compression_state"])


def test_nncf3_flow_load_state_dict_takes_nncf_keys():
    """NNCF 3's own restore flow (load_from_config, then model.load_state_dict(sd)) works on hf_qat's model."""
    config = json.loads((FIXTURES / "nncf3_bert_config.json").read_text())
    ctrl, model = hf_qat.load_nncf3(build("bert"), config, example_input=calibration_batches("bert")[0])
    model.load_state_dict(load_file(FIXTURES / "nncf3_bert_state.safetensors"))
    diff = (logits_of(model.eval(), "bert") - _logits("nncf3_bert_logits.safetensors")).abs().max().item()
    assert diff <= TOLERANCE


@pytest.mark.parametrize("source", ["nncf2", "nncf3"])
def test_restored_nncf_model_fine_tunes_and_exports(tmp_path, source):
    """A model NNCF quantized continues training in QATTrainer and exports INT8 ONNX that matches it."""
    from datasets import Dataset

    from hf_qat.transformers import QATTrainer, QATTrainingArguments

    if source == "nncf2":
        ctrl, model = restore_nncf2("bert", FIXTURES / "nncf2_bert.pth")
    else:
        ctrl, model = restore_nncf3("bert", FIXTURES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 128, (16, 16), generator=g)
    data = Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * 16] * 16, "labels": (ids[:, 0] > 64).long().tolist()}
    )
    args = QATTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, learning_rate=1e-3,
        report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = QATTrainer(model=model, args=args, train_dataset=data, compression_ctrl=ctrl)
    trainer.train()
    after = model.state_dict()
    scale = next(k for k in after if k.endswith("|OUTPUT.scale") or k.endswith("|OUTPUT.input_range"))
    assert not torch.equal(after[scale], before[scale])  # output quantizers train
    result = ctrl.export_model(str(tmp_path / "model.onnx"), model_args=eval_inputs("bert"))
    assert all(r.ok for r in result.verification) and result.num_activation_quantizers >= 20


def test_transformers_4_state_is_refused_naming_missing_operations():
    """A state traced under another transformers version is refused whole, naming the operations."""
    ckpt = hf_qat.load_checkpoint(FIXTURES / "nncf2_bert.pth")
    state = json.loads(json.dumps(ckpt["compression_state"]))
    points = state["builder_state"]["quantization"]["quantizer_setup"]["quantization_points"]
    renamed = next(
        p for p in points.values() if p["target_point"]["target_node_name"].endswith("BertEmbeddings[embeddings]/__add___0")
    )
    renamed["target_point"]["target_node_name"] = renamed["target_point"]["target_node_name"].replace("__add___0", "__iadd___0")
    model = build("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from common import nncf_config

    with pytest.raises(CompressionStateError, match=r"(?s)names 1 operation.*__iadd___0\|OUTPUT.*runs: __add___0"):
        hf_qat.create_compressed_model(model, nncf_config("bert"), compression_state=state)
    assert not hf_qat.torch.model_creation.is_compressed(model) and _state_dict_unchanged(model, before)


def test_module_classes_renamed_by_transformers_still_match():
    """Node names carry class names that transformers renamed (DistilBERT's attention is MultiHeadSelfAttention in
    transformers 4, DistilBertSelfAttention in 5); points resolve by attribute path, so the state applies exactly."""
    ckpt = hf_qat.load_checkpoint(FIXTURES / "nncf2_distilbert.pth")
    text = json.dumps(ckpt["compression_state"])
    assert "DistilBertSelfAttention[attention]" in text
    old = "MultiHeadSelfAttention[attention]"  # as a transformers 4 checkpoint names it, in the state and the keys
    state = json.loads(text.replace("DistilBertSelfAttention[attention]", old))
    state_dict = {k.replace("DistilBertSelfAttention[attention]", old): v for k, v in ckpt["state_dict"].items()}
    from common import nncf_config

    ctrl, model = hf_qat.create_compressed_model(build("distilbert"), nncf_config("distilbert"), compression_state=state)
    hf_qat.load_state(model, state_dict, is_resume=True)
    diff = (logits_of(model.eval(), "distilbert") - _logits("nncf2_distilbert_logits.safetensors")).abs().max().item()
    assert diff <= TOLERANCE


def test_state_of_another_architecture_is_refused():
    ckpt = hf_qat.load_checkpoint(FIXTURES / "nncf2_bert.pth")
    from common import nncf_config

    model = build("distilbert")
    with pytest.raises(
        CompressionStateError, match=r"(?s)another architecture.*DistilBertForSequenceClassification has no module 'bert'"
    ):
        hf_qat.create_compressed_model(model, nncf_config("distilbert"), compression_state=ckpt["compression_state"])
    assert not hf_qat.torch.model_creation.is_compressed(model)
    config = json.loads((FIXTURES / "nncf3_bert_config.json").read_text())
    with pytest.raises(CompressionStateError, match=r"names \d+ operation\(s\) this model does not run"):
        hf_qat.load_nncf3(build("distilbert"), config, example_input=calibration_batches("distilbert")[0])


def test_nncf3_config_naming_missing_operations_is_refused():
    config = json.loads((FIXTURES / "nncf3_bert_config.json").read_text())
    config["compression_state"][5]["hook_names_in_model"] = ["post_hooks.bert/encoder/attention/self/div/0__0.0"]
    model = build("bert")
    with pytest.raises(CompressionStateError, match=r"(?s)names 1 operation.*self/div/0__0\.0 \(nearest"):
        hf_qat.load_nncf3(model, config, example_input=calibration_batches("bert")[0])
    assert not hf_qat.torch.model_creation.is_compressed(model)


def test_nncf3_non_quantizer_entry_is_refused():
    config = json.loads((FIXTURES / "nncf3_bert_config.json").read_text())
    config["compression_state"][0]["module_cls_name"] = "INT4SymmetricWeightsDecompressor"
    with pytest.raises(CompressionStateError, match="INT4SymmetricWeightsDecompressor"):
        hf_qat.load_nncf3(build("bert"), config, example_input=calibration_batches("bert")[0])


def test_nncf3_state_dict_of_another_model_loads_nothing():
    config = json.loads((FIXTURES / "nncf3_bert_config.json").read_text())
    state_dict = load_file(FIXTURES / "nncf3_bert_state.safetensors")
    state_dict["__nncf_hooks.post_hooks.bert/pooler/activation/tanh/0__0.0.scale"] = torch.ones(3)
    model = build("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CompressionStateError, match="does not fit"):
        hf_qat.load_nncf3(model, config, state_dict, example_input=calibration_batches("bert")[0])
    assert not hf_qat.torch.model_creation.is_compressed(model) and _state_dict_unchanged(model, before)


# -- hf_qat -> NNCF ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", NNCF2_ARCHS)
def test_hfqat_checkpoint_is_what_nncf2_restored(arch):
    expected = json.loads((FIXTURES / f"hfqat_{arch}_manifest.json").read_text())
    assert json.loads(json.dumps(manifest(arch), sort_keys=True))["nncf2"] == expected["nncf2"]
    ctrl, model = compress(arch)
    diff = (logits_of(model, arch) - _logits(f"nncf2_reads_hfqat_{arch}_logits.safetensors")).abs().max().item()
    assert diff <= TOLERANCE


@pytest.mark.parametrize("arch", NNCF3_ARCHS)
def test_hfqat_nncf3_files_are_what_nncf3_restored(arch):
    expected = json.loads((FIXTURES / f"hfqat_{arch}_manifest.json").read_text())
    assert json.loads(json.dumps(manifest(arch), sort_keys=True))["nncf3"] == expected["nncf3"]
    ctrl, model = compress(arch)
    diff = (logits_of(model, arch) - _logits(f"nncf3_reads_hfqat_{arch}_logits.safetensors")).abs().max().item()
    assert diff <= TOLERANCE


def test_nncf2_names_round_trip_in_hfqat():
    """hf_qat reads the NNCF-named state dict it writes (load_state maps the names back)."""
    ctrl, model = compress("bert")
    sd = ctrl.nncf_state_dict()
    assert any(".pre_ops.0.op." in k for k in sd) and any(k.startswith("_nncf.external_quantizers.") for k in sd)
    assert not any("weight_quantizer" in k or k.startswith("_hf_qat") for k in sd)
    from common import nncf_config

    fresh_ctrl, fresh = hf_qat.create_compressed_model(
        build("bert"), nncf_config("bert"), compression_state=ctrl.get_compression_state()
    )
    assert hf_qat.load_state(fresh, sd, is_resume=True) == len(sd)
    assert torch.equal(logits_of(fresh.eval(), "bert"), logits_of(model, "bert"))


def test_qattrainer_folder_converts_to_an_nncf2_checkpoint(tmp_path):
    """The folder QATTrainer saves becomes the NNCF 2 checkpoint of the same model (same keys and tensors)."""
    from hf_qat.transformers import save_qat_model

    ctrl, model = compress("bert")
    save_qat_model(model, ctrl, tmp_path)
    ckpt = hf_qat.nncf_checkpoint_from_folder(tmp_path)
    expected = ctrl.nncf_state_dict()
    assert set(ckpt["state_dict"]) == set(expected)
    assert all(torch.equal(ckpt["state_dict"][k], expected[k]) for k in expected)
    assert ckpt["compression_state"]["builder_state"] == ctrl.get_compression_state()["builder_state"]
    with pytest.raises(CompressionStateError, match="no model.safetensors"):
        hf_qat.nncf_checkpoint_from_folder(tmp_path / "missing")


# -- real NNCF (opt-in: scripts/nncf_interop/make_envs.sh) ---------------------------------------------
ENVS = Path(os.environ.get("HF_QAT_INTEROP_ENVS", Path.home() / ".cache" / "hf_qat" / "interop-envs"))


@pytest.mark.slow
@pytest.mark.skipif(
    not ((ENVS / "legacy" / "bin" / "python").exists() and (ENVS / "nncf3" / "bin" / "python").exists()),
    reason="NNCF 2.19 / 3.4 environments not built (bash scripts/nncf_interop/make_envs.sh)",
)
def test_real_nncf_restores_hfqat_and_hfqat_restores_real_nncf(tmp_path):
    """hf_qat's checkpoints of today restored by real NNCF 2.19 and 3.4, and theirs by hf_qat, including RoBERTa,
    an architecture no fixture covers."""
    run = lambda *cmd, **kw: subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=1200, **kw)  # noqa: E731
    assert run(sys.executable, SCRIPTS / "hfqat_write.py", tmp_path).returncode == 0
    env = {**os.environ, "NNCF_TORCH_LEGACY_TRACING": "1", "NNCF_EXTENSION_LOAD_TIMEOUT": "600"}
    legacy = run(
        ENVS / "legacy" / "bin" / "python", SCRIPTS / "nncf2_referee.py", tmp_path, "bert", "distilbert", "roberta", env=env
    )
    assert legacy.returncode == 0, legacy.stdout[-3000:] + legacy.stderr[-3000:]
    nncf3 = run(ENVS / "nncf3" / "bin" / "python", SCRIPTS / "nncf3_referee.py", tmp_path)
    assert nncf3.returncode == 0, nncf3.stdout[-3000:] + nncf3.stderr[-3000:]
    for arch in ("bert", "distilbert", "roberta"):
        ours = load_file(tmp_path / f"hfqat_{arch}_logits.safetensors")["logits"]
        for reader in ("nncf2", "nncf3"):
            theirs = load_file(tmp_path / f"{reader}_reads_hfqat_{arch}_logits.safetensors")["logits"]
            assert (ours - theirs).abs().max().item() <= TOLERANCE, (arch, reader)
    read = run(sys.executable, SCRIPTS / "hfqat_read.py", tmp_path)
    assert read.returncode == 0, read.stdout[-3000:] + read.stderr[-3000:]
    shutil.rmtree(tmp_path, ignore_errors=True)
