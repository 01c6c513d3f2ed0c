import numpy as np
import pytest

from hf_qat.core.spec import QuantizerSpec, calculate_levels, export_levels, scale_zero_point, tune_range
from hf_qat.core.state import QuantizationPoint, QuantizerSetup, make_compression_state, parse_compression_state
from hf_qat.core.statistics import BatchStatistics, asymmetric_range, make_collector, symmetric_range
from hf_qat.errors import CompressionStateError


def test_levels():
    assert calculate_levels(8, True, False, True) == (-128, 127)
    assert calculate_levels(8, True, True, True) == (-127, 127)
    assert calculate_levels(8, False, False, True) == (0, 255)
    assert calculate_levels(8, False, True, False) == (0, 254)
    assert calculate_levels(4, True, False, True) == (-8, 7)
    half = QuantizerSpec(num_bits=8, half_range=True, scale_shape=(4, 1))
    assert half.levels(True) == (-64, 63)
    assert export_levels(half, True) == (-128, 127, 127 / 63)
    assert QuantizerSpec(num_bits=8, narrow_range=True).levels(True) == (-127, 127)


def test_tune_range_puts_zero_on_the_grid():
    for il, ir in [(-0.37, 1.0), (-2.0, 2.5), (0.1, 1.0), (-1.0, 0.5), (-0.001, 3.0)]:
        low, rng = tune_range(il, ir, 256)
        step = rng / 255
        zp = -low / step
        assert abs(zp - round(zp)) < 1e-6
        assert low <= 0 <= low + rng and rng > 0


def test_scale_zero_point():
    assert scale_zero_point(-1.0, 1.0, -127, 127) == pytest.approx((2 / 254, 0))
    s, zp = scale_zero_point(-0.5, 1.5, 0, 255)
    assert s == pytest.approx(2 / 255) and zp == round(0.5 / (2 / 255))
    with pytest.raises(ValueError):
        scale_zero_point(1.0, 1.0, 0, 255)


def _stats(x: np.ndarray, values: bool = False) -> BatchStatistics:
    """x: [S, C, M]"""
    return BatchStatistics(
        x.min(axis=2), x.max(axis=2), np.abs(x).max(axis=2), x.transpose(1, 0, 2).reshape(x.shape[1], -1) if values else None
    )


@pytest.mark.parametrize("kind", ["min_max", "mean_min_max", "mixed_min_max", "percentile", "mean_percentile", "threesigma"])
def test_collectors(kind):
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(4, 1, 50)) * (i + 1) for i in range(3)]
    c = make_collector(kind, 1, symmetric=True, per_tensor_activation=True, min_percentile=1, max_percentile=99)
    for b in batches:
        c.update(_stats(b, c.needs_values))
    lo, hi = c.result()
    allx = np.concatenate([b.reshape(-1) for b in batches])
    expected = {
        "min_max": (allx.min(), allx.max()),
        "mean_min_max": (np.mean([b.min() for b in batches]), np.mean([b.max() for b in batches])),
        "mixed_min_max": (allx.min(), np.mean([np.abs(b).max(axis=2) for b in batches])),
        "percentile": (np.percentile(allx, 1), np.percentile(allx, 99)),
        "mean_percentile": (np.mean([np.percentile(b, 1) for b in batches]), np.mean([np.percentile(b, 99) for b in batches])),
        "threesigma": (
            np.median(allx) - 3 * np.median(np.abs(allx - np.median(allx))),
            np.median(allx) + 3 * np.median(np.abs(allx - np.median(allx))),
        ),
    }[kind]
    assert lo[0] == pytest.approx(expected[0]) and hi[0] == pytest.approx(expected[1])


@pytest.mark.parametrize("kind", ["min_max", "mean_min_max", "mixed_min_max", "percentile"])
def test_merged_collectors_equal_one_collector_on_all_data(kind):
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(2, 3, 10)) for _ in range(4)]
    whole = make_collector(kind, 3, symmetric=False, per_tensor_activation=False)
    a = make_collector(kind, 3, symmetric=False, per_tensor_activation=False)
    b = make_collector(kind, 3, symmetric=False, per_tensor_activation=False)
    for i, x in enumerate(batches):
        whole.update(_stats(x, whole.needs_values))
        (a if i < 2 else b).update(_stats(x, a.needs_values))
    a.merge([b])
    for u, v in zip(a.result(), whole.result()):
        np.testing.assert_allclose(u, v)


def test_ranges_are_finite_and_nonzero():
    signed, scale = symmetric_range(np.array([0.0, np.nan]), np.array([0.0, np.nan]), np.array([0.0, 0.0]), None)
    assert not signed and np.all(scale > 0) and np.all(np.isfinite(scale))
    low, rng = asymmetric_range(np.array([1.0, np.nan]), np.array([1.0, np.nan]))
    assert np.all(rng > 0) and np.all(np.isfinite(low))
    signed, scale = symmetric_range(np.array([-2.0]), np.array([1.0]), np.array([-2.0]), None)
    assert signed and scale[0] == 2.0


def test_compression_state_roundtrip_and_errors():
    spec = QuantizerSpec(num_bits=8, scale_shape=(4, 1), narrow_range=True, is_quantized_on_export=True)
    pts = {
        0: QuantizationPoint("OPERATION_WITH_WEIGHTS", "M/NNCFLinear[fc]/linear_0", None, spec, ["M/NNCFLinear[fc]/linear_0"]),
        1: QuantizationPoint("OPERATOR_PRE_HOOK", "M/NNCFLinear[fc]/linear_0", 0, QuantizerSpec()),
        2: QuantizationPoint("OPERATOR_PRE_HOOK", "M/NNCFLinear[g]/linear_0", 0, QuantizerSpec()),
    }
    setup = QuantizerSetup(pts, [[1, 2]], 2, 1)
    state = make_compression_state(setup, {"scheduler_state": {"current_step": 3, "current_epoch": 1}})
    setup2, ctrl = parse_compression_state(state)
    assert setup2.to_state() == setup.to_state() and ctrl["scheduler_state"]["current_step"] == 3
    assert setup2.groups() == [[0], [1, 2]]
    assert state["builder_state"]["quantization"]["version"] == 2
    with pytest.raises(CompressionStateError, match="builder_state"):
        parse_compression_state({"weight": 1})
    bad = make_compression_state(setup, {})
    bad["builder_state"]["quantization"]["quantizer_setup"]["quantization_points"]["0"]["qspec"]["bogus"] = 1
    with pytest.raises(CompressionStateError, match="bogus"):
        parse_compression_state(bad)
