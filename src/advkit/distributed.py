"""Helpers for running advkit under ``torch.distributed`` (``torchrun``), on any backend.

Each rank takes a disjoint, contiguous shard of the dataset, with no padding
(``torch.utils.data.DistributedSampler`` pads the last shard by repeating
samples, which would count them twice), and per-sample randomness comes from
``(seed, dataset index)`` through ``sample_ids=`` so that every sample's result
is the same whatever the number of processes. Without an initialized process
group every function here behaves as for a single process (rank 0 of 1).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

__all__ = [
    "ShardSampler",
    "all_gather_rows",
    "all_reduce_max",
    "all_reduce_sum",
    "barrier",
    "collective_device",
    "init_from_env",
    "is_main",
    "rank_world",
    "shard_range",
    "shutdown",
]


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

    Examples:
        >>> shard_range(5, 0, 2), shard_range(5, 1, 2)
        (range(0, 2), range(2, 5))
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

    Attributes:
        indices: the shard, a ``range`` of dataset indices.
        rank: the rank the shard belongs to.
        world: the number of shards the dataset was split into.
    """

    def __init__(self, data: Sized | int, rank: int | None = None, world: int | None = None):
        n = data if isinstance(data, int) else len(data)
        if rank is None or world is None:
            rank, world = rank_world()
        self.indices = shard_range(n, rank, world)
        self.rank = rank
        self.world = world

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def collective_device(device: str | torch.device | None = None) -> torch.device:
    """Where tensors must live for this process group's collectives: the one rule.

    With the NCCL backend (and more than one process) each rank must use its
    own GPU: ``device``, the device this rank computes on, when it is a CUDA
    device, else the current CUDA device (``torch.cuda.current_device()``,
    GPU 0 unless the program called ``torch.cuda.set_device``, as
    `init_from_env` does). With any other backend, or without a process group,
    the CPU. `advkit.evaluate` passes its compute device, `all_gather_rows`
    the device of the tensor it gathers, so both send through the same GPU.

    Examples:
        >>> collective_device("cpu")  # one process
        device(type='cpu')
    """
    if rank_world()[1] > 1 and dist.get_backend() == "nccl":
        dev = None if device is None else torch.device(device)
        if dev is not None and dev.type == "cuda" and dev.index is not None:
            return dev
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over all ranks, in place, and return it (a no-op for one process).

    With the NCCL backend ``t`` must live on this rank's GPU.
    """
    if rank_world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: Tensor) -> Tensor:
    """Element-wise maximum of ``t`` over all ranks, in place (a no-op for one process).

    With the NCCL backend ``t`` must live on this rank's GPU.
    """
    if rank_world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_rows(t: Tensor) -> Tensor:
    """Every rank's ``t`` concatenated along dimension 0, in rank order, on every rank.

    The ranks' tensors may differ in their first dimension (e.g. shards whose
    lengths differ by one, or an empty shard) but must agree in the others and
    in dtype. For the transfer each is padded to the longest with zeros, and
    the padding is cut off again: no row is repeated or lost. Without a process
    group ``t`` is returned as is. The result lives on ``t``'s device; the
    transfer goes through `collective_device` of ``t``'s device: with the NCCL
    backend this rank's GPU (``t``'s own when it is on a GPU), with gloo the
    CPU.

    Args:
        t: ``(n_rank, ...)`` rows of this rank.

    Returns:
        ``(sum of n_rank, ...)``: rank 0's rows, then rank 1's, and so on.
    """
    world = rank_world()[1]
    if world == 1:
        return t
    dev = collective_device(t.device)
    local = t.to(dev)
    size = torch.tensor([local.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).to(t.device)


def barrier() -> None:
    """Wait for every rank (a no-op for one process)."""
    if rank_world()[1] > 1:
        dist.barrier()


def init_from_env(device: str | torch.device | None = None) -> torch.device:
    """Join the process group that ``torchrun`` describes, and pick this rank's device.

    Reads ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` from the environment (``torchrun`` sets them). With more
    than one process it initializes ``torch.distributed`` (NCCL for CUDA,
    gloo for CPU) unless a group exists already; on CUDA each process takes
    GPU ``LOCAL_RANK`` of its node. Without ``torchrun`` (``WORLD_SIZE`` unset
    or 1) nothing is initialized and the device is returned as given.

    Args:
        device: ``"cuda"``, ``"cpu"`` or a ``torch.device``; default CUDA when
            available, else CPU. A CUDA device's index is replaced by
            ``LOCAL_RANK`` under ``torchrun``.

    Returns:
        The device this process should use.
    """
    dev = torch.device(
        device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dev


def shutdown() -> None:
    """Leave the process group, if there is one (call it once at the end of a script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
