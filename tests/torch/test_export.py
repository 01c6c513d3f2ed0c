"""INT8 ONNX export: graph contents, agreement with PyTorch in ONNX Runtime and OpenVINO, bad input."""

import os
import warnings

import numpy as np
import onnx
import pytest
import torch
from testing_utils import (
    PlainConvNet,
    image_batches,
    inputs_of,
    quant_config,
    text_batches,
    tiny_bert,
    tiny_gpt2,
    tiny_resnet,
    tiny_roberta,
    tiny_vit,
)
from torch import nn

from hf_qat import ExportError, NNCFConfig, create_compressed_model, export_onnx, register_default_init_args, verify_onnx
from hf_qat.onnx import OnnxRunner, summarize
from hf_qat.torch.layers import is_wrapped

ARCHS = {
    "bert": (tiny_bert, text_batches),
    "gpt2": (tiny_gpt2, lambda: text_batches(with_token_types=False)),
    "vit": (tiny_vit, image_batches),
    "resnet": (tiny_resnet, image_batches),
}


def compress(model, batches, **algo):
    config = register_default_init_args(NNCFConfig.from_dict(quant_config(**algo)), batches)
    ctrl, model = create_compressed_model(model, config)
    return ctrl, model, config


def torch_outputs(model, inputs, name="logits"):
    with torch.no_grad():
        out = model(**inputs)
    return (out[name] if not isinstance(out, torch.Tensor) else out).numpy()


def min_activation_step(ctrl) -> float:
    return min(float(q.grid().step.min()) for q in ctrl.activation_quantizers.values())


def activation_points(ctrl) -> int:
    return sum(1 for p in ctrl.setup.points.values() if not p.is_weight)


def many_inputs(arch, n_batches=6, seed=1):
    if arch in ("vit", "resnet"):
        return [inputs_of(b) for b in image_batches(n=n_batches, batch=8, seed=seed)]
    batches = text_batches(n=n_batches, batch=8, seq=10, with_token_types=arch == "bert", seed=seed)
    return [inputs_of(b) for b in batches]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_int8_graph_matches_pytorch(arch, tmp_path):
    factory, data = ARCHS[arch]
    ctrl, model, config = compress(factory(), [inputs_of(b) for b in data()])
    path = tmp_path / "model.onnx"
    result = ctrl.export_model(str(path), runtimes=("onnxruntime", "openvino"))

    assert result.exporter == "dynamo" and result.fallback_reason is None
    summary = summarize(path)
    assert not summary.custom_domains
    # one QuantizeLinear per activation quantization point (a shared quantizer gets one chain per
    # consumer, for ONNX Runtime's integer MatMul fusion), every weight quantizer as an int8 initializer
    assert result.num_activation_quantizers == len(ctrl.activation_quantizers)
    assert summary.num_quantize_linear == activation_points(ctrl)
    assert result.num_weight_quantizers == len(ctrl.weight_quantizers)
    quantized_weight_elements = sum(m.weight.numel() for m in model.modules() if is_wrapped(m) and m.weight_quantizer is not None)
    assert summary.int8_weight_bytes == quantized_weight_elements  # one byte per weight, stored once
    assert len(summary.int8_initializers) == len(ctrl.weight_quantizers)
    assert "batch_size" in next(iter(summary.inputs.values()))
    assert list(summary.outputs) == ["logits"]

    # the automatic verification ran in both runtimes and the graph is exact quantizer by quantizer
    assert [r.runtime for r in result.verification] == ["onnxruntime", "openvino"]
    assert all(r.ok for r in result.verification)
    graph = result.verification[0].quantizers
    assert graph.num_checked >= len(ctrl.activation_quantizers) - 1 and graph.first_divergence is None

    # unoptimised ORT: within one quantization step of PyTorch fake quantization on every output
    step = min_activation_step(ctrl)
    plain = OnnxRunner(path, optimize=False)
    inputs = many_inputs(arch)
    for batch in inputs:
        ref = torch_outputs(model, batch)
        out = plain({k: v.numpy() for k, v in batch.items()})["logits"]
        assert np.abs(out - ref).max() <= step

    # optimised ORT and OpenVINO agree on top-1 for >= 99.5% of the inputs
    for runtime in ("onnxruntime", "openvino"):
        runner = OnnxRunner(path, runtime)
        agree = total = 0
        for batch in inputs:
            ref = torch_outputs(model, batch).argmax(-1)
            out = runner({k: v.numpy() for k, v in batch.items()})["logits"].argmax(-1)
            agree += int((ref == out).sum())
            total += ref.size
        assert agree / total >= 0.995, (runtime, agree, total)


