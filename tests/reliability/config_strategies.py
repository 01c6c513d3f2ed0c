"""Hypothesis strategies for NNCF configs, derived from hf_qat's own JSON schema.

``valid_configs()`` draws configs that must validate: every property of the schema may appear,
with values of its type and range, then the cross-field rules the schema cannot express are
applied (min_percentile < max_percentile, no preset on NPU/VPU, no keys hf_qat rejects by name).
``mutate(config)`` breaks one thing in a valid config and returns the JSON path of the breakage.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import strategies as st

from hf_qat.core.config import json_path
from hf_qat.core.schema import (
    NNCF_CONFIG_SCHEMA,
    QUANTIZATION_ALGO_SCHEMA,
    UNSUPPORTED_KEYS,
)

#: Scopes that are valid patterns; names of the fuzz model's operations among them.
SCOPES = ["Toy/NNCFLinear[fc1]/linear_0", "Toy/NNCFLinear[fc2]/linear_0", "{re}.*fc2.*", "{re}Toy/.*", "Toy/Linear[fc3]/linear_0"]
_INFORMATIONAL = {
    "model",
    "num_classes",
    "batch_size",
    "epochs",
    "optimizer",
    "pretrained",
    "dataset",
    "log_dir",
    "accuracy_aware_training",
}
_REJECTED = {path for path, (bad, _) in UNSUPPORTED_KEYS.items() if bad is None}


def _ints(schema: dict, default_max: int = 64) -> st.SearchStrategy[int]:
    lo = schema.get("minimum", 0)
    return st.integers(lo, schema.get("maximum", lo + default_max))


def from_schema(schema: dict[str, Any], path: tuple[str, ...] = ()) -> st.SearchStrategy[Any]:
    """Values valid for the subset of JSON schema that hf_qat's schema uses (types, enums, ranges)."""
    if "const" in schema:
        return st.just(schema["const"])
    if "anyOf" in schema:
        return st.one_of([from_schema(s, path) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if path and path[-1] == "group_size":  # mostly divisors of the toy models' input widths (8, 16); 3 divides none
        return st.sampled_from([None, 2, 4, 8, 16, 3])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, path) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return _ints(schema)
    if kind == "number":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        hi = schema.get("maximum", 100)
        return st.floats(lo, hi, exclude_min="exclusiveMinimum" in schema, allow_nan=False)
    if kind == "string":
        return (
            st.sampled_from(SCOPES)
            if path and path[-1].endswith("scopes") or path[-2:-1] == ("ignored_scopes",)
            else st.text(max_size=8)
        )
    if kind == "array":
        items = from_schema(schema.get("items", {"type": "string"}), path + ("[]",))
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=3)
    if kind == "object":
        props = schema.get("properties", {})
        required = schema.get("required", [])
        fixed = {k: from_schema(props[k], path + (k,)) for k in required}
        optional = {k: from_schema(v, path + (k,)) for k, v in props.items() if k not in required}
        strategy = st.fixed_dictionaries(fixed, optional=optional)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):  # scope_overrides: pattern -> override
            strategy = st.tuples(
                strategy, st.dictionaries(st.sampled_from(SCOPES), from_schema(extra, path + ("*",)), max_size=2)
            ).map(lambda t: {**t[0], **t[1]})
        return strategy
    return st.just({})  # untyped objects ("optimizer": {"type": "object"} is handled above)


