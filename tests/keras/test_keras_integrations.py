"""Keras integrations: KerasQATTrainer (fit, checkpoints, resume, evaluation, export), save/load, hub push/pull, run_qat --framework tf."""

import json
import os
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras_hub")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import keras_hub
import tensorflow as tf

import hf_qat.keras as hqk
from hf_qat.core.layout import QUANTIZERS_FILE
from hf_qat.errors import CompressionStateError
from hf_qat.keras import hub as keras_io
from hf_qat.keras.trainer import KerasQATArguments, KerasQATTrainer
from hf_qat.utils import jsonfile

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(45)] + ["good", "bad", "movie", "great", "awful"]


def tiny_bert(dropout=0.0, with_preprocessor=False):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
        dropout=dropout,
    )
    pre = None
    if with_preprocessor:
        tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB)
        pre = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=16)
    return keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=pre, dropout=dropout)


def bert_data(n=32, seq=16, seed=0):
    rng = np.random.default_rng(seed)
    feats = {
        "token_ids": rng.integers(0, len(VOCAB), (n, seq)).astype("int32"),
        "padding_mask": np.ones((n, seq), "int32"),
        "segment_ids": np.zeros((n, seq), "int32"),
    }
    labels = (feats["token_ids"][:, 1] % 2).astype("int32")
    return tf.data.Dataset.from_tensor_slices((feats, labels)).batch(8), feats


def args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        num_calibration_samples=16,
        num_train_epochs=2,
        learning_rate=1e-3,
    )
    base.update(kw)
    return KerasQATArguments(**base)


def variables_of(model):
    return {v.path: v.numpy() for v in model.weights}


def test_trainer_trains_checkpoints_and_resumes_to_the_same_weights(tmp_path):
    ds, _feats = bert_data()
    full = KerasQATTrainer(tiny_bert(), args(tmp_path / "a"), train_dataset=ds, eval_dataset=ds)
    full.train()
    assert sorted(os.listdir(tmp_path / "a" / "out" / "checkpoints"))[:1] == ["checkpoint"]
    expected = variables_of(full.model)

    first = KerasQATTrainer(
        tiny_bert(),
        args(tmp_path / "b", num_train_epochs=1),
        train_dataset=ds,
        eval_dataset=ds,
    )
    first.train()
    resumed = KerasQATTrainer(
        tiny_bert(),
        args(tmp_path / "b", num_train_epochs=2),
        train_dataset=ds,
        eval_dataset=ds,
    )
    resumed.train(resume_from_checkpoint=True)
    assert resumed.ctrl.scheduler.current_epoch == 1
    got = variables_of(resumed.model)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert np.array_equal(got[name], value), name


def test_resume_from_a_foreign_checkpoint_is_refused(tmp_path):
    ds, _ = bert_data()
    plain = tiny_bert()
    path = tf.train.Checkpoint(model=plain).write(str(tmp_path / "plain"))
    trainer = KerasQATTrainer(tiny_bert(), args(tmp_path), train_dataset=ds)
    with pytest.raises(CompressionStateError, match="holds no compression state"):
        trainer.train(resume_from_checkpoint=path)
    assert not hqk.is_compressed(trainer.model)


def test_trainer_evaluates_exports_and_onnx_accuracy_matches(tmp_path):
    ds, _ = bert_data()
    trainer = KerasQATTrainer(
        tiny_bert(),
        args(tmp_path, export_formats="frozen_graph,saved_model,onnx,openvino"),
        train_dataset=ds,
        eval_dataset=ds,
    )
    trainer.train()
    tf_metrics = trainer.evaluate()
    exports = trainer.export()
    assert set(exports) == {"frozen_graph", "saved_model", "onnx", "openvino"}
    assert (tmp_path / "out" / "model.pb").is_file() and (tmp_path / "out" / "saved_model" / "saved_model.pb").is_file()
    ir = exports["openvino"].openvino  # the IR: int8 weights kept, f32 outputs agree with ONNX Runtime
    assert (tmp_path / "out" / "openvino_model.xml").is_file() and (tmp_path / "out" / "openvino_model.bin").is_file()
    assert ir.num_integer_weights >= ir.num_onnx_integer_weights == exports["onnx"].num_int8_weights > 0
    assert ir.check("f32").ok and ir.check("f32").top1_agreement == 1.0
    onnx_metrics = trainer.evaluate_onnx()
    assert onnx_metrics["onnx_samples"] == 32
    assert abs(onnx_metrics["onnx_accuracy"] - tf_metrics["eval_accuracy"]) <= 1 / 32


