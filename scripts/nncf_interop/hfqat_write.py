"""hf_qat's side of the NNCF interop fixtures (run with the Python that has hf_qat, torch 2.13 and transformers 5).

For each architecture: compress a tiny model with hf_qat on the fixed calibration batches and write the
checkpoint NNCF users save, ``{"state_dict": ctrl.nncf_state_dict(), "compression_state":
ctrl.get_compression_state()}`` (``hfqat_<arch>.pth``), with hf_qat's logits
(``hfqat_<arch>_logits.safetensors``). The NNCF referees then restore it with NNCF's own API.

Usage: python scripts/nncf_interop/hfqat_write.py [OUT_DIR]
"""

from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ALL_ARCHS, FIXTURES, build, calibration_batches, logits_of, nncf_config  # noqa: E402


def write_checkpoint(arch: str) -> tuple[dict, torch.Tensor]:
    """hf_qat-compressed tiny ``arch``: the NNCF-layout checkpoint dict and the model's logits."""
    import hf_qat

    model = build(arch)
    config = hf_qat.register_default_init_args(hf_qat.NNCFConfig.from_dict(nncf_config(arch)), calibration_batches(arch))
    ctrl, model = hf_qat.create_compressed_model(model, config)
    model.eval()
    ckpt = {"state_dict": ctrl.nncf_state_dict(), "compression_state": ctrl.get_compression_state()}
    return ckpt, logits_of(model, arch)


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    for arch in ALL_ARCHS:
        ckpt, logits = write_checkpoint(arch)
        torch.save(ckpt, os.path.join(out, f"hfqat_{arch}.pth"))
        save_file({"logits": logits}, os.path.join(out, f"hfqat_{arch}_logits.safetensors"))
        print(f"hf_qat {arch}: {len(ckpt['state_dict'])} tensors, logits {logits.tolist()}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else FIXTURES)
