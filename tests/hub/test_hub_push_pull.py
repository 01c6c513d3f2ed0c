"""Push QAT models to the project's test hub (127.0.0.1) and pull them back, through the real clients."""

import json

import numpy as np
import pytest
import torch
from testing_utils import inputs_of, quant_config, text_batches, tiny_bert, tiny_text_dataset
from transformers import AutoModelForSequenceClassification

import hf_qat
from hf_qat import NNCFConfig, create_compressed_model, register_default_init_args
from hf_qat.transformers import QATTrainer, QATTrainingArguments

QAT_FILES = {"model.safetensors", "config.json", "compression_state.json", "nncf_config.json", "model.onnx", "README.md",
             "openvino_model.xml", "openvino_model.bin"}  # fmt: skip
#: pickles and Trainer state never leave the machine (the OpenVINO weights file is the one allowed .bin)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")


def _pickle_like(name: str) -> bool:
    return name.endswith(PICKLE_SUFFIXES) and name != "openvino_model.bin"


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_trainer_push_is_one_commit_and_pulls_back_bit_for_bit(hub, tmp_path):
    ds = tiny_text_dataset()
    args = QATTrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        report_to=[],
        use_cpu=True,
        save_strategy="steps",
        save_steps=2,
        disable_tqdm=True,
        num_calibration_samples=16,
        hub_model_id="test-user/bert-qat",
        eval_strategy="steps",
        eval_steps=4,
    )
    acc = hf_qat.load_metric("accuracy")
    trainer = QATTrainer(
        model=tiny_bert(),
        args=args,
        train_dataset=ds,
        eval_dataset=ds,
        compute_metrics=lambda p: acc.compute(predictions=p.predictions.argmax(-1), references=p.label_ids),
    )
    trainer.train()
    trainer.push_to_hub()
    # the hub's "initial commit" (.gitattributes) and exactly one push commit
    assert [c.message for c in hub.commits("test-user/bert-qat")][0] == "End of training"
    assert len(hub.commits("test-user/bert-qat")) == 2
    files = hub.files("test-user/bert-qat")
    assert QAT_FILES <= set(files)
    assert not any(_pickle_like(f) or f.startswith("checkpoint-") for f in files)
    config = json.loads(files["config.json"])
    assert config["quantization_config"]["quant_method"] == "hf_qat"

    pulled = AutoModelForSequenceClassification.from_pretrained("test-user/bert-qat")
    assert pulled.is_quantized and pulled._hf_qat_ctrl is not None
    batch = {"input_ids": torch.tensor(ds[:8]["input_ids"]), "attention_mask": torch.tensor(ds[:8]["attention_mask"])}
    assert torch.equal(logits(trainer.model, batch), logits(pulled, batch))

    session = hf_qat.load_onnx_from_hub("test-user/bert-qat")
    feed = {k: v.numpy() for k, v in batch.items()}
    out = session.run(["logits"], feed)[0]
    assert np.abs(out - logits(pulled, batch).numpy()).max() < 1e-3
    compiled = hf_qat.load_onnx_from_hub("test-user/bert-qat", runtime="openvino")
    ov_out = next(iter(compiled([feed["input_ids"], feed["attention_mask"]]).values()))
    assert (ov_out.argmax(-1) == out.argmax(-1)).all()


