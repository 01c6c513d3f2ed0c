"""The quantization controller returned by ``create_compressed_model``."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import torch
from torch import nn

from ..core.algo_config import QuantizationSettings
from ..core.config import NNCFConfig
from ..core.controller import CompressionStage, QuantizationControllerBase
from ..core.state import QuantizerSetup
from ..errors import CompressionStateError, DistributedError
from .checkpoint import to_nncf_state_dict
from .insertion import CONTAINER_NAME
from .layers import is_wrapped, unwrap_module
from .op_hooks import OpHookManager
from .quantizers import BaseQuantizer

__all__ = ["CompressionStage", "QuantizationController"]


class QuantizationController(QuantizationControllerBase):
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
        super().__init__(model, setup, quantizers, settings, config)
        self._hooks = hooks
        self._distributed = False

    # -- pickling (the trainer attaches the controller to the model as ``model._hf_qat_ctrl``) -----
    def __getstate__(self) -> dict[str, Any]:
        # The calibration data registered in the config (data loaders, which may hold a whole dataset
        # or unpicklable objects such as accelerate's loaders) is not part of a saved model: a pickled
        # controller keeps the config's JSON part, as ``NNCFConfig.to_json`` does.
        state = self.__dict__.copy()
        if isinstance(self.config, NNCFConfig):
            state["config"] = NNCFConfig(self.config)
        return state

    def __deepcopy__(self, memo: dict) -> QuantizationController:
        # an in-process copy shares the calibration loaders, as ``copy.deepcopy(config)`` does
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def loss(self) -> torch.Tensor:
        """Compression loss: zero for quantization (kept for NNCF-style training loops)."""
        device = next((p.device for p in self._model.parameters()), torch.device("cpu"))
        return torch.zeros((), device=device)

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
    def _export_openvino(self, save_path, input_names, output_names, model_args, **kwargs):
        import tempfile
        from pathlib import Path

        from ..onnx.openvino import convert_to_openvino

        xml = Path(save_path)
        with tempfile.TemporaryDirectory(prefix="hf_qat_ov_") as tmp:
            export = self.export_model(str(Path(tmp) / "model.onnx"), "onnx", input_names, output_names, model_args, **kwargs)
            result = convert_to_openvino(export.path, xml, export.inputs, verify=kwargs.get("verify", True))
        export.path = None  # the intermediate ONNX file is gone
        result.export = export
        return result

    def export_model(
        self,
        save_path: str,
        save_format: str | None = None,
        input_names: list[str] | None = None,
        output_names: list[str] | None = None,
        model_args: Any = None,
        **kwargs: Any,
    ):
        """Export the compressed model to INT8 ONNX or OpenVINO IR (NNCF's signature).

        Args:
            save_path: the file to write (atomically): the ``.onnx`` file, or for ``"openvino"`` the ``.xml``
                (its ``.bin`` beside it; ``openvino_model.xml`` is the name optimum-intel loads).
            save_format: ``"onnx"`` (default), ``"onnx_<opset>"`` (e.g. ``"onnx_17"``) or ``"openvino"``: the
                verified INT8 ONNX export converted to IR, its integer weights kept and the IR verified in
                OpenVINO (see [`hf_qat.onnx.convert_to_openvino`]).
            input_names / output_names: override the names taken from the model.
            model_args: example inputs, NNCF layout ``(a, b, {"x": x})`` or a dict of tensors;
                default: the first calibration batch, ``input_info``, or the model's config.
            **kwargs: passed to [`hf_qat.export_onnx`] (``verify``, ``runtimes``, ``dynamic_axes`` ...).

        Returns:
            [`ExportResult`] (path, exporter used, operator counts and verification reports), or for
            ``"openvino"`` an [`OpenVINOResult`] whose ``export`` is the ONNX export it was converted from.
        """
        import re

        from .export import DEFAULT_OPSET, export_onnx

        fmt = "onnx" if save_format is None else str(save_format)
        if fmt == "openvino":
            return self._export_openvino(save_path, input_names, output_names, model_args, **kwargs)
        match = re.fullmatch(r"onnx(?:_(\d+))?", fmt)
        if match is None:
            raise ValueError(
                f"save_format {fmt!r} is not supported for PyTorch models: use 'onnx', 'onnx_<opset>' (e.g. 'onnx_17') "
                "or 'openvino'."
            )
        opset = int(match.group(1)) if match.group(1) else kwargs.pop("opset", DEFAULT_OPSET)
        return export_onnx(
            self._model,
            save_path,
            model_args,
            input_names=input_names,
            output_names=output_names,
            opset=opset,
            config=self.config,
            **kwargs,
        )

    # -- diagnostics --------------------------------------------------------------------------
    def quantization_report(self, fp32_model: nn.Module, batches: Any, *, local: bool = True, max_batches: int | None = None):
        """Per-layer SQNR of this controller's model against ``fp32_model`` on ``batches``.

        Same as ``hf_qat.quantization_report(fp32_model, ctrl.model, batches, ...)``; see
        [`hf_qat.torch.report.quantization_report`] for the arguments and errors.

        Returns:
            [`LayerReport`]: one row per quantized layer that ran, in network order (``worst(n)``, ``to_dict()``,
            ``to_markdown()``, ``plot(path)``).
        """
        from .report import quantization_report

        return quantization_report(fp32_model, self._model, batches, local=local, max_batches=max_batches)

    # -- checkpoints ------------------------------------------------------------------------
    def nncf_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict under NNCF 2.x's key names (see [`hf_qat.to_nncf_state_dict`]).

        Saved with the compression state, it is a checkpoint NNCF 2.x restores::

            torch.save({"state_dict": ctrl.nncf_state_dict(),
                        "compression_state": ctrl.get_compression_state()}, "ckpt.pth")
            # NNCF 2.x: ctrl, model = create_compressed_model(model, config, compression_state=ckpt["compression_state"])
            #           load_state(model, ckpt["state_dict"], is_resume=True)

        hf_qat's own ``load_state`` reads both key layouts.

        Raises:
            [`CompressionStateError`]: the model has group-wise weight quantizers, which NNCF has no form for.
        """
        self.refuse_hf_qat_only("an NNCF 2.x checkpoint")
        return to_nncf_state_dict(self._model.state_dict())

    def refuse_hf_qat_only(self, target: str) -> None:
        """Raise [`CompressionStateError`] naming the first quantizer NNCF has no form for: group-wise weights
        (``group_size``) and per-token dynamic activations (``scheme: dynamic_per_token``)."""
        for kind, found in (
            (
                "group-wise weight quantizers (hf_qat's group_size extension",
                [q for q in self.quantizers if self.quantizers[q].spec.grouped],
            ),
            (
                "per-token dynamic activation quantizers (hf_qat's dynamic_per_token scheme",
                [q for q in self.quantizers if self.quantizers[q].spec.dynamic],
            ),
        ):
            if found:
                raise CompressionStateError(
                    f"{target} cannot hold {kind}; {len(found)} here, first: {found[0]}). Save hf_qat's own "
                    "checkpoint (save_pretrained / QATTrainer), or use NNCF's per-channel/per-tensor schemes for NNCF."
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
                oq = m.__dict__.get("_hf_qat_output_quantizer")
                unwrap_module(m)
                if iq is not None:
                    # keep the input quantizer as a forward pre-hook on the restored layer
                    m.register_forward_pre_hook(_QuantizeFirstInput(iq))
                if oq is not None:
                    m.register_forward_hook(_QuantizeOutput(oq))
    container = getattr(model, CONTAINER_NAME, None)
    if container is not None:
        container.requires_grad_(False)
    return model


class _QuantizeFirstInput:
    """Forward pre-hook applying a quantizer to a layer's first argument (an object rather than a
    closure, so that a stripped model pickles)."""

    def __init__(self, quantizer: BaseQuantizer):
        self.quantizer = quantizer

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (self.quantizer(args[0]), *args[1:])


class _QuantizeOutput:
    """Forward hook applying a quantizer to a layer's result (NNCF 2.x output quantizers on layers)."""

    def __init__(self, quantizer: BaseQuantizer):
        self.quantizer = quantizer

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.quantizer(output)
