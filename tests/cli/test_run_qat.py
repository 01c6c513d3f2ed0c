"""scripts/run_qat.py end to end on tiny models saved to disk (every task), bad input, the default run."""

import json
import os
import sys

import pytest
import torch
from run_qat_utils import (
    ROOT,
    causal_lm_files,
    check_outputs,
    common,
    load_script,
    save_tokenizer,
    sentences,
    tiny_text_model,
    write_jsonl,
)


def test_text_classification_pairs_from_files(tmp_path):
    run_qat = load_script()
    model = tiny_text_model(tmp_path / "model")
    rows = [{"sentence1": r["sentence"], "sentence2": "the w1 is w2", "label": r["label"]} for r in sentences(48)]
    train = write_jsonl(tmp_path / "train.jsonl", rows[:32])
    valid = write_jsonl(tmp_path / "valid.jsonl", rows[32:])
    out = tmp_path / "out"
    results = run_qat.main(
        [
            "--model_name",
            str(model),
            "--task",
            "text-classification",
            "--train_file",
            train,
            "--validation_file",
            valid,
            *common(out),
        ]
    )
    check_outputs(out, results)
    v = results["values"]
    assert v["fp32"] is not None and v["int8"] is not None and abs(v["int8"] - v["int8_onnx"]) <= 1 / 16
    assert results["quantizers"]["weights"] == 17  # 3 embeddings + 12 layer linears + pooler + classifier


def test_token_classification(tmp_path):
    run_qat = load_script()
    model = tiny_text_model(tmp_path / "model")
    rows = []
    for i in range(40):
        rows.append({"tokens": ["alice", "bob", "is", "in", "paris", f"w{i % 40}"], "ner_tags": [1, 2, 0, 0, 3, 0]})
    train = write_jsonl(tmp_path / "train.jsonl", rows[:32])
    valid = write_jsonl(tmp_path / "valid.jsonl", rows[32:])
    out = tmp_path / "out"
    results = run_qat.main(
        [
            "--model_name",
            str(model),
            "--task",
            "token-classification",
            "--train_file",
            train,
            "--validation_file",
            valid,
            *common(out),
        ]
    )
    check_outputs(out, results)
    assert results["metric"] == "f1" and results["values"]["int8_onnx"] is not None
    config = json.loads((out / "config.json").read_text())
    assert len(config["id2label"]) == len(set(t for r in rows for t in r["ner_tags"]))


def test_causal_lm(tmp_path):
    run_qat = load_script()
    model = tiny_text_model(tmp_path / "model", arch="gpt2")
    train, valid = causal_lm_files(tmp_path)
    out = tmp_path / "out"
    results = run_qat.main(
        ["--model_name", str(model), "--task", "causal-lm", "--train_file", train, "--validation_file", valid, *common(out)]
    )
    check_outputs(out, results)
    v = results["values"]
    assert results["metric"] == "perplexity" and v["fp32"] > 1 and v["int8_onnx"] == pytest.approx(v["int8"], rel=0.05)


def test_image_classification(tmp_path):
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    run_qat = load_script()
    mdir = tmp_path / "model"
    torch.manual_seed(0)
    ViTForImageClassification(
        ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    ).save_pretrained(mdir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(mdir)
    rows = []
    for i in range(24):
        label = i % 2
        img = Image.new("RGB", (40, 40), (200, 30, 30) if label else (30, 30, 200))
        p = tmp_path / f"img{i}.png"
        img.save(p)
        rows.append({"image": str(p), "label": label})
    train = write_jsonl(tmp_path / "train.jsonl", rows[:16])
    valid = write_jsonl(tmp_path / "valid.jsonl", rows[16:])
    out = tmp_path / "out"
    results = run_qat.main(
        [
            "--model_name",
            str(mdir),
            "--task",
            "image-classification",
            "--train_file",
            train,
            "--validation_file",
            valid,
            *common(out),
        ]
    )
    check_outputs(out, results)
    assert results["values"]["int8_onnx"] is not None


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "summarization"], "unknown task 'summarization'"),
        (["--label_column", "stars"], "label column 'stars' is not in the dataset"),
        (["--text_column", "body"], "text column 'body' is not in the dataset"),
        (["--resume_from_checkpoint", "/nonexistent/checkpoint-5"], "is not a directory"),
    ],
)
def test_bad_input_is_reported_before_training(tmp_path, extra, message):
    run_qat = load_script()
    model = tiny_text_model(tmp_path / "model")
    train = write_jsonl(tmp_path / "train.jsonl", sentences(16))
    out = tmp_path / "out"
    args = ["--model_name", str(model), "--train_file", train, *common(out), *extra]
    if "--task" not in extra:
        args += ["--task", "text-classification"]
    with pytest.raises(run_qat.RunError) as err:
        run_qat.main(args)
    assert message in str(err.value)
    assert not out.exists() or not any(out.iterdir())


