"""QATTrainer: compression inside Trainer, checkpoints, exact resume, ONNX evaluation, distillation."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from testing_utils import tiny_bert, tiny_text_dataset

from hf_qat import CompressionStateError, NNCFConfig
from hf_qat.transformers import QATTrainer, QATTrainingArguments, load_metric

ACCURACY = load_metric("accuracy")


def compute_metrics(p):
    return ACCURACY.compute(predictions=p.predictions.argmax(-1), references=p.label_ids)


def make_args(out, **kw):
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=1e-3,
        num_train_epochs=2,
        report_to=[],
        seed=0,
        use_cpu=True,
        save_strategy="steps",
        save_steps=4,
        logging_steps=2,
        disable_tqdm=True,
        num_calibration_samples=16,
    )
    base.update(kw)
    return QATTrainingArguments(**base)


def test_train_saves_qat_checkpoints_and_exports(tmp_path):
    ds = tiny_text_dataset()
    trainer = QATTrainer(
        model=tiny_bert(),
        args=make_args(tmp_path, export_onnx=True),
        train_dataset=ds,
        eval_dataset=ds,
        compute_metrics=compute_metrics,
    )
    trainer.train()
    ctrl = trainer.compression_ctrl
    assert ctrl is not None and len(ctrl.weight_quantizers) == 17
    ckpt = tmp_path / "checkpoint-4"
    names = set(os.listdir(ckpt))
    assert {"model.safetensors", "config.json", "compression_state.json", "nncf_config.json", "optimizer.pt"} <= names
    config = json.loads((ckpt / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "hf_qat" and qc["scheme"]["weights"]["count"] == 17
    state = json.loads((ckpt / "compression_state.json").read_text())
    assert set(state) == {"builder_state", "ctrl_state"}
    NNCFConfig.from_json(ckpt / "nncf_config.json")
    weights = load_file(ckpt / "model.safetensors")
    assert any(k.endswith("weight_quantizer.scale") for k in weights)
    assert any(k.startswith("_hf_qat.external_quantizers.") for k in weights)
    # the in-memory config is left as it was
    assert not hasattr(trainer.model.config, "quantization_config")
    # INT8 ONNX evaluated in ONNX Runtime with the same metric function
    assert trainer.onnx_result is not None and (tmp_path / "model.onnx").exists()
    onnx_logs = [h for h in trainer.state.log_history if "onnx_accuracy" in h]
    metrics = trainer.evaluate()
    assert onnx_logs and abs(onnx_logs[0]["onnx_accuracy"] - metrics["eval_accuracy"]) <= 1 / len(ds)
    assert abs(onnx_logs[0]["onnx_loss"] - metrics["eval_loss"]) < 1e-3


def test_bf16_training_keeps_float32_quantizers_and_exports(tmp_path):
    """``bf16=True`` (autocast on CPU): training runs with finite losses, quantizer parameters stay float32, and the
    export reproduces the trained grid (hf_qat's verification passes in ONNX Runtime). Float32 range gradients of
    half-precision inputs are checked in tests/torch/test_quantizers.py."""
    ds = tiny_text_dataset()
    trainer = QATTrainer(
        model=tiny_bert(), args=make_args(tmp_path, bf16=True, export_onnx=True, save_strategy="no"), train_dataset=ds
    )
    trainer.train()
    ctrl = trainer.compression_ctrl
    seen = [p.dtype for q in ctrl.quantizers.values() for p in q.parameters()]
    assert seen and set(seen) == {torch.float32}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(float(v))) for v in losses)
    assert trainer.onnx_result is not None and trainer.onnx_result.verification
    assert all(r.ok for r in trainer.onnx_result.verification)


def test_resume_ends_with_the_same_weights(tmp_path):
    ds = tiny_text_dataset()
    full = QATTrainer(model=tiny_bert(), args=make_args(tmp_path / "a", max_steps=8), train_dataset=ds)
    full.train()
    expected = {k: v.clone() for k, v in full.model.state_dict().items()}

    resumed = QATTrainer(model=tiny_bert(), args=make_args(tmp_path / "b", max_steps=8), train_dataset=ds)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))
    got = resumed.model.state_dict()
    assert set(got) == set(expected)
    mismatched = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not mismatched, mismatched[:5]


def test_bad_checkpoint_fails_before_training(tmp_path):
    ds = tiny_text_dataset()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    tiny_bert().save_pretrained(foreign)  # an FP32 checkpoint: no compression_state.json
    out = tmp_path / "out"
    trainer = QATTrainer(model=tiny_bert(), args=make_args(out), train_dataset=ds)
    with pytest.raises(CompressionStateError, match="compression_state.json"):
        trainer.train(resume_from_checkpoint=str(foreign))
    assert trainer.compression_ctrl is None and (not out.exists() or not any(out.iterdir()))
    (foreign / "compression_state.json").write_text("{not json")
    with pytest.raises(CompressionStateError, match="not valid JSON"):
        trainer.train(resume_from_checkpoint=str(foreign))


def test_quantizer_parameters_get_their_own_learning_rate(tmp_path):
    config = {"compression": {"algorithm": "quantization", "compression_lr_multiplier": 10.0}}
    trainer = QATTrainer(
        model=tiny_bert(), args=make_args(tmp_path, max_steps=1, nncf_config=config), train_dataset=tiny_text_dataset()
    )
    trainer.train()
    groups = trainer.optimizer.param_groups
    quantizer_params = {id(p) for q in trainer.compression_ctrl.quantizers.values() for p in q.parameters()}
    q_groups = [g for g in groups if any(id(p) in quantizer_params for p in g["params"])]
    assert len(q_groups) == 1 and all(id(p) in quantizer_params for p in q_groups[0]["params"])
    assert q_groups[0]["weight_decay"] == 0.0
    assert q_groups[0]["initial_lr"] == pytest.approx(1e-2)
    assert all(not q._lr_hooks for q in trainer.compression_ctrl.quantizers.values())


def test_distillation_from_the_fp32_model(tmp_path):
    ds = tiny_text_dataset()
    model = tiny_bert()
    teacher_before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = QATTrainer(
        model=model,
        args=make_args(tmp_path, max_steps=4, distillation_weight=0.5, distillation_temperature=2.0),
        train_dataset=ds,
    )
    assert trainer.teacher is not None and trainer.teacher is not model
    trainer.train()
    assert all(torch.equal(teacher_before[k], v) for k, v in trainer.teacher.state_dict().items())
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    with torch.no_grad():
        task = trainer.model(**batch).loss
        combined = trainer.compute_loss(trainer.model, batch)
    assert not torch.isclose(task, combined)


def test_staged_scheduler_enables_activations_at_their_epoch(tmp_path):
    config = {
        "compression": {
            "algorithm": "quantization",
            "params": {"activations_quant_start_epoch": 1, "weights_quant_start_epoch": 0},
        }
    }
    trainer = QATTrainer(
        model=tiny_bert(), args=make_args(tmp_path, num_train_epochs=2, nncf_config=config), train_dataset=tiny_text_dataset()
    )
    seen = []

    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            ctrl = trainer.compression_ctrl
            seen.append((int(state.epoch), all(q.is_enabled_quantization for q in ctrl.activation_quantizers.values())))

    trainer.add_callback(Probe())
    trainer.train()
    assert (0, False) in seen and (1, True) in seen and (0, True) not in seen


def test_bad_arguments():
    with pytest.raises(ValueError, match="distillation_weight"):
        QATTrainingArguments(output_dir="x", distillation_weight=1.5)
    from hf_qat import ConfigError

    with pytest.raises(ConfigError, match="nncf_config"):
        QATTrainer(model=tiny_bert(), args=QATTrainingArguments(output_dir="x", nncf_config="/nonexistent.json", report_to=[]))


def test_optimizer_built_before_compression_is_refused(tmp_path):
    model = tiny_bert()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = QATTrainer(
        model=model, args=make_args(tmp_path, max_steps=1), train_dataset=tiny_text_dataset(), optimizers=(opt, None)
    )
    with pytest.raises(ValueError, match="never train their ranges"):
        trainer.train()


def test_distillation_with_gradient_accumulation_is_scaled_like_the_task_loss(tmp_path):
    ds = tiny_text_dataset()
    trainer = QATTrainer(
        model=tiny_bert(),
        args=make_args(tmp_path, max_steps=1, distillation_weight=1.0, gradient_accumulation_steps=4),
        train_dataset=ds,
    )
    trainer.compress()
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 4
    with torch.no_grad():
        torch.manual_seed(0)  # same dropout masks in both calls
        plain = trainer.compute_loss(trainer.model, batch)
        torch.manual_seed(0)
        scaled = trainer.compute_loss(trainer.model, batch, num_items_in_batch=torch.tensor(32))
    # with num_items_in_batch the Trainer skips its own division by the accumulation steps
    assert torch.isclose(scaled, plain / 4) if trainer.model_accepts_loss_kwargs else torch.isclose(scaled, plain)


@pytest.mark.parametrize("kind", ["softmax", "mse"])
def test_nncf_knowledge_distillation_entry_drives_distillation(tmp_path, kind):
    """NNCF's BERT configs put knowledge_distillation beside quantization: QATTrainer distils with NNCF's
    loss = task + scale * KD; the quantization part is what gets compressed and saved."""
    import torch.nn.functional as F

    config = {
        "input_info": [{"sample_size": [1, 12], "type": "long"}] * 2,
        "compression": [
            {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 16}}},
            {"algorithm": "knowledge_distillation", "type": kind, "scale": 0.5, "temperature": 2.0},
        ],
    }
    ds = tiny_text_dataset()
    trainer = QATTrainer(model=tiny_bert(), args=make_args(tmp_path, max_steps=2, nncf_config=config), train_dataset=ds)
    assert trainer.teacher is not None and trainer.distillation.kind == kind
    trainer.train()
    assert trainer.compression_ctrl.config["compression"]["algorithm"] == "quantization"
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        out = trainer.model(**batch)
        teacher = trainer.teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
        if kind == "mse":
            kd = F.mse_loss(out.logits, teacher)
        else:
            kd = (
                F.kl_div(
                    F.log_softmax(out.logits / 2, -1), F.log_softmax(teacher / 2, -1), log_target=True, reduction="batchmean"
                )
                * 4
            )
        trainer.model.eval()  # dropout off: the same forward twice
        out = trainer.model(**batch)
        expected = out.loss + 0.5 * kd
        trainer.model.train()
        for m in trainer.model.modules():  # train mode without dropout randomness
            if isinstance(m, torch.nn.Dropout):
                m.eval()
        got = trainer.compute_loss(trainer.model, batch)
    assert torch.isclose(got, expected, rtol=1e-4), (got, expected)
    with pytest.raises(ValueError, match="set twice"):
        QATTrainer(model=tiny_bert(), args=make_args(tmp_path, nncf_config=config, distillation_weight=0.5), train_dataset=ds)


def test_knowledge_distillation_without_a_trainer_is_refused():
    from hf_qat import ConfigError, create_compressed_model

    config = {"compression": [{"algorithm": "quantization"}, {"algorithm": "knowledge_distillation", "type": "softmax"}]}
    with pytest.raises(ConfigError, match="QATTrainer reads the knowledge_distillation entry"):
        create_compressed_model(tiny_bert(), config)
    with pytest.raises(ConfigError, match=r"compression\[1\]\.type"):
        NNCFConfig.from_dict(
            {"compression": [{"algorithm": "quantization"}, {"algorithm": "knowledge_distillation", "type": "kl"}]}
        )
