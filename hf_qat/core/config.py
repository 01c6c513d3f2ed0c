"""``NNCFConfig``: the NNCF-compatible configuration object, validated with JSON schema."""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
import os
import re
import warnings
from collections.abc import Iterable
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from ..errors import ConfigError, JSONFileError
from ..utils.jsonfile import loads_json
from .schema import KNOWLEDGE_DISTILLATION_SCHEMA, NNCF_CONFIG_SCHEMA, QUANTIZATION_ALGO_SCHEMA, UNSUPPORTED_KEYS

__all__ = ["NNCFConfig", "json_path", "validate_config"]

#: Largest config file accepted by :meth:`NNCFConfig.from_json` (a config is a few kB; this guards
#: against pointing the loader at a weights file by mistake).
MAX_CONFIG_BYTES = 16 * 1024 * 1024
#: Most elements one ``input_info`` tensor may have (2**28: 1 GiB of float32). Example inputs are
#: allocated for tracing, so a typo such as ``[1, 3, 224224, 224]`` must fail here, not exhaust memory.
MAX_INPUT_ELEMENTS = 2**28


def json_path(parts: Iterable[Any]) -> str:
    """Render a sequence of keys/indices as a JSON path such as ``$.compression[0].preset``."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _describe_allowed(error: ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    v = error.validator
    if v == "enum":
        return "one of " + ", ".join(json.dumps(x) for x in error.validator_value)
    if v == "const":
        return json.dumps(error.validator_value)
    if v == "type":
        return f"a value of JSON type {error.validator_value!r}"
    if v == "minimum":
        return f"a number >= {error.validator_value}"
    if v == "maximum":
        return f"a number <= {error.validator_value}"
    if v == "exclusiveMinimum":
        return f"a number > {error.validator_value}"
    if v == "minItems":
        return f"a list with at least {error.validator_value} item(s)"
    if v == "required":
        return "an object with the keys " + ", ".join(repr(k) for k in error.validator_value)
    if v == "anyOf":
        kinds = []
        for sub in error.validator_value:
            t = sub.get("type")
            kinds.append(t if isinstance(t, str) else "value")
        return "one of the forms: " + " or ".join(dict.fromkeys(kinds))
    if v == "additionalProperties" and "properties" in schema:
        return "one of the known keys: " + ", ".join(sorted(schema["properties"]))
    return error.message


def _narrow(error: ValidationError) -> ValidationError:
    """For ``anyOf`` errors, the error inside the one alternative whose type fits the value.

    ``{"input_info": {"sample_size": [1, 8], "type": 3}}`` is then reported at ``$.input_info.type``
    (a string is expected there), not at ``$.input_info`` as "one of the forms: object or array".
    """
    while error.validator == "anyOf" and error.context:
        branches: dict[Any, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.schema_path[0], []).append(sub)
        fitting = [errs for errs in branches.values() if not any(e.validator == "type" and not e.relative_path for e in errs)]
        if len(fitting) != 1:
            break
        error = best_match(fitting[0])
    return error


def _raise_schema_error(error: ValidationError, prefix: tuple[Any, ...] = ()) -> None:
    error = _narrow(error)
    path = prefix + tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        unknown = sorted((k for k in error.instance if k not in known), key=str)
        if unknown:
            key = unknown[0]
            raise ConfigError(
                json_path(path + (key,)),
                error.instance[key],
                "no such key here; " + _describe_allowed(error),
                detail=f"Unknown key {key!r}: hf_qat rejects keys it does not implement instead of ignoring them.",
            )
    raise ConfigError(json_path(path), error.instance, _describe_allowed(error))


@functools.cache
def _validator(schema_id: int) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_SCHEMAS[schema_id])


_SCHEMAS = {id(schema): schema for schema in (NNCF_CONFIG_SCHEMA, QUANTIZATION_ALGO_SCHEMA, KNOWLEDGE_DISTILLATION_SCHEMA)}


def _validate_against(schema: dict, instance: Any, prefix: tuple[Any, ...]) -> None:
    error = best_match(_validator(id(schema)).iter_errors(instance))
    if error is not None:
        _raise_schema_error(error, prefix)


def _get(d: dict, dotted: str) -> tuple[bool, Any]:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur


def _check_scopes(value: Any, path: tuple[Any, ...]) -> None:
    items = [value] if isinstance(value, str) else list(value or [])
    for i, item in enumerate(items):
        if item.startswith("{re}"):
            try:
                re.compile(item[4:])
            except re.error as e:
                p = path if isinstance(value, str) else path + (i,)
                raise ConfigError(json_path(p), item, "a valid regular expression after the '{re}' prefix", str(e)) from None


def _validate_quantization_entry(entry: dict, prefix: tuple[Any, ...], config: dict) -> None:
    _validate_against(QUANTIZATION_ALGO_SCHEMA, entry, prefix)
    for dotted, (bad_value, reason) in UNSUPPORTED_KEYS.items():
        found, value = _get(entry, dotted)
        refused = bad_value is None or value == bad_value or (isinstance(bad_value, tuple) and value in bad_value)
        if found and refused:
            expected = "a key hf_qat implements" if bad_value is None else f"not {bad_value!r}"
            if isinstance(bad_value, tuple):
                expected = f"none of {list(bad_value)}"
            raise ConfigError(
                json_path(prefix + tuple(dotted.split("."))), value, expected, detail=f"Not supported by hf_qat: {reason}"
            )
    precision = entry.get("initializer", {}).get("precision")
    if precision is not None:
        p = prefix + ("initializer", "precision")
        if "bitwidth_per_scope" not in precision:
            raise ConfigError(json_path(p), precision, "'bitwidth_per_scope' with type 'manual'")
        for i, (_, scope) in enumerate(precision["bitwidth_per_scope"]):
            _check_scopes(scope, p + ("bitwidth_per_scope", i, 1))
    init = entry.get("initializer", {}).get("range")
    ranges = init if isinstance(init, list) else ([init] if init else [])
    for i, r in enumerate(ranges):
        p = prefix + ("initializer", "range") + ((i,) if isinstance(init, list) else ())
        params = r.get("params", {})
        lo, hi = params.get("min_percentile", 0.1), params.get("max_percentile", 99.9)
        if lo >= hi:
            raise ConfigError(json_path(p + ("params",)), params, "min_percentile < max_percentile")
        for key in ("target_scopes", "ignored_scopes"):
            if key in r:
                _check_scopes(r[key], p + (key,))
    for key in ("ignored_scopes", "target_scopes"):
        if key in entry:
            _check_scopes(entry[key], prefix + (key,))
        for group in ("weights", "activations"):
            if key in entry.get(group, {}):
                _check_scopes(entry[group][key], prefix + (group, key))
    for group, overrides in entry.get("scope_overrides", {}).items():
        for scope in overrides:
            _check_scopes(scope, prefix + ("scope_overrides", group, scope))
    device = config.get("target_device", "ANY")
    if device in ("NPU", "VPU") and "preset" in entry:
        raise ConfigError(
            json_path(prefix + ("preset",)),
            entry["preset"],
            "no preset for target_device NPU",
            detail="NPU fixes the quantization modes itself; remove 'preset' or change 'target_device'.",
        )


def _check_json_values(value: Any, path: tuple[Any, ...] = ()) -> None:
    """JSON keys are strings and numbers are finite: NaN/Infinity pass JSON schema's range checks
    (every comparison with NaN is false) and would turn into NaN ranges or learning rates."""
    stack = [(value, path)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(json_path(path), value, "a finite number")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ConfigError(json_path(path), f"<key {key!r}>", "an object with string keys")
                stack.append((item, path + (key,)))
        elif isinstance(value, (list, tuple)):
            stack.extend((item, path + (i,)) for i, item in enumerate(value))


def _check_input_info(config: dict) -> None:
    info = config.get("input_info")
    entries = info if isinstance(info, list) else [info] if info is not None else []
    for i, entry in enumerate(entries):
        size = math.prod(entry["sample_size"])
        if size > MAX_INPUT_ELEMENTS:
            p = ("input_info",) + ((i,) if isinstance(info, list) else ()) + ("sample_size",)
            raise ConfigError(
                json_path(p),
                entry["sample_size"],
                f"a shape of at most {MAX_INPUT_ELEMENTS} elements",
                detail=f"It has {size} elements; example inputs of that size are allocated for tracing.",
            )


def validate_config(config: dict) -> None:
    """Validate an NNCF config dict.

    Raises:
        [`ConfigError`]: with the JSON path of the first problem, the value found and what is allowed.
    """
    if not isinstance(config, dict):
        raise ConfigError("$", type(config).__name__, "a JSON object (dict)")
    _check_json_values(config)
    known = NNCF_CONFIG_SCHEMA["properties"]
    extra = sorted(set(config) - set(known))
    for key in extra:  # a misspelt key of hf_qat's is an error, not an ignored extra
        close = difflib.get_close_matches(key, [k for k in known if k not in config], n=1, cutoff=0.8)
        if close:
            raise ConfigError(
                json_path((key,)), config[key], f"a known top-level key; did you mean {close[0]!r}?",
                detail="Other unknown top-level keys are ignored with a warning, as NNCF ignored them.",
            )  # fmt: skip
    if extra:
        # NNCF's schema allowed extra top-level keys, and its sample configs carry their command-line options
        # there (multiprocessing_distributed, seed, ...); keys inside "compression" stay checked.
        warnings.warn(
            f"NNCF config: ignoring top-level key(s) {extra}: hf_qat does not use them (NNCF's sample configs carry "
            "their scripts' options at the top level). Keys inside 'compression' are checked as usual.",
            UserWarning,
            stacklevel=3,
        )
        config = {k: v for k, v in config.items() if k not in extra}
    _validate_against(NNCF_CONFIG_SCHEMA, config, ())
    _check_input_info(config)
    compression = config.get("compression", [])
    entries = compression if isinstance(compression, list) else [compression]
    quantization = 0
    distillation = 0
    for i, entry in enumerate(entries):
        prefix = ("compression", i) if isinstance(compression, list) else ("compression",)
        if entry["algorithm"] == "knowledge_distillation":
            distillation += 1
            _validate_against(KNOWLEDGE_DISTILLATION_SCHEMA, entry, prefix)
            continue
        if entry["algorithm"] != "quantization":
            raise ConfigError(
                json_path(prefix + ("algorithm",)),
                entry["algorithm"],
                "'quantization' (or 'knowledge_distillation' beside it)",
                detail="hf_qat implements quantization-aware training, with distillation from the FP32 model in "
                "QATTrainer; sparsity, pruning and other NNCF algorithms are out of its scope.",
            )
        quantization += 1
        _validate_quantization_entry(entry, prefix, config)
    if quantization > 1:
        raise ConfigError(json_path(("compression",)), compression, "at most one 'quantization' entry")
    if distillation > 1:
        raise ConfigError(json_path(("compression",)), compression, "at most one 'knowledge_distillation' entry")


class NNCFConfig(dict):
    """An NNCF configuration: a validated ``dict`` plus registered non-JSON objects (data loaders).

    Configs written for NNCF's legacy API load unchanged. Validation uses JSON schema
    (:data:`hf_qat.core.schema.NNCF_CONFIG_SCHEMA`); keys hf_qat does not implement are rejected by
    name. Defaults are *not* injected into the dict (as in NNCF): the code applies them.

    Example:
        ```python
        >>> from hf_qat import NNCFConfig
        >>> config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 128], "type": "long"},
        ...                                "compression": {"algorithm": "quantization"}})
        ```
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._extra_structs: dict[str, Any] = {}

    @classmethod
    def from_dict(cls, nncf_dict: dict) -> NNCFConfig:
        """Validate ``nncf_dict`` and return a deep copy of it as an `NNCFConfig`.

        Raises:
            [`ConfigError`]: if the dict is not a valid config.
        """
        validate_config(nncf_dict)
        return cls(copy.deepcopy(nncf_dict))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> NNCFConfig:
        """Read a JSON file and validate it (see `from_dict`).

        Raises:
            [`ConfigError`]: if the file is larger than ``MAX_CONFIG_BYTES``, not UTF-8, not valid JSON
                (``NaN``/``Infinity`` and duplicate keys included; ``//`` and ``/* */`` comments and trailing
                commas are accepted, as NNCF accepted them) or not a valid config.
            `FileNotFoundError`: if the file does not exist.
        """
        path = os.fspath(path)
        size = os.path.getsize(path)
        if size > MAX_CONFIG_BYTES:
            raise ConfigError("$", f"<{size} bytes in {path}>", f"a JSON file of at most {MAX_CONFIG_BYTES} bytes")
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        try:
            data = loads_json(raw, source=path, max_bytes=MAX_CONFIG_BYTES, strict=True, comments=True)
        except JSONFileError as e:
            raise ConfigError(
                "$", f"<{path}>", "a JSON file holding an NNCF config", e.reason[0].upper() + e.reason[1:] + "."
            ) from None
        if not isinstance(data, dict):  # a valid JSON value that is not an object: name the file
            raise ConfigError("$", f"<{type(data).__name__} in {path}>", "a JSON object (dict) holding an NNCF config")
        return cls.from_dict(data)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the config (without the registered extra structs) as JSON, atomically."""
        from ..utils.io import atomic_write_text

        atomic_write_text(path, json.dumps(dict(self), indent=2, sort_keys=True) + "\n")

    def __deepcopy__(self, memo: dict) -> NNCFConfig:
        new = NNCFConfig(copy.deepcopy(dict(self), memo))
        new._extra_structs = dict(self._extra_structs)  # loaders are shared, not copied
        return new

    def copy(self) -> NNCFConfig:  # type: ignore[override]
        return copy.deepcopy(self)

    # -- non-serialisable objects registered next to the config -------------------------------
    def register_extra_structs(self, struct_list: Iterable[Any]) -> None:
        """Register objects (e.g. calibration loaders) under their ``get_id()``."""
        for struct in struct_list:
            struct_id = struct.get_id()
            if struct_id in self._extra_structs:
                raise ValueError(f"An extra struct with id {struct_id!r} is already registered.")
            self._extra_structs[struct_id] = struct

    def get_extra_struct(self, struct_cls: type) -> Any:
        return self._extra_structs[struct_cls.get_id()]

    def has_extra_struct(self, struct_cls: type) -> bool:
        return struct_cls.get_id() in self._extra_structs

    def get_all_extra_structs(self) -> list[Any]:
        return list(self._extra_structs.values())
