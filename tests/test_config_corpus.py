"""NNCF's and optimum-intel's published quantization configs, unchanged, on the matching architectures.

Each config either compresses, trains one step and exports INT8 ONNX verified in ONNX Runtime, or is refused
naming the algorithm hf_qat leaves out of scope. Sources and commits: tests/corpus/README.md.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import hf_qat
from hf_qat import ConfigError, NNCFConfig
from hf_qat.utils.jsonfile import loads_json

CORPUS = Path(__file__).parent / "corpus"
STRUCTURE = Path(__file__).parent / "fixtures" / "torchvision_structure.json"
V = 100


def _bert(cls_name, num_labels=3):
    import transformers

    config = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=512, num_labels=num_labels)  # fmt: skip
    return getattr(transformers, cls_name)(config)


def _distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    return DistilBertForSequenceClassification(DistilBertConfig(vocab_size=V, dim=32, n_layers=2, n_heads=2, hidden_dim=64))


def _roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3
    )
    return RobertaForSequenceClassification(config)


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    # GPT-2's real position table (1024), as the config's input_info [1, 1024] expects
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=2, n_positions=1024, bos_token_id=1, eos_token_id=1)
    )


def _mobilebert():
    from transformers import MobileBertConfig, MobileBertForQuestionAnswering

    config = MobileBertConfig(vocab_size=V, hidden_size=64, embedding_size=32, intra_bottleneck_size=32, true_hidden_size=32,
                              num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_feedforward_networks=1)  # fmt: skip
    return MobileBertForQuestionAnswering(config)


def _wav2vec2():
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    config = Wav2Vec2Config(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2, num_labels=3, do_stable_layer_norm=False)  # fmt: skip
    return Wav2Vec2ForSequenceClassification(config)


def _text(batch=2, seq=32, mask=True):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(2):
        ids = torch.randint(1, V, (batch, seq), generator=g)
        b = {"input_ids": ids}
        if mask:
            b["attention_mask"] = torch.ones_like(ids)
            b["attention_mask"][0, -4:] = 0
        out.append(b)
    return out


def _audio():
    g = torch.Generator().manual_seed(0)
    return [{"input_values": torch.randn(2, 800, generator=g)} for _ in range(2)]


def _torchvision(config):
    """The torchvision architecture the config names (tests/torchvision_models.py, checked against torchvision)."""
    from torchvision_models import MODELS

    kwargs = {"num_classes": config.get("num_classes", 1000)}
    if config["model"] == "inception_v3":  # the pretrained model normalises its input: the config's scopes name that
        kwargs["transform_input"] = bool(config.get("pretrained"))
    return MODELS[config["model"]](**kwargs)


def _images(config):
    info = config["input_info"]
    size = (info[0] if isinstance(info, list) else info)["sample_size"]
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, *size[1:], generator=g) for _ in range(2)]


TEXT_INFO = [{"sample_size": [1, 32], "type": "long", "keyword": "input_ids"},
             {"sample_size": [1, 32], "type": "long", "keyword": "attention_mask"}]  # fmt: skip
AUDIO_INFO = [{"sample_size": [1, 800], "type": "float", "keyword": "input_values"}]

#: file -> (model builder, calibration batches, input_info for compression entries, expected outcome)
#: where the outcome is "runs", "QATTrainer" (runs in QATTrainer, which the config's knowledge_distillation
#: entry needs), "validates" (accepted; the architecture it names cannot be built here) or the text the refusal
#: must contain.
CASES = {
    "nncf_bert_config_conll.json": (lambda: _bert("BertForTokenClassification"), _text, None, "runs"),
    "nncf_bert_config_mrpc.json": (lambda: _bert("BertForSequenceClassification"), _text, None, "runs"),
    "nncf_bert_config_squad.json": (lambda: _bert("BertForQuestionAnswering", 2), _text, None, "runs"),
    "nncf_bert_config_squad_kd.json": (lambda: _bert("BertForQuestionAnswering", 2), _text, None, "QATTrainer"),
    "nncf_bert_config_squad_magnitude_sparsity_cubic.json": (
        lambda: _bert("BertForQuestionAnswering", 2),
        _text,
        None,
        "'magnitude_sparsity'",
    ),  # fmt: skip
    "nncf_bert_config_xnli.json": (lambda: _bert("BertForSequenceClassification"), _text, None, "runs"),
    "nncf_distilbert_config_sst2.json": (_distilbert, _text, None, "runs"),
    "nncf_gpt2_config_wikitext_hw_config.json": (_gpt2, lambda: _text(mask=False), None, "runs"),
    "nncf_mobilebert_config_squad_int8.json": (_mobilebert, _text, None, "runs"),
    "nncf_roberta_config_mnli.json": (_roberta, _text, None, "runs"),
    **{
        f"nncf_torchvision_{name}.json": (_torchvision, _images, None, "runs")
        for name in [
            "inception_v3_imagenet_int8",
            "mobilenet_v2_cifar100_asym_int8",
            "mobilenet_v2_imagenet_int8",
            "mobilenet_v2_imagenet_int8_per_tensor",
            "mobilenet_v3_small_imagenet_int8",
            "resnet18_imagenet_int8_accuracy_aware",
            "resnet50_imagenet_int8",
            "resnet50_imagenet_int8_per_tensor",
            "squeezenet1_1_imagenet_int8",
            "squeezenet1_1_imagenet_int8_per_tensor",
        ]
    },  # fmt: skip
    # NNCF's own RMNet (not a torchvision or transformers architecture): validated only
    "nncf_torchvision_rmnet_cifar_int8.json": (None, None, None, "validates"),
    "optimum_intel_ovtrainer_default.json": (lambda: _bert("BertForSequenceClassification"), _text, TEXT_INFO, "runs"),
    "optimum_intel_audio-classification_wav2vec2-base-qat.json": (_wav2vec2, _audio, AUDIO_INFO, "runs"),
    "optimum_intel_audio-classification_wav2vec2-base-jpqd.json": (_wav2vec2, _audio, AUDIO_INFO, "'movement_sparsity'"),
    "optimum_intel_image-classification_swin-base-jpqd.json": (None, None, TEXT_INFO, "'movement_sparsity'"),
    "optimum_intel_question-answering_bert-base-jpqd.json": (None, None, TEXT_INFO, "'movement_sparsity'"),
    "optimum_intel_question-answering_bert-base-movement-sparsity.json": (None, None, TEXT_INFO, "'movement_sparsity'"),
    "optimum_intel_text-classification_bert-base-jpqd.json": (None, None, TEXT_INFO, "'movement_sparsity'"),
}


def test_every_corpus_file_has_an_expected_outcome():
    assert sorted(CASES) == sorted(p.name for p in CORPUS.glob("*.json"))


def _config(name: str, input_info) -> dict:
    data = loads_json((CORPUS / name).read_bytes(), source=name, strict=True, comments=True)
    if input_info is not None:  # optimum-intel: compression entries; OVTrainer adds input_info from the model
        data = {"input_info": input_info, "compression": data}
    return data


def _loss(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float().pow(2).mean()
    for attr in ("logits", "start_logits"):
        if getattr(out, attr, None) is not None:
            return getattr(out, attr).float().pow(2).mean()
    raise AssertionError(f"no output to train on in {type(out).__name__}")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_published_config(name, tmp_path):
    build, batches, input_info, expected = CASES[name]
    config = _config(name, input_info)
    if expected == "validates":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            NNCFConfig.from_dict(config)
        return
    if expected == "QATTrainer":
        _run_in_trainer(build, batches, config, tmp_path)
        return
    if expected != "runs":
        with pytest.raises(ConfigError, match=expected):
            NNCFConfig.from_dict(config)
        return
    torch.manual_seed(0)
    if build is _torchvision:
        from torchvision_models import settle_batch_norm

        model, data = build(config), batches(config)
        settle_batch_norm(model, [torch.randn(4, *data[0].shape[1:], generator=torch.Generator().manual_seed(1))])
    else:
        model, data = build(), batches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # translations and sample keys are announced with warnings, tested elsewhere
        config = hf_qat.register_default_init_args(NNCFConfig.from_dict(config), data)
        ctrl, model = hf_qat.create_compressed_model(model, config)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    out = model(data[0]) if isinstance(data[0], torch.Tensor) else model(**data[0])
    _loss(out[0] if isinstance(out, tuple) else out).backward()  # Inception3 trains with (logits, aux_logits)
    optimizer.step()
    model.eval()
    result = ctrl.export_model(str(tmp_path / "model.onnx"))
    assert result.num_weight_quantizers > 0 and all(r.ok for r in result.verification), result


@pytest.mark.parametrize("name", sorted(json.loads(STRUCTURE.read_text())["models"]))
def test_stand_in_is_the_torchvision_architecture(name):
    """Module tree, tensor shapes and traced operations equal those recorded from torchvision itself."""
    from torchvision_models import MODELS

    from hf_qat.torch.tracing import trace_model

    recorded = json.loads(STRUCTURE.read_text())["models"][name]
    model = MODELS[name](**({"transform_input": True} if name == "inception_v3" else {}))
    assert [[p, type(m).__name__] for p, m in model.named_modules()] == recorded["modules"]
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == recorded["tensors"]
    example = torch.zeros(recorded["input_size"])
    assert trace_model(model, lambda m: m(example)).node_names == recorded["operations"]


def _run_in_trainer(build, batches, config, tmp_path):
    from datasets import Dataset

    from hf_qat.transformers import QATTrainer, QATTrainingArguments

    with pytest.raises(ConfigError, match="QATTrainer reads the knowledge_distillation entry"):
        hf_qat.create_compressed_model(build(), config)
    rows = [{k: v[i].tolist() for k, v in b.items()} for b in batches() for i in range(len(b["input_ids"]))]
    for r in rows:
        r["start_positions"], r["end_positions"] = 1, 3
    args = QATTrainingArguments(output_dir=str(tmp_path), nncf_config=config, max_steps=2, per_device_train_batch_size=2,
                                report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, export_onnx=True)  # fmt: skip
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = QATTrainer(model=build(), args=args, train_dataset=Dataset.from_list(rows))
        trainer.train()
    assert trainer.distillation is not None and trainer.distillation.temperature == 3
    assert trainer.onnx_result is not None and all(r.ok for r in trainer.onnx_result.verification)


def test_renamed_operations_are_translated_with_a_warning():
    """NNCF's GPT-2 config ignores GPT-2's attention scaling as ``__truediv___0``; transformers 5 multiplies."""
    config = _config("nncf_gpt2_config_wikitext_hw_config.json", None)
    config["input_info"][0]["sample_size"] = [1, 16]
    with pytest.warns(UserWarning, match=r"__truediv___0.*matches no operation.*__mul___0.*multiplying"):
        ctrl, _ = hf_qat.create_compressed_model(_gpt2(), NNCFConfig.from_dict(config))
    assert not any("GPT2Attention[attn]/__mul___0" in qid for qid in ctrl.quantizers)


def test_sdpa_scope_is_translated_to_the_eager_products():
    config = _config("optimum_intel_ovtrainer_default.json", TEXT_INFO)
    with pytest.warns(UserWarning, match=r"scaled_dot_product_attention_0.*\(\?:matmul_0\|matmul_1\)"):
        ctrl, _ = hf_qat.create_compressed_model(_bert("BertForSequenceClassification"), NNCFConfig.from_dict(config))
    modes = {qid: q.spec.mode for qid, q in ctrl.quantizers.items() if "matmul_1" in qid}
    assert modes and set(modes.values()) == {"symmetric"}  # the override reaches P @ V as it reached SDPA's inputs


def test_a_scope_with_no_exact_translation_stays_an_error():
    config = _config("nncf_gpt2_config_wikitext_hw_config.json", None)
    config["compression"]["ignored_scopes"].append("{re}.*Attention\\[attn\\]/__truediv___1")
    with pytest.raises(hf_qat.ScopeError, match="__truediv___1"):
        hf_qat.create_compressed_model(_gpt2(), NNCFConfig.from_dict(config))


def test_scope_error_lists_the_module_operations_and_the_attention_note():
    ignored = ("BertForSequenceClassification/BertModel[bert]/BertEncoder[encoder]/ModuleList[layer]/BertLayer[0]/"
               "BertAttention[attention]/BertSelfAttention[self]/scaled_dot_product_attention_1")  # fmt: skip
    config = {"input_info": TEXT_INFO, "compression": {"algorithm": "quantization", "ignored_scopes": [ignored]}}
    with pytest.raises(hf_qat.ScopeError) as info:
        hf_qat.create_compressed_model(_bert("BertForSequenceClassification"), NNCFConfig.from_dict(config))
    message = str(info.value)
    assert "Operations of BertForSequenceClassification/" in message and "matmul_0, matmul_1" in message
    assert "hf_qat computes attention eagerly" in message


@pytest.mark.parametrize("build", [lambda: _bert("BertForSequenceClassification"), _distilbert, _roberta])
def test_attention_scaling_rename_in_the_bert_family(build):
    """transformers 4 divided BERT-family attention scores (__truediv___0); transformers 5 multiplies (__mul___0)."""
    config = {"input_info": TEXT_INFO, "compression": {"algorithm": "quantization",
              "ignored_scopes": ["{re}.*SelfAttention\\[[a-z_]+\\]/__truediv___0"]}}  # fmt: skip
    with pytest.warns(UserWarning, match=r"__truediv___0.*using .*\(\?:__mul___0\)"):
        hf_qat.create_compressed_model(build(), NNCFConfig.from_dict(config))
