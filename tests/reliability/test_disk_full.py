"""A full disk while exporting ONNX or writing QAT files: a clear `WriteError` (an OSError keeping the
errno), no truncated file under the final name, the previous file intact, no temporary file left."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from testing_utils import inputs_of, quant_config, text_batches, tiny_bert

from hf_qat import (
    NNCFConfig,
    WriteError,
    create_compressed_model,
    export_onnx,
    register_default_init_args,
)
from hf_qat.core.layout import write_qat_files

BATCHES = [inputs_of(b) for b in text_batches()]


@pytest.fixture(scope="module")
def compressed():
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), BATCHES)
    return create_compressed_model(tiny_bert(), config)


def full_disk_on_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The data was handed to the OS, which finds no room when flushing it (as on ENOSPC from fsync)."""

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)


def test_onnx_export_on_a_full_disk(tmp_path: Path, compressed, monkeypatch: pytest.MonkeyPatch) -> None:
    _, model = compressed
    path = tmp_path / "model.onnx"
    export_onnx(model, path, BATCHES[0], verify=False, exporter="torchscript")  # the quicker exporter, same writer
    previous = path.read_bytes()
    full_disk_on_fsync(monkeypatch)
    with pytest.raises(WriteError) as err:
        export_onnx(model, path, BATCHES[0], verify=False, exporter="torchscript")
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    message = str(err.value)
    assert str(path) in message and "No space left on device" in message and "is full" in message
    assert path.read_bytes() == previous  # the earlier export, whole
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]  # no temporary file left behind


def test_qat_files_on_a_full_disk(tmp_path: Path, compressed, monkeypatch: pytest.MonkeyPatch) -> None:
    ctrl, _ = compressed
    write_qat_files(tmp_path, ctrl)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    full_disk_on_fsync(monkeypatch)
    with pytest.raises(WriteError, match="compression_state.json"):
        write_qat_files(tmp_path, ctrl)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.slow
def test_onnx_export_over_a_real_file_size_limit(tmp_path: Path) -> None:
    """The OS itself refuses the write (RLIMIT_FSIZE, EFBIG) half-way through the file."""
    script = textwrap.dedent(f"""
        import os, resource, signal, sys
        sys.path[:0] = [{str(Path(__file__).parent.parent)!r}]
        from testing_utils import inputs_of, quant_config, text_batches, tiny_bert
        from hf_qat import NNCFConfig, WriteError, create_compressed_model, export_onnx, register_default_init_args
        batches = [inputs_of(b) for b in text_batches()]
        ctrl, model = create_compressed_model(tiny_bert(), register_default_init_args(NNCFConfig.from_dict(quant_config()), batches))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            export_onnx(model, {str(tmp_path / "model.onnx")!r}, batches[0], verify=False, exporter="torchscript")
        except WriteError as e:
            print("WriteError", e.errno, e)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_QAT_COMPILE_KERNELS": "0"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert f"WriteError {errno.EFBIG}" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "full or over a size limit" in proc.stdout
    assert os.listdir(tmp_path) == []
