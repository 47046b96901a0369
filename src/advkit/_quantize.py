"""uint8 quantization that stays inside the eps-ball: the kernels of ``storage="uint8"``.

A value of the box ``(low, high)`` is stored as the code ``k`` in ``[0, 255]``
of the level ``low + k (high - low) / 255``. Rounding each coordinate of an
adversarial example to its nearest level can push it out of the eps-ball
around its clean input; `quantize` rounds and then repairs, per sample, with
the fewest coordinate changes, measured with the library's own norms
(`advkit.functional`). Pure batched functions, like the norm kernels beside
them; `advkit.io` decides what to do with a sample that no grid point can keep
in the ball.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from advkit.functional import Bounds, l1_norm, l2_norm, linf_norm

__all__ = ["LEVELS", "floor_code", "levels", "nearest_code", "quantize"]

LEVELS = 256
"""Number of grey levels of the ``uint8`` grid."""

_MEASURES: dict[float, Callable[[Tensor], Tensor]] = {
    math.inf: linf_norm,
    2.0: l2_norm,
    1.0: l1_norm,
}


def levels(bounds: Bounds, dtype: torch.dtype) -> Tensor:
    """The 256 grey levels ``low + k (high - low) / 255`` in ``dtype``, on the CPU.

    Computed once in float64 and rounded to ``dtype``; a level that rounding
    pushed outside the box is moved to the next representable value inside,
    so every level lies in ``[low, high]`` exactly. Export and loading both
    decode through this table, so a stored code means the same value everywhere.

    Examples:
        >>> levels((0.0, 255.0), torch.float32)[:3]
        tensor([0., 1., 2.])
    """
    lo, hi = bounds
    k = torch.arange(LEVELS, dtype=torch.float64)
    exact = lo + k * ((hi - lo) / (LEVELS - 1))
    exact[-1] = hi
    table = exact.to(dtype)
    up = torch.full_like(table, math.inf)
    down = torch.full_like(table, -math.inf)
    table = torch.where(table.double() < lo, torch.nextafter(table, up), table)
    table = torch.where(table.double() > hi, torch.nextafter(table, down), table)
    return table


def nearest_code(x: Tensor, bounds: Bounds) -> Tensor:
    """The code (int64 in ``[0, 255]``) of the level nearest to each coordinate of ``x``."""
    lo, hi = bounds
    q = torch.round((x.double() - lo) * ((LEVELS - 1) / (hi - lo)))
    return q.clamp_(0, LEVELS - 1).to(torch.int64)


def floor_code(x: Tensor, bounds: Bounds) -> Tensor:
    """The code (int64 in ``[0, 254]``) of the level at or below each coordinate of ``x``."""
    lo, hi = bounds
    q = torch.floor((x.double() - lo) * ((LEVELS - 1) / (hi - lo)))
    return q.clamp_(0, LEVELS - 2).to(torch.int64)


def quantize(
    x_adv: Tensor,
    x0: Tensor,
    *,
    p: float,
    eps: float | None,
    bounds: Bounds,
    table: Tensor,
) -> tuple[Tensor, Tensor]:
    """Codes of ``x_adv`` on the grid ``table`` (see `levels`), kept in the eps-ball around ``x0``.

    Every coordinate is first rounded to its nearest level. Then, if ``eps`` is
    given, samples whose rounded perturbation left the ball are fixed:

    * Linf (``p = inf``): each coordinate that left ``[x0 - eps, x0 + eps]``
      moves one level back toward the clean value: the nearest level inside
      the interval (rounding moved it by less than one level).
    * L2 / L1 (``p = 2`` / ``1``): coordinates are switched, largest reduction
      of ``|v_i - x0_i|^p`` first, from the level nearest to ``x_adv`` to the
      other level next to ``x_adv``, the one on the clean value's side (still
      within one level of ``x_adv``), until the norm fits. If that is not
      enough (the clean input is off the grid, or ``x_adv`` itself exceeded
      eps by a rounding error), further rounds move coordinates one more level
      toward the level nearest to the clean value, again the fewest first.
      The last possible state is that nearest level on every coordinate, the
      grid point closest to ``x0`` in any Lp norm.

    Feasibility is checked with the library's measure for ``p``
    (`advkit.functional.linf_norm`, ``l2_norm``, ``l1_norm``), compared with
    ``eps`` in float64.

    Args:
        x_adv: ``(B, ...)`` points to store, inside the box.
        x0: ``(B, ...)`` their clean inputs.
        p: the norm's order: ``math.inf``, ``2`` or ``1``.
        eps: the ball's radius, or ``None`` to round without a ball.
        bounds: the box ``(low, high)`` of the grid.
        table: the grid's levels, `levels` of ``bounds`` in the inputs' dtype.

    Returns:
        ``(codes, inside)``: ``codes`` int64 in ``[0, 255]`` with ``x_adv``'s
        shape; ``inside`` ``(B,)`` bool, whether ``table[codes]`` lies in the
        ball (always True without ``eps``). It is False only for a sample no
        point of the grid can keep in the ball (its clean input is off the
        grid and ``eps`` is smaller than its own rounding error).
    """
    if p not in _MEASURES:
        raise ValueError(f"quantize supports p = inf, 2 or 1, got {p!r}.")
    measure = _MEASURES[p]
    table = table.to(device=x_adv.device)
    q = nearest_code(x_adv, bounds)
    if eps is None:
        return q, torch.ones(x_adv.shape[0], dtype=torch.bool, device=x_adv.device)

    def outside(codes: Tensor) -> Tensor:
        return measure(table[codes] - x0).double() > eps

    if p == math.inf:
        for _ in range(3):
            d = (table[q] - x0).double()
            q = torch.where(d > eps, q - 1, torch.where(d < -eps, q + 1, q)).clamp_(0, LEVELS - 1)
    elif bool(outside(q).any()):
        c = nearest_code(x0, bounds)  # the grid point closest to x0, in every Lp norm
        feasible = ~outside(c)
        rows = feasible.reshape(-1, *([1] * (x0.ndim - 1)))
        # first the other level next to x_adv, on the clean value's side ...
        low = floor_code(x_adv, bounds)
        alt = torch.where(x0 < x_adv, low, torch.where(x0 > x_adv, low + 1, q))
        for _ in range(LEVELS):
            closer = (table[alt] - x0).abs() < (table[q] - x0).abs()
            candidate = torch.where(closer & rows, alt, q)  # infeasible samples stay as they are
            q = _greedy_switch(q, candidate, x0, eps, p, measure, table)
            if not bool((outside(q) & feasible).any()):
                break
            # ... then whole levels further toward it, where the float excess needs it
            alt = torch.where(c < q, q - 1, torch.where(c > q, q + 1, q))
    return q, ~outside(q)


def _greedy_switch(
    cur: Tensor,
    alt: Tensor,
    x0: Tensor,
    eps: float,
    p: float,
    measure: Callable[[Tensor], Tensor],
    table: Tensor,
) -> Tensor:
    """Per sample, replace ``cur`` by ``alt`` on the fewest coordinates that bring the norm <= eps.

    ``alt`` must be no farther from ``x0`` than ``cur`` on every coordinate.
    Coordinates are taken in decreasing order of the reduction of
    ``|v_i - x0_i|^p`` they bring; the count is estimated in float64 and then
    raised until the library's measure agrees (or every coordinate is switched).
    """
    shape = cur.shape
    a = (table[cur] - x0).double().abs().pow(p).flatten(1)
    b = (table[alt] - x0).double().abs().pow(p).flatten(1)
    gain = (a - b).clamp_(min=0)
    order = gain.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    excess = a.sum(dim=1) - eps**p
    cum = gain.gather(1, order).cumsum(dim=1)
    count = (cum < excess.unsqueeze(1)).sum(dim=1) + 1
    count = torch.where(excess > 0, count, torch.zeros_like(count)).clamp_(max=order.shape[1])
    full = order.shape[1]
    cur_f, alt_f = cur.flatten(1), alt.flatten(1)
    for attempt in range(66):
        q = torch.where(rank < count.unsqueeze(1), alt_f, cur_f).reshape(shape)
        bad = (measure(table[q] - x0).double() > eps) & (count < full)
        if not bool(bad.any()):
            return q
        # float64 and the measure's precision disagree by a few coordinates at most
        step = 1 if attempt < 64 else full
        count = torch.where(bad, (count + step).clamp_(max=full), count)
    return torch.where(rank < count.unsqueeze(1), alt_f, cur_f).reshape(shape)
