"""FSDP2 under accelerate on 2 CPU processes (gloo), compared with DDP on the same data.

The launches use the repository's accelerate config (scripts/accelerate/fsdp_cpu.yaml; fsdp.yaml on GPUs through
scripts/accelerate/gpu_check.sh) and tests/transformers/fsdp_worker.py; DDP runs the same worker under torchrun.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from testing_utils import quant_config, tiny_bert, tiny_gpt2, tiny_text_dataset

from hf_qat import DistributedError

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "fsdp_worker.py"
# scripts/accelerate/gpu_check.sh runs these tests with the GPU config (fsdp.yaml) on a machine with 2+ GPUs
FSDP_CONFIG = ROOT / os.environ.get("HF_QAT_FSDP_CONFIG", "scripts/accelerate/fsdp_cpu.yaml")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def fsdp_command(script: Path, processes: int = 2) -> list[str]:
    """``accelerate launch --config_file scripts/accelerate/fsdp_cpu.yaml`` with ``processes`` processes."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(FSDP_CONFIG),
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(_port()),
        str(script),
    ]


def ddp_command(script: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"] + [
        "--master_port",
        str(_port()),
        str(script),
    ]


def run(cmd: list[str], timeout: int = 600) -> None:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, "\n".join(line for line in proc.stderr.splitlines() if "[rank1]" not in line)[-6000:]


