"""Atomic file writes: a temporary file in the destination folder, then ``os.replace``.

A write that fails (full disk, quota, permissions) or is interrupted never leaves a truncated file
under the final name: the temporary file is removed and :class:`~hf_qat.errors.WriteError` (an
``OSError`` keeping the original ``errno``) says which file could not be written and why.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from ..errors import WriteError

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a directory entry (a rename into it) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "file") -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    On any exception the temporary file is removed and ``path`` is left as it was. An ``OSError``
    raised while writing (``ENOSPC`` ...) is re-raised as [`WriteError`] naming ``path`` (``what``
    describes the file in that message, e.g. ``"ONNX file"``).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
        tmp = None
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(path, e, what) from e
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str = "file") -> None:
    """Write ``data`` to ``path`` atomically and durably (fsync before the rename).

    Raises:
        [`WriteError`]: the file could not be written; ``path`` is unchanged.
    """
    with atomic_path(path, what) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "file") -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"), what)
