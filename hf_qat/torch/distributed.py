"""Multi-process calibration: range statistics merged across ranks.

NNCF computes ranges on rank 0 and broadcasts them, so ranks 1..N-1 contribute nothing. hf_qat
collects statistics on every rank (each on its own shard of the calibration data), all-gathers the
collectors' states and merges them (min of minima, max of maxima, sums of means' numerators and
counts, concatenated percentile samples): every rank ends with the ranges a single process would
compute from all ranks' data, identical everywhere.
"""

from __future__ import annotations

import torch.distributed as dist

from ..core.statistics import RangeCollector, merge_states
from ..errors import DistributedError

__all__ = ["is_distributed", "merge_collectors_across_ranks", "world_size", "rank"]


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def merge_collectors_across_ranks(collectors: dict[str, RangeCollector]) -> None:
    """Replace every collector's state by the merge of all ranks' states (in place, on every rank).

    Raises:
        [`DistributedError`]: the ranks hold different quantizers (different models or configs).
    """
    ids = sorted(collectors)
    local = {qid: (collectors[qid].state(), collectors[qid].num_batches) for qid in ids}
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    for r, other in enumerate(gathered):
        if sorted(other) != ids:
            missing = sorted(set(ids) ^ set(other))[:3]
            raise DistributedError(
                f"Range initialisation: rank {r} has different quantizers than rank {dist.get_rank()} "
                f"(first differences: {missing}). Every rank must compress the same model with the same config."
            )
    for qid in ids:
        collector = collectors[qid]
        collector.load_state(merge_states([g[qid][0] for g in gathered], collector.reductions))
        collector.num_batches = sum(int(g[qid][1]) for g in gathered)
