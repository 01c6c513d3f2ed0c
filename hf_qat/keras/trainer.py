"""``KerasQATTrainer``: the Keras counterpart of :class:`~hf_qat.QATTrainer`.

One object compresses a Keras model (keras-hub models included), calibrates it on the training
data, fine-tunes it with ``model.fit`` (the compression scheduler runs as a Keras callback and a
``tf.train.Checkpoint`` with the compression state is written every epoch), evaluates it in
TensorFlow and as deployed (INT8 ONNX in ONNX Runtime), exports the frozen graph, SavedModel and
ONNX, saves a folder that keras-hub/Keras load without hf_qat, and pushes it to the hub::

    args = KerasQATArguments(output_dir="out", num_train_epochs=2, learning_rate=2e-5)
    trainer = KerasQATTrainer(model, args, train_dataset=train_ds, eval_dataset=eval_ds)
    trainer.train()
    trainer.evaluate(); trainer.evaluate_onnx()
    trainer.save_model(); trainer.push_to_hub("me/bert-qat")
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ..core.config import NNCFConfig
from ..core.defaults import DEFAULT_NUM_INIT_SAMPLES, default_nncf_config
from ..core.layout import ONNX_NAME, OPENVINO_XML_NAME, remove_openvino_files
from ..errors import CompressionStateError, ExportError
from ..onnx.runtime import OnnxRunner
from .checkpoint import CompressionState, load_compression_state
from .hub import push_to_hub_keras, save_keras_qat_model
from .init import register_default_init_args, split_features
from .model_creation import create_compressed_model
from .signature import feed_arrays

__all__ = ["KerasQATArguments", "KerasQATTrainer"]

logger = logging.getLogger(__name__)


@dataclass
class KerasQATArguments:
    """Arguments of :class:`KerasQATTrainer` (``HfArgumentParser``-compatible)."""

    output_dir: str = field(metadata={"help": "Folder for checkpoints, exports and the saved model."})
    nncf_config: str | None = field(default=None, metadata={"help": "NNCF config JSON file (default: 8-bit QAT)."})
    num_calibration_samples: int = field(
        default=DEFAULT_NUM_INIT_SAMPLES, metadata={"help": "Samples for quantizer range initialisation."}
    )
    num_train_epochs: int = field(default=2, metadata={"help": "QAT epochs."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Adam learning rate of the QAT fine-tuning."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    export_formats: str = field(
        default="frozen_graph,onnx,openvino",
        metadata={
            "help": "Comma-separated: frozen_graph, saved_model, onnx, openvino (IR converted from the INT8 ONNX: "
            "openvino_model.xml + .bin, the files optimum-intel's OVModelFor* load; left out with a warning when "
            "OpenVINO cannot convert the model)."
        },
    )
    evaluate_onnx: bool = field(
        default=True,
        metadata={"help": "Evaluate the INT8 ONNX export in ONNX Runtime."},
    )
    save_checkpoints: bool = field(default=True, metadata={"help": "Write a tf.train.Checkpoint every epoch."})
    keep_checkpoints: int = field(default=2, metadata={"help": "Checkpoints kept."})
    seed: int = field(default=42, metadata={"help": "Random seed."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repo id for push_to_hub."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})
    base_model: str | None = field(
        default=None,
        metadata={"help": "Hub id of the model this one was trained from, for the model card (needed for a local folder)."},
    )
    license: str | None = field(
        default=None,
        metadata={"help": "License of the model card (default: the base model's, read from its local card; else none)."},
    )


def _checkpoint_callback(trainer: KerasQATTrainer) -> Any:
    """A Keras callback writing ``tf.train.Checkpoint(model, optimizer, compression_state)`` after every epoch."""
    import keras

    class CheckpointCallback(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            trainer._write_checkpoint(epoch + 1)

    return CheckpointCallback()


class KerasQATTrainer:
    """Compress, calibrate, fit, evaluate, export, checkpoint and push a Keras model.

    Args:
        model (`keras.Model`): the float model (built, or buildable from the dataset).
        args (`KerasQATArguments`): training arguments.
        train_dataset (`tf.data.Dataset`): batched ``(features, labels)``; also the calibration data.
        eval_dataset (`tf.data.Dataset`, *optional*): batched ``(features, labels)``.
        loss, metrics: passed to ``model.compile`` (default: sparse categorical cross-entropy on logits, accuracy).
        optimizer: a Keras optimizer (default AdamW with ``learning_rate``/``weight_decay``).
        callbacks: extra Keras callbacks for ``fit``.
        nncf_config (`NNCFConfig` or `dict`, *optional*): overrides ``args.nncf_config``.
    """

    def __init__(
        self,
        model: Any,
        args: KerasQATArguments,
        train_dataset: Any,
        eval_dataset: Any = None,
        loss: Any = None,
        metrics: Any = None,
        optimizer: Any = None,
        callbacks: list[Any] | None = None,
        nncf_config: Any = None,
    ):
        self.model = model
        self.args = args
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.metrics = metrics if metrics is not None else ["accuracy"]
        self.optimizer = optimizer
        self.callbacks = list(callbacks or [])
        if nncf_config is None:
            nncf_config = (
                NNCFConfig.from_json(args.nncf_config) if args.nncf_config else default_nncf_config(args.num_calibration_samples)
            )
        self.nncf_config = nncf_config if isinstance(nncf_config, NNCFConfig) else NNCFConfig.from_dict(nncf_config)
        self.ctrl = None
        self.history = None
        self.output_dir = Path(args.output_dir)
        self._checkpoint = None
        self._manager = None
        #: why the last export has no OpenVINO IR (``None`` when it has one, or none was asked for)
        self.openvino_error: str | None = None

    # -- compression ---------------------------------------------------------------------------
    def compress(self, compression_state: dict | None = None) -> Any:
        """Insert quantizers and initialise their ranges on the training data (once)."""
        if self.ctrl is not None:
            return self.ctrl
        config = self.nncf_config
        if compression_state is None:
            config = register_default_init_args(config, self.train_dataset)
        self.ctrl, self.model = create_compressed_model(self.model, config, compression_state=compression_state)
        logger.info(
            "hf_qat: quantized layers\n%s\n%s",
            self.ctrl.quantized_layers_table(),
            self.ctrl.statistics(),
        )
        return self.ctrl

    def _compile(self) -> None:
        import keras

        optimizer = self.optimizer or keras.optimizers.AdamW(
            learning_rate=self.args.learning_rate, weight_decay=self.args.weight_decay
        )
        self.model.compile(optimizer=optimizer, loss=self.loss, metrics=self.metrics)

    # -- checkpoints -----------------------------------------------------------------------------
    def _checkpoint_objects(self) -> Any:
        import tensorflow as tf

        if self._checkpoint is None:
            self._checkpoint = tf.train.Checkpoint(
                model=self.model,
                optimizer=self.model.optimizer,
                compression_state=CompressionState(self.ctrl),
            )
            self._manager = tf.train.CheckpointManager(
                self._checkpoint,
                str(self.output_dir / "checkpoints"),
                max_to_keep=self.args.keep_checkpoints,
            )
        return self._checkpoint

    def _write_checkpoint(self, epoch: int) -> str:
        self._checkpoint_objects()
        return self._manager.save(checkpoint_number=epoch)

    # -- training ----------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None) -> Any:
        """Compress (or restore from ``resume_from_checkpoint``) and fit ``args.num_train_epochs`` epochs.

        ``resume_from_checkpoint``: a checkpoint prefix, or ``True`` for the latest one in
        ``output_dir/checkpoints``. The quantizers are rebuilt from the checkpoint's compression state
        (no range init), model, optimizer and quantizer variables are restored and training continues
        from the next epoch. Returns the Keras ``History``.
        """
        import keras
        import tensorflow as tf

        keras.utils.set_random_seed(self.args.seed)
        initial_epoch = 0
        path = None
        if resume_from_checkpoint:
            path = (
                tf.train.latest_checkpoint(str(self.output_dir / "checkpoints"))
                if resume_from_checkpoint is True
                else str(resume_from_checkpoint)
            )
            if path is None:
                raise CompressionStateError(f"no checkpoint to resume from in {self.output_dir / 'checkpoints'}")
            state = load_compression_state(path)
            self.compress(compression_state=state)
            self._compile()
            self.model.optimizer.build(self.model.trainable_variables)
            self._checkpoint_objects().read(path).assert_existing_objects_matched()
            initial_epoch = max(self.ctrl.scheduler.current_epoch + 1, 0)
        else:
            self.compress()
            self._compile()
        callbacks = self.ctrl.callbacks() + self.callbacks
        if self.args.save_checkpoints:
            callbacks.append(_checkpoint_callback(self))
        self.history = self.model.fit(
            self.train_dataset,
            validation_data=self.eval_dataset,
            epochs=self.args.num_train_epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=2,
        )
        return self.history

    # -- evaluation ----------------------------------------------------------------------------------
    def evaluate(self, dataset: Any = None) -> dict[str, float]:
        """Keras ``evaluate`` of the quantized model (``eval_*`` keys)."""
        if self.ctrl is None:
            self.compress()
            self._compile()
        results = self.model.evaluate(
            dataset if dataset is not None else self.eval_dataset,
            return_dict=True,
            verbose=0,
        )
        return {f"eval_{k}": float(v) for k, v in results.items()}

    def evaluate_onnx(self, dataset: Any = None, path: str | None = None) -> dict[str, float]:
        """Accuracy of the INT8 ONNX export in ONNX Runtime (exported first when ``path`` is not given)."""
        path = path or str(self.output_dir / ONNX_NAME)
        if not os.path.exists(path):
            self.export(["onnx"])
        runner = OnnxRunner(path)
        correct = total = 0
        for element in dataset if dataset is not None else self.eval_dataset:
            features, labels = split_features(element), np.asarray(element[1])
            feed = feed_arrays(self.model, features)
            logits = next(iter(runner(feed).values()))
            correct += int((logits.argmax(-1) == labels).sum())
            total += len(labels)
        return {"onnx_accuracy": correct / max(total, 1), "onnx_samples": total}

    # -- export, save, push ------------------------------------------------------------------------
    def export(self, formats: list[str] | None = None) -> dict[str, Any]:
        """Export to ``formats`` (default ``args.export_formats``) into ``output_dir``."""
        files = {
            "frozen_graph": "model.pb",
            "saved_model": "saved_model",
            "onnx": "model.onnx",
            "openvino": OPENVINO_XML_NAME,
        }
        formats = formats or [f.strip() for f in self.args.export_formats.split(",") if f.strip()]
        unknown = [f for f in formats if f not in files]
        if unknown:
            raise ValueError(f"unknown export format(s) {unknown}; expected some of {sorted(files)}")
        results = {}
        for fmt in formats:
            if fmt != "openvino":
                results[fmt] = self.ctrl.export_model(str(self.output_dir / files[fmt]), save_format=fmt)
                continue
            self.openvino_error = None
            try:  # a model OpenVINO cannot convert keeps its other exports; the folder then holds no IR
                results[fmt] = self.ctrl.export_model(str(self.output_dir / files[fmt]), save_format=fmt)
            except (ImportError, ExportError) as e:
                self.openvino_error = str(e)
                remove_openvino_files(self.output_dir)
                logger.warning("hf_qat: no OpenVINO IR in %s: %s. The other exports are saved.", self.output_dir, e)
        return results

    def save_model(self, output_dir: str | None = None) -> Path:
        """Save the keras-hub preset (or ``model.keras``), compression state, config and quantizer ranges."""
        return save_keras_qat_model(self.model, self.ctrl, output_dir or self.output_dir)

    def push_to_hub(
        self,
        repo_id: str | None = None,
        results: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Save, export (frozen graph, SavedModel, ONNX, OpenVINO IR), write the model card and push in one commit."""
        repo_id = repo_id or self.args.hub_model_id
        if not repo_id:
            raise ValueError("push_to_hub needs a repo id: pass repo_id or set args.hub_model_id")
        kwargs.setdefault("token", self.args.hub_token)
        kwargs.setdefault("base_model", self.args.base_model)
        kwargs.setdefault("license", self.args.license)
        return push_to_hub_keras(self.model, self.ctrl, repo_id, results=results, **kwargs)
