"""NNCF 3.4 referee (run in the ``nncf3`` environment of make_envs.sh).

1. NNCF -> hf_qat fixtures: ``nncf.quantize`` (NNCF 3's post-training quantization) on each tiny model, saved
   the way NNCF 3 saves: ``nncf.torch.get_config(model)`` (``nncf3_<arch>_config.json``) and ``model.state_dict()``
   (``nncf3_<arch>_state.safetensors``), with NNCF's logits (``nncf3_<arch>_logits.safetensors``).
2. hf_qat -> NNCF: every ``hfqat_<arch>_nncf3_config.json`` + ``hfqat_<arch>_nncf3.safetensors`` in the folder
   restored with NNCF's own ``nncf.torch.load_from_config(fresh_model, config)`` + ``load_state_dict`` (strict);
   NNCF's logits written (``nncf3_reads_hfqat_<arch>_logits.safetensors``), or the failure printed.

Usage: python scripts/nncf_interop/nncf3_referee.py [FOLDER] [ARCH ...]
"""

from __future__ import annotations

import json
import os
import sys

from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nncf  # noqa: E402
import nncf.torch  # noqa: E402
from common import build, calibration_batches, logits_of, run_referee  # noqa: E402


def nncf_quantize(arch: str, out: str) -> None:
    model = nncf.quantize(build(arch), nncf.Dataset(calibration_batches(arch), lambda batch: batch), subset_size=8)
    config = nncf.torch.get_config(model)
    with open(os.path.join(out, f"nncf3_{arch}_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    save_file(
        {k: v.contiguous().clone() for k, v in model.state_dict().items()}, os.path.join(out, f"nncf3_{arch}_state.safetensors")
    )
    logits = logits_of(model, arch)
    save_file({"logits": logits}, os.path.join(out, f"nncf3_{arch}_logits.safetensors"))
    print(f"NNCF {nncf.__version__} {arch}: {len(config['compression_state'])} quantizers, logits {logits.tolist()}")


def read_hfqat(arch: str, out: str) -> None:
    with open(os.path.join(out, f"hfqat_{arch}_nncf3_config.json")) as f:
        config = json.load(f)
    model = nncf.torch.load_from_config(build(arch), config)
    model.load_state_dict(load_file(os.path.join(out, f"hfqat_{arch}_nncf3.safetensors")), strict=True)
    logits = logits_of(model.eval(), arch)
    save_file({"logits": logits}, os.path.join(out, f"nncf3_reads_hfqat_{arch}_logits.safetensors"))
    print(
        f"NNCF {nncf.__version__} read hf_qat's {arch}: {len(config['compression_state'])} quantizers, logits {logits.tolist()}"
    )


if __name__ == "__main__":
    sys.exit(run_referee(sys.argv[1:], nncf_quantize, read_hfqat, "hfqat_{arch}_nncf3_config.json"))
