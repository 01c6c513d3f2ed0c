import copy
import json
import warnings

import pytest
import torch
from testing_utils import (
    PlainConvNet,
    PlainSdpaNet,
    image_batches,
    inputs_of,
    quant_config,
    text_batches,
    tiny_bert,
    tiny_distilbert,
    tiny_gpt2,
    tiny_resnet,
    tiny_roberta,
    tiny_vit,
)

from hf_qat import (
    CalibrationError,
    CompressionStateError,
    ConfigError,
    DistributedError,
    InitializingDataLoader,
    NNCFConfig,
    NothingToQuantizeError,
    ScopeError,
    create_compressed_model,
    load_state,
    register_default_init_args,
)
from hf_qat.torch.layers import is_wrapped


def compress(model, batches, **algo):
    config = register_default_init_args(NNCFConfig.from_dict(quant_config(**algo)), batches)
    return create_compressed_model(model, config)


# (factory, data, weight quantizers, activation quantizers, activation points) for 2-layer tiny models
ARCHS = {
    # 3 embeddings + 6 linears/layer * 2 + pooler + classifier; activations per layer: qkv input (shared by
    # 3 points), Q, K, P, V, attention output, intermediate, output = 8 quantizers / 10 points; + pooler + classifier
    "bert": (tiny_bert, text_batches, 17, 18, 22),
    "roberta": (tiny_roberta, lambda: text_batches(with_token_types=False), 17, 18, 22),
    # 2 embeddings + 6 linears/layer * 2 + pre_classifier + classifier
    "distilbert": (tiny_distilbert, lambda: text_batches(with_token_types=False), 16, 18, 22),
    # wte, wpe + 4 Conv1D/layer * 2 + lm_head (Linear)
    "gpt2": (tiny_gpt2, lambda: text_batches(with_token_types=False), 11, 17, 17),
    # patch conv + 6 linears/layer * 2 + classifier
    "vit": (tiny_vit, image_batches, 14, 18, 22),
    # stem conv, 2 basic blocks (2 convs each, 1 shortcut conv in stage 2), classifier
    "resnet": (tiny_resnet, image_batches, 7, 6, 7),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_placement_counts_and_model_identity(arch):
    factory, data, n_w, n_a, n_points = ARCHS[arch]
    model = factory()
    batches = data()
    cls = type(model)
    ref = model(**inputs_of(batches[0]))[0]
    ctrl, qmodel = compress(model, batches)
    assert qmodel is model and type(qmodel) is cls
    stats = ctrl.statistics().quantization
    assert (stats.wq_counter, stats.aq_counter) == (n_w, n_a), ctrl.statistics().to_str()
    activation_points = sum(not qp.is_weight for qp in ctrl.setup.points.values())
    assert activation_points == n_points
    out = qmodel(**inputs_of(batches[0]))[0]
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.equal(out, ref)  # quantization changed something ...
    assert (out - ref).abs().max() < 0.5 * ref.abs().max() + 0.5  # ... but not everything
    # every weight quantizer is per-channel on the right axis
    for m in qmodel.modules():
        if is_wrapped(m) and m.weight_quantizer is not None:
            axis = m.weight_quantizer.spec.channel_axis
            expected = 1 if type(m).__name__ == "NNCFUserConv1D" else 0
            assert axis == expected
            assert m.weight_quantizer.scale.shape[axis] == m.weight.shape[axis]


def test_quantizes_attention_products_and_keeps_hf_methods(tmp_path):
    model = tiny_gpt2()
    ctrl, model = compress(model, text_batches(with_token_types=False))
    ids = [qid for qid in ctrl.quantizers if "matmul" in qid]
    assert any("matmul_0|INPUT0" in i for i in ids) and any("matmul_0|INPUT1" in i for i in ids)
    assert any("matmul_1|INPUT0" in i for i in ids) and any("matmul_1|INPUT1" in i for i in ids)
    assert model.config._attn_implementation == "eager"
    generated = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 7)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "model.safetensors").keys()
    assert any(k.endswith("weight_quantizer.scale") for k in keys)
    assert any(k.startswith("_hf_qat.external_quantizers.") for k in keys)


def test_plain_sdpa_model_quantizes_query_key_value_and_probabilities():
    torch.manual_seed(0)
    model = PlainSdpaNet()
    x = torch.randn(2, 5, 16)
    ref = model(x)
    ctrl, model = compress(model, [x, x * 0.5])
    ports = sorted(qp.input_port_id for qp in ctrl.setup.points.values() if "scaled_dot_product_attention" in qp.target_node_name)
    assert ports == [0, 1, 2, 3]
    out = model(x)
    assert (out - ref).abs().max() < 0.1 and not torch.equal(out, ref)


