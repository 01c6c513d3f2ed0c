"""Two CPU processes over gloo: merged calibration, identical quantizers on every rank."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from testing_utils import inputs_of, quant_config, text_batches, tiny_bert

from hf_qat import DistributedError, NNCFConfig, create_compressed_model, register_default_init_args

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_ranks(out: Path, *worker_args: str) -> None:
    """Run dist_worker.py in 2 CPU processes with torch's launcher (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(HERE / "dist_worker.py"),
        str(out),
        *worker_args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_ranks_merge_statistics_and_stay_identical(tmp_path):
    out = tmp_path / "dist"
    launch_two_ranks(out)
    assert json.loads((out / "world.json").read_text()) == {"world_size": 2, "backend": "gloo"}

    # every quantizer tensor identical on both ranks after training
    r0, r1 = load_file(out / "trained_rank0.safetensors"), load_file(out / "trained_rank1.safetensors")
    assert set(r0) == set(r1) and len(r0) > 50
    assert [k for k in r0 if not torch.equal(r0[k], r1[k])] == []

    # merged ranges == those of one process that saw both ranks' calibration data
    both = [inputs_of(b) for b in text_batches(n=2, seed=100)] + [inputs_of(b) for b in text_batches(n=2, seed=101)]
    config = register_default_init_args(
        NNCFConfig.from_dict(quant_config(initializer={"range": {"num_init_samples": 16, "type": "mean_min_max"}})), both
    )
    ctrl, _ = create_compressed_model(tiny_bert(), config)
    merged = load_file(out / "after_init.safetensors")
    for qid, q in ctrl.quantizers.items():
        for name, t in list(q.named_parameters(recurse=False)) + list(q.named_buffers(recurse=False)):
            torch.testing.assert_close(merged[f"{qid}::{name}"], t.detach(), rtol=1e-6, atol=0, msg=f"{qid}::{name}")
    # and they differ from what rank 0's data alone gives
    only0 = register_default_init_args(
        NNCFConfig.from_dict(quant_config(initializer={"range": {"num_init_samples": 8, "type": "mean_min_max"}})),
        [inputs_of(b) for b in text_batches(n=2, seed=100)],
    )
    ctrl0, _ = create_compressed_model(tiny_bert(), only0)
    differs = [
        qid for qid, q in ctrl0.activation_quantizers.items() if not torch.equal(q.scale.detach(), merged[f"{qid}::scale"])
    ]
    assert differs


def test_distributed_needs_a_process_group():
    batches = [inputs_of(b) for b in text_batches()]
    ctrl, _ = create_compressed_model(tiny_bert(), register_default_init_args(NNCFConfig.from_dict(quant_config()), batches))
    with pytest.raises(DistributedError, match="init_process_group"):
        ctrl.distributed()


@pytest.mark.slow
def test_ranks_with_different_configs_fail_clearly(tmp_path):
    out = tmp_path / "dist"
    launch_two_ranks(out, "mismatch")
    for r in (0, 1):
        message = (out / f"error_rank{r}.txt").read_text()
        assert message.startswith("DistributedError") and "BertPooler" in message, message
