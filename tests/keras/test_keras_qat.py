"""Keras 3 backend: compression, training, checkpoints, export (frozen graph, SavedModel, ONNX), bad input."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras_hub")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import keras_hub
import tensorflow as tf

import hf_qat.keras as hqk
from hf_qat import NNCFConfig
from hf_qat.errors import (
    CalibrationError,
    CompressionStateError,
    NothingToQuantizeError,
    UnsupportedLayerError,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def quant_config(num_init_samples=64, **extra):
    algo = {
        "algorithm": "quantization",
        "initializer": {"range": {"num_init_samples": num_init_samples}},
    }
    algo.update(extra)
    return NNCFConfig.from_dict({"compression": algo})


def mlp():
    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), name="x")
    h = keras.layers.Dense(32, activation="relu", name="d1")(inp)
    h = keras.layers.Dense(32, activation="relu", name="d2")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="logits")(h))


def mlp_data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 16)).astype("float32")
    y = rng.integers(0, 3, n)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16), x


def tiny_bert():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=100,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
    )
    return keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)


def bert_data(n=32, seq=16):
    rng = np.random.default_rng(0)
    feats = {
        "token_ids": rng.integers(0, 100, (n, seq)).astype("int32"),
        "padding_mask": np.ones((n, seq), "int32"),
        "segment_ids": np.zeros((n, seq), "int32"),
    }
    return tf.data.Dataset.from_tensor_slices((feats, rng.integers(0, 2, n))).batch(8), feats


def tiny_cnn():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="pixels")
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(4, name="head")(h))


def compress(model, dataset, **cfg):
    config = hqk.register_default_init_args(quant_config(**cfg), dataset)
    return hqk.create_compressed_model(model, config)


def fit(model, ctrl, dataset, epochs=1):
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(dataset, epochs=epochs, verbose=0, callbacks=ctrl.callbacks())


# -- compression and training ---------------------------------------------------------------------
def test_functional_model_is_compressed_and_quantizers_train():
    ds, x = mlp_data()
    ctrl, model = compress(mlp(), ds)
    assert sorted(ctrl.weight_quantizers) == ["d1", "d2", "logits"]
    assert sorted(ctrl.activation_quantizers) == [
        "d1|INPUT0",
        "d2|INPUT0",
        "logits|INPUT0",
    ]
    stats = ctrl.statistics().quantization
    assert (stats.wq_counter, stats.aq_counter, stats.num_per_channel) == (3, 3, 3)
    assert "d1" in ctrl.quantized_layers_table()
    # range init: input quantizer scale is the calibration abs-max
    assert ctrl.quantizers["d1|INPUT0"].scale.numpy() == pytest.approx(np.abs(x).max(), rel=1e-6)
    # quantized outputs differ from float ones and lie on the grid of the last input quantizer
    before = {qid: [v.numpy().copy() for v in q.variables.values()] for qid, q in ctrl.quantizers.items()}
    fit(model, ctrl, ds, epochs=2)
    changed = [
        qid
        for qid, q in ctrl.quantizers.items()
        if any(not np.array_equal(a, v.numpy()) for a, v in zip(before[qid], q.variables.values()))
    ]
    assert any("|INPUT0" in qid for qid in changed), "input quantizer ranges must train with model.fit"
    assert {v.path for v in model.trainable_variables} >= {
        "d1/hf_qat_input_scale",
        "d1/hf_qat_weight_scale",
    }


def test_keras_hub_bert_nested_layers_are_quantized():
    ds, _ = bert_data()
    ctrl, model = compress(tiny_bert(), ds)
    ids = set(ctrl.quantizers)
    assert "transformer_layer_0/self_attention_layer/query" in ids
    assert "transformer_layer_1/self_attention_layer/attention_output|INPUT0" in ids
    assert "token_embedding" in ids and "token_embedding|INPUT0" not in ids
    # EinsumDense kernels [hidden, heads, head_dim] are per-channel over heads x head_dim
    query = ctrl.quantizers["transformer_layer_0/self_attention_layer/query"]
    assert tuple(query.scale.shape) == (16,) and list(query.spec.scale_shape) == [
        1,
        2,
        8,
    ]
    assert len(ctrl.weight_quantizers) == 17 - 1  # 16 Dense/EinsumDense/Embedding; position table stays float
    fit(model, ctrl, ds)


def test_conv_model_and_staged_scheduler():
    rng = np.random.default_rng(0)
    ds = tf.data.Dataset.from_tensor_slices((rng.normal(size=(16, 8, 8, 3)).astype("float32"), rng.integers(0, 4, 16))).batch(8)
    ctrl, model = compress(tiny_cnn(), ds, params={"activations_quant_start_epoch": 1})
    assert set(ctrl.quantizers) == {"conv", "conv|INPUT0", "head", "head|INPUT0"}
    assert not ctrl.quantizers["conv|INPUT0"].enabled  # staged: activations off before epoch 1
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(ctrl.quantizers["conv|INPUT0"].enabled)

    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(ds, epochs=2, verbose=0, callbacks=ctrl.callbacks() + [Probe()])
    assert seen == [False, True]


def test_weights_saved_by_keras_stay_plain_and_loadable(tmp_path):
    ds, _x = mlp_data()
    ctrl, model = compress(mlp(), ds)
    fit(model, ctrl, ds)
    model.save_weights(tmp_path / "m.weights.h5")
    model.save(tmp_path / "m.keras")
    plain = mlp()
    plain.load_weights(tmp_path / "m.weights.h5")
    assert np.array_equal(plain.get_layer("d1").kernel.numpy(), model.get_layer("d1").kernel.numpy())
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("d1")) is keras.layers.Dense


# -- checkpoints ----------------------------------------------------------------------------------
def test_checkpoint_restore_is_bit_identical_without_range_init(tmp_path):
    ds, feats = bert_data()
    ctrl, model = compress(tiny_bert(), ds)
    fit(model, ctrl, ds)
    path = tf.train.Checkpoint(model=model, compression_state=hqk.CompressionState(ctrl)).write(str(tmp_path / "ckpt"))
    expected = model(feats, training=False).numpy()

    state = hqk.load_compression_state(path)
    assert json.loads(json.dumps(state)) == ctrl.get_compression_state()
    # no calibration data registered: restoring must not need it
    ctrl2, model2 = hqk.create_compressed_model(tiny_bert(), quant_config(), compression_state=state)
    tf.train.Checkpoint(model=model2, compression_state=hqk.CompressionState(ctrl2)).read(path).assert_existing_objects_matched()
    assert np.array_equal(model2(feats, training=False).numpy(), expected)
    for qid, q in ctrl.quantizers.items():
        for name, var in q.variables.items():
            assert np.array_equal(var.numpy(), ctrl2.quantizers[qid].variables[name].numpy()), (qid, name)


def test_quantizer_arrays_round_trip_and_mismatch_is_refused():
    ds, x = mlp_data()
    ctrl, model = compress(mlp(), ds)
    arrays = ctrl.quantizer_arrays()
    ctrl2, model2 = hqk.create_compressed_model(mlp(), quant_config(), compression_state=ctrl.get_compression_state())
    bad = dict(arrays)
    bad["d1/scale"] = np.ones(5, np.float32)
    before = ctrl2.quantizers["d2"].scale.numpy().copy()
    with pytest.raises(CompressionStateError, match="d1/scale: shape"):
        ctrl2.load_quantizer_arrays(bad)
    assert np.array_equal(ctrl2.quantizers["d2"].scale.numpy(), before)  # nothing assigned
    ctrl2.load_quantizer_arrays(arrays)
    model2.set_weights(model.get_weights())
    assert np.array_equal(model2(x).numpy(), model(x).numpy())


def test_compression_state_of_another_model_is_refused_without_changes():
    ds, _ = mlp_data()
    ctrl, _ = compress(mlp(), ds)
    cnn = tiny_cnn()
    with pytest.raises(CompressionStateError, match="no layer at path 'd1'"):
        hqk.create_compressed_model(cnn, quant_config(), compression_state=ctrl.get_compression_state())
    assert not hqk.is_compressed(cnn)


# -- export ---------------------------------------------------------------------------------------
def test_bert_exports_to_frozen_graph_saved_model_and_int8_onnx(tmp_path):
    import onnx
    from onnx import numpy_helper

    from hf_qat.onnx.runtime import OnnxRunner

    ds, feats = bert_data()
    ctrl, model = compress(tiny_bert(), ds)
    fit(model, ctrl, ds)
    expected = model(feats, training=False).numpy()

    frozen = ctrl.export_model(str(tmp_path / "model.pb"))
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((tmp_path / "model.pb").read_bytes())
    ops = [n.op for n in graph_def.node]
    assert ops.count("FakeQuantWithMinMaxVars") == 14 and ops.count("FakeQuantWithMinMaxVarsPerChannel") == 16
    assert "VarHandleOp" not in ops and "ReadVariableOp" not in ops  # frozen: constants only
    assert frozen.num_fake_quant == 30

    ctrl.export_model(str(tmp_path / "saved"), save_format="saved_model")
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    out = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in feats.items()})
    np.testing.assert_allclose(next(iter(out.values())).numpy(), expected, atol=1e-5)

    result = ctrl.export_model(str(tmp_path / "model.onnx"), save_format="onnx")
    proto = onnx.load(str(tmp_path / "model.onnx"))
    q_nodes = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert q_nodes and all(n.input[0] not in {t.name for t in proto.graph.initializer} for n in q_nodes)
    int8 = [t for t in proto.graph.initializer if numpy_helper.to_array(t).dtype == np.int8 and t.dims and len(t.dims) >= 2]
    assert len(int8) == result.num_int8_weights == 16
    assert all(r.ok for r in result.verification), "\n".join(map(str, result.verification))
    # within one quantisation step of TF on the logits, unoptimised ORT
    runner = OnnxRunner(str(tmp_path / "model.onnx"), optimize=False)
    logits = runner({k: v for k, v in feats.items()})[proto.graph.output[0].name]
    step = float(ctrl.quantizers["logits|INPUT0"].grid().step[0])
    assert np.abs(logits - expected).max() <= step
    assert not list(tmp_path.glob(".*tmp*"))


def test_onnx_export_of_mlp_matches_tf_and_stores_int8_weights(tmp_path):
    import onnx

    ds, _x = mlp_data()
    ctrl, model = compress(mlp(), ds)
    fit(model, ctrl, ds)
    result = ctrl.export_model(str(tmp_path / "m.onnx"), save_format="onnx_17")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert result.num_quantize_linear == 3 and result.num_int8_weights == 3
    assert proto.opset_import[0].version == 17
    unoptimized, optimized = result.verification
    assert unoptimized.ok and optimized.ok and unoptimized.quantizers.method == "own_input"
    assert unoptimized.outputs[0].max_abs_diff <= float(ctrl.quantizers["logits|INPUT0"].grid().step[0])


def test_quantizer_grid_is_the_contract_grid_tf_computes_on():
    """The backend contract: ``grid()`` is the core ``Grid``, spanning TF's nudged range, and TF's fake-quant
    outputs are its levels."""
    from hf_qat.core.quantizer import Grid, Quantizer

    ds, x = mlp_data()
    ctrl, _model = compress(mlp(), ds)
    for q in ctrl.quantizers.values():
        grid = q.grid()
        assert isinstance(q, Quantizer) and isinstance(grid, Grid)
        nmin, nmax = q.nudged_range()
        np.testing.assert_allclose(grid.low, np.ravel(nmin), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(grid.high, np.ravel(nmax), rtol=1e-6, atol=1e-7)
    q = ctrl.quantizers["d2|INPUT0"]
    grid = q.grid()
    out = q.fake_quant(tf.constant(np.random.default_rng(0).normal(size=(64, 16)).astype("float32") * 3)).numpy()
    codes = out / grid.step[0] + grid.zero_point[0]
    np.testing.assert_allclose(codes, np.rint(codes), atol=1e-3)
    assert codes.min() >= grid.level_low - 1e-3 and codes.max() <= grid.level_high + 1e-3


def test_tampered_range_is_caught_by_verification(tmp_path):
    from hf_qat.errors import ExportError
    from hf_qat.keras.verify import verify_keras_onnx

    ds, _ = mlp_data()
    ctrl, _model = compress(mlp(), ds)
    ctrl.export_model(str(tmp_path / "m.onnx"), save_format="onnx")
    q = ctrl.quantizers["d2|INPUT0"]
    q.scale.assign(q.scale.numpy() * 1.5)  # the file no longer matches the model
    report = verify_keras_onnx(ctrl, str(tmp_path / "m.onnx"))
    assert not report[0].ok and set(report[0].quantizers.off_grid) == {"d2|INPUT0"}
    with pytest.raises(ExportError):
        ctrl.activation_quantizers["d1|INPUT0"].initialized = False
        ctrl.export_model(str(tmp_path / "m2.onnx"), save_format="onnx")
    assert not (tmp_path / "m2.onnx").exists()


# -- bad input ------------------------------------------------------------------------------------
class OpaqueProjection(keras.layers.Layer):
    """A custom layer with its own kernel and tf.matmul: hf_qat cannot quantize it."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 4), name="w")

    def call(self, x):
        return tf.matmul(x, self.w)


