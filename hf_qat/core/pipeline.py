"""``create_compressed_model``'s steps, once, with the framework-specific work behind backend hooks.

config -> settings -> (compression state parsed and checked | setup built from the model) -> quantizers
inserted -> controller -> (controller state restored | ranges initialised). Both backends run the same
sequence and the same rule on failure: every hook's change is undone, so a failed call leaves the
model as it was, and a compression state that breaks a step for a reason other than an hf_qat error
is reported as a [`CompressionStateError`].
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

from ..errors import CompressionStateError, ConfigError, HfQatError
from .algo_config import DistillationSettings, QuantizationSettings
from .config import NNCFConfig
from .state import QuantizerSetup, parse_compression_state

__all__ = ["CompressionBackend", "compress"]

ModelT = TypeVar("ModelT")
CtrlT = TypeVar("CtrlT")


class CompressionBackend(Protocol, Generic[ModelT, CtrlT]):
    """What a framework supplies to :func:`compress`. Every hook but :meth:`undo` may raise; then
    :meth:`undo` runs and the error propagates."""

    def check_model(self, model: ModelT) -> None:
        """Refuse a model the backend cannot compress (wrong type, already compressed)."""

    def check_state(self, model: ModelT, setup: QuantizerSetup) -> None:
        """Refuse a restored setup that does not fit the model, before anything is changed."""

    def prepare(self, model: ModelT, config: NNCFConfig) -> None:
        """Changes needed before the model can be traced or walked (eager attention, building)."""

    def build_setup(self, model: ModelT, config: NNCFConfig, settings: QuantizationSettings) -> QuantizerSetup:
        """Choose the quantization points of ``model`` (no compression state given)."""

    def insert(self, model: ModelT, setup: QuantizerSetup, settings: QuantizationSettings, config: NNCFConfig) -> CtrlT:
        """Insert the quantizers of ``setup`` into ``model`` and return its controller."""

    def restore(self, ctrl: CtrlT, ctrl_state: dict[str, Any]) -> None:
        """Load a saved controller state (no range init: the checkpoint's weights follow)."""

    def init_ranges(self, model: ModelT, ctrl: CtrlT, config: NNCFConfig, settings: QuantizationSettings) -> None:
        """Initialise the quantizer ranges from the calibration data registered in ``config``."""

    def undo(self, model: ModelT) -> None:
        """Remove everything the other hooks changed (quantizers, switched attention ...)."""


def compress(
    model: ModelT,
    config: NNCFConfig | dict,
    compression_state: dict[str, Any] | None,
    backend: CompressionBackend[ModelT, CtrlT],
) -> tuple[CtrlT, ModelT]:
    """Compress ``model`` in place with ``backend``; returns ``(controller, model)``.

    Raises:
        [`ConfigError`]: invalid config (nothing modified).
        [`CompressionStateError`]: a compression state that is malformed or does not fit the model (nothing
            modified).
        Whatever the backend's hooks raise (the model is restored first).
    """
    if not isinstance(config, NNCFConfig):
        config = NNCFConfig.from_dict(config)
    if DistillationSettings.from_config(config) is not None:
        raise ConfigError(
            "$.compression",
            "knowledge_distillation",
            "a quantization entry only, for create_compressed_model",
            detail="Distillation needs a training loop that runs the FP32 teacher: QATTrainer reads the "
            "knowledge_distillation entry from its nncf_config (or set QATTrainingArguments.distillation_weight); "
            "in your own loop, remove the entry and add a distillation loss.",
        )
    settings = QuantizationSettings.from_config(config)
    backend.check_model(model)
    setup = ctrl_state = None
    if compression_state is not None:
        setup, ctrl_state = parse_compression_state(compression_state)
        backend.check_state(model, setup)
    try:
        backend.prepare(model, config)
        if setup is None:
            setup = backend.build_setup(model, config, settings)
        ctrl = backend.insert(model, setup, settings, config)
        if ctrl_state is not None:
            backend.restore(ctrl, ctrl_state)
        else:
            backend.init_ranges(model, ctrl, config, settings)
    except BaseException as e:
        backend.undo(model)
        if compression_state is not None and isinstance(e, Exception) and not isinstance(e, HfQatError):
            raise CompressionStateError(
                f"The compression state could not be applied to {type(model).__name__} ({type(e).__name__}: {e}); "
                "nothing was modified. Was it saved from this model architecture by hf_qat or NNCF?"
            ) from e
        raise
    return ctrl, model
