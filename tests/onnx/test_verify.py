"""The quantizer-by-quantizer comparison that decides whether an exported graph matches the framework."""

import numpy as np

from hf_qat.onnx import MAX_TIE_FRACTION, MIN_TIE_COUNT, compare_quantized


def _grid_tensor(rng, size, step):
    return np.round(rng.normal(size=size) * 20) * step


def _flip(values, count, step, by=1.0):
    out = values.copy()
    out.flat[:count] += by * step
    return out


def test_identical_tensors_have_no_divergence():
    rng = np.random.default_rng(0)
    ref = {"aq0": _grid_tensor(rng, 500, 0.1), "aq1": _grid_tensor(rng, 500, 0.2)}
    result = compare_quantized(ref, dict(ref), {"aq0": 0.1, "aq1": 0.2})
    assert result.ok and result.first_divergence is None and result.num_checked == 2


def test_one_tie_flip_in_a_small_tensor_is_allowed():
    # 575 elements: one flip is 1.7e-3 of them, above the fraction, but a single tie is not a wrong graph.
    rng = np.random.default_rng(1)
    ref = {"aq0": _grid_tensor(rng, 575, 0.1)}
    result = compare_quantized(ref, {"aq0": _flip(ref["aq0"], 1, 0.1)}, {"aq0": 0.1})
    assert result.first_divergence == "aq0"
    assert (result.first_divergence_count, result.first_divergence_size) == (1, 575)
    assert result.first_divergence_fraction > MAX_TIE_FRACTION
    assert result.ok


def test_more_flips_than_allowed_fail():
    rng = np.random.default_rng(2)
    ref = {"aq0": _grid_tensor(rng, 575, 0.1)}
    result = compare_quantized(ref, {"aq0": _flip(ref["aq0"], MIN_TIE_COUNT + 1, 0.1)}, {"aq0": 0.1})
    assert not result.ok


def test_fraction_rule_governs_large_tensors():
    rng = np.random.default_rng(3)
    size = 100_000
    ref = {"aq0": _grid_tensor(rng, size, 0.1)}
    allowed = int(MAX_TIE_FRACTION * size)
    assert compare_quantized(ref, {"aq0": _flip(ref["aq0"], allowed, 0.1)}, {"aq0": 0.1}).ok
    assert not compare_quantized(ref, {"aq0": _flip(ref["aq0"], allowed + 1, 0.1)}, {"aq0": 0.1}).ok


def test_a_two_step_difference_fails_even_in_one_element():
    rng = np.random.default_rng(4)
    ref = {"aq0": _grid_tensor(rng, 575, 0.1)}
    result = compare_quantized(ref, {"aq0": _flip(ref["aq0"], 1, 0.1, by=2.0)}, {"aq0": 0.1})
    assert result.first_divergence_steps > 1.5 and not result.ok


def test_only_the_first_divergence_counts():
    # Downstream of a flip differences compound; the check judges the first differing quantizer.
    rng = np.random.default_rng(5)
    ref = {"aq0": _grid_tensor(rng, 575, 0.1), "aq1": _grid_tensor(rng, 575, 0.1)}
    actual = {"aq0": _flip(ref["aq0"], 1, 0.1), "aq1": _flip(ref["aq1"], 300, 0.1, by=3.0)}
    result = compare_quantized(ref, actual, {"aq0": 0.1, "aq1": 0.1})
    assert result.first_divergence == "aq0" and result.worst == "aq1" and result.ok
    merged = result.merge(compare_quantized(ref, dict(ref), {"aq0": 0.1, "aq1": 0.1}))
    assert merged.ok and merged.first_divergence_count == 1 and merged.first_divergence_size == 575