def test_torchscript_exporter_matches_dynamo(tmp_path):
    batches = [inputs_of(b) for b in text_batches()]
    ctrl, model, _ = compress(tiny_bert(), batches)
    a = export_onnx(model, tmp_path / "d.onnx", batches[0], exporter="dynamo")
    b = export_onnx(model, tmp_path / "t.onnx", batches[0], exporter="torchscript")
    assert b.exporter == "torchscript" and b.verification[0].ok
    assert summarize(b.path).num_quantize_linear == summarize(a.path).num_quantize_linear
    batch = inputs_of(text_batches(n=1, batch=3, seq=7, seed=5)[0])  # other batch and sequence sizes
    feed = {k: v.numpy() for k, v in batch.items()}
    out_a = OnnxRunner(a.path, optimize=False)(feed)["logits"]
    out_b = OnnxRunner(b.path, optimize=False)(feed)["logits"]
    np.testing.assert_allclose(out_a, out_b, atol=1e-6)
    np.testing.assert_allclose(out_a, torch_outputs(model, batch), atol=min_activation_step(ctrl))


def test_weights_are_integers_on_the_trained_grid(tmp_path):
    """Narrow range (8-bit weights), half range (overflow fix), asymmetric per-channel weights and
    4-bit asymmetric activations each export to the grid they trained on."""
    batches = [inputs_of(b) for b in text_batches(with_token_types=False)]
    ctrl, model, _ = compress(
        tiny_roberta(),
        batches,
        overflow_fix="enable",
        activations={"mode": "asymmetric", "bits": 4},
        weights={"mode": "symmetric", "per_channel": True},
        scope_overrides={"weights": {"{re}.*classifier.*": {"mode": "asymmetric"}}},
    )
    path = tmp_path / "m.onnx"
    result = export_onnx(model, path, batches[0])
    assert result.verification[0].quantizers.first_divergence is None
    proto = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    int_weights = [inits[n] for n in summarize(proto).int8_initializers]
    signed = [w for w in int_weights if w.dtype == np.int8]
    assert signed and all(w.min() >= -64 and w.max() <= 63 for w in signed)  # half range: 7-bit grid
    assert any(w.dtype == np.uint8 for w in int_weights)  # asymmetric weights: uint8 with zero points
    # 4-bit activations: Q -> Clip -> DQ with the grid's bounds
    clips = [n for n in proto.graph.node if n.op_type == "Clip"]
    assert len(clips) == activation_points(ctrl)
    bounds = {(int(inits[n.input[1]]), int(inits[n.input[2]])) for n in clips if n.input[1] in inits}
    assert bounds == {(0, 15)}
    batch = inputs_of(text_batches(n=1, with_token_types=False, seed=3)[0])
    out = OnnxRunner(path, optimize=False)({k: v.numpy() for k, v in batch.items()})["logits"]
    np.testing.assert_allclose(out, torch_outputs(model, batch), atol=min_activation_step(ctrl))

    # without half range, 8-bit weights are narrow: [-127, 127]
    ctrl2, model2, _ = compress(tiny_roberta(), batches, overflow_fix="disable")
    proto2 = onnx.load(str(export_onnx(model2, tmp_path / "n.onnx", batches[0]).path))
    inits2 = {t.name: onnx.numpy_helper.to_array(t) for t in proto2.graph.initializer}
    ints2 = [inits2[n] for n in summarize(proto2).int8_initializers]
    assert min(w.min() for w in ints2) == -127 and max(w.max() for w in ints2) <= 127


