"""Every exception hf_qat raises on purpose.

Each class subclasses the builtin a caller would naturally catch (``ValueError`` for bad
input, ``RuntimeError`` for a model that cannot be processed) and keeps the context of the
failure as attributes, so that callers and tests can inspect it without parsing messages.
Messages say what was found, what was expected and what to do next.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from typing import Any

__all__ = [
    "CalibrationError",
    "CheckpointError",
    "CompressionStateError",
    "ConfigError",
    "DistributedError",
    "ExportError",
    "HfQatError",
    "HubError",
    "JSONFileError",
    "MissingDependencyError",
    "NothingToQuantizeError",
    "ScopeError",
    "UnsupportedLayerError",
    "WriteError",
]


class HfQatError(Exception):
    """Base class of every hf_qat error."""


class MissingDependencyError(HfQatError, ImportError):
    """A feature needs an optional dependency that is not installed.

    Attributes:
        package (`str`): the missing import name (``torch``, ``tensorflow``, ``onnxruntime`` ...).
        extra (`str`): the hf_qat extra that installs it (``pip install "hf_qat[<extra>]"``).
        feature (`str`): what needed it.
    """

    def __init__(self, package: str, extra: str, feature: str):
        self.package = package
        self.extra = extra
        self.feature = feature
        super().__init__(
            f'{feature} needs {package}, which is not installed. Install it with: pip install "hf_qat[{extra}]"',
            name=package,
        )


class ConfigError(HfQatError, ValueError):
    """An NNCF config (or one of its values) is invalid.

    Attributes:
        path (`str`): JSON path of the offending value, e.g. ``$.compression.initializer.range.type``.
        value (`Any`): the value that was found there.
        allowed (`str`): a description of what is allowed at that path.
    """

    def __init__(self, path: str, value: Any, allowed: str, detail: str | None = None):
        self.path = path
        self.value = value
        self.allowed = allowed
        message = f"Invalid NNCF config at {path}: found {value!r}; expected {allowed}."
        if detail:
            message += f" {detail}"
        super().__init__(message)


class ScopeError(HfQatError, ValueError):
    """A scope in ``ignored_scopes``/``target_scopes``/``scope_overrides`` matches nothing.

    Attributes:
        scope (`str`): the scope pattern as written in the config.
        nearest (`list[str]`): the graph node names closest to it.
    """

    def __init__(self, scope: str, where: str, nearest: Sequence[str], detail: str = ""):
        self.scope = scope
        self.where = where
        self.nearest = list(nearest)
        hint = "\n  ".join(self.nearest) if self.nearest else "(the model has no traced operations)"
        super().__init__(
            f"{where} entry {scope!r} matches no operation of the model. Nearest operation names:\n  {hint}\n"
            + (f"{detail}\n" if detail else "")
            + "Fix the pattern (prefix it with '{re}' for a regular expression) or set "
            '"validate_scopes": false to allow patterns that match nothing.'
        )


class NothingToQuantizeError(HfQatError, RuntimeError):
    """The model has no quantizable operation left after applying the config's scopes."""

    def __init__(self, reason: str, nearest: Sequence[str] = ()):
        self.nearest = list(nearest)
        message = f"Nothing to quantize: {reason}"
        if self.nearest:
            message += "\nOperations of the model include:\n  " + "\n  ".join(self.nearest)
        super().__init__(message)


class CalibrationError(HfQatError, RuntimeError):
    """Calibration (range initialisation) could not run on the registered data."""


class CompressionStateError(HfQatError, ValueError):
    """A ``compression_state`` (or a checkpoint holding one) does not fit the model or is malformed."""


class DistributedError(HfQatError, RuntimeError):
    """Distributed QAT was asked for in a state where it cannot work."""


class ExportError(HfQatError, RuntimeError):
    """A model could not be exported, or the exported file does not behave like the model.

    Attributes:
        module (`str`, *optional*): qualified name and class of the module where export failed.
        op (`str`, *optional*): the operation the exporter could not represent.
    """

    def __init__(self, message: str, module: str | None = None, op: str | None = None):
        self.module = module
        self.op = op
        super().__init__(message)


class HubError(HfQatError, RuntimeError):
    """A push to (or pull from) the Hugging Face Hub failed; the message says whether the repo changed."""


class JSONFileError(HfQatError, ValueError):
    """A JSON file or text hf_qat was asked to read is missing, too large, too deep or not JSON.

    Attributes:
        source (`str`): the file path (or a description of the text).
        reason (`str`): what is wrong with it.
    """

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"Cannot read {source}: {reason}.")


class WriteError(HfQatError, OSError):
    """Writing a file failed (disk full, quota, permissions); nothing was left under the final name.

    Subclasses ``OSError`` and keeps the original ``errno`` (``errno.ENOSPC`` for a full disk).

    Attributes:
        path (`str`): the file (or folder) that was being written.
    """

    def __init__(self, path: str, cause: OSError, what: str = "file", detail: str | None = None):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path)) or "."
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free there now"
        except OSError:
            free = "free space unknown"
        if cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            hint = f"The disk holding {folder} is full or over a size limit ({free}): free space and write again."
        else:
            hint = f"Check that {folder} is writable and has room ({free}), then write again."
        message = (
            f"Could not write the {what} {path}: {cause.strerror or cause}. Nothing was written under that name "
            f"(a previous version, if any, is intact). {hint}"
        )
        if detail:
            message += f" {detail}"
        super().__init__(cause.errno, message)
        self.strerror = message

    def __str__(self) -> str:
        return self.strerror


class CheckpointError(WriteError):
    """Saving a training checkpoint failed; the partial checkpoint was removed and earlier ones are intact."""


class UnsupportedLayerError(HfQatError, ValueError):
    """A layer in scope holds a weight hf_qat cannot quantize (a custom layer, or raw variables of a
    subclassed model), or is already quantized by another tool.

    Attributes:
        layer (`str`): path of the layer in the model.
        layer_class (`str`): its class name.
    """

    def __init__(self, layer: str, layer_class: str, detail: str):
        self.layer = layer
        self.layer_class = layer_class
        super().__init__(f"Layer {layer!r} ({layer_class}) {detail}")
