"""``QATTrainer``: quantization-aware training with ``transformers.Trainer``.

The Trainer's loop is not copied: compression happens in :meth:`QATTrainer.train` before the
loop builds the optimizer, the optimizer groups come from :meth:`create_optimizer`, distillation
lives in :meth:`compute_loss`, the NNCF compression scheduler is a ``TrainerCallback``, and the
QAT files are added to every save by :meth:`_save`, checkpoints are made atomic by
:meth:`_save_checkpoint` staging them (:mod:`hf_qat.transformers.checkpointing`) through the
overridden :meth:`_get_output_dir`, and the exported ONNX file is evaluated with the task's
transformers loss (:mod:`hf_qat.transformers.evaluation`). Under accelerate's FSDP plugin
(:mod:`hf_qat.transformers.fsdp`) checkpoints stay sharded, :meth:`save_model` gathers the weights, and the export,
card and push use :meth:`single_process_model`. Everything else (gradient accumulation, evaluation, logging,
checkpoint rotation, ``push_to_hub``) is the Trainer's own.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint, rotate_checkpoints

from ..core.algo_config import DistillationSettings, without_distillation
from ..core.config import NNCFConfig
from ..core.defaults import default_nncf_config
from ..core.layout import (
    ONNX_NAME,
    SQNR_PLOT_NAME,
    quantization_config_dict,
    remove_openvino_files,
    write_qat_files,
)
from ..errors import CompressionStateError, ConfigError, DistributedError, ExportError
from ..hub.model_card import license_of, write_model_card
from ..hub.push import push_qat_folder
from ..torch.controller import QuantizationController
from ..torch.init import register_default_init_args
from ..torch.model_creation import create_compressed_model, is_compressed
from .checkpointing import StagedCheckpoint, check_checkpoint, is_sharded_checkpoint
from .evaluation import evaluate_onnx_file
from .fsdp import (
    broadcast_from_main,
    check_plugin,
    enable_fsdp_on_cpu,
    gather_full_state_dict,
    original_class,
    place_activation_quantizers,
    saved_state_dict,
    wrapped_block_classes,
)
from .hub import base_model_of, task_of

__all__ = ["QATTrainingArguments", "QATTrainer", "CompressionSchedulerCallback"]

logger = logging.getLogger(__name__)


@dataclass
class QATTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus what QAT needs. Every ``TrainingArguments`` flag works as usual."""

    nncf_config: dict | str | None = field(
        default=None,
        metadata={"help": "NNCF config: path to a JSON file, or a dict. Default: 8-bit symmetric, percentile ranges."},
    )
    num_calibration_samples: int | None = field(
        default=None, metadata={"help": "Override the config's initializer.range.num_init_samples."}
    )
    export_onnx: bool = field(default=False, metadata={"help": "Export INT8 ONNX to <output_dir>/model.onnx after training."})
    onnx_opset: int | None = field(
        default=None,
        metadata={
            "help": "ONNX opset of the export (13-21). Default: 18, or 21 when weights are group-wise (blocked "
            "DequantizeLinear with int4 weights needs opset 21)."
        },
    )
    export_openvino: bool = field(
        default=True,
        metadata={
            "help": "With export_onnx: convert the verified INT8 ONNX to OpenVINO IR (<output_dir>/openvino_model.xml "
            "+ .bin, INT8 weights, verified in OpenVINO), the files optimum-intel's OVModelFor* load. If OpenVINO "
            "cannot convert the model, a warning says why and the folder holds no IR."
        },
    )
    evaluate_onnx: bool = field(
        default=True, metadata={"help": "With export_onnx: evaluate the exported file in ONNX Runtime on the eval set."}
    )
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "Hub id of the model this one was trained from, for the model card's base_model (needed when the "
            "model was loaded from a local folder; default: the id it was loaded with, if it is a hub id)."
        },
    )
    license: str | None = field(
        default=None,
        metadata={"help": "License of the model card (default: the base model's, read from its local card; else none)."},
    )
    distillation_weight: float = field(
        default=0.0, metadata={"help": "Weight of the distillation loss from the FP32 model (0 disables; 1 = distillation only)."}
    )
    distillation_temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of the distillation loss."})

    def __post_init__(self):
        launched = _launched_processes()
        if launched > 1 and not self.use_cpu and not _has_accelerator():
            # A launcher started several processes (torchrun, accelerate launch --multi_gpu...) on a machine
            # without GPUs: without use_cpu, accelerate would give each its own single-process "group" and
            # they would train side by side into the same output_dir. Join them in a gloo group instead.
            logger.info("hf_qat: WORLD_SIZE=%d and no GPU: the processes train together on CPU (gloo, use_cpu=True)", launched)
            self.use_cpu = True
        super().__post_init__()
        if launched > 1 and self.world_size != launched:
            raise ValueError(
                f"This process is one of {launched} launched together (WORLD_SIZE={launched}), but the training "
                f"arguments see {self.world_size} process(es): they would train independently and overwrite each "
                "other's files. Launch with `torchrun --nproc_per_node N scripts/run_qat.py ...` or `accelerate "
                "launch --num_processes N ...` (add --use_cpu on a machine without GPUs), or run one process."
            )
        if not 0.0 <= self.distillation_weight <= 1.0:
            raise ValueError(f"distillation_weight must be in [0, 1], got {self.distillation_weight}")
        if self.distillation_temperature <= 0:
            raise ValueError(f"distillation_temperature must be positive, got {self.distillation_temperature}")
        if self.onnx_opset is not None and not 13 <= self.onnx_opset <= 21:
            raise ValueError(f"onnx_opset must be between 13 and 21, got {self.onnx_opset}")


