"""The Keras quantization controller (NNCF's ``QuantizationController`` API for TensorFlow)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..core.algo_config import QuantizationSettings
from ..core.controller import CompressionStage, QuantizationControllerBase
from ..core.state import QuantizerSetup
from ..errors import CompressionStateError, DistributedError
from .export import export_keras
from .insertion import walk_layers
from .quantizers import KerasQuantizer

__all__ = ["CompressionCallback", "CompressionStage", "KerasQuantizationController"]


class CompressionCallback(keras.callbacks.Callback):
    """Drives the controller's scheduler from ``model.fit``: ``epoch_step`` before each epoch, ``step`` per batch.

    Staged quantization (``params.activations_quant_start_epoch``/``weights_quant_start_epoch``)
    switches quantizers through variables read inside the compiled train step, so no retracing
    is needed.
    """

    def __init__(self, ctrl: KerasQuantizationController):
        super().__init__()
        self.ctrl = ctrl

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.ctrl.scheduler.epoch_step(epoch)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.ctrl.scheduler.step()


class KerasQuantizationController(QuantizationControllerBase):
    """Controls the quantizers of a compressed Keras model.

    Obtain one from [`hf_qat.keras.create_compressed_model`]. ``ctrl.callbacks()`` gives the Keras
    callbacks that run the compression scheduler during ``model.fit``.
    """

    def __init__(
        self,
        model: Any,
        setup: QuantizerSetup,
        quantizers: dict[str, KerasQuantizer],
        settings: QuantizationSettings,
        config: Any,
    ):
        super().__init__(model, setup, quantizers, settings, config)

    # -- NNCF controller API --------------------------------------------------------------
    def loss(self) -> tf.Tensor:
        """Compression loss: zero for quantization (kept for NNCF-style training loops)."""
        return tf.zeros(())

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """Keras callbacks to pass to ``model.fit`` (the compression scheduler)."""
        return [CompressionCallback(self)]

    def quantized_layers_table(self) -> str:
        """One line per layer hf_qat looked at: what is quantized there (and what is not)."""
        rows = []
        for node in walk_layers(self._model):
            if node.kind is None:
                continue
            w = self.quantizers.get(node.path)
            a = self.quantizers.get(f"{node.path}|INPUT0")
            rows.append(f"{node.path:<60} {node.kind.name:<12} weight: {_describe(w):<28} input: {_describe(a)}")
        return "\n".join(rows)

    # -- state ------------------------------------------------------------------------------
    def quantizer_arrays(self) -> dict[str, np.ndarray]:
        """Every quantizer variable as an array, keyed ``<quantizer id>/<variable>`` (safetensors-ready)."""
        out: dict[str, np.ndarray] = {}
        for q in self.quantizers.values():
            out.update(q.state_arrays())
        return out

    def load_quantizer_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Assign quantizer variables from :meth:`quantizer_arrays` output; checks everything first.

        Raises:
            [`CompressionStateError`]: keys missing or shapes different (first mismatches listed); nothing is assigned then.
        """
        problems = []
        for q in self.quantizers.values():
            for key, var in q.variables.items():
                name = f"{q.id}/{key}"
                if name not in arrays:
                    problems.append(f"{name}: missing")
                elif tuple(np.shape(arrays[name])) != tuple(var.shape):
                    problems.append(f"{name}: shape {list(np.shape(arrays[name]))}, expected {list(var.shape)}")
        extra = sorted(set(arrays) - {f"{q.id}/{k}" for q in self.quantizers.values() for k in q.variables})
        problems += [f"{name}: not a quantizer of this model" for name in extra[:5]]
        if problems:
            raise CompressionStateError(
                f"Quantizer variables do not fit the model ({len(problems)} mismatch(es), first shown):\n  - "
                + "\n  - ".join(problems[:10])
            )
        for q in self.quantizers.values():
            q.load_arrays(arrays)

    # -- distributed ------------------------------------------------------------------------
    def distributed(self) -> None:
        """NNCF-compatible no-op with a check: under ``tf.distribute`` the quantizer variables are
        replicated by the strategy (create the model and compress it inside ``strategy.scope()``).

        Raises:
            [`DistributedError`]: a strategy is active but the quantizer variables were created outside its scope.
        """
        if not tf.distribute.has_strategy():
            return
        strategy = tf.distribute.get_strategy()
        for q in self.quantizers.values():
            for var in q.variables.values():
                if not strategy.extended.variable_created_in_scope(getattr(var, "_value", var)):
                    raise DistributedError(
                        f"Quantizer variable {q.id}/{var.name} was created outside the active strategy's scope: build "
                        "and compress the model inside `with strategy.scope():`."
                    )

    # -- export -----------------------------------------------------------------------------
    def export_model(
        self,
        save_path: str,
        save_format: str = "frozen_graph",
        input_names: list[str] | None = None,
        output_names: list[str] | None = None,
        verify: bool = True,
    ):
        """Export the quantized model (NNCF-TF's ``export_model``).

        ``save_format``: ``"frozen_graph"`` (default, TF2 frozen GraphDef ``.pb`` with FakeQuant nodes),
        ``"saved_model"`` (a SavedModel folder with a ``serve`` endpoint) or ``"onnx"``/``"onnx_<opset>"``
        (ONNX with int8 weights and QuantizeLinear/DequantizeLinear, verified in ONNX Runtime unless
        ``verify=False``) or ``"openvino"`` (OpenVINO IR converted from that ONNX file, ``save_path`` is the
        ``.xml``, integer weights kept, verified in OpenVINO). Returns an [`hf_qat.keras.KerasExportResult`].
        """
        return export_keras(
            self,
            save_path,
            save_format,
            input_names=input_names,
            output_names=output_names,
            verify=verify,
        )


def _describe(q: KerasQuantizer | None) -> str:
    """``float`` or the scheme of a quantizer (``8-bit symmetric per-channel``), for the layers table."""
    if q is None:
        return "float"
    return f"{q.spec.num_bits}-bit {q.spec.mode.value}" + (" per-channel" if q.spec.per_channel else "")
