"""``restore_nncf_checkpoint``: one call that turns a checkpoint file NNCF made (2.x or 3.x) into an hf_qat model.

- NNCF 2.x: ``torch.save({"state_dict": model.state_dict(), "compression_state": ctrl.get_compression_state()})``;
- NNCF 3.x: ``torch.save({"state_dict": model.state_dict(), "compression_config": nncf.torch.get_config(model)})``
  (the layout of NNCF 3's quantization-aware training example; ``"nncf_config"`` is read too).

The file is read with ``torch.load(weights_only=True)`` (see [`load_checkpoint`]); nothing in it runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import CompressionStateError
from .checkpoint import load_checkpoint, load_state
from .controller import QuantizationController
from .model_creation import create_compressed_model, remove_compression
from .nncf3 import example_forward, input_info_of, load_nncf3

__all__ = ["restore_nncf_checkpoint"]


def restore_nncf_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    nncf_config: Mapping[str, Any] | None = None,
    *,
    example_input: Any = None,
) -> tuple[QuantizationController, nn.Module]:
    """Compress ``model`` (a fresh float model of the checkpoint's architecture) as the checkpoint says and load its
    weights strictly.

    Args:
        model: the float model.
        checkpoint: a ``.pth`` path or the loaded dict, holding ``state_dict`` and either ``compression_state``
            (NNCF 2.x) or ``compression_config`` (NNCF 3.x, ``nncf.torch.get_config``).
        nncf_config: the NNCF config to keep on the controller (default: ``input_info`` from ``example_input``,
            8-bit quantization).
        example_input: the inputs of one forward, to check (NNCF 2.x) or name (NNCF 3.x) the operations the
            state quantizes (default for transformers text models: ``input_ids`` and ``attention_mask`` ``[1, 16]``).

    Raises:
        [`CompressionStateError`]: an unreadable file, an unknown layout, or a state that does not fit the model
            (nothing is modified).
    """
    ckpt = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else dict(checkpoint)
    state_dict = ckpt.get("state_dict")
    if not isinstance(state_dict, Mapping):
        raise CompressionStateError(
            f"The checkpoint has no 'state_dict' (keys: {sorted(map(str, ckpt))[:8]}); expected an NNCF checkpoint "
            "{'state_dict', 'compression_state'} (NNCF 2.x) or {'state_dict', 'compression_config'} (NNCF 3.x)."
        )
    if "compression_state" in ckpt:
        if nncf_config is None:
            nncf_config = {"compression": {"algorithm": "quantization"}}
            info = input_info_of(example_input)
            if info is not None:
                nncf_config["input_info"] = info
        forward = example_forward(model, example_input) if example_input is not None or "input_info" not in nncf_config else None
        attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
        ctrl, model = create_compressed_model(
            model, dict(nncf_config), compression_state=ckpt["compression_state"], dummy_forward_fn=forward
        )
        try:
            load_state(model, state_dict, is_resume=True)
        except CompressionStateError:
            remove_compression(ctrl, attention)
            raise
        return ctrl, model
    for key in ("compression_config", "nncf_config"):
        if key in ckpt:
            return load_nncf3(model, ckpt[key], state_dict, example_input=example_input, nncf_config=nncf_config)
    raise CompressionStateError(
        f"The checkpoint holds neither 'compression_state' (NNCF 2.x) nor 'compression_config' (NNCF 3.x); keys: "
        f"{sorted(map(str, ckpt))[:8]}."
    )
