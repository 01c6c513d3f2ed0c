"""quant_method "hf_qat": from_pretrained rebuilds the QAT model bit for bit (no hub involved)."""

import json

import pytest
import torch
from testing_utils import inputs_of, quant_config, text_batches, tiny_bert, tiny_gpt2, tiny_text_dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import hf_qat
from hf_qat import NNCFConfig, create_compressed_model, register_default_init_args
from hf_qat.transformers import QATTrainer, QATTrainingArguments, save_qat_model


def compressed(factory, batches):
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), batches)
    return create_compressed_model(factory(), config)


@pytest.mark.parametrize(
    "factory, auto, with_types", [(tiny_bert, AutoModelForSequenceClassification, True), (tiny_gpt2, AutoModelForCausalLM, False)]
)
def test_from_pretrained_gives_the_same_logits(tmp_path, factory, auto, with_types):
    batches = [inputs_of(b) for b in text_batches(with_token_types=with_types)]
    ctrl, model = compressed(factory, batches)
    with torch.no_grad():  # move ranges away from their initial values, as training would
        for q in ctrl.quantizers.values():
            for p in q.parameters():
                p.mul_(1.01)
    save_qat_model(model, ctrl, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "hf_qat"
    assert "builder_state" in config["quantization_config"]["compression_state"]

    loaded = auto.from_pretrained(tmp_path).eval()
    assert loaded.is_quantized and loaded._hf_qat_ctrl is not None
    assert set(loaded.state_dict()) == set(model.state_dict())
    model.eval()
    for batch in batches:
        with torch.no_grad():
            assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_loaded_model_keeps_training_with_qat_trainer(tmp_path):
    batches = [inputs_of(b) for b in text_batches(with_token_types=False)]
    ctrl, model = compressed(tiny_bert, batches)
    save_qat_model(model, ctrl, tmp_path / "saved")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    args = QATTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=2, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True
    )
    trainer = QATTrainer(model=loaded, args=args, train_dataset=tiny_text_dataset())
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    trainer.train()
    assert trainer.compression_ctrl is loaded._hf_qat_ctrl  # not compressed a second time
    changed = [k for k, v in loaded.state_dict().items() if not torch.equal(before[k], v)]
    assert any("quantizer" in k for k in changed) and any(k.endswith("query.weight") for k in changed)


def test_without_hf_qat_transformers_loads_a_float_model(tmp_path, monkeypatch, caplog):
    """Documented behaviour: without the registration the model loads as float (and says so)."""
    from transformers.quantizers import auto

    batches = [inputs_of(b) for b in text_batches()]
    ctrl, model = compressed(tiny_bert, batches)
    save_qat_model(model, ctrl, tmp_path)
    monkeypatch.delitem(auto.AUTO_QUANTIZATION_CONFIG_MAPPING, "hf_qat")
    monkeypatch.delitem(auto.AUTO_QUANTIZER_MAPPING, "hf_qat")
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()  # process-wide: another test (the benchmark smoke run) may have lowered it
    hf_logging.set_verbosity_warning()
    hf_logging.enable_propagation()
    try:
        plain = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    finally:
        hf_logging.disable_propagation()
        hf_logging.set_verbosity(verbosity)
    assert not getattr(plain, "is_quantized", False) and not hasattr(plain, "_hf_qat_ctrl")
    assert "Unknown quantization type, got hf_qat" in caplog.text
    hf_qat.transformers.quantizer.register()  # idempotent re-registration


def test_config_without_compression_state_is_refused(tmp_path):
    batches = [inputs_of(b) for b in text_batches()]
    ctrl, model = compressed(tiny_bert, batches)
    save_qat_model(model, ctrl, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["quantization_config"]["compression_state"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(hf_qat.CompressionStateError, match="no embedded compression_state"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path)


def test_compression_state_that_does_not_fit_the_model_is_refused(tmp_path):
    batches = [inputs_of(b) for b in text_batches()]
    ctrl, model = compressed(tiny_bert, batches)
    save_qat_model(model, ctrl, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    points = config["quantization_config"]["compression_state"]["builder_state"]["quantization"]["quantizer_setup"][
        "quantization_points"
    ]
    first = next(iter(points.values()))
    first["target_point"]["target_node_name"] = first["target_point"]["target_node_name"].replace(
        "BertEmbeddings[embeddings]", "BertEmbeddings[missing]"
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(hf_qat.CompressionStateError, match="does not fit the model") as err:
        AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert "missing" in str(err.value)