def test_bare_api_push_with_model_card(hub):
    batches = [inputs_of(b) for b in text_batches()]
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), batches)
    ctrl, model = create_compressed_model(tiny_bert(), config)
    results = {"task": "text-classification", "metric": "accuracy", "values": {"fp32": 0.91, "int8": 0.905, "int8_onnx": 0.905}}
    hf_qat.push_to_hub(
        model, ctrl, "test-user/bare-qat", base_model="google-bert/bert-base-uncased", dataset="glue", results=results
    )
    files = hub.files("test-user/bare-qat")
    assert QAT_FILES | {"qat_results.json"} <= set(files)
    from huggingface_hub import ModelCard

    card = ModelCard(files["README.md"].decode())
    data = card.data.to_dict()
    assert data["base_model"] == "google-bert/bert-base-uncased" and data["base_model_relation"] == "quantized"
    assert {"hf_qat", "qat", "int8", "onnx", "nncf"} <= set(data["tags"])
    assert data["datasets"] == ["glue"] and data["library_name"] == "transformers"
    metrics = data["model-index"][0]["results"][0]["metrics"]
    assert [m["value"] for m in metrics] == [0.91, 0.905]
    assert "## Quantization scheme" in card.text and 'from_pretrained("test-user/bare-qat")' in card.text

    pulled = AutoModelForSequenceClassification.from_pretrained("test-user/bare-qat")
    assert torch.equal(logits(model, batches[0]), logits(pulled, batches[0]))


def test_push_without_ir_when_openvino_cannot_convert(hub, monkeypatch, caplog):
    """A model OpenVINO cannot convert is still pushed (checkpoint, model.onnx), without an IR and saying why."""
    import logging

    from hf_qat.onnx import openvino as ov_module

    def refuse(*args, **kwargs):
        raise hf_qat.ExportError("OpenVINO could not convert model.onnx: unsupported operation Foo")

    monkeypatch.setattr(ov_module, "convert_to_openvino", refuse)
    batches = [inputs_of(b) for b in text_batches()]
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), batches)
    ctrl, model = create_compressed_model(tiny_bert(), config)
    with caplog.at_level(logging.WARNING, logger="hf_qat"):
        hf_qat.push_to_hub(model, ctrl, "test-user/no-ir")
    files = hub.files("test-user/no-ir")
    assert "model.onnx" in files and "model.safetensors" in files
    assert not any(f.startswith("openvino_model") for f in files)
    assert any("holds no OpenVINO IR" in r.getMessage() and "Foo" in r.getMessage() for r in caplog.records)
    assert "OVModelFor" not in files["README.md"].decode()  # the card offers no IR it does not have


def test_pull_reads_only_json_and_safetensors(hub):
    batches = [inputs_of(b) for b in text_batches()]
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), batches)
    ctrl, model = create_compressed_model(tiny_bert(), config)
    hf_qat.push_to_hub(model, ctrl, "test-user/reads")
    hub.requests.clear()
    AutoModelForSequenceClassification.from_pretrained("test-user/reads")
    fetched = [p for m, p in hub.requests if m == "GET" and "/resolve/" in p]
    assert fetched and all(p.endswith((".json", ".safetensors")) for p in fetched), fetched


def test_run_qat_push_to_hub(hub, tmp_path):
    from run_qat_utils import common, load_script, sentences, tiny_text_model, write_jsonl

    run_qat = load_script()
    model = tiny_text_model(tmp_path / "model")
    rows = sentences(40)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:32])
    valid = write_jsonl(tmp_path / "valid.jsonl", rows[32:])
    out = tmp_path / "out"
    args = ["--model_name", str(model), "--train_file", train, "--validation_file", valid, *common(out)]
    run_qat.main(args + ["--push_to_hub", "true", "--hub_model_id", "test-user/run-qat"])
    commits = hub.commits("test-user/run-qat")
    assert [c.message for c in commits][0] == "hf_qat: quantization-aware training" and len(commits) == 2
    files = hub.files("test-user/run-qat")
    assert QAT_FILES | {"qat_results.json", "tokenizer.json"} <= set(files)
    assert not any(f.startswith("fp32/") or _pickle_like(f) for f in files)
    results = json.loads(files["qat_results.json"])
    card = files["README.md"].decode()
    assert f"{results['values']['int8_onnx']:.4f}" in card


def test_run_qat_push_with_a_bad_token_fails_before_training(hub, tmp_path, monkeypatch):
    from run_qat_utils import common, load_script, sentences, tiny_text_model, write_jsonl

    run_qat = load_script()
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    model = tiny_text_model(tmp_path / "model")
    train = write_jsonl(tmp_path / "train.jsonl", sentences(16))
    out = tmp_path / "out"
    with pytest.raises(run_qat.RunError, match="rejected the token"):
        run_qat.main(
            [
                "--model_name",
                str(model),
                "--train_file",
                train,
                *common(out),
                "--push_to_hub",
                "true",
                "--hub_model_id",
                "test-user/x",
            ]
        )
    assert not out.exists() or not any(out.iterdir())


