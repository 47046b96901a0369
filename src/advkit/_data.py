"""The data path shared by `advkit.evaluate` and `advkit.io.export`.

Both read a map-style dataset (or a non-shuffling ``DataLoader`` over one) in
batches whose samples they must name by their dataset index: `evaluate` to
key each sample's random draws and records, `export` to cut the dataset into
fixed shards. This module is that one path:

- `resolve` accepts the data and settles which dataset indices this process
  visits, with which collate function, batch size and workers;
- `load_batches` builds the ``DataLoader`` over a plan of index batches and
  yields ``(ids, x, y)`` on the compute device, labels as ``int64``; the
  loader's worker seeds come from a generator seeded with the call's seed,
  never from the global RNG;
- `model_device` is where the model computes, `Progress` the optional bar.

One error type per mistake, whoever the caller:

| mistake | error |
|---|---|
| not a map-style dataset (a tensor, an ``IterableDataset``, no ``__len__`` / ``__getitem__``), an empty dataset, batches that are not ``(inputs, labels, ...)`` | `advkit.InputError` |
| a loader whose order hides the dataset indices (shuffling or custom sampler, custom batch sampler, another rank's `ShardSampler`, the whole dataset on every rank), a bad ``batch_size`` or ``num_workers`` | `advkit.ConfigError` |
| ``progress=True`` without tqdm | ``ImportError`` naming the extra (like every missing optional package in advkit) |
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    SequentialSampler,
)
from torch.utils.data.dataloader import default_collate

from advkit import checks
from advkit.distributed import ShardSampler, rank_world

__all__ = ["Progress", "Source", "load_batches", "model_device", "resolve", "unpack"]

DEFAULT_BATCH_SIZE = 128
"""Samples per batch when neither the call nor a loader gives a batch size."""


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter, else of its first buffer, else the CPU."""
    first: Tensor | None = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


@dataclass(frozen=True)
class Source:
    """Resolved data: what to read, in which order, and how.

    Attributes:
        dataset: the map-style dataset.
        length: ``len(dataset)``, all processes together.
        indices: the dataset indices this process visits, in order.
        collate_fn: how items become a batch (the loader's, else the default).
        batch_size: samples per batch.
        num_workers: ``DataLoader`` worker processes.
        drop_last: the loader's ``drop_last`` (`plan` honours it).
        loader: the ``DataLoader`` the caller gave, if any (its worker
            settings and generator are reused).
    """

    dataset: Any
    length: int
    indices: Sequence[int]
    collate_fn: Callable[[list[Any]], Any]
    batch_size: int
    num_workers: int
    drop_last: bool = False
    loader: DataLoader[Any] | None = None

    def plan(self) -> list[list[int]]:
        """`indices` in consecutive batches of `batch_size` (the last one smaller, or
        dropped with ``drop_last``)."""
        idx = list(self.indices)
        out = [idx[a : a + self.batch_size] for a in range(0, len(idx), self.batch_size)]
        if self.drop_last and out and len(out[-1]) < self.batch_size:
            out.pop()
        return out


def _check_map_style(dataset: Any, caller: str, *, in_loader: bool) -> int:
    """``len(dataset)`` of a map-style dataset; `InputError` for anything else."""
    where = "the DataLoader's dataset" if in_loader else "data"
    if isinstance(dataset, Tensor):
        raise checks.InputError(
            f"{caller} needs a map-style dataset whose items are (input, label, ...), got a "
            "tensor; for tensors use torch.utils.data.TensorDataset(x, y)."
        )
    if isinstance(dataset, IterableDataset) or not (
        hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")
    ):
        raise checks.InputError(
            f"{caller} needs each sample's dataset index, so {where} must be a map-style "
            f"dataset (with __len__ and __getitem__ returning (input, label, ...)), got "
            f"{type(dataset).__name__}; an iterable dataset has no stable sample indices."
        )
    try:
        n = len(dataset)
    except TypeError:
        raise checks.InputError(
            f"{where} has no length; {caller} needs a map-style dataset of known length."
        ) from None
    return int(n)