def test_custom_layer_with_a_matrix_is_an_error_not_silently_float():
    keras.utils.set_random_seed(0)
    inp = keras.Input((16,))
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(OpaqueProjection(name="opaque")(inp)))
    ds = tf.data.Dataset.from_tensor_slices(np.zeros((8, 16), "float32")).batch(4)
    with pytest.raises(UnsupportedLayerError, match="'opaque' \\(OpaqueProjection\\) holds weight"):
        compress(model, ds)
    assert not hqk.is_compressed(model)
    # excluded explicitly, it stays float and the rest is quantized
    config = hqk.register_default_init_args(
        NNCFConfig.from_dict({"compression": {"algorithm": "quantization", "ignored_scopes": ["opaque"]}}),
        ds,
    )
    ctrl, _ = hqk.create_compressed_model(model, config)
    assert set(ctrl.quantizers) == {"head", "head|INPUT0"}


def test_dataset_with_wrong_structure_names_the_element_spec():
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((8, 16), "float32"), np.zeros((8, 16), "float32"), np.zeros(8))).batch(4)
    bert_ds = tf.data.Dataset.from_tensor_slices(({"tokens": np.zeros((8, 4), "int32")}, np.zeros(8))).batch(4)
    model = tiny_bert()
    with pytest.raises(
        CalibrationError,
        match="takes a dict of inputs \\['padding_mask', 'segment_ids', 'token_ids'\\]",
    ):
        compress(model, bert_ds)
    assert not hqk.is_compressed(model)
    with pytest.raises(CalibrationError, match="is a dict|feature tensor"):
        compress(
            mlp(),
            tf.data.Dataset.from_tensor_slices({"a": np.zeros((8, 16), "float32")}).batch(4),
        )
    ctrl, _ = compress(mlp(), ds)  # (x, y, sample_weight) is a valid element
    assert ctrl.quantizers["d1|INPUT0"].scale.numpy() == pytest.approx(1e-4)  # all-zero inputs: smallest scale


