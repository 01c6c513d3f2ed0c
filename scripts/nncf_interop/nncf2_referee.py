"""NNCF 2.19 referee (run in the ``legacy`` environment of make_envs.sh, with NNCF_TORCH_LEGACY_TRACING=1).

1. NNCF -> hf_qat fixtures: NNCF's own ``create_compressed_model`` on each tiny model, saved exactly as NNCF
   users save checkpoints (``nncf2_<arch>.pth``: ``torch.save({"state_dict": model.state_dict(),
   "compression_state": ctrl.get_compression_state()})``), with NNCF's logits (``nncf2_<arch>_logits.safetensors``).
2. hf_qat -> NNCF: every ``hfqat_<arch>.pth`` in the folder restored with NNCF's own API
   (``create_compressed_model(fresh_model, config, compression_state=...)`` + ``load_state(..., is_resume=True)``)
   and NNCF's logits written (``nncf2_reads_hfqat_<arch>_logits.safetensors``), or the failure printed.

Usage: python scripts/nncf_interop/nncf2_referee.py [FOLDER] [ARCH ...]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("NNCF_TORCH_LEGACY_TRACING", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nncf  # noqa: E402
from common import build, calibration_batches, logits_of, nncf_config, run_referee  # noqa: E402
from nncf import NNCFConfig  # noqa: E402
from nncf.torch import create_compressed_model, load_state, register_default_init_args  # noqa: E402
from nncf.torch.initialization import PTInitializingDataLoader  # noqa: E402


def _register_transformers_modules() -> None:
    """What NNCF's transformers integration did: make transformers' ``Conv1D`` (GPT-2's projections) a
    quantizable NNCF module (it then appears as ``NNCFUserConv1D[...]`` in node names, as in hf_qat's)."""
    from nncf.torch import register_module
    from transformers.pytorch_utils import Conv1D

    register_module()(Conv1D)


_register_transformers_modules()


class _Loader(PTInitializingDataLoader):
    def get_inputs(self, batch):
        return (), dict(batch)

    def get_target(self, batch):
        return None


def _set_ranges_from_data(ctrl, model, batches) -> None:
    """Symmetric ranges and signedness from the calibration data, set on NNCF's own quantizers.

    NNCF 2.19's range initializer collects statistics on these models but leaves every scale at its
    default 0.1 (measured: the same holds for the reference checkpoint in the project's interop notes),
    which would make a poor fixture: weights use half their levels and LayerNorm outputs lose their
    negative half. This does what ``min_max`` init means: scale = max |x| (per channel for weights),
    signed where the data has negative values.
    """
    seen = {}
    hooks = []
    for qid, q in ctrl.all_quantizations.items():

        def hook(module, args, qid=qid):
            x = args[0].detach()
            axes = [i for i, s in enumerate(module.scale.shape) if s == 1] if module.scale.dim() == x.dim() else None
            amax = x.abs().amax(dim=axes, keepdim=True) if axes is not None else x.abs().amax().reshape(module.scale.shape)
            neg = bool((x < 0).any())
            old = seen.get(qid)
            seen[qid] = (amax if old is None else torch.maximum(old[0], amax), neg or (old is not None and old[1]))

        hooks.append(q.register_forward_pre_hook(hook))
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for qid, q in ctrl.all_quantizations.items():
            amax, negative = seen[qid]
            q.scale.copy_(amax.reshape(q.scale.shape).clamp_min(1e-4))
            if type(qid).__name__ != "WeightQuantizerId":
                q.signed = negative


def nncf_checkpoint(arch: str, out: str) -> None:
    batches = calibration_batches(arch)
    samples = [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["input_ids"]))]
    loader = torch.utils.data.DataLoader(samples, batch_size=len(batches[0]["input_ids"]), shuffle=False)
    config = register_default_init_args(NNCFConfig.from_dict(nncf_config(arch)), _Loader(loader))
    ctrl, model = create_compressed_model(build(arch), config, dump_graphs=False)
    model.eval()
    _set_ranges_from_data(ctrl, model, batches)
    torch.save({"state_dict": model.state_dict(), "compression_state": ctrl.get_compression_state()},
               os.path.join(out, f"nncf2_{arch}.pth"))  # fmt: skip
    logits = logits_of(model, arch)
    save_file({"logits": logits}, os.path.join(out, f"nncf2_{arch}_logits.safetensors"))
    print(f"NNCF {nncf.__version__} {arch}: {len(ctrl.all_quantizations)} quantizers, logits {logits.tolist()}")


def read_hfqat(arch: str, out: str) -> None:
    path = os.path.join(out, f"hfqat_{arch}.pth")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ctrl, model = create_compressed_model(build(arch), NNCFConfig.from_dict(nncf_config(arch)),
                                          compression_state=ckpt["compression_state"], dump_graphs=False)  # fmt: skip
    loaded = load_state(model, ckpt["state_dict"], is_resume=True)
    model.eval()
    logits = logits_of(model, arch)
    save_file({"logits": logits}, os.path.join(out, f"nncf2_reads_hfqat_{arch}_logits.safetensors"))
    print(
        f"NNCF {nncf.__version__} read {path}: {len(ctrl.all_quantizations)} quantizers, {loaded} tensors, logits {logits.tolist()}"
    )


if __name__ == "__main__":
    sys.exit(run_referee(sys.argv[1:], nncf_checkpoint, read_hfqat, "hfqat_{arch}.pth"))
