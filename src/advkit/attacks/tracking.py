"""Bookkeeping every attack shares: the best point so far and the samples still running.

* `BestByObjective`: per sample, the best candidate of a fixed-budget search
  (a successful one first, then the highest objective).
* `BestByDistance`: per sample, the closest successful candidate (minimal-norm
  attacks).
* `ActiveSet`: the samples still worth attacking, as an index tensor: exactly
  the running samples, or (padded) one of a few fixed batch sizes, so that
  compiled code sees few shapes.

Everything is batched and written with ``torch.where`` / ``index_copy``; only
`ActiveSet.update` synchronises with the host, on purpose, and an attack
calls it every few steps at most.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["ActiveSet", "BestByDistance", "BestByObjective", "improves", "keep_best", "put_rows"]


def keep_best(
    better: Tensor,
    best: tuple[Tensor, ...],
    new: tuple[Tensor, ...],
) -> tuple[Tensor, ...]:
    """Per sample, take ``new`` where ``better`` (``(B,)`` bool) else ``best``; no host sync."""
    out = []
    for b, n in zip(best, new, strict=True):
        mask = better.reshape(better.shape[0], *([1] * (b.ndim - 1)))
        out.append(torch.where(mask, n, b))
    return tuple(out)


def improves(success: Tensor, loss: Tensor, best_success: Tensor, best_loss: Tensor) -> Tensor:
    """A candidate beats the best so far if it succeeds where the best does not,
    or ties on success with a higher objective (a NaN objective never ranks higher)."""
    return (success & ~best_success) | ((success == best_success) & (loss > best_loss))


def _take(ts: tuple[Any, ...], rows: Tensor | None) -> tuple[Any, ...]:
    """The rows of each per-sample tensor (floats and ``None`` pass through)."""
    if rows is None:
        return ts
    return tuple(t.index_select(0, rows) if isinstance(t, Tensor) and t.ndim > 0 else t for t in ts)


def _widest(kept: Tensor, new: Tensor) -> tuple[Tensor, Tensor]:
    """``kept`` and ``new`` in the wider of their dtypes (themselves when they agree)."""
    if kept.dtype == new.dtype:
        return kept, new
    wide = torch.promote_types(kept.dtype, new.dtype)
    return kept.to(wide), new.to(wide)


def put_rows(full: Tensor, rows: Tensor | None, part: Tensor) -> Tensor:
    """``full`` with ``rows`` replaced by ``part`` (``part`` itself when ``rows`` is None, all
    rows): how a loop that works on the running rows alone writes them back."""
    return part if rows is None else full.index_copy(0, rows, part)


class BestByObjective:
    """Per sample, the best candidate of a fixed-budget search: a successful one first,
    then the highest objective.

    Empty until the first candidate, which must cover the whole batch (the
    start point, or the first iterate). Later candidates may cover some rows
    only (``rows=``, e.g. the `ActiveSet` of an early-stopping attack).

    Attributes:
        x, logits, loss, success: the best candidate of every sample.
    """

    def __init__(self) -> None:
        self.x = self.logits = self.loss = self.success = torch.empty(0)
        self.empty = True

    def consider(
        self,
        x: Tensor,
        logits: Tensor,
        loss: Tensor,
        success: Tensor,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Take, per sample, the candidates that improve on the best; returns which were taken
        (``(len(x),)`` bool)."""
        if self.empty:
            if rows is not None:
                raise RuntimeError("the first candidate must cover the whole batch")
            self.x, self.logits, self.loss, self.success = x, logits, loss, success
            self.empty = False
            return torch.ones_like(success)
        # Clean logits come from a full-precision pass in the inputs' dtype, a reduced-precision
        # search's in float32: keep the wider dtype (a Python-level check, no host sync).
        self.logits, logits = _widest(self.logits, logits)
        self.loss, loss = _widest(self.loss, loss)
        cur = _take((self.x, self.logits, self.loss, self.success), rows)
        better = improves(success, loss, cur[3], cur[2])
        new = keep_best(better, cur, (x, logits, loss, success))
        self.x, self.logits, self.loss, self.success = (
            put_rows(full, rows, part)
            for full, part in zip((self.x, self.logits, self.loss, self.success), new, strict=True)
        )
        return better


