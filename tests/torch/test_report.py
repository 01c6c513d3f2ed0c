"""Per-layer SQNR report (hf_qat.torch.report): the numbers, the worst layers, the saved forms and the errors."""

import copy
import json
import math

import pytest
import torch
from testing_utils import PlainConvNet, inputs_of, quant_config, text_batches, tiny_bert

import hf_qat
from hf_qat import NNCFConfig, create_compressed_model, register_default_init_args
from hf_qat.torch.report import LayerReport, quantization_report

CLASSIFIER = "classifier"
VALUE = "bert.encoder.layer.0.attention.self.value"


def compressed_bert(num_layers: int = 2):
    """(float copy, controller, QAT model) of a tiny BERT, calibrated on text batches."""
    model = tiny_bert(num_layers)
    fp32 = copy.deepcopy(model)
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), [inputs_of(b) for b in text_batches()])
    ctrl, qat = create_compressed_model(model, config)
    return fp32, ctrl, qat


@pytest.fixture(scope="module")
def bert():
    return compressed_bert()


@pytest.fixture(scope="module")
def report(bert):
    fp32, _ctrl, qat = bert
    return quantization_report(fp32, qat, text_batches(seed=1))


def test_rows_name_every_quantized_layer_in_network_order(bert, report):
    fp32, ctrl, qat = bert
    quantized = [p for p, m in qat.named_modules() if hasattr(type(m), "_hf_qat_original_class")]
    assert sorted(r.path for r in report.rows) == sorted(quantized) and report.not_run == ()
    paths = [r.path for r in report.rows]
    assert paths.index("bert.embeddings.word_embeddings") < paths.index(VALUE) < paths.index(CLASSIFIER)
    row = {r.path: r for r in report.rows}[VALUE]
    assert row.scope == (
        "BertForSequenceClassification/BertModel[bert]/BertEncoder[encoder]/ModuleList[layer]/BertLayer[0]/"
        "BertAttention[attention]/BertSelfAttention[self]/NNCFLinear[value]"
    )
    # the scope is the one the quantizer setup uses for the layer's weight
    assert row.scope + "/linear_0" in ctrl.weight_quantizers
    assert (row.layer_type, row.weight_bits, row.input_bits) == ("Linear", 8, 8)
    embedding = {r.path: r for r in report.rows}["bert.embeddings.word_embeddings"]
    assert (embedding.layer_type, embedding.weight_bits, embedding.input_bits) == ("Embedding", 8, None)
    assert report.num_batches == 3 and report.num_samples == 12


def test_normal_case_numbers_are_finite_and_positive(report):
    for r in report.rows:
        assert math.isfinite(r.sqnr_db) and r.sqnr_db > 0, r
        assert math.isfinite(r.local_sqnr_db) and r.local_sqnr_db > 0, r
    # the first layers see no upstream error: their local SQNR is their SQNR
    first = report.rows[0]
    assert first.sqnr_db == pytest.approx(first.local_sqnr_db)


def test_identical_models_give_inf(bert):
    fp32, ctrl, qat = bert
    ctrl.disable_weight_quantization()
    ctrl.disable_activation_quantization()
    try:
        report = quantization_report(fp32, qat, text_batches(seed=1))
    finally:
        ctrl.enable_weight_quantization()
        ctrl.enable_activation_quantization()
    assert report.rows and all(r.sqnr_db == math.inf and r.local_sqnr_db == math.inf for r in report.rows)
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["rows"][0]["sqnr_db"] == "inf"


def test_models_are_left_as_they_were(bert):
    fp32, _ctrl, qat = bert
    fp32.train()
    qat.train()
    attention = fp32.config._attn_implementation
    quantization_report(fp32, qat, text_batches(n=1))
    assert all(m.training for m in fp32.modules()) and all(m.training for m in qat.modules())
    assert fp32.config._attn_implementation == attention
    fp32.eval()
    qat.eval()


@pytest.mark.parametrize("path", [CLASSIFIER, VALUE])
def test_layer_with_tiny_range_is_the_worst(path):
    fp32, ctrl, qat = compressed_bert()
    with torch.no_grad():
        qat.get_submodule(path).weight_quantizer.scale.fill_(1e-6)
    report = quantization_report(fp32, qat, text_batches(seed=1))
    # its own error is the largest: first by local SQNR, whatever comes after it in the network
    assert report.worst(1, by="local")[0].path == path
    damaged = {r.path: r for r in report.rows}[path]
    assert damaged.local_sqnr_db < 3
    if path == CLASSIFIER:  # nothing downstream: also first by SQNR through the network
        assert report.worst(1)[0].path == path
    else:  # the error carries on: the layers after it are worse than before it
        paths = [r.path for r in report.rows]
        before = min(r.sqnr_db for r in report.rows[: paths.index(path)])
        assert damaged.sqnr_db < before
    sqnrs = [r.sqnr_db for r in report.worst(len(report.rows))]
    assert sqnrs == sorted(sqnrs)