@pytest.fixture
def no_backoff_sleep(monkeypatch):
    """Record the client's retry waits instead of sleeping (its retry logic is untouched)."""
    import types

    from huggingface_hub.utils import _http

    waits = []
    fake_time = types.ModuleType("time")
    fake_time.__dict__.update(_http.time.__dict__)
    fake_time.sleep = waits.append
    monkeypatch.setattr(_http, "time", fake_time)
    return waits


def saved_model(tmp_path):
    from hf_qat.transformers import save_qat_model

    batches = [inputs_of(b) for b in text_batches()]
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), batches)
    ctrl, model = create_compressed_model(tiny_bert(), config)
    folder = save_qat_model(model, ctrl, tmp_path / "saved")
    return folder, {p.name: p.read_bytes() for p in folder.iterdir()}


def test_push_refused_before_upload(hub, tmp_path, monkeypatch):
    from hf_qat.hub import push_qat_folder

    folder, local = saved_model(tmp_path)
    hub.requests.clear()
    with pytest.raises(hf_qat.HubError, match="not to 'someone-else'"):
        push_qat_folder(folder, "someone-else/qat")
    with pytest.raises(hf_qat.HubError, match="no usable Hugging Face token"):
        push_qat_folder(folder, "test-user/qat", token="hf_wrong")
    assert not [p for m, p in hub.requests if m != "GET"]  # nothing created, nothing uploaded
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == local


@pytest.mark.parametrize("fault", ["lfs_500", "commit_drop"])
def test_failed_push_leaves_the_repo_unchanged(hub, tmp_path, no_backoff_sleep, fault, monkeypatch):
    from hub_server import Fault

    from hf_qat.hub import push as hub_module
    from hf_qat.hub import push_qat_folder

    monkeypatch.setattr(hub_module, "_sleep", no_backoff_sleep.append)  # hf_qat's whole-push retries

    folder, local = saved_model(tmp_path)
    repo = f"test-user/faulty-{fault}"
    push_qat_folder(folder, repo)  # a first, complete push
    first = hub.files(repo)
    (folder / "model.safetensors").write_bytes(local["model.safetensors"][:-8] + b"\0" * 8)  # a changed model
    if fault == "lfs_500":
        hub.faults.append(Fault(method="PUT", path_contains="/lfs/", status=500, times=1000))
    else:
        hub.faults.append(Fault(method="POST", path_contains="/commit/", drop=True, times=1000))
    with pytest.raises(hf_qat.HubError, match="is unchanged"):
        push_qat_folder(folder, repo)
    hub.faults.clear()
    assert hub.files(repo) == first  # the previous push, whole
    assert len(no_backoff_sleep) <= 3 * 5 + 2  # bounded retries: 3 pushes of at most 5 client retries, 2 waits between
    assert (folder / "config.json").read_bytes() == local["config.json"]


def test_hub_strategy_pushes_only_qat_files(hub, tmp_path):
    ds = tiny_text_dataset()
    args = QATTrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        report_to=[],
        use_cpu=True,
        save_strategy="steps",
        save_steps=2,
        disable_tqdm=True,
        num_calibration_samples=16,
        push_to_hub=True,
        hub_model_id="test-user/every-save",
        hub_strategy="every_save",
    )
    trainer = QATTrainer(model=tiny_bert(), args=args, train_dataset=ds)
    trainer.train()
    messages = [c.message for c in hub.commits("test-user/every-save")]
    assert "Training in progress, step 2" in messages and "Training in progress, step 4" in messages
    files = set(hub.files("test-user/every-save"))
    assert {"model.safetensors", "config.json", "compression_state.json", "nncf_config.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files), files
