"""Shared by the NNCF interop scripts and the tests that read their outputs (torch and transformers only:
it runs in the NNCF 2.19, NNCF 3.4 and hf_qat environments alike).

Tiny transformers models built from configs, the fixed calibration and evaluation inputs, and the NNCF
config every direction uses. Fixtures hold the weights (inside the checkpoints), so a model's random
initialisation never has to agree across torch versions.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import torch

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "nncf_interop")
SEQ = 16
VOCAB = 128

#: Architectures with committed fixtures; ``roberta`` has none (the referee checks it as the unseen
#: architecture) and ``gpt2`` shows NNCF 2.19's limits (see the README's interop table).
ARCHS = ("bert", "distilbert")
ALL_ARCHS = ("bert", "distilbert", "roberta", "gpt2")


def uses_mask(arch: str) -> bool:
    """NNCF 2.19's legacy tracing of GPT-2 fails with an attention mask; GPT-2 runs on input_ids alone."""
    return arch != "gpt2"


def nncf_config(arch: str) -> dict:
    inputs = [{"sample_size": [1, SEQ], "type": "long", "keyword": "input_ids"}]
    if uses_mask(arch):
        inputs.append({"sample_size": [1, SEQ], "type": "long", "keyword": "attention_mask"})
    return copy.deepcopy(
        {
            "input_info": inputs,
            "compression": {
                "algorithm": "quantization",
                "initializer": {
                    "range": {"num_init_samples": 8, "type": "min_max"},
                    "batchnorm_adaptation": {"num_bn_adaptation_samples": 0},
                },
            },
        }
    )


def build(arch: str) -> torch.nn.Module:
    """A fresh, randomly initialised tiny model of ``arch`` (eager attention, 2 labels), in eval mode."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
        GPT2Config,
        GPT2ForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    torch.manual_seed(0)
    if arch == "bert":
        config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            vocab_size=VOCAB, max_position_embeddings=64, num_labels=2)  # fmt: skip
        model = BertForSequenceClassification(config)
    elif arch == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=64, num_labels=2,
                            pad_token_id=0, bos_token_id=1, eos_token_id=1)  # fmt: skip
        model = GPT2ForSequenceClassification(config)
    elif arch == "distilbert":
        config = DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=VOCAB,
                                  max_position_embeddings=64, num_labels=2)  # fmt: skip
        model = DistilBertForSequenceClassification(config)
    elif arch == "roberta":
        config = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               vocab_size=VOCAB, max_position_embeddings=64, num_labels=2, pad_token_id=1)  # fmt: skip
        model = RobertaForSequenceClassification(config)
    else:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ALL_ARCHS}")
    model.config._attn_implementation = "eager"
    return model.eval()


def calibration_batches(arch: str, n: int = 4, batch_size: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(123)
    out = []
    for _ in range(n):
        batch = {"input_ids": torch.randint(1, VOCAB, (batch_size, SEQ), generator=g)}
        if uses_mask(arch):
            batch["attention_mask"] = torch.ones(batch_size, SEQ, dtype=torch.long)
        out.append(batch)
    return out


def eval_inputs(arch: str) -> dict[str, torch.Tensor]:
    """Two unpadded rows (padding makes transformers 5 run an extra mask add that NNCF's trace of input_info lacks)."""
    g = torch.Generator().manual_seed(7)
    batch = {"input_ids": torch.randint(1, VOCAB, (2, SEQ), generator=g)}
    if uses_mask(arch):
        batch["attention_mask"] = torch.ones(2, SEQ, dtype=torch.long)
    return batch


def logits_of(model: torch.nn.Module, arch: str) -> torch.Tensor:
    with torch.no_grad():
        out = model(**eval_inputs(arch))
    return (out.logits if hasattr(out, "logits") else out[0]).detach().clone()


def fixture(name: str) -> str:
    return os.path.join(FIXTURES, name)


def run_referee(argv: list[str], make: Callable[[str, str], None], read: Callable[[str, str], None], hfqat_file: str) -> int:
    """A referee's command line: ``[FOLDER] [ARCH ...]``. For every architecture, ``make(arch, folder)`` (NNCF's own
    checkpoint), then ``read(arch, folder)`` when ``hfqat_file.format(arch=arch)`` exists in the folder. Every
    failure is printed with its traceback; the exit status is 1 if any step failed."""
    import traceback

    folder = argv[0] if argv else FIXTURES
    failures = 0
    for arch in argv[1:] or list(ALL_ARCHS):
        for step in (make, read):
            if step is read and not os.path.exists(os.path.join(folder, hfqat_file.format(arch=arch))):
                continue
            try:
                step(arch, folder)
            except Exception:
                failures += 1
                print(f"FAILED {step.__name__}({arch}):\n{traceback.format_exc()}")
    return 1 if failures else 0