def test_unreachable_model_and_missing_head(tmp_path):
    run_qat = load_script()
    train = write_jsonl(tmp_path / "train.jsonl", sentences(16))
    with pytest.raises(run_qat.RunError, match="hub could not be reached|not a local directory"):
        run_qat.main(["--model_name", "nobody/not-a-model", "--train_file", train, *common(tmp_path / "o")])
    rows = [{"tokens": ["alice"], "ner_tags": [0]}] * 8
    tok_train = write_jsonl(tmp_path / "tok.jsonl", rows)
    # a model type without a token-classification head is refused by name
    from transformers import CLIPTextConfig, CLIPTextModel

    clip = tmp_path / "clip"
    CLIPTextModel(
        CLIPTextConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    ).save_pretrained(clip)
    save_tokenizer(clip)
    with pytest.raises(run_qat.RunError, match="has no model class for task token-classification"):
        run_qat.main(
            ["--model_name", str(clip), "--task", "token-classification", "--train_file", tok_train, *common(tmp_path / "o2")]
        )


def test_push_to_hub_without_token_fails_at_start(tmp_path, monkeypatch):
    run_qat = load_script()
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    train = write_jsonl(tmp_path / "train.jsonl", sentences(16))
    model = tiny_text_model(tmp_path / "model")
    with pytest.raises(run_qat.RunError, match="--push_to_hub needs a token"):
        run_qat.main(
            [
                "--model_name",
                str(model),
                "--train_file",
                train,
                "--push_to_hub",
                "true",
                "--hub_model_id",
                "me/x",
                *common(tmp_path / "o"),
            ]
        )


@pytest.mark.slow
def test_builtin_default_run(tmp_path):
    """The README's first command (python scripts/run_qat.py), with only the output folder moved."""
    run_qat = load_script()
    out = tmp_path / "qat_output"
    results = run_qat.main(["--output_dir", str(out)])
    check_outputs(out, results)
    v = results["values"]
    assert results["train_samples"] + results["eval_samples"] == 198
    assert v["fp32"] >= 0.8 and v["int8_onnx"] >= v["fp32"] - 0.1
    card = (out / "README.md").read_text()
    # the packaged copy of the hub model: its hub id and its own card's license, never the local path
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card and "license: apache-2.0" in card
    assert "site-packages" not in card and "<user>" not in card
    assert "OVModelForSequenceClassification" in card and "![" in card and (out / "sqnr.png").is_file()


