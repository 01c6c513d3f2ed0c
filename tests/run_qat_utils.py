"""Helpers of the run_qat tests: tiny models saved to disk, data files, the script loaded as a module."""

import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(40)] + ["good", "bad", "paris", "london", "alice", "bob", "the", "is", "in"]


def load_script():
    spec = importlib.util.spec_from_file_location("run_qat", ROOT / "scripts" / "run_qat.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_qat"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def save_tokenizer(path: Path):
    from transformers import BertTokenizerFast

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)})
    assert tok("w1 good")["input_ids"] == [2, 6, 45, 3]
    tok.save_pretrained(path)
    return tok


def tiny_text_model(path: Path, arch: str = "bert"):
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    path.mkdir(parents=True, exist_ok=True)
    tok = save_tokenizer(path)
    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64))
    else:
        model = BertForMaskedLM(
            BertConfig(
                vocab_size=len(tok),
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
            )
        )
    model.save_pretrained(path)
    return path


def causal_lm_files(folder: Path) -> tuple[str, str]:
    """Train and validation JSONL files of a causal-LM run (24 texts of 30 words: 20 to train, 4 to validate)."""
    text = [{"text": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(30))} for i in range(24)]
    return write_jsonl(folder / "train.jsonl", text[:20]), write_jsonl(folder / "valid.jsonl", text[20:])


def write_jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def common(out):
    return [
        "--output_dir",
        str(out),
        "--num_train_epochs",
        "1",
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "8",
        "--learning_rate",
        "1e-3",
        "--max_seq_length",
        "16",
        "--num_calibration_samples",
        "16",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--latency_runs",
        "2",
        "--disable_tqdm",
        "true",
        "--use_cpu",
        "true",
    ]


def sentences(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [WORDS[int(j)] for j in torch.randint(0, 40, (5,), generator=g)]
        rows.append({"sentence": " ".join(["good" if label else "bad", *words]), "label": label})
    return rows


def check_outputs(out: Path, results: dict):
    for name in (
        "model.safetensors",
        "config.json",
        "compression_state.json",
        "nncf_config.json",
        "model.onnx",
        "openvino_model.xml",
        "openvino_model.bin",
        "README.md",
        "qat_results.json",
    ):
        assert (out / name).exists(), name
    # one ONNX file for ONNX clients to find (the FP32 reference is measured, not saved)
    assert [p.relative_to(out).as_posix() for p in out.rglob("*.onnx")] == ["model.onnx"]
    ov = results["openvino"]
    assert ov["checks"]["f32"]["ok"] and ov["checks"]["f32"]["top1_agreement"] >= 0.9
    assert ov["integer_weight_constants"] >= ov["onnx_integer_weights"] > 0
    assert {"f32", "default"} == set(ov["checks"])
    timings = results["timings_s"]  # every phase timed, in run order, summing to about the total
    assert list(timings)[:2] == ["load", "fp32_evaluation"] or list(timings)[:2] == ["load", "fp32_finetune"]
    assert {"compression", "training", "onnx_export", "openvino", "layer_report", "card", "total"} <= set(timings)
    assert 0.8 * timings["total"] <= sum(v for k, v in timings.items() if k != "total") <= timings["total"]
    steps = results["step_times_s"]  # the Trainer's own optimizer-step times, one per step
    assert len(steps["qat"]) >= 1 and sum(steps["qat"]) <= timings["training"]
    if "fp32_finetune" in timings:
        assert len(steps["fp32"]) >= 1 and sum(steps["fp32"]) <= timings["fp32_finetune"]
    rows = results["layer_report"]["rows"]
    assert rows and all(r["scope"] for r in rows)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "hf_qat"
    assert results["onnx_file_size"]["int8"] < results["onnx_file_size"]["fp32"]
    card = (out / "README.md").read_text()
    assert "base_model_relation" not in card or "quantized" in card
    assert "hf_qat" in card and "## Quantization scheme" in card
