"""Model inputs on the PyTorch side: tensors from NNCF's ``input_info`` and keyword filtering."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core.inputs import example_values, parse_input_info

__all__ = ["TORCH_DTYPES", "example_inputs_from_input_info", "example_forward_from_input_info", "filter_kwargs"]

#: :data:`hf_qat.core.inputs.INPUT_DTYPES` values as torch dtypes.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "int64": torch.long,
    "int32": torch.int32,
    "bool": torch.bool,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def example_inputs_from_input_info(input_info: Any, device: torch.device | str = "cpu") -> tuple[tuple, dict]:
    """``(args, kwargs)`` of tensors described by NNCF's ``input_info`` (shapes, dtypes, fillers)."""
    specs = parse_input_info(input_info)
    args, kwargs = [], {}
    for spec, value in zip(specs, example_values(specs)):
        tensor = torch.from_numpy(value).to(dtype=TORCH_DTYPES[spec.dtype], device=device)
        if spec.keyword is not None:
            kwargs[spec.keyword] = tensor
        else:
            args.append(tensor)
    return tuple(args), kwargs


def example_forward_from_input_info(input_info: Any, device: torch.device) -> Callable[[nn.Module], Any]:
    """A forward function feeding tensors described by NNCF's ``input_info``."""

    def forward(model: nn.Module) -> Any:
        args, kwargs = example_inputs_from_input_info(input_info, device)
        return model(*args, **kwargs)

    return forward


def filter_kwargs(model: nn.Module, kwargs: dict) -> dict:
    """``kwargs`` without the keys ``model.forward`` does not take (all of them when it takes ``**kwargs``)."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return kwargs
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}
