"""Square Attack: a score-based random search over square windows, for the Linf, L2 and L1
balls."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as nnf
from torch import Tensor

from advkit import checks
from advkit import functional as F
from advkit.attacks.base import Attack, Found
from advkit.attacks.oracle import CompileSpec, Oracle, PrecisionSpec
from advkit.attacks.task import Task, fork_generator, subset_source
from advkit.attacks.tracking import ActiveSet, BestByObjective, improves, keep_best, put_rows
from advkit.norms import NormSpec, Region
from advkit.objectives import margin

__all__ = ["Square", "square_fraction", "window_sides"]

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
"""Iterations (of a 10,000-query run) after which the window's fraction of the image halves."""


def square_fraction(i: int, queries: int, p_init: float, rescale: bool = True) -> float:
    r"""The fraction $p$ of the image the window of iteration ``i`` covers.

    The schedule of Andriushchenko et al. (ECCV 2020): $p$ starts at
    ``p_init`` and halves after iterations 10, 50, 200, 500, 1000, 2000, 4000,
    6000 and 8000 of a 10,000-query run. With ``rescale`` (the default, as in
    the authors' code) the iteration of a run with another budget is first
    rescaled to ``int(i / queries * 10000)``; without it the marks stay where
    they are, as AutoAttack runs its 5,000 queries (so its windows stop
    shrinking after iteration 4000).

    Args:
        i: the iteration, from 0 (the first proposal after the start).
        queries: the query budget of the run.
        p_init: the fraction at the start.
        rescale: stretch the schedule to ``queries``.

    Examples:
        >>> [square_fraction(i, 10000, 0.8) for i in (0, 10, 11, 51, 9000)]
        [0.8, 0.8, 0.4, 0.2, 0.0015625]
        >>> square_fraction(2500, 5000, 0.8) == square_fraction(5000, 10000, 0.8)
        True
        >>> square_fraction(2500, 5000, 0.8, rescale=False)  # halved after 10 ... 2000
        0.0125
    """
    t = int(i / queries * 10000) if rescale else i
    halvings = sum(t > mark for mark in _HALVINGS)
    return p_init / float(2**halvings)


def window_sides(
    p: float, height: int, width: int, *, minimum: int = 1, odd: bool = False
) -> tuple[int, int]:
    """Height and width of a window covering a fraction ``p`` of a ``height x width`` image.

    A square of side ``round(sqrt(p * height * width))`` (at least ``minimum``,
    made odd when ``odd``), as in the paper. Where that side exceeds the
    image's shorter side (a non-square image, or a ``(1, D)`` vector), the
    window spans the shorter side and covers the same fraction along the
    longer one (at least ``minimum``, up to the whole image).

    Examples:
        >>> window_sides(0.05, 28, 28), window_sides(0.05, 28, 28, minimum=3, odd=True)
        ((6, 6), (7, 7))
        >>> window_sides(0.1, 1, 100)  # a vector: an interval of 10 coordinates
        (1, 10)
    """
    area = p * height * width
    side = max(round(math.sqrt(area)), minimum)
    if odd and side % 2 == 0:
        side += 1
    short, full = min(height, width), max(height, width)
    if side <= short:
        return side, side
    long = min(max(round(area / short), minimum), full)
    if odd and long % 2 == 0 and long < full:
        long += 1
    return (short, long) if height <= width else (long, short)


# --------------------------------------------------------------------------- L2 and L1 patterns


