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


class Worker:
    """A suite module running in a child process (see :func:`start_worker`); :meth:`result` waits for it."""

    def __init__(self, module: str, args: list[str], python, env, log):
        self.module = module
        self._tmp = tempfile.TemporaryDirectory(prefix="hf_qat_bench_")
        self._out = Path(self._tmp.name) / "result.json"
        cmd = [str(python or sys.executable), "-m", f"scripts.benchmarks.{module}", *args, "--json", str(self._out)]
        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env["MALLOC_MMAP_THRESHOLD_"] = "65536"
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")]))
        child_env.setdefault("HF_HUB_OFFLINE", "1")
        child_env.setdefault("TOKENIZERS_PARALLELISM", "false")
        log(f"  $ {' '.join(cmd[1:])}")
        self._proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )

    def result(self, timeout: float = 1800) -> dict:
        """Wait for the child and return its JSON; :class:`WorkerError` on failure or timeout."""
        proc = self._proc
        try:
            try:
                output, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                output, _ = proc.communicate()
                raise WorkerError(f"{self.module} ran past {timeout:.0f} s; last output:\n{_tail(output)}") from None
            if proc.returncode != 0 or not self._out.exists():
                raise WorkerError(f"{self.module} failed (exit {proc.returncode}); last output:\n{_tail(output)}")
            return json.loads(self._out.read_text())
        finally:
            self._tmp.cleanup()

    def kill(self) -> None:
        """Stop the child and its process group (no result)."""
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.communicate()
        self._tmp.cleanup()


def start_worker(
    module: str,
    args: list[str],
    *,
    python: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    log=print,
) -> Worker:
    """Start ``python -m scripts.benchmarks.<module> <args> --json <tmp>`` and return at once.

    The child gets ``MALLOC_MMAP_THRESHOLD_=65536`` (freed tensors return to the system, so peak
    memory per step is measurable) and the repository on ``PYTHONPATH``; it runs in its own
    process group, killed whole on timeout.
    """
    return Worker(module, args, python, env, log)


def run_worker(
    module: str,
    args: list[str],
    *,
    python: str | os.PathLike | None = None,
    timeout: float = 1800,
    env: dict[str, str] | None = None,
    log=print,
) -> dict:
    """:func:`start_worker` and wait: returns the parsed JSON the child wrote."""
    return start_worker(module, args, python=python, env=env, log=log).result(timeout)


def _tail(text: str | None, lines: int = 15) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])
