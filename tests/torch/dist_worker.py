"""One rank of the 2-process QAT test (launched by tests/torch/test_distributed.py through torchrun).

Each rank calibrates on its own batches, calls ctrl.distributed(), trains 3 DDP steps on its own
data, then gathers every quantizer tensor; rank 0 writes them (safetensors) with the world size.
"""

import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from testing_utils import inputs_of, quant_config, text_batches, tiny_bert  # noqa: E402

from hf_qat import NNCFConfig, create_compressed_model, register_default_init_args  # noqa: E402


def quantizer_tensors(ctrl) -> dict[str, torch.Tensor]:
    out = {}
    for qid, q in sorted(ctrl.quantizers.items()):
        for name, t in list(q.named_parameters(recurse=False)) + list(q.named_buffers(recurse=False)):
            out[f"{qid}::{name}"] = t.detach().clone().contiguous()
    return out


def main(out_dir: str, mode: str = "train") -> None:
    # a timeout turns a lost peer into an error instead of a hang
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    batches = [inputs_of(b) for b in text_batches(n=2, seed=100 + rank)]  # this rank's own data
    algo = {"initializer": {"range": {"num_init_samples": 8, "type": "mean_min_max"}}}
    if mode == "mismatch" and rank == 1:  # a different config on one rank
        algo["ignored_scopes"] = ["{re}.*BertPooler.*"]
    config = register_default_init_args(NNCFConfig.from_dict(quant_config(**algo)), batches)
    if mode == "mismatch":
        try:
            create_compressed_model(tiny_bert(), config)
        except Exception as e:  # noqa: BLE001 - reported to the test
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, f"error_rank{rank}.txt"), "w") as f:
                f.write(f"{type(e).__name__}: {e}")
        # The ranks left their collectives at different points: at interpreter exit gloo's threads may then
        # abort the process (SIGABRT, "terminate called without an active exception") on a loaded machine.
        # The error is what this mode checks; leave without running those destructors.
        sys.stdout.flush()
        os._exit(0)
    ctrl, model = create_compressed_model(tiny_bert(), config)
    after_init = quantizer_tensors(ctrl)
    ctrl.distributed()
    ddp = torch.nn.parallel.DistributedDataParallel(model.train())
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    for step in range(3):
        b = inputs_of(text_batches(n=1, seed=1000 * rank + step)[0])
        loss = ddp(**b, labels=torch.tensor([0, 1, 0, 1])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    trained = quantizer_tensors(ctrl)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, {k: v.numpy() for k, v in trained.items()})
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        save_file(after_init, os.path.join(out_dir, "after_init.safetensors"))
        for r, tensors in enumerate(gathered):
            save_file({k: torch.from_numpy(v) for k, v in tensors.items()}, os.path.join(out_dir, f"trained_rank{r}.safetensors"))
        with open(os.path.join(out_dir, "world.json"), "w") as f:
            json.dump({"world_size": world, "backend": dist.get_backend()}, f)
    dist.barrier()
    # no destroy_process_group(): with gloo it can block when the peer has already exited; the
    # process exit releases the group


if __name__ == "__main__":
    main(*sys.argv[1:])
