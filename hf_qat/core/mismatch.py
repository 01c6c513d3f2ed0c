"""Reporting how a checkpoint or compression state differs from a model, from plain names and shapes.

Framework-neutral: callers pass ``{name: shape}`` mappings and dotted layer paths (PyTorch module
names, Keras layer paths), get a :class:`MismatchReport` back, and raise their own error with
:meth:`MismatchReport.describe` in the message. Nothing here loads or modifies anything, so a caller
can check *before* it touches the model and refuse without a partial load.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["MismatchReport", "compare_named_shapes", "layer_pattern", "unquantized_repeats"]


@dataclass
class MismatchReport:
    """Differences between what a checkpoint holds and what a model has, in the checkpoint's order.

    Attributes:
        missing: names the model has and the checkpoint lacks.
        unexpected: names the checkpoint has and the model lacks.
        shapes: ``(name, checkpoint shape, model shape)`` for names both have with different shapes.
        other: free-form findings (counts, kinds), already worded.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes or self.other)

    def describe(self, limit: int = 5) -> str:
        """One line per kind of difference, each with its count and the first ``limit`` cases."""

        def first(items: Sequence[str]) -> str:
            more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        parts = []
        if self.shapes:
            cases = [f"{n}: checkpoint {list(a)} vs model {list(b)}" for n, a, b in self.shapes]
            parts.append(f"{len(self.shapes)} shape mismatch(es): {first(cases)}")
        if self.missing:
            parts.append(f"missing {len(self.missing)} key(s): {first(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected {len(self.unexpected)} key(s): {first(self.unexpected)}")
        parts += self.other[:limit]
        return "; ".join(parts) if parts else "no differences"


def compare_named_shapes(
    checkpoint: Mapping[str, Sequence[int]],
    model: Mapping[str, Sequence[int]],
    *,
    optional: Callable[[str], bool] | None = None,
) -> MismatchReport:
    """Compare the tensors a checkpoint holds with those a model has, by name and shape.

    Args:
        checkpoint: name -> shape of every tensor in the checkpoint.
        model: name -> shape of every tensor of the model.
        optional: names the model may have without the checkpoint holding them (not reported as missing).
    """
    report = MismatchReport()
    for name, shape in checkpoint.items():
        if name not in model:
            report.unexpected.append(name)
        elif tuple(shape) != tuple(model[name]):
            report.shapes.append((name, tuple(shape), tuple(model[name])))
    report.missing = [n for n in model if n not in checkpoint and not (optional and optional(n))]
    return report


_INDEX = re.compile(r"(?:(?<=\.)|^)\d+(?=\.|$)")


def layer_pattern(path: str) -> str:
    """A layer path with list indices replaced by ``#``: ``encoder.layer.3.attention.query`` ->
    ``encoder.layer.#.attention.query``. Layers of repeated blocks share a pattern."""
    return _INDEX.sub("#", path)


def unquantized_repeats(quantized: Iterable[str], model_layers: Iterable[str], potential: int) -> list[str]:
    """Layers of a model that a compression state made for a *smaller* model would leave unquantized.

    A compression state lists the layers it quantizes (``quantized``) and how many quantizable layers
    the model it was built on reached in its forward pass (``potential``, NNCF's
    ``build_time_metric_infos.wq_potential_num``). Layers of the model that repeat a quantized layer's
    position in a block (same :func:`layer_pattern`) all run in the forward pass, so if the model has
    more of them than ``potential``, the state was made for a model with fewer blocks: restoring it
    would silently leave the extra blocks in float. Returns those extra layers (empty when consistent,
    or when ``potential`` is unknown, i.e. 0).
    """
    quantized = set(quantized)
    patterns = {layer_pattern(p) for p in quantized}
    repeats = [p for p in model_layers if layer_pattern(p) in patterns]
    if not potential or len(repeats) <= potential:
        return []
    return [p for p in repeats if p not in quantized]
