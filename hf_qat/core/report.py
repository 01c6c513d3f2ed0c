"""Compression statistics reported by a controller (``ctrl.statistics()``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["QuantizationStatistics", "CompressionStatistics"]


@dataclass
class QuantizationStatistics:
    """Counts of a quantized model, as NNCF's ``QuantizationStatistics``."""

    wq_counter: int
    aq_counter: int
    wq_potential_num: int
    aq_potential_num: int
    num_wq_per_bitwidth: dict[int, int] = field(default_factory=dict)
    num_aq_per_bitwidth: dict[int, int] = field(default_factory=dict)
    num_enabled: int = 0
    num_symmetric: int = 0
    num_per_channel: int = 0
    #: group-wise weight quantizers by group size (hf_qat's extension; counted in ``num_per_channel`` too)
    num_per_group_size: dict[int, int] = field(default_factory=dict)

    @property
    def num_quantizers(self) -> int:
        return self.wq_counter + self.aq_counter

    @property
    def ratio_of_enabled_quantizations(self) -> float:
        return 100.0 * self.num_enabled / self.num_quantizers if self.num_quantizers else 0.0

    def to_str(self) -> str:
        rows = [
            ("Weight quantizers", f"{self.wq_counter} / {self.wq_potential_num} quantizable"),
            ("Activation quantizers", f"{self.aq_counter} ({self.aq_potential_num} quantization points)"),
            ("Weight bit-widths", _hist(self.num_wq_per_bitwidth)),
            ("Activation bit-widths", _hist(self.num_aq_per_bitwidth)),
            ("Symmetric / asymmetric", f"{self.num_symmetric} / {self.num_quantizers - self.num_symmetric}"),
            ("Per-channel", f"{self.num_per_channel}"),
            *(
                [("Group-wise", ", ".join(f"{n} of group size {g}" for g, n in self.num_per_group_size.items()))]
                if self.num_per_group_size
                else []
            ),
            ("Enabled quantizers", f"{self.num_enabled} ({self.ratio_of_enabled_quantizations:.1f}%)"),
        ]
        width = max(len(k) for k, _ in rows)
        line = "+" + "-" * (width + 2) + "+" + "-" * 34 + "+"
        body = "\n".join(f"| {k:<{width}} | {v:<32} |" for k, v in rows)
        return f"Quantization statistics:\n{line}\n{body}\n{line}"

    @staticmethod
    def bitwidth_histogram(bits: list[int]) -> dict[int, int]:
        return dict(sorted(Counter(bits).items()))


def _hist(h: dict[int, int]) -> str:
    return ", ".join(f"{b}-bit: {n}" for b, n in h.items()) or "-"


@dataclass
class CompressionStatistics:
    """What ``ctrl.statistics()`` returns: one entry per algorithm (only quantization here)."""

    quantization: QuantizationStatistics

    def to_str(self) -> str:
        return self.quantization.to_str()

    def __iter__(self):
        yield "quantization", self.quantization

    def __str__(self) -> str:
        return self.to_str()
