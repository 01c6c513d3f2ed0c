"""ONNX helpers shared by the accuracy and inference sections (no hf_qat import: NNCF's worker uses it)."""

from __future__ import annotations

from pathlib import Path

import torch

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class LogitsOnly(torch.nn.Module):
    """Positional BERT inputs in, logits out: the signature ``torch.onnx.export`` needs."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def export_torchscript(model: torch.nn.Module, example: dict, path: Path, opset: int = 17) -> Path:
    """Export a BERT classifier with TorchScript's exporter (dynamic batch and sequence axes)."""
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in INPUT_NAMES}
    axes["logits"] = {0: "batch_size"}
    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            LogitsOnly(model),
            tuple(example[n] for n in INPUT_NAMES),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    return Path(path)