def test_plain_conv_model_with_tuple_loader_and_bn_adaptation():
    torch.manual_seed(0)
    model = PlainConvNet()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 3, 8, 8), torch.zeros(16)), batch_size=4)
    before = model.bn.running_mean.clone()
    config = NNCFConfig.from_dict(
        {
            "compression": {
                "algorithm": "quantization",
                "initializer": {"range": {"num_init_samples": 8}, "batchnorm_adaptation": {"num_bn_adaptation_samples": 8}},
            }
        }
    )
    ctrl, model = create_compressed_model(model, register_default_init_args(config, loader))
    assert ctrl.statistics().quantization.wq_counter == 2
    assert not torch.equal(model.bn.running_mean, before)


def test_seed_flow_resume_is_bit_identical():
    batches = text_batches()
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), batches)
    ctrl, model = create_compressed_model(tiny_bert(), config)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for b in batches:
        ctrl.scheduler.step()
        loss = model(**b).loss + ctrl.loss()
        loss.backward()
        opt.step()
        opt.zero_grad()
    ctrl.scheduler.epoch_step()
    checkpoint = {"state_dict": model.state_dict(), "compression_state": ctrl.get_compression_state()}
    checkpoint = json.loads(json.dumps({"compression_state": checkpoint["compression_state"]})) | {
        "state_dict": checkpoint["state_dict"]
    }
    fresh = tiny_bert()
    ctrl2, model2 = create_compressed_model(
        fresh, NNCFConfig.from_dict(quant_config()), compression_state=checkpoint["compression_state"]
    )
    model2.load_state_dict(checkpoint["state_dict"])
    model.eval(), model2.eval()
    for b in batches:
        assert torch.equal(model(**inputs_of(b)).logits, model2(**inputs_of(b)).logits)
    assert ctrl2.scheduler.current_step == ctrl.scheduler.current_step == 2
    assert ctrl2.get_compression_state() == ctrl.get_compression_state()


def test_load_state_accepts_ddp_prefix_and_rejects_mismatch_on_resume():
    batches = text_batches()
    ctrl, model = compress(tiny_bert(), batches)
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    ctrl2, model2 = create_compressed_model(
        tiny_bert(), NNCFConfig.from_dict(quant_config()), compression_state=ctrl.get_compression_state()
    )
    assert load_state(model2, sd, is_resume=True) == len(model.state_dict())
    bad = dict(sd)
    bad.pop(next(iter(bad)))
    with pytest.raises(CompressionStateError, match="missing 1 key"):
        load_state(model2, bad, is_resume=True)


def test_compression_state_that_does_not_fit_leaves_model_untouched():
    ctrl, _ = compress(tiny_bert(num_layers=2), text_batches())
    small = tiny_bert(num_layers=1)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(CompressionStateError, match="does not have"):
        create_compressed_model(small, NNCFConfig.from_dict(quant_config()), compression_state=ctrl.get_compression_state())
    assert not hasattr(small, "_hf_qat") and not any(is_wrapped(m) for m in small.modules())
    assert small.state_dict().keys() == before.keys()


def test_statistics_switches_scheduler_and_strip():
    batches = text_batches()
    ctrl, model = compress(tiny_bert(), batches, params={"activations_quant_start_epoch": 1, "weights_quant_start_epoch": 0})
    s = ctrl.statistics().quantization
    assert s.num_enabled == s.wq_counter  # staged: activations off in epoch 0
    ctrl.scheduler.epoch_step()
    ctrl.scheduler.epoch_step()
    assert ctrl.statistics().quantization.ratio_of_enabled_quantizations == 100.0
    text = ctrl.statistics().to_str()
    assert "Weight quantizers" in text and "8-bit" in text
    ctrl.disable_weight_quantization()
    assert ctrl.compression_stage() == 1
    ctrl.enable_weight_quantization()
    assert ctrl.compression_stage() == 2
    model.eval()
    stripped = ctrl.strip()
    assert not any(is_wrapped(m) for m in stripped.modules()) and any(is_wrapped(m) for m in model.modules())
    x = inputs_of(batches[0])
    torch.testing.assert_close(stripped(**x).logits, model(**x).logits, rtol=1e-5, atol=1e-5)