@pytest.mark.slow
def test_launched_processes_without_use_cpu_form_one_group(tmp_path):
    """Two processes started by a launcher (torchrun, as ``accelerate launch --multi_gpu`` does) on a machine without
    GPUs, without --use_cpu: before, each saw world_size 1 and they trained side by side into one output_dir; now
    they join one gloo group."""
    import socket
    import subprocess

    from hf_qat.transformers.trainer import _has_accelerator

    if _has_accelerator():
        pytest.skip("this machine has a GPU: the launcher's processes use it")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "args.py"
    script.write_text(
        "import os\n"
        "from hf_qat.transformers import QATTrainingArguments\n"
        f"a = QATTrainingArguments(output_dir={str(tmp_path / 'out')!r}, report_to=[])\n"
        f"with open(os.path.join({str(tmp_path)!r}, 'rank' + os.environ['RANK']), 'w') as f:\n"
        "    f.write(f\"{os.environ['RANK']} {a.world_size} {a.use_cpu}\")\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(port), str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each rank writes its own file (the two processes' stdout interleave)
    lines = sorted((tmp_path / f"rank{r}").read_text().split() for r in (0, 1))
    assert lines == [["0", "2", "True"], ["1", "2", "True"]], proc.stdout[-2000:]


def test_two_processes_then_resume_in_one(tmp_path):
    """run_qat.py under torchrun with 2 CPU ranks (gloo); its checkpoint resumes in a single process."""
    import socket
    import subprocess

    model = tiny_text_model(tmp_path / "model")
    rows = sentences(48)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:32])
    valid = write_jsonl(tmp_path / "valid.jsonl", rows[32:])
    out = tmp_path / "out"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = common(out) + ["--save_strategy", "steps", "--save_steps", "2", "--num_train_epochs", "2"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(ROOT / "scripts" / "run_qat.py"),
        "--model_name",
        str(model),
        "--train_file",
        train,
        "--validation_file",
        valid,
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "qat_results.json").read_text())
    assert results["world_size"] == 2
    check_outputs(out, results)
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints and (checkpoints[0] / "compression_state.json").exists()

    run_qat = load_script()
    resumed = run_qat.main(
        [
            "--model_name",
            str(model),
            "--train_file",
            train,
            "--validation_file",
            valid,
            *common(tmp_path / "single"),
            "--num_train_epochs",
            "2",
            "--resume_from_checkpoint",
            str(checkpoints[0]),
        ]
    )
    assert resumed["world_size"] == 1 and resumed["values"]["int8_onnx"] is not None

    # and in two processes again
    again = tmp_path / "again"
    cmd2 = [c if c != str(out) else str(again) for c in cmd] + ["--resume_from_checkpoint", str(checkpoints[0])]
    cmd2[cmd2.index("--master_port") + 1] = str(port + 1 if port < 65000 else port - 1)
    proc = subprocess.run(cmd2, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((again / "qat_results.json").read_text())["world_size"] == 2


def test_one_argument_set_for_both_frameworks(tmp_path):
    """--framework is an ordinary flag: values equal to 'tf' elsewhere stay arguments; the built-in defaults
    are the chosen framework's; unknown flags and frameworks are errors naming them."""
    from hf_qat.cli import RunError, parse_args

    framework, (model_args, data_args, qat_args, run_args), builtin = parse_args(
        [
            "--framework",
            "tf",
            "--output_dir",
            "tf",
            "--model_name",
            "x",
            "--train_file",
            "tf",
            "--per_device_train_batch_size",
            "4",
        ]
    )
    assert framework == "tf" and not builtin and qat_args.output_dir == "tf" and data_args.train_file == "tf"
    assert model_args.model_name == "x" and run_args.per_device_train_batch_size == 4
    framework, (model_args, data_args, training_args), builtin = parse_args(["--output_dir", str(tmp_path)])
    assert framework == "pt" and builtin and training_args.output_dir == str(tmp_path)
    assert data_args.train_file == "<builtin:reviews>" and training_args.save_strategy == "no"
    _, (_, _, tf_args, _), builtin = parse_args(["--framework", "keras"])
    assert builtin and tf_args.output_dir == "qat_output_tf"
    with pytest.raises(RunError, match="--framework 'jax'"):
        parse_args(["--framework", "jax"])
    with pytest.raises(SystemExit):  # argparse: unrecognized arguments (a TrainingArguments flag on the TF path)
        parse_args(["--framework", "tf", "--model_name", "x", "--train_file", "f", "--gradient_accumulation_steps", "2"])


@pytest.mark.parametrize("source", ["nncf2", "nncf3"])
def test_continue_qat_from_an_nncf_checkpoint(tmp_path, source):
    """--nncf_checkpoint: QAT continues from what NNCF 2.19 / 3.4 saved (fixtures), with its quantizers and ranges."""
    import sys

    from safetensors.torch import load_file

    fixtures = ROOT / "tests" / "fixtures" / "nncf_interop"
    sys.path.insert(0, str(ROOT / "scripts" / "nncf_interop"))
    from common import build

    run_qat = load_script()
    model_dir = tmp_path / "model"
    save_tokenizer(model_dir)
    build("bert").save_pretrained(model_dir)  # the architecture NNCF quantized (fresh weights: the checkpoint's are used)
    if source == "nncf2":
        ckpt = fixtures / "nncf2_bert.pth"
        expected = 45
    else:
        ckpt = tmp_path / "nncf3.pth"  # the layout of NNCF 3's QAT example: {"state_dict", "compression_config"}
        config = json.loads((fixtures / "nncf3_bert_config.json").read_text())
        torch.save({"state_dict": load_file(fixtures / "nncf3_bert_state.safetensors"), "compression_config": config}, ckpt)
        expected = len(config["compression_state"])
    rows = sentences(48)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:32])
    valid = write_jsonl(tmp_path / "valid.jsonl", rows[32:])
    out = tmp_path / "out"
    args = ["--model_name", str(model_dir), "--train_file", train, "--validation_file", valid, "--nncf_checkpoint", str(ckpt)]
    results = run_qat.main([*args, *common(out)])
    check_outputs(out, results)
    assert results["quantizers"]["weights"] + results["quantizers"]["activations"] == expected
    v = results["values"]
    assert abs(v["int8"] - v["int8_onnx"]) <= 1 / 16
    with pytest.raises(run_qat.RunError, match="finetune_fp32_epochs"):
        run_qat.main([*args, *common(tmp_path / "out2"), "--finetune_fp32_epochs", "1"])
