"""hf_qat reads what NNCF wrote (run with the Python that has hf_qat): every ``nncf2_<arch>.pth`` in the folder
is restored the way the NNCF guide restores a checkpoint, every ``nncf3_<arch>_config.json`` +
``nncf3_<arch>_state.safetensors`` with ``hf_qat.load_nncf3``, and the logits are compared with NNCF's own.

Usage: python scripts/nncf_interop/hfqat_read.py [FOLDER]; exits 1 when an architecture is off by more than 1e-5.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ALL_ARCHS, FIXTURES, build, calibration_batches, logits_of, nncf_config  # noqa: E402

TOLERANCE = 1e-5


def restore_nncf2(arch: str, path: str):
    """``create_compressed_model(fresh, config, compression_state=...)`` + ``load_state(is_resume=True)`` in hf_qat."""
    import hf_qat

    ckpt = hf_qat.load_checkpoint(path)
    ctrl, model = hf_qat.create_compressed_model(build(arch), nncf_config(arch), compression_state=ckpt["compression_state"])
    hf_qat.load_state(model, ckpt["state_dict"], is_resume=True)
    return ctrl, model.eval()


def restore_nncf3(arch: str, folder: str):
    """``load_nncf3(fresh, config, state_dict)``: hf_qat's ``load_from_config`` + ``load_state_dict``."""
    import hf_qat

    with open(os.path.join(folder, f"nncf3_{arch}_config.json")) as f:
        config = json.load(f)
    state_dict = load_file(os.path.join(folder, f"nncf3_{arch}_state.safetensors"))
    ctrl, model = hf_qat.load_nncf3(build(arch), config, state_dict, example_input=calibration_batches(arch)[0])
    return ctrl, model.eval()


def main(folder: str) -> int:
    worst = 0.0
    cases = [
        (f"NNCF 2 {arch}", arch, os.path.join(folder, f"nncf2_{arch}.pth"), lambda a, p: restore_nncf2(a, p))
        for arch in ALL_ARCHS
    ]
    cases += [
        (f"NNCF 3 {arch}", arch, os.path.join(folder, f"nncf3_{arch}_config.json"), lambda a, p: restore_nncf3(a, folder))
        for arch in ALL_ARCHS
    ]
    for label, arch, path, restore in cases:
        if not os.path.exists(path):
            continue
        stem = "nncf2" if label.startswith("NNCF 2") else "nncf3"
        reference = load_file(os.path.join(folder, f"{stem}_{arch}_logits.safetensors"))["logits"]
        if not torch.isfinite(reference).all():
            print(f"{label}: NNCF's own logits are not finite ({reference.tolist()}); nothing to compare")
            continue
        try:
            ctrl, model = restore(arch, path)
        except Exception as e:  # report every architecture
            print(f"{label}: hf_qat refused NNCF's checkpoint: {type(e).__name__}: {e}")
            worst = float("inf")
            continue
        diff = (logits_of(model, arch) - reference).abs().max().item()
        worst = max(worst, diff)
        print(f"{label}: {len(ctrl.quantizers)} quantizers restored, max |logits - NNCF's| = {diff:.3g}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else FIXTURES))