class BestByDistance:
    """Per sample, the closest successful candidate of a minimal-norm search.

    Starts from the clean inputs: at distance 0 where they already succeed
    (``start_success``), else at distance ``inf`` (nothing found).

    Attributes:
        x, logits: the best candidate of every sample (the clean input while
            none was found).
        distance: ``(B,)`` its distance (float64), ``inf`` while none was found.
    """

    def __init__(self, x0: Tensor, logits0: Tensor, start_success: Tensor) -> None:
        self.x = x0
        self.logits = logits0
        # float64 (float32 on MPS): distances are compared with budgets given as Python floats
        work = torch.float32 if x0.device.type == "mps" else torch.float64
        zero = torch.zeros(x0.shape[0], dtype=work, device=x0.device)
        self.distance = torch.where(start_success, zero, math.inf)

    @property
    def found(self) -> Tensor:
        """``(B,)`` bool: some successful candidate is known."""
        return torch.isfinite(self.distance)

    def consider(
        self,
        x: Tensor,
        logits: Tensor,
        success: Tensor,
        distance: Tensor,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Take the successful candidates closer than the best; returns which were taken."""
        self.logits, logits = _widest(self.logits, logits)
        cur = _take((self.x, self.logits, self.distance), rows)
        d = distance.to(self.distance.dtype)
        closer: Tensor = success & (d < cur[2])
        new = keep_best(closer, cur, (x, logits, d))
        self.x, self.logits, self.distance = (
            put_rows(full, rows, part)
            for full, part in zip((self.x, self.logits, self.distance), new, strict=True)
        )
        return closer


class ActiveSet:
    """The samples of a batch still worth attacking.

    ``rows`` is ``None`` while every sample runs, else an index tensor into
    the batch. `update` shrinks it to the samples not yet done; with
    ``padded=True`` (the default) its length is one of ``ceil(B / 2**k)``, so
    that compiled code sees at most ``log2(B) + 1`` batch shapes: the padding
    repeats the first running sample, whose copies compute and write identical
    values (and cost passes: up to twice the running rows). With
    ``padded=False`` the rows are exactly the running samples (eager code, whose
    cost follows the batch; PGD and APGD pad only when the model runs compiled).

    Examples:
        >>> active = ActiveSet(8)
        >>> active.update(torch.tensor([1, 1, 1, 1, 1, 0, 1, 0]).bool())
        True
        >>> active.rows
        tensor([5, 7])
    """

    def __init__(
        self, batch: int, *, padded: bool = True, device: torch.device | str | None = None
    ) -> None:
        self.batch = batch
        self.padded = padded
        self.device = device
        self.rows: Tensor | None = None
        self.running = batch

    @property
    def indices(self) -> Tensor:
        """The running rows as an index tensor (``arange(B)`` while all run)."""
        if self.rows is None:
            return torch.arange(self.batch, device=self.device)
        return self.rows

    def retain(self, keep: Tensor) -> Tensor | None:
        """Keep, of the running rows, those where ``keep`` holds (``(R,)`` bool over the
        running rows, unpadded sets only); returns the positions kept, to slice the
        attack's own per-row state with, or ``None`` when all are kept. A host sync."""
        if self.padded:
            raise RuntimeError("retain() needs an ActiveSet built with padded=False")
        rel = keep.nonzero().squeeze(1)
        if rel.numel() == self.running:
            return None
        self.rows = self.indices.index_select(0, rel)
        self.running = int(rel.numel())
        return rel

    def update(self, done: Tensor) -> bool:
        """Keep the samples not ``done`` (``(B,)`` bool over the whole batch); returns whether
        any remain. The one host synchronisation of this module."""
        todo = (~done).nonzero().squeeze(1)
        n = todo.numel()
        self.running = n
        if n == 0:
            self.rows = todo
            return False
        if not self.padded:
            self.rows = None if n == self.batch else todo
            return True
        size = self.batch
        while -(-size // 2) >= n and size > 1:
            size = -(-size // 2)
        # All rows only while every sample runs: at the full size with some done, the done
        # ones are replaced by copies of the first running sample like at any other size.
        self.rows = None if n == self.batch else torch.cat([todo, todo[:1].expand(size - n)])
        return True

    def take(self, *tensors: Any) -> tuple[Any, ...]:
        """The running rows of each per-sample tensor (floats pass through)."""
        return _take(tensors, self.rows)

    def put(self, full: Tensor, part: Tensor) -> Tensor:
        """``full`` with the running rows replaced by ``part``."""
        return put_rows(full, self.rows, part)
