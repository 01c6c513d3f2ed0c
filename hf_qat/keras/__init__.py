"""Keras 3 backend (TensorFlow): quantizers on Keras layers, range init, controller, checkpoints,
export, and the Keras-side integrations (``KerasQATTrainer`` in :mod:`~hf_qat.keras.trainer`,
keras-hub presets and hub I/O in :mod:`~hf_qat.keras.hub`).

```python
import hf_qat.keras as hqk
config = hqk.register_default_init_args(NNCFConfig.from_json("nncf_config.json"), train_dataset)
ctrl, model = hqk.create_compressed_model(model, config)     # keras.Model, keras-hub models included
model.fit(train_dataset, epochs=2, callbacks=ctrl.callbacks())
ctrl.export_model("model.pb")                              # frozen graph; "saved_model", "onnx"
```

Importing this module selects the TensorFlow backend when ``KERAS_BACKEND`` is unset. Needs the
``tf`` extra; ``torch`` is never imported.
"""

import os

from ..utils.imports import require

require("tensorflow", feature="hf_qat.keras (the Keras 3 / TensorFlow backend)")
require("keras", feature="hf_qat.keras (the Keras 3 / TensorFlow backend)")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras

if keras.backend.backend() != "tensorflow":  # pragma: no cover - depends on the environment
    raise ImportError(
        f"hf_qat.keras needs Keras' TensorFlow backend; KERAS_BACKEND is {keras.backend.backend()!r}. "
        "Set KERAS_BACKEND=tensorflow before importing keras."
    )

from ..utils.lazy import attach
from .checkpoint import CompressionState, TFCompressionState, TFCompressionStateLoader, load_compression_state
from .controller import CompressionCallback, CompressionStage, KerasQuantizationController
from .export import KerasExportResult, export_keras
from .init import KerasRangeInitArgs, register_default_init_args
from .model_creation import create_compressed_model, is_compressed
from .quantizers import KerasQuantizer

__getattr__, __dir__ = attach(
    __name__,
    {
        "trainer": ["KerasQATArguments", "KerasQATTrainer"],
        "hub": ["from_pretrained", "restore_quantizers", "save_keras_qat_model", "push_to_hub_keras"],
    },
)

__all__ = [
    "CompressionCallback",
    "CompressionStage",
    "CompressionState",
    "TFCompressionState",
    "TFCompressionStateLoader",
    "KerasExportResult",
    "KerasQATArguments",
    "KerasQATTrainer",
    "KerasQuantizationController",
    "KerasQuantizer",
    "KerasRangeInitArgs",
    "create_compressed_model",
    "export_keras",
    "from_pretrained",
    "is_compressed",
    "load_compression_state",
    "push_to_hub_keras",
    "register_default_init_args",
    "restore_quantizers",
    "save_keras_qat_model",
]
