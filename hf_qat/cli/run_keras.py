"""The Keras flow of ``run_qat`` (``--framework tf``): a keras-hub model (preset, ``hf://`` repo or
transformers-format folder) -> FP32 fine-tuning (optional) and evaluation -> FP32 ONNX baseline ->
``KerasQATTrainer``: compress, calibrate, QAT with ``model.fit`` -> INT8 evaluation in TensorFlow and as
exported INT8 ONNX in ONNX Runtime -> frozen graph + ONNX exports -> save (keras-hub preset +
compression state + quantizer ranges) -> model card -> optional push. Tasks: text-classification,
image-classification."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402  (hf_qat.keras selected the TensorFlow backend)

from ..core.layout import ONNX_NAME, RESULTS_NAME  # noqa: E402
from ..hub.model_card import license_of, write_model_card  # noqa: E402
from ..keras.export import export_float_onnx  # noqa: E402
from ..keras.signature import feed_arrays  # noqa: E402
from ..keras.trainer import KerasQATArguments, KerasQATTrainer  # noqa: E402
from ..utils.io import atomic_write_text  # noqa: E402
from .args import BUILTIN_HUB_ID, DataArguments, KerasRunArguments, ModelArguments, RunError  # noqa: E402
from .data import check_push, load_data  # noqa: E402
from .summary import onnx_latency, ordered_phases, phase_line, summary_table, timed  # noqa: E402

__all__ = ["TASKS", "check_task", "run"]

logger = logging.getLogger("run_qat_tf")

#: run_qat tasks the Keras flow runs, and the keras-hub task class suffix of each.
TASKS = {
    "text-classification": "TextClassifier",
    "image-classification": "ImageClassifier",
}


def check_task(model_args: ModelArguments) -> None:
    """Refuse tasks and values the Keras flow cannot run, before anything is loaded."""
    if model_args.task not in TASKS:
        raise RunError(f"--task {model_args.task!r} is not supported by the TF path; expected one of {sorted(TASKS)}")
    if not float(model_args.finetune_fp32_epochs).is_integer():
        raise RunError(f"--finetune_fp32_epochs {model_args.finetune_fp32_epochs}: the TF path fine-tunes whole epochs")


def run(
    model_args: ModelArguments,
    data_args: DataArguments,
    qat_args: KerasQATArguments,
    run_args: KerasRunArguments,
    builtin: bool,
) -> dict[str, Any]:
    """Run the Keras flow; returns the results written to ``qat_results.json``."""
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO)
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    started = time.perf_counter()
    check_task(model_args)
    fp32_epochs = int(model_args.finetune_fp32_epochs)
    if builtin:
        logger.info("run_qat_tf: no --model_name given: all-MiniLM-L6-v2 (keras-hub, TensorFlow) on hf_qat's built-in reviews.")
    check_push(run_args.push_to_hub, qat_args.hub_token)
    keras.utils.set_random_seed(qat_args.seed)
    splits = load_data(data_args, qat_args.seed)
    labels_probe = sorted(
        {v for s in splits.values() for v in s[_columns(splits["train"], data_args, model_args.task)[1]]},
        key=str,
    )
    model = load_task_model(model_args, len(labels_probe))
    train_ds, eval_ds, label_names = make_datasets(splits, model, model_args, data_args, run_args)
    out = Path(qat_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    phases = {"load": time.perf_counter() - started}

    # -- FP32 -------------------------------------------------------------------------------
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(
        optimizer=keras.optimizers.AdamW(model_args.finetune_fp32_learning_rate),
        loss=loss,
        metrics=["accuracy"],
    )
    if fp32_epochs > 0:
        logger.info(
            "run_qat_tf: fine-tuning the FP32 model for %d epoch(s)",
            fp32_epochs,
        )
        with timed(phases, "fp32_finetune"):
            model.fit(train_ds, epochs=fp32_epochs, verbose=2)
    with timed(phases, "fp32_evaluation"):
        fp32_accuracy = float(model.evaluate(eval_ds, return_dict=True, verbose=0)["accuracy"])
    sizes, latency = {}, {}
    if not model_args.skip_export:
        # the FP32 reference only gives the size and latency ratios: not saved, so that ONNX clients find one file
        fp32_tmp = tempfile.TemporaryDirectory(prefix="hf_qat_fp32_")
        fp32_onnx = Path(fp32_tmp.name) / ONNX_NAME
        with timed(phases, "fp32_reference"):
            sizes["fp32"] = export_float_onnx(model, fp32_onnx)

    # -- QAT ---------------------------------------------------------------------------------
    if model_args.skip_export:
        qat_args.export_formats = "frozen_graph"
    trainer = KerasQATTrainer(model, qat_args, train_dataset=train_ds, eval_dataset=eval_ds, loss=loss)
    with timed(phases, "compression"):
        trainer.compress()
    with timed(phases, "training"):
        trainer.train()
    with timed(phases, "int8_evaluation"):
        int8_accuracy = trainer.evaluate()["eval_accuracy"]
    with timed(phases, "export"):  # frozen graph, ONNX and OpenVINO IR, each verified
        exports = trainer.export()
    onnx_metrics = {}
    if not model_args.skip_export:
        with timed(phases, "onnx_evaluation"):
            onnx_metrics = trainer.evaluate_onnx()
        sizes["int8"] = os.path.getsize(out / "model.onnx")
        feed = {k: v[:1] for k, v in feed_arrays(trainer.model, next(iter(eval_ds))[0]).items()}
        with timed(phases, "fp32_reference"):
            latency = onnx_latency(
                {"fp32": str(fp32_onnx), "int8": str(out / "model.onnx")},
                feed,
                model_args.latency_runs,
            )
        fp32_tmp.cleanup()
    with timed(phases, "save"):
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
    }
    if qat_args.base_model is None and builtin:
        qat_args.base_model = BUILTIN_HUB_ID
    base_model = qat_args.base_model or model_args.model_name
    license = qat_args.license or license_of(base_model)
    qat_args.license = license
    with timed(phases, "card"):
        write_model_card(
            out,
            trainer.ctrl,
            results,
            base_model=base_model,
            dataset=data_args.dataset_name,
            framework="keras",
            license=license,
        )
    results["timings_s"] = {**ordered_phases(phases), "total": round(time.perf_counter() - started, 3)}
    results["wall_time_s"] = results["timings_s"]["total"]
    atomic_write_text(out / RESULTS_NAME, json.dumps(results, indent=2, default=float))

    lines = summary_table(model_args.task, "accuracy", values, sizes, latency, "TensorFlow", model_args.max_seq_length)
    lines.append(phase_line(results["timings_s"]))
    lines.append(
        f"\nSaved to {out} ({results['wall_time_s']:.0f} s): keras-hub preset, hf_qat_quantizers.safetensors, "
        f"compression_state.json, nncf_config.json, {', '.join(Path(e.path).name for e in exports.values())}, README.md"
    )
    print("\n".join(lines))
    if run_args.push_to_hub:
        info = trainer.push_to_hub(results=results, base_model=base_model, dataset=data_args.dataset_name)
        print(f"Pushed to {getattr(info, 'commit_url', None) or qat_args.hub_model_id}")
    return results


def _columns(split, data_args: DataArguments, task: str) -> tuple[str, str]:
    names = split.column_names
    label = data_args.label_column or next((c for c in ("label", "labels") if c in names), None)
    if task == "image-classification":
        feature = data_args.image_column or next((c for c in ("image", "img") if c in names), None)
    else:
        feature = data_args.text_column or next((c for c in ("text", "sentence", "review") if c in names), None)
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
        if model_args.task == "image-classification" and len(split) and isinstance(split[0][feature], str):
            import datasets

            split = split.cast_column(feature, datasets.Image())  # file paths in csv/json data
        y = np.asarray([index[v] for v in split[label]], np.int32)
        if model_args.task == "image-classification":
            x = np.stack([np.asarray(img.convert("RGB"), np.float32) for img in split[feature]])
        else:
            x = np.asarray([str(t) for t in split[feature]])
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
        return ds.map(lambda a, b: (pre(a), b), num_parallel_calls=tf.data.AUTOTUNE).cache().prefetch(2)

    train = build(splits["train"], run_args.per_device_train_batch_size)
    evaluation = build(splits["validation"], run_args.per_device_eval_batch_size)
    model.preprocessor = None  # the datasets are preprocessed: the model graph starts at token ids / pixels
    return train, evaluation, [str(v) for v in raw_labels]
