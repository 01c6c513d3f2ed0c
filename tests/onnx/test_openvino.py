"""OpenVINO IR converted from the INT8 ONNX export: integer weights kept, verified in OpenVINO, nothing half-written."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import openvino as ov
import pytest
import torch
from testing_utils import inputs_of, quant_config, text_batches, tiny_bert, tiny_text_dataset

import hf_qat
from hf_qat import ExportError
from hf_qat.onnx import openvino as ov_module
from hf_qat.onnx.openvino import OPENVINO_BIN_NAME, OPENVINO_XML_NAME, convert_to_openvino


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    batches = [inputs_of(b) for b in text_batches()]
    config = hf_qat.register_default_init_args(hf_qat.NNCFConfig.from_dict(quant_config()), batches)
    ctrl, model = hf_qat.create_compressed_model(tiny_bert(), config)
    folder = tmp_path_factory.mktemp("export")
    result = ctrl.export_model(str(folder / "model.onnx"), model_args=batches[0])
    return ctrl, result


def _integer_weights_in_onnx(path) -> int:
    graph = onnx.load(str(path)).graph
    ints = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    return len({n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in ints})


def test_ir_keeps_int8_weights_and_matches_onnx_runtime_in_f32(exported, tmp_path):
    _, result = exported
    ir = convert_to_openvino(result.path, tmp_path / OPENVINO_XML_NAME, result.inputs)
    assert ir.xml_path.is_file() and (tmp_path / OPENVINO_BIN_NAME).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [OPENVINO_BIN_NAME, OPENVINO_XML_NAME]  # no temp left
    # the IR read back from disk: its weight constants are int8, at least one per int8 ONNX weight
    types = [op.get_element_type().get_type_name() for op in ov.Core().read_model(str(ir.xml_path)).get_ops()
             if op.get_type_name() == "Constant"]  # fmt: skip
    assert types.count("i8") >= _integer_weights_in_onnx(result.path) == ir.num_onnx_integer_weights > 0
    f32, default = ir.check("f32"), ir.check("default")
    assert f32.required and f32.ok and f32.inference_precision == "f32" and f32.top1_agreement == 1.0
    assert f32.max_abs_diff < 1e-4 and f32.num_rows > 0
    assert not default.required and default.inference_precision in ("f32", "bf16", "f16")
    assert set(ir.to_dict()["checks"]) == {"f32", "default"}


def test_ctrl_export_model_openvino_format(exported, tmp_path):
    ctrl, result = exported
    ir = ctrl.export_model(str(tmp_path / "ir" / OPENVINO_XML_NAME), save_format="openvino",
                           model_args={k: torch.from_numpy(v) for k, v in result.inputs[0].items()})  # fmt: skip
    assert ir.ok and ir.export.num_weight_quantizers > 0 and ir.export.path is None  # the intermediate ONNX is gone
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == [OPENVINO_BIN_NAME, OPENVINO_XML_NAME]
    with pytest.raises(ValueError, match="'onnx_<opset>'.*'openvino'"):
        ctrl.export_model(str(tmp_path / "x.xml"), save_format="ir")


def test_ir_that_lost_its_integer_weights_is_refused_and_stale_ir_removed(exported, tmp_path, monkeypatch):
    _, result = exported
    (tmp_path / OPENVINO_XML_NAME).write_text("stale")
    (tmp_path / OPENVINO_BIN_NAME).write_bytes(b"stale")
    monkeypatch.setattr(ov_module, "_constant_types", lambda model: {"f32": 100})
    with pytest.raises(ExportError, match=r"0 integer constants, the ONNX file \d+ integer weights"):
        convert_to_openvino(result.path, tmp_path / OPENVINO_XML_NAME, result.inputs)
    assert list(tmp_path.iterdir()) == []


def test_failed_f32_check_leaves_no_ir(exported, tmp_path, monkeypatch):
    _, result = exported
    real = ov_module._run_ir

    def flipped(xml, batches, names, config):  # an IR whose logits come out reversed
        outs, precision = real(xml, batches, names, config)
        return [{k: v[..., ::-1] for k, v in o.items()} for o in outs], precision

    monkeypatch.setattr(ov_module, "_run_ir", flipped)
    with pytest.raises(ExportError, match="does not match ONNX Runtime.*OpenVINO f32.*FAILED"):
        convert_to_openvino(result.path, tmp_path / OPENVINO_XML_NAME, result.inputs)
    assert list(tmp_path.iterdir()) == []


def test_unconvertible_file_is_an_export_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ExportError, match="OpenVINO could not convert"):
        convert_to_openvino(bad, inputs=[{"x": np.zeros(1)}])
    assert not (tmp_path / OPENVINO_XML_NAME).exists()
    with pytest.raises(ValueError, match="must end in .xml"):
        convert_to_openvino(bad, tmp_path / "model.bin", verify=False)


def _trainer(tmp_path, **kw):
    from hf_qat.transformers import QATTrainer, QATTrainingArguments

    args = QATTrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, report_to=[],
                                use_cpu=True, save_strategy="no", disable_tqdm=True, export_onnx=True,
                                evaluate_onnx=False, num_calibration_samples=16, **kw)  # fmt: skip
    torch.manual_seed(0)
    return QATTrainer(model=tiny_bert(), args=args, train_dataset=tiny_text_dataset(32))


def test_trainer_writes_verified_ir_beside_the_onnx_file(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.train()
    assert trainer.openvino_result is not None and trainer.openvino_result.ok and trainer.openvino_error is None
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / OPENVINO_XML_NAME).is_file()
    assert trainer.openvino_result.num_integer_weights >= trainer.onnx_result.num_weight_quantizers


def test_trainer_without_ir_when_openvino_fails(tmp_path, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise ExportError("OpenVINO could not convert model.onnx: unsupported operation Foo")

    monkeypatch.setattr(ov_module, "convert_to_openvino", refuse)
    (tmp_path / OPENVINO_XML_NAME).write_text("an IR of an earlier model")
    trainer = _trainer(tmp_path)
    with caplog.at_level(logging.WARNING, logger="hf_qat"):
        trainer.train()
    assert (tmp_path / "model.onnx").is_file() and not (tmp_path / OPENVINO_XML_NAME).exists()
    assert trainer.openvino_result is None and "unsupported operation Foo" in trainer.openvino_error
    assert any("no OpenVINO IR" in r.getMessage() and "unsupported operation Foo" in r.getMessage() for r in caplog.records)


def test_trainer_export_openvino_false_writes_no_ir(tmp_path):
    trainer = _trainer(tmp_path, export_openvino=False)
    trainer.train()
    assert (tmp_path / "model.onnx").is_file() and not (tmp_path / OPENVINO_XML_NAME).exists()
