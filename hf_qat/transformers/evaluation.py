"""Evaluation of what is deployed: the INT8 ONNX file in ONNX Runtime, with the task's own loss.

The loss of a batch comes from transformers' per-task loss functions (``transformers.loss``'s
``LOSS_MAPPING``: ``ForCausalLM``, ``ForSequenceClassification``, ``ForTokenClassification``,
``ForImageClassification`` ...), the same the models use in training, applied to logits computed by
ONNX Runtime. Batches are averaged by the number of items each loss averages (labelled tokens for
token-level tasks, predicted tokens for causal LMs), so PyTorch and ONNX losses compare exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.loss.loss_utils import LOSS_MAPPING
from transformers.trainer_utils import EvalPrediction

__all__ = ["task_loss", "token_level_loss", "evaluate_onnx_file", "concat_padded"]

IGNORE_INDEX = -100


def _is_causal_lm(model: nn.Module) -> bool:
    name = type(model).__name__
    return (
        name.endswith("ForCausalLM")
        or name.endswith("LMHeadModel")
        or bool(getattr(getattr(model, "config", None), "is_decoder", False))
    )


def task_loss(model: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Mean loss of ``logits`` against ``labels`` with the model's transformers loss, and the number
    of labelled items it averages.

    Causal LMs: cross-entropy of each next-token prediction (``ForCausalLM``: labels shifted by one),
    counted over the predicted tokens. (Trainer's ``eval_loss`` divides the same sum by the unshifted
    token count, which reads ``(S-1)/S`` low.) Token classification: labelled tokens. Sequence and image
    classification, regression, multi-label: one item per example. Models without a transformers loss
    get cross-entropy over the last axis.
    """
    config = copy.copy(getattr(model, "config", None))  # ForSequenceClassification sets problem_type on it
    logits = logits.float()
    if logits.dim() == 3 and labels.dim() == 2 and _is_causal_lm(model):
        n = int((labels[:, 1:] != IGNORE_INDEX).sum())
        loss = LOSS_MAPPING["ForCausalLM"](logits=logits, labels=labels, vocab_size=logits.shape[-1])
        return (float(loss) if n else 0.0), n
    loss_type = getattr(model, "loss_type", None)
    if logits.dim() == 3:
        n = int((labels != IGNORE_INDEX).sum())
        if loss_type == "ForTokenClassification" and config is not None:
            loss = LOSS_MAPPING[loss_type](logits, labels, config)
        else:
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return (float(loss) if n else 0.0), n
    if loss_type in ("ForSequenceClassification", "ForImageClassification") and config is not None:
        return float(LOSS_MAPPING[loss_type](labels=labels, pooled_logits=logits, config=config)), len(labels)
    return float(nn.functional.cross_entropy(logits, labels)), len(labels)


def token_level_loss(model: nn.Module, loader: Iterable[dict[str, torch.Tensor]]) -> float:
    """Mean loss of a PyTorch model over a loader, computed as :func:`evaluate_onnx_file` does
    (per labelled item; for causal LMs per *predicted* token), so both can be compared."""
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in loader:
            labels = batch.get("labels")
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            logits = model(**inputs).logits.float().cpu()
            loss, n = task_loss(model, logits, labels.cpu())
            total += loss * n
            count += n
    return total / max(count, 1)


def concat_padded(arrays: list[np.ndarray], pad: float = IGNORE_INDEX) -> np.ndarray:
    """Concatenate batches along axis 0, padding axis 1 (sequence) to the longest batch."""
    if not arrays:
        return np.zeros((0,))
    if arrays[0].ndim < 2 or len({a.shape[1] for a in arrays}) == 1:
        return np.concatenate(arrays)
    longest = max(a.shape[1] for a in arrays)
    out = []
    for a in arrays:
        width = [(0, 0)] * a.ndim
        width[1] = (0, longest - a.shape[1])
        out.append(np.pad(a, width, constant_values=pad))
    return np.concatenate(out)


def evaluate_onnx_file(
    path: Any,
    model: nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    compute_metrics: Callable[[EvalPrediction], dict[str, float]] | None = None,
    metric_key_prefix: str = "onnx",
) -> dict[str, float]:
    """Run an exported ONNX file in ONNX Runtime over ``loader`` (batches of the model's inputs and
    ``labels``) and return ``{"<prefix>_loss": ..., "<prefix>_<metric>": ...}``.

    ``model`` supplies the task (its transformers loss); it is not run.

    Raises:
        [`MissingDependencyError`]: the ``onnx`` extra is not installed.
    """
    from ..onnx.runtime import OnnxRunner  # the onnx extra is optional for training

    runner = OnnxRunner(path)
    all_logits, all_labels, losses, counts = [], [], [], []
    for batch in loader:
        feed = {n: batch[n].detach().cpu().numpy() for n in runner.input_names}
        outputs = runner(feed)
        logits = outputs["logits"] if "logits" in outputs else outputs[runner.output_names[0]]
        labels = batch.get("labels")
        if labels is not None:
            labels = labels.detach().cpu()
            loss, n = task_loss(model, torch.from_numpy(logits), labels)
            losses.append(loss * n)
            counts.append(n)
            all_labels.append(labels.numpy())
        all_logits.append(logits)
    metrics: dict[str, float] = {}
    if counts:
        metrics[f"{metric_key_prefix}_loss"] = float(sum(losses) / max(sum(counts), 1))
    if compute_metrics is not None and all_labels:
        predictions = concat_padded(all_logits)
        label_ids = concat_padded(all_labels, pad=IGNORE_INDEX)
        for k, v in compute_metrics(EvalPrediction(predictions=predictions, label_ids=label_ids)).items():
            metrics[f"{metric_key_prefix}_{k}"] = v
    return metrics