def test_fp32_export_of_compressed_and_plain_models(tmp_path):
    batches = [inputs_of(b) for b in text_batches()]
    fp32 = tiny_bert()
    with torch.no_grad():
        ref = fp32(**batches[0]).logits.numpy()
    plain = export_onnx(fp32, tmp_path / "fp32.onnx", batches[0])
    assert summarize(plain.path).num_quantize_linear == 0 and plain.verification[0].ok
    ctrl, model, _ = compress(fp32, batches)
    as_float = export_onnx(model, tmp_path / "float.onnx", batches[0], quantized=False)
    s = summarize(as_float.path)
    assert s.num_quantize_linear == s.num_dequantize_linear == 0 and not s.int8_initializers
    feed = {k: v.numpy() for k, v in batches[0].items()}
    np.testing.assert_allclose(OnnxRunner(as_float.path)(feed)["logits"], ref, atol=1e-5)
    int8 = summarize(export_onnx(model, tmp_path / "q.onnx", batches[0]).path)
    assert int8.int8_weight_bytes * 4 <= summarize(plain.path).float_weight_bytes  # weights: 1 byte instead of 4
    assert all(q.is_enabled_quantization for q in ctrl.quantizers.values())  # left as it was


def test_example_inputs_from_config_input_info_or_model_config(tmp_path):
    batches = [inputs_of(b) for b in text_batches()]
    ctrl, model, _ = compress(tiny_bert(), batches)
    # model config only: input_ids/attention_mask/token_type_ids built from vocab_size
    r1 = export_onnx(model, tmp_path / "a.onnx")
    assert r1.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert r1.dynamic_axes["input_ids"] == {0: "batch_size", 1: "sequence_length"}
    # NNCF input_info (batch 1 is widened to keep the batch axis dynamic)
    cfg = NNCFConfig.from_dict(
        {"input_info": [{"sample_size": [1, 8], "type": "long", "keyword": "input_ids"}], **quant_config()}
    )
    r2 = export_onnx(model, tmp_path / "b.onnx", config=cfg)
    assert r2.input_names == ["input_ids"] and r2.verification[0].ok
    # NNCF model_args layout for a positional model
    net = PlainConvNet().eval()
    x = torch.randn(2, 3, 8, 8)
    ctrl_c, net, _ = compress(net, [(x,)])
    r3 = ctrl_c.export_model(str(tmp_path / "c.onnx"), save_format="onnx_17", model_args=(x, {}), output_names=["scores"])
    assert r3.opset == 17 and r3.input_names == ["x"] and r3.output_names == ["scores"]
    assert summarize(r3.path).num_quantize_linear == len(ctrl_c.activation_quantizers)
    with pytest.raises(ValueError, match="save_format 'frozen_graph'"):
        ctrl_c.export_model(str(tmp_path / "d.pb"), save_format="frozen_graph")


def test_restored_model_exports_the_same_file(tmp_path):
    batches = [inputs_of(b) for b in text_batches()]
    ctrl, model, config = compress(tiny_bert(), batches)
    state, sd = ctrl.get_compression_state(), model.state_dict()
    _, restored = create_compressed_model(tiny_bert(), NNCFConfig.from_dict(quant_config()), compression_state=state)
    restored.load_state_dict(sd)
    a = export_onnx(model, tmp_path / "a.onnx", batches[0], verify=False)
    b = export_onnx(restored, tmp_path / "b.onnx", batches[0], verify=False)
    ia = {t.name: t.raw_data for t in onnx.load(str(a.path)).graph.initializer}
    ib = {t.name: t.raw_data for t in onnx.load(str(b.path)).graph.initializer}
    assert ia == ib


