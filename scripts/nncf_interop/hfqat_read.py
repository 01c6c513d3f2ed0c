"""hf_qat reads what NNCF wrote (run with the Python that has hf_qat): every ``nncf2_<arch>.pth`` in the folder
is restored the way the NNCF guide restores a checkpoint, and the logits are compared with NNCF's own.

Usage: python scripts/nncf_interop/hfqat_read.py [FOLDER]; exits 1 when an architecture is off by more than 1e-5.
"""

from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ALL_ARCHS, FIXTURES, build, logits_of, nncf_config  # noqa: E402

TOLERANCE = 1e-5


def restore_nncf2(arch: str, path: str):
    """``create_compressed_model(fresh, config, compression_state=...)`` + ``load_state(is_resume=True)`` in hf_qat."""
    import hf_qat

    ckpt = hf_qat.load_checkpoint(path)
    ctrl, model = hf_qat.create_compressed_model(build(arch), nncf_config(arch), compression_state=ckpt["compression_state"])
    hf_qat.load_state(model, ckpt["state_dict"], is_resume=True)
    return ctrl, model.eval()


def main(folder: str) -> int:
    worst = 0.0
    for arch in ALL_ARCHS:
        path = os.path.join(folder, f"nncf2_{arch}.pth")
        if not os.path.exists(path):
            continue
        reference = load_file(os.path.join(folder, f"nncf2_{arch}_logits.safetensors"))["logits"]
        if not torch.isfinite(reference).all():
            print(f"{arch}: NNCF's own logits are not finite ({reference.tolist()}); nothing to compare")
            continue
        try:
            ctrl, model = restore_nncf2(arch, path)
        except Exception as e:  # report every architecture
            print(f"{arch}: hf_qat refused NNCF's checkpoint: {type(e).__name__}: {e}")
            worst = float("inf")
            continue
        diff = (logits_of(model, arch) - reference).abs().max().item()
        worst = max(worst, diff)
        print(f"{arch}: {len(ctrl.quantizers)} quantizers restored, max |logits - NNCF's| = {diff:.3g}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else FIXTURES))
