"""NNCF 3.4 in its own virtual environment, created by the suite on first use.

The environment lives outside the repository (``~/.cache/hf_qat_bench/nncf-3.4`` unless
``--nncf_venv`` says otherwise) and sees this interpreter's packages (``--system-site-packages``),
so NNCF runs on the same torch and transformers as hf_qat. NNCF compiles its CPU extension on
first import (about 50 s on 2 cores) with torch's ``cpp_extension``, which guards the build with a
``lock`` file; a build killed half-way leaves that file behind and every later import waits on it
forever. The suite therefore builds the extension itself, in a build folder only it uses, under a
file lock of its own (so any ``lock`` file found there is stale and is removed), with a time limit.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

NNCF_VERSION = "3.4.0"
DEFAULT_CACHE = Path(os.environ.get("HF_QAT_BENCH_CACHE", Path.home() / ".cache" / "hf_qat_bench"))
DEFAULT_VENV = DEFAULT_CACHE / f"nncf-{NNCF_VERSION.rsplit('.', 1)[0]}"
BUILD_TIMEOUT_S = 900

_BUILD = (
    "from nncf.torch.quantization.extensions import QuantizedFunctionsCPULoader as L; L.load(); print('built', L.get_build_dir())"
)


@dataclass
class NncfEnv:
    """Where NNCF runs: ``python`` (``None`` when unavailable, with ``reason``) and its environment variables."""

    python: Path | None
    env: dict[str, str]
    reason: str | None = None
    version: str | None = None


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, start_new_session=True, check=False)


def _remove_stale_locks(build_root: Path, log) -> None:
    for lock in build_root.rglob("lock"):
        log(f"  removing stale extension build lock {lock} (left by an interrupted compile)")
        lock.unlink(missing_ok=True)


def prepare_nncf_env(venv: Path = DEFAULT_VENV, create: bool = True, log=print) -> NncfEnv:
    """Return a usable NNCF environment, creating it and building its extension if needed.

    Never raises for a missing or broken environment: the returned ``reason`` says why NNCF's rows
    are skipped.
    """
    venv = Path(venv)
    python = venv / "bin" / "python"
    build_root = venv.parent / "torch_extensions"
    env = {"TORCH_EXTENSIONS_DIR": str(build_root), "NNCF_EXTENSION_LOAD_TIMEOUT": "600"}
    if not python.exists():
        if not create:
            return NncfEnv(None, env, f"no NNCF virtual environment at {venv} (the suite creates it unless --no_nncf_setup)")
        log(f"  creating {venv} with nncf=={NNCF_VERSION} ...")
        try:
            venv.parent.mkdir(parents=True, exist_ok=True)
            _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], 300).check_returncode()
            r = _run([str(python), "-m", "pip", "install", "--quiet", f"nncf=={NNCF_VERSION}"], 900)
            if r.returncode != 0:
                return NncfEnv(None, env, f"pip install nncf=={NNCF_VERSION} failed: {(r.stderr or r.stdout).strip()[-300:]}")
        except (OSError, subprocess.SubprocessError) as e:
            return NncfEnv(None, env, f"could not create {venv}: {e}")
    r = _run([str(python), "-c", "import nncf; print(nncf.__version__)"], 300, env)
    if r.returncode != 0:
        return NncfEnv(None, env, f"nncf does not import in {venv}: {r.stderr.strip()[-300:]}")
    version = r.stdout.strip().splitlines()[-1]
    build_root.mkdir(parents=True, exist_ok=True)
    with open(build_root.parent / "torch_extensions.suite-lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one suite run builds at a time; any torch 'lock' file now is stale
        _remove_stale_locks(build_root, log)
        log("  building/loading NNCF's CPU extension ...")
        try:
            r = _run([str(python), "-c", _BUILD], BUILD_TIMEOUT_S, env)
        except subprocess.TimeoutExpired:
            _remove_stale_locks(build_root, log)
            return NncfEnv(None, env, f"NNCF's CPU extension did not build within {BUILD_TIMEOUT_S} s", version)
        if r.returncode != 0:
            _remove_stale_locks(build_root, log)
            return NncfEnv(None, env, f"NNCF's CPU extension failed to build: {(r.stderr or r.stdout).strip()[-300:]}", version)
    return NncfEnv(python, env, None, version)