def _loader_order(loader: DataLoader[Any], n: int, caller: str, *, shard: bool) -> Sequence[int]:
    """The dataset indices a non-shuffling loader visits on this process."""
    rank, world = rank_world()
    if loader.batch_size is None or type(loader.batch_sampler) is not BatchSampler:
        raise checks.ConfigError(
            f"{caller} reads each sample's dataset index from the loader's sampler and needs "
            "a DataLoader with batch_size=... and the default batch sampler; pass the dataset "
            f"itself instead: {caller}(model, dataset, ..., batch_size=..., num_workers=...)."
        )
    sampler = loader.sampler
    if isinstance(sampler, ShardSampler) and shard:
        if (sampler.rank, sampler.world) != (rank, world):
            raise checks.ConfigError(
                f"the loader's ShardSampler is shard {sampler.rank} of {sampler.world}, but "
                f"this process is rank {rank} of {world}; build it as ShardSampler(dataset) "
                "after initializing torch.distributed."
            )
        return sampler.indices
    if isinstance(sampler, SequentialSampler):
        if shard and world > 1:
            raise checks.ConfigError(
                f"this process is rank {rank} of {world}, but the DataLoader reads the whole "
                f"dataset on every rank; pass the dataset itself ({caller} shards it) or a "
                "DataLoader with sampler=advkit.distributed.ShardSampler(dataset)."
            )
        return range(n)
    accepted = "sequential (shuffle=False)" + (" or a ShardSampler" if shard else "")
    raise checks.ConfigError(
        f"the DataLoader's sampler is a {type(sampler).__name__}, but {caller} names each "
        f"sample by its dataset index and follows only a {accepted} sampler: build the "
        "loader with shuffle=False (the order changes no result), or pass the map-style "
        f"dataset itself: {caller}(model, dataset, ..., batch_size=...)."
    )


def resolve(
    data: Any,
    *,
    batch_size: int | None,
    num_workers: int | None,
    caller: str,
    shard: bool,
    keep_loader_settings: bool = False,
) -> Source:
    """Accept a map-style dataset or a non-shuffling ``DataLoader`` over one.

    Args:
        data: a map-style dataset whose items are ``(input, label, ...)``, or a
            ``DataLoader`` over one with a sequential sampler (or, with
            ``shard``, an `advkit.distributed.ShardSampler` of this rank) and
            the default batch sampler.
        batch_size: samples per batch; ``None``: the loader's, else 128.
        num_workers: loader worker processes; ``None``: the loader's, else 0.
        caller: the public function's name, for messages (``"evaluate"``).
        shard: each process visits its own contiguous shard
            (`advkit.distributed.shard_range`) instead of the whole dataset.
        keep_loader_settings: a loader's own ``batch_size`` and
            ``num_workers`` win over the arguments (`evaluate`'s rule: its
            arguments describe how a dataset is batched).

    Raises:
        InputError: not a map-style dataset, or an empty one.
        ConfigError: a loader whose order hides the dataset indices, or a
            bad ``batch_size`` / ``num_workers``.
    """
    if isinstance(data, DataLoader):
        n = _check_map_style(data.dataset, caller, in_loader=True)
        order = _loader_order(data, n, caller, shard=shard)
        if keep_loader_settings or batch_size is None:
            batch_size = data.batch_size
        if keep_loader_settings or num_workers is None:
            num_workers = data.num_workers
        source = Source(
            dataset=data.dataset,
            length=n,
            indices=order,
            collate_fn=data.collate_fn,
            batch_size=checks.check_positive_int(batch_size, "batch_size"),
            num_workers=checks.check_positive_int(num_workers, "num_workers", minimum=0),
            drop_last=data.drop_last,
            loader=data,
        )
    else:
        n = _check_map_style(data, caller, in_loader=False)
        rank, world = rank_world()
        source = Source(
            dataset=data,
            length=n,
            indices=ShardSampler(n, rank, world).indices if shard else range(n),
            collate_fn=default_collate,
            batch_size=checks.check_positive_int(
                DEFAULT_BATCH_SIZE if batch_size is None else batch_size, "batch_size"
            ),
            num_workers=checks.check_positive_int(
                0 if num_workers is None else num_workers, "num_workers", minimum=0
            ),
        )
    if n == 0:
        raise checks.InputError(f"the dataset is empty: there is nothing to {caller}.")
    return source


