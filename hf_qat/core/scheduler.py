"""Compression schedulers: step/epoch counters and NNCF's staged enabling of quantizers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["QuantizationScheduler"]


class QuantizationScheduler:
    """NNCF's ``BaseCompressionScheduler`` with the staged-quantization option.

    ``step()`` is called once per optimizer step and ``epoch_step()`` once per epoch, *before* the
    epoch (NNCF's convention: the first call moves from epoch -1 to 0). With
    ``activations_quant_start_epoch``/``weights_quant_start_epoch`` set (the config's ``params``),
    each group of quantizers is disabled until its start epoch.

    Args:
        apply_stage (`Callable[[bool, bool], None]`, *optional*): called with
            ``(weights_enabled, activations_enabled)`` whenever the epoch changes.
    """

    def __init__(
        self,
        activations_quant_start_epoch: int | None = None,
        weights_quant_start_epoch: int | None = None,
        apply_stage: Callable[[bool, bool], None] | None = None,
    ):
        self.current_step = -1
        self.current_epoch = -1
        self.activations_quant_start_epoch = activations_quant_start_epoch
        self.weights_quant_start_epoch = weights_quant_start_epoch
        self._apply_stage = apply_stage

    @property
    def staged(self) -> bool:
        return self.activations_quant_start_epoch is not None or self.weights_quant_start_epoch is not None

    def step(self, next_step: int | None = None) -> None:
        self.current_step = self.current_step + 1 if next_step is None else next_step

    def epoch_step(self, next_epoch: int | None = None) -> None:
        self.current_epoch = self.current_epoch + 1 if next_epoch is None else next_epoch
        self._update_stage()

    def _update_stage(self) -> None:
        if not self.staged or self._apply_stage is None:
            return
        epoch = max(self.current_epoch, 0)
        weights = self.weights_quant_start_epoch is None or epoch >= self.weights_quant_start_epoch
        acts = self.activations_quant_start_epoch is None or epoch >= self.activations_quant_start_epoch
        self._apply_stage(weights, acts)

    def get_state(self) -> dict[str, Any]:
        return {"current_step": self.current_step, "current_epoch": self.current_epoch}

    def load_state(self, state: dict[str, Any]) -> None:
        self.current_step = int(state.get("current_step", -1))
        self.current_epoch = int(state.get("current_epoch", -1))
        self._update_stage()
