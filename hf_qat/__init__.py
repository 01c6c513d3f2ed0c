"""hf_qat: quantization-aware training for Hugging Face models with NNCF's legacy API.

```python
from hf_qat import NNCFConfig, create_compressed_model, register_default_init_args, load_state
config = register_default_init_args(NNCFConfig.from_json("nncf_config.json"), train_loader)
ctrl, model = create_compressed_model(model, config)
```
"""

__version__ = "0.1.0"

# -- framework-neutral --------------------------------------------------------------------------
from .core.config import NNCFConfig
from .core.spec import QuantizationMode, QuantizerSpec
from .errors import (
    CalibrationError,
    CheckpointError,
    CompressionStateError,
    ConfigError,
    DistributedError,
    ExportError,
    HfQatError,
    HubError,
    JSONFileError,
    NothingToQuantizeError,
    ScopeError,
    UnsupportedLayerError,
    WriteError,
)

# -- PyTorch ------------------------------------------------------------------------------------
from .torch import (
    BNAdaptationInitArgs,
    CompressionStage,
    ExportResult,
    InitializingDataLoader,
    QuantizationController,
    QuantizationRangeInitArgs,
    create_compressed_model,
    export_onnx,
    load_state,
    register_default_init_args,
    verify_onnx,
)

# -- transformers: quant_method "hf_qat" for from_pretrained ---------------------------------------
try:
    from .integrations.transformers_quantizer import register as _register_transformers_quantizer
except ImportError:  # pragma: no cover - transformers is optional for the bare API
    pass
else:
    _register_transformers_quantizer()

_LAZY = {
    "QATTrainer": ".integrations.trainer",
    "QATTrainingArguments": ".integrations.trainer",
    "load_metric": ".integrations.metrics",
    "push_to_hub": ".integrations.hub",
    "load_onnx_from_hub": ".integrations.hub",
    "KerasQATTrainer": ".integrations.keras_trainer",
    "KerasQATArguments": ".integrations.keras_trainer",
}


def __getattr__(name: str):
    """Trainer integrations are imported on first use (they import transformers' Trainer)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'hf_qat' has no attribute {name!r}")


__all__ = [
    # config and specs
    "NNCFConfig",
    "QuantizationMode",
    "QuantizerSpec",
    # PyTorch API (NNCF legacy names)
    "create_compressed_model",
    "register_default_init_args",
    "load_state",
    # ONNX export
    "export_onnx",
    "verify_onnx",
    "ExportResult",
    "QuantizationController",
    "CompressionStage",
    "InitializingDataLoader",
    "QuantizationRangeInitArgs",
    "BNAdaptationInitArgs",
    # transformers Trainer
    "QATTrainer",
    "QATTrainingArguments",
    "load_metric",
    # Keras (hf_qat.keras holds the backend: create_compressed_model etc. for keras.Model)
    "KerasQATTrainer",
    "KerasQATArguments",
    # hub
    "push_to_hub",
    "load_onnx_from_hub",
    # errors
    "HfQatError",
    "ConfigError",
    "ScopeError",
    "NothingToQuantizeError",
    "CalibrationError",
    "CompressionStateError",
    "DistributedError",
    "ExportError",
    "HubError",
    "JSONFileError",
    "WriteError",
    "CheckpointError",
    "UnsupportedLayerError",
]
