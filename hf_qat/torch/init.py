"""Calibration: feeding any data loader to a model, range initialisation and BatchNorm adaptation."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.algo_config import QuantizationSettings
from ..core.spec import QuantizerGroup
from ..core.state import QuantizerSetup
from ..core.statistics import RangeCollector, make_collector
from ..errors import CalibrationError
from .inputs import filter_kwargs
from .quantizers import BaseQuantizer

__all__ = [
    "InitializingDataLoader",
    "QuantizationRangeInitArgs",
    "BNAdaptationInitArgs",
    "register_default_init_args",
    "model_inputs_from_batch",
    "run_range_init",
    "run_bn_adaptation",
    "batch_size_of",
]

logger = logging.getLogger(__name__)


class InitializingDataLoader:
    """Wraps a data loader for calibration; subclass and override :meth:`get_inputs` for exotic batches.

    The default :meth:`get_inputs` understands, without subclassing:

    - Hugging Face dict batches (``{"input_ids": ..., "attention_mask": ..., "labels": ...}``): the
      keys the model's ``forward`` accepts become keyword arguments (``labels`` is dropped so that no
      loss is computed);
    - ``(input, target)`` tuples and lists (NNCF's convention): ``input`` is the argument (a tuple/list
      input is unpacked, a dict input becomes keyword arguments);
    - a bare tensor.
    """

    def __init__(self, data_loader: Iterable):
        self.data_loader = data_loader
        self.batch_size = getattr(data_loader, "batch_size", None)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data_loader)

    def __len__(self) -> int:
        return len(self.data_loader)  # type: ignore[arg-type]

    def get_inputs(self, dataloader_output: Any) -> tuple[tuple, dict]:
        return model_inputs_from_batch(dataloader_output)

    def get_target(self, dataloader_output: Any) -> Any:
        if isinstance(dataloader_output, (tuple, list)) and len(dataloader_output) > 1:
            return dataloader_output[1]
        if isinstance(dataloader_output, Mapping):
            return dataloader_output.get("labels")
        return None


def model_inputs_from_batch(batch: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for ``model(*args, **kwargs)`` from one batch (see :class:`InitializingDataLoader`)."""
    if isinstance(batch, Mapping):
        return (), {k: v for k, v in batch.items() if k not in ("labels", "label", "label_ids")}
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise CalibrationError("Calibration batch is an empty tuple/list; expected (input, target) or a dict.")
        first = batch[0]
        if isinstance(first, Mapping):
            return (), dict(first)
        if isinstance(first, (tuple, list)):
            return tuple(first), {}
        return (first,), {}
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    raise CalibrationError(
        f"Cannot feed a calibration batch of type {type(batch).__name__} to the model: expected a dict of "
        "tensors, an (input, target) tuple or a tensor. Wrap the loader in a subclass of "
        "hf_qat.InitializingDataLoader that overrides get_inputs(batch) -> (args, kwargs)."
    )


class QuantizationRangeInitArgs:
    """Calibration data for range initialisation (registered in an ``NNCFConfig``)."""

    def __init__(self, data_loader: Iterable, device: str | torch.device | None = None):
        self.data_loader = data_loader if isinstance(data_loader, InitializingDataLoader) else InitializingDataLoader(data_loader)
        self.device = device

    @classmethod
    def get_id(cls) -> str:
        return "quantization_range_init_args"


class BNAdaptationInitArgs(QuantizationRangeInitArgs):
    """Data for BatchNorm statistics adaptation (registered in an ``NNCFConfig``)."""

    @classmethod
    def get_id(cls) -> str:
        return "bn_adaptation_init_args"


def register_default_init_args(
    nncf_config,
    train_loader: Iterable,
    criterion: Callable | None = None,
    criterion_fn: Callable | None = None,
    train_steps_fn: Callable | None = None,
    validate_fn: Callable | None = None,
    val_loader: Iterable | None = None,
    autoq_eval_fn: Callable | None = None,
    model_eval_fn: Callable | None = None,
    distributed_callbacks: Any = None,
    execution_parameters: Any = None,
    legr_train_optimizer: Any = None,
    device: str | torch.device | None = None,
):
    """Register ``train_loader`` as calibration data for range init and BatchNorm adaptation.

    Same signature as NNCF's; the arguments for algorithms hf_qat does not implement (HAWQ/AutoQ
    precision search, LeGR pruning) are accepted for drop-in compatibility and must be left ``None``.
    Returns the same config object.

    Raises:
        `ValueError`: if an argument of an unimplemented algorithm is given.
    """
    unsupported = {
        "criterion": criterion,
        "criterion_fn": criterion_fn,
        "train_steps_fn": train_steps_fn,
        "validate_fn": validate_fn,
        "val_loader": val_loader,
        "autoq_eval_fn": autoq_eval_fn,
        "model_eval_fn": model_eval_fn,
        "legr_train_optimizer": legr_train_optimizer,
    }
    given = [k for k, v in unsupported.items() if v is not None]
    if given:
        raise ValueError(
            f"register_default_init_args: {', '.join(given)} serve mixed-precision search or pruning, which hf_qat "
            "does not implement; pass only the calibration loader (and device)."
        )
    nncf_config.register_extra_structs(
        [QuantizationRangeInitArgs(train_loader, device), BNAdaptationInitArgs(train_loader, device)]
    )
    return nncf_config


