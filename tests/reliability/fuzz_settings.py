"""Hypothesis settings of the reliability tests (applied per test, so other suites are unaffected).

``ci`` (default): derandomized (the same examples on every run, so CI is reproducible), no
per-example deadline (shared CPU cores make timings noisy), no example database written.
``thorough``: ten times the examples with random seeds: ``HF_QAT_HYPOTHESIS_PROFILE=thorough``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("HF_QAT_HYPOTHESIS_PROFILE", "ci")
_BASE = settings(
    derandomize=PROFILE != "thorough",
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def fuzz(n: int) -> settings:
    """Settings for a property test: ``n`` examples in the ``ci`` profile, ten times as many in ``thorough``."""
    return settings(_BASE, max_examples=n * 10 if PROFILE == "thorough" else n)
