"""The ONNX signature of a model: example inputs, input and output names, dynamic axes.

Example inputs come from, in order: what the caller passes; NNCF's ``model_args`` layout
(``(a, b, {"x": x})``); the first calibration batch registered in the config; the config's
``input_info``; the transformers config of the model (``input_ids`` from ``vocab_size``,
``pixel_values`` from ``num_channels``/``image_size``).

Names are the model's own: inputs are named after ``forward``'s parameters (``input_ids``,
``attention_mask``, ``pixel_values`` ...), outputs after the fields of a transformers
``ModelOutput`` (``logits``, ``last_hidden_state`` ...). By default the batch axis (0) of every
input and the sequence axis (1) of token inputs are dynamic (``batch_size``, ``sequence_length``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...errors import ExportError

__all__ = ["ExportSignature", "resolve_signature", "ExportWrapper", "grow_inputs", "fit_to_position_limit", "position_limit"]

BATCH_AXIS = "batch_size"
SEQUENCE_AXIS = "sequence_length"
#: Inputs whose axis 1 is a sequence axis (besides any 2-d integer input).
SEQUENCE_INPUTS = frozenset(
    {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "position_ids",
        "inputs_embeds",
        "decoder_input_ids",
        "decoder_attention_mask",
    }
)
_DROPPED_KWARGS = frozenset({"labels", "label", "label_ids"})


@dataclass
class ExportSignature:
    """How the exported graph is called and what it returns.

    Attributes:
        input_names: graph inputs, in order.
        inputs: example tensors, by input name.
        num_positional: how many of the inputs are passed to ``forward`` positionally.
        constants: non-tensor keyword arguments fixed at export (e.g. ``use_cache=False``).
        output_names: graph outputs, in order.
        output_paths: where each output is found in the model's return value.
        dynamic_axes: ``{name: {axis: axis_name}}`` for inputs (and outputs once probed).
    """

    input_names: list[str]
    inputs: dict[str, torch.Tensor]
    num_positional: int
    constants: dict[str, Any]
    output_names: list[str] = field(default_factory=list)
    output_paths: list[tuple[Any, ...]] = field(default_factory=list)
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)

    def args(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.inputs[n] for n in self.input_names)


class ExportWrapper(nn.Module):
    """Calls ``model`` with the signature's inputs and returns its outputs as a flat tuple."""

    def __init__(self, model: nn.Module, signature: ExportSignature):
        super().__init__()
        self.model = model
        self.signature = signature

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sig = self.signature
        args = tensors[: sig.num_positional]
        kwargs = dict(zip(sig.input_names[sig.num_positional :], tensors[sig.num_positional :]))
        out = self.model(*args, **kwargs, **sig.constants)
        return tuple(_get(out, path) for path in sig.output_paths)


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _forward_parameters(model: nn.Module) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return {}


def _split_example(example: Any) -> tuple[tuple, dict]:
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, Mapping):
        return (), dict(example)
    if isinstance(example, (tuple, list)):
        items = list(example)
        if items and isinstance(items[-1], Mapping):  # NNCF's model_args layout: (a, b, {"x": x})
            return tuple(items[:-1]), dict(items[-1])
        return tuple(items), {}
    raise ExportError(
        f"example inputs of type {type(example).__name__} are not supported: pass a tensor, a dict of "
        "tensors (e.g. a tokenizer's output), or a tuple of tensors optionally ending with a dict of keyword tensors."
    )


