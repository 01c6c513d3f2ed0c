"""``create_compressed_model``: config -> trace -> quantizer setup -> quantizers -> range init."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.algo_config import QuantizationSettings
from ..core.config import NNCFConfig
from ..core.mismatch import unquantized_repeats
from ..core.pipeline import compress
from ..core.state import QuantizerSetup
from ..errors import CalibrationError, CompressionStateError, ConfigError
from .controller import QuantizationController
from .distributed import is_distributed, merge_collectors_across_ranks
from .init import (
    BNAdaptationInitArgs,
    QuantizationRangeInitArgs,
    call_model,
    model_device,
    run_bn_adaptation,
    run_range_init,
)
from .inputs import example_forward_from_input_info
from .insertion import CONTAINER_NAME, apply_setup, build_quantizer_setup
from .layers import layer_kind, unwrap_module
from .op_hooks import MATMUL_OPS, SDPA_OP
from .tracing import GraphTrace, parse_node_name, relative_op, trace_model

__all__ = ["TorchBackend", "create_compressed_model", "is_compressed"]

logger = logging.getLogger(__name__)


def is_compressed(model: nn.Module) -> bool:
    return hasattr(model, CONTAINER_NAME)


def _switch_to_eager_attention(model: nn.Module) -> str | None:
    """Transformers models: use eager attention so that ``Q @ K^T`` and ``P @ V`` are visible ops.

    Returns the previous implementation (to restore on failure), or ``None`` if nothing changed.
    """
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current is None or current == "eager":
        return None
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:  # pragma: no cover - older transformers
        config._attn_implementation = "eager"
    logger.info("hf_qat: switched attention from %r to 'eager' so that attention products can be quantized.", current)
    return current


@contextlib.contextmanager
def switched_to_eager_attention(model: nn.Module) -> Iterator[None]:
    """Eager attention while the block runs (tracing a model as compression will see it); restored after."""
    previous = _switch_to_eager_attention(model)
    try:
        yield
    finally:
        if previous is not None:
            _restore_attention(model, previous)


def _restore_attention(model: nn.Module, previous_attn: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(previous_attn)
    else:  # pragma: no cover
        model.config._attn_implementation = previous_attn


def remove_compression(ctrl: QuantizationController, attn_implementation: str | None = None) -> nn.Module:
    """Undo ``create_compressed_model`` on ``ctrl``'s model in place (quantizers and hooks removed, weights kept
    as they are, the attention implementation set back to ``attn_implementation`` when given): for a restore
    that failed after compression."""
    ctrl._hooks.remove()
    current = getattr(getattr(ctrl.model, "config", None), "_attn_implementation", None)
    _undo(ctrl.model, attn_implementation if attn_implementation not in (None, current) else None)
    return ctrl.model


def _undo(model: nn.Module, previous_attn: str | None) -> None:
    for m in model.modules():
        unwrap_module(m)
    if hasattr(model, CONTAINER_NAME):
        delattr(model, CONTAINER_NAME)
    if previous_attn is not None:
        _restore_attention(model, previous_attn)


def create_compressed_model(
    model: nn.Module,
    config: NNCFConfig | dict,
    compression_state: dict[str, Any] | None = None,
    dummy_forward_fn: Callable[[nn.Module], Any] | None = None,
    wrap_inputs_fn: Callable | None = None,
    wrap_outputs_fn: Callable | None = None,
    dump_graphs: bool = False,
) -> tuple[QuantizationController, nn.Module]:
    """Insert trainable fake quantizers into ``model`` (in place) as the config says.

    The model keeps its class, forward signature and methods (``save_pretrained``, ``generate`` ...).
    Without ``compression_state`` the model is traced once, quantization points are chosen, and
    ranges are initialised from the calibration data registered with
    [`register_default_init_args`]. With ``compression_state`` (from ``ctrl.get_compression_state()``)
    the same quantizers are recreated without range init; load the checkpoint's ``state_dict``
    afterwards to get identical outputs.

    Args:
        model (`torch.nn.Module`): the FP32 model, e.g. a transformers ``PreTrainedModel``.
        config (`NNCFConfig` or `dict`): NNCF config with a ``quantization`` section.
        compression_state (`dict`, *optional*): state saved from a controller.
        dummy_forward_fn (`Callable[[nn.Module], Any]`, *optional*): runs the model on example inputs for tracing;
            by default the first calibration batch or ``input_info`` is used.
        wrap_inputs_fn, wrap_outputs_fn: accepted for NNCF compatibility; not needed (hf_qat tracks every input).
        dump_graphs (`bool`): accepted for NNCF compatibility; hf_qat does not write graph files.

    Returns:
        `(QuantizationController, torch.nn.Module)`: the controller and the same model object, compressed.

    Raises:
        [`ConfigError`]: invalid config (nothing modified).
        [`ScopeError`] / [`NothingToQuantizeError`]: scopes that match nothing, nothing to quantize (nothing modified).
        [`CalibrationError`]: calibration batches that cannot be fed to the model.
        [`CompressionStateError`]: a compression state that does not fit the model (nothing modified).
    """
    return compress(model, config, compression_state, TorchBackend(dummy_forward_fn))


@dataclass
class TorchBackend:
    """The PyTorch hooks of :func:`hf_qat.core.pipeline.compress` (see [`CompressionBackend`]).

    Args:
        dummy_forward_fn: runs the model for tracing (default: the first calibration batch or ``input_info``).
    """

    dummy_forward_fn: Callable[[nn.Module], Any] | None = None
    _previous_attn: str | None = field(default=None, init=False)
    _restoring: bool = field(default=False, init=False)

    def check_model(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"create_compressed_model takes a torch.nn.Module, got {type(model).__name__}")
        if is_compressed(model):
            raise ValueError("The model is already compressed by hf_qat; pass the original (FP32) model.")

    def check_state(self, model: nn.Module, setup: QuantizerSetup) -> None:
        check_setup_layer_count(model, setup)
        self._restoring = True

    def prepare(self, model: nn.Module, config: NNCFConfig) -> None:
        self._previous_attn = _switch_to_eager_attention(model)

    def build_setup(self, model: nn.Module, config: NNCFConfig, settings: QuantizationSettings) -> QuantizerSetup:
        forward = _example_forward(model, config, _extra(config, QuantizationRangeInitArgs), self.dummy_forward_fn)
        trace = trace_model(model, forward)
        names = trace.node_names
        if settings.validate_scopes:
            padded = padded_trace(model, forward)
            names = names + (padded.node_names if padded is not None else [])
        return drop_empty_weight_points(model, build_quantizer_setup(model, trace, settings, names))

    def insert(
        self, model: nn.Module, setup: QuantizerSetup, settings: QuantizationSettings, config: NNCFConfig
    ) -> QuantizationController:
        if self._restoring and needs_trace_check(model, setup):
            forward = _example_forward(model, config, _extra(config, QuantizationRangeInitArgs), self.dummy_forward_fn)
            traces = [trace_model(model, forward), padded_trace(model, forward)]
            check_points_traced(model, setup, *[t for t in traces if t is not None])
        quantizers, hooks = apply_setup(model, setup)
        return QuantizationController(model, setup, quantizers, hooks, settings, config)

    def restore(self, ctrl: QuantizationController, ctrl_state: dict[str, Any]) -> None:
        ctrl.load_state(ctrl_state)

    def init_ranges(
        self, model: nn.Module, ctrl: QuantizationController, config: NNCFConfig, settings: QuantizationSettings
    ) -> None:
        # several ranks: each calibrates on its own data, the statistics are merged across ranks
        merge = merge_collectors_across_ranks if is_distributed() else None
        run_range_init(model, ctrl.setup, ctrl.quantizers, settings, _extra(config, QuantizationRangeInitArgs), merge_fn=merge)
        run_bn_adaptation(model, settings, _extra(config, BNAdaptationInitArgs))

    def undo(self, model: nn.Module) -> None:
        _undo(model, self._previous_attn)


def _extra(config: NNCFConfig, cls: type) -> Any:
    """The ``register_default_init_args`` structure of type ``cls`` in ``config``, or ``None``."""
    return config.get_extra_struct(cls) if config.has_extra_struct(cls) else None


def drop_empty_weight_points(model: nn.Module, setup: QuantizerSetup) -> QuantizerSetup:
    """Remove weight quantization points of layers whose weight has no elements (``nn.Linear(8, 0)``):
    there is nothing to quantize and no range to learn. Their input activations stay quantized."""
    empty = []
    for qp_id, qp in setup.points.items():
        if qp.is_weight:
            path = ".".join(parse_node_name(qp.target_node_name)[0])
            weight = getattr(model.get_submodule(path) if path else model, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.numel() == 0:
                empty.append(qp_id)
    if not empty:
        return setup
    logger.info(
        "hf_qat: not quantizing %d zero-size weight(s): %s", len(empty), [setup.points[i].target_node_name for i in empty]
    )
    points = {i: qp for i, qp in setup.points.items() if i not in empty}
    groups = [[i for i in g if i not in empty] for g in setup.unified_scale_groups]
    return QuantizerSetup(points, [g for g in groups if len(g) > 1], setup.aq_potential_num, setup.wq_potential_num)


def check_setup_layer_count(model: nn.Module, setup: QuantizerSetup) -> None:
    """Refuse a compression state made for a model with fewer repeated blocks than ``model``.

    Point names that the model lacks are reported by ``apply_setup``; this catches the opposite case,
    where every point resolves but the model has more layers of the same kinds than the state's model
    reached (``wq_potential_num``), which would leave the extra blocks silently unquantized.

    Raises:
        [`CompressionStateError`]: listing the first layers that would stay unquantized (nothing modified).
    """
    quantized = []
    for qp in setup.points.values():
        if qp.is_weight:
            try:
                quantized.append(".".join(parse_node_name(qp.target_node_name)[0]))
            except ValueError:
                continue  # reported with the other unresolvable names by apply_setup
    layers = [name for name, m in model.named_modules() if layer_kind(m) is not None]
    extra = unquantized_repeats(quantized, layers, setup.wq_potential_num)
    if extra:
        shown = ", ".join(extra[:5]) + (f", ... ({len(extra) - 5} more)" if len(extra) > 5 else "")
        raise CompressionStateError(
            f"The compression state does not fit the model: it was built on a model with "
            f"{setup.wq_potential_num} quantizable layers (build_time_metric_infos.wq_potential_num), but this model "
            f"has {len(extra)} more layers in the same positions of repeated blocks, which would stay unquantized: "
            f"{shown}. The state was made for a smaller variant of this architecture (fewer layers); use the model "
            "it was saved with, or compress this model anew without compression_state. Nothing was modified."
        )


def padded_trace(model: nn.Module, forward: Callable[[nn.Module], Any]) -> GraphTrace | None:
    """A second trace in which the example's attention mask (all ones) has one padded position.

    transformers 5 adds the attention mask only when a batch has padding, so the operations a scope may name
    (``{re}BertSelfAttention\\[self\\]/__add___0`` in NNCF's XNLI config) would depend on what the calibration
    batches happen to contain; scopes and restored states are checked against both traces. ``None`` when the
    example has no such mask.
    """
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        params = []
    changed = []

    def pad(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        where = "kw"
        if mask is None and "attention_mask" in params:
            i = params.index("attention_mask")
            mask, where = (args[i], i) if i < len(args) else (None, None)
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[1] < 2 or not bool((mask == 1).all()):
            return None
        padded = mask.clone()
        padded[:, -1] = 0
        changed.append(True)
        if where == "kw":
            return args, {**kwargs, "attention_mask": padded}
        return (*args[:where], padded, *args[where + 1 :]), kwargs

    handle = model.register_forward_pre_hook(pad, with_kwargs=True)
    try:
        trace = trace_model(model, forward)
    except Exception:  # a model that cannot run padded: only the first trace counts
        return None
    finally:
        handle.remove()
    return trace if changed else None


def needs_trace_check(model: nn.Module, setup: QuantizerSetup) -> bool:
    """Whether ``setup`` has points beyond hf_qat's own placement (quantized layers and activation
    products), as states NNCF 2.x wrote do: those name arbitrary operations by call count, and a name the
    model's trace lacks would leave a quantizer that never runs, so they are checked against a trace."""
    for qp in setup.points.values():
        if qp.is_weight:
            continue
        if qp.is_output:
            return True
        try:
            attrs, op, _ = parse_node_name(qp.target_node_name)
            module = model.get_submodule(".".join(attrs))
        except (ValueError, AttributeError):
            continue  # reported by apply_setup
        kind = layer_kind(module)
        if op not in MATMUL_OPS and op != SDPA_OP and not (kind is not None and op == kind.op_name):
            return True
    return False