def _repair(entry: dict[str, Any], device: str) -> dict[str, Any]:
    """Apply the rules the schema cannot express to one quantization entry."""
    for dotted in _REJECTED:
        parts = dotted.split(".")
        parent = entry
        for p in parts[:-1]:
            parent = parent.get(p, {}) if isinstance(parent, dict) else {}
        if isinstance(parent, dict):
            parent.pop(parts[-1], None)
    # manual mixed precision names scopes of a model (tested with models in tests/torch); not generated here
    entry.get("initializer", {}).pop("precision", None)
    for dotted, (bad, _) in UNSUPPORTED_KEYS.items():
        if bad is not None and not isinstance(bad, tuple):
            parts = dotted.split(".")
            parent = entry
            for p in parts[:-1]:
                parent = parent.get(p, {})
            if parent.get(parts[-1]) == bad:
                parent[parts[-1]] = not bad
    ranges = entry.get("initializer", {}).get("range")
    for r in ranges if isinstance(ranges, list) else [ranges] if ranges else []:
        params = r.get("params", {})
        lo, hi = params.get("min_percentile", 0.1), params.get("max_percentile", 99.9)
        if lo >= hi:
            params["min_percentile"], params["max_percentile"] = (
                min(lo, hi) / 2,
                max(lo, hi, 0.2) if max(lo, hi) > min(lo, hi) / 2 else 99.9,
            )
    if device in ("NPU", "VPU"):
        entry.pop("preset", None)
    return entry


@st.composite
def valid_configs(draw: st.DrawFn, with_input_info: bool = True) -> dict[str, Any]:
    """A config hf_qat must accept (one quantization entry, optional top-level keys)."""
    top = {k: v for k, v in NNCF_CONFIG_SCHEMA["properties"].items() if k not in ("compression", "input_info")}
    config = draw(st.fixed_dictionaries({}, optional={k: from_schema(v, (k,)) for k, v in top.items()}))
    entry = _repair(draw(from_schema(QUANTIZATION_ALGO_SCHEMA, ("compression",))), config.get("target_device", "ANY"))
    config["compression"] = draw(st.sampled_from(["object", "list"])) == "list" and [entry] or entry
    if with_input_info:
        config["input_info"] = {"sample_size": [draw(st.integers(1, 3)), 8], "type": "float"}
    return json.loads(json.dumps(config))  # plain JSON types only


