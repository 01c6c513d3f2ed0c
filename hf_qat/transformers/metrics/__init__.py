"""Metric modules shipped with hf_qat, loaded with ``evaluate`` from this package (no hub download).

``evaluate.load("accuracy")`` fetches the metric's script from the hub, which fails offline. The
modules here have the same names and call signatures (``accuracy``, ``f1``, ``seqeval``);
:func:`load_metric` loads them locally.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["SHIPPED_METRICS", "load_metric"]

_HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED_METRICS = tuple(sorted(d for d in os.listdir(_HERE) if os.path.isfile(os.path.join(_HERE, d, f"{d}.py"))))


def load_metric(name: str, **kwargs: Any):
    """``evaluate.load`` for a metric shipped with hf_qat (``accuracy``, ``f1``, ``seqeval``).

    Raises:
        `ValueError`: a metric hf_qat does not ship; the message lists the ones it does.
    """
    import evaluate

    if name not in SHIPPED_METRICS:
        raise ValueError(
            f"hf_qat ships the metrics {list(SHIPPED_METRICS)}, not {name!r}. "
            f"Use evaluate.load({name!r}) directly when the hub is reachable."
        )
    return evaluate.load(os.path.join(_HERE, name), **kwargs)