def inputs_from_model_config(model: nn.Module, batch_size: int = 2, sequence_length: int = 16) -> dict[str, torch.Tensor] | None:
    """Example inputs built from a transformers model's config, or ``None`` if it says too little."""
    config = getattr(model, "config", None)
    main = getattr(model, "main_input_name", None)
    if config is None or main is None:
        return None
    params = _forward_parameters(model)
    g = torch.Generator().manual_seed(0)
    if main == "input_ids" and getattr(config, "vocab_size", None):
        high = int(min(config.vocab_size, 1000))
        inputs = {"input_ids": torch.randint(0, high, (batch_size, sequence_length), generator=g)}
        if "attention_mask" in params:
            inputs["attention_mask"] = torch.ones(batch_size, sequence_length, dtype=torch.long)
        if "token_type_ids" in params and getattr(config, "type_vocab_size", 0):
            inputs["token_type_ids"] = torch.zeros(batch_size, sequence_length, dtype=torch.long)
        return inputs
    if main == "pixel_values":
        size = getattr(config, "image_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
        channels = getattr(config, "num_channels", 3)
        return {"pixel_values": torch.randn(batch_size, channels, h, w, generator=g)}
    return None


def _default_dynamic_axes(name: str, t: torch.Tensor) -> dict[int, str]:
    axes: dict[int, str] = {}
    if t.dim() >= 1:
        axes[0] = BATCH_AXIS
    if t.dim() >= 2 and (name in SEQUENCE_INPUTS or (t.dim() == 2 and not t.is_floating_point())):
        axes[1] = SEQUENCE_AXIS
    return axes


def _normalise_axes(spec: Any, names: list[str]) -> dict[str, dict[int, str]]:
    out: dict[str, dict[int, str]] = {}
    for name, axes in spec.items():
        if isinstance(axes, Mapping):
            out[name] = {int(a): str(n) for a, n in axes.items()}
        elif isinstance(axes, (list, tuple)):
            out[name] = {int(a): f"{name}_dim_{int(a)}" for a in axes}
        else:
            raise ExportError(f"dynamic_axes[{name!r}] must be a dict {{axis: name}} or a list of axes, got {axes!r}")
    return out


def _at_least_two(t: torch.Tensor, axes: dict[int, str]) -> torch.Tensor:
    """Dynamic axes of size 0 or 1 get specialised by tracers: repeat them to size 2."""
    for axis in axes:
        if axis < t.dim() and t.shape[axis] == 1:
            t = torch.cat([t, t], dim=axis)
    return t


#: Model-config attributes that bound the sequence length (position tables).
_POSITION_LIMITS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "max_sequence_length")


