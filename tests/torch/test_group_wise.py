"""Group-wise weight quantizers (hf_qat's ``group_size`` extension): grid, gradients, config, state, refusals."""

import json

import pytest
import torch
from testing_utils import inputs_of, quant_config, text_batches, tiny_bert, tiny_gpt2

from hf_qat import (
    CompressionStateError,
    ConfigError,
    ExportError,
    NNCFConfig,
    create_compressed_model,
    register_default_init_args,
)
from hf_qat.core.spec import QuantizerSpec, grouped_scale_shape
from hf_qat.torch.quantizers import create_quantizer

GPT2_4BIT = {
    "weights": {"bits": 4, "group_size": 16},
    # embeddings and lm_head commonly stay at 8 bits, per channel
    "scope_overrides": {"weights": {"{re}.*(wte|wpe|lm_head).*": {"bits": 8, "group_size": None}}},
}


def compress(model, **algo):
    batches = [inputs_of(b) for b in text_batches(with_token_types=False)]
    config = register_default_init_args(NNCFConfig.from_dict(quant_config(**algo)), batches)
    ctrl, model = create_compressed_model(model, config)
    return ctrl, model, batches


def grouped_spec(bits=4, mode="symmetric", weight_shape=(6, 32), axis=1, group=8):
    return QuantizerSpec(
        num_bits=bits,
        mode=mode,
        scale_shape=grouped_scale_shape(weight_shape, axis, group),
        group_size=group,
        group_axis=axis,
    )


@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("axis", [1, 0])  # Linear [out, in] and transformers' Conv1D [in, out]
def test_group_wise_equals_per_channel_on_the_grouped_view(mode, bits, axis):
    """A group-wise quantizer is a per-channel quantizer on the weight viewed as [..., group_size]: same
    outputs and the same gradients for the weight and the range parameters (NNCF's), bit for bit."""
    torch.manual_seed(0)
    shape = (6, 32) if axis == 1 else (32, 6)
    q = create_quantizer(grouped_spec(bits, mode, shape, axis))
    ref = create_quantizer(
        QuantizerSpec(num_bits=bits, mode=mode, scale_shape=(q.spec.scale_shape[0] * q.spec.scale_shape[1], 1))
    )
    with torch.no_grad():
        for p, r in zip(q.parameters(), ref.parameters()):
            p.copy_(torch.rand(p.shape) * 0.5 + 0.2 if p.shape == q.spec.scale_shape else p)
            r.copy_(p.reshape(r.shape))
    w = torch.randn(shape, requires_grad=True)
    out = q(w)
    grouped_view = w.unflatten(axis, (-1, 8)).movedim(axis + 1, -1)
    w_ref = grouped_view.detach().reshape(-1, 8).requires_grad_(True)
    out_ref = ref(w_ref)
    torch.testing.assert_close(out, out_ref.reshape(grouped_view.shape).movedim(-1, axis + 1).reshape(shape), rtol=0, atol=0)
    g = torch.randn(shape)
    out.backward(g)
    g_view = g.unflatten(axis, (-1, 8)).movedim(axis + 1, -1).reshape(-1, 8)
    out_ref.backward(g_view)
    torch.testing.assert_close(w.grad.unflatten(axis, (-1, 8)).movedim(axis + 1, -1).reshape(-1, 8), w_ref.grad, rtol=0, atol=0)
    for p, r in zip(q.parameters(), ref.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0
        torch.testing.assert_close(p.grad.reshape(r.grad.shape), r.grad, rtol=1e-6, atol=1e-7)
    # every group on its own grid: at most 2^bits levels, integers inside the grid
    ints = q.to_integers(w)
    ll, lh = q.levels()
    assert ints.shape == w.shape and int(ints.min()) >= ll and int(ints.max()) <= lh
    levels = out.detach().unflatten(axis, (-1, 8)).movedim(axis + 1, -1).reshape(-1, 8)
    assert max(len(set(row.tolist())) for row in levels) <= 2**bits


def test_gpt2_blocks_at_4_bits_grouped_embeddings_and_lm_head_at_8_per_channel():
    ctrl, model, batches = compress(tiny_gpt2(), **GPT2_4BIT)
    grouped = {qid: q for qid, q in ctrl.weight_quantizers.items() if q.spec.grouped}
    plain = {qid: q for qid, q in ctrl.weight_quantizers.items() if not q.spec.grouped}
    assert len(grouped) == 8 and all(q.spec.num_bits == 4 and q.spec.group_size == 16 for q in grouped.values())
    assert sorted(qid.rsplit("/", 2)[-2] for qid in plain) == ["NNCFEmbedding[wpe]", "NNCFEmbedding[wte]", "NNCFLinear[lm_head]"]
    assert all(q.spec.num_bits == 8 and q.spec.per_channel for q in plain.values())
    c_fc = next(q for qid, q in grouped.items() if "c_fc" in qid)
    assert c_fc.spec.scale_shape == (2, 128, 1) and c_fc.spec.group_axis == 0  # Conv1D [32 in, 128 out], 2 groups
    # ranges initialised per group from the weights: every group's absolute maximum on the grid's top level
    layer = next(m for m in model.modules() if getattr(m, "weight_quantizer", None) is c_fc)
    absmax = layer.weight.detach().unflatten(0, (2, 16)).movedim(1, -1).abs().amax(-1, keepdim=True)
    torch.testing.assert_close(c_fc.scale.detach(), absmax)
    assert "Group-wise" in ctrl.statistics().to_str() and "8 of group size 16" in ctrl.statistics().to_str()
    out = model(**batches[0], labels=batches[0]["input_ids"])
    out.loss.backward()
    assert all(q.scale.grad is not None and q.scale.grad.abs().sum() > 0 for q in grouped.values())


def test_group_wise_state_round_trip_and_formats_without_groups(tmp_path):
    ctrl, model, batches = compress(tiny_gpt2(), **GPT2_4BIT)
    with torch.no_grad():
        for q in ctrl.weight_quantizers.values():
            q.scale.mul_(0.9)  # trained values, not the initial ones
    state = json.loads(json.dumps(ctrl.get_compression_state()))
    points = state["builder_state"]["quantization"]["quantizer_setup"]["quantization_points"]
    specs = [p["qspec"] for p in points.values()]
    assert sum("group_size" in s for s in specs) == 8 and all(s.get("group_size") in (None, 16) for s in specs)
    ctrl2, model2 = create_compressed_model(tiny_gpt2(), NNCFConfig.from_dict(quant_config(**GPT2_4BIT)), compression_state=state)
    model2.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model2(**batches[0]).logits, model(**batches[0]).logits)

    with pytest.raises(CompressionStateError, match="NNCF 2.x checkpoint cannot hold group-wise"):
        ctrl.nncf_state_dict()


