"""``load_state``: load a (possibly NNCF-named, possibly DDP-prefixed) state dict into a compressed model;
``load_checkpoint``: read a checkpoint file, NNCF 2.x ``.pth`` files included.

Files are read without running code from them: ``.safetensors`` with safetensors, pickled formats
(``.bin``, ``.pt``, ``.pth``, ``.ckpt``) only with ``torch.load(weights_only=True)``, which builds
tensors and plain containers and refuses every other object a pickle names. NNCF 2.x checkpoints
(``torch.save({"state_dict": ..., "compression_state": ctrl.get_compression_state()})``) name two NNCF
enums; they are built as hf_qat's own stand-ins (:class:`NNCFQuantizationScheme`,
:class:`NNCFCompressionStage`) and turned into their plain values, so NNCF is never imported and the
compression state reads exactly like its JSON form.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from safetensors.torch import load_file as safetensors_load_file
from torch import nn

from ..core.layout import COMPRESSION_STATE_NAME, read_json_file
from ..core.mismatch import compare_named_shapes
from ..errors import CompressionStateError

__all__ = [
    "NNCFCompressionStage",
    "NNCFQuantizationScheme",
    "load_checkpoint",
    "load_state",
    "load_state_dict_file",
    "normalize_state_dict_keys",
    "nncf_checkpoint_from_folder",
    "to_nncf_state_dict",
]

logger = logging.getLogger(__name__)

_KEY_RENAMES = [
    (re.compile(r"^module\."), ""),  # DDP / DataParallel
    (re.compile(r"(^|\.)nncf_module\."), r"\1"),  # NNCF 2.0-2.4 wrapper
    (re.compile(r"^_nncf\.external_quantizers\."), "_hf_qat.external_quantizers."),
    (re.compile(r"^external_quantizers\."), "_hf_qat.external_quantizers."),
    (re.compile(r"\.pre_ops\.0\.op\."), ".weight_quantizer."),
    (re.compile(r"\._scale_param_storage$"), ".scale"),
    (re.compile(r"\._input_range_param_storage$"), ".input_range"),
]
#: Keys that may be missing without harm (NNCF marks them optional too).
_OPTIONAL_SUFFIXES = ("._num_bits", ".enabled")


_EXTERNAL = "_hf_qat.external_quantizers."
_NNCF_EXTERNAL = "_nncf.external_quantizers."


def normalize_state_dict_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map DDP prefixes and NNCF legacy key names onto hf_qat's."""
    out = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in _KEY_RENAMES:
            new = pattern.sub(repl, new)
        out[new] = value
    return out


def _split_external(key: str, prefix: str) -> tuple[str, str] | None:
    """``(quantizer id, parameter)`` of an external-quantizer key, or ``None`` for other keys."""
    if not key.startswith(prefix):
        return None
    qid, _, param = key[len(prefix) :].rpartition(".")
    return qid, param


def canonical_quantizer_id(qid: str) -> str:
    """A shared quantizer's id as NNCF 2.x writes it: its point ids sorted, joined by ``;``.

    hf_qat joins a unified scale group's point ids in the group's order; NNCF sorts them. Both name
    the same quantizer, so ids are compared (and written for NNCF) in this form.
    """
    return ";".join(sorted(qid.split(";")))


def to_nncf_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An hf_qat state dict under NNCF 2.x's key names, for ``nncf.torch.load_state(model, sd, is_resume=True)``.

    ``<layer>.weight_quantizer.<p>`` becomes ``<layer>.pre_ops.0.op.<p>`` (NNCF keeps a layer's weight
    quantizer as its first pre-op) and ``_hf_qat.external_quantizers.<id>.<p>`` becomes
    ``_nncf.external_quantizers.<id>.<p>`` with a shared quantizer's id in NNCF's sorted form; ``module.``
    (DDP) prefixes are dropped. Values are the same tensors. The result, with
    ``ctrl.get_compression_state()``, is a checkpoint NNCF 2.19 restores with
    ``create_compressed_model(model, config, compression_state=...)`` and ``load_state(..., is_resume=True)``.
    """
    out = {}
    for key, value in normalize_state_dict_keys(dict(state_dict)).items():
        parts = _split_external(key, _EXTERNAL)
        if parts is not None:
            key = f"{_NNCF_EXTERNAL}{canonical_quantizer_id(parts[0])}.{parts[1]}"
        else:
            key = key.replace(".weight_quantizer.", ".pre_ops.0.op.")
        out[key] = value
    return out


def nncf_checkpoint_from_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint NNCF 2.x restores, from a folder QATTrainer or ``save_qat_model`` wrote.

    Reads the weights (``model.safetensors``, or the shards an ``model.safetensors.index.json`` lists) and
    ``compression_state.json``, and returns ``{"state_dict": <NNCF key names>, "compression_state": ...}``,
    ready for ``torch.save(..., "ckpt.pth")`` and NNCF's ``create_compressed_model(model, config,
    compression_state=...)`` + ``load_state(model, state_dict, is_resume=True)``.

    Raises:
        [`CompressionStateError`]: the folder lacks the weights or the compression state.
    """
    folder = os.fspath(folder)
    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(single):
        state_dict = safetensors_load_file(single, device="cpu")
    elif os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f).get("weight_map", {}).values()))
        state_dict = {}
        for shard in shards:
            state_dict.update(safetensors_load_file(os.path.join(folder, shard), device="cpu"))
    else:
        raise CompressionStateError(f"{folder} has no model.safetensors (or sharded index); is it a QATTrainer output folder?")
    state_path = os.path.join(folder, COMPRESSION_STATE_NAME)
    if not os.path.isfile(state_path):
        raise CompressionStateError(f"{folder} has no {COMPRESSION_STATE_NAME}; is it a QATTrainer output folder?")
    return {"state_dict": to_nncf_state_dict(state_dict), "compression_state": read_json_file(state_path, COMPRESSION_STATE_NAME)}


