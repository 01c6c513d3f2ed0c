"""hf_qat's side of the NNCF interop fixtures (run with the Python that has hf_qat, torch 2.13 and transformers 5).

For each architecture: compress a tiny model with hf_qat on the fixed calibration batches and write
- for NNCF 2.x, the checkpoint NNCF users save, ``{"state_dict": ctrl.nncf_state_dict(), "compression_state":
  ctrl.get_compression_state()}`` (``hfqat_<arch>.pth``);
- for NNCF 3.x, ``get_nncf3_config(ctrl)`` (``hfqat_<arch>_nncf3_config.json``) and ``nncf3_state_dict(ctrl)``
  (``hfqat_<arch>_nncf3.safetensors``);
with hf_qat's logits (``hfqat_<arch>_logits.safetensors``). The NNCF referees then restore them with NNCF's own API.

Usage: python scripts/nncf_interop/hfqat_write.py [OUT_DIR]
"""

from __future__ import annotations

import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ALL_ARCHS, FIXTURES, build, calibration_batches, logits_of, nncf_config  # noqa: E402


def compress(arch: str):
    """hf_qat-compressed tiny ``arch`` (controller, model in eval mode)."""
    import hf_qat

    model = build(arch)
    config = hf_qat.register_default_init_args(hf_qat.NNCFConfig.from_dict(nncf_config(arch)), calibration_batches(arch))
    ctrl, model = hf_qat.create_compressed_model(model, config)
    return ctrl, model.eval()


def write_checkpoint(arch: str) -> tuple[dict, torch.Tensor]:
    """hf_qat-compressed tiny ``arch``: the NNCF 2-layout checkpoint dict and the model's logits."""
    ctrl, model = compress(arch)
    ckpt = {"state_dict": ctrl.nncf_state_dict(), "compression_state": ctrl.get_compression_state()}
    return ckpt, logits_of(model, arch)


def write_nncf3(arch: str) -> tuple[dict, dict, torch.Tensor]:
    """hf_qat-compressed tiny ``arch`` in NNCF 3's format: config, state dict, logits."""
    from hf_qat.torch.nncf3 import get_nncf3_config, nncf3_state_dict

    ctrl, model = compress(arch)
    return get_nncf3_config(ctrl), nncf3_state_dict(ctrl), logits_of(model, arch)


def manifest(arch: str) -> dict:
    """What hf_qat writes for ``arch`` in both NNCF layouts, without the tensor values: state-dict keys and shapes,
    the compression state and the NNCF 3 config. Committed beside the referees' outputs; the tests check that
    hf_qat still writes exactly this (the referees proved that NNCF restores it)."""
    ckpt, _ = write_checkpoint(arch)
    config, state_dict, _ = write_nncf3(arch)
    return {
        "nncf2": {
            "state_dict": {k: list(v.shape) for k, v in ckpt["state_dict"].items()},
            "compression_state": ckpt["compression_state"],
        },
        "nncf3": {"state_dict": {k: list(v.shape) for k, v in state_dict.items()}, "config": config},
    }


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    for arch in ALL_ARCHS:
        ckpt, logits = write_checkpoint(arch)
        torch.save(ckpt, os.path.join(out, f"hfqat_{arch}.pth"))
        save_file({"logits": logits}, os.path.join(out, f"hfqat_{arch}_logits.safetensors"))
        print(f"hf_qat {arch}: {len(ckpt['state_dict'])} tensors, logits {logits.tolist()}")
        config, state_dict, logits3 = write_nncf3(arch)
        assert torch.equal(logits, logits3)
        with open(os.path.join(out, f"hfqat_{arch}_nncf3_config.json"), "w") as f:
            json.dump(config, f, indent=1)
        save_file(
            {k: v.contiguous().clone() for k, v in state_dict.items()}, os.path.join(out, f"hfqat_{arch}_nncf3.safetensors")
        )
        with open(os.path.join(out, f"hfqat_{arch}_manifest.json"), "w") as f:
            json.dump(manifest(arch), f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else FIXTURES)