def test_int4_export_below_opset_21_is_refused_before_writing(tmp_path):
    from hf_qat.torch.export import export_onnx

    ctrl, model, batches = compress(tiny_gpt2(), **GPT2_4BIT)
    with pytest.raises(ExportError, match="'.*c_attn.*' is group-wise \\(group_size 16\\).*needs opset 21, asked: 18"):
        export_onnx(model, tmp_path / "model.onnx", batches[0], opset=18)
    assert not (tmp_path / "model.onnx").exists()


def _int4_arrays(path) -> dict:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    kinds = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.data_type in kinds}


@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
def test_int4_onnx_holds_the_trained_grid_and_runs_in_onnxruntime_and_openvino(tmp_path, mode):
    """Blocked DequantizeLinear (opset 21) with int4/uint4 initializers: the trained integers, verified quantizer by
    quantizer in ONNX Runtime; embeddings and lm_head stay int8."""
    import onnx

    from hf_qat.onnx import convert_to_openvino
    from hf_qat.torch.export import export_onnx

    algo = {**GPT2_4BIT, "weights": {**GPT2_4BIT["weights"], "mode": mode}}
    ctrl, model, batches = compress(tiny_gpt2(), **algo)
    result = export_onnx(model, tmp_path / "model.onnx", batches[0], opset=21)
    assert all(r.ok for r in result.verification) and result.opset == 21
    assert len(result.summary.int4_initializers) == 8 and len(result.summary.int8_initializers) == 3
    assert "8 int4" in str(result) or "(8 int4)" in str(result)
    blocked = [
        n for n in onnx.load(str(result.path)).graph.node
        if n.op_type == "DequantizeLinear" and any(a.name == "block_size" and a.i == 16 for a in n.attribute)
    ]  # fmt: skip
    assert len(blocked) == 8
    # the file's integers are the trained grid's: c_fc of block 0 ([32 in, 128 out], no transpose)
    c_fc = next(m for n, m in model.named_modules() if n.endswith("h.0.mlp.c_fc"))
    stored = next(a for name, a in _int4_arrays(result.path).items() if "h.0.mlp.c_fc" in name and a.shape == (32, 128))
    assert (stored == c_fc.weight_quantizer.to_integers(c_fc.weight).numpy()).all()
    ov = convert_to_openvino(result.path, inputs=result.inputs)
    assert ov.ok and ov.constant_types.get("i4" if mode == "symmetric" else "u4", 0) >= 8