def test_saved_folder_loads_with_keras_hub_and_restores_quantizers(tmp_path):
    ds, feats = bert_data()
    trainer = KerasQATTrainer(tiny_bert(), args(tmp_path, num_train_epochs=1), train_dataset=ds)
    trainer.train()
    folder = trainer.save_model(str(tmp_path / "saved"))
    names = set(os.listdir(folder))
    assert {
        "config.json",
        "metadata.json",
        "model.weights.h5",
        "task.json",
        "compression_state.json",
        "nncf_config.json",
        QUANTIZERS_FILE,
    } <= names
    expected = trainer.model(feats, training=False).numpy()
    # keras-hub alone loads the float model (QAT-trained weights, no quantizers) ...
    plain = keras_hub.models.BertTextClassifier.from_preset(str(folder))
    assert not hqk.is_compressed(plain)
    # ... and hf_qat restores the quantizers with their learned ranges: identical outputs
    _ctrl, model = keras_io.restore_quantizers(plain, folder)
    assert np.array_equal(model(feats, training=False).numpy(), expected)
    _ctrl2, model2 = keras_io.from_pretrained(folder)
    assert np.array_equal(model2(feats, training=False).numpy(), expected)


def test_push_to_hub_and_pull_back_with_keras_hub(hub, tmp_path):
    ds, feats = bert_data()
    trainer = KerasQATTrainer(
        tiny_bert(),
        args(tmp_path, num_train_epochs=1),
        train_dataset=ds,
        eval_dataset=ds,
    )
    trainer.train()
    results = {
        "task": "text-classification",
        "metric": "accuracy",
        "values": {"fp32": 0.5, "int8": 0.5, "int8_onnx": 0.5},
    }
    trainer.push_to_hub("test-user/bert-keras-qat", results=results)
    commits = hub.commits("test-user/bert-keras-qat")
    assert len(commits) == 2  # the repo's initial commit and one push
    files = hub.files("test-user/bert-keras-qat")
    assert {
        "model.pb",
        "model.onnx",
        "saved_model/saved_model.pb",
        "compression_state.json",
        "nncf_config.json",
        QUANTIZERS_FILE,
        "README.md",
        "metadata.json",
        "task.json",
        "model.weights.h5",
    } <= set(files)
    assert "openvino_model.xml" in files and "openvino_model.bin" in files  # IR beside the INT8 ONNX
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) and f != "openvino_model.bin" for f in files)
    card = files["README.md"].decode() if isinstance(files["README.md"], bytes) else files["README.md"]
    assert "library_name: keras" in card and "hf://test-user/bert-keras-qat" in card
    assert json.loads(files["compression_state.json"]) == trainer.ctrl.get_compression_state()

    expected = trainer.model(feats, training=False).numpy()
    pulled = keras_hub.models.BertTextClassifier.from_preset("hf://test-user/bert-keras-qat")
    _ctrl, model = keras_io.restore_quantizers(pulled, "hf://test-user/bert-keras-qat")
    assert np.array_equal(model(feats, training=False).numpy(), expected)


