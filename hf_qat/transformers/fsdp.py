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
- **What cannot work is refused at start-up** (:func:`check_plugin`): FSDP1, CPU offload of parameters,
  16-bit mixed precision (it would cast the quantizers' scales), a class list that matches no module, or a
  wrap policy that gives a quantizer a unit of its own.

Weight quantizers are children of their layer, so they are sharded in that layer's block unit. Activation
quantizers are held by the model's ``_hf_qat`` container; before sharding, each one whose consumers all sit in
one transformer block moves into that block (:func:`place_activation_quantizers`), so it is gathered, used and
reduce-scattered with the block. The others (the pooler's, the classifier's) stay in the root unit. The gathered
checkpoint names them as always (``_hf_qat.external_quantizers.<id>``): it loads in one process unchanged.
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
    "place_activation_quantizers",
    "BLOCK_QUANTIZERS",
    "broadcast_from_main",
    "saved_state_dict",
    "wrapped_block_classes",
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
        [`DistributedError`]: FSDP1, parameter CPU offload, 16-bit parameter mixed precision, a wrap class that matches no module, or a wrap policy
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
    policy_dtype = getattr(plugin.mixed_precision_policy, "param_dtype", None)
    if policy_dtype is not None and policy_dtype != torch.float32:
        raise DistributedError(
            f"FSDP: mixed precision casts every gathered parameter to {policy_dtype} for the forward, the "
            "quantizers' scales included, so training would fake-quantize on a different grid from the float32 one "
            "that is saved and exported. Train under FSDP in float32 (mixed_precision: 'no' in the accelerate "
            "config, no --bf16/--fp16); bf16 and fp16 autocast work with one process or DDP."
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


def wrapped_block_classes(plugin: Any) -> list[str]:
    """The class names the plugin gives units of their own per block (after :func:`check_plugin`); ``[]`` for a
    size-based or no auto-wrap policy."""
    if not _uses_transformer_policy(plugin):
        return []
    return list(plugin.transformer_cls_names_to_wrap or [])


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


#: the attribute of a transformer block that holds the activation quantizers moved into it under FSDP
BLOCK_QUANTIZERS = "_hf_qat_quantizers"


def place_activation_quantizers(model: nn.Module, block_names: list[str]) -> dict[str, str]:
    """Move every activation quantizer whose consumers all sit in one block (a module of a class in
    ``block_names``) from the model's ``_hf_qat`` container into that block (``<block>._hf_qat_quantizers``),
    so that FSDP shards it in the block's unit. The quantizers stay the same objects (the hooks and layers that
    call them are untouched).

    Returns:
        `dict[str, str]`: state-dict key prefix in the moved layout -> the prefix a checkpoint stores
        (``_hf_qat.external_quantizers.<id>.``); apply it with :func:`saved_state_dict`.
    """
    from ..torch.insertion import CONTAINER_NAME
    from ..torch.tracing import parse_node_name

    container = getattr(model, CONTAINER_NAME, None)
    if container is None or not block_names:
        return {}
    blocks = {path: m for path, m in model.named_modules() if path and type(m).__name__ in block_names}
    renames: dict[str, str] = {}
    for qid in list(container.external_quantizers.keys()):
        owners = set()
        for point in qid.split(";"):
            attrs, _, _ = parse_node_name(point.rsplit("|", 1)[0])
            owners.add(_enclosing_block(".".join(attrs), blocks))
        if len(owners) != 1 or None in owners:
            continue  # used outside any block, or by two blocks: stays in the root unit
        path = owners.pop()
        holder = blocks[path]._modules.get(BLOCK_QUANTIZERS)
        if holder is None:
            holder = nn.ModuleDict()
            blocks[path].add_module(BLOCK_QUANTIZERS, holder)
        holder[qid] = container.external_quantizers[qid]
        del container.external_quantizers[qid]
        renames[f"{path}.{BLOCK_QUANTIZERS}.{qid}."] = f"{CONTAINER_NAME}.external_quantizers.{qid}."
    return renames


def _enclosing_block(path: str, blocks: dict[str, nn.Module]) -> str | None:
    candidates = [b for b in blocks if path == b or path.startswith(b + ".")]
    return max(candidates, key=len) if candidates else None


def saved_state_dict(state_dict: dict[str, torch.Tensor], renames: dict[str, str]) -> dict[str, torch.Tensor]:
    """``state_dict`` with the keys of moved quantizers back under the names a checkpoint stores."""
    if not renames:
        return state_dict
    out = {}
    for key, value in state_dict.items():
        for moved, saved in renames.items():
            if key.startswith(moved):
                key = saved + key[len(moved) :]
                break
        out[key] = value
    return out


def broadcast_from_main(model: nn.Module) -> None:
    """Every parameter and buffer of ``model`` from rank 0 to all ranks, in place: what DDP does when it wraps a
    model, and FSDP2 does not (each rank's shard would come from its own copy, so ranks that built a randomly
    initialised head differently would silently train a mixture). A collective: every rank must call it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)
