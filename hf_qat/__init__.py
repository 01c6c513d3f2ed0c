"""hf_qat: quantization-aware training for Hugging Face models with NNCF's legacy API.

```python
from hf_qat import NNCFConfig, create_compressed_model, register_default_init_args, load_state
config = register_default_init_args(NNCFConfig.from_json("nncf_config.json"), train_loader)
ctrl, model = create_compressed_model(model, config)
```

``import hf_qat`` loads only the framework-neutral core; every other name loads with its backend on
first use, so the package imports with torch only, TensorFlow only, or neither. A name whose
backend is not installed raises [`MissingDependencyError`] naming the extra to install. When torch
and transformers are installed, importing hf_qat registers ``quant_method: "hf_qat"`` with
transformers, so that ``from_pretrained`` rebuilds QAT models.
"""

from ._version import __version__
from .core.config import NNCFConfig
from .core.controller import CompressionStage
from .core.defaults import default_nncf_config
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
    MissingDependencyError,
    NothingToQuantizeError,
    ScopeError,
    UnsupportedLayerError,
    WriteError,
)
from .utils.imports import is_available as _is_available
from .utils.lazy import attach as _attach

__getattr__, _lazy_dir = _attach(
    __name__,
    {
        # PyTorch backend (NNCF legacy names)
        "torch": [
            "create_compressed_model",
            "register_default_init_args",
            "load_state",
            "load_checkpoint",
            "to_nncf_state_dict",
            "nncf_checkpoint_from_folder",
            "load_nncf3",
            "restore_nncf_checkpoint",
            "get_nncf3_config",
            "nncf3_state_dict",
            "QuantizationController",
            "InitializingDataLoader",
            "QuantizationRangeInitArgs",
            "BNAdaptationInitArgs",
        ],
        "torch.export": ["export_onnx", "ExportResult"],
        "torch.export.verify": ["verify_onnx"],
        "torch.report": ["quantization_report"],
        "onnx.openvino": ["convert_to_openvino", "OpenVINOResult"],
        # transformers integration
        "transformers.trainer": ["QATTrainer", "QATTrainingArguments"],
        "transformers.metrics": ["load_metric"],
        "transformers.hub": ["push_to_hub", "save_qat_model"],
        # framework-neutral hub
        "hub.pull": ["load_onnx_from_hub"],
        "hub.push": ["push_qat_folder"],
        # Keras (hf_qat.keras holds the backend: create_compressed_model etc. for keras.Model)
        "keras.trainer": ["KerasQATTrainer", "KerasQATArguments"],
    },
)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_lazy_dir()))


if _is_available("torch") and _is_available("transformers"):
    # quant_method "hf_qat" for from_pretrained; an ImportError here is a real breakage, not an absent extra
    from .transformers.quantizer import register as _register_transformers_quantizer

    _register_transformers_quantizer()

__all__ = [
    "__version__",
    # config and specs
    "NNCFConfig",
    "QuantizationMode",
    "QuantizerSpec",
    "default_nncf_config",
    # PyTorch API (NNCF legacy names)
    "create_compressed_model",
    "register_default_init_args",
    "load_state",
    "load_checkpoint",
    "to_nncf_state_dict",
    "nncf_checkpoint_from_folder",
    "load_nncf3",
    "restore_nncf_checkpoint",
    "get_nncf3_config",
    "nncf3_state_dict",
    "QuantizationController",
    "CompressionStage",
    "InitializingDataLoader",
    "QuantizationRangeInitArgs",
    "BNAdaptationInitArgs",
    "quantization_report",
    # ONNX export
    "export_onnx",
    "verify_onnx",
    "ExportResult",
    "convert_to_openvino",
    "OpenVINOResult",
    # transformers Trainer
    "QATTrainer",
    "QATTrainingArguments",
    "load_metric",
    # Keras
    "KerasQATTrainer",
    "KerasQATArguments",
    # hub
    "push_to_hub",
    "save_qat_model",
    "push_qat_folder",
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
    "MissingDependencyError",
    "WriteError",
    "CheckpointError",
    "UnsupportedLayerError",
]