def test_scope_overrides_and_ignored_scopes_apply():
    batches = text_batches()
    ctrl, _ = compress(
        tiny_bert(),
        batches,
        ignored_scopes=["{re}.*NNCFEmbedding"],
        scope_overrides={
            "weights": {"{re}.*classifier.*": {"bits": 4, "per_channel": False}},
            "activations": {"{re}.*matmul_1.*": {"mode": "asymmetric"}},
        },
    )
    assert not any("NNCFEmbedding" in qid for qid in ctrl.quantizers)
    cls = next(q for qid, q in ctrl.quantizers.items() if "classifier" in qid and "|INPUT" not in qid)
    assert cls.num_bits == 4 and not cls.spec.per_channel
    assert all(not q.spec.symmetric for qid, q in ctrl.quantizers.items() if "matmul_1|" in qid)


def test_nncf_xnli_scopes_match_transformers5_bert():
    from core.test_config import HF_CONFIGS

    config = copy.deepcopy(HF_CONFIGS["bert_xnli"])
    config["compression"]["initializer"]["range"]["num_init_samples"] = 4
    ctrl, _ = create_compressed_model(tiny_bert(), register_default_init_args(NNCFConfig.from_dict(config), text_batches()))
    assert not any("BertIntermediate[intermediate]/NNCFLinear[dense]/linear_0|INPUT" in qid for qid in ctrl.quantizers)


def test_gpt2_config_from_transformers4_era_is_translated_with_a_warning():
    """NNCF's GPT-2 config names the attention scaling as transformers 4 traced it (__truediv___0); transformers 5
    multiplies (__mul___0): the scope is translated, and the warning says so."""
    from core.test_config import HF_CONFIGS

    config = NNCFConfig.from_dict(HF_CONFIGS["gpt2_wikitext"])
    with pytest.warns(UserWarning, match=r"__truediv___0.*matches no operation.*__mul___0"):
        ctrl, _ = create_compressed_model(tiny_gpt2(), register_default_init_args(config, text_batches(with_token_types=False)))
    assert ctrl.quantizers


def test_scope_that_matches_nothing_lists_nearest_names():
    model = tiny_bert()
    attn_before = model.config._attn_implementation
    with pytest.raises(ScopeError) as info:
        compress(model, text_batches(), ignored_scopes=["BertForSequenceClassification/NNCFLinear[clasifier]/linear_0"])
    assert any("classifier" in n for n in info.value.nearest)
    # nothing modified: no container, no swapped layer, attention implementation restored
    assert not hasattr(model, "_hf_qat") and not any(is_wrapped(m) for m in model.modules())
    assert model.config._attn_implementation == attn_before


def test_nothing_to_quantize():
    class NoWeights(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x)

    with pytest.raises(NothingToQuantizeError):
        compress(NoWeights(), [torch.randn(2, 3)])


def test_uncallable_batch_names_keys_and_signature():
    with pytest.raises(CalibrationError) as info:
        compress(tiny_bert(), [{"pixel_values": torch.randn(2, 3)}])
    assert "pixel_values" in str(info.value) and "input_ids" in str(info.value)


def test_custom_initializing_loader():
    class Loader(InitializingDataLoader):
        def get_inputs(self, batch):
            return (), {"input_ids": batch[0]}

    data = [(torch.randint(1, 60, (2, 8)),) for _ in range(2)]
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), Loader(data))
    ctrl, _ = create_compressed_model(tiny_bert(), config)
    assert all(q.initialized for q in ctrl.quantizers.values())


def test_nan_activations_are_excluded_with_a_warning():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    x = torch.randn(8, 4)
    x[0, 0] = float("nan")
    x[1, 1] = float("inf")
    with pytest.warns(RuntimeWarning, match="NaN/inf"):
        ctrl, model = compress(model, [x])
    for q in ctrl.quantizers.values():
        assert torch.isfinite(q.scale).all() and (q.scale > 0).all()


def test_invalid_config_leaves_model_untouched():
    model = tiny_bert()
    with pytest.raises(ConfigError):
        create_compressed_model(model, {"compression": {"algorithm": "quantization", "weights": {"bits": 1}}})
    assert not hasattr(model, "_hf_qat")