def ranks(out: Path, n: int = 2) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each model trained 4 steps under FSDP and under DDP (2 processes each)."""
    root = tmp_path_factory.mktemp("fsdp")
    for kind in ("bert", "gpt2"):
        run(fsdp_command(WORKER) + [str(root / f"fsdp_{kind}"), kind, "4"])
        run(ddp_command(WORKER) + [str(root / f"ddp_{kind}"), kind, "4"])
    return root


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_fsdp_steps_equal_ddp_steps(runs, kind):
    fsdp, ddp = runs / f"fsdp_{kind}", runs / f"ddp_{kind}"
    assert [(r["world_size"], r["fsdp"]) for r in ranks(fsdp)] == [(2, True), (2, True)]
    assert [(r["world_size"], r["fsdp"]) for r in ranks(ddp)] == [(2, False), (2, False)]
    torch.testing.assert_close(ranks(fsdp)[0]["losses"], ranks(ddp)[0]["losses"], rtol=1e-5, atol=1e-6)
    assert len(ranks(fsdp)[0]["losses"]) == 4

    # activation quantizers sharded with the block that uses them; outside any block: the root unit
    f0, d0 = ranks(fsdp)[0], ranks(ddp)[0]
    outside = {"bert": 2, "gpt2": 1}[kind]  # BERT: pooler and classifier inputs; GPT-2: lm_head input
    assert (f0["in_blocks"], f0["in_root"]) == (f0["activation_quantizers"] - outside, outside)
    assert (d0["in_blocks"], d0["in_root"]) == (0, d0["activation_quantizers"])
    # each process holds half of the parameters and optimizer state (DDP: all of it)
    for key in ("local_parameter_bytes", "local_optimizer_bytes"):
        assert 0.49 < f0[key] / d0[key] < 0.52, (key, f0[key], d0[key])

    # the gathered checkpoint holds the same tensors as DDP's, within float tolerance
    a, b = load_file(fsdp / "final" / "model.safetensors"), load_file(ddp / "final" / "model.safetensors")
    assert set(a) == set(b) and any(k.endswith("weight_quantizer.scale") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert any(not torch.equal(a[key], tiny_state(kind)[key]) for key in tiny_state(kind))  # it trained

    # quantizer state: identical on every rank (gathered from the shards), and equal to DDP's
    q0, q1 = (load_file(fsdp / f"quantizers_rank{r}.safetensors") for r in (0, 1))
    assert set(q0) == set(q1) and len(q0) > 50
    assert [k for k in q0 if not torch.equal(q0[k], q1[k])] == []
    ddp_q = load_file(ddp / "quantizers_rank0.safetensors")
    for key in q0:
        torch.testing.assert_close(q0[key], ddp_q[key], rtol=1e-5, atol=1e-6, msg=key)


def tiny_state(kind: str) -> dict:
    model = tiny_bert() if kind == "bert" else tiny_gpt2()
    return {k: v for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_gathered_checkpoint_loads_in_one_process(runs, kind):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    final = runs / f"fsdp_{kind}" / "final"
    auto = AutoModelForSequenceClassification if kind == "bert" else AutoModelForCausalLM
    model = auto.from_pretrained(final).eval()
    saved = load_file(final / "model.safetensors")
    state = model.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    assert len(model._hf_qat_ctrl.quantizers) > 20
    batch = tiny_text_dataset(n=4, seed=9)[:4]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(batch["input_ids"]), attention_mask=torch.tensor(batch["attention_mask"])).logits
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_sharded_checkpoint_resumes_exactly_and_in_another_process_count(runs, tmp_path):
    straight = runs / "fsdp_bert"
    checkpoint = straight / "checkpoint-2"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and (checkpoint / "optimizer_0").is_dir()
    assert not (checkpoint / "model.safetensors").exists()  # sharded, not gathered, during training
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "hf_qat" and (checkpoint / "compression_state.json").is_file()

    run(fsdp_command(WORKER) + [str(tmp_path / "two"), "bert", "4", str(checkpoint)])
    a, b = load_file(straight / "final" / "model.safetensors"), load_file(tmp_path / "two" / "final" / "model.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # same process count: bit for bit

    if FSDP_CONFIG.name == "fsdp.yaml" and torch.cuda.device_count() < 3:
        return  # a third process needs a third GPU
    run(fsdp_command(WORKER, processes=3) + [str(tmp_path / "three"), "bert", "4", str(checkpoint)])
    three = ranks(tmp_path / "three", 3)
    assert [r["world_size"] for r in three] == [3, 3, 3] and three[0]["global_step"] == 4
    # the first two steps are the checkpoint's (restored log); the next two ran on 3 processes
    assert three[0]["losses"][:2] == ranks(straight)[0]["losses"][:2] and len(three[0]["losses"]) == 4


@pytest.mark.slow
def test_gradient_checkpointing_under_fsdp_gives_the_same_training(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("FSDP_WORKER_CHECKPOINTING", "1")
    run(fsdp_command(WORKER) + [str(tmp_path / "gc"), "bert", "4"])
    a, b = (
        load_file(runs / "fsdp_bert" / "final" / "model.safetensors"),
        load_file(tmp_path / "gc" / "final" / "model.safetensors"),
    )
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.slow
def test_ranks_start_from_the_main_process_weights(runs, tmp_path, monkeypatch):
    """As DDP does at wrap time: rank 1's different weights are replaced by rank 0's, before calibration."""
    monkeypatch.setenv("FSDP_WORKER_PERTURB", "1")
    run(fsdp_command(WORKER) + [str(tmp_path / "perturbed"), "bert", "4"])
    a = load_file(runs / "fsdp_bert" / "final" / "model.safetensors")
    b = load_file(tmp_path / "perturbed" / "final" / "model.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.slow
def test_sharded_checkpoint_in_one_process_is_refused(runs, tmp_path):
    from hf_qat.transformers import QATTrainer, QATTrainingArguments

    args = QATTrainingArguments(output_dir=str(tmp_path), max_steps=4, report_to=[], use_cpu=True, nncf_config=quant_config())
    trainer = QATTrainer(model=tiny_bert(), args=args, train_dataset=tiny_text_dataset(n=16))
    with pytest.raises(DistributedError, match="holds FSDP shards.*--num_processes N"):
        trainer.train(resume_from_checkpoint=str(runs / "fsdp_bert" / "checkpoint-2"))


# -- start-up checks (no processes) --------------------------------------------------------------------------------


def _plugin(**kw):
    from accelerate.utils import FullyShardedDataParallelPlugin

    kw.setdefault("fsdp_version", 2)
    kw.setdefault("auto_wrap_policy", "transformer_based_wrap")
    return FullyShardedDataParallelPlugin(**kw)


def _compressed(model):
    from testing_utils import inputs_of, text_batches

    from hf_qat import NNCFConfig, create_compressed_model, register_default_init_args

    batches = [inputs_of(b) for b in text_batches(with_token_types=False)]
    _, model = create_compressed_model(model, register_default_init_args(NNCFConfig.from_dict(quant_config()), batches))
    return model


def test_block_classes_leave_out_units_that_hold_embeddings():
    from hf_qat.transformers.fsdp import block_classes, check_plugin

    bert = _compressed(tiny_bert())
    assert sorted(bert._no_split_modules) == ["BertEmbeddings", "BertLayer"]
    assert block_classes(bert) == ["BertLayer"]
    plugin = _plugin()
    check_plugin(plugin, bert)
    assert plugin.transformer_cls_names_to_wrap == ["BertLayer"]
    assert block_classes(_compressed(tiny_gpt2())) == ["GPT2Block"]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"fsdp_version": 1}, "fsdp_version is 1; hf_qat trains under FSDP2"),
        ({"cpu_offload": True}, "fsdp_offload_params is true"),
        ({"transformer_cls_names_to_wrap": ["GPT2Block"]}, "names 'GPT2Block', which is no module class of .*BertLayer"),
        ({"auto_wrap_policy": "size_based_wrap", "min_num_params": 0}, "quantizer\\(s\\) a unit of their own"),
        ({"mixed_precision_policy": "bf16"}, "casts every gathered parameter to torch.bfloat16"),
    ],
)
def test_unsupported_fsdp_setups_are_refused_before_sharding(kw, message):
    from hf_qat.transformers.fsdp import check_plugin

    with pytest.raises(DistributedError, match=message):
        check_plugin(_plugin(**kw), _compressed(tiny_bert()))


def test_the_repository_configs_ask_for_fsdp2_per_block():
    import yaml

    for name in ("fsdp_cpu.yaml", "fsdp.yaml"):
        config = yaml.safe_load((ROOT / "scripts" / "accelerate" / name).read_text())
        assert config["distributed_type"] == "FSDP" and config["use_cpu"] is (name == "fsdp_cpu.yaml")
        fsdp = config["fsdp_config"]
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT" and fsdp["fsdp_offload_params"] is False


@pytest.mark.slow
def test_run_qat_under_fsdp_trains_checkpoints_resumes_exports_and_pushes(hub, tmp_path):
    """The issue's command: ``accelerate launch --config_file scripts/accelerate/fsdp_cpu.yaml scripts/run_qat.py``."""
    import onnx
    from onnx import numpy_helper
    from run_qat_utils import check_outputs, common, sentences, tiny_text_model, write_jsonl
    from transformers import AutoModelForSequenceClassification

    from hf_qat.torch.export import export_onnx

    model = tiny_text_model(tmp_path / "model")
    rows = sentences(48)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:32])
    valid = write_jsonl(tmp_path / "valid.jsonl", rows[32:])
    out = tmp_path / "out"
    args = ["--model_name", str(model), "--train_file", train, "--validation_file", valid, *common(out)]
    args += ["--save_strategy", "steps", "--save_steps", "1", "--num_train_epochs", "2"]
    run(fsdp_command(ROOT / "scripts" / "run_qat.py") + args + ["--push_to_hub", "true", "--hub_model_id", "test-user/fsdp"])
    results = json.loads((out / "qat_results.json").read_text())
    assert results["world_size"] == 2 and results["parallelism"] == "fsdp2"
    check_outputs(out, results)
    assert (out / "checkpoint-1" / "pytorch_model_fsdp_0").is_dir()

    # the gathered checkpoint, loaded in this process, exports the same INT8 ONNX graph constants
    loaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    example = {"input_ids": torch.tensor([[2, 5, 6, 7, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    example["token_type_ids"] = torch.zeros(1, 5, dtype=torch.long)
    mine = export_onnx(loaded, tmp_path / "single" / "model.onnx", example)
    theirs = {i.name: numpy_helper.to_array(i) for i in onnx.load(out / "model.onnx").graph.initializer}
    ours = {i.name: numpy_helper.to_array(i) for i in onnx.load(mine.path).graph.initializer}
    int8 = [n for n, a in theirs.items() if a.dtype.name == "int8"]
    assert len(int8) >= 10 and set(theirs) == set(ours)
    assert [n for n in theirs if not (theirs[n].shape == ours[n].shape and (theirs[n] == ours[n]).all())] == []

    # pushed in one commit with the card; the push holds the gathered weights, not the shards
    files = hub.files("test-user/fsdp")
    assert {"model.safetensors", "compression_state.json", "model.onnx", "README.md"} <= set(files)
    assert not any("pytorch_model_fsdp" in f or f.endswith(".distcp") for f in files)

    # resume the sharded checkpoint in 2 processes
    again = tmp_path / "again"
    resumed = [a if a != str(out) else str(again) for a in args] + ["--resume_from_checkpoint", str(out / "checkpoint-2")]
    run(fsdp_command(ROOT / "scripts" / "run_qat.py") + resumed)
    assert json.loads((again / "qat_results.json").read_text())["parallelism"] == "fsdp2"
    # 32 rows, 8 per process and step, 2 epochs: 4 steps, the last 2 after the resumed checkpoint
    assert sorted(p.name for p in again.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    state = json.loads((again / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and (again / "model.onnx").is_file()
