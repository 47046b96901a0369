"""Threat models as values: ``Linf()``, ``L2()``, ``L1(q=...)``.

A `Norm` is a frozen, stateless value that binds the kernels of
`advkit.functional` for one norm: how to measure a perturbation, project
it onto a ball, pick the steepest-ascent direction of a gradient, sample
uniformly from a ball, and take the smallest step onto a hyperplane within the
input box (FAB's projection). The radius ``eps`` is always an argument, never state,
so one norm object serves every budget. Attacks take ``norm="linf"`` (or
``"l2"``, ``"l1"``, ``float("inf")``, ``2``, ``1``) or a `Norm`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from advkit import functional as F
from advkit.checks import ConfigError

__all__ = ["L1", "L2", "Linf", "Norm", "NormSpec", "Region", "resolve_norm"]


@dataclass(frozen=True)
class Norm(ABC):
    """An Lp threat model. Subclasses: `Linf`, `L2`, `L1`."""

    name: ClassVar[str]
    p: ClassVar[float]

    @abstractmethod
    def measure(self, x: Tensor) -> Tensor:
        """Per-sample norm of ``x`` ``(B, ...)``, shape ``(B,)``."""

    @abstractmethod
    def dual_measure(self, x: Tensor) -> Tensor:
        """Per-sample dual norm, ``(B,)``: the largest ``<x, d>`` over unit-norm ``d``."""

    @abstractmethod
    def project(self, delta: Tensor, eps: F.Scalar) -> Tensor:
        """Euclidean projection of each perturbation onto the ball of radius ``eps``."""

    @abstractmethod
    def direction(self, grad: Tensor) -> Tensor:
        """Unit-norm steepest-ascent direction of ``grad`` (0 for a zero gradient)."""

    @abstractmethod
    def sample(self, x: Tensor, eps: F.Scalar, *, generator: F.RandomSource = None) -> Tensor:
        """A perturbation uniform (by volume) in the ball of radius ``eps``, laid out like ``x``."""

    @abstractmethod
    def hyperplane_project(self, x: Tensor, w: Tensor, b: F.Scalar, bounds: F.Bounds) -> Tensor:
        r"""The step of smallest norm from each point ``x`` onto the hyperplane
        $\langle w, z\rangle = b$ within the box ``bounds``; where the box does not reach the
        hyperplane, the step to the box point nearest to it (see
        `advkit.functional.l2_hyperplane_project` and its Linf and L1 siblings). In the work
        dtype of ``x`` and ``w``, laid out like ``x``."""

    def box_project(self, delta: Tensor, x0: Tensor, eps: F.Scalar, bounds: F.Bounds) -> Tensor:
        """The projection `Region` uses with ``exact``: onto the ball intersected with the
        box where the norm has one (L1: `advkit.functional.l1_box_project`); else the
        ball's own (`project`), which the clip to the box then follows (exact for Linf;
        for L2 what the reference attacks do)."""
        return self.project(delta, eps)

    def feasible(self, x: Tensor, x0: Tensor, eps: F.Scalar, bounds: F.Bounds) -> Tensor:
        """``clip(x0 + project(x - x0))``, exactly inside the ball and the box in ``x0``'s
        dtype and memory format (see `advkit.functional.feasible`)."""
        return F.feasible(x, x0, norm=self, eps=eps, bounds=bounds)

    def region(self, x0: Tensor, eps: F.Scalar, bounds: F.Bounds, *, exact: bool = False) -> Region:
        """The feasible set of one attack call, with whatever can be computed once kept;
        ``exact``: points are brought in with `box_project` (see `Region`)."""
        radius = None
        if x0.dtype in (torch.float32, torch.float64):
            radius = F.safe_radius(x0, eps, self.p)
        return Region(self, x0, eps, bounds, radius=radius, exact=exact)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, eq=False)
class Region:
    """The feasible set of an attack call: the ball of radius ``eps`` around ``x0`` (in
    ``norm``) intersected with the box ``bounds``.

    Calling it maps a point to ``norm.feasible(x, x0, eps, bounds)``; for Linf
    the per-coordinate interval is computed once (`advkit.functional.linf_box`)
    and a call is one ``clamp``. With ``exact``, the perturbation is projected
    with `Norm.box_project` instead of the ball's projection: for L1 the exact
    projection onto the ball intersected with the box (what APGD-L1 and the L1
    Square need), which projecting and then clipping is not.

    Attributes:
        norm: the threat model.
        x0: the centres ``(B, ...)``.
        eps: the radius, a float or ``(B,)``.
        bounds: the input box.
        lo, hi: the Linf interval of every coordinate, or ``None``.
        radius: the `advkit.functional.safe_radius` of float32 / float64 inputs
            (other norms), or ``None``.
        exact: project with `Norm.box_project`.
    """

    norm: Norm
    x0: Tensor
    eps: F.Scalar
    bounds: F.Bounds
    lo: Tensor | None = None
    hi: Tensor | None = None
    radius: Tensor | None = None
    exact: bool = False

    def __call__(self, x: Tensor) -> Tensor:
        if self.lo is not None and self.hi is not None:
            return torch.clamp(x.to(self.x0.dtype), self.lo, self.hi)
        project = self._box_project if self.exact else None
        return F.feasible(
            x,
            self.x0,
            norm=self.norm,
            eps=self.eps,
            bounds=self.bounds,
            project=project,
            radius=self.radius,
        )

    def _box_project(self, delta: Tensor, eps: F.Scalar) -> Tensor:
        return self.norm.box_project(delta, self.x0, eps, self.bounds)

    def subset(self, rows: Tensor) -> Region:
        """The region of the samples ``rows``."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.index_select(0, rows)

        eps = self.eps
        if isinstance(eps, Tensor) and eps.ndim == 1:
            eps = eps.index_select(0, rows)
        x0 = self.x0.index_select(0, rows)
        return Region(
            self.norm,
            x0,
            eps,
            self.bounds,
            pick(self.lo),
            pick(self.hi),
            pick(self.radius),
            self.exact,
        )


