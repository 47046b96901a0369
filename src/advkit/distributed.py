"""Helpers for running advkit under ``torch.distributed`` (``torchrun``), on any backend.

Each rank takes a disjoint, contiguous shard of the dataset, with no padding
(``torch.utils.data.DistributedSampler`` pads the last shard by repeating
samples, which would count them twice), and per-sample randomness comes from
``(seed, dataset index)`` through ``sample_ids=`` so that every sample's result
is the same whatever the number of processes. Without an initialized process
group every function here behaves as for a single process (rank 0 of 1).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

__all__ = ["ShardSampler", "all_reduce_sum", "barrier", "is_main", "rank_world", "shard_range"]


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process is rank 0 (the one that writes reports and manifests)."""
    return rank_world()[0] == 0


def shard_range(n: int, rank: int | None = None, world: int | None = None) -> range:
    """The indices ``[n * rank // world, n * (rank + 1) // world)`` of one rank's shard.

    The shards of all ranks are disjoint, contiguous, cover ``range(n)`` exactly
    once, and differ in length by at most one: nothing is padded or repeated.

    Example:
        >>> [list(shard_range(5, r, 2)) for r in range(2)]
        [[0, 1], [2, 3, 4]]
    """
    if rank is None or world is None:
        rank, world = rank_world()
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world) with world >= 1, got {rank} of {world}.")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    return range(n * rank // world, n * (rank + 1) // world)


class ShardSampler(Sampler[int]):
    """Yields this rank's `shard_range` of a dataset, in order, without padding.

    Args:
        data: a sized dataset, or its length.
        rank: this process's rank (default: from the process group, else 0).
        world: number of processes (default: from the process group, else 1).
    """

    def __init__(self, data: Sized | int, rank: int | None = None, world: int | None = None):
        n = data if isinstance(data, int) else len(data)
        self.indices = shard_range(n, rank, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over all ranks, in place, and return it (a no-op for one process).

    With the NCCL backend ``t`` must live on this rank's GPU.
    """
    if rank_world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    """Wait for every rank (a no-op for one process)."""
    if rank_world()[1] > 1:
        dist.barrier()
