"""The backend-neutral part of NNCF's quantization controller: switches, staging, statistics, state.

A backend controller subclasses :class:`QuantizationControllerBase` and provides the model, the
quantizers (objects with ``spec``, ``is_enabled_quantization``, ``enable_quantization()`` and
``disable_quantization()``) and which of them quantize weights; export and distribution stay in
the backend.
"""

from __future__ import annotations

import enum
from typing import Any

from ..errors import CompressionStateError
from .algo_config import QuantizationSettings
from .report import CompressionStatistics, QuantizationStatistics
from .scheduler import QuantizationScheduler
from .state import ALGO_NAME, QuantizerSetup, make_compression_state

__all__ = ["CompressionStage", "QuantizationControllerBase"]


class CompressionStage(enum.IntEnum):
    UNCOMPRESSED = 0
    PARTIALLY_COMPRESSED = 1
    FULLY_COMPRESSED = 2


class QuantizationControllerBase:
    """NNCF controller API shared by the PyTorch and Keras controllers.

    Args:
        model: the compressed model.
        setup (`QuantizerSetup`): the quantization points.
        quantizers (`dict`): quantizers by id.
        settings (`QuantizationSettings`): the config's quantization settings.
        config: the NNCF config.
    """

    def __init__(
        self, model: Any, setup: QuantizerSetup, quantizers: dict[str, Any], settings: QuantizationSettings, config: Any
    ):
        self._model = model
        self.setup = setup
        self.quantizers = quantizers
        self.settings = settings
        self.config = config
        self.scheduler = QuantizationScheduler(
            settings.activations_quant_start_epoch, settings.weights_quant_start_epoch, self._apply_stage
        )
        self.scheduler._update_stage()

    def _is_weight(self, qid: str) -> bool:
        return "|INPUT" not in qid

    # -- NNCF controller API --------------------------------------------------------------
    @property
    def model(self) -> Any:
        return self._model

    @property
    def name(self) -> str:
        return ALGO_NAME

    @property
    def weight_quantizers(self) -> dict[str, Any]:
        return {qid: q for qid, q in self.quantizers.items() if self._is_weight(qid)}

    @property
    def activation_quantizers(self) -> dict[str, Any]:
        return {qid: q for qid, q in self.quantizers.items() if not self._is_weight(qid)}

    def compression_stage(self) -> CompressionStage:
        enabled = [q.is_enabled_quantization for q in self.quantizers.values()]
        if all(enabled):
            return CompressionStage.FULLY_COMPRESSED
        return CompressionStage.PARTIALLY_COMPRESSED if any(enabled) else CompressionStage.UNCOMPRESSED

    def statistics(self, quickly_collected_only: bool = False) -> CompressionStatistics:
        wq = list(self.weight_quantizers.values())
        aq = list(self.activation_quantizers.values())
        all_q = wq + aq
        stats = QuantizationStatistics(
            wq_counter=len(wq),
            aq_counter=len(aq),
            wq_potential_num=self.setup.wq_potential_num,
            aq_potential_num=self.setup.aq_potential_num,
            num_wq_per_bitwidth=QuantizationStatistics.bitwidth_histogram([q.spec.num_bits for q in wq]),
            num_aq_per_bitwidth=QuantizationStatistics.bitwidth_histogram([q.spec.num_bits for q in aq]),
            num_enabled=sum(q.is_enabled_quantization for q in all_q),
            num_symmetric=sum(q.spec.symmetric for q in all_q),
            num_per_channel=sum(q.spec.per_channel for q in all_q),
            num_per_group_size=QuantizationStatistics.bitwidth_histogram([q.spec.group_size for q in wq if q.spec.grouped]),
        )
        return CompressionStatistics(stats)

    # -- switches ---------------------------------------------------------------------------
    def _set(self, quantizers, enabled: bool) -> None:
        for q in quantizers:
            q.enable_quantization() if enabled else q.disable_quantization()

    def enable_weight_quantization(self) -> None:
        self._set(self.weight_quantizers.values(), True)

    def disable_weight_quantization(self) -> None:
        self._set(self.weight_quantizers.values(), False)

    def enable_activation_quantization(self) -> None:
        self._set(self.activation_quantizers.values(), True)

    def disable_activation_quantization(self) -> None:
        self._set(self.activation_quantizers.values(), False)

    def _apply_stage(self, weights: bool, activations: bool) -> None:
        self._set(self.weight_quantizers.values(), weights)
        self._set(self.activation_quantizers.values(), activations)

    # -- state ------------------------------------------------------------------------------
    def get_ctrl_state(self) -> dict[str, Any]:
        return {
            "loss_state": None,
            "scheduler_state": self.scheduler.get_state(),
            "compression_stage": int(self.compression_stage()),
        }

    def get_compression_state(self) -> dict[str, Any]:
        """JSON-serialisable state that recreates the quantizers (NNCF legacy layout).

        Pass it to ``create_compressed_model(model, config, compression_state=...)`` to restore
        without range init, then load the checkpoint's weights.
        """
        return make_compression_state(self.setup, self.get_ctrl_state())

    def load_state(self, state: dict[str, Any]) -> None:
        """Load a controller state: the ``ctrl_state`` part, or a whole compression state."""
        if "ctrl_state" in state:
            state = state["ctrl_state"]
        if ALGO_NAME in state:
            state = state[ALGO_NAME]
        if not isinstance(state, dict):
            raise CompressionStateError(f"controller state must be an object, got {type(state).__name__}")
        scheduler_state = state.get("scheduler_state")
        if scheduler_state is not None:
            self.scheduler.load_state(scheduler_state)