def test_scopes_that_match_nothing_and_empty_configs():
    from hf_qat.errors import ScopeError

    ds, _ = mlp_data()
    with pytest.raises(ScopeError, match="'dense_9'"):
        compress(mlp(), ds, ignored_scopes=["dense_9"])
    with pytest.raises(NothingToQuantizeError):
        compress(mlp(), ds, ignored_scopes=["{re}.*"])


def test_subclassed_model_is_compressed_through_tracked_layers():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.a = keras.layers.Dense(8, name="a")
            self.b = keras.layers.Dense(2, name="b")

        def call(self, x):
            return self.b(tf.nn.relu(self.a(x)))

    net = Net()
    ds = tf.data.Dataset.from_tensor_slices(np.random.default_rng(0).normal(size=(8, 4)).astype("float32")).batch(4)
    config = hqk.register_default_init_args(
        NNCFConfig.from_dict(
            {
                "input_info": {"sample_size": [1, 4]},
                "compression": {"algorithm": "quantization"},
            }
        ),
        ds,
    )
    ctrl, _ = hqk.create_compressed_model(net, config)
    assert set(ctrl.quantizers) == {"net/a", "net/a|INPUT0", "net/b", "net/b|INPUT0"}


def test_subclassed_model_computing_with_its_own_variables_is_refused():
    class Raw(keras.Model):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], 2), name="w")

        def call(self, x):
            return tf.matmul(x, self.w)

    raw = Raw(name="raw")
    raw(np.zeros((1, 4), "float32"))
    ds = tf.data.Dataset.from_tensor_slices(np.zeros((8, 4), "float32")).batch(4)
    with pytest.raises(UnsupportedLayerError, match="'raw' \\(Raw\\) holds weight\\(s\\) \\['w \\[4, 2\\]'\\] directly"):
        compress(raw, ds)


