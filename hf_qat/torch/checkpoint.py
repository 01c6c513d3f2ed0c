"""``load_state``: load a (possibly NNCF-named, possibly DDP-prefixed) state dict into a compressed model."""

from __future__ import annotations

import logging
import re
from typing import Iterable

import torch
from torch import nn

from ..errors import CompressionStateError

__all__ = ["load_state", "normalize_state_dict_keys"]

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


def normalize_state_dict_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map DDP prefixes and NNCF legacy key names onto hf_qat's."""
    out = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in _KEY_RENAMES:
            new = pattern.sub(repl, new)
        out[new] = value
    return out


def load_state(
    model: nn.Module,
    state_dict_to_load: dict[str, torch.Tensor],
    is_resume: bool = False,
    keys_to_ignore: Iterable[str] | None = None,
) -> int:
    """Load ``state_dict_to_load`` into ``model``; returns the number of tensors loaded.

    Accepts ``module.``-prefixed (DDP) keys and NNCF's legacy names (``pre_ops.0.op``,
    ``_nncf.external_quantizers``, ``nncf_module.``). With ``is_resume=True`` every key must match
    in name and shape, otherwise nothing is loaded and an error lists the mismatches; without it,
    matching keys are loaded and the rest reported as a warning.

    Raises:
        [`CompressionStateError`]: on mismatches when ``is_resume`` is true.
    """
    ignore = set(keys_to_ignore or ())
    incoming = {k: v for k, v in normalize_state_dict_keys(state_dict_to_load).items() if k not in ignore}
    own = model.state_dict()
    missing = [k for k in own if k not in incoming and k not in ignore and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in incoming if k not in own]
    mismatched = [
        f"{k}: checkpoint {list(v.shape)} vs model {list(own[k].shape)}"
        for k, v in incoming.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    report = []
    if missing:
        report.append(f"missing {len(missing)} key(s), e.g. {missing[:5]}")
    if unexpected:
        report.append(f"unexpected {len(unexpected)} key(s), e.g. {unexpected[:5]}")
    if mismatched:
        report.append(f"{len(mismatched)} shape mismatch(es), e.g. {mismatched[:5]}")
    if report and is_resume:
        raise CompressionStateError(
            "The state dict does not fit the compressed model: " + "; ".join(report) + ". Nothing was loaded. "
            "Was the model compressed with the checkpoint's compression_state?"
        )
    if report:
        logger.warning("load_state: %s; loading the %d matching tensor(s).", "; ".join(report), len(incoming) - len(unexpected) - len(mismatched))
    bad = {k.split(":")[0] for k in mismatched}
    to_load = {k: v for k, v in incoming.items() if k in own and k not in bad}
    model.load_state_dict(to_load, strict=False)
    return len(to_load)