def test_export_leaves_the_model_unchanged(tmp_path):
    batches = [inputs_of(b) for b in text_batches()]
    ctrl, model, _ = compress(tiny_bert(), batches)
    model.train()
    keys = list(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = {id(m): set(vars(m)) for m in model.modules()}
    export_onnx(model, tmp_path / "m.onnx", batches[0])
    assert model.training and list(model.state_dict()) == keys
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {id(m): set(vars(m)) for m in model.modules()} == attrs
    model.eval()
    ref = torch_outputs(model, batches[1])
    model.train()
    loss = model(**batches[1], labels=torch.zeros(4, dtype=torch.long)).loss
    loss.backward()  # still trains: quantizer parameters get gradients
    assert all(p.grad is not None for q in ctrl.activation_quantizers.values() for p in q.parameters())
    model.eval()
    np.testing.assert_array_equal(torch_outputs(model, batches[1]), ref)


def test_uninitialised_quantizers_are_refused_before_writing(tmp_path):
    batches = [inputs_of(b) for b in text_batches()]
    cfg = NNCFConfig.from_dict(quant_config(initializer={"range": {"num_init_samples": 0}}))
    ctrl, model = create_compressed_model(tiny_bert(), register_default_init_args(cfg, batches))
    assert not any(q.initialized for q in ctrl.activation_quantizers.values())
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="never initialised") as err:
        export_onnx(model, path, batches[0])
    assert "register_default_init_args" in str(err.value)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    batches = [inputs_of(b) for b in text_batches()]
    ctrl, model, _ = compress(tiny_bert(), batches)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_onnx(model, path, batches[0])
    assert path.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left behind


