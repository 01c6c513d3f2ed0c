"""One process of the FSDP/DDP comparison (tests/transformers/test_fsdp.py), launched by accelerate or torchrun.

    python fsdp_worker.py OUT MODEL MAX_STEPS [RESUME_FROM]

MODEL is ``bert`` (tiny BERT, sequence classification) or ``gpt2`` (tiny GPT-2, causal LM). QATTrainer
compresses, calibrates and trains on the same toy data in every launch, saving a checkpoint every 2 steps, then
saves the gathered model to OUT/final. ``FSDP_WORKER_CHECKPOINTING=1`` turns on gradient checkpointing;
``FSDP_WORKER_PERTURB=1`` gives rank 1 different weights before training. Each rank writes ``rank<r>.json`` (the process group it saw, the loss
of every step) and ``quantizers_rank<r>.safetensors`` (every quantizer tensor, unsharded).
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from testing_utils import SEQ, quant_config, tiny_bert, tiny_gpt2, tiny_text_dataset  # noqa: E402

from hf_qat.torch.quantizers import BaseQuantizer  # noqa: E402
from hf_qat.transformers import QATTrainer, QATTrainingArguments  # noqa: E402


def quantizer_tensors(ctrl) -> dict[str, torch.Tensor]:
    out = {}
    for qid, q in sorted(ctrl.quantizers.items()):
        for name, t in list(q.named_parameters(recurse=False)) + list(q.named_buffers(recurse=False)):
            t = t.full_tensor() if hasattr(t, "full_tensor") else t  # DTensor shards: gathered (a collective)
            out[f"{qid}::{name}"] = t.detach().clone().contiguous()
    return out


def local_bytes(tensors) -> int:
    """Bytes this process holds for ``tensors`` (a DTensor's local shard only)."""
    return sum((t.to_local() if hasattr(t, "to_local") else t).nelement() * t.element_size() for t in tensors)


def main(out_dir: str, kind: str, max_steps: str, resume: str | None = None) -> None:
    data = tiny_text_dataset(n=64, seq=SEQ, seed=3)
    if kind == "gpt2":
        model = tiny_gpt2()
        data = data.map(lambda row: {"labels": row["input_ids"]})
    else:
        model = tiny_bert()
    config = quant_config(initializer={"range": {"num_init_samples": 16, "type": "mean_min_max"}})
    args = QATTrainingArguments(
        output_dir=out_dir,
        nncf_config=config,
        max_steps=int(max_steps),
        save_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        gradient_checkpointing=os.environ.get("FSDP_WORKER_CHECKPOINTING") == "1",
    )
    if os.environ.get("FSDP_WORKER_PERTURB") == "1" and args.process_index == 1:
        with torch.no_grad():  # a head initialised differently on one rank
            for p in model.parameters():
                p.add_(0.01)
    trainer = QATTrainer(model=model.train(), args=args, train_dataset=data)
    trainer.train(resume_from_checkpoint=resume)
    tensors = quantizer_tensors(trainer.compression_ctrl)
    # where the activation quantizers are held: in their transformer block, or in the root's container
    held = [n for n, m in trainer.model.named_modules() if isinstance(m, BaseQuantizer) and "weight_quantizer" not in n]
    trainer.save_model(os.path.join(out_dir, "final"))
    rank = args.process_index
    save_file(tensors, os.path.join(out_dir, f"quantizers_rank{rank}.safetensors"))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "world_size": args.world_size,
                "fsdp": trainer.is_fsdp,
                "global_step": trainer.state.global_step,
                "losses": losses,
                "in_blocks": sum("._hf_qat_quantizers." in n for n in held),
                "in_root": sum(n.startswith("_hf_qat.external_quantizers.") for n in held),
                "activation_quantizers": len(trainer.compression_ctrl.activation_quantizers),
                "local_parameter_bytes": local_bytes(trainer.model.parameters()),
                "local_optimizer_bytes": local_bytes(
                    t for st in trainer.optimizer.state.values() for t in st.values() if torch.is_tensor(t) and t.dim() > 0
                ),
            },
            f,
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
