"""Model inputs on the Keras side: example arrays from NNCF's ``input_info`` (parsed by :mod:`hf_qat.core.inputs`)."""

from __future__ import annotations

from typing import Any

from ..core.inputs import example_values, parse_input_info

__all__ = ["inputs_from_input_info"]


def inputs_from_input_info(input_info: Any) -> Any:
    """Example arrays described by NNCF's ``input_info`` (a dict by ``keyword`` when entries name one)."""
    specs = parse_input_info(input_info)
    arrays = []
    for spec, value in zip(specs, example_values(specs)):
        if spec.dtype == "bfloat16":  # NumPy has no bfloat16 of its own; TensorFlow's ml_dtypes has
            import ml_dtypes

            value = value.astype(ml_dtypes.bfloat16)
        arrays.append((spec.keyword, value))
    if all(k is not None for k, _ in arrays):
        return {k: a for k, a in arrays}
    values = [a for _, a in arrays]
    return values[0] if len(values) == 1 else tuple(values)