@dataclass(frozen=True)
class Linf(Norm):
    r"""The $L_\infty$ threat model: every coordinate moves by at most ``eps``."""

    name: ClassVar[str] = "linf"
    p: ClassVar[float] = math.inf

    def measure(self, x: Tensor) -> Tensor:
        return F.linf_norm(x)

    def dual_measure(self, x: Tensor) -> Tensor:
        return F.l1_norm(x)

    def project(self, delta: Tensor, eps: F.Scalar) -> Tensor:
        return F.linf_project(delta, eps)

    def direction(self, grad: Tensor) -> Tensor:
        return F.linf_direction(grad)

    def sample(self, x: Tensor, eps: F.Scalar, *, generator: F.RandomSource = None) -> Tensor:
        return F.linf_sample(x, eps, generator=generator)

    def hyperplane_project(self, x: Tensor, w: Tensor, b: F.Scalar, bounds: F.Bounds) -> Tensor:
        return F.linf_hyperplane_project(x, w, b, bounds)

    def feasible(self, x: Tensor, x0: Tensor, eps: F.Scalar, bounds: F.Bounds) -> Tensor:
        lo, hi = F.linf_box(x0, eps, bounds)
        return torch.clamp(x.to(x0.dtype), lo, hi)

    def region(self, x0: Tensor, eps: F.Scalar, bounds: F.Bounds, *, exact: bool = False) -> Region:
        lo, hi = F.linf_box(x0, eps, bounds)  # clamping to it is exact
        return Region(self, x0, eps, bounds, lo, hi)


