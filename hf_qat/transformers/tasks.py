"""The tasks ``scripts/run_qat.py`` knows: model class, columns, preprocessing, collator, metrics.

Each task checks its columns before anything is trained and raises [`TaskDataError`] naming what it
found and what it expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .metrics import load_metric

__all__ = ["TASKS", "TaskDataError", "Task", "get_task"]


class TaskDataError(ValueError):
    """The dataset does not have what the task needs (columns, labels)."""


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, task: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise TaskDataError(f"{task}: the {what} column {wanted!r} is not in the dataset; its columns are {columns}")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise TaskDataError(
        f"{task}: no {what} column found; expected one of {list(candidates)} (or name it with --{what.replace(' ', '_')}_column). "
        f"The dataset's columns are {columns}"
    )


def _label_names(dataset, column: str) -> list[str]:
    feature = dataset.features[column]
    names = getattr(feature, "names", None)
    if names is None and hasattr(feature, "feature"):
        names = getattr(feature.feature, "names", None)
    if names:
        return list(names)
    values = dataset[column]
    flat = [v for row in values for v in row] if values and isinstance(values[0], list) else values
    return [str(v) for v in sorted(set(flat))]


@dataclass
class Task:
    """What a task needs; see the module docstring."""

    name: str
    auto_class: str
    main_metric: str
    prepare: Callable[..., Any]

    def model_class(self):
        import transformers

        return getattr(transformers, self.auto_class)


# -- text classification ----------------------------------------------------------------------
_TEXT_PAIRS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"), ("question1", "question2"))


def _prepare_text_classification(datasets, tokenizer, args):
    train = datasets["train"]
    columns = list(train.column_names)
    label_col = _pick(columns, args.label_column, ("label", "labels"), "label", "text-classification")
    if args.text_column is not None:
        text_cols = [c.strip() for c in args.text_column.split(",")]
        for c in text_cols:
            _pick(columns, c, (), "text", "text-classification")
    else:
        pair = next((p for p in _TEXT_PAIRS if p[0] in columns and p[1] in columns), None)
        text_cols = (
            list(pair)
            if pair
            else [_pick(columns, None, ("sentence", "text", "review", "content"), "text", "text-classification")]
        )
    names = _label_names(train, label_col)
    label_to_id = None if getattr(train.features[label_col], "names", None) else {v: i for i, v in enumerate(names)}

    def encode(batch):
        texts = [batch[c] for c in text_cols]
        enc = tokenizer(*texts, truncation=True, max_length=args.max_seq_length)
        labels = batch[label_col]
        enc["labels"] = [label_to_id[str(v)] for v in labels] if label_to_id else labels
        return enc

    out = {split: ds.map(encode, batched=True, remove_columns=ds.column_names) for split, ds in datasets.items()}
    from transformers import DataCollatorWithPadding

    accuracy, f1 = load_metric("accuracy"), load_metric("f1")

    def compute_metrics(p):
        preds = np.asarray(p.predictions).argmax(-1)
        result = accuracy.compute(predictions=preds, references=p.label_ids)
        result.update(f1.compute(predictions=preds, references=p.label_ids, average="binary" if len(names) == 2 else "macro"))
        return result

    return (
        out,
        DataCollatorWithPadding(tokenizer),
        compute_metrics,
        {"num_labels": len(names), "id2label": dict(enumerate(names))},
    )


# -- token classification ---------------------------------------------------------------------
def _prepare_token_classification(datasets, tokenizer, args):
    train = datasets["train"]
    columns = list(train.column_names)
    tokens_col = _pick(columns, args.text_column, ("tokens", "words"), "text", "token-classification")
    tags_col = _pick(columns, args.label_column, ("ner_tags", "tags", "labels", "label"), "label", "token-classification")
    first = train[0][tokens_col]
    if not isinstance(first, list):
        raise TaskDataError(f"token-classification: column {tokens_col!r} must hold lists of words, found {type(first).__name__}")
    names = _label_names(train, tags_col)
    label_to_id = (
        None
        if getattr(getattr(train.features[tags_col], "feature", None), "names", None)
        else {v: i for i, v in enumerate(names)}
    )
    if not getattr(tokenizer, "is_fast", False):
        raise TaskDataError("token-classification needs a fast tokenizer (word_ids); this model's tokenizer is not one")

    def encode(batch):
        enc = tokenizer(batch[tokens_col], truncation=True, max_length=args.max_seq_length, is_split_into_words=True)
        all_labels = []
        for i, tags in enumerate(batch[tags_col]):
            ids = [label_to_id[str(t)] for t in tags] if label_to_id else tags
            previous, labels = None, []
            for word in enc.word_ids(i):
                labels.append(-100 if word is None or word == previous else ids[word])
                previous = word
            all_labels.append(labels)
        enc["labels"] = all_labels
        return enc

    out = {split: ds.map(encode, batched=True, remove_columns=ds.column_names) for split, ds in datasets.items()}
    from transformers import DataCollatorForTokenClassification

    seqeval = load_metric("seqeval")

    def compute_metrics(p):
        preds = np.asarray(p.predictions).argmax(-1)
        refs, hyps = [], []
        for pred, lab in zip(preds, p.label_ids):
            keep = lab != -100
            refs.append([names[int(x)] for x in lab[keep]])
            hyps.append([names[int(x)] for x in pred[keep]])
        r = seqeval.compute(predictions=hyps, references=refs)
        return {
            "precision": r["overall_precision"],
            "recall": r["overall_recall"],
            "f1": r["overall_f1"],
            "accuracy": r["overall_accuracy"],
        }

    return (
        out,
        DataCollatorForTokenClassification(tokenizer),
        compute_metrics,
        {"num_labels": len(names), "id2label": dict(enumerate(names))},
    )


# -- image classification ---------------------------------------------------------------------
def _prepare_image_classification(datasets, processor, args):
    import datasets as hf_datasets

    train = datasets["train"]
    columns = list(train.column_names)
    image_col = _pick(columns, args.image_column, ("image", "img", "pixel_values"), "image", "image-classification")
    label_col = _pick(columns, args.label_column, ("label", "labels"), "label", "image-classification")
    names = _label_names(train, label_col)
    label_to_id = None if getattr(train.features[label_col], "names", None) else {v: i for i, v in enumerate(names)}

    def cast(ds):
        if not isinstance(ds.features[image_col], hf_datasets.Image):
            ds = ds.cast_column(image_col, hf_datasets.Image())
        return ds

    def encode(batch):
        images = [im.convert("RGB") for im in batch[image_col]]
        enc = processor(images=images, return_tensors="np")
        labels = batch[label_col]
        return {
            "pixel_values": list(enc["pixel_values"]),
            "labels": [label_to_id[str(v)] for v in labels] if label_to_id else labels,
        }

    out = {split: cast(ds).map(encode, batched=True, remove_columns=ds.column_names) for split, ds in datasets.items()}
    from transformers import DefaultDataCollator

    accuracy = load_metric("accuracy")

    def compute_metrics(p):
        return accuracy.compute(predictions=np.asarray(p.predictions).argmax(-1), references=p.label_ids)

    return out, DefaultDataCollator(), compute_metrics, {"num_labels": len(names), "id2label": dict(enumerate(names))}


# -- causal language modelling ----------------------------------------------------------------
def _prepare_causal_lm(datasets, tokenizer, args):
    train = datasets["train"]
    text_col = _pick(list(train.column_names), args.text_column, ("text", "content", "sentence"), "text", "causal-lm")
    block = args.max_seq_length

    def tokenize(batch):
        return tokenizer(batch[text_col])

    def group(batch):
        ids = [t for row in batch["input_ids"] for t in row]
        total = (len(ids) // block) * block
        chunks = [ids[i : i + block] for i in range(0, total, block)]
        return {"input_ids": chunks, "attention_mask": [[1] * block for _ in chunks], "labels": [list(c) for c in chunks]}

    out = {}
    for split, ds in datasets.items():
        tok = ds.map(tokenize, batched=True, remove_columns=ds.column_names)
        out[split] = tok.map(group, batched=True, remove_columns=tok.column_names)
        if len(out[split]) == 0:
            raise TaskDataError(f"causal-lm: the {split} split has fewer than {block} tokens; lower --max_seq_length or add text")
    from transformers import default_data_collator

    def compute_metrics(p):
        return {}

    return out, default_data_collator, compute_metrics, {}


def perplexity(metrics: dict[str, float], loss_key: str) -> float | None:
    loss = metrics.get(loss_key)
    return None if loss is None else float(math.exp(min(loss, 50.0)))


TASKS: dict[str, Task] = {
    "text-classification": Task(
        "text-classification", "AutoModelForSequenceClassification", "accuracy", _prepare_text_classification
    ),
    "token-classification": Task("token-classification", "AutoModelForTokenClassification", "f1", _prepare_token_classification),
    "image-classification": Task(
        "image-classification", "AutoModelForImageClassification", "accuracy", _prepare_image_classification
    ),
    "causal-lm": Task("causal-lm", "AutoModelForCausalLM", "perplexity", _prepare_causal_lm),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise TaskDataError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]