# -- breaking a config --------------------------------------------------------------------------
def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    out = [(path, value)]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _nodes(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _nodes(v, path + (i,))
    return out


def _set(config: Any, path: tuple[Any, ...], value: Any) -> None:
    parent = config
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value


def _is_free_form(path: tuple[Any, ...]) -> bool:
    """Objects whose content the schema leaves open (informational keys, scope-override patterns)."""
    return bool(path) and (
        path[0] in _INFORMATIONAL
        or (
            len(path) >= 2
            and path[-2:-1] in (("weights",), ("activations",))
            and "scope_overrides" in path
            and path[-1] not in ("weights", "activations")
            and len(path) == path.index("scope_overrides") + 2
        )
    )


_WRONG_TYPE = {str: 3, bool: "yes", int: "8", float: "0.5", list: 7, dict: 7}


@st.composite
def broken_configs(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    """``(config, json_path, how)``: a valid config with exactly one thing broken at ``json_path``."""
    config = draw(valid_configs())
    nodes = [(p, v) for p, v in _nodes(config) if not (p and p[0] in _INFORMATIONAL)]
    how = draw(
        st.sampled_from(
            [
                "unknown_key",
                "wrong_type",
                "bad_enum",
                "out_of_range",
                "unsupported",
                "no_algorithm",
                "percentiles",
                "bad_regex",
                "npu_preset",
            ]
        )
    )
    entry_path: tuple[Any, ...] = ("compression", 0) if isinstance(config["compression"], list) else ("compression",)
    entry = config["compression"][0] if isinstance(config["compression"], list) else config["compression"]
    if how == "unknown_key":
        objects = [
            (p, v)
            for p, v in nodes
            if isinstance(v, dict)
            and p  # unknown top-level keys are ignored with a warning, as NNCF ignored them (test_config.py)
            and not (len(p) >= 1 and p[-1] in ("weights", "activations") and "scope_overrides" in p)
        ]
        path, obj = draw(st.sampled_from(objects))
        key = draw(st.sampled_from(["algorithms", "Bits", "ignored_scope", "mode ", "x"]))
        obj[key] = 1
        return config, json_path(path + (key,)), how
    if how == "wrong_type":
        leaves = [(p, v) for p, v in nodes if p and type(v) in _WRONG_TYPE and p[-1] != "algorithm"]
        leaves = [(p, v) for p, v in leaves if not isinstance(v, (list, dict)) or p[-1] not in ("weights", "activations")]
        if not leaves:
            return _npu(config, entry_path, entry)
        path, value = draw(st.sampled_from(leaves))
        wrong = _WRONG_TYPE[type(value)]
        if isinstance(value, str) and path[-2:-1] != ("sample_size",):
            wrong = draw(st.sampled_from([3, None, True, {"a": "b"}]))
        _set(config, path, wrong)
        return config, json_path(path), how
    if how == "bad_enum":
        enums = [
            (p, v)
            for p, v in nodes
            if p
            and p[-1]
            in ("mode", "type", "preset", "target_device", "overflow_fix", "hw_config_type", "filler", "target_quantizer_group")
            and isinstance(v, str)
        ]
        if not enums:
            return _npu(config, entry_path, entry)
        path, _ = draw(st.sampled_from(enums))
        _set(config, path, draw(st.sampled_from(["", "MinMax", "sym", "percentil", "CPU2"])))
        return config, json_path(path), how
    if how == "out_of_range":
        numbers = [
            (p, v)
            for p, v in nodes
            if p
            and p[-1]
            in (
                "bits",
                "num_init_samples",
                "min_percentile",
                "max_percentile",
                "compression_lr_multiplier",
                "num_bn_adaptation_samples",
                "activations_quant_start_epoch",
                "weights_quant_start_epoch",
            )
        ]
        if not numbers:
            entry["bits"] = 1
            return config, json_path(entry_path + ("bits",)), how
        path, _ = draw(st.sampled_from(numbers))
        bad = {
            "bits": draw(st.sampled_from([0, 1, 9, 32, -8])),
            "min_percentile": -1,
            "max_percentile": 100.5,
            "compression_lr_multiplier": draw(st.sampled_from([0, -1.0])),
        }.get(path[-1], -1)
        _set(config, path, bad)
        return config, json_path(path), how
    if how == "unsupported":
        dotted = draw(st.sampled_from(sorted(UNSUPPORTED_KEYS)))
        bad, _ = UNSUPPORTED_KEYS[dotted]
        parts = dotted.split(".")
        parent = entry
        for p in parts[:-1]:
            parent = parent.setdefault(p, {})
        if isinstance(bad, tuple):  # one of several refused values (initializer.precision.type: hawq, autoq)
            bad = draw(st.sampled_from(bad))
        parent[parts[-1]] = (
            bad if bad is not None else ({} if parts[-1] == "precision" else ([] if "unified" in parts[-1] else 1))
        )
        return config, json_path(entry_path + tuple(parts)), how
    if how == "no_algorithm":
        del entry["algorithm"]
        return config, json_path(entry_path), how
    if how == "percentiles":
        entry.setdefault("initializer", {})["range"] = {
            "params": {"min_percentile": 60.0, "max_percentile": draw(st.sampled_from([60.0, 10.0]))}
        }
        return config, json_path(entry_path + ("initializer", "range", "params")), how
    if how == "bad_regex":
        where = draw(st.sampled_from([(), ("weights",), ("activations",)]))
        target = entry
        for p in where:
            target = target.setdefault(p, {})
        target["ignored_scopes"] = ["{re}fc1", "{re}(unclosed"]
        return config, json_path(entry_path + where + ("ignored_scopes", 1)), how
    return _npu(config, entry_path, entry)


def _npu(config: dict, entry_path: tuple[Any, ...], entry: dict) -> tuple[dict[str, Any], str, str]:
    config["target_device"] = "NPU"
    entry["preset"] = "performance"
    return config, json_path(entry_path + ("preset",)), "npu_preset"


def deep_copy(config: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(config)