@dataclass(frozen=True)
class L2(Norm):
    r"""The $L_2$ threat model: the perturbation's Euclidean length is at most ``eps``."""

    name: ClassVar[str] = "l2"
    p: ClassVar[float] = 2.0

    def measure(self, x: Tensor) -> Tensor:
        return F.l2_norm(x)

    def dual_measure(self, x: Tensor) -> Tensor:
        return F.l2_norm(x)

    def project(self, delta: Tensor, eps: F.Scalar) -> Tensor:
        return F.l2_project(delta, eps)

    def direction(self, grad: Tensor) -> Tensor:
        return F.l2_direction(grad)

    def sample(self, x: Tensor, eps: F.Scalar, *, generator: F.RandomSource = None) -> Tensor:
        return F.l2_sample(x, eps, generator=generator)

    def hyperplane_project(self, x: Tensor, w: Tensor, b: F.Scalar, bounds: F.Bounds) -> Tensor:
        return F.l2_hyperplane_project(x, w, b, bounds)


@dataclass(frozen=True)
class L1(Norm):
    r"""The $L_1$ threat model: the sum of absolute changes is at most ``eps``.

    Args:
        q: fraction of gradient coordinates (largest magnitudes first) that a
            step moves, as in SLIDE (Tramèr & Boneh, NeurIPS 2019, whose
            percentile is ``1 - q``). In ``(0, 1]``; at least one coordinate
            always moves.
    """

    name: ClassVar[str] = "l1"
    p: ClassVar[float] = 1.0
    q: float = 0.01

    def __post_init__(self) -> None:
        if not (isinstance(self.q, (int, float)) and 0.0 < self.q <= 1.0):
            raise ConfigError(f"L1(q=...) must be a fraction in (0, 1], got {self.q!r}.")

    def measure(self, x: Tensor) -> Tensor:
        return F.l1_norm(x)

    def dual_measure(self, x: Tensor) -> Tensor:
        return F.linf_norm(x)

    def project(self, delta: Tensor, eps: F.Scalar) -> Tensor:
        return F.l1_project(delta, eps)

    def box_project(self, delta: Tensor, x0: Tensor, eps: F.Scalar, bounds: F.Bounds) -> Tensor:
        return F.l1_box_project(delta, x0, eps, bounds)

    def direction(self, grad: Tensor) -> Tensor:
        return F.l1_direction(grad, self.q)

    def sample(self, x: Tensor, eps: F.Scalar, *, generator: F.RandomSource = None) -> Tensor:
        return F.l1_sample(x, eps, generator=generator)

    def hyperplane_project(self, x: Tensor, w: Tensor, b: F.Scalar, bounds: F.Bounds) -> Tensor:
        return F.l1_hyperplane_project(x, w, b, bounds)


NormSpec = str | float | Norm
"""Anything `resolve_norm` accepts."""

_BY_NAME: dict[str, type[Norm]] = {
    "linf": Linf,
    "inf": Linf,
    "l_inf": Linf,
    "l2": L2,
    "2": L2,
    "l1": L1,
    "1": L1,
}
_BY_P: dict[float, type[Norm]] = {math.inf: Linf, 2.0: L2, 1.0: L1}


def resolve_norm(norm: NormSpec) -> Norm:
    """Turn ``"linf"`` / ``"l2"`` / ``"l1"``, ``inf`` / ``2`` / ``1`` or a `Norm` into a Norm.

    Raises:
        ConfigError: for an unknown name or order.

    Examples:
        >>> resolve_norm("l2")
        L2()
        >>> resolve_norm(float("inf"))
        Linf()
    """
    if isinstance(norm, Norm):
        return norm
    if isinstance(norm, str):
        cls = _BY_NAME.get(norm.strip().lower().replace(" ", ""))
    elif isinstance(norm, (int, float)) and not isinstance(norm, bool):
        cls = _BY_P.get(float(norm))
    else:
        cls = None
    if cls is None:
        raise ConfigError(
            f"Unknown norm {norm!r}: use 'linf', 'l2' or 'l1' (or advkit.norms.Linf(), L2(), L1(q))."
        )
    return cls()