def test_input_info_only_and_distributed_without_process_group():
    from core.test_config import HF_CONFIGS

    config = copy.deepcopy(HF_CONFIGS["roberta_mnli"])
    config["input_info"]["sample_size"] = [1, 8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctrl, model = create_compressed_model(tiny_roberta(), NNCFConfig.from_dict(config))
    assert all(not q.spec.symmetric for q in ctrl.quantizers.values())
    with pytest.raises(DistributedError, match="init_process_group"):
        ctrl.distributed()


def test_submodule_called_directly_keeps_its_activation_quantizers():
    """Operation quantizers count calls per forward; a forward that starts at a submodule (``model.bert(...)``)
    starts its own count, whatever ran before, and computes what the same module computes in a whole-model forward."""
    batches = text_batches()
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), batches)
    ctrl, model = create_compressed_model(tiny_bert(), config)
    assert any("matmul" in qid for qid in ctrl.quantizers)
    model.eval()
    x = inputs_of(batches[0])
    with torch.no_grad():
        whole = model(**x).logits
        for _ in range(2):
            parts = model.classifier(model.bert(**x).pooler_output)
            assert torch.equal(parts, whole)
        model(**x)
        assert torch.equal(model.classifier(model.bert(**x).pooler_output), whole)


def test_scopes_and_setup_do_not_depend_on_padding_in_the_calibration_batches():
    """transformers 5 runs the attention-mask add only for batches with padding; a scope naming it (NNCF's XNLI and
    MobileBERT configs) is valid either way, and the quantizer setup is the same."""
    scope = r"{re}.*BertSelfAttention\[self\]/__add___0"
    setups = []
    for padded in (False, True):
        batches = text_batches()  # row 0 of each batch is padded
        if not padded:
            for b in batches:
                b["attention_mask"][:] = 1
        config = NNCFConfig.from_dict(quant_config(ignored_scopes=[scope]))
        ctrl, _ = create_compressed_model(tiny_bert(), register_default_init_args(config, batches))
        setups.append(ctrl.get_compression_state()["builder_state"])
    assert setups[0] == setups[1]
    with pytest.raises(ScopeError, match="__mul___7"):  # a scope naming nothing at all is still an error
        create_compressed_model(tiny_bert(), register_default_init_args(NNCFConfig.from_dict(quant_config(
            ignored_scopes=[r"{re}.*BertSelfAttention\[self\]/__mul___7"])), text_batches()))  # fmt: skip


def test_manual_mixed_precision_bitwidth_per_scope(tmp_path):
    """NNCF's initializer.precision {"type": "manual", "bitwidth_per_scope": [[bits, scope], ...]} sets per-quantizer
    bits (scopes: node names or NNCF quantizer ids), is recorded in the compression state, and exports."""
    query = "BertForSequenceClassification/BertModel[bert]/BertEncoder[encoder]/ModuleList[layer]/BertLayer[0]/BertAttention[attention]/BertSelfAttention[self]/NNCFLinear[query]/linear_0"
    precision = {"type": "manual", "bitwidth_per_scope": [[4, query + "|WEIGHT"], [6, r"{re}.*matmul_1\|INPUT0"]]}
    algo = quant_config()["compression"]
    algo["initializer"]["precision"] = precision
    batches = text_batches()
    config = register_default_init_args(NNCFConfig.from_dict({"compression": algo}), batches)
    ctrl, model = create_compressed_model(tiny_bert(), config)
    bits = {qid: q.spec.num_bits for qid, q in ctrl.quantizers.items()}
    assert bits[query] == 4
    probs = [qid for qid in bits if qid.endswith("matmul_1|INPUT0")]
    assert probs and all(bits[q] == 6 for q in probs)
    assert sorted(set(bits.values())) == [4, 6, 8]
    state = ctrl.get_compression_state()
    restored, _ = create_compressed_model(tiny_bert(), NNCFConfig.from_dict(quant_config()), compression_state=state)
    assert {qid: q.spec.num_bits for qid, q in restored.quantizers.items()} == bits
    result = ctrl.export_model(str(tmp_path / "m.onnx"), model_args=inputs_of(batches[0]))
    assert all(r.ok for r in result.verification)
    # HAWQ/AutoQ are refused by name; a scope that matches nothing is a ScopeError
    algo["initializer"]["precision"] = {"type": "hawq", "bits": [4, 8]}
    with pytest.raises(ConfigError, match="HAWQ/AutoQ"):
        NNCFConfig.from_dict({"compression": algo})
    algo["initializer"]["precision"] = {"type": "manual", "bitwidth_per_scope": [[4, "Bert/nothing_0|WEIGHT"]]}
    with pytest.raises(ScopeError, match="nothing_0"):
        create_compressed_model(tiny_bert(), register_default_init_args(NNCFConfig.from_dict({"compression": algo}), batches))
