"""The one result type every attack returns."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

from advkit.checks import ConfigError

__all__ = ["AttackResult", "Part", "Verdict", "is_success"]


def is_success(
    logits: Tensor, labels: Tensor, targets: Tensor | None = None, *, finite: Tensor | None = None
) -> Tensor:
    """The success rule of every attack: ``(B,)`` bool per sample.

    Untargeted (``targets=None``): the prediction ``logits.argmax(dim=1)``
    differs from the label. Targeted: the prediction equals the target. Never
    where a logit is NaN or infinite: the prediction of such a row means
    nothing (its argmax is an accident of the NaN's position).

    Args:
        logits: ``(B, C)`` model outputs.
        labels: ``(B,)`` true labels.
        targets: ``(B,)`` target classes, or ``None`` for an untargeted attack.
        finite: ``(B,)`` bool, whether each row of ``logits`` is finite, where the
            caller has it already (``torch.isfinite(logits).all(dim=1)``).

    Examples:
        >>> import torch
        >>> z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> is_success(z, torch.tensor([0, 0])).tolist()
        [False, True]
        >>> is_success(z, torch.tensor([0, 0]), targets=torch.tensor([1, 2])).tolist()
        [False, True]
    """
    pred = logits.argmax(dim=1)
    if finite is None:
        finite = torch.isfinite(logits).all(dim=1)
    if targets is None:
        return (pred != labels.to(pred.device)) & finite
    return (pred == targets.to(pred.device)) & finite


@dataclass(frozen=True)
class Verdict:
    """How success is decided on a randomized model: over several forward passes.

    One forward pass of a randomized model (input noise, random transformations,
    dropout at inference) is one draw: a perturbation that fools one draw may
    fail on the next, so a verdict from one draw inflates the attack's success
    (and deflates robust accuracy). With ``Verdict(draws=K)`` the point an
    attack returns is scored ``K`` times and the attack succeeds on a sample
    only where **more than** ``quorum * K`` of the draws succeed (a strict
    majority by default); a tie counts as a failure. Use an odd ``K``. The
    result's ``logits`` are those of a draw that agrees with the verdict (the
    first one), so that ``success`` is still `is_success` of ``logits``.

    Pass it to an attack call (``attack(model, x, y, verdict=Verdict(draws=9))``
    or ``verdict=9``) or to `advkit.evaluate` (which also decides the clean
    prediction by the same rule). Each draw is one forward pass, counted in
    the result's ``forward_passes``. Pair it with ``eot=K`` on the attack
    (gradients averaged over draws): EOT makes the attack stronger, the
    verdict makes its success honest.

    Attributes:
        draws: forward passes per verdict; 1 (the default) is one pass, as
            for a deterministic model.
        quorum: the fraction of draws that must be exceeded, in ``[0, 1)``:
            0.5 (default) is a strict majority, 0 is "any draw" (the
            one-lucky-draw rule, for comparison only).

    Raises:
        ConfigError: ``draws`` is not an integer >= 1, or ``quorum`` is not in ``[0, 1)``.

    Examples:
        >>> import torch
        >>> ok = torch.tensor([[True, False], [True, True], [False, True]])  # 3 draws, 2 samples
        >>> Verdict(draws=3).decide(ok).tolist(), Verdict(draws=3, quorum=0.7).decide(ok).tolist()
        ([True, True], [False, False])
    """

    draws: int = 1
    quorum: float = 0.5

    def __post_init__(self) -> None:
        draws: Any = self.draws  # checked as the caller gave it, whatever its annotation
        if isinstance(draws, bool) or not isinstance(draws, numbers.Integral) or draws < 1:
            raise ConfigError(f"Verdict draws must be an integer >= 1, got {draws!r}.")
        q: Any = self.quorum
        if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0.0 <= float(q) < 1.0:
            raise ConfigError(
                f"Verdict quorum must be a fraction in [0, 1) (0.5: a strict majority), got {q!r}."
            )
        object.__setattr__(self, "draws", int(draws))
        object.__setattr__(self, "quorum", float(q))

    @classmethod
    def of(cls, spec: Verdict | int | None) -> Verdict:
        """A verdict from ``None`` (one draw), a number of draws, or a `Verdict`."""
        value: Any = spec  # checked as the caller gave it, whatever its annotation
        if value is None:
            return cls()
        if isinstance(value, Verdict):
            return value
        if not isinstance(value, bool) and isinstance(value, numbers.Integral):
            return cls(draws=int(value))
        raise ConfigError(
            f"verdict must be a number of draws or an advkit.Verdict, got {type(value).__name__}."
        )

    def decide(self, successes: Tensor) -> Tensor:
        """``(B,)`` bool from ``(K, B)`` per-draw successes: more than ``quorum * K`` succeed."""
        count = successes.to(torch.int64).sum(dim=0)
        return count > self.quorum * successes.shape[0]

    def choose(
        self, draws: Tensor, labels: Tensor, targets: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The verdict on ``(K, B, C)`` logits of ``K`` draws: ``(logits, success)``, the
        ``(B, C)`` logits of the first draw that agrees with the ``(B,)`` verdict."""
        ok = torch.stack([is_success(z, labels, targets) for z in draws.unbind(0)])
        success = self.decide(ok)
        first = (ok == success.unsqueeze(0)).to(torch.int8).argmax(dim=0)
        rows = torch.arange(draws.shape[1], device=draws.device)
        return draws[first, rows], success


