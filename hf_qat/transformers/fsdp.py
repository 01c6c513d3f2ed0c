"""FSDP for QAT: accelerate's FSDP2 plugin on GPUs and on CPU processes, checked before anything is sharded.

hf_qat trains under accelerate's ``FullyShardedDataParallelPlugin`` with ``fsdp_version: 2`` (torch's
``fully_shard``): every parameter, quantizer scales included, becomes a ``DTensor`` sharded along its first
dimension, gathered for the forward and backward of its unit and reduce-scattered after. The model is
compressed and calibrated *before* sharding (ranges merged across ranks, as with DDP), so every rank shards
identical quantizers.

What this module adds to accelerate:

- **CPU processes.** accelerate 1.15 turns its FSDP plugin on only for GPU-type process groups; on CPU
  processes (``use_cpu``, gloo) it drops the plugin without a word and trains with DDP. ``fully_shard`` works on
  gloo in torch 2.13, so hf_qat switches the plugin back on (:func:`enable_fsdp_on_cpu`).
- **One unit per transformer block.** The transformer-layer wrap policy, given no class list, takes the
  model's ``_no_split_modules``, which for BERT also names ``BertEmbeddings``; accelerate then shards the word
  embeddings a second time and fails inside torch. hf_qat keeps only the classes that do not hold the input or
  output embeddings (:func:`block_classes`).
- **What cannot work is refused at start-up** (:func:`check_plugin`): FSDP1, CPU offload of parameters, a
  class list that matches no module, or a unit boundary inside a quantized layer.

Weight quantizers are children of their layer, so they are sharded in that layer's block unit. Activation
quantizers are held by the model's ``_hf_qat`` container: they are in the root unit, gathered once at the start
of each forward (a few scalars per quantizer) and reduce-scattered with the root's gradients.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..errors import DistributedError

__all__ = [
    "fsdp_requested",
    "enable_fsdp_on_cpu",
    "block_classes",
    "check_plugin",
    "is_fsdp_model",
    "gather_full_state_dict",
    "original_class",
]


def fsdp_requested(args: Any) -> bool:
    """Whether the launch asked for FSDP: ``accelerate launch --use_fsdp`` / an FSDP accelerate config (the
    ``ACCELERATE_USE_FSDP`` variable) or the ``--fsdp`` training argument."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or getattr(args, "fsdp_plugin_args", None) is not None


def enable_fsdp_on_cpu(accelerator: Any, args: Any) -> bool:
    """Turn accelerate's FSDP plugin on for CPU processes, where accelerate drops it; ``True`` when switched on.

    Only acts when FSDP was requested and accelerate made the processes a plain multi-CPU (DDP) group.
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if not fsdp_requested(args) or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin_args = getattr(args, "fsdp_plugin_args", None)
    plugin = FullyShardedDataParallelPlugin(**plugin_args) if plugin_args else FullyShardedDataParallelPlugin()
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    return True


def _uses_transformer_policy(plugin: Any) -> bool:
    import functools

    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    fn = plugin.auto_wrap_policy
    fn = fn.func if isinstance(fn, functools.partial) else fn
    return fn is transformer_auto_wrap_policy


def block_classes(model: nn.Module) -> list[str]:
    """The model's transformer block classes: ``_no_split_modules`` less those holding its input or output
    embeddings (which accelerate shards in units of their own)."""
    names = sorted(getattr(model, "_no_split_modules", None) or [])
    embeddings = [
        e.weight
        for e in (getattr(model, "get_input_embeddings", lambda: None)(), getattr(model, "get_output_embeddings", lambda: None)())
        if e is not None and getattr(e, "weight", None) is not None
    ]
    keep = []
    for name in names:
        modules = [m for m in model.modules() if type(m).__name__ == name]
        if modules and any(any(p is w for p in m.parameters() for w in embeddings) for m in modules):
            continue
        keep.append(name)
    return keep


def check_plugin(plugin: Any, model: nn.Module) -> None:
    """Refuse, before anything is sharded, an FSDP set-up QAT cannot train correctly; fill in the block classes.

    Raises:
        [`DistributedError`]: FSDP1, parameter CPU offload, a wrap class that matches no module, or a wrap policy
            that gives a quantizer a unit of its own (which would separate it from its layer).
    """
    from torch.distributed.fsdp import CPUOffloadPolicy

    from ..torch.quantizers import BaseQuantizer

    if getattr(plugin, "fsdp_version", 1) != 2:
        raise DistributedError(
            f"FSDP: fsdp_version is {getattr(plugin, 'fsdp_version', 1)}; hf_qat trains under FSDP2 (torch's "
            "fully_shard) only. Set `fsdp_version: 2` in the accelerate config (as scripts/accelerate/fsdp.yaml does) "
            "or pass --fsdp_config '{\"fsdp_version\": 2}'."
        )
    if isinstance(plugin.cpu_offload, CPUOffloadPolicy):
        raise DistributedError(
            "FSDP: fsdp_offload_params is true; hf_qat refuses parameter CPU offload because QAT with it has not "
            "been verified (it needs GPUs to test: the quantizers' range parameters would be stepped on the CPU "
            "copy). Set fsdp_offload_params: false; processes that train on the CPU need no offload."
        )
    if _uses_transformer_policy(plugin):
        _fill_block_classes(plugin, model)
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    if policy is not None:
        alone = [n for n, m in model.named_modules() if isinstance(m, BaseQuantizer) and policy(m)]
        if alone:
            raise DistributedError(
                f"FSDP: the wrap policy would give {len(alone)} quantizer(s) a unit of their own (first: {alone[0]}), "
                "separating them from the layer that uses them. Raise fsdp_min_num_params, or wrap per transformer "
                "block (fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP)."
            )


def _fill_block_classes(plugin: Any, model: nn.Module) -> None:
    names = plugin.transformer_cls_names_to_wrap
    if not names:
        names = block_classes(model)
        if not names:
            raise DistributedError(
                f"FSDP: the transformer-layer wrap needs the class of {type(model).__name__}'s transformer block, and "
                "the model names none in _no_split_modules. Set fsdp_transformer_layer_cls_to_wrap in the accelerate "
                "config."
            )
        plugin.transformer_cls_names_to_wrap = names
    present = {type(m).__name__ for m in model.modules()}
    for name in names:
        if name not in present:
            raise DistributedError(
                f"FSDP: fsdp_transformer_layer_cls_to_wrap names {name!r}, which is no module class of "
                f"{type(model).__name__}; expected its transformer block ({', '.join(block_classes(model)) or 'none named'})."
            )


def is_fsdp_model(model: nn.Module) -> bool:
    """Whether ``model`` has been sharded with FSDP2's ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def original_class(model: nn.Module) -> type:
    """The model's own class (``fully_shard`` swaps it for ``FSDP<Class>``)."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    if not issubclass(cls, FSDPModule):
        return cls
    return next(c for c in cls.__mro__[1:] if not issubclass(c, FSDPModule) and issubclass(c, nn.Module))


def gather_full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of an FSDP2 model, on the CPU of the main process (``{}`` elsewhere).

    A collective: every rank must call it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