def test_worst_orders_nan_first_and_checks_its_arguments(report):
    rows = list(report.rows)
    rows[5] = type(rows[5])(**{**rows[5].__dict__, "sqnr_db": math.nan})
    odd = LayerReport(tuple(rows), report.num_batches, report.num_samples)
    assert odd.worst(1)[0].path == rows[5].path
    assert len(odd.worst(100)) == len(rows) and odd.worst(0) == []
    with pytest.raises(ValueError, match="'sqnr' or 'local'"):
        odd.worst(3, by="bits")


def test_saved_forms(report, tmp_path):
    data = report.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert LayerReport.from_dict(json.loads(text)) == report
    assert data["format"] == "hf_qat.layer_report" and data["version"] == 1
    assert [r["path"] for r in data["rows"]] == [r.path for r in report.rows]
    with pytest.raises(ValueError, match="Not a layer report"):
        LayerReport.from_dict({"rows": []})
    table = report.to_markdown(3).splitlines()
    assert len(table) == 2 + 3 and table[0].startswith("| # | scope | type | weight bits | SQNR dB | local SQNR dB |")
    assert report.worst(1)[0].scope in table[2]
    assert len(report.to_markdown(None).splitlines()) == 2 + len(report.rows)


def test_plot_writes_a_png(report, bert, tmp_path):
    path = report.plot(tmp_path / "sqnr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sqnr.png"]  # no temporary file left
    # infinite and NaN values are drawn too
    rows = list(report.rows)
    rows[0] = type(rows[0])(**{**rows[0].__dict__, "sqnr_db": math.inf, "local_sqnr_db": math.inf})
    rows[1] = type(rows[1])(**{**rows[1].__dict__, "sqnr_db": math.nan, "local_sqnr_db": None})
    odd = LayerReport(tuple(rows), 1, 4)
    assert odd.plot(tmp_path / "odd.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no rows"):
        LayerReport((), 1, 1).plot(tmp_path / "empty.png")


def test_mismatched_float_model_raises(bert):
    _fp32, _ctrl, qat = bert
    with pytest.raises(
        ValueError, match=r"(?s)does not match qat_model.*'bert\.encoder\.layer\.1\..*' \(Linear\) is not in fp32_model"
    ):
        quantization_report(tiny_bert(num_layers=1), qat, text_batches(n=1))
    with pytest.raises(ValueError, match=r"'classifier': weight shape \[3, 32\] in fp32_model, \[2, 32\] in qat_model"):
        quantization_report(tiny_bert(num_labels=3), qat, text_batches(n=1))
    with pytest.raises(ValueError, match="fp32_model is qat_model"):
        quantization_report(qat, qat, text_batches(n=1))
    with pytest.raises(ValueError, match="fp32_model holds .* quantized layer"):
        quantization_report(copy.deepcopy(qat), qat, text_batches(n=1))
    with pytest.raises(ValueError, match="has no quantized layer"):
        quantization_report(tiny_bert(), tiny_bert(), text_batches(n=1))


def test_batches_errors(bert):
    fp32, _ctrl, qat = bert
    with pytest.raises(ValueError, match="batches is empty"):
        quantization_report(fp32, qat, [])
    with pytest.raises(ValueError, match="could not be fed to fp32_model"):
        quantization_report(fp32, qat, [{"input_ids": torch.zeros(2, 3, 4, 5, dtype=torch.long)}])
    one = quantization_report(fp32, qat, inputs_of(text_batches(n=1)[0]))  # a single dict is one batch
    assert one.num_batches == 1
    assert quantization_report(fp32, qat, text_batches(n=5), max_batches=2).num_batches == 2


def test_controller_method_and_public_name(bert):
    fp32, ctrl, qat = bert
    assert hf_qat.quantization_report is quantization_report
    assert "quantization_report" in dir(hf_qat)
    by_ctrl = ctrl.quantization_report(fp32, text_batches(seed=1), local=False)
    direct = quantization_report(fp32, qat, text_batches(seed=1), local=False)
    assert by_ctrl == direct and all(r.local_sqnr_db is None for r in by_ctrl.rows)


def test_any_model_with_tensor_batches():
    """A plain torch model (conv -> BatchNorm -> ReLU) fed (input, target) tuples and bare tensors."""
    torch.manual_seed(0)
    model = PlainConvNet().eval()
    fp32 = copy.deepcopy(model)
    data = [(torch.randn(4, 3, 8, 8), torch.zeros(4)) for _ in range(3)]
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), data)
    ctrl, qat = create_compressed_model(model, config)
    report = quantization_report(fp32, qat, data)
    assert [(r.path, r.scope, r.layer_type) for r in report.rows] == [
        ("conv", "PlainConvNet/NNCFConv2d[conv]", "Conv2d"),
        ("fc", "PlainConvNet/NNCFLinear[fc]", "Linear"),
    ]
    assert all(math.isfinite(r.sqnr_db) and r.sqnr_db > 0 for r in report.rows)
    tensors = quantization_report(fp32, qat, [x for x, _ in data])
    assert [r.sqnr_db for r in tensors.rows] == pytest.approx([r.sqnr_db for r in report.rows])