def unpack(batch: Any) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` of a collated batch (the first two items of a tuple or list).

    Integer labels of any dtype (``int32``, ``uint8``, ...) come back as
    ``int64``; other labels are returned as they are, for the label checks to
    refuse with a message.

    Raises:
        InputError: the batch is not a pair of tensors.
    """
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
        if isinstance(x, Tensor) and isinstance(y, Tensor):
            if not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool):
                y = y.to(torch.int64)
            return x, y
    raise checks.InputError(
        "each batch must be a pair (inputs, labels) of tensors (the first two items of a tuple "
        f"or list), got {type(batch).__name__}; wrap the dataset so that its items are "
        "(x, y) with tensors (or numbers) x and y."
    )


def _on_cpu(item: Any) -> bool:
    """Whether a dataset item holds CPU tensors only (they can be pinned for fast copies)."""
    parts = item if isinstance(item, (tuple, list)) else (item,)
    return all(p.device.type == "cpu" for p in parts if isinstance(p, Tensor))


def load_batches(
    source: Source, plan: Sequence[Sequence[int]], *, device: torch.device, seed: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Read the batches of ``plan`` (lists of dataset indices) and move them to ``device``.

    Yields ``(ids, x, y)`` per batch: ``ids`` the ``(b,)`` int64 dataset
    indices, ``x`` the inputs, ``y`` the labels (``int64`` when integer), all
    on ``device``. The ``DataLoader`` is built here over ``source.dataset``
    with the source's collate function, workers and (if it came from a
    loader) worker settings; its workers' seeds come from the loader's own
    generator if it has one, else from ``torch.Generator().manual_seed(seed)``:
    the global RNG is never drawn from. Pinned memory is used for CPU data
    going to a GPU.

    Raises:
        InputError: a batch is not ``(inputs, labels, ...)``, or the collate
            function returned another number of samples than asked for.
    """
    if not plan:
        return
    extra: dict[str, Any] = {}
    generator = None
    if source.loader is not None:
        given = source.loader
        generator = given.generator
        extra = {
            "worker_init_fn": given.worker_init_fn,
            "multiprocessing_context": given.multiprocessing_context,
            "timeout": given.timeout,
        }
        if source.num_workers > 0 and given.prefetch_factor is not None:
            extra["prefetch_factor"] = given.prefetch_factor
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        source.dataset,
        batch_sampler=[list(b) for b in plan],
        collate_fn=source.collate_fn,
        num_workers=source.num_workers,
        pin_memory=device.type == "cuda" and _on_cpu(source.dataset[plan[0][0]]),
        generator=generator,
        **extra,
    )
    for idx, batch in zip(plan, loader, strict=True):
        x, y = unpack(batch)
        if x.ndim == 0 or x.shape[0] != len(idx):
            raise checks.InputError(
                f"the collate function returned {x.shape[0] if x.ndim else 0} inputs for a "
                f"batch of {len(idx)} samples; it must stack one input per sample along "
                "dimension 0."
            )
        ids = torch.tensor(list(idx), dtype=torch.int64)
        yield (
            ids.to(device),
            x.to(device, non_blocking=True),
            y.to(device, non_blocking=True),
        )


class Progress:
    """An optional tqdm progress bar on stderr, over samples, shown by rank 0 only.

    ``progress``: ``None`` shows it when tqdm is installed and stderr is a
    terminal; ``True`` does the same but raises ``ImportError`` (naming the
    extra) when tqdm is missing; ``False`` never shows it.

    With ``fractions`` (one label per column) `update` takes a ``(b, k)``
    bool tensor and the bar shows, per column, the running fraction of samples
    flagged (``robust 2/255:64.3% 8/255:31.0%``; the first and last of more
    than three columns); else `update` takes the number of samples done.
    """

    def __init__(
        self,
        progress: bool | None,
        *,
        total: int,
        desc: str,
        unit: str = "sample",
        fractions: Sequence[str] = (),
        fraction_name: str = "robust",
    ) -> None:
        self.bar: Any = None
        if progress is False:
            return
        try:
            tqdm = importlib.import_module("tqdm").tqdm
        except ImportError:
            if progress:
                raise ImportError(
                    "progress=True needs tqdm: pip install 'advkit[progress]' (or tqdm), "
                    "or pass progress=False."
                ) from None
            return
        rank, world = rank_world()
        isatty = getattr(sys.stderr, "isatty", None)
        if rank != 0 or not (callable(isatty) and isatty()):
            return
        self.labels = list(fractions)
        count = len(self.labels)
        self.shown = sorted({0, count - 1}) if count > 3 else list(range(count))
        self.name = fraction_name
        self.done = 0
        self.flagged = [0] * count
        if world > 1:
            desc = f"{desc} (rank 0 of {world})"
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(self, done: int | Tensor) -> None:
        """Advance by ``done`` samples (an int, or a ``(b, k)`` bool tensor of flags)."""
        if self.bar is None:
            return
        if isinstance(done, Tensor):
            counts = done.sum(dim=0).tolist()
            self.flagged = [a + int(b) for a, b in zip(self.flagged, counts, strict=True)]
            count = int(done.shape[0])
        else:
            count = int(done)
        self.done += count
        if self.labels and self.done:
            post = " ".join(
                f"{self.labels[k]}:{100 * self.flagged[k] / self.done:.1f}%" for k in self.shown
            )
            self.bar.set_postfix_str(f"{self.name} {post}", refresh=False)
        self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