# -- distributed ----------------------------------------------------------------------------------
MIRRORED = textwrap.dedent(
    """
    import os, json, numpy as np
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import hf_qat.keras as hqk
    from hf_qat import NNCFConfig
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype("float32"); y = rng.integers(0, 3, 64)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inp = keras.Input((16,))
        model = keras.Model(inp, keras.layers.Dense(3, name="head")(keras.layers.Dense(8, activation="relu", name="d")(inp)))
        cfg = hqk.register_default_init_args(NNCFConfig.from_dict({"compression": {"algorithm": "quantization"}}), ds)
        ctrl, model = hqk.create_compressed_model(model, cfg)
        ctrl.distributed()
        model.compile(keras.optimizers.Adam(5e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = {qid + "/scale": np.asarray(q.scale.numpy()).tolist() for qid, q in ctrl.quantizers.items()}
    model.fit(ds, epochs=2, verbose=0, callbacks=ctrl.callbacks())
    report = {"replicas": strategy.num_replicas_in_sync, "before": before, "vars": {}}
    for qid, q in ctrl.quantizers.items():
        for name, var in q.variables.items():
            values = [np.asarray(v.numpy()).tolist() for v in var.value.values] if hasattr(var.value, "values") else None
            report["vars"][qid + "/" + name] = values
    print("REPORT" + json.dumps(report))
    """
)


@pytest.mark.slow
def test_mirrored_strategy_keeps_quantizers_identical_on_every_replica(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    proc = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT", 1)[1])
    assert report["replicas"] == 2
    per_replica = report["vars"]
    assert per_replica and all(v is not None and len(v) == 2 for v in per_replica.values()), per_replica
    for name, (r0, r1) in per_replica.items():
        assert r0 == r1, name
    trained = [k for k, v in report["before"].items() if per_replica[k][0] != v]
    assert trained, "quantizer ranges must train under the strategy"


def test_group_wise_weights_are_refused_and_weight_only_builds_no_activation_quantizers():
    from hf_qat import ConfigError

    dataset, _ = mlp_data()
    with pytest.raises(ConfigError, match="weights.group_size: found 16; expected no group_size for .*PyTorch-only"):
        compress(mlp(), dataset, weights={"bits": 4, "group_size": 16})
    with pytest.raises(ConfigError, match="per-token dynamic activations are PyTorch-only"):
        compress(mlp(), dataset, activations={"scheme": "dynamic_per_token"})
    ctrl, _ = compress(mlp(), dataset, activations={"scheme": "none"})
    assert len(ctrl.weight_quantizers) == 3 and len(ctrl.activation_quantizers) == 0
