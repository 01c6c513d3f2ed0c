"""The quantization controller returned by ``create_compressed_model``."""

from __future__ import annotations

import copy
import enum
import hashlib
import json
from typing import Any

import torch
from torch import nn

from ..core.algo_config import QuantizationSettings
from ..core.report import CompressionStatistics, QuantizationStatistics
from ..core.scheduler import QuantizationScheduler
from ..core.state import ALGO_NAME, QuantizerSetup, make_compression_state
from ..errors import CompressionStateError, DistributedError
from .insertion import CONTAINER_NAME
from .layers import is_wrapped, unwrap_module
from .op_hooks import OpHookManager
from .quantizers import BaseQuantizer

__all__ = ["CompressionStage", "QuantizationController"]


class CompressionStage(enum.IntEnum):
    UNCOMPRESSED = 0
    PARTIALLY_COMPRESSED = 1
    FULLY_COMPRESSED = 2


class QuantizationController:
    """Controls the quantizers of a compressed model (NNCF's ``QuantizationController`` API).

    Obtain one from [`create_compressed_model`]; it holds the model, its quantizer setup and a
    compression scheduler.
    """

    def __init__(
        self,
        model: nn.Module,
        setup: QuantizerSetup,
        quantizers: dict[str, BaseQuantizer],
        hooks: OpHookManager,
        settings: QuantizationSettings,
        config: Any,
    ):
        self._model = model
        self.setup = setup
        self.quantizers = quantizers
        self._hooks = hooks
        self.settings = settings
        self.config = config
        self._distributed = False
        self._weights_enabled = True
        self._activations_enabled = True
        self.scheduler = QuantizationScheduler(
            settings.activations_quant_start_epoch, settings.weights_quant_start_epoch, self._apply_stage
        )
        self.scheduler._update_stage()

    # -- NNCF controller API --------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def name(self) -> str:
        return ALGO_NAME

    @property
    def weight_quantizers(self) -> dict[str, BaseQuantizer]:
        return {qid: q for qid, q in self.quantizers.items() if self._is_weight(qid)}

    @property
    def activation_quantizers(self) -> dict[str, BaseQuantizer]:
        return {qid: q for qid, q in self.quantizers.items() if not self._is_weight(qid)}

    def _is_weight(self, qid: str) -> bool:
        return "|INPUT" not in qid

    def loss(self) -> torch.Tensor:
        """Compression loss: zero for quantization (kept for NNCF-style training loops)."""
        device = next((p.device for p in self._model.parameters()), torch.device("cpu"))
        return torch.zeros((), device=device)

    def compression_stage(self) -> CompressionStage:
        enabled = [q.is_enabled_quantization for q in self.quantizers.values()]
        if all(enabled):
            return CompressionStage.FULLY_COMPRESSED
        return CompressionStage.PARTIALLY_COMPRESSED if any(enabled) else CompressionStage.UNCOMPRESSED

    def statistics(self, quickly_collected_only: bool = False) -> CompressionStatistics:
        wq = self.weight_quantizers.values()
        aq = self.activation_quantizers.values()
        all_q = list(self.quantizers.values())
        stats = QuantizationStatistics(
            wq_counter=len(wq),
            aq_counter=len(aq),
            wq_potential_num=self.setup.wq_potential_num,
            aq_potential_num=self.setup.aq_potential_num,
            num_wq_per_bitwidth=QuantizationStatistics.bitwidth_histogram([q.num_bits for q in wq]),
            num_aq_per_bitwidth=QuantizationStatistics.bitwidth_histogram([q.num_bits for q in aq]),
            num_enabled=sum(q.is_enabled_quantization for q in all_q),
            num_symmetric=sum(q.spec.symmetric for q in all_q),
            num_per_channel=sum(q.spec.per_channel for q in all_q),
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

        Store it next to ``model.state_dict()`` and pass it to
        ``create_compressed_model(model, config, compression_state=...)`` to restore without range init.
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

    # -- distributed ------------------------------------------------------------------------
    def distributed(self) -> None:
        """Prepare for multi-process training: same quantizers and values on every rank.

        Call after ``torch.distributed.init_process_group`` and before wrapping the model in DDP.

        Raises:
            [`DistributedError`]: no process group, or the ranks' quantizer setups differ.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise DistributedError(
                "ctrl.distributed() needs an initialised process group: call "
                "torch.distributed.init_process_group(...) (or create an accelerate.Accelerator) first."
            )
        ids = sorted(self.quantizers)
        digest = [(qid, hashlib.sha1(json.dumps(self._spec_of(qid)).encode()).hexdigest()) for qid in ids]
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, digest)
        reference = gathered[0]
        for rank, other in enumerate(gathered[1:], start=1):
            if other != reference:
                first = next(
                    (a if a != b else None for a, b in zip(reference, other) if a != b),
                    reference[len(other)] if len(reference) > len(other) else other[len(reference)],
                )
                raise DistributedError(
                    f"Quantizer setups differ between rank 0 and rank {rank}: first mismatch at quantizer "
                    f"{first[0]!r}. Every rank must compress the same model with the same config."
                )
        for qid in ids:
            q = self.quantizers[qid]
            for t in list(q.parameters(recurse=False)) + list(q.buffers(recurse=False)):
                dist.broadcast(t.data, src=0)
            q._sync_from_buffers()
            q._enabled = bool(q.enabled.item())
        self._distributed = True

    def _spec_of(self, qid: str) -> dict[str, Any]:
        return self.quantizers[qid].spec.to_state()

    # -- export ---------------------------------------------------------------------------
    def export_model(
        self,
        save_path: str,
        save_format: str | None = None,
        input_names: list[str] | None = None,
        output_names: list[str] | None = None,
        model_args: Any = None,
        **kwargs: Any,
    ):
        """Export the compressed model to ONNX with INT8 weights and Q/DQ activations (NNCF's signature).

        Args:
            save_path: the ``.onnx`` file to write (atomically).
            save_format: ``"onnx"`` (default) or ``"onnx_<opset>"``, e.g. ``"onnx_17"``.
            input_names / output_names: override the names taken from the model.
            model_args: example inputs, NNCF layout ``(a, b, {"x": x})`` or a dict of tensors;
                default: the first calibration batch, ``input_info``, or the model's config.
            **kwargs: passed to [`hf_qat.export_onnx`] (``verify``, ``runtimes``, ``dynamic_axes`` ...).

        Returns:
            [`ExportResult`]: path, exporter used, operator counts and verification reports.
        """
        import re

        from .export import DEFAULT_OPSET, export_onnx

        fmt = "onnx" if save_format is None else str(save_format)
        match = re.fullmatch(r"onnx(?:_(\d+))?", fmt)
        if match is None:
            raise ValueError(
                f"save_format {fmt!r} is not supported for PyTorch models: use 'onnx' or 'onnx_<opset>' (e.g. 'onnx_17')."
            )
        opset = int(match.group(1)) if match.group(1) else kwargs.pop("opset", DEFAULT_OPSET)
        return export_onnx(
            self._model, save_path, model_args, input_names=input_names, output_names=output_names,
            opset=opset, config=self.config, **kwargs,
        )

    # -- inference model --------------------------------------------------------------------
    def strip(self, do_copy: bool = True) -> nn.Module:
        """The model for inference: weights replaced by their quantized values, layers restored to
        their original classes, activation quantizers frozen (no range gradients).

        With ``do_copy`` (default) the compressed model is left as it is.
        """
        model = copy.deepcopy(self._model) if do_copy else self._model
        return strip_model(model)

    def strip_model(self, model: nn.Module, do_copy: bool = False) -> nn.Module:
        return strip_model(copy.deepcopy(model) if do_copy else model)


def strip_model(model: nn.Module) -> nn.Module:
    """Bake weight quantization into the weights and freeze activation quantizers (in place)."""
    with torch.no_grad():
        for m in model.modules():
            if is_wrapped(m):
                wq = m.weight_quantizer
                if wq is not None and wq.is_enabled_quantization:
                    m.weight.copy_(wq(m.weight))
                iq = m.__dict__.get("_hf_qat_input_quantizer")
                unwrap_module(m)
                if iq is not None:
                    # keep the input quantizer as a forward pre-hook on the restored layer
                    m.register_forward_pre_hook(lambda mod, args, q=iq: (q(args[0]), *args[1:]))
    container = getattr(model, CONTAINER_NAME, None)
    if container is not None:
        container.requires_grad_(False)
    return model
