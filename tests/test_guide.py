"""The OpenVINO/NNCF QAT guide's code, steps 1-8, as written, with ``hf_qat`` in place of ``nncf``.

Each test is the guide's snippet sequence for one framework; only the model and the data are the test's own
(the guide leaves them to the reader). The import paths are the ones README's mapping table gives.
"""

from __future__ import annotations

import os

import numpy as np
import pytest


def test_pytorch_guide_steps(tmp_path):
    import torch
    import torch.distributed as dist
    from torch import nn

    # Step 1: imports ("hf_qat" where the guide imports "nncf")
    import hf_qat  # noqa: F401  (the guide imports nncf right after torch)
    from hf_qat import NNCFConfig
    from hf_qat.torch import create_compressed_model, load_state, register_default_init_args

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    data = torch.utils.data.TensorDataset(torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))
    train_loader = torch.utils.data.DataLoader(data, batch_size=8)

    # Step 2: create the NNCF config, register the calibration data
    nncf_config_dict = {
        "input_info": {"sample_size": [1, 3, 32, 32]},
        "compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 16}}},
    }
    nncf_config = NNCFConfig.from_dict(nncf_config_dict)
    nncf_config = register_default_init_args(nncf_config, train_loader)

    # Step 3: apply the optimization methods
    compression_ctrl, model = create_compressed_model(model, nncf_config)

    # Step 4 (distributed training only): distribute the compression controller
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        compression_ctrl.distributed()
    finally:
        dist.destroy_process_group()

    # Step 5: fine-tune as usual
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    for x, y in train_loader:
        compression_ctrl.scheduler.step()
        loss = nn.functional.cross_entropy(model(x), y) + compression_ctrl.loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    compression_ctrl.scheduler.epoch_step()

    # Step 6: export
    compression_ctrl.export_model(str(tmp_path / "compressed_model.onnx"))
    assert (tmp_path / "compressed_model.onnx").stat().st_size > 0

    # Step 7: save a checkpoint
    checkpoint = {"state_dict": model.state_dict(), "compression_state": compression_ctrl.get_compression_state()}
    torch.save(checkpoint, tmp_path / "checkpoint.pth")

    # Step 8: restore from the checkpoint
    resuming_checkpoint = torch.load(tmp_path / "checkpoint.pth")
    compression_state = resuming_checkpoint["compression_state"]
    fresh = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    compression_ctrl2, model2 = create_compressed_model(fresh, nncf_config, compression_state=compression_state)
    state_dict = resuming_checkpoint["state_dict"]
    load_state(model2, state_dict, is_resume=True)  # the guide: load_state(...) or model.load_state_dict(state_dict)

    x = torch.randn(2, 3, 32, 32)
    model.eval(), model2.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model2(x))


def test_tensorflow_guide_steps(tmp_path):
    pytest.importorskip("tensorflow")
    import keras
    import tensorflow as tf

    # Step 1: imports
    from hf_qat import NNCFConfig
    from hf_qat.keras import (
        TFCompressionState,
        TFCompressionStateLoader,
        create_compressed_model,
        register_default_init_args,
    )

    def build():  # as a fresh process would (Keras numbers auto-generated layer names per process)
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
             keras.layers.Dense(10)]
        )  # fmt: skip

    model = build()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 32, 32, 3)).astype("float32"), rng.integers(0, 10, 32)
    train_dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)  # NNCF's samples pass the batched set

    # Step 2: create the NNCF config, register the calibration data (batch_size counts samples, as in NNCF-TF)
    nncf_config_dict = {
        "input_info": {"sample_size": [1, 32, 32, 3]},
        "compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 16}}},
    }
    nncf_config = NNCFConfig.from_dict(nncf_config_dict)
    nncf_config = register_default_init_args(nncf_config=nncf_config, dataset=train_dataset, batch_size=1)

    # Step 3: apply the optimization methods
    compression_ctrl, model = create_compressed_model(model, nncf_config)

    # Step 4 (distributed training only)
    compression_ctrl.distributed()

    # Step 5: fine-tune as usual
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train_dataset, epochs=1, verbose=0)

    # Step 6: export (frozen graph)
    compression_ctrl.export_model(str(tmp_path / "compressed_model.pb"))
    assert (tmp_path / "compressed_model.pb").stat().st_size > 0

    # Step 7: save a checkpoint
    checkpoint = tf.train.Checkpoint(model=model, compression_state=TFCompressionState(compression_ctrl))
    path = checkpoint.save(str(tmp_path / "ckpt"))

    # Step 8: restore: the compression state first, then the model's variables
    checkpoint = tf.train.Checkpoint(compression_state=TFCompressionStateLoader())
    checkpoint.restore(path).expect_partial()
    compression_state = checkpoint.compression_state.state
    compression_ctrl2, model2 = create_compressed_model(build(), nncf_config, compression_state)
    checkpoint = tf.train.Checkpoint(model=model2, compression_state=TFCompressionState(compression_ctrl2))
    checkpoint.restore(path).assert_existing_objects_matched()

    np.testing.assert_array_equal(model(x[:2], training=False).numpy(), model2(x[:2], training=False).numpy())


def test_tensorflow_unbatched_dataset_is_batched_and_never_guessed():
    pytest.importorskip("tensorflow")
    import keras
    import tensorflow as tf

    import hf_qat.keras as hqk
    from hf_qat import CalibrationError, NNCFConfig

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((16,)), keras.layers.Dense(8), keras.layers.Dense(2)])

    x = np.random.default_rng(0).normal(size=(32, 16)).astype("float32")
    config = {"compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 16}}}}
    single = tf.data.Dataset.from_tensor_slices(x)  # single samples, rank 1 for a rank-2 model input
    ctrl, _ = hqk.create_compressed_model(
        model(), hqk.register_default_init_args(NNCFConfig.from_dict(config), single, batch_size=4)
    )
    assert ctrl.quantizers
    with pytest.raises(CalibrationError, match="single samples .*pass batch_size"):
        hqk.create_compressed_model(model(), hqk.register_default_init_args(NNCFConfig.from_dict(config), single))
