"""The input/output signature of a Keras model as exported graphs see it (TF specs, names, feeds)."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from ..errors import ExportError
from .init import input_names as dict_input_names

__all__ = ["signature", "feed_arrays", "inference_fn"]


def signature(model: Any, input_names: list[str] | None) -> tuple[list[tf.TensorSpec], list[str], bool]:
    """Input specs (batch and other unknown dims dynamic), names, and whether the model takes a dict."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ExportError(
            f"Cannot export {type(model).__name__}: it has no symbolic inputs (a subclassed or unbuilt Sequential "
            "model). Build it on keras.Input(...) (Functional API) or give Sequential an Input layer.",
            module=type(model).__name__,
        )
    dict_names = dict_input_names(model)
    if dict_names is not None:
        ordered = [model._inputs_struct[n] for n in dict_names]
        names = dict_names
    else:
        ordered = list(inputs)
        names = input_names or [t.name for t in ordered]
    if len(names) != len(ordered):
        raise ExportError(f"input_names has {len(names)} names; the model takes {len(ordered)} inputs")
    specs = [tf.TensorSpec([None] + list(t.shape[1:]), t.dtype, name=n) for t, n in zip(ordered, names)]
    return specs, names, dict_names is not None


def feed_arrays(model: Any, features: Any) -> dict[str, np.ndarray]:
    """``{input name: array}`` for an exported graph from model features (dict, tuple or tensor),
    cast to the graph's input dtypes (keras-hub preprocessors emit boolean padding masks, for example)."""
    specs, names, takes_dict = signature(model, None)
    if takes_dict:
        values = [features[n] for n in names]
    else:
        values = list(features) if isinstance(features, (tuple, list)) else [features]
    return {n: np.asarray(v).astype(s.dtype.as_numpy_dtype) for n, v, s in zip(names, values, specs)}


def inference_fn(model: Any, names: list[str], takes_dict: bool):
    def fn(*args):
        features = dict(zip(names, args)) if takes_dict else (args[0] if len(args) == 1 else tuple(args))
        out = model(features, training=False)
        if isinstance(out, dict):
            return {k: out[k] for k in sorted(out)}
        if isinstance(out, (list, tuple)):
            return {f"output_{i}": o for i, o in enumerate(out)}
        return {"output_0": out}

    return fn
