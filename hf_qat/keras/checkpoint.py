"""Checkpoints of compressed Keras models: ``tf.train.Checkpoint`` plus the compression state.

NNCF-TF's recipe, kept::

    checkpoint = tf.train.Checkpoint(model=model, compression_state=CompressionState(ctrl))
    checkpoint.write(path)

    # restore: read the state first, recreate the quantizers, then restore the variables
    state = load_compression_state(path)
    ctrl, model = create_compressed_model(fresh_model, config, compression_state=state)
    tf.train.Checkpoint(model=model, compression_state=CompressionState(ctrl)).read(path).assert_existing_objects_matched()

The compression state is stored inside the checkpoint as a JSON string (same layout as PyTorch's
``compression_state``); :func:`load_compression_state` reads it without building anything.
"""

from __future__ import annotations

import json
from typing import Any

import tensorflow as tf

from ..core.state import parse_compression_state
from ..errors import CompressionStateError, JSONFileError
from ..utils.jsonfile import loads_json

__all__ = ["CompressionState", "TFCompressionState", "TFCompressionStateLoader", "load_compression_state"]

_KEY = "compression_state"


class CompressionState(tf.train.experimental.PythonState):
    """A trackable holding a controller's compression state as JSON (NNCF-TF's ``TFCompressionState``).

    Args:
        ctrl (`KerasQuantizationController`, *optional*): the controller whose state is saved; without
            one the object only receives a state on restore (``.state``).
    """

    def __init__(self, ctrl: Any = None):
        self._ctrl = ctrl
        self.state: dict[str, Any] | None = None

    def serialize(self) -> str:
        if self._ctrl is None:
            raise CompressionStateError("CompressionState() without a controller has nothing to save.")
        return json.dumps(self._ctrl.get_compression_state())

    def deserialize(self, string_value: Any) -> None:
        data = string_value if isinstance(string_value, bytes) else str(string_value)
        try:
            self.state = loads_json(data, source="the checkpoint's compression state", strict=True)
        except JSONFileError as e:
            raise CompressionStateError(str(e)) from e
        parse_compression_state(self.state)
        if self._ctrl is not None:
            self._ctrl.load_state(self.state)


class TFCompressionState(CompressionState):
    """NNCF-TF's name: the compression state of ``ctrl`` saved with the model's variables.

    ``tf.train.Checkpoint(model=model, compression_state=TFCompressionState(ctrl))``.
    """

    def __init__(self, ctrl: Any):
        if ctrl is None:
            raise CompressionStateError(
                "TFCompressionState(ctrl) needs the controller; use TFCompressionStateLoader() to read a state."
            )
        super().__init__(ctrl)


class TFCompressionStateLoader(CompressionState):
    """NNCF-TF's name: reads the compression state out of a checkpoint before the model is compressed::

    checkpoint = tf.train.Checkpoint(compression_state=TFCompressionStateLoader())
    checkpoint.restore(path).expect_partial()
    ctrl, model = create_compressed_model(model, config, checkpoint.compression_state.state)
    """

    def __init__(self):
        super().__init__(None)


def load_compression_state(checkpoint_path: str) -> dict[str, Any]:
    """Read the compression state stored in a checkpoint written with :class:`CompressionState`.

    Raises:
        [`CompressionStateError`]: the checkpoint has no compression state (a plain Keras checkpoint) or it is invalid.
    """
    try:
        reader = tf.train.load_checkpoint(checkpoint_path)
    except (tf.errors.NotFoundError, ValueError) as e:
        raise CompressionStateError(f"cannot open checkpoint {checkpoint_path!r}: {e}") from e
    keys = [k for k in reader.get_variable_to_shape_map() if k.startswith(f"{_KEY}/")]
    if not keys:
        raise CompressionStateError(
            f"checkpoint {checkpoint_path!r} holds no compression state: write it with "
            "tf.train.Checkpoint(model=model, compression_state=hf_qat.keras.CompressionState(ctrl))."
        )
    value = reader.get_tensor(keys[0])
    holder = CompressionState()
    holder.deserialize(value)
    return holder.state
