"""Property tests over NNCF configs: every config is accepted, or refused with `ConfigError` naming the
JSON path of the problem; nothing else is raised, nothing hangs, and a model is never left half compressed.

Example counts (``ci`` profile, derandomized): 300 valid + 700 broken + 500 junk + 200 JSON texts
+ 120 compressions = 1820 per run; ``HF_QAT_HYPOTHESIS_PROFILE=thorough`` runs ten times as many.
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from typing import Any

import pytest
import torch
from config_strategies import SCOPES, broken_configs, valid_configs
from fuzz_settings import fuzz
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from hf_qat import (
    ConfigError,
    HfQatError,
    NNCFConfig,
    create_compressed_model,
    register_default_init_args,
)
from hf_qat.core.algo_config import QuantizationSettings
from hf_qat.core.config import validate_config

# -- validation only ------------------------------------------------------------------------------


@fuzz(300)
@given(valid_configs())
def test_valid_configs_are_accepted(config: dict[str, Any]) -> None:
    before = copy.deepcopy(config)
    parsed = NNCFConfig.from_dict(config)
    QuantizationSettings.from_config(parsed)  # defaults and presets apply without error
    assert config == before  # the caller's dict is not modified


@fuzz(700)
@given(broken_configs())
def test_broken_configs_raise_config_error_naming_the_path(case: tuple[dict[str, Any], str, str]) -> None:
    config, path, how = case
    with pytest.raises(ConfigError) as err:
        NNCFConfig.from_dict(config)
    # the broken value itself, or (a wrong value inside an object) the offending key under it
    assert err.value.path == path or err.value.path.startswith(path + "."), (how, path, str(err.value))
    assert err.value.path in str(err.value) and "expected" in str(err.value)


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([float("nan"), float("inf"), -float("inf")])
    | st.text(max_size=6)
    | st.sampled_from(SCOPES + ["{re}(", "{re}[a-", "quantization", "symmetric", "NPU"])
)
JUNK = st.recursive(
    JSON_LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8
)


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        value = value[p]
    return value


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, path + (i,))
    return out


@fuzz(500)
@given(valid_configs(), JUNK, st.data())
def test_junk_anywhere_is_accepted_or_refused_with_config_error(config: dict[str, Any], junk: Any, data: st.DataObject) -> None:
    paths = _paths(config)
    if data.draw(st.booleans()):  # aim at numbers with numbers: NaN passes every range check of JSON schema
        numbers = [p for p in paths if p and isinstance(_get(config, p), (int, float)) and not isinstance(_get(config, p), bool)]
        floats = [p for p in numbers if isinstance(_get(config, p), float)]
        paths = floats or numbers or paths
        junk = data.draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 2**70, -1, 0.0]))
    path = data.draw(st.sampled_from(paths))
    if not path:
        config = junk
    else:
        parent = config
        for p in path[:-1]:
            parent = parent[p]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            parent[data.draw(st.sampled_from(["x", "bits", "mode", "range", "params", "algorithm", "sample_size"]))] = junk
        else:
            parent[path[-1]] = junk
    try:
        parsed = NNCFConfig.from_dict(config)
        QuantizationSettings.from_config(parsed)  # e.g. no quantization section: refused here
    except ConfigError as e:
        assert e.path.startswith("$")
        return
    # accepted: no number in it is NaN or infinite (strings such as a scope named "Infinity" are fine)
    numbers = [v for p in _paths(dict(parsed)) if p for v in [_get(dict(parsed), p)] if isinstance(v, float)]
    assert all(math.isfinite(v) for v in numbers), numbers


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_refused(value: float) -> None:
    """NaN passes every JSON-schema range check (comparisons with NaN are false)."""
    config = {
        "compression": {
            "algorithm": "quantization",
            "compression_lr_multiplier": value,
            "initializer": {"range": {"type": "percentile", "params": {"min_percentile": 0.5}}},
        }
    }
    with pytest.raises(ConfigError, match=r"\$\.compression\.compression_lr_multiplier.*a finite number"):
        validate_config(config)
    config["compression"]["compression_lr_multiplier"] = 1.0
    config["compression"]["initializer"]["range"]["params"]["min_percentile"] = value
    with pytest.raises(ConfigError, match=r"min_percentile"):
        validate_config(config)


def test_oversized_input_info_is_refused_before_anything_is_allocated() -> None:
    config = {
        "input_info": [{"sample_size": [1, 8]}, {"sample_size": [64, 3, 224224, 224]}],
        "compression": {"algorithm": "quantization"},
    }
    with pytest.raises(ConfigError, match=r"\$\.input_info\[1\]\.sample_size.*at most 268435456 elements"):
        validate_config(config)


@st.composite
def json_texts(draw: st.DrawFn) -> bytes:
    base = json.dumps(draw(valid_configs()), indent=draw(st.sampled_from([None, 2]))).encode()
    how = draw(st.sampled_from(["truncate", "flip", "nest", "digits", "nan", "duplicate", "bytes", "bom"]))
    if how == "truncate":
        return base[: draw(st.integers(0, len(base) - 1))]
    if how == "flip":
        i = draw(st.integers(0, len(base) - 1))
        return base[:i] + bytes([draw(st.integers(0, 255))]) + base[i + 1 :]
    if how == "nest":
        n = draw(st.sampled_from([50, 5000, 200_000]))
        return b'{"compression": ' + b"[" * n + b"]" * n + b"}"
    if how == "digits":
        return b'{"compression": {"algorithm": "quantization", "bits": ' + b"9" * draw(st.sampled_from([20, 5000])) + b"}}"
    if how == "nan":
        return base.replace(b'"sample_size": [', b'"sample_size": [NaN, ', 1)
    if how == "duplicate":
        return b'{"compression": {"algorithm": "quantization"}, "compression": {"algorithm": "sparsity"}}'
    if how == "bom":
        return b"\xef\xbb\xbf" + base
    return draw(st.binary(max_size=64))


@fuzz(200)
@given(json_texts())
def test_config_files_load_or_raise_config_error(tmp_path_factory: pytest.TempPathFactory, text: bytes) -> None:
    path = tmp_path_factory.mktemp("cfg") / "nncf_config.json"
    path.write_bytes(text)
    try:
        NNCFConfig.from_json(path)
    except ConfigError as e:
        assert str(path) in str(e) or e.path != "$"


# -- compression: succeeds with finite ranges, or fails and leaves the model as it was -----------------


OUTCOMES: Counter[str] = Counter()  # how the compression property's examples ended (printed with -s)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything create_compressed_model could change: tensors, module classes, hooks, attributes, forwards."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modules": [
            (n, type(m), dict(m._forward_pre_hooks), dict(m._forward_hooks), "forward" in m.__dict__)
            for n, m in model.named_modules()
        ],
        "attrs": sorted(model.__dict__),
        "params": [(n, p.requires_grad) for n, p in model.named_parameters()],
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["modules"] == before["modules"] and after["attrs"] == before["attrs"] and after["params"] == before["params"]
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())


@fuzz(120)
@given(valid_configs(), st.sampled_from(["random", "zeros", "none"]), st.data())
def test_compression_succeeds_with_finite_ranges_or_leaves_the_model_unchanged(
    config: dict[str, Any], data_kind: str, data: st.DataObject
) -> None:
    torch.manual_seed(0)
    model = Toy().eval()
    x = torch.randn(3, 8)
    reference = model(x)
    before = snapshot(model)
    nncf_config = NNCFConfig.from_dict(config)
    if data_kind != "none":
        batches = [torch.randn(4, 8) if data_kind == "random" else torch.zeros(4, 8) for _ in range(2)]
        nncf_config = register_default_init_args(nncf_config, batches)
    try:
        ctrl, compressed = create_compressed_model(model, nncf_config)
    except HfQatError:
        OUTCOMES["refused"] += 1
        assert_unchanged(model, before)
        assert torch.equal(model(x), reference)
        return
    assert compressed is model
    OUTCOMES["compressed"] += 1
    for qid, q in ctrl.quantizers.items():
        for name, t in q.named_parameters():
            assert torch.isfinite(t).all(), (qid, name)
        if q.spec.dynamic:  # per-token scales computed at run time: no fixed range to check
            continue
        low, high = q.input_low_high()
        assert torch.isfinite(low).all() and torch.isfinite(high).all() and bool((high > low).all()), qid
    out = compressed(x)
    assert torch.isfinite(out).all()


def test_compression_property_exercised_both_outcomes() -> None:
    """Guard against a vacuous property: runs after it (same module, file order) and checks both branches ran."""
    if not OUTCOMES:
        pytest.skip("run together with the compression property")
    print(dict(OUTCOMES))
    assert OUTCOMES["compressed"] > 0 and OUTCOMES["refused"] > 0, dict(OUTCOMES)


def test_failure_after_quantizers_were_inserted_restores_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure in the last step (range init) must undo everything the earlier steps did."""
    import hf_qat.torch.model_creation as mc

    model = Toy().eval()
    before = snapshot(model)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise HfQatError("calibration failed")

    monkeypatch.setattr(mc, "run_range_init", fail)
    config = register_default_init_args(NNCFConfig.from_dict({"compression": {"algorithm": "quantization"}}), [torch.randn(2, 8)])
    with pytest.raises(HfQatError, match="calibration failed"):
        create_compressed_model(model, config)
    assert_unchanged(model, before)
    assert math.isfinite(float(model(torch.randn(1, 8)).sum()))
