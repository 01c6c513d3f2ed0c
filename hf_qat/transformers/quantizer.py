"""``quant_method: "hf_qat"`` for transformers: ``from_pretrained`` rebuilds a QAT model.

``import hf_qat`` registers :class:`HfQatConfig` and :class:`HfQatQuantizer` with transformers
(``register_quantization_config`` / ``register_quantizer``). Loading a repo or folder whose
``config.json`` holds ``quantization_config = {"quant_method": "hf_qat", ...}`` with any Auto class
then recreates the quantizers from the embedded NNCF ``compression_state`` *before* the weights are
loaded, so the quantizer parameters load by name from ``model.safetensors`` and the model computes
exactly what was saved. The quantizer declares itself trainable and QAT-trainable, so ``Trainer``
and :class:`~hf_qat.QATTrainer` can continue training the loaded model.

Without ``import hf_qat``, transformers does not know the method: it logs
"Unknown quantization type, got hf_qat ... we will skip the quantization", lists the quantizer
parameters as unexpected keys in its load report, and returns the float model with the QAT-trained
weights, i.e. *not* the model that was evaluated. A process that never imports hf_qat cannot be
stopped from doing that (transformers has no plugin discovery and loading must not execute code from
the repo). A model loaded with hf_qat has ``model.is_quantized`` true and ``model._hf_qat_ctrl``
set; one loaded without it has neither.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..core.config import NNCFConfig
from ..core.layout import QUANT_METHOD
from ..core.state import parse_compression_state
from ..errors import CompressionStateError
from ..torch.model_creation import create_compressed_model

__all__ = ["HfQatConfig", "HfQatQuantizer", "register"]

logger = logging.getLogger(__name__)


class HfQatConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a QAT model (see :func:`quantization_config_dict`).

    Args:
        compression_state (`dict`): NNCF compression state (``builder_state`` + ``ctrl_state``).
        nncf_config (`dict`): the NNCF config the model was compressed with.
        scheme (`dict`, *optional*): human-readable summary (bits, modes, counts).
        hf_qat_version (`str`, *optional*): version that wrote the config.
    """

    def __init__(
        self,
        compression_state: dict | None = None,
        nncf_config: dict | None = None,
        scheme: dict | None = None,
        hf_qat_version: str | None = None,
        **kwargs: Any,
    ):
        kwargs.pop("quant_method", None)
        self.quant_method = QUANT_METHOD
        self.compression_state = compression_state
        self.nncf_config = nncf_config
        self.scheme = scheme or {}
        self.hf_qat_version = hf_qat_version
        for key, value in kwargs.items():  # keep unknown fields of newer writers
            setattr(self, key, value)
        self.post_init()

    def post_init(self) -> None:
        if not isinstance(self.compression_state, dict) or "builder_state" not in self.compression_state:
            raise CompressionStateError(
                "quantization_config of quant_method 'hf_qat' has no embedded compression_state "
                "(expected an object with 'builder_state'); the config.json was not written by hf_qat"
            )
        if not isinstance(self.nncf_config, dict):
            raise CompressionStateError("quantization_config of quant_method 'hf_qat' has no nncf_config object")
        parse_compression_state(self.compression_state)  # malformed: a clear error before any model is built

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)


class HfQatQuantizer(HfQuantizer):
    """Recreates hf_qat's quantizers in a model being loaded by ``from_pretrained``."""

    requires_calibration = False

    def __init__(self, quantization_config: HfQatConfig, **kwargs: Any):
        super().__init__(quantization_config, **kwargs)

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        if not self.pre_quantized:
            raise ValueError(
                "quant_method 'hf_qat' loads models trained with hf_qat; to quantize an FP32 model use "
                "hf_qat.create_compressed_model or hf_qat.QATTrainer."
            )

    def _process_model_before_weight_loading(self, model, **kwargs: Any):
        cfg = self.quantization_config
        config = NNCFConfig.from_dict(cfg.nncf_config)
        ctrl, model = create_compressed_model(model, config, compression_state=cfg.compression_state)
        model._hf_qat_ctrl = ctrl
        return model

    def _process_model_after_weight_loading(self, model, **kwargs: Any):
        ctrl = getattr(model, "_hf_qat_ctrl", None)
        if ctrl is not None:
            # transformers assigns tensors directly (no load_state_dict hooks): refresh the Python-side
            # mirrors of the loaded buffers (signedness, enabled flag)
            for q in ctrl.quantizers.values():
                q._sync_from_buffers()
                q._enabled = bool(q.enabled.item())
                q.initialized = True
                q.clear_memo()
        return model

    def is_serializable(self, safe_serialization: bool | None = None) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        return True


def register() -> None:
    """Register ``quant_method: "hf_qat"`` with transformers (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(HfQatConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(HfQatQuantizer)