NNCF3_STATE_PREFIX = "__nncf_hooks."


def rename_nncf3_keys(state_dict: Mapping[str, torch.Tensor], prefixes: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """NNCF 3 keys (``__nncf_hooks.<hook>.<p>``) renamed to ``prefixes[hook] + p`` (a quantizer shared by several
    hooks appears once); other keys kept.

    Raises:
        [`CompressionStateError`]: a hook tensor whose hook ``prefixes`` does not name.
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if not key.startswith(NNCF3_STATE_PREFIX):
            out[key] = value
            continue
        hook, _, param = key[len(NNCF3_STATE_PREFIX) :].rpartition(".")
        if hook not in prefixes:
            unknown.append(key)
        else:
            out.setdefault(prefixes[hook] + param, value)
    if unknown:
        raise CompressionStateError(
            f"The state dict has {len(unknown)} NNCF 3 hook tensor(s) the NNCF 3 config did not name (first: "
            f"{unknown[:3]}); were they saved from the same model? Nothing was loaded."
        )
    return out


def from_nncf3_keys(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` with NNCF 3 keys renamed by the hook map ``load_nncf3`` left on ``model``."""
    if not any(k.startswith(NNCF3_STATE_PREFIX) for k in state_dict):
        return state_dict
    prefixes = getattr(getattr(model, "_hf_qat", None), "nncf3_hook_prefixes", None)
    if prefixes is None:
        raise CompressionStateError(
            f"The state dict is NNCF 3's ('{NNCF3_STATE_PREFIX}' keys): restore the model with "
            "hf_qat.load_nncf3(model, nncf3_config, state_dict), which maps NNCF 3's hook names to hf_qat's."
        )
    return rename_nncf3_keys(state_dict, prefixes)


def _match_shared_ids(incoming: dict[str, torch.Tensor], own: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename external-quantizer keys whose id names the model's quantizer in another point order."""
    by_canonical = {}
    for key in own:
        parts = _split_external(key, _EXTERNAL)
        if parts is not None:
            by_canonical[(canonical_quantizer_id(parts[0]), parts[1])] = key
    out = {}
    for key, value in incoming.items():
        parts = _split_external(key, _EXTERNAL)
        if parts is not None and key not in own:
            key = by_canonical.get((canonical_quantizer_id(parts[0]), parts[1]), key)
        out[key] = value
    return out


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class NNCFQuantizationScheme(str, enum.Enum):
    """Stand-in for ``nncf.common.quantization.structs.QuantizationScheme`` while reading NNCF pickles."""

    SYMMETRIC = "symmetric"
    ASYMMETRIC = "asymmetric"


class NNCFCompressionStage(enum.IntEnum):
    """Stand-in for ``nncf.api.compression.CompressionStage`` while reading NNCF pickles."""

    UNCOMPRESSED = 0
    PARTIALLY_COMPRESSED = 1
    FULLY_COMPRESSED = 2


#: The only non-tensor classes a checkpoint may name: NNCF's enums, built as the stand-ins above.
_ALLOWED_GLOBALS = [
    (NNCFQuantizationScheme, "nncf.common.quantization.structs.QuantizationScheme"),
    (NNCFCompressionStage, "nncf.api.compression.CompressionStage"),
]


def _plain(value: Any) -> Any:
    """``value`` in the JSON form of a compression state: the stand-in enums replaced by their values, tuples
    (NNCF pickles shapes as tuples) by lists, integer keys (quantization point ids) by strings."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {(k if isinstance(k, str) else str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _load_pickle(path: str) -> Any:
    try:
        with torch.serialization.safe_globals(_ALLOWED_GLOBALS):
            return _plain(torch.load(path, map_location="cpu", weights_only=True))
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, KeyError) as e:
        named = re.search(r"GLOBAL ([\w.]+)", str(e))
        reason = (
            f"it names {named.group(1)}" if named else (str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        )
        raise CompressionStateError(
            f"Refused to load {path}: torch.load(weights_only=True) cannot read it ({reason}). hf_qat never "
            "unpickles arbitrary objects, since a pickle can run any code when loaded (tensors, plain containers and "
            "NNCF's two enums are read). If the file is yours and trusted, convert it to safetensors; otherwise delete it."
        ) from e


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file as a dict, without running code from it.

    For NNCF 2.x ``.pth`` files (and hf_qat's own ``torch.save``'d checkpoints) this is
    ``{"state_dict": ..., "compression_state": ...}``, the compression state in its JSON form (NNCF's enums
    as plain strings and integers), ready for ``create_compressed_model(..., compression_state=...)`` and
    :func:`load_state`. ``.safetensors`` files give ``{"state_dict": ...}``.

    Raises:
        [`CompressionStateError`]: a missing file, an unknown extension, or a pickle naming anything beyond
            tensors, plain types and NNCF's ``QuantizationScheme``/``CompressionStage`` (nothing in it is run).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CompressionStateError(f"load_checkpoint: {path} does not exist")
    if path.endswith(".safetensors"):
        return {"state_dict": load_state_dict_file(path)}
    if not path.endswith(_PICKLE_SUFFIXES):
        raise CompressionStateError(
            f"load_checkpoint: {path} has an unknown extension; expected .safetensors or one of {_PICKLE_SUFFIXES}"
        )
    data = _load_pickle(path)
    if not isinstance(data, dict):
        raise CompressionStateError(f"load_checkpoint: {path} holds a {type(data).__name__}, not a checkpoint dict")
    return data


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` without executing anything stored in it.

    ``.safetensors`` files are read with safetensors; ``.bin``/``.pt``/``.pth``/``.ckpt`` with
    ``torch.load(weights_only=True)``. A checkpoint dict with a ``"state_dict"`` entry (NNCF's
    ``{"state_dict": ..., "compression_state": ...}``) yields that entry.

    Raises:
        [`CompressionStateError`]: the file is missing, of another format, not a mapping of names to
            tensors, or a pickle naming objects ``weights_only`` refuses (the message says which).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CompressionStateError(f"load_state: {path} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            data = load_file(path, device="cpu")
        except Exception as e:  # SafetensorError is not importable by a stable name
            raise CompressionStateError(f"load_state: {path} is not a valid safetensors file ({e})") from e
    elif path.endswith(_PICKLE_SUFFIXES):
        data = _load_pickle(path)
    else:
        raise CompressionStateError(
            f"load_state: {path} has an unknown extension; expected .safetensors or one of {_PICKLE_SUFFIXES}"
        )
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise CompressionStateError(f"load_state: {path} does not hold a state dict (a mapping of names to tensors)")
    return dict(data)


def load_state(
    model: nn.Module,
    state_dict_to_load: Mapping[str, torch.Tensor] | str | os.PathLike,
    is_resume: bool = False,
    keys_to_ignore: Iterable[str] | None = None,
) -> int:
    """Load ``state_dict_to_load`` (a state dict, or the path of one: see `load_state_dict_file`) into
    ``model``; returns the number of tensors loaded.

    Accepts ``module.``-prefixed (DDP) keys and NNCF's legacy names (``pre_ops.0.op``,
    ``_nncf.external_quantizers``, ``nncf_module.``). With ``is_resume=True`` every key must match
    in name and shape, otherwise nothing is loaded and an error lists the first mismatches; without
    it, matching keys are loaded and the rest reported as a warning.

    Raises:
        [`CompressionStateError`]: on mismatches when ``is_resume`` is true; an unreadable or refused file.
    """
    if isinstance(state_dict_to_load, (str, os.PathLike)):
        state_dict_to_load = load_state_dict_file(state_dict_to_load)
    ignore = set(keys_to_ignore or ())
    state_dict_to_load = from_nncf3_keys(model, dict(state_dict_to_load))
    incoming = {k: v for k, v in normalize_state_dict_keys(state_dict_to_load).items() if k not in ignore}
    own = model.state_dict()
    incoming = _match_shared_ids(incoming, own)
    report = compare_named_shapes(
        {k: tuple(v.shape) for k, v in incoming.items()},
        {k: tuple(v.shape) for k, v in own.items() if k not in ignore},
        optional=lambda k: k.endswith(_OPTIONAL_SUFFIXES),
    )
    if report and is_resume:
        raise CompressionStateError(
            f"The state dict does not fit the compressed model: {report.describe()}. Nothing was loaded. "
            "Was the model compressed with the checkpoint's compression_state?"
        )
    bad = {name for name, _, _ in report.shapes} | set(report.unexpected)
    to_load = {k: v for k, v in incoming.items() if k not in bad}
    if report:
        logger.warning("load_state: %s; loading the %d matching tensor(s).", report.describe(), len(to_load))
    model.load_state_dict(to_load, strict=False)
    return len(to_load)