def _bump(a: int, b: int, dtype: torch.dtype, device: torch.device, power: int = 2) -> Tensor:
    r"""An ``a x b`` block of nested rectangles: the value at Chebyshev distance $d$ from the
    centre ``(a // 2, b // 2)`` is $\sum_{k=d}^{K-1} 1 / (k + 1)^{power}$,
    $K = \max(a, b) // 2 + 1$ (the paper's L2 update, a smooth bump, with ``power=2`` and
    unit L2 norm; the L1 update of Croce & Hein, ICML 2021, with ``power=4`` and unit L1
    norm)."""
    if a == 0 or b == 0:
        return torch.zeros((a, b), dtype=dtype, device=device)
    k = max(a // 2, b // 2) + 1
    inv = 1.0 / torch.arange(1, k + 1, dtype=dtype, device=device) ** power
    tail = inv.flip(0).cumsum(0).flip(0)  # tail[d] = sum over k >= d
    rows = (torch.arange(a, device=device) - a // 2).abs()
    cols = (torch.arange(b, device=device) - b // 2).abs()
    v: Tensor = tail[torch.maximum(rows[:, None], cols[None, :])]
    return v / _unit_norms(v.reshape(1, -1), power).reshape(())


def _unit_norms(v: Tensor, power: int) -> Tensor:
    """Per row of ``v`` ``(R, N)``, its L2 norm (``power=2``) or L1 norm (``power=4``)."""
    out: Tensor = torch.linalg.vector_norm(v, ord=2 if power == 2 else 1, dim=1)
    return out


@functools.lru_cache(maxsize=32)
def _patterns(a: int, b: int, dtype: torch.dtype, device: torch.device, power: int = 2) -> Tensor:
    """``(2, a, b)``: the two halves of opposite sign split across the rows, then across the
    columns (for a square window the second is the first transposed), of unit L2 norm
    (``power=2``) or unit L1 norm (``power=4``), see `_bump`."""
    top, bottom = _bump(a // 2, b, dtype, device, power), _bump(a - a // 2, b, dtype, device, power)
    left, right = _bump(a, b // 2, dtype, device, power), _bump(a, b - b // 2, dtype, device, power)
    out = torch.stack([torch.cat([top, -bottom], 0), torch.cat([left, -right], 1)])
    return out / _unit_norms(out.flatten(1), power)[:, None, None]


# --------------------------------------------------------------------------- helpers


def _image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(C, H, W)`` under which a sample of ``shape`` is searched."""
    if len(shape) == 1:
        return 1, 1, shape[0]
    if len(shape) == 2:
        return shape[0], 1, shape[1]
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    raise checks.InputError(
        f"Square searches images (B, C, H, W), signals (B, C, L) and vectors (B, D); got inputs "
        f"of shape (B, {', '.join(map(str, shape))}). Reshape them to one of these (e.g. fold "
        "the extra axes into the channels) and undo the reshape inside the model."
    )


@functools.lru_cache(maxsize=64)
def _offsets(sides: tuple[int, int], width: int, device: torch.device) -> Tensor:
    """``(h * w,)``: the flat offsets of a window of ``sides`` from its top-left corner, row
    by row, in an image of ``width`` columns."""
    rows = torch.arange(sides[0], device=device) * width
    return (rows[:, None] + torch.arange(sides[1], device=device)).flatten()


def _window_index(corner: Tensor, sides: tuple[int, int], width: int) -> Tensor:
    """``(R, 1, h * w)``: per sample, the flat positions (``row * width + column``) of the
    window of ``sides`` whose top-left corner is ``corner`` (``(R, 2)``), row by row."""
    start = corner[:, 0:1] * width + corner[:, 1:2]
    return (start + _offsets(sides, width, corner.device)).unsqueeze(1)


def _corner(
    bits: Tensor, sides: tuple[int, int], height: int, width: int, edge: bool = True
) -> Tensor:
    """``(..., 2)`` window positions from two columns of random bits ``(..., 2)``
    (`advkit.functional.randbits`), uniform over those where the window fits; without
    ``edge``, over those that leave the last row and column free (where the window is
    shorter than the side), as the authors' code and AutoAttack draw them."""
    cut = 0 if edge else 1
    spans = (max(height - sides[0] + 1 - cut, 1), max(width - sides[1] + 1 - cut, 1))
    return torch.stack([bits[..., 0] % spans[0], bits[..., 1] % spans[1]], dim=-1)


def _rows(v: Any, rows: Tensor) -> Any:
    """The ``rows`` of a search constant: a tensor's or a region's rows, else itself."""
    if isinstance(v, Tensor):
        return v.index_select(0, rows)
    if isinstance(v, Region):
        return v.subset(rows)
    return v


def _judge(task: Task, logits: Tensor) -> tuple[Tensor, Tensor]:
    """The margin per sample (``-inf`` where a logit is not finite, so that any finite point
    beats it and it beats nothing) and the success per sample."""
    finite = torch.isfinite(logits).all(dim=1)
    scores = torch.where(finite, task.loss(logits), -math.inf)
    return scores, task.success(logits, finite=finite)


class _Search:
    """What differs between the norms: the start and the proposal. Chosen once per call."""

    def __init__(self, shape: tuple[int, int, int], device: torch.device, edge: bool) -> None:
        self.c, self.h, self.w = shape
        self.device = device
        self.edge = edge

    width = 0
    """Random int64 columns one iteration draws (`advkit.functional.randbits`)."""

    def corner(self, bits: Tensor, sides: tuple[int, int]) -> Tensor:
        return _corner(bits, sides, self.h, self.w, self.edge)

    def corners(self, bits: Tensor, sides: Sequence[tuple[int, int]]) -> tuple[Tensor, ...]:
        """Per iteration ``j``, the positions of windows of ``sides[j]`` from ``bits[j]``
        (``(k, R, 2)``): one computation where the sides agree (between two marks of the
        schedule)."""
        if all(s == sides[0] for s in sides):
            return self.corner(bits, sides[0]).unbind(0)
        return tuple(self.corner(b, s) for b, s in zip(bits.unbind(0), sides, strict=True))

    def sides(self, p: float) -> tuple[int, int]:
        """The window's sides where it covers a fraction ``p`` of the image."""
        raise NotImplementedError

    def image(self, t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], self.c, self.h, self.w)

    def flat(self, t: Tensor) -> Tensor:
        """``(R, C, H * W)``: a view for inputs laid out contiguous or channels-last."""
        return t.reshape(t.shape[0], self.c, self.h * self.w)

    def constants(self, task: Task) -> dict[str, Any]:
        """Per-sample constants of a run on ``task`` (sliced to the running samples)."""
        raise NotImplementedError

    def start(self, task: Task, const: dict[str, Any], gen: Any) -> Tensor:
        raise NotImplementedError

    def draws(self, bits: Tensor, ps: Sequence[float]) -> list[dict[str, Any]]:
        """The random choices of the next ``len(ps)`` iterations, whose windows cover the
        fractions ``ps`` of the image, from ``bits`` ``(len(ps), R, width)``
        (`advkit.functional.randbits_ahead`): every iteration takes a draw of the same
        width whatever ``p``, so that a keyed source gives each sample the same values in any
        batch."""
        raise NotImplementedError

    def propose(self, x: Tensor, const: dict[str, Any], d: dict[str, Any], done: Tensor) -> Tensor:
        """A new point per sample (``x`` itself where ``done``: broken samples stay)."""
        raise NotImplementedError


class _LinfSearch(_Search):
    """Every coordinate sits at a vertex of its interval ``[lo, hi]`` (the Linf ball cut by
    the box, `advkit.functional.linf_box`); a proposal sets a window, per channel, to one
    vertex. Windows are read and written through ``(R, C, H * W)`` views, so a proposal costs
    one copy of the image and work in proportion to the window."""

    def __init__(self, shape: tuple[int, int, int], device: torch.device, edge: bool) -> None:
        super().__init__(shape, device, edge)
        self.shifts = torch.arange(self.c, device=device).clamp_max(61)
        self.width = 3 + self.c  # the corner (2), the flip pattern (1), a sign per channel

    def constants(self, task: Task) -> dict[str, Any]:
        lo, hi = F.linf_box(task.x0, task.budget(), task.bounds)
        return {"lo": self.flat(lo), "hi": self.flat(hi)}

    def start(self, task: Task, const: dict[str, Any], gen: Any) -> Tensor:
        """Vertical stripes: one random vertex per column and channel, the same down a column."""
        b = task.batch_size
        up = F.randint(0, 2, (b, self.c * self.w), gen, device=self.device).bool()
        up = up.reshape(b, self.c, 1, self.w).expand(b, self.c, self.h, self.w)
        out = torch.where(self.flat(up), const["hi"], const["lo"])
        return out.reshape(task.x0.shape)

    def sides(self, p: float) -> tuple[int, int]:
        return window_sides(p, self.h, self.w)

    def draws(self, bits: Tensor, ps: Sequence[float]) -> list[dict[str, Any]]:
        sides = [self.sides(p) for p in ps]
        corners = self.corners(bits[..., 0:2], sides)
        up = (bits[..., 3:] & 1).bool().unbind(0)
        # A non-zero pattern of channels to flip, for a window stuck at one vertex.
        pattern = bits[..., 2] % (2 ** min(self.c, 62) - 1) + 1
        flip = ((pattern.unsqueeze(-1) >> self.shifts) & 1).bool().unbind(0)
        return [
            {"sides": s, "corner": c, "up": u, "flip": f}
            for s, c, u, f in zip(sides, corners, up, flip, strict=True)
        ]

    def propose(self, x: Tensor, const: dict[str, Any], d: dict[str, Any], done: Tensor) -> Tensor:
        index = _window_index(d["corner"], d["sides"], self.w).expand(-1, self.c, -1)
        xf = self.flat(x)
        now, lo, hi = (t.gather(2, index) for t in (xf, const["lo"], const["hi"]))
        at_hi, at_lo = (now == hi).all(dim=2), (now == lo).all(dim=2)
        # Where every channel's window already sits at one vertex, one draw of the signs would
        # change nothing: draw uniformly among the others instead (the authors' code resamples).
        stuck = (at_hi | at_lo).all(dim=1, keepdim=True)
        up = torch.where(stuck, at_hi ^ d["flip"], d["up"]).unsqueeze(2)
        new = torch.where(done[:, None, None], now, torch.where(up, hi, lo))
        return xf.scatter(2, index, new).reshape(x.shape)


class _L2Search(_Search):
    """The perturbation has L2 norm ``eps`` (before the box); a proposal moves the mass of a
    second window into a new bump in the first. Windows are read and written through
    ``(R, C, H * W)`` views; the image-wide work is the rescaling and the feasible set."""

    power = 2
    """The bumps' decay and norm (`_bump`)."""

    def __init__(self, shape: tuple[int, int, int], device: torch.device, edge: bool) -> None:
        super().__init__(shape, device, edge)
        self.width = 5 + self.c  # two corners (4), the orientation (1), a sign per channel

    def constants(self, task: Task) -> dict[str, Any]:
        x0 = task.x0
        work = F.work_dtype(x0.dtype)
        eps = task.budget()
        if isinstance(eps, Tensor):
            e = eps.to(device=x0.device, dtype=work).expand(task.batch_size)
        else:
            e = torch.full((task.batch_size,), float(eps), dtype=work, device=x0.device)
        region = task.norm.region(x0, eps, task.bounds, exact=True)
        return {"x0": self.flat(x0.to(work)), "eps": e.reshape(-1, 1, 1), "region": region}

    def start(self, task: Task, const: dict[str, Any], gen: Any) -> Tensor:
        """A grid of bumps (about 5 x 5 over the image), each with a random orientation and a
        random sign per channel, rescaled to norm ``eps``, brought into the box."""
        b, dev, x0 = task.batch_size, self.device, const["x0"]
        th, tw = max(self.h // 5, 1), max(self.w // 5, 1)
        nh, nw = self.h // th, self.w // tw
        oh, ow = (self.h - nh * th) // 2, (self.w - nw * tw) // 2
        turn = F.randint(0, 2, (b, nh * nw), gen, device=dev)
        sign = F.randint(0, 2, (b, self.c * nh * nw), gen, device=dev).to(x0.dtype) * 2 - 1
        pats = _patterns(th, tw, x0.dtype, x0.device, self.power)[turn]
        tiles = pats.reshape(b, 1, nh, nw, th, tw) * sign.reshape(b, self.c, nh, nw, 1, 1)
        delta = tiles.permute(0, 1, 2, 4, 3, 5).reshape(b, self.c, nh * th, nw * tw)
        delta = nnf.pad(delta, (ow, self.w - ow - nw * tw, oh, self.h - oh - nh * th))
        return self._first(self.flat(delta), const)

    def _first(self, delta: Tensor, const: dict[str, Any]) -> Tensor:
        n = torch.linalg.vector_norm(delta, dim=(1, 2), keepdim=True)
        return self._place(const["x0"] + delta * (const["eps"] / n.clamp_min(1e-12)), const)

    @staticmethod
    def _place(x: Tensor, const: dict[str, Any]) -> Tensor:
        region = const["region"]
        out: Tensor = region(x.reshape(region.x0.shape))
        return out

    def sides(self, p: float) -> tuple[int, int]:
        return window_sides(p, self.h, self.w, minimum=3, odd=True)

    def draws(self, bits: Tensor, ps: Sequence[float]) -> list[dict[str, Any]]:
        sides = [self.sides(p) for p in ps]
        first, second = self.corners(bits[..., 0:2], sides), self.corners(bits[..., 2:4], sides)
        turn, sign = (bits[..., 4] & 1).unbind(0), (bits[..., 5:] & 1).unbind(0)
        return [
            {"sides": s, "corner": c1, "corner2": c2, "turn": t, "sign": g}
            for s, c1, c2, t, g in zip(sides, first, second, turn, sign, strict=True)
        ]

    def propose(self, x: Tensor, const: dict[str, Any], d: dict[str, Any], done: Tensor) -> Tensor:
        x0, sides = const["x0"], d["sides"]
        delta = self.flat(x).to(x0.dtype) - x0
        first, second = d["corner"], d["corner2"]
        i1 = _window_index(first, sides, self.w).expand(-1, self.c, -1)
        i2 = _window_index(second, sides, self.w).expand(-1, self.c, -1)
        d1, d2 = delta.gather(2, i1), delta.gather(2, i2)
        # The positions of the second window that lie in the first (counted there once).
        rows = second[:, 0:1] - first[:, 0:1] + torch.arange(sides[0], device=x.device)
        cols = second[:, 1:2] - first[:, 1:2] + torch.arange(sides[1], device=x.device)
        in_rows = (rows >= 0) & (rows < sides[0])
        in_cols = (cols >= 0) & (cols < sides[1])
        shared = (in_rows[:, :, None] & in_cols[:, None, :]).reshape(x.shape[0], 1, -1)
        # The new window: a bump (per sample orientation, per channel sign) plus the old
        # window's direction.
        bump = _patterns(sides[0], sides[1], x0.dtype, x.device, self.power).flatten(1)
        sign = (d["sign"].to(x0.dtype) * 2 - 1).unsqueeze(2)
        out = self._move(
            delta, const, (i1, i2), (d1, d2), shared, bump[d["turn"]].unsqueeze(1) * sign
        )
        return torch.where(F.batch_view(done, x.ndim), x, out)

    def _move(
        self,
        delta: Tensor,
        const: dict[str, Any],
        index: tuple[Tensor, Tensor],
        windows: tuple[Tensor, Tensor],
        shared: Tensor,
        bump: Tensor,
    ) -> Tensor:
        """The point with the second window emptied and the first set to ``bump`` plus its old
        direction, carrying the mass of both windows plus an equal share per channel of what
        the budget has left; the perturbation rescaled to ``eps``, brought into the box."""
        x0, eps = const["x0"], const["eps"]
        (i1, i2), (d1, d2) = index, windows
        total = torch.linalg.vector_norm(delta, dim=(1, 2), keepdim=True) ** 2  # squared norms
        mass1 = d1.square().sum(dim=2, keepdim=True)
        mass = mass1 + torch.where(shared, 0.0, d2.square()).sum(dim=2, keepdim=True)
        new = bump + d1 / mass1.sqrt().clamp_min(1e-12)
        room = (eps**2 - total).clamp_min(0) / self.c + mass
        length = torch.linalg.vector_norm(new, dim=2, keepdim=True)
        new = new * (room.sqrt() / length.clamp_min(1e-12))
        moved = delta.scatter(2, i2, 0.0).scatter_(2, i1, new)
        # Its squared norm, from the windows alone; then rescaled to eps.
        moved_sq = (
            total - mass.sum(dim=1, keepdim=True) + new.square().sum(dim=(1, 2), keepdim=True)
        )
        scale = eps / moved_sq.clamp_min(0).sqrt().clamp_min(1e-12)
        return self._place(torch.addcmul(x0, moved, scale), const)


class _L1Search(_L2Search):
    """The L1 form of Croce & Hein (ICML 2021, "Mind the box", whose AutoAttack runs it):
    bumps that decay as ``1 / (k + 1)**4`` with unit L1 norm, and every point the exact
    projection onto the L1 ball and the box (`advkit.norms.Region` with ``exact``)."""

    power = 4

    def _first(self, delta: Tensor, const: dict[str, Any]) -> Tensor:
        # The tiles themselves (unit L1 mass each per channel), projected: as the reference.
        return self._place(const["x0"] + delta, const)

    def _move(
        self,
        delta: Tensor,
        const: dict[str, Any],
        index: tuple[Tensor, Tensor],
        windows: tuple[Tensor, Tensor],
        shared: Tensor,
        bump: Tensor,
    ) -> Tensor:
        """The second window emptied, the first set to ``bump`` plus its old direction with,
        per channel, the L1 mass of both windows and what the budget has left, times the
        number of channels (the reference's rule: on colour images the window takes mass
        from the rest of the image through the projection)."""
        x0, eps = const["x0"], const["eps"]
        (i1, i2), (d1, d2) = index, windows
        total = delta.abs().sum(dim=(1, 2), keepdim=True)
        mass1 = d1.abs().sum(dim=2, keepdim=True)
        mass = mass1 + torch.where(shared, 0.0, d2.abs()).sum(dim=2, keepdim=True)
        new = bump + d1 / mass1.clamp_min(1e-12)
        room = ((eps - total).clamp_min(0) / self.c + mass) * self.c
        new = new * (room / new.abs().sum(dim=2, keepdim=True).clamp_min(1e-12))
        moved = delta.scatter(2, i2, 0.0).scatter_(2, i1, new)
        return self._place(x0 + moved, const)


class Square(Attack):
    r"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a
    query-efficient black-box adversarial attack via random search", ECCV 2020): a
    score-based random search, for the Linf and L2 balls, and the L1 ball in the form
    of Croce & Hein ("Mind the box: l1-APGD for sparse adversarial attacks on image
    classifiers", ICML 2021) that AutoAttack runs in L1.

    It needs the model's scores only, no gradient, so it breaks models whose
    gradients are useless (quantized or non-differentiable inputs, saturated
    softmax) and is the gradient-free member of AutoAttack. It minimises the
    margin $z_y - \max_{j \ne y} z_j$ (targeted: $\max_{j \ne t} z_j - z_t$;
    the attack's objective is `advkit.objectives.margin`, its negative). Each
    iteration proposes a change inside one random window and keeps it only if
    it succeeds or strictly improves the margin. The window covers a fraction
    $p$ of the image that starts at ``p_init`` and halves along the paper's
    schedule (`square_fraction`); its position, and every other random choice,
    is drawn per sample.

    - Linf: the start is vertical stripes (each column of each channel at
      $+\epsilon$ or $-\epsilon$, clipped to the box); a proposal sets the
      window, per channel, to $+\epsilon$ or $-\epsilon$ at random. Every point
      is a vertex of the ball cut by the box, exactly feasible by construction.
      A proposal that would leave the window unchanged is never queried: the
      signs are then drawn among the others (as in the authors' code; the
      AutoAttack reference queries it).
    - L2: the start is a grid of about 5 x 5 bumps of random orientation and
      sign; a proposal empties a second window and puts its mass, that of the
      first and an equal share per channel of the unused budget into a new
      bump in the first; the perturbation is rescaled to norm $\epsilon$, then
      brought into the box (`advkit.norms.Region`).
    - L1: the same moves with bumps that decay as $1/(k+1)^4$ and have unit L1
      mass. The start is the grid of bumps projected onto the L1 ball and the
      box (the exact projection, which keeps the bumps' peaks); a proposal
      gives the new bump, per channel, the L1 mass of both windows plus the
      unused budget shared among the channels, times the number of channels
      (the reference's rule: on colour images the new window draws mass from
      the rest of the image), and projects the point the same way.

    The attack first evaluates the clean inputs (one forward pass, none when
    known, e.g. inside an `advkit.Ensemble`) and searches only the samples
    the model classifies correctly. A sample leaves the batch once broken: the
    running samples are collected every few iterations, the one host
    synchronisation of the loop (a broken sample waits there without
    moving, its evaluations uncounted in ``queries``). ``result.queries``
    holds each sample's query count (see `advkit.AttackResult`): at most
    ``queries`` per restart.

    Differences from the AutoAttack reference (fra31/auto-attack,
    ``square.py``): there one window position (and one set of signs, one
    orientation) is drawn per iteration for the whole batch, so a sample's
    result depends on the batch it is in; here every choice is per sample, and
    with ``sample_ids`` a sample's result is the same in any batch. Window
    positions are uniform over every place the window fits; the authors' code
    and the reference never put a window flush with the bottom or right edge
    (``positions="reference"`` draws that way). Which is stronger depends on
    the model: on 8x8 digits the last row and column carry the digit and
    uniform positions break up to 25% more; on the MNIST CNN with stride-2
    convolutions, which barely sees the last row and column, the reference's
    positions waste less of the L2 budget there (``benchmarks/README.md``).
    Non-square images get rectangular windows of
    the same area where the square would not fit (`window_sides`), and the L2
    start tiles both sides; inputs ``(B, C, L)`` are searched as ``(B, C, 1, L)``
    and vectors ``(B, D)`` as ``(B, 1, 1, D)`` (windows become intervals);
    inputs with more axes raise an ``InputError`` naming the fix. ``queries``
    counts the start (the paper's query budget; the reference's ``n_queries``
    counts the iterations after it).

    Args:
        norm: ``"linf"`` (default), ``"l2"`` or ``"l1"``.
        eps: radius of the ball in input space (may also be given per call, per sample).
        queries: the query budget per sample and restart, the start included
            (the paper's 10,000; AutoAttack runs 5,000).
        p_init: the fraction of the image the first windows cover (0.8 in
            AutoAttack; the paper tunes it per threat model, 0.05 and 0.1
            for undefended ImageNet models).
        restarts: runs from new random starts, each on the samples still robust.
        rescale: stretch the window schedule to ``queries`` (the default, as in
            the paper's code); ``False`` keeps the marks of a 10,000-query run,
            as AutoAttack runs Square (`square_fraction`).
        positions: ``"uniform"`` (default): a window anywhere it fits;
            ``"reference"``: never flush with the last row or column, as in the
            authors' code and AutoAttack (where a window is shorter than the side).
        precision: model precision of the queries (``"bf16"``, ``"fp16"``; see
            `advkit.Attack`); the returned point is scored in full precision.
        compile: run the model compiled (see `advkit.Attack`); the batch
            shrinks as samples break, so expect one recompilation for dynamic
            batch sizes.

    Raises:
        ConfigError: bad settings (``p_init``, ``queries``, ``restarts``, ``positions``).

    Examples:
        >>> import advkit
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
        >>> res = Square(eps=0.1, queries=50)(net, x, y, generator=torch.Generator().manual_seed(0))
        >>> bool((res.queries <= 50).all()), bool((res.distance <= 0.1).all())
        (True, True)
    """

    _look_every = 4
    """Iterations between two looks at which samples are still running (a host sync)."""

    def __init__(
        self,
        norm: NormSpec = "linf",
        eps: float | None = None,
        queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        rescale: bool = True,
        positions: Literal["uniform", "reference"] = "uniform",
        precision: PrecisionSpec = None,
        compile: CompileSpec = False,
    ) -> None:
        super().__init__(norm=norm, eps=eps, objective=margin, precision=precision, compile=compile)
        self.queries = checks.check_positive_int(queries, "queries")
        ok = isinstance(p_init, (int, float)) and not isinstance(p_init, bool)
        if not ok or not 0.0 < p_init <= 1.0:
            raise checks.ConfigError(f"p_init must be a fraction in (0, 1], got {p_init!r}.")
        self.p_init = float(p_init)
        self.restarts = checks.check_positive_int(restarts, "restarts")
        self.rescale = bool(rescale)
        if positions not in ("uniform", "reference"):
            raise checks.ConfigError(
                f"positions must be 'uniform' or 'reference', got {positions!r}."
            )
        self.positions = positions

    def _settings(self) -> dict[str, Any]:
        return {
            **super()._settings(),
            "queries": self.queries,
            "p_init": self.p_init,
            "restarts": self.restarts,
            "rescale": self.rescale,
            "positions": self.positions,
        }

    def run(self, oracle: Oracle, task: Task) -> Found:
        task.budget()
        shape = _image_shape(tuple(task.x0.shape[1:]))
        kind = {"linf": _LinfSearch, "l2": _L2Search, "l1": _L1Search}[task.norm.name]
        search: _Search = kind(shape, task.x0.device, self.positions == "uniform")
        clean = oracle.clean_logits(task)
        best = BestByObjective()
        best.consider(task.x0, clean, *_judge(task, clean))
        spent = torch.zeros(task.batch_size, dtype=torch.int64, device=task.x0.device)
        for restart in range(self.restarts):
            rows = (~best.success).nonzero().squeeze(1)  # one host sync per restart
            if rows.numel() == 0:
                break
            sub = task.subset(rows)
            gen = fork_generator(sub.generator, restart)
            spent = spent.index_add(0, rows, self._search(oracle, sub, search, gen, best, rows))
        return Found(best.x, best.logits, {"queries": spent})

    def _search(
        self,
        oracle: Oracle,
        task: Task,
        search: _Search,
        gen: Any,
        best: BestByObjective,
        rows: Tensor,
    ) -> Tensor:
        """One run on the samples of ``task``; returns their query counts.

        The loop works on the running samples alone (their point, logits, margin,
        success, query count, constants and random source); the whole batch's state is
        written only when samples leave and at the end."""
        n = task.batch_size
        const = search.constants(task)
        x = search.start(task, const, gen)
        logits = oracle.scores(x)
        # The search's point per sample (it moves only when it improves) and its query count.
        state: tuple[Tensor, ...] = (x, logits, *_judge(task, logits))
        spent = torch.ones(n, dtype=torch.int64, device=x.device)
        full: tuple[Tensor, ...] = (*state, spent)
        active = ActiveSet(n, padded=False, device=x.device)
        sub, part, source = task, const, gen
        block: list[dict[str, Any]] = []
        for i in range(self.queries - 1):
            if i % self._look_every == 0:
                before = active.rows
                kept = active.retain(~state[3])  # the host sync of the loop
                if kept is not None:
                    full = tuple(
                        put_rows(f, before, t) for f, t in zip(full, (*state, spent), strict=True)
                    )
                    if active.running == 0:
                        break
                    state = tuple(t.index_select(0, kept) for t in state)
                    spent = spent.index_select(0, kept)
                    assert active.rows is not None
                    sub = task.subset(active.rows)
                    part = {k: _rows(v, kept) for k, v in part.items()}
                    source = subset_source(source, kept)
                # The draws of the iterations up to the next look, in one call.
                ahead = min(self._look_every, self.queries - 1 - i)
                bits = F.randbits_ahead(
                    (active.running, search.width), ahead, source, device=search.device
                )
                ps = [
                    square_fraction(i + j, self.queries, self.p_init, self.rescale)
                    for j in range(ahead)
                ]
                block = search.draws(bits, ps)
            x, logits, loss, success = state
            x_new = search.propose(x, part, block[i % self._look_every], success)
            new_logits = oracle.scores(x_new)
            candidate = (x_new, new_logits, *_judge(sub, new_logits))
            better = improves(candidate[3], candidate[2], success, loss)
            state = keep_best(better, state, candidate)
            spent = spent + ~success  # int64 + bool
        else:
            full = tuple(
                put_rows(f, active.rows, t) for f, t in zip(full, (*state, spent), strict=True)
            )
        best.consider(full[0], full[1], full[2], full[3], rows)
        return full[4]
