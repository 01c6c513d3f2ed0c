"""Compression states and state dicts that do not fit the model: a clear error listing the first
mismatches, and nothing loaded or inserted (the model is left exactly as it was)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import torch
from fuzz_settings import fuzz
from hypothesis import given
from hypothesis import strategies as st
from test_config_fuzz import Toy, assert_unchanged, snapshot
from testing_utils import VOCAB, inputs_of, quant_config, text_batches

from hf_qat import (
    CompressionStateError,
    NNCFConfig,
    create_compressed_model,
    load_state,
    register_default_init_args,
)
from hf_qat.core.mismatch import (
    compare_named_shapes,
    layer_pattern,
    unquantized_repeats,
)
from hf_qat.core.state import parse_compression_state

BATCHES = [inputs_of(b) for b in text_batches()]


def compressed(model: torch.nn.Module):
    config = register_default_init_args(NNCFConfig.from_dict(quant_config()), BATCHES)
    return create_compressed_model(model, config)


def bert(layers: int = 2, hidden: int = 32) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def state_2_layers() -> dict[str, Any]:
    ctrl, _ = compressed(bert(2))
    return ctrl.get_compression_state()


def refuse(model: torch.nn.Module, state: Any) -> str:
    before = snapshot(model)
    with pytest.raises(CompressionStateError) as err:
        create_compressed_model(model, NNCFConfig.from_dict(quant_config()), compression_state=state)
    assert_unchanged(model, before)
    return str(err.value)


def test_state_of_a_deeper_model_names_the_missing_modules(state_2_layers) -> None:
    message = refuse(bert(1), state_2_layers)
    assert "does not fit the model" in message and "mismatch(es) shown" in message
    assert "bert.encoder.layer.1.attention.self.query" in message and "which the model does not have" in message


def test_state_of_a_shallower_model_is_refused_not_applied_to_half_the_model() -> None:
    ctrl, _ = compressed(bert(1))
    message = refuse(bert(2), ctrl.get_compression_state())
    assert "would stay unquantized" in message and "bert.encoder.layer.1.attention.self.query" in message
    assert "wq_potential_num" in message


def test_state_of_a_wider_model_lists_the_shape_mismatches(state_2_layers) -> None:
    message = refuse(bert(2, hidden=48), state_2_layers)
    assert "scale_shape [32, 1] does not fit weight shape [48, 48]" in message


def test_load_state_with_mismatches_loads_nothing_on_resume(state_2_layers) -> None:
    _, model = compressed(bert(2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bad = dict(state)
    key = next(k for k in bad if k.endswith("query.weight"))
    bad[key] = torch.zeros(3, 3)
    del bad[next(k for k in bad if k.endswith("classifier.bias"))]
    bad["bert.pooler.extra"] = torch.zeros(1)
    for v in model.state_dict().values():
        if v.is_floating_point():
            v.data.fill_(0.5)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CompressionStateError) as err:
        load_state(model, {k: v + 1 if v.is_floating_point() and k != key else v for k, v in bad.items()}, is_resume=True)
    message = str(err.value)
    assert f"{key}: checkpoint [3, 3] vs model [32, 32]" in message
    assert "classifier.bias" in message and "bert.pooler.extra" in message and "Nothing was loaded" in message
    assert all(torch.equal(expected[k], v) for k, v in model.state_dict().items())


def test_mismatch_helpers_work_from_plain_names_and_shapes() -> None:
    report = compare_named_shapes(
        {"a": [2, 3], "b": [4], "x": [1]},
        {"a": [2, 4], "b": [4], "c": [5], "c.enabled": []},
        optional=lambda n: n.endswith(".enabled"),
    )
    assert report and report.shapes == [("a", (2, 3), (2, 4))] and report.missing == ["c"] and report.unexpected == ["x"]
    assert (
        report.describe()
        == "1 shape mismatch(es): a: checkpoint [2, 3] vs model [2, 4]; missing 1 key(s): c; unexpected 1 key(s): x"
    )
    assert not compare_named_shapes({"a": (1,)}, {"a": [1]})
    assert layer_pattern("h.11.mlp.c_fc") == "h.#.mlp.c_fc"
    layers = [f"h.{i}.{n}" for i in range(3) for n in ("attn", "mlp")] + ["head"]
    assert unquantized_repeats(["h.0.attn", "h.0.mlp", "head"], layers, potential=3) == [
        "h.1.attn",
        "h.1.mlp",
        "h.2.attn",
        "h.2.mlp",
    ]
    assert unquantized_repeats(["h.0.attn", "head"], layers, potential=7) == []  # a scope left the rest in float


# -- malformed compression states: CompressionStateError only, model unchanged ------------------------------


@pytest.fixture(scope="module")
def toy_state() -> dict[str, Any]:
    config = register_default_init_args(NNCFConfig.from_dict({"compression": {"algorithm": "quantization"}}), [torch.randn(2, 8)])
    ctrl, _ = create_compressed_model(Toy(), config)
    return ctrl.get_compression_state()


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, path + (i,))
    return out


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(2**40, 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=4),
    st.sampled_from(["abc", "1", "-1", "OPERATOR_PRE_HOOK", "Toy/NNCFLinear[fc9]/linear_0", "symmetric"]),
    st.lists(st.integers(-1, 5) | st.text(max_size=2), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@fuzz(250)
@given(st.data(), JUNK, st.sampled_from(["replace", "delete", "add"]))
def test_malformed_compression_states_raise_compression_state_error(toy_state, data, junk, how) -> None:
    state = copy.deepcopy(toy_state)
    path = data.draw(st.sampled_from(_paths(state)[1:]))
    parent = state
    for p in path[:-1]:
        parent = parent[p]
    if how == "delete":
        del parent[path[-1]]
    elif how == "add" and isinstance(parent, dict):
        parent[data.draw(st.sampled_from(["0", "7", "x", "version", "qspec"]))] = junk
    else:
        parent[path[-1]] = junk
    model = Toy()
    before = snapshot(model)
    try:
        parse_compression_state(state)
        ctrl, _ = create_compressed_model(
            model, NNCFConfig.from_dict({"compression": {"algorithm": "quantization"}}), compression_state=state
        )
    except CompressionStateError as e:
        assert str(e)
        assert_unchanged(model, before)
        return
    # accepted: a usable model whose quantizers are all finite
    out = model(torch.randn(2, 8))
    assert out.shape == (2, 4)
    assert all(torch.isfinite(p).all() for q in ctrl.quantizers.values() for p in q.parameters())


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '{"builder_state": []}', "NaN", '"x"' * 3])
def test_compression_state_text_that_is_not_a_state(text: str) -> None:
    with pytest.raises(CompressionStateError):
        parse_compression_state(text)


def test_compression_state_text_nested_too_deep() -> None:
    with pytest.raises(CompressionStateError, match="nests"):
        parse_compression_state("[" * 100_000 + "]" * 100_000)
    json.dumps({})  # the module stays usable
