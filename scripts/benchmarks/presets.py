"""Run sizes of the suite: ``full`` (BENCHMARKS.md, under 100 minutes on 2 CPU cores, about 70 once the
fine-tuned FP32 model is cached), ``quick`` (a
few minutes, fewer steps) and ``smoke`` (tiny random models, seconds; used by the test suite)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .accuracy import AccuracyConfig
from .runs import RunsConfig
from .scaling import ScalingConfig

TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 2}


@dataclass
class TrainingConfig:
    """Section 1: ``models`` are ``(name, label, {overrides}, (steps, warmup) or None for the defaults)``."""

    models: tuple = (
        ("minilm", "all-MiniLM-L6-v2", {}, None),
        ("bert-base", "BERT-base config (random weights)", {}, (2, 1)),  # ~10 s per step on 2 cores
    )
    batch_size: int = 16
    seq_len: int = 128
    steps: int = 5
    warmup: int = 2
    calibration_samples: int = 32
    extra_threads: tuple = (2,)  # the first model again with these thread counts


@dataclass
class Preset:
    name: str
    training: TrainingConfig = field(default_factory=TrainingConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    inference_repeats: dict = field(default_factory=lambda: {1: 30, 32: 5})
    inference_batches: tuple = (1, 32)
    inference_seq_len: int = 128
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    runs: RunsConfig = field(default_factory=RunsConfig)


PRESETS = {
    "full": Preset("full"),
    "quick": Preset(
        "quick",
        training=TrainingConfig(models=(("minilm", "all-MiniLM-L6-v2", {}, None),), steps=3, warmup=1),
        # quick: the accuracy numbers only check the pipeline (too few steps to mean much)
        accuracy=AccuracyConfig(finetune_steps=60, qat_steps=20, calibration_samples=128),
        inference_repeats={1: 10, 32: 3},
        scaling=ScalingConfig(layers=(2, 6), hidden=(256, 384), seq_len=(64, 128), steps=2, warmup=1),
    ),
    "smoke": Preset(
        "smoke",
        training=TrainingConfig(
            models=(("bert", "tiny BERT (random weights)", TINY, None),),
            batch_size=4,
            seq_len=32,
            steps=2,
            warmup=1,
            calibration_samples=8,
            extra_threads=(),
        ),
        runs=RunsConfig(
            run_qat_args=[
                "--train_file",
                "<builtin:reviews>",
                "--finetune_fp32_epochs",
                "1",
                "--num_train_epochs",
                "1",
                "--max_train_samples",
                "32",
                "--max_eval_samples",
                "16",
                "--latency_runs",
                "2",
                "--max_seq_length",
                "32",
            ],
            repeats=1,
            tiny_model=True,
            eval_model="bert",
            eval_overrides=TINY,
            eval_batches=4,
            eval_batch_size=4,
            eval_max_len=32,
            calibration_samples=8,
        ),
        accuracy=AccuracyConfig(
            finetune_steps=3,
            qat_steps=2,
            qat_seeds=(0, 1),
            batch_size=8,
            calibration_samples=16,
            model="bert",
            model_overrides=TINY,
            train_max_length=32,
            eval_max_length=32,
            exporter="torchscript",
        ),
        inference_repeats={1: 2, 4: 2},
        inference_batches=(1, 4),
        inference_seq_len=32,
        scaling=ScalingConfig(
            layers=(1, 2),
            hidden=(32, 64),
            seq_len=(16, 32),
            base_layers=1,
            base_hidden=32,
            base_seq_len=16,
            batch_size=2,
            steps=1,
            warmup=1,
            calibration_samples=4,
        ),
    ),
}