class DataDependent(nn.Module):
    """Python control flow on a tensor value: torch.export cannot trace it, TorchScript bakes it in."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = self.fc(x)
        if h.sum() > 0:
            h = h * 2
        else:
            h = h * 2  # same function either way, so the traced branch is valid for every input
        return self.head(torch.relu(h))


def test_auto_falls_back_to_torchscript_knowingly(tmp_path):
    x = torch.randn(4, 8)
    ctrl, model, _ = compress(DataDependent(), [(x,)])
    with pytest.warns(UserWarning, match="fell back to the TorchScript exporter"):
        result = export_onnx(model, tmp_path / "m.onnx", x)
    assert result.exporter == "torchscript" and "DataDependent" in result.fallback_reason
    assert summarize(result.path).num_quantize_linear == len(ctrl.activation_quantizers)
    assert result.verification[0].ok
    with pytest.raises(ExportError, match="torch.export"):
        export_onnx(model, tmp_path / "n.onnx", x, exporter="dynamo")


@torch.library.custom_op("hf_qat_test::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@_mystery.register_fake
def _(x):
    return torch.empty_like(x)


class Mystery(nn.Module):
    def forward(self, x):
        return torch.ops.hf_qat_test.mystery(x)


class WithMystery(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.odd = Mystery()

    def forward(self, x):
        return self.odd(self.fc(x))


def test_unsupported_operator_names_module_and_op(tmp_path):
    x = torch.randn(4, 8)
    ctrl, model, _ = compress(WithMystery(), [(x,)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ExportError) as err:
            export_onnx(model, tmp_path / "m.onnx", x)
    assert err.value.module is not None and "odd" in err.value.module and "Mystery" in err.value.module
    assert err.value.op is not None and "mystery" in err.value.op
    assert not (tmp_path / "m.onnx").exists()


def test_plain_torch_onnx_export_warns():
    x = torch.randn(2, 3, 8, 8)
    ctrl, model, _ = compress(PlainConvNet().eval(), [(x,)])
    import hf_qat.torch.quantizers as quantizers

    quantizers._warned_plain_export = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(model, (x,), os.devnull, dynamo=False)
    assert any("hf_qat.export_onnx" in str(w.message) for w in caught)


def test_verify_onnx_detects_a_wrong_graph(tmp_path):
    batches = [inputs_of(b) for b in text_batches()]
    ctrl, model, _ = compress(tiny_bert(), batches)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, batches[0])
    assert all(r.ok for r in verify_onnx(model, path, batches[1]))
    # tamper with one activation scale: the graph check points at that quantizer
    proto = onnx.load(str(path))
    q_nodes = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    target = q_nodes[3]
    for t in proto.graph.initializer:
        if t.name == target.input[1]:
            arr = onnx.numpy_helper.to_array(t) * 1.5
            t.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), t.name))
    onnx.save(proto, str(path))
    report = verify_onnx(model, path, batches[1])[0]
    assert not report.ok and report.quantizers.first_divergence is not None
    assert report.quantizers.first_divergence_steps > 1


def test_export_restores_module_modes_and_instance_forwards(tmp_path):
    batches = [inputs_of(b) for b in text_batches()]
    ctrl, model, _ = compress(tiny_bert(), batches)
    model.train()
    model.bert.embeddings.eval()
    query = model.bert.encoder.layer[0].attention.self.query
    calls = []
    original = query.forward

    def hooked(x):  # what hook libraries do: an instance-level forward
        calls.append(1)
        return original(x)

    query.forward = hooked
    export_onnx(model, tmp_path / "m.onnx", batches[0], verify=False)
    assert model.training and not model.bert.embeddings.training
    assert query.__dict__["forward"] is hooked
    with pytest.raises(ExportError):  # and after a failed export too
        export_onnx(model, tmp_path / "n.onnx", batches[0], input_names=["only_one"])
    assert model.training and not model.bert.embeddings.training and query.__dict__["forward"] is hooked


class PositionalOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x, /):
        return self.fc(x)


def test_positional_only_forward_from_a_dict(tmp_path):
    x = torch.randn(4, 8)
    ctrl, model, _ = compress(PositionalOnly(), [(x,)])
    result = export_onnx(model, tmp_path / "m.onnx", {"x": x})
    assert result.input_names == ["x"] and result.verification[0].ok


def test_half_precision_needs_opset_19(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    ctrl, model, _ = compress(PlainConvNet().eval(), [(x,)])
    model.half()
    with pytest.raises(ExportError, match="opset 19"):
        export_onnx(model, tmp_path / "m.onnx", x.half())
    assert not (tmp_path / "m.onnx").exists()


def test_external_data_files_are_replaced_together(tmp_path, monkeypatch):
    import hf_qat.torch.export.exporter as exporter

    batches = [inputs_of(b) for b in text_batches()]
    ctrl, model, _ = compress(tiny_bert(), batches)
    monkeypatch.setattr(exporter, "_PROTOBUF_LIMIT", 1)  # force the >2 GB layout: graph + model.onnx.data
    path = tmp_path / "model.onnx"
    export_onnx(model, path, batches[0], verify=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"model.onnx", "model.onnx.data"}
    real_save = onnx.save_model

    def save_then_fail(*args, **kwargs):
        real_save(*args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", save_then_fail)
    with torch.no_grad():
        model.classifier.weight.mul_(2)
    with pytest.raises(OSError):
        export_onnx(model, path, batches[0], verify=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_example_as_long_as_the_position_table_exports(tmp_path):
    """NNCF's GPT-2 config uses [1, 1024], GPT-2's whole position table: the example is shortened for the probe
    run along the dynamic axes instead of running past the table (was a bare IndexError)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=16, bos_token_id=1, eos_token_id=1)
    )
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 64, (2, 16), generator=g)} for _ in range(2)]
    config = NNCFConfig.from_dict(
        {
            "input_info": [{"sample_size": [1, 16], "type": "long", "keyword": "input_ids"}],
            "compression": {"algorithm": "quantization"},
        }
    )
    ctrl, model = create_compressed_model(model, register_default_init_args(config, batches))
    result = ctrl.export_model(str(tmp_path / "gpt2.onnx"))  # example from input_info: [1, 16] = n_positions
    assert all(r.ok for r in result.verification)
    assert result.dynamic_axes["input_ids"] == {0: "batch_size", 1: "sequence_length"}
    out = OnnxRunner(str(tmp_path / "gpt2.onnx"))({"input_ids": np.ones((1, 16), dtype=np.int64)})
    assert out["logits"].shape == (1, 16, 64)


def test_failure_in_the_probe_run_is_an_export_error(tmp_path, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(
        GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=16, bos_token_id=1, eos_token_id=1)
    )
    monkeypatch.setattr(model.config, "n_positions", 10_000)  # the limit no longer protects the probe run
    with pytest.raises(ExportError, match=r"grown along their dynamic axes .*failed in module transformer\.wpe .*IndexError"):
        export_onnx(model, tmp_path / "m.onnx", {"input_ids": torch.ones(2, 16, dtype=torch.long)}, quantized=False)
