"""Framework-neutral core: config schema, quantizer specs and level math, range statistics,
compression-state format and the compression scheduler. Nothing here imports a deep-learning
framework."""

from .algo_config import QuantizationSettings
from .config import NNCFConfig, validate_config
from .spec import QuantizationMode, QuantizerGroup, QuantizerSpec
from .state import QuantizationPoint, QuantizerSetup, make_compression_state, parse_compression_state

__all__ = [
    "NNCFConfig",
    "validate_config",
    "QuantizationSettings",
    "QuantizationMode",
    "QuantizerGroup",
    "QuantizerSpec",
    "QuantizationPoint",
    "QuantizerSetup",
    "make_compression_state",
    "parse_compression_state",
]
