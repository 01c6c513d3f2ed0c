"""Reading JSON that hf_qat did not write itself (checkpoints, hub repos, user configs) defensively.

Everything here is framework-neutral and raises :class:`~hf_qat.errors.JSONFileError`, which says
which file, what was wrong and what the limit is; callers re-raise it as the error of their domain
(``ConfigError``, ``CompressionStateError``) when they need to. Limits:

- size: at most ``max_bytes`` (default :data:`MAX_JSON_BYTES`), checked *before* reading;
- nesting: a few kB of ``[[[[...`` exhaust Python's recursion limit; reported, not a bare ``RecursionError``;
- integers: at most 4300 digits (Python's own limit, reported instead of a bare ``ValueError``);
- encoding: UTF-8 (a BOM is accepted);
- ``strict=True`` also rejects ``NaN``/``Infinity`` literals and duplicate keys, which hf_qat never
  writes and which silently change a config or compression state when another tool does;
- ``comments=True`` (NNCF configs, which NNCF read with a comment-tolerant reader) also accepts ``//`` and
  ``/* */`` comments and trailing commas: text that is not plain JSON is parsed as JSON5 (the ``json5``
  package), with the same limits and strict checks.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import JSONFileError

__all__ = ["MAX_JSON_BYTES", "loads_json", "read_json"]

#: Largest JSON file read by default (a compression state of a large LLM is a few MB).
MAX_JSON_BYTES = 64 * 2**20


def _reject_constant(name: str) -> Any:
    raise ValueError(f"the non-standard literal {name} (JSON has no NaN or Infinity)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def loads_json(
    data: str | bytes,
    *,
    source: str = "<string>",
    max_bytes: int | None = None,
    strict: bool = False,
    comments: bool = False,
) -> Any:
    """Parse JSON text within the limits above.

    Args:
        data: the JSON text (``bytes`` are decoded as UTF-8).
        source: what the text is, for messages (a file path, ``"compression_state"`` ...).
        max_bytes: largest accepted size of ``data`` (default: :data:`MAX_JSON_BYTES`, read at call time).
        strict: reject ``NaN``/``Infinity`` and duplicate keys.
        comments: accept comments and trailing commas (JSON5 syntax) where plain JSON fails.

    Raises:
        [`JSONFileError`]: naming ``source`` and the problem (size, encoding, nesting, syntax with line and column).
    """
    max_bytes = MAX_JSON_BYTES if max_bytes is None else max_bytes
    size = len(data)
    if size > max_bytes:
        raise JSONFileError(source, f"it is {size} bytes, more than the {max_bytes} bytes hf_qat reads")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise JSONFileError(source, f"it is not UTF-8 text (byte {e.start}: {e.reason})") from None
    hooks: dict[str, Any] = {"parse_constant": _reject_constant, "object_pairs_hook": _no_duplicates} if strict else {}
    try:
        return json.loads(data, **hooks)
    except json.JSONDecodeError as e:
        if not comments:
            raise JSONFileError(source, f"it is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        return _loads_json5(data, source, hooks, e)
    except RecursionError:
        raise JSONFileError(source, "it nests arrays/objects deeper than Python's JSON parser can follow") from None
    except ValueError as e:  # Python's integer digit limit, the strict hooks
        raise JSONFileError(source, f"it is not acceptable JSON: {e}") from None


def _loads_json5(data: str, source: str, hooks: dict[str, Any], json_error: json.JSONDecodeError) -> Any:
    import json5

    try:
        return json5.loads(data, **hooks)
    except RecursionError:
        raise JSONFileError(source, "it nests arrays/objects deeper than the JSON parser can follow") from None
    except ValueError as e:
        where = f"line {json_error.lineno} column {json_error.colno}"
        raise JSONFileError(source, f"it is not valid JSON ({json_error.msg} at {where}), nor JSON with comments ({e})") from None


def read_json(path: str | os.PathLike, *, max_bytes: int | None = None, strict: bool = False) -> Any:
    """Read and parse a JSON file; the size is checked before anything is read.

    Raises:
        [`JSONFileError`]: missing file, a directory, too large, not UTF-8, too deep, or not JSON.
    """
    path = os.fspath(path)
    max_bytes = MAX_JSON_BYTES if max_bytes is None else max_bytes
    if not os.path.isfile(path):
        raise JSONFileError(path, "it does not exist" if not os.path.exists(path) else "it is not a regular file")
    size = os.path.getsize(path)
    if size > max_bytes:
        raise JSONFileError(path, f"it is {size} bytes, more than the {max_bytes} bytes hf_qat reads")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)  # the file may have grown since the size check
    return loads_json(data, source=path, max_bytes=max_bytes, strict=strict)
