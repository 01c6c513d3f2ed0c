"""Run a suite module in a child process (this interpreter or NNCF's virtual environment) and read
the JSON it writes; failures come back as :class:`WorkerError` with the tail of its output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import REPO_ROOT


class WorkerError(RuntimeError):
    """A worker process failed or ran past its time limit."""


def run_worker(
    module: str,
    args: list[str],
    *,
    python: str | os.PathLike | None = None,
    timeout: float = 1800,
    env: dict[str, str] | None = None,
    log=print,
) -> dict:
    """``python -m scripts.benchmarks.<module> <args> --json <tmp>``; returns the parsed JSON.

    The child gets ``MALLOC_MMAP_THRESHOLD_=65536`` (freed tensors return to the system, so peak
    memory per step is measurable) and the repository on ``PYTHONPATH``. On timeout the child's
    whole process group is killed.
    """
    with tempfile.TemporaryDirectory(prefix="hf_qat_bench_") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [str(python or sys.executable), "-m", f"scripts.benchmarks.{module}", *args, "--json", str(out)]
        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env["MALLOC_MMAP_THRESHOLD_"] = "65536"
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")]))
        child_env.setdefault("HF_HUB_OFFLINE", "1")
        child_env.setdefault("TOKENIZERS_PARALLELISM", "false")
        log(f"  $ {' '.join(cmd[1:])}")
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            raise WorkerError(f"{module} ran past {timeout:.0f} s; last output:\n{_tail(output)}") from None
        if proc.returncode != 0 or not out.exists():
            raise WorkerError(f"{module} failed (exit {proc.returncode}); last output:\n{_tail(output)}")
        return json.loads(out.read_text())


def _tail(text: str | None, lines: int = 15) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])
