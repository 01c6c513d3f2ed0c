"""Keras 3 backend (TensorFlow): quantizers on Keras layers, range init, controller, checkpoints, export.

```python
import hf_qat.keras as hqk
config = hqk.register_default_init_args(NNCFConfig.from_json("nncf_config.json"), train_dataset)
ctrl, model = hqk.create_compressed_model(model, config)     # keras.Model, keras-hub models included
model.fit(train_dataset, epochs=2, callbacks=ctrl.callbacks())
ctrl.export_model("model.pb")                              # frozen graph; "saved_model", "onnx"
```

Importing this module selects the TensorFlow backend when ``KERAS_BACKEND`` is unset.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras

if (
    keras.backend.backend() != "tensorflow"
):  # pragma: no cover - depends on the environment
    raise ImportError(
        f"hf_qat.keras needs Keras' TensorFlow backend; KERAS_BACKEND is {keras.backend.backend()!r}. "
        "Set KERAS_BACKEND=tensorflow before importing keras."
    )

from .checkpoint import CompressionState, load_compression_state
from .controller import (
    CompressionCallback,
    CompressionStage,
    KerasQuantizationController,
)
from .export import KerasExportResult, export_keras
from .init import KerasRangeInitArgs, register_default_init_args
from .model_creation import create_compressed_model, is_compressed
from .quantizers import KerasQuantizer

__all__ = [
    "CompressionCallback",
    "CompressionStage",
    "CompressionState",
    "KerasExportResult",
    "KerasQuantizationController",
    "KerasQuantizer",
    "KerasRangeInitArgs",
    "create_compressed_model",
    "export_keras",
    "is_compressed",
    "load_compression_state",
    "register_default_init_args",
]
