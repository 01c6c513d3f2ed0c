"""NNCF's ``input_info``, parsed once for both backends: names, shapes, dtypes and example values.

``input_info`` is one entry or a list of entries ``{"sample_size": [...], "type": "long",
"filler": "ones", "keyword": "input_ids"}`` (the schema in :mod:`hf_qat.core.schema` validates it).
Backends turn :class:`InputSpec` values into their own tensors; the example values themselves come
from :func:`example_values`, so PyTorch and Keras trace with the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["INPUT_DTYPES", "InputSpec", "parse_input_info", "example_values"]

#: NNCF's ``input_info.type`` names and the dtype (by NumPy/TF/torch name) each stands for.
INPUT_DTYPES: dict[str, str] = {
    "float": "float32",
    "long": "int64",
    "int": "int32",
    "bool": "bool",
    "half": "float16",
    "bfloat16": "bfloat16",
    "double": "float64",
}


@dataclass(frozen=True)
class InputSpec:
    """One model input described by ``input_info``.

    Attributes:
        shape (`tuple[int, ...]`): ``sample_size``.
        dtype (`str`): dtype name (a value of :data:`INPUT_DTYPES`: ``"float32"``, ``"int64"``, ``"bfloat16"`` ...).
        filler (`str`): ``"zeros"``, ``"ones"`` or ``"random"`` (NNCF's default: random floats, ones otherwise).
        keyword (`str | None`): the ``forward`` keyword the tensor is passed as; ``None`` for positional inputs.
    """

    shape: tuple[int, ...]
    dtype: str
    filler: str
    keyword: str | None = None

    @property
    def is_floating(self) -> bool:
        return self.dtype.startswith(("float", "bfloat"))


def parse_input_info(input_info: Any) -> list[InputSpec]:
    """The :class:`InputSpec` of every entry of a (schema-validated) ``input_info``, in order."""
    entries = input_info if isinstance(input_info, list) else [input_info]
    specs = []
    for entry in entries:
        dtype = INPUT_DTYPES[entry.get("type", "float")]
        floating = dtype.startswith(("float", "bfloat"))
        filler = entry.get("filler", "random" if floating else "ones")
        specs.append(InputSpec(tuple(int(d) for d in entry["sample_size"]), dtype, filler, entry.get("keyword")))
    return specs


def example_values(specs: list[InputSpec], seed: int = 0) -> list[np.ndarray]:
    """Example arrays for ``specs`` (same numbers for both backends; reproducible with ``seed``).

    Random floats are uniform in ``[0, 1)``, random integers and booleans in ``{0, 1}``. NumPy has no
    bfloat16: those arrays are float32, to be cast by the backend to :attr:`InputSpec.dtype`.
    """
    rng = np.random.default_rng(seed)
    values = []
    for spec in specs:
        np_dtype = "float32" if spec.dtype == "bfloat16" else spec.dtype
        if spec.filler == "zeros":
            a = np.zeros(spec.shape, np_dtype)
        elif spec.filler == "ones":
            a = np.ones(spec.shape, np_dtype)
        elif spec.is_floating:
            a = rng.random(spec.shape).astype(np_dtype)
        else:
            a = rng.integers(0, 2, spec.shape).astype(np_dtype)
        values.append(a)
    return values
