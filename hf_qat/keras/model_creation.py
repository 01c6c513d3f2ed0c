"""``create_compressed_model`` for Keras 3: config -> layer walk -> quantizer setup -> quantizers -> range init."""

from __future__ import annotations

import logging
from typing import Any

from ..core.algo_config import QuantizationSettings
from ..core.config import NNCFConfig
from ..core.pipeline import compress
from ..core.state import QuantizerSetup
from ..errors import ConfigError, UnsupportedLayerError
from .controller import KerasQuantizationController
from .init import KerasRangeInitArgs, run_range_init
from .inputs import inputs_from_input_info
from .insertion import (
    apply_setup,
    build_quantizer_setup,
    remove_quantizers,
    walk_layers,
)
from .layers import layer_quantizers

__all__ = ["KerasBackend", "create_compressed_model", "is_compressed"]

logger = logging.getLogger(__name__)


def is_compressed(model: Any) -> bool:
    return any(layer_quantizers(n.layer) is not None for n in walk_layers(model))


def _ensure_built(model: Any, config: NNCFConfig) -> None:
    if getattr(model, "built", False) and model.weights:
        return
    if "input_info" not in config:
        raise ConfigError(
            "$.input_info",
            None,
            "an input description to build the unbuilt Keras model",
            detail="Build the model first (call it once, or give it an Input) or add 'input_info' to the config.",
        )
    model(inputs_from_input_info(config["input_info"]), training=False)


def create_compressed_model(
    model: Any,
    config: NNCFConfig | dict,
    compression_state: dict[str, Any] | None = None,
) -> tuple[KerasQuantizationController, Any]:
    """Insert trainable fake quantizers into a Keras 3 model (in place), as the NNCF config says.

    Works on Sequential and Functional models and on keras-hub models, including layers nested in
    other layers (transformer blocks, the ``EinsumDense`` projections inside attention). The model
    keeps its class, layers, names and config. Without ``compression_state`` the ranges are
    initialised from the data registered with [`hf_qat.keras.register_default_init_args`]; with it
    (from ``ctrl.get_compression_state()``) the same quantizers are recreated without range init:
    restore the checkpoint afterwards (``tf.train.Checkpoint.read`` or
    ``ctrl.load_quantizer_arrays``) to get identical outputs.

    Under ``tf.distribute`` call it inside ``strategy.scope()``: the quantizer variables are then
    mirrored like the model's own.

    Returns:
        `(KerasQuantizationController, keras.Model)`: the controller and the same model object.

    Raises:
        [`ConfigError`]: invalid config (nothing modified).
        [`ScopeError`] / [`NothingToQuantizeError`] / [`UnsupportedLayerError`]: scopes matching nothing, nothing
            to quantize, or a layer in scope that hf_qat cannot quantize (nothing modified).
        [`CalibrationError`]: calibration data that does not fit the model (nothing modified).
        [`CompressionStateError`]: a compression state that does not fit the model (nothing modified).
    """
    ctrl, model = compress(model, config, compression_state, KerasBackend())
    logger.info(
        "hf_qat: %d weight and %d input quantizers inserted",
        len(ctrl.weight_quantizers),
        len(ctrl.activation_quantizers),
    )
    return ctrl, model


class KerasBackend:
    """The Keras hooks of :func:`hf_qat.core.pipeline.compress` (see [`CompressionBackend`])."""

    def check_model(self, model: Any) -> None:
        if not hasattr(model, "_flatten_layers"):
            raise UnsupportedLayerError(
                "<model>",
                type(model).__name__,
                "is not a Keras 3 model or layer; hf_qat.keras compresses keras.Model objects.",
            )
        if is_compressed(model):
            raise ValueError("The model is already compressed by hf_qat; pass the original (float) model.")

    def check_state(self, model: Any, setup: QuantizerSetup) -> None:
        """Names and shapes are checked by ``apply_setup`` before any variable is created."""

    def prepare(self, model: Any, config: NNCFConfig) -> None:
        _ensure_built(model, config)

    def build_setup(self, model: Any, config: NNCFConfig, settings: QuantizationSettings) -> QuantizerSetup:
        return build_quantizer_setup(model, settings)

    def insert(
        self, model: Any, setup: QuantizerSetup, settings: QuantizationSettings, config: NNCFConfig
    ) -> KerasQuantizationController:
        return KerasQuantizationController(model, setup, apply_setup(model, setup), settings, config)

    def restore(self, ctrl: KerasQuantizationController, ctrl_state: dict[str, Any]) -> None:
        for q in ctrl.quantizers.values():
            q.initialized = True
        ctrl.load_state(ctrl_state)

    def init_ranges(
        self, model: Any, ctrl: KerasQuantizationController, config: NNCFConfig, settings: QuantizationSettings
    ) -> None:
        range_args = config.get_extra_struct(KerasRangeInitArgs) if config.has_extra_struct(KerasRangeInitArgs) else None
        run_range_init(model, ctrl.quantizers, settings, range_args)

    def undo(self, model: Any) -> None:
        remove_quantizers(model)