def _scalar_eps(eps: Any) -> float | None:
    """``eps`` as a float if it is one budget (a real number or a 0-d tensor), else None."""
    if isinstance(eps, Tensor) and eps.ndim == 0:
        return float(eps.detach())
    if isinstance(eps, bool):
        return None
    if isinstance(eps, numbers.Real):
        return float(eps)
    return None


@dataclass(frozen=True, repr=False)
class AttackResult:
    """What an attack found, batched over the samples of one call.

    Attributes:
        x_adv: adversarial inputs, always feasible: inside the eps-ball around
            the clean inputs and inside the model's input box. Same shape,
            dtype, device and memory format as the inputs. Where the attack
            failed it holds the best attempt (highest objective), which is
            still feasible.
        success: ``(B,)`` bool, computed on exactly ``x_adv``: the prediction
            differs from the label (untargeted) or equals the target (targeted).
            An untargeted attack succeeds trivially on misclassified inputs.
        distance: ``(B,)`` norm of ``x_adv - x`` in the attack's norm, in input
            space, float64 (computed from the exact differences, so a point inside
            the ball never reports more than eps).
        logits: ``(B, C)`` model outputs on ``x_adv``.
        labels: ``(B,)`` true labels the attack was given.
        targets: ``(B,)`` target classes of a targeted attack, else ``None``.
        norm: name of the threat model (``"linf"``, ``"l2"``, ``"l1"``).
        forward_passes: number of batched forward passes of the model.
        backward_passes: number of batched input-gradient backward passes.
        broken_by: for a composite attack (`advkit.Ensemble`,
            `advkit.MultiTargeted`), ``(B,)`` int64: the index of the part
            (member, target) whose point was returned where the attack
            succeeded, ``-1`` where it did not; else ``None``.
        parts: for a composite attack, what each part did (see `Part`), in
            the order they ran; else empty.
        queries: for a score-based attack (`advkit.Square`), ``(B,)`` int64: the
            model evaluations each sample's search made, up to and including the
            one that broke it (all of them where none did), summed over restarts:
            the query count of the black-box literature. Samples the model
            already misclassifies are not searched (0). The clean evaluation is
            not included. ``None`` for other attacks.
    """

    x_adv: Tensor
    success: Tensor
    distance: Tensor
    logits: Tensor
    labels: Tensor
    targets: Tensor | None
    norm: str
    forward_passes: int
    backward_passes: int
    broken_by: Tensor | None = None
    parts: tuple[Part, ...] = ()
    queries: Tensor | None = None

    @property
    def targeted(self) -> bool:
        """Whether the attack was targeted."""
        return self.targets is not None

    @property
    def success_rate(self) -> float:
        """Fraction of samples on which the attack succeeded (a host sync)."""
        return int(self.success.sum()) / max(self.success.numel(), 1)

    @overload
    def robust_accuracy(self, eps: float | None = None) -> float: ...

    @overload
    def robust_accuracy(self, eps: Sequence[float] | Tensor) -> list[float]: ...

    def robust_accuracy(
        self, eps: float | Sequence[float] | Tensor | None = None
    ) -> float | list[float]:
        """Fraction of samples the attack did not break (untargeted attacks).

        Args:
            eps: ``None``: the fraction of samples where the attack failed.
                A number (a Python or numpy real, or a 0-d tensor) or a
                sequence of numbers (or a 1-d tensor): the fraction of samples
                with no successful perturbation of norm ``<= eps``
                (``distance > eps`` or failure), for each eps: the
                robust-accuracy curve of a minimal-norm attack from one run.
                For a fixed-budget attack this is only meaningful for eps up
                to the attack's budget.

        Returns:
            A float, or a list with one float per eps.

        Raises:
            ConfigError: for a targeted attack, where robust accuracy is not
                the complement of success; use ``success_rate`` there.

        Examples:
            >>> import torch
            >>> r = AttackResult(x_adv=torch.zeros(4, 1), success=torch.tensor([1, 1, 1, 0]).bool(),
            ...     distance=torch.tensor([0.1, 0.5, 2.0, float("inf")]), logits=torch.zeros(4, 2),
            ...     labels=torch.zeros(4).long(), targets=None, norm="l2",
            ...     forward_passes=1, backward_passes=0)
            >>> r.robust_accuracy([0.0, 0.1, 1.0, 3.0])
            [1.0, 0.75, 0.5, 0.25]
        """
        if self.targets is not None:
            raise ConfigError(
                "robust_accuracy() is defined for untargeted attacks; for a targeted attack "
                "use result.success_rate (fraction of samples that reached their target)."
            )
        n = max(self.success.numel(), 1)
        if eps is None:
            return int((~self.success).sum()) / n
        one = _scalar_eps(eps)
        if one is not None:
            return int((~(self.success & (self.distance <= one))).sum()) / n
        items: Any = eps
        if isinstance(items, (Tensor, np.ndarray)) and items.ndim == 1:
            items = items.tolist()
        ok = isinstance(items, Sequence) and not isinstance(items, str)
        values = [_scalar_eps(e) for e in items] if ok else [None]
        if any(v is None for v in values):
            raise ConfigError(
                "eps must be None, a number (a float, a numpy scalar or a 0-d tensor) or a "
                f"sequence of numbers (or a 1-d tensor or array), got {eps!r}."
            )
        return [self.robust_accuracy(v) for v in values]

    def __repr__(self) -> str:
        kind = "targeted" if self.targeted else "untargeted"
        return (
            f"AttackResult({kind}, norm={self.norm}, batch={self.x_adv.shape[0]}, "
            f"success_rate={self.success_rate:.4f}, forward_passes={self.forward_passes}, "
            f"backward_passes={self.backward_passes})"
        )


@dataclass(frozen=True, repr=False)
class Part:
    """What one part of a composite attack did: a member of an ensemble, one target of a
    multi-targeted attack, one budget of a sweep.

    Attributes:
        name: the part's name (e.g. ``"APGD"``, ``"target 2"``, ``"eps=0.03"``).
        rows: ``(K,)`` int64 indices of the samples it ran on, into the composite's batch.
        result: its `AttackResult` on those samples (row ``k`` is sample ``rows[k]``).
        eps: the budget it ran at, where the composite chose one (a `advkit.Sweep`
            level), else ``None``.
    """

    name: str
    rows: Tensor
    result: AttackResult
    eps: float | None = None

    def __repr__(self) -> str:
        return f"Part({self.name!r}, rows={self.rows.numel()}, result={self.result!r})"