def batch_size_of(args: tuple, kwargs: dict) -> int:
    for t in list(args) + list(kwargs.values()):
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            return int(t.shape[0])
    return 1


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def call_model(model: nn.Module, loader: InitializingDataLoader, batch: Any, device: torch.device) -> int:
    """Run ``model`` on one batch; returns the batch size. Errors name the batch and the signature."""
    args, kwargs = loader.get_inputs(batch)
    kwargs = filter_kwargs(model, kwargs)
    args, kwargs = _to_device(args, device), _to_device(kwargs, device)
    try:
        model(*args, **kwargs)
    except (TypeError, ValueError, RuntimeError, IndexError) as e:
        try:
            signature = str(inspect.signature(model.forward))
        except (TypeError, ValueError):
            signature = "(unknown)"
        described = (
            f"dict with keys {sorted(batch)}"
            if isinstance(batch, Mapping)
            else f"{type(batch).__name__} of {[type(b).__name__ for b in batch]}"
            if isinstance(batch, (tuple, list))
            else type(batch).__name__
        )
        raise CalibrationError(
            f"Calibration batch ({described}) could not be fed to {type(model).__name__}.forward{signature}: "
            f"{type(e).__name__}: {e}. Make the loader yield what forward expects, or subclass "
            "hf_qat.InitializingDataLoader and override get_inputs(batch) -> (args, kwargs)."
        ) from e
    return batch_size_of(args, kwargs)


def _iterate(loader: InitializingDataLoader, num_samples: int, desc: str) -> Iterator[Any]:
    batch_size = loader.batch_size
    total = math.ceil(num_samples / batch_size) if batch_size else None
    seen = 0
    with tqdm(total=total, desc=desc, unit="batch", leave=False, disable=None) as bar:
        for batch in loader:
            yield batch
            bar.update(1)
            seen += batch_size_of(*loader.get_inputs(batch)) if not batch_size else batch_size
            if seen >= num_samples:
                return


def run_range_init(
    model: nn.Module,
    setup: QuantizerSetup,
    quantizers: dict[str, BaseQuantizer],
    settings: QuantizationSettings,
    args: QuantizationRangeInitArgs | None,
    merge_fn: Callable[[dict[str, RangeCollector]], None] | None = None,
) -> None:
    """Initialise every quantizer's range: weights from their own values, activations from data.

    Statistics are collected with every quantizer disabled (a clean FP32 view). ``merge_fn`` may
    combine the collectors across processes before ranges are computed.
    """
    collectors: dict[str, RangeCollector] = {}
    activation_ids = []
    for group in setup.groups():
        qid = setup.quantizer_id(group)
        qp = setup.points[group[0]]
        q = quantizers[qid]
        if qp.qspec.dynamic:  # scales computed per token at run time: nothing to calibrate
            continue
        names = [setup.points[i].target_node_name for i in group] + [setup.points[i].quantizer_id for i in group]
        qgroup = QuantizerGroup.WEIGHTS if qp.is_weight else QuantizerGroup.ACTIVATIONS
        r = settings.range_init_for(qgroup, names, qid)
        channels = math.prod(qp.qspec.scale_shape) if qp.qspec.per_channel else 1
        collectors[qid] = make_collector(
            r.type,
            channels,
            symmetric=qp.qspec.symmetric,
            per_tensor_activation=not qp.is_weight and not qp.qspec.per_channel,
            min_percentile=r.min_percentile,
            max_percentile=r.max_percentile,
        )
        if not qp.is_weight:
            activation_ids.append(qid)
    # Weights: statistics of the weight tensor itself.
    modules = {id(m): m for m in model.modules()}
    for m in modules.values():
        wq = getattr(m, "weight_quantizer", None)
        if isinstance(wq, BaseQuantizer) and wq._hf_qat_id in collectors:
            wq.collect_weight(m.weight, collectors[wq._hf_qat_id])
    # Activations: statistics from the calibration data.
    skip_activations = args is None or settings.num_init_samples <= 0
    if activation_ids:
        if skip_activations:
            logger.warning(
                "%s: %d activation quantizer(s) keep their default range and are marked uninitialised.",
                "No calibration data registered (hf_qat.register_default_init_args)"
                if args is None
                else "Range initialisation is disabled (num_init_samples: 0)",
                len(activation_ids),
            )
        else:
            loader = args.data_loader
            device = torch.device(args.device) if args.device is not None else model_device(model)
            all_q = list(quantizers.values())
            enabled = [q.is_enabled_quantization for q in all_q]
            for qid in activation_ids:
                quantizers[qid].start_collecting(collectors[qid])
            for q in all_q:
                q.disable_quantization()
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    n = 0
                    for batch in _iterate(loader, settings.num_init_samples, "hf_qat range init"):
                        call_model(model, loader, batch, device)
                        n += 1
                    if n == 0:
                        raise CalibrationError("The calibration loader yielded no batch.")
            finally:
                for qid in activation_ids:
                    quantizers[qid].stop_collecting()
                for q, e in zip(all_q, enabled):
                    q.enable_quantization() if e else q.disable_quantization()
                model.train(was_training)
    if merge_fn is not None:
        merge_fn(collectors)
    for qid, collector in collectors.items():
        q = quantizers[qid]
        if qid in activation_ids and skip_activations:
            continue
        if collector.num_batches == 0 or not collector.has_data:
            logger.warning("Quantizer %s saw no finite value during range init; it keeps a default range.", qid)
        q.init_from_collector(collector)


def run_bn_adaptation(model: nn.Module, settings: QuantizationSettings, args: BNAdaptationInitArgs | None) -> None:
    """Re-estimate BatchNorm running statistics on the quantized model (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or args is None or settings.num_bn_adaptation_samples <= 0:
        return
    saved = [(m, m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    device = torch.device(args.device) if args.device is not None else model_device(model)
    try:
        with torch.no_grad():
            for batch in _iterate(args.data_loader, settings.num_bn_adaptation_samples, "hf_qat BN adaptation"):
                call_model(model, args.data_loader, batch, device)
    finally:
        for m, momentum, training in saved:
            m.momentum = momentum
            m.train(training)
        model.train(was_training)