def test_weight_only_int4_runs_on_onnxruntime_4_bit_kernels(tmp_path):
    """Without activation quantizers, ONNX Runtime fuses every blocked DequantizeLinear -> MatMul into MatMulNBits."""
    from hf_qat.torch.export import export_onnx

    ctrl, model, batches = compress(tiny_bert(), weights={"bits": 4, "group_size": 16}, validate_scopes=False)
    for q in ctrl.activation_quantizers.values():
        q.disable_quantization()
    result = export_onnx(model, tmp_path / "model.onnx", batches[0], opset=21)
    assert all(r.ok for r in result.verification)
    linears = sum(1 for qid in ctrl.weight_quantizers if "NNCFLinear" in qid.rsplit("/", 2)[-2])
    assert linears == 14 and result.onnxruntime_ops["MatMulNBits"] == linears
    assert "14 MatMulNBits" in str(result)


@pytest.mark.parametrize(
    "algo, message",
    [
        (
            {"weights": {"bits": 4, "group_size": 12}},
            "weights.group_size: found 12; expected a divisor of the input dimension 32 of .*word_embeddings",
        ),
        (
            {"weights": {"group_size": 16}, "scope_overrides": {"weights": {"{re}.*query.*": {"group_size": 5}}}},
            "scope_overrides.weights\\['\\{re\\}.\\*query.\\*'\\].group_size: found 5; expected a divisor of the input dimension 32",
        ),
        ({"weights": {"bits": 9, "group_size": 16}}, "bits"),
        ({"weights": {"bits": 1, "group_size": 16}}, "bits"),
        ({"weights": {"group_size": 1}}, "group_size"),
        ({"activations": {"group_size": 16}}, "group_size"),
    ],
)
def test_bad_group_settings_are_refused_before_anything_is_built(algo, message):
    with pytest.raises(ConfigError, match=message):
        compress(tiny_bert(), **algo)


def test_a_convolution_refuses_group_size():
    from testing_utils import PlainConvNet

    x = torch.randn(2, 3, 16, 16)
    config = register_default_init_args(NNCFConfig.from_dict(quant_config(weights={"bits": 4, "group_size": 2})), [(x,)])
    with pytest.raises(ConfigError, match="group-wise scales apply to 2-D weights"):
        create_compressed_model(PlainConvNet(), config)


def test_trainer_refuses_an_int4_export_below_opset_21_before_training(tmp_path):
    from testing_utils import tiny_text_dataset

    from hf_qat.transformers import QATTrainer, QATTrainingArguments

    args = QATTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        report_to=[],
        use_cpu=True,
        export_onnx=True,
        onnx_opset=18,
        nncf_config=quant_config(**GPT2_4BIT),
    )
    data = tiny_text_dataset(n=8).map(lambda row: {"labels": row["input_ids"]})
    trainer = QATTrainer(model=tiny_gpt2(), args=args, train_dataset=data)
    with pytest.raises(ExportError, match="group-wise: its blocked DequantizeLinear needs onnx_opset 21, asked: 18"):
        trainer.train()
    assert trainer.state.global_step == 0 and not (tmp_path / "model.onnx").exists()

    args.onnx_opset = None  # the default: 21 for group-wise weights
    trainer = QATTrainer(model=tiny_gpt2(), args=args, train_dataset=data)
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.onnx_result.opset == 21
    assert len(trainer.onnx_result.summary.int4_initializers) == 8 and (tmp_path / "openvino_model.xml").is_file()


def test_weight_only_scheme_builds_no_activation_quantizers():
    ctrl, model, batches = compress(tiny_gpt2(), **{**GPT2_4BIT, "activations": {"scheme": "none"}})
    assert ctrl.activation_quantizers == {} and len(ctrl.weight_quantizers) == 11
    with pytest.raises(ConfigError, match="scheme"):
        compress(tiny_gpt2(), activations={"scheme": "dynamic"})