def _launched_processes() -> int:
    """How many processes the launcher says were started together (``WORLD_SIZE``; 1 when unset or unreadable)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def _has_accelerator() -> bool:
    """Whether torch sees a GPU or another accelerator device (CUDA, XPU, MPS...)."""
    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "is_available"):
        return bool(acc.is_available())
    return torch.cuda.is_available()


class CompressionSchedulerCallback(TrainerCallback):
    """Advances the NNCF compression scheduler: ``epoch_step()`` per epoch, ``step()`` per optimizer step."""

    def __init__(self, ctrl: QuantizationController):
        self.ctrl = ctrl

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.ctrl.scheduler.epoch_step(int(state.epoch or 0))

    def on_step_end(self, args, state, control, **kwargs):
        self.ctrl.scheduler.step(state.global_step)


class StepTimer(TrainerCallback):
    """Wall seconds of every optimizer step, from ``on_step_begin`` to ``on_step_end`` (forward,
    backward and the optimizer; not data loading), in ``seconds``."""

    def __init__(self):
        self.seconds: list[float] = []
        self._started: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._started is not None:
            self.seconds.append(time.perf_counter() - self._started)
            self._started = None


def _resolve_config(value: Any, num_calibration_samples: int | None) -> NNCFConfig:
    if value is None:
        config = NNCFConfig.from_dict(default_nncf_config())
    elif isinstance(value, NNCFConfig):
        config = copy.deepcopy(value)
    elif isinstance(value, dict):
        config = NNCFConfig.from_dict(value)
    elif isinstance(value, (str, os.PathLike)):
        if not os.path.isfile(value):
            raise ConfigError("--nncf_config", str(value), "the path of an NNCF config JSON file")
        config = NNCFConfig.from_json(value)
    else:
        raise ConfigError("--nncf_config", type(value).__name__, "a path, a dict or an NNCFConfig")
    if num_calibration_samples is not None:
        compression = config.get("compression")
        entries = compression if isinstance(compression, list) else [compression]
        for entry in entries:
            if isinstance(entry, dict) and entry.get("algorithm") == "quantization":
                rng = entry.setdefault("initializer", {}).setdefault("range", {})
                for r in rng if isinstance(rng, list) else [rng]:
                    r["num_init_samples"] = int(num_calibration_samples)
        config = NNCFConfig.from_dict(dict(config))
    return config


#: Model outputs distillation compares (question answering has two: start and end).
_LOGIT_NAMES = ("logits", "start_logits", "end_logits")


class QATTrainer(Trainer):
    """A ``transformers.Trainer`` that trains a quantized model.

    The model is compressed once, at the start of :meth:`train` (before the optimizer exists), with
    the NNCF config of ``args.nncf_config`` and the train dataloader (already collated) as
    calibration data. Pass a model that is already compressed (``create_compressed_model``, or a
    QAT checkpoint loaded with ``from_pretrained``) to continue training it.

    Every checkpoint and ``save_model`` writes safetensors weights (quantizer parameters included),
    ``config.json`` with ``quantization_config`` (``quant_method: "hf_qat"``), ``compression_state.json``
    and ``nncf_config.json``; ``train(resume_from_checkpoint=...)`` rebuilds the quantizers from the
    checkpoint's compression state, then the Trainer restores weights, optimizer, scheduler and RNG.

    Args:
        compression_ctrl: the controller of an already compressed model.
        All other arguments are ``Trainer``'s.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        *a: Any,
        compression_ctrl: QuantizationController | None = None,
        **kw: Any,
    ):
        if args is None:
            args = QATTrainingArguments(output_dir="tmp_trainer")
        if not isinstance(args, QATTrainingArguments):
            raise TypeError(f"QATTrainer needs QATTrainingArguments, got {type(args).__name__}")
        if model is not None and is_compressed(model) and compression_ctrl is None:
            compression_ctrl = getattr(model, "_hf_qat_ctrl", None)
            if compression_ctrl is None:
                raise ValueError("The model is compressed but no controller was given: pass compression_ctrl=ctrl.")
        self.compression_ctrl = compression_ctrl
        self.nncf_config = (
            compression_ctrl.config
            if compression_ctrl is not None
            else _resolve_config(args.nncf_config, args.num_calibration_samples)
        )
        self.teacher: nn.Module | None = None
        # NNCF's knowledge_distillation entry, or the distillation_weight argument (not both)
        self.distillation = DistillationSettings.from_config(self.nncf_config)
        if self.distillation is not None and args.distillation_weight > 0:
            raise ValueError(
                "Distillation is set twice: by the nncf_config's knowledge_distillation entry and by distillation_weight; "
                "keep one."
            )
        if (args.distillation_weight > 0 or self.distillation is not None) and model is not None:
            if compression_ctrl is not None:
                raise ValueError("Distillation needs the FP32 model as teacher: pass the uncompressed model to QATTrainer.")
            self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        super().__init__(model, args, *a, **kw)
        self.onnx_result = None
        self._onnx_step: int | None = None
        #: the OpenVINO IR beside the exported ONNX file (``None``: not converted; see ``openvino_error``)
        self.openvino_result = None
        self.openvino_error: str | None = None
        #: wall seconds of each phase this trainer ran (``compression`` with calibration, ``training``,
        #: ``onnx_export``, ``openvino``, ``onnx_evaluation``); a phase run again adds up
        self.timings: dict[str, float] = {}
        #: wall seconds of each optimizer step of ``train()`` (see :class:`StepTimer`)
        self.step_timer = StepTimer()
        self.add_callback(self.step_timer)
        #: under FSDP: (folder, global step) of the last gathered save, and the model loaded back from it
        self._gathered_save: tuple[str, int] | None = None
        self._single_process: tuple[tuple[str, int], nn.Module] | None = None
        #: under FSDP: activation quantizers moved into their blocks (moved key prefix -> saved prefix)
        self._fsdp_renames: dict[str, str] | None = None
        if self.compression_ctrl is not None:
            self._attach(self.compression_ctrl)

    # -- accelerate -----------------------------------------------------------------------------
    def create_accelerator_and_postprocess(self):
        """``Trainer``'s accelerator; under an FSDP launch on CPU processes, with FSDP switched back on
        (accelerate 1.15 drops its FSDP plugin for CPU process groups and would train with DDP)."""
        super().create_accelerator_and_postprocess()
        if enable_fsdp_on_cpu(self.accelerator, self.args):
            self.is_fsdp_enabled = True
            logger.info("hf_qat: FSDP on %d CPU processes (gloo)", self.args.world_size)

    @property
    def is_fsdp(self) -> bool:
        """Whether this trainer shards the model with FSDP2."""
        return bool(getattr(self, "is_fsdp_enabled", False))

    def _sharded_checkpoints(self) -> bool:
        return self.is_fsdp and "SHARDED_STATE_DICT" in str(self.accelerator.state.fsdp_plugin.state_dict_type)

    # -- compression ----------------------------------------------------------------------------
    def _attach(self, ctrl: QuantizationController) -> None:
        self.compression_ctrl = ctrl
        self.model._hf_qat_ctrl = ctrl
        self.add_callback(CompressionSchedulerCallback(ctrl))

    @contextlib.contextmanager
    def _timed(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - started

    def compress(self, compression_state: dict | None = None) -> QATTrainer:
        """Compress ``self.model`` now (idempotent). Without ``compression_state`` the ranges are
        initialised on batches of the train dataloader."""
        if self.compression_ctrl is not None:
            return self
        with self._timed("compression"):
            return self._compress(compression_state)

    def _compress(self, compression_state: dict | None) -> QATTrainer:
        config = copy.deepcopy(self.nncf_config)
        if "compression" in config:  # the trainer runs the distillation itself
            config["compression"] = without_distillation(config)["compression"]
        if compression_state is None:
            if self.train_dataset is None:
                raise ValueError("QATTrainer needs a train_dataset to calibrate the quantizers (or a compression_state).")
            config = register_default_init_args(config, self.get_train_dataloader())
        ctrl, model = create_compressed_model(self.model, config, compression_state=compression_state)
        self._attach(ctrl)
        if self.teacher is not None:
            self.teacher.to(self.args.device)
        logger.info("hf_qat: model compressed\n%s", ctrl.statistics().to_str())
        return self

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Compress (or rebuild the quantizers of a checkpoint), then run ``Trainer.train``."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir} holds no checkpoint-* folder")
        state, synced = None, False
        if resume_from_checkpoint:
            state = check_checkpoint(resume_from_checkpoint)
            if is_sharded_checkpoint(resume_from_checkpoint) and not self.is_fsdp:
                raise DistributedError(
                    f"resume_from_checkpoint: {resume_from_checkpoint} holds FSDP shards, which only an FSDP run reads. "
                    "Resume it under FSDP, with any number of processes: `accelerate launch --config_file "
                    "scripts/accelerate/fsdp_cpu.yaml --num_processes N scripts/run_qat.py ... --resume_from_checkpoint "
                    f"{resume_from_checkpoint}` (fsdp.yaml on GPUs). For one process, use the gathered checkpoint of "
                    "the run's output folder."
                )
        if self.compression_ctrl is None:
            if self.optimizer is not None:
                raise ValueError(
                    "QATTrainer got an optimizer built before the quantizers exist, so it would never train their "
                    "ranges. Pass no optimizer (QATTrainer builds one after compressing), or call trainer.compress() "
                    "first and build the optimizer from the compressed model."
                )
            if self.is_fsdp and self._fsdp_renames is None:  # every rank calibrates rank 0's model
                broadcast_from_main(self.accelerator.unwrap_model(self.model))
                synced = True
            self.compress(compression_state=state)
        grouped = [qid for qid, q in self.compression_ctrl.quantizers.items() if q.spec.grouped]
        if self.args.export_onnx and grouped and (self.args.onnx_opset or 21) < 21:  # refused now, not after training
            raise ExportError(
                f"export_onnx: weight quantizer {grouped[0]!r} is group-wise: its blocked DequantizeLinear needs "
                f"onnx_opset 21, asked: {self.args.onnx_opset}. Pass --onnx_opset 21. Nothing was trained or written.",
                module=grouped[0],
            )
        if self.is_fsdp and self._fsdp_renames is None:
            plugin = self.accelerator.state.fsdp_plugin
            check_plugin(plugin, self.model)
            # as DDP at wrap time: the same quantizers on every rank (else DistributedError), and rank 0's values
            self.compression_ctrl.distributed()
            if not synced:
                broadcast_from_main(self.accelerator.unwrap_model(self.model))
            # activation quantizers into the block that uses them (then sharded in its unit)
            blocks = wrapped_block_classes(plugin)
            self._fsdp_renames = place_activation_quantizers(self.accelerator.unwrap_model(self.model), blocks)
        try:
            with self._timed("training"):
                output = super().train(
                    resume_from_checkpoint=resume_from_checkpoint,
                    trial=trial,
                    ignore_keys_for_eval=ignore_keys_for_eval,
                    **kwargs,
                )
        except pickle.UnpicklingError as e:  # transformers reads optimizer/scheduler/RNG pickles with weights_only=True
            raise CompressionStateError(
                f"resume_from_checkpoint: a pickled file in {resume_from_checkpoint} (optimizer.pt, scheduler.pt, "
                f"rng_state*.pth or scaler.pt) names objects torch.load(weights_only=True) refuses to build: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r}. Nothing in it was run. Delete the "
                "checkpoint, or resume from another one."
            ) from e
        if self.args.export_onnx:
            if self.is_fsdp:  # the export runs on a single-process model: gather the weights first (every rank)
                self.save_model(self.args.output_dir)
            self._export_on_main()
            if self.args.evaluate_onnx and self.eval_dataset is not None and self.is_world_process_zero():
                self.log(self.evaluate_onnx())
        return output

    def _export_on_main(self) -> None:
        """Export on the main process; the other ranks learn whether it worked (no hang on failure)."""
        error: BaseException | None = None
        try:
            self.export_onnx()  # returns at once on non-main ranks
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
        if self.args.world_size > 1:
            from accelerate.utils import broadcast_object_list

            flag = [None if error is None else f"{type(error).__name__}: {error}"]
            broadcast_object_list(flag, from_process=0)
            if flag[0] is not None and error is None:
                raise ExportError(f"The ONNX export failed on the main process: {flag[0]}")
        if error is not None:
            raise error

    # -- optimisation -----------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        """Trainer's parameter groups, with the quantizer parameters in a group of their own: no
        weight decay, learning rate times ``compression_lr_multiplier`` (default 1)."""
        if self.optimizer is not None or self.compression_ctrl is None:
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        opt_model = self.model if model is None else model
        quantizer_params = {id(p) for q in self.compression_ctrl.quantizers.values() for p in q.parameters()}
        multiplier = self.compression_ctrl.settings.compression_lr_multiplier or 1.0
        for q in self.compression_ctrl.quantizers.values():
            q.clear_lr_multiplier()  # the multiplier goes into the learning rate, not the gradients
        decay = set(self.get_decay_parameter_names(opt_model))
        named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
        groups = [
            {
                "params": [p for n, p in named if id(p) not in quantizer_params and n in decay],
                "weight_decay": self.args.weight_decay,
            },
            {"params": [p for n, p in named if id(p) not in quantizer_params and n not in decay], "weight_decay": 0.0},
            {
                "params": [p for n, p in named if id(p) in quantizer_params],
                "weight_decay": 0.0,
                "lr": self.args.learning_rate * multiplier,
            },
        ]
        groups = [g for g in groups if g["params"]]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Task loss, plus (with ``distillation_weight > 0``) the temperature-scaled KL divergence
        to the FP32 teacher's logits: ``(1 - w) * task + w * T^2 * KL(teacher || student)``; with the
        config's ``knowledge_distillation`` entry, NNCF's ``task + scale * KD`` (KD: ``T^2 * KL`` for
        ``softmax``, the logits' mean squared error for ``mse``)."""
        if self.teacher is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        label_keys = ("labels", "start_positions", "end_positions")
        with torch.no_grad():
            teacher_out = self.teacher(**{k: v for k, v in inputs.items() if k not in label_keys})
        labels = inputs.get("labels")
        nncf = self.distillation
        t = nncf.temperature if nncf is not None else self.args.distillation_temperature
        parts = []
        for name in _LOGIT_NAMES:  # classification / LM / token logits; question answering: start and end
            student_logits = outputs.get(name) if isinstance(outputs, dict) else getattr(outputs, name, None)
            if student_logits is None:
                continue
            teacher_logits = teacher_out[name]
            student = student_logits.reshape(-1, student_logits.shape[-1])
            teacher = teacher_logits.reshape(-1, teacher_logits.shape[-1]).to(student_logits.dtype)
            if student_logits.dim() == 3 and isinstance(labels, torch.Tensor) and labels.shape == student_logits.shape[:2]:
                keep = labels.reshape(-1) != -100  # token-level tasks: only positions that have a label
                student, teacher = student[keep], teacher[keep]
            if nncf is not None and nncf.kind == "mse":
                parts.append(F.mse_loss(student, teacher))
            else:
                parts.append(
                    F.kl_div(
                        F.log_softmax(student / t, dim=-1),
                        F.log_softmax(teacher / t, dim=-1),
                        log_target=True,
                        reduction="batchmean",
                    )
                    * (t * t)
                )
        if not parts:
            raise ValueError(
                f"Distillation needs logits in the model's output ({', '.join(_LOGIT_NAMES)}); {type(outputs).__name__} has none."
            )
        kd = sum(parts) / len(parts)
        scaled = (
            self.loss_is_scaled_for_ga
            if self.loss_is_scaled_for_ga is not None
            else (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
        )
        if scaled:  # the task loss is already divided over the accumulated batch: do the same for KD
            kd = kd / self.current_gradient_accumulation_steps
        if nncf is not None:
            loss = loss + nncf.scale * kd
        else:
            w = self.args.distillation_weight
            loss = (1 - w) * loss + w * kd
        return (loss, outputs) if return_outputs else loss

    # -- saving -------------------------------------------------------------------------------------
    def _get_output_dir(self, trial):
        """The run folder; while :meth:`_save_checkpoint` writes, the checkpoint's staging root."""
        staged = getattr(self, "_staged_checkpoint", None)
        return staged.root if staged is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """``Trainer._save_checkpoint``, made atomic: everything is written into a staging folder that is
        renamed to ``checkpoint-<step>`` only once complete (files and folder fsynced first).

        A crash or kill mid-save leaves the previous checkpoints as they were and no ``checkpoint-<step>``
        folder, so ``resume_from_checkpoint=True`` picks the last complete one. A failed write (full
        disk ...) removes the staging folder and raises [`CheckpointError`]. Staging folders left by a
        killed run are removed at the next save. Trainer's own rotation runs inside the staging root
        (one checkpoint: nothing to rotate); the real rotation runs once the checkpoint is in place.
        """
        staged = StagedCheckpoint(self._get_output_dir(trial=trial), self.state.global_step)
        if self.args.should_save:
            staged.prepare()
        self.accelerator.wait_for_everyone()
        self._staged_checkpoint = staged
        try:
            super()._save_checkpoint(model, trial)
        except BaseException as e:
            if self.args.should_save:
                staged.discard()
            if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit: cleaned up, passed on
                raise
            raise staged.error(e) from e
        finally:
            self._staged_checkpoint = None
        # Trainer resolved the best checkpoint inside the staging root: point at final names instead
        best = self.state.best_global_step
        if best:
            best_dir = StagedCheckpoint(staged.run_dir, best).final
            if best == self.state.global_step or os.path.isdir(best_dir):
                self.state.best_model_checkpoint = best_dir
        self.accelerator.wait_for_everyone()  # every rank has written its files (RNG states are per rank)
        if self.args.should_save:
            if os.path.isfile(os.path.join(staged.folder, "trainer_state.json")):  # with the final best-checkpoint path
                self.state.save_to_json(os.path.join(staged.folder, "trainer_state.json"))
            staged.commit()
            rotate_checkpoints(
                output_dir=staged.run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``; under FSDP, a *gathered* checkpoint: the full safetensors weights (quantizer
        parameters included) with the QAT files, loadable in one process with ``from_pretrained``. Every process
        must call it (the weights are gathered from all of them). Checkpoints during training stay sharded
        (``fsdp_state_dict_type: SHARDED_STATE_DICT``): the Trainer writes the shards, this writes the QAT files."""
        if not self.is_fsdp:
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if getattr(self, "_staged_checkpoint", None) is not None and self._sharded_checkpoints():
            if self.args.should_save:
                self._save_qat_metadata(output_dir)
            return None
        state_dict = saved_state_dict(gather_full_state_dict(self.model), self._fsdp_renames or {})
        # a tied weight (GPT-2's lm_head) is stored once, under its first name, as save_pretrained does
        first: dict[int, str] = {}
        for name, param in self.model.named_parameters(remove_duplicate=False):
            if first.setdefault(id(param), name) != name:
                state_dict.pop(name, None)
        if self.args.should_save:
            self._save(output_dir, state_dict=state_dict)
        self._gathered_save = (str(Path(output_dir).resolve()), self.state.global_step)
        self.accelerator.wait_for_everyone()
        return None

    def _save_qat_metadata(self, output_dir: str) -> None:
        """``config.json`` (with ``quantization_config``), the QAT files and the processor: a sharded checkpoint's
        description, from which resuming rebuilds the quantizers before the shards are loaded."""
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        config = copy.deepcopy(model.config)
        config.quantization_config = quantization_config_dict(self.compression_ctrl)
        config.save_pretrained(output_dir)
        write_qat_files(output_dir, self.compression_ctrl)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def single_process_model(self) -> nn.Module:
        """The trained model as one process holds it: the model itself, or under FSDP the gathered checkpoint of
        the last :meth:`save_model` loaded back with ``from_pretrained`` (on the main process; its controller is
        ``model._hf_qat_ctrl``). The export, the per-layer report and the model card use it.

        Raises:
            [`DistributedError`]: under FSDP, no gathered save was made at the current step.
        """
        if not self.is_fsdp:
            return self.accelerator.unwrap_model(self.model)
        saved = self._gathered_save
        if saved is None or saved[1] != self.state.global_step:
            raise DistributedError(
                "Under FSDP the weights are sharded across processes: call trainer.save_model() on every process "
                "first; the single-process model is loaded back from that gathered checkpoint."
            )
        if self._single_process is None or self._single_process[0] != saved:
            cls = original_class(self.accelerator.unwrap_model(self.model))
            model = cls.from_pretrained(saved[0]).eval()
            self._single_process = (saved, model)
        return self._single_process[1]

    def single_process_controller(self) -> QuantizationController:
        """The controller of :meth:`single_process_model` (``compression_ctrl`` unless under FSDP)."""
        if not self.is_fsdp:
            return self.compression_ctrl
        return self.single_process_model()._hf_qat_ctrl

    def _save(self, output_dir: str | None = None, state_dict=None):
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        ctrl = self.compression_ctrl
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        previous = getattr(config, "quantization_config", None) if config is not None else None
        if ctrl is not None and config is not None:
            config.quantization_config = quantization_config_dict(ctrl)
        try:
            super()._save(output_dir, state_dict=state_dict)
        finally:
            if config is not None and ctrl is not None:
                if previous is None:
                    del config.quantization_config
                else:
                    config.quantization_config = previous
        if ctrl is not None and self.args.should_save:
            write_qat_files(output_dir, ctrl)

    # -- hub ------------------------------------------------------------------------------------------
    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        results: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        """Push the QAT model in one commit: checkpoint, QAT files, INT8 ``model.onnx``, model card.

        ``results`` (as written by ``scripts/run_qat.py``) fills the card's results table; by default
        the latest ``eval_*`` / ``onnx_*`` metrics of the run are used. Before compression, this is
        ``Trainer.push_to_hub``.
        """
        if self.compression_ctrl is None:
            return super().push_to_hub(commit_message=commit_message, blocking=blocking, token=token, revision=revision, **kwargs)
        if not self.is_world_process_zero():
            return None
        out = Path(self.args.output_dir)
        if not self.is_fsdp:
            self.save_model(str(out), _internal_call=True)
        elif self._gathered_save != (str(out.resolve()), self.state.global_step):
            raise DistributedError(
                "push_to_hub under FSDP: call trainer.save_model() on every process first (the weights are "
                f"gathered from all of them into {out}); then push from the main process."
            )
        if self.onnx_result is None or self._onnx_step != self.state.global_step or not (out / ONNX_NAME).exists():
            self.export_onnx()  # an ONNX file from another step would not be the pushed model
        repo_id = self.args.hub_model_id or out.resolve().name
        model = self.accelerator.unwrap_model(self.model)
        if results is None:
            results = self._results_from_logs(model)
        base = self.args.base_model or base_model_of(model)
        write_model_card(
            out,
            self.single_process_controller(),
            results,
            base_model=base,
            repo_id=repo_id,
            license=self.args.license or license_of(base_model_of(model)) or license_of(base),
            layer_report_plot=SQNR_PLOT_NAME if (out / SQNR_PLOT_NAME).is_file() else None,
        )
        return push_qat_folder(
            out,
            repo_id,
            token=token or self.args.hub_token,
            private=self.args.hub_private_repo,
            revision=revision or self.args.hub_revision,
            commit_message=commit_message or "Upload QAT model (hf_qat)",
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """``hub_strategy`` pushes during training: the checkpoint's QAT files only (no pickles)."""
        if self.compression_ctrl is None:
            return super()._push_from_checkpoint(checkpoint_folder)
        if not self.is_world_process_zero() or getattr(self.args.hub_strategy, "value", self.args.hub_strategy) == "end":
            return None
        if is_sharded_checkpoint(checkpoint_folder):
            if not getattr(self, "_warned_sharded_push", False):
                self._warned_sharded_push = True
                logger.warning(
                    "hf_qat: under FSDP the checkpoints hold shards, not a model one process can load: they are not "
                    "pushed during training; the gathered model is pushed at the end (push_to_hub after save_model)."
                )
            return None
        push_qat_folder(
            checkpoint_folder,
            self.args.hub_model_id or Path(self.args.output_dir).resolve().name,
            token=self.args.hub_token,
            private=self.args.hub_private_repo,
            revision=self.args.hub_revision,
            commit_message=f"Training in progress, step {self.state.global_step}",
        )
        return None

    def _results_from_logs(self, model: nn.Module) -> dict[str, Any]:
        evals = [h for h in self.state.log_history if any(k.startswith("eval_") for k in h)]
        onnx = [h for h in self.state.log_history if any(k.startswith("onnx_") for k in h)]
        last_eval, last_onnx = (evals[-1] if evals else {}), (onnx[-1] if onnx else {})
        metric = next(
            (
                k[5:]
                for k in last_eval
                if k.startswith("eval_") and k[5:] not in ("loss", "runtime", "samples_per_second", "steps_per_second")
            ),
            "loss",
        )
        return {
            "task": task_of(model),
            "metric": metric,
            "values": {"fp32": None, "int8": last_eval.get(f"eval_{metric}"), "int8_onnx": last_onnx.get(f"onnx_{metric}")},
        }

    # -- ONNX -----------------------------------------------------------------------------------------
    def export_onnx(self, path: str | os.PathLike | None = None, **kwargs: Any):
        """Export the trained model to INT8 ONNX (default ``<output_dir>/model.onnx``) on the main
        process; example inputs come from one eval (or train) batch. Returns the ``ExportResult``.

        Raises:
            [`MissingDependencyError`]: the ``onnx`` extra is not installed (training itself does not need it).
        """
        from ..torch.export import export_onnx  # the onnx extra is optional for training

        if self.compression_ctrl is None:
            raise ValueError("Nothing to export yet: train() (or compress()) first.")
        path = Path(path) if path is not None else Path(self.args.output_dir) / ONNX_NAME
        if not self.args.should_save:
            return None
        loader = self.get_eval_dataloader() if self.eval_dataset is not None else self.get_train_dataloader()
        batch = next(iter(loader))
        example = {
            k: v.detach() for k, v in batch.items() if k not in ("labels", "label", "label_ids") and isinstance(v, torch.Tensor)
        }
        model = self.single_process_model()
        kwargs.setdefault("opset", self.onnx_opset())
        default_file = path == Path(self.args.output_dir) / ONNX_NAME
        if default_file:
            remove_openvino_files(path.parent)  # an IR of an earlier model must not sit beside the new file
        with self._timed("onnx_export"):
            self.onnx_result = export_onnx(model, path, example, **kwargs)
        self._onnx_step = self.state.global_step
        logger.info("hf_qat: %s", self.onnx_result)
        if default_file and self.args.export_openvino:
            self.export_openvino()
        return self.onnx_result

    def onnx_opset(self) -> int:
        """The export's opset: ``args.onnx_opset``, else 18, or 21 when weights are group-wise."""
        if self.args.onnx_opset is not None:
            return self.args.onnx_opset
        ctrl = self.compression_ctrl
        return 21 if ctrl is not None and any(q.spec.grouped for q in ctrl.weight_quantizers.values()) else 18

    def export_openvino(self):
        """Convert the exported INT8 ONNX file to OpenVINO IR beside it (``openvino_model.xml`` + ``.bin``) and verify
        it in OpenVINO (f32 must agree with ONNX Runtime; the CPU's default precision is reported).

        A model OpenVINO cannot convert or run keeps its checkpoint and ONNX file: a warning says why the IR is
        missing, ``openvino_error`` holds the reason, and the folder holds no IR (a push then has none).
        Returns the [`OpenVINOResult`] or ``None``.
        """
        if self.onnx_result is None:
            raise ValueError("Nothing to convert yet: export_onnx() first.")
        self.openvino_result, self.openvino_error = None, None
        try:
            from ..onnx.openvino import convert_to_openvino

            with self._timed("openvino"):
                self.openvino_result = convert_to_openvino(self.onnx_result.path, inputs=self.onnx_result.inputs)
        except (ImportError, ExportError) as e:
            self.openvino_error = str(e)
            remove_openvino_files(Path(self.onnx_result.path).parent)
            logger.warning(
                "hf_qat: no OpenVINO IR in %s: %s. The checkpoint and model.onnx are saved; the IR is left out of "
                "the folder and of any push.",
                Path(self.onnx_result.path).parent,
                e,
            )
            return None
        logger.info("hf_qat: %s", self.openvino_result)
        return self.openvino_result

    def _unsharded_eval_loader(self, eval_dataset=None):
        """The whole eval set on this process (the prepared loader holds only this rank's shard)."""
        if self.args.world_size <= 1:
            return self.get_eval_dataloader(eval_dataset)
        from torch.utils.data import DataLoader

        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if hasattr(dataset, "column_names"):
            dataset = self._remove_unused_columns(dataset, description="evaluation")
        return DataLoader(dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator)

    def evaluate_onnx(
        self, path: str | os.PathLike | None = None, eval_dataset=None, metric_key_prefix: str = "onnx"
    ) -> dict[str, float]:
        """Evaluate an exported ONNX file in ONNX Runtime on the eval set with ``compute_metrics``:
        the metric of what is deployed. Returns ``{"onnx_loss": ..., "onnx_<metric>": ...}``."""
        path = (
            Path(path)
            if path is not None
            else (self.onnx_result.path if self.onnx_result else Path(self.args.output_dir) / ONNX_NAME)
        )
        model = self.accelerator.unwrap_model(self.model)
        with self._timed("onnx_evaluation"):
            return evaluate_onnx_file(
                path, model, self._unsharded_eval_loader(eval_dataset), self.compute_metrics, metric_key_prefix
            )
