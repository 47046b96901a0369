"""The one result type every attack returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

from torch import Tensor

from advkit.checks import ConfigError

__all__ = ["AttackResult", "Part"]


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
    def robust_accuracy(self, eps: Sequence[float]) -> list[float]: ...

    def robust_accuracy(self, eps: float | Sequence[float] | None = None) -> float | list[float]:
        """Fraction of samples the attack did not break (untargeted attacks).

        Args:
            eps: ``None``: the fraction of samples where the attack failed.
                A float or a sequence of floats: the fraction of samples with no
                successful perturbation of norm ``<= eps`` (``distance > eps``
                or failure), for each eps: the robust-accuracy curve of a
                minimal-norm attack from one run. For a fixed-budget attack
                this is only meaningful for eps up to the attack's budget.

        Returns:
            A float, or a list with one float per eps.

        Raises:
            ConfigError: for a targeted attack, where robust accuracy is not
                the complement of success; use ``success_rate`` there.

        Example:
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
        if isinstance(eps, (int, float)):
            return int((~(self.success & (self.distance <= eps))).sum()) / n
        return [self.robust_accuracy(float(e)) for e in eps]

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
