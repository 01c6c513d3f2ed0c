"""Calibration data for Keras models and range initialisation of the quantizers.

``register_default_init_args(config, dataset)`` registers a ``tf.data.Dataset`` (or any iterable
of batches) whose elements are ``features``, ``(features, labels)`` or
``(features, labels, sample_weights)``, with ``features`` shaped like the model's inputs: a
tensor, a tuple of tensors, or a dict keyed by input name (keras-hub models). The structure is
checked against the model before any batch runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from ..core.algo_config import QuantizationSettings
from ..core.spec import QuantizerGroup
from ..core.statistics import make_collector
from ..errors import CalibrationError
from .quantizers import KerasQuantizer

__all__ = [
    "KerasRangeInitArgs",
    "input_names",
    "register_default_init_args",
    "run_range_init",
    "split_features",
]

logger = logging.getLogger(__name__)


class KerasRangeInitArgs:
    """Calibration data registered in the config (NNCF-TF's ``QuantizationRangeInitArgs``).

    As in NNCF-TF, ``dataset`` is normally batched already (NNCF's samples pass their batched training set)
    and ``batch_size`` only says how many samples a batch holds. An unbatched ``tf.data.Dataset`` (single
    samples) is batched with ``batch_size``; which of the two a dataset is gets decided against the model's
    input rank when the data is used (:meth:`batches`), never guessed.
    """

    def __init__(self, dataset: Iterable, batch_size: int | None = None):
        self.dataset = dataset
        self.batch_size = batch_size

    @classmethod
    def get_id(cls) -> str:
        return "quantization_range_init_args"

    def batches(self, model: Any) -> Iterable:
        """The calibration data as batches for ``model``.

        Raises:
            [`CalibrationError`]: the dataset yields single samples and no ``batch_size`` was given, or it
                cannot be told whether it is batched (the model's input rank is unknown) while ``batch_size``
                was given.
        """
        dataset = self.dataset
        if not isinstance(dataset, tf.data.Dataset):
            return dataset  # Python iterables yield batches
        data_rank = _feature_rank(dataset.element_spec)
        model_rank = _model_input_rank(model)
        if data_rank is not None and model_rank is not None and data_rank == model_rank - 1:
            if self.batch_size is None:
                raise CalibrationError(
                    f"The calibration dataset yields single samples (rank {data_rank}) but the model takes batches "
                    f"(rank {model_rank}): pass batch_size to register_default_init_args, or batch the dataset."
                )
            return dataset.batch(self.batch_size)
        if data_rank is not None and model_rank is not None and data_rank == model_rank:
            return dataset  # batched (batch_size, if given, counts samples as in NNCF-TF)
        if self.batch_size is not None:
            raise CalibrationError(
                f"Cannot tell whether the calibration dataset is batched (its features have rank {data_rank}, the "
                f"model's inputs rank {model_rank}): pass a batched dataset without batch_size, or build the model first."
            )
        return dataset


def _feature_rank(element_spec: Any) -> int | None:
    features = split_features(element_spec)
    specs = [s for s in tf.nest.flatten(features) if hasattr(s, "shape")]
    ranks = {s.shape.rank for s in specs}
    return None if not ranks or None in ranks else min(ranks)


def _model_input_rank(model: Any) -> int | None:
    inputs = getattr(model, "inputs", None)
    try:
        ranks = {len(t.shape) for t in tf.nest.flatten(inputs)} if inputs else set()
    except (TypeError, ValueError):
        return None
    return min(ranks) if ranks else None


def register_default_init_args(nncf_config: Any, dataset: Iterable, batch_size: int | None = None) -> Any:
    """Register ``dataset`` as calibration data for range initialisation (NNCF-TF's signature).

    ``dataset`` yields batches, as NNCF-TF expects (``batch_size`` then only counts samples), or single
    samples of a ``tf.data.Dataset``, batched with ``batch_size``; see [`KerasRangeInitArgs`].
    Returns the same config object.
    """
    nncf_config.register_extra_structs([KerasRangeInitArgs(dataset, batch_size)])
    return nncf_config


def input_names(model: Any) -> list[str] | None:
    """Names of a functional model's inputs when it takes a dict of tensors, else ``None``."""
    structure = getattr(model, "_inputs_struct", None)
    if isinstance(structure, dict):
        return sorted(structure)
    return None


def split_features(element: Any) -> Any:
    """The features of a dataset element: ``x`` of ``x``, ``(x, y)`` or ``(x, y, w)``."""
    if isinstance(element, tuple) and len(element) in (2, 3):
        return element[0]
    return element


def describe_structure(element: Any) -> str:
    spec = tf.nest.map_structure(
        lambda t: f"{getattr(t, 'dtype', type(t).__name__)!s}{list(getattr(t, 'shape', []))}",
        element,
    )
    return str(spec)


def check_element(model: Any, element: Any) -> None:
    """Raise [`CalibrationError`] if a dataset element does not fit the model's inputs."""
    features = split_features(element)
    names = input_names(model)
    expected_n = len(getattr(model, "inputs", None) or []) or None
    if names is not None:
        if not isinstance(features, dict) or not set(names) <= set(features):
            raise CalibrationError(
                f"Calibration data element {describe_structure(element)} does not fit the model: it takes a dict of "
                f"inputs {names}; expected elements `features` or `(features, labels)` with `features` a dict holding "
                "those keys."
            )
        return
    if isinstance(features, dict):
        raise CalibrationError(
            f"Calibration data element {describe_structure(element)} is a dict, but the model takes positional "
            f"inputs ({expected_n or 'unknown number'}); expected a tensor or a tuple of tensors."
        )
    n = len(features) if isinstance(features, (tuple, list)) else 1
    if expected_n is not None and n != expected_n:
        raise CalibrationError(
            f"Calibration data element {describe_structure(element)} has {n} feature tensor(s); the model takes "
            f"{expected_n} input(s). Expected elements `features` or `(features, labels)`."
        )


def _batch_size(features: Any) -> int:
    first = tf.nest.flatten(features)[0]
    shape = getattr(first, "shape", ())
    return int(shape[0]) if len(shape) else 1


def iterate_samples(dataset: Iterable, num_samples: int, desc: str) -> Iterator[Any]:
    """Yield dataset elements until ``num_samples`` samples were seen, with a progress bar."""
    seen = 0
    with tqdm(total=num_samples, desc=desc, unit="sample", leave=False) as bar:
        for element in dataset:
            yield element
            n = _batch_size(split_features(element))
            seen += n
            bar.update(min(n, max(num_samples - bar.n, 0)))
            if seen >= num_samples:
                return


def call_model(model: Any, features: Any) -> Any:
    if isinstance(features, (tuple, list)) and len(features) == 1:
        features = features[0]
    elif isinstance(features, list):
        features = tuple(features)
    return model(features, training=False)


def run_range_init(
    model: Any,
    quantizers: dict[str, KerasQuantizer],
    settings: QuantizationSettings,
    args: KerasRangeInitArgs | None,
) -> None:
    """Initialise every quantizer's range: weights from their values, activations from calibration data.

    Raises:
        [`CalibrationError`]: no calibration data, data that does not fit the model, or an activation
            quantizer that saw no data.
    """
    weights = {qid: q for qid, q in quantizers.items() if q.is_weight}
    acts = {qid: q for qid, q in quantizers.items() if not q.is_weight}
    for qid, q in weights.items():
        r = settings.range_init_for(QuantizerGroup.WEIGHTS, [q.host_path], qid)
        channels = q.layout.num_channels if q.per_channel else 1
        collector = make_collector(
            r.type,
            channels,
            symmetric=q.spec.symmetric,
            per_tensor_activation=False,
            min_percentile=r.min_percentile,
            max_percentile=r.max_percentile,
        )
        q.collect_weight(np.asarray(getattr(q.host, q.host_weight_attr).numpy()), collector)
        q.init_from_collector(collector)
    if not acts or settings.num_init_samples == 0:
        return
    if args is None:
        raise CalibrationError(
            "Range initialisation needs calibration data: call "
            "hf_qat.keras.register_default_init_args(config, dataset) before create_compressed_model, or set "
            '"initializer": {"range": {"num_init_samples": 0}} to skip it.'
        )
    for qid, q in acts.items():
        r = settings.range_init_for(QuantizerGroup.ACTIVATIONS, [q.host_path, qid], qid)
        q.collector = make_collector(
            r.type,
            1,
            symmetric=q.spec.symmetric,
            per_tensor_activation=not q.spec.per_channel,
            min_percentile=r.min_percentile,
            max_percentile=r.max_percentile,
        )
    try:
        checked = False
        for element in iterate_samples(args.batches(model), settings.num_init_samples, "hf_qat range init"):
            if not checked:
                check_element(model, element)
                checked = True
            call_model(model, split_features(element))
        if not checked:
            raise CalibrationError("The calibration dataset is empty: it yielded no batch.")
        starved = [qid for qid, q in acts.items() if not q.collector.has_data]
        if starved:
            raise CalibrationError(
                f"{len(starved)} activation quantizer(s) saw no calibration data (their layers never ran on it): "
                f"{starved[:5]}. Check that the dataset's features reach those layers, or exclude them with ignored_scopes."
            )
        for q in acts.values():
            q.init_from_collector(q.collector)
    finally:
        for q in acts.values():
            q.collector = None