def check_points_traced(model: nn.Module, setup: QuantizerSetup, *traces: GraphTrace) -> None:
    """Refuse a setup whose activation points name operations the model's trace does not have.

    Names are compared by module path, operation and call index, so NNCF's wrapper class names
    (``NNCFLayerNorm[LayerNorm]``) and classes transformers renamed (DistilBERT's ``MultiHeadSelfAttention``
    is ``DistilBertSelfAttention`` in transformers 5) match; operations that exist in another
    transformers version only (NNCF 2.x traced transformers 4: ``__iadd__``, ``__truediv__``) do not, and are
    listed. ``traces`` are the example's trace and its padded variant (see [`padded_trace`]).

    Raises:
        [`CompressionStateError`]: naming the missing operations and, for each, what the model's module
            runs instead (nothing modified).
    """
    names = {name for name, _ in model.named_modules()}
    paths = set()
    for qp in setup.points.values():
        try:
            paths.add(".".join(parse_node_name(qp.target_node_name)[0]))
        except ValueError:
            continue  # reported by apply_setup
    absent = sorted(paths - names)
    if absent:
        top = sorted({a.split(".")[0] for a in absent if a.split(".")[0] not in names})
        shown = ", ".join(repr(a) for a in (top or absent)[:5])
        raise CompressionStateError(
            f"The compression state was made for another architecture: {type(model).__name__} has no module {shown} "
            f"({len(absent)} module path(s) the state quantizes are missing). Nothing was modified; restore it into the "
            "model it was saved from."
        )
    traced: dict[str, dict[str, int]] = {}
    for trace in traces:
        for node in trace.nodes:
            ops = traced.setdefault(node.module_path, {})
            op = relative_op(node, trace)
            ops[op] = max(ops.get(op, 0), node.index + 1)
    missing = []
    for qp in setup.points.values():
        try:
            attrs, op, idx = parse_node_name(qp.target_node_name)
        except ValueError:
            continue  # reported by apply_setup
        path = ".".join(attrs)
        if path in traced and traced[path].get(op, 0) > idx:
            continue
        ops = traced.get(path, {})
        runs = ", ".join(f"{o}_0..{n - 1}" if n > 1 else f"{o}_0" for o, n in sorted(ops.items())[:12]) or "nothing traced"
        missing.append(f"{qp.quantizer_id} (module {path or '<root>'!r} runs: {runs})")
    if missing:
        shown = "\n  - ".join(missing[:10]) + (f"\n  ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        raise CompressionStateError(
            f"The compression state names {len(missing)} operation(s) that this model does not run:\n  - {shown}\n"
            "The state was traced from another model or another transformers version (NNCF 2.x under transformers 4 "
            "names operations such as __iadd__ and __truediv__ that transformers 5 no longer runs). Nothing was "
            "modified; re-create the state with the transformers version installed here."
        )


def _example_forward(
    model: nn.Module,
    config: NNCFConfig,
    range_args: QuantizationRangeInitArgs | None,
    dummy_forward_fn: Callable[[nn.Module], Any] | None,
) -> Callable[[nn.Module], Any]:
    if dummy_forward_fn is not None:
        return dummy_forward_fn
    device = model_device(model)
    if range_args is not None:
        loader = range_args.data_loader
        try:
            batch = next(iter(loader))
        except StopIteration:
            raise CalibrationError("The calibration loader registered with register_default_init_args is empty.") from None
        dev = torch.device(range_args.device) if range_args.device is not None else device
        return lambda m: call_model(m, loader, batch, dev)
    if "input_info" in config:
        return example_forward_from_input_info(config["input_info"], device)
    raise ConfigError(
        "$.input_info",
        None,
        "an input description when no calibration data is registered",
        detail="Register calibration data with hf_qat.register_default_init_args(config, loader), add "
        "'input_info' to the config, or pass dummy_forward_fn.",
    )