def test_run_qat_causal_lm_int4_preset_pushes_and_pulls(hub, tmp_path):
    """scripts/run_qat.py --task causal-lm with the repository's 4-bit preset: INT4 ONNX and IR, a push, and a pull
    whose logits equal the trained model's; generate works on the pulled model."""
    from run_qat_utils import ROOT, causal_lm_files, common, load_script, tiny_text_model
    from transformers import AutoModelForCausalLM

    run_qat = load_script()
    model = tiny_text_model(tmp_path / "model", arch="gpt2")
    train, valid = causal_lm_files(tmp_path)
    out = tmp_path / "out"
    preset = ROOT / "scripts" / "configs" / "causal_lm_int4.json"
    args = ["--model_name", str(model), "--task", "causal-lm", "--train_file", train, "--validation_file", valid]
    args += [*common(out), "--nncf_config", str(preset), "--distillation_weight", "0.5"]  # from the FP32 model
    args += ["--push_to_hub", "true", "--hub_model_id", "test-user/gpt2-int4"]
    results = run_qat.main(args)
    assert results["quantizers"] == {"weights": 11, "activations": 0}
    v = results["values"]
    assert v["fp32"] > 1 and v["int8_onnx"] == pytest.approx(v["int8"], rel=0.05)
    assert results["openvino"]["integer_weight_constants"] >= 11

    local = AutoModelForCausalLM.from_pretrained(out).eval()
    pulled = AutoModelForCausalLM.from_pretrained("test-user/gpt2-int4").eval()
    grouped = [q for q in pulled._hf_qat_ctrl.weight_quantizers.values() if q.spec.grouped]
    assert len(grouped) == 8 and all(q.spec.num_bits == 4 and q.spec.group_size == 32 for q in grouped)
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        assert torch.equal(local(ids).logits, pulled(ids).logits)
    generated = pulled.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 9)
    files = hub.files("test-user/gpt2-int4")
    assert "model.onnx" in files and "openvino_model.xml" in files
    card = files["README.md"].decode()  # the card names what the files are, not INT8
    assert "INT4/INT8 weight-only quantization-aware-trained version" in card and "INT8 quantization-aware" not in card
    assert "- int4" in card and "QuantizeLinear/DequantizeLinear activations" not in card


# -- 8-bit per-token dynamic activations (activations.scheme: dynamic_per_token) ---------------------------------------


def test_per_token_dynamic_quantizer_scales_each_token_and_passes_gradients_straight():
    from hf_qat.torch.quantizers import DynamicPerTokenQuantizer

    q = create_quantizer(QuantizerSpec(num_bits=8, narrow_range=True, signedness_to_force=True, dynamic=True))
    assert isinstance(q, DynamicPerTokenQuantizer) and list(q.parameters()) == [] and q.initialized
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 16) * torch.tensor([0.01, 1.0, 50.0]).view(1, 3, 1)).requires_grad_(True)
    out = q(x)
    step = x.detach().abs().amax(-1, keepdim=True) / 127
    torch.testing.assert_close(out, torch.clamp(torch.round(x.detach() / step), -127, 127) * step, rtol=0, atol=0)
    # every token on its own grid: its largest magnitude is exactly representable, the rest within half a step
    assert ((out - x).abs() <= step / 2 + 1e-6 * step).all()
    g = torch.randn_like(x)
    out.backward(g)
    assert torch.equal(x.grad, g)
    assert QuantizerSpec.from_state(q.spec.to_state()).dynamic and "dynamic" not in QuantizerSpec().to_state()


def test_8da4w_gpt2_exports_to_4_bit_kernels_and_nncf_writers_refuse_it(tmp_path):
    from hf_qat.core.layout import quantization_scheme
    from hf_qat.hub.model_card import precision_name
    from hf_qat.torch.export import export_onnx

    algo = {**GPT2_4BIT, "activations": {"scheme": "dynamic_per_token"}}
    ctrl, model, batches = compress(tiny_gpt2(), **algo)
    assert len(ctrl.activation_quantizers) == 17 and all(q.spec.dynamic for q in ctrl.activation_quantizers.values())
    result = export_onnx(model, tmp_path / "model.onnx", batches[0], opset=21, runtimes=("onnxruntime", "openvino"))
    assert all(r.ok for r in result.verification) and result.summary.num_quantize_linear == 0
    assert result.onnxruntime_ops["MatMulNBits"] == 9  # the 8 Conv1D layers (4-bit) and lm_head (8-bit)
    assert precision_name(quantization_scheme(ctrl)) == "INT4/INT8 weights, INT8 per-token dynamic activations"

    ctrl8, _, _ = compress(tiny_gpt2(), activations={"scheme": "dynamic_per_token"})
    with pytest.raises(CompressionStateError, match="per-token dynamic activation quantizers"):
        ctrl8.nncf_state_dict()
