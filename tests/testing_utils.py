"""Tiny models built from configs (no downloads) and calibration data for the tests."""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 64
SEQ = 12


def text_batches(n: int = 3, batch: int = 4, seq: int = SEQ, with_token_types: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        b = {
            "input_ids": torch.randint(1, VOCAB, (batch, seq), generator=g),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long),
            "labels": torch.randint(0, 2, (batch,), generator=g),
        }
        b["attention_mask"][0, -3:] = 0
        if with_token_types:
            b["token_type_ids"] = torch.zeros(batch, seq, dtype=torch.long)
        out.append(b)
    return out


def image_batches(n: int = 2, batch: int = 2, size: int = 32, channels: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "pixel_values": torch.randn(batch, channels, size, size, generator=g),
            "labels": torch.randint(0, 3, (batch,), generator=g),
        }
        for _ in range(n)
    ]


def inputs_of(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def tiny_bert(num_layers: int = 2, **kw):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        **kw,
    )
    return BertForSequenceClassification(cfg).eval()


def tiny_distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64)
    return DistilBertForSequenceClassification(cfg).eval()


def tiny_roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    cfg = RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=1,
    )
    return RobertaForSequenceClassification(cfg).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


def tiny_vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
    )
    return ViTForImageClassification(cfg).eval()


def tiny_resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3)
    return ResNetForImageClassification(cfg).eval()


class PlainConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


class PlainSdpaNet(nn.Module):
    """A plain torch attention block calling F.scaled_dot_product_attention."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, s, d))


def quant_config(**algo) -> dict:
    algo.setdefault("initializer", {"range": {"num_init_samples": 8}, "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}})
    return {"compression": {"algorithm": "quantization", **algo}}


def tiny_text_dataset(n: int = 48, seq: int = SEQ, seed: int = 0):
    """A learnable toy task: the label says whether the first token is in the upper half of the vocabulary."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, seq), generator=g)
    labels = (ids[:, 0] > VOCAB // 2).long()
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * seq] * n, "labels": labels.tolist()})