def position_limit(model: nn.Module) -> int | None:
    """The longest token sequence the model's position table covers (``None``: unknown or unbounded)."""
    config = getattr(model, "config", None)
    limits = [getattr(config, a, None) for a in _POSITION_LIMITS]
    limits = [v for v in limits if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return min(limits) if limits else None


def fit_to_position_limit(
    inputs: dict[str, torch.Tensor], dynamic_axes: dict[str, dict[int, str]], limit: int | None
) -> dict[str, torch.Tensor]:
    """``inputs`` shortened along their sequence axis so that :func:`grow_inputs` stays within ``limit``.

    The exporter runs the model once more on inputs grown along every dynamic axis (to find the outputs'
    dynamic axes); an example already as long as the position table (NNCF's GPT-2 config: ``[1, 1024]``)
    would run past it. The axes stay dynamic, so a shorter example exports the same graph.
    """
    if limit is None:
        return inputs
    names = sorted({n for axes in dynamic_axes.values() for n in axes.values()})
    growth = {n: i + 1 for i, n in enumerate(names)}
    out = {}
    for name, t in inputs.items():
        for axis, axis_name in dynamic_axes.get(name, {}).items():
            if axis_name == SEQUENCE_AXIS and axis < t.dim() and t.shape[axis] + growth[axis_name] > limit:
                t = t.narrow(axis, 0, max(limit - growth[axis_name], 2)).contiguous()
        out[name] = t
    return out


def grow_inputs(
    inputs: dict[str, torch.Tensor], dynamic_axes: dict[str, dict[int, str]]
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Inputs grown along their dynamic axes, by a distinct amount per axis name (1, 2, 3 ...).

    Returns the grown inputs and the growth of each axis name.
    """
    names = sorted({n for axes in dynamic_axes.values() for n in axes.values()})
    growth = {n: i + 1 for i, n in enumerate(names)}
    grown = {}
    for name, t in inputs.items():
        for axis, axis_name in dynamic_axes.get(name, {}).items():
            d = growth[axis_name]
            reps = [t.narrow(axis, i % t.shape[axis], 1) for i in range(d)]
            t = torch.cat([t, *reps], dim=axis)
        grown[name] = t
    return grown, growth


def resolve_signature(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    input_names: list[str] | None = None,
    dynamic_axes: Any = None,
    fallback_inputs: tuple[tuple, dict] | None = None,
) -> ExportSignature:
    """Example inputs, names and dynamic axes of ``model`` for export (outputs are resolved later).

    Raises:
        [`ExportError`]: no example input can be found or built, or names that do not fit.
    """
    if example_inputs is not None:
        args, kwargs = _split_example(example_inputs)
    elif fallback_inputs is not None:
        args, kwargs = fallback_inputs
    else:
        built = inputs_from_model_config(model)
        if built is None:
            raise ExportError(
                f"Cannot build an example input for {type(model).__name__}: pass example inputs (model_args), "
                "register calibration data with register_default_init_args, or add 'input_info' to the NNCF config."
            )
        args, kwargs = (), built
    params = _forward_parameters(model)
    positional_only = [n for n, p in params.items() if p.kind is inspect.Parameter.POSITIONAL_ONLY]
    if any(n in kwargs for n in positional_only):  # a dict naming positional-only parameters
        args, kwargs = list(args), dict(kwargs)
        for n in positional_only[len(args) :]:
            if n not in kwargs:
                break
            args.append(kwargs.pop(n))
        args = tuple(args)
    positional_names = [
        n for n, p in params.items() if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    has_var_positional = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values())
    accepts_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names: list[str] = []
    tensors: dict[str, torch.Tensor] = {}
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            raise ExportError(f"positional example input {i} is a {type(a).__name__}; only tensors can be graph inputs")
        name = positional_names[i] if i < len(positional_names) else (f"input_{i}" if has_var_positional else None)
        if name is None:
            raise ExportError(f"{len(args)} positional example inputs given but forward takes {len(positional_names)}")
        names.append(name)
        tensors[name] = a
    num_positional = len(names)
    constants: dict[str, Any] = {}
    for k, v in kwargs.items():
        if k in _DROPPED_KWARGS or v is None:
            continue
        if params and k not in params and not accepts_var_kw:
            continue  # e.g. a tokenizer's token_type_ids for a model that does not take them
        if isinstance(v, torch.Tensor):
            names.append(k)
            tensors[k] = v
        else:
            constants[k] = v
    if "use_cache" in params and "use_cache" not in constants:
        constants["use_cache"] = False  # no key/value cache objects in the graph
    if "return_dict" in params and "return_dict" not in constants:
        constants["return_dict"] = True
    if not names:
        raise ExportError("the example inputs hold no tensor; the exported graph needs at least one input")
    if input_names is not None:
        if len(input_names) != len(names):
            raise ExportError(f"input_names has {len(input_names)} names for {len(names)} inputs ({names})")
        tensors = {new: tensors[old] for new, old in zip(input_names, names)}
        names = list(input_names)
    if dynamic_axes is False:
        axes: dict[str, dict[int, str]] = {}
    elif dynamic_axes is None or dynamic_axes is True:
        axes = {n: _default_dynamic_axes(n, t) for n, t in tensors.items()}
    else:
        axes = _normalise_axes(dynamic_axes, names)
        unknown = set(axes) - set(names)
        if unknown:
            raise ExportError(f"dynamic_axes names unknown inputs {sorted(unknown)}; inputs are {names}")
    axes = {n: a for n, a in axes.items() if a}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    tensors = {n: _at_least_two(t, axes.get(n, {})).to(device) for n, t in tensors.items()}
    tensors = fit_to_position_limit(tensors, axes, position_limit(model))
    return ExportSignature(names, tensors, num_positional, constants, dynamic_axes=axes)


def resolve_outputs(model: nn.Module, signature: ExportSignature, output_names: list[str] | None = None) -> list[torch.Tensor]:
    """Run ``model`` once on the example inputs; fill the signature's outputs. Returns the output tensors."""
    sig = signature
    args = sig.args()
    with torch.no_grad():
        out = model(
            *args[: sig.num_positional],
            **dict(zip(sig.input_names[sig.num_positional :], args[sig.num_positional :])),
            **sig.constants,
        )
    found: list[tuple[str, tuple[Any, ...], torch.Tensor]] = []

    def walk(obj: Any, name: str, path: tuple[Any, ...]) -> None:
        if isinstance(obj, torch.Tensor):
            found.append((name, path, obj))
        elif isinstance(obj, Mapping):
            for k, v in obj.items():
                if k == "loss":
                    continue
                walk(v, f"{name}.{k}" if name else str(k), path + (k,))
        elif isinstance(obj, (tuple, list)):
            for i, v in enumerate(obj):
                walk(v, f"{name}.{i}" if name else f"output_{i}", path + (i,))

    walk(out, "", ())
    if not found:
        raise ExportError(f"{type(model).__name__} returned no tensor ({type(out).__name__}); nothing to export")
    if len(found) == 1 and found[0][0] == "":
        found = [("output", found[0][1], found[0][2])]
    names = [n for n, _, _ in found]
    if output_names is not None:
        if len(output_names) != len(found):
            raise ExportError(f"output_names has {len(output_names)} names for {len(found)} outputs ({names})")
        names = list(output_names)
    sig.output_names = names
    sig.output_paths = [p for _, p, _ in found]
    return [t for _, _, t in found]