@pytest.mark.slow
def test_run_qat_tf_text_classification_on_a_preset(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
    import run_qat

    preset = tmp_path / "preset"
    tiny_bert(with_preprocessor=True).save_to_preset(str(preset))
    rows = [
        {
            "text": f"{'good great' if i % 2 else 'bad awful'} movie w{i % 40}",
            "label": i % 2,
        }
        for i in range(48)
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "run"
    results = run_qat.main(
        [
            "--framework",
            "tf",
            "--model_name",
            str(preset),
            "--train_file",
            str(data),
            "--max_seq_length",
            "16",
            "--validation_split_percentage",
            "20",
            "--num_train_epochs",
            "1",
            "--finetune_fp32_epochs",
            "2",
            "--learning_rate",
            "1e-3",
            "--finetune_fp32_learning_rate",
            "1e-3",
            "--num_calibration_samples",
            "16",
            "--output_dir",
            str(out),
            "--latency_runs",
            "2",
            "--per_device_train_batch_size",
            "8",
        ]
    )
    assert results["framework"] == "tensorflow" and results["eval_samples"] == 10
    timings = results["timings_s"]  # every phase timed, in run order, summing to about the total
    assert list(timings)[:4] == ["load", "fp32_finetune", "fp32_evaluation", "compression"], timings
    assert {"training", "export", "int8_evaluation", "onnx_evaluation", "save", "card", "total"} <= set(timings)
    assert 0.8 * timings["total"] <= sum(v for k, v in timings.items() if k != "total") <= timings["total"]
    values = results["values"]
    assert all(values[k] is not None for k in ("fp32", "int8", "int8_onnx"))
    assert abs(values["int8"] - values["int8_onnx"]) <= 0.1 + 1e-9  # one of 10 eval rows
    for name in (
        "model.onnx",
        "model.pb",
        "README.md",
        "qat_results.json",
        "compression_state.json",
        QUANTIZERS_FILE,
    ):
        assert (out / name).is_file(), name
    ctrl, _model = keras_io.from_pretrained(out)
    assert len(ctrl.quantizers) == results["quantizers"]["weights"] + results["quantizers"]["activations"]


def test_run_qat_tf_rejects_unknown_task_before_loading(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
    import run_qat

    with pytest.raises(run_qat.RunError, match="not supported by the TF path"):
        run_qat.main(
            [
                "--framework",
                "tf",
                "--task",
                "causal-lm",
                "--output_dir",
                str(tmp_path / "x"),
            ]
        )
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_run_qat_tf_image_classification_on_a_vit_preset(tmp_path):
    from PIL import Image

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
    import run_qat

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(16, 16, 3), patch_size=4, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    converter = keras_hub.layers.ViTImageConverter(image_size=(16, 16), scale=1 / 255.0)
    pre = keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter)
    preset = tmp_path / "vit"
    keras_hub.models.ViTImageClassifier(backbone, num_classes=2, preprocessor=pre).save_to_preset(str(preset))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        bright = i % 2
        pixels = (rng.integers(0, 96, (16, 16, 3)) + 150 * bright).astype("uint8")
        path = tmp_path / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        rows.append({"image": str(path), "label": bright})
    data = tmp_path / "images.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "run"
    results = run_qat.main(
        [
            "--framework",
            "tf",
            "--task",
            "image-classification",
            "--model_name",
            str(preset),
            "--train_file",
            str(data),
            "--validation_split_percentage",
            "20",
            "--num_train_epochs",
            "1",
            "--finetune_fp32_epochs",
            "2",
            "--learning_rate",
            "1e-3",
            "--finetune_fp32_learning_rate",
            "1e-3",
            "--num_calibration_samples",
            "16",
            "--output_dir",
            str(out),
            "--latency_runs",
            "2",
            "--per_device_train_batch_size",
            "8",
        ]
    )
    assert results["task"] == "image-classification" and results["eval_samples"] == 8
    points = json.loads((out / "compression_state.json").read_text())["builder_state"]["quantization"]["quantizer_setup"][
        "quantization_points"
    ]
    weights = [p["target_point"]["target_node_name"] for p in points.values() if p["target_point"]["input_port_id"] is None]
    # patch conv, position table, q/k/v/o, two MLP denses, the head
    assert len(weights) == results["quantizers"]["weights"] == 9
    assert any(n.endswith("patch_embedding") for n in weights) and any(n.endswith("position_embedding") for n in weights)
    assert results["values"]["int8_onnx"] is not None
    assert abs(results["values"]["int8"] - results["values"]["int8_onnx"]) <= 1 / 8 + 1e-9


def test_hostile_keras_file_is_refused_without_running_code(tmp_path):
    """A model.keras whose Lambda layer would run code on load: Keras' safe mode refuses it."""
    marker = tmp_path / "marker"
    folder = tmp_path / "hostile"
    folder.mkdir()
    inp = keras.Input((4,))
    touch = eval(f"lambda x: x + (open({str(marker)!r}, 'w').close() or 0)")  # no closure: Keras serializes the code
    out = keras.layers.Lambda(touch)(inp)
    keras.Model(inp, out).save(folder / "model.keras")
    marker.unlink(missing_ok=True)  # the lambda ran once while saving; loading must not run it again
    for name in ("compression_state.json", "nncf_config.json"):
        (folder / name).write_text("{}")
    with pytest.raises(ValueError, match="(?i)lambda|unsafe|safe_mode"):
        keras_io.from_pretrained(folder)
    assert not marker.exists()
    # the file is really hostile: loaded unsafely, its code runs
    keras.saving.load_model(folder / "model.keras", safe_mode=False)(np.zeros((1, 4), "float32"))
    assert marker.exists()


def test_malformed_or_oversized_compression_state_is_a_clear_error(tmp_path, monkeypatch):
    ds, _ = bert_data()
    trainer = KerasQATTrainer(tiny_bert(), args(tmp_path, num_train_epochs=1, save_checkpoints=False), train_dataset=ds)
    trainer.compress()
    folder = trainer.save_model(str(tmp_path / "saved"))
    (folder / "compression_state.json").write_text('{"builder_state": ')
    with pytest.raises(CompressionStateError, match="not valid JSON"):
        keras_io.restore_quantizers(tiny_bert(), folder)
    monkeypatch.setattr(jsonfile, "MAX_JSON_BYTES", 8)
    (folder / "compression_state.json").write_text(json.dumps(trainer.ctrl.get_compression_state()))
    with pytest.raises(CompressionStateError, match="more than the 8 bytes hf_qat reads"):
        keras_io.restore_quantizers(tiny_bert(), folder)


KILL_WORKER = """
import os, signal, sys
os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, {tests!r})
import tensorflow as tf
from keras_trainer_worker_support import run
saves = []
original = tf.train.CheckpointManager._record_state

def record_then_die(self):
    saves.append(1)
    if len(saves) == 3:  # epoch 2 (two records per save): data written, index not yet updated
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self)

tf.train.CheckpointManager._record_state = record_then_die
run({out!r}, epochs=2)
"""


@pytest.mark.slow
def test_sigkill_during_keras_checkpoint_save_resumes_to_the_same_weights(tmp_path):
    import subprocess

    support = tmp_path / "keras_trainer_worker_support.py"
    support.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        f"sys.path.insert(0, {os.path.join(os.path.dirname(__file__), '..')!r})\n"
        "from test_keras_integrations import KerasQATTrainer, args, bert_data, tiny_bert\n"
        "from pathlib import Path\n"
        "def run(out, epochs):\n"
        "    ds, _ = bert_data()\n"
        "    trainer = KerasQATTrainer(tiny_bert(), args(Path(out), num_train_epochs=epochs), train_dataset=ds)\n"
        "    trainer.train()\n"
        "    return trainer\n"
    )
    worker = tmp_path / "worker.py"
    worker.write_text(KILL_WORKER.format(tests=str(tmp_path), out=str(tmp_path / "killed")))
    proc = subprocess.run([sys.executable, str(worker)], check=False, capture_output=True, text=True, timeout=900)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpt_dir = tmp_path / "killed" / "out" / "checkpoints"
    assert tf.train.latest_checkpoint(str(ckpt_dir)).endswith("ckpt-1")  # the interrupted save is not the latest

    ds, _ = bert_data()
    resumed = KerasQATTrainer(tiny_bert(), args(tmp_path / "killed", num_train_epochs=2), train_dataset=ds)
    resumed.train(resume_from_checkpoint=True)
    straight = KerasQATTrainer(tiny_bert(), args(tmp_path / "straight", num_train_epochs=2), train_dataset=ds)
    straight.train()
    expected, got = variables_of(straight.model), variables_of(resumed.model)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert np.array_equal(got[name], value), name
