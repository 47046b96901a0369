"""What an attack call is about: the `Task`.

A task holds the data of one call (clean inputs, labels, targets), the threat
model (norm, budget, input box), the objective the attacker climbs and the
rule that says when it has won. It never runs the model: that is the
`advkit.attacks.Oracle`'s job. Composite attacks hand their members
sub-tasks: `Task.subset` (some rows), `Task.toward` (other targets, the same
success rule), `Task.using` (another objective or budget).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from advkit import checks
from advkit.functional import Bounds, KeyedGenerator, RandomSource, Scalar, randint
from advkit.norms import Norm, Region
from advkit.objectives import Objective
from advkit.result import is_success

__all__ = ["Task", "fork_generator"]


def fork_generator(generator: RandomSource, tag: int) -> RandomSource:
    """An independent random source for a part of an attack (a member of an ensemble, one
    budget of a sweep), derived from ``generator`` and ``tag`` alone.

    A `KeyedGenerator` forks into one with a seed mixed from its seed and
    ``tag`` and the same keys: the draws of sample ``i`` still depend only on
    (seed, tag, key ``i``), not on the batch. A ``torch.Generator`` forks into a
    new generator on its device, seeded from one draw of it (which advances it).
    """
    if isinstance(generator, KeyedGenerator):
        return KeyedGenerator(
            (generator.seed * 0x9E3779B1 + 0x632BE5AB * (tag + 1)) & ((1 << 63) - 1),
            generator.keys,
        )
    if generator is None:
        return None
    seed = int(randint(0, 2**62, (1,), generator, device=generator.device)[0])
    out = torch.Generator(device=generator.device)
    out.manual_seed(seed)
    return out


def subset_source(generator: RandomSource, rows: Tensor) -> RandomSource:
    """The random source of the samples ``rows`` of a batch: a `KeyedGenerator` keeps the
    keys of those rows (their next draws are the ones the whole batch's source would give
    them); a ``torch.Generator`` (or ``None``) is one stream for any batch and is returned
    as it is."""
    if isinstance(generator, KeyedGenerator):
        return generator.subset(rows)
    return generator


class Task:
    """The data, threat model, objective and success rule of one attack call.

    Attributes:
        x0: clean inputs ``(B, ...)``, a private copy the model never sees
            (never modified).
        labels: ``(B,)`` int64 true labels.
        norm: the threat model.
        eps: the budget, a float or a ``(B,)`` tensor on the inputs' device;
            ``None`` for a minimal-norm attack called without one.
        bounds: the input box.
        objective: what the attacker climbs, ``(logits, labels, targets) -> (B,)``.
        generator: the source of every random draw of this task.
        clean_logits: ``(B, C)`` logits at ``x0`` once some pass computed them
            (see `advkit.attacks.Oracle.clean_logits`), else ``None``.
        bar: ``(B,)`` per sample, the distance a minimal-norm result must beat to
            be of use (what the attacks before it in an ensemble found), or
            ``None`` (no bar). An attack may skip work that cannot beat it.

    The targets (`targets`, `goal`) of a call given a target map are resolved
    on the call's first forward pass (they need the number of classes); they
    are read only after it.
    """

    __slots__ = (
        "_goal",
        "_region",
        "_resolve",
        "_targets",
        "bar",
        "bounds",
        "clean_logits",
        "eps",
        "generator",
        "labels",
        "norm",
        "objective",
        "x0",
    )

    def __init__(
        self,
        *,
        x0: Tensor,
        labels: Tensor,
        norm: Norm,
        bounds: Bounds,
        objective: Objective,
        generator: RandomSource,
        eps: Scalar | None = None,
        targets: Tensor | None = None,
        goal: Tensor | None = None,
        clean_logits: Tensor | None = None,
        bar: Tensor | None = None,
        resolve: Callable[[], None] | None = None,
    ) -> None:
        self.x0 = x0
        self.labels = labels
        self.norm = norm
        self.bounds = bounds
        self.objective = objective
        self.generator = generator
        self.eps = eps
        self._targets = targets
        self._goal = goal
        self.clean_logits = clean_logits
        self.bar = bar
        self._resolve = resolve
        self._region: Region | None = None

    # ------------------------------------------------------------------ targets

    def _resolved(self) -> None:
        if self._resolve is not None:
            resolve, self._resolve = self._resolve, None
            resolve()

    def set_targets(self, targets: Tensor | None) -> None:
        """Resolve the targets of a targeted call (the call's checks do it, once)."""
        self._targets = targets
        self._goal = targets
        self._resolve = None

    @property
    def targets(self) -> Tensor | None:
        """``(B,)`` classes the objective pulls towards, or ``None`` (untargeted objective)."""
        self._resolved()
        return self._targets

    @property
    def goal(self) -> Tensor | None:
        """``(B,)`` classes the success rule asks for, or ``None``: success is then any
        misclassification. Equal to `targets` except under `toward`."""
        self._resolved()
        return self._goal

    @property
    def targeted(self) -> bool:
        """Whether success means reaching a target class (not only misclassification)."""
        return self.goal is not None

    # ------------------------------------------------------------------ the rules

    @property
    def batch_size(self) -> int:
        """Number of samples."""
        return int(self.x0.shape[0])

    def budget(self) -> Scalar:
        """The budget of a fixed-eps attack (never ``None`` there)."""
        if self.eps is None:
            raise checks.ConfigError(
                "this attack needs eps: give it to the attack's constructor or to the call."
            )
        return self.eps

    @property
    def region(self) -> Region:
        """The feasible set: the eps-ball around ``x0`` intersected with the box (needs eps)."""
        if self._region is None:
            self._region = self.norm.region(self.x0, self.budget(), self.bounds)
        return self._region

    def loss(self, logits: Tensor) -> Tensor:
        """The objective per sample, ``(B,)``: higher is better for the attacker."""
        out = self.objective(logits, self.labels, self.targets)
        if not isinstance(out, Tensor) or out.shape != (logits.shape[0],):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise checks.ConfigError(
                f"the objective must return one value per sample, shape ({logits.shape[0]},), "
                f"got {shape}."
            )
        return out

    def success(self, logits: Tensor, *, finite: Tensor | None = None) -> Tensor:
        """``(B,)`` bool: the attack has won at these logits (`advkit.result.is_success`).

        Untargeted: the prediction differs from the label; targeted: it equals
        the target (`goal`). Never where a logit is NaN or infinite: the
        prediction of such a row means nothing (``finite``: that test per row,
        where the caller has it already).
        """
        return is_success(logits, self.labels, self.goal, finite=finite)

    # ------------------------------------------------------------------ sub-tasks

    def _copy(self, **changes: Any) -> Task:
        self._resolved()
        fields: dict[str, Any] = {
            "x0": self.x0,
            "labels": self.labels,
            "norm": self.norm,
            "bounds": self.bounds,
            "objective": self.objective,
            "generator": self.generator,
            "eps": self.eps,
            "targets": self._targets,
            "goal": self._goal,
            "clean_logits": self.clean_logits,
            "bar": self.bar,
        }
        fields.update(changes)
        return Task(**fields)

    def subset(self, rows: Tensor) -> Task:
        """The task of the samples ``rows`` (a ``(K,)`` index tensor), in that order.

        Per-sample budgets, targets, known clean logits and a keyed random
        source (its keys) follow the rows; the feasible set is sliced, not
        recomputed.
        """
        self._resolved()

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.index_select(0, rows)

        eps = self.eps
        if isinstance(eps, Tensor) and eps.ndim == 1:
            eps = eps.index_select(0, rows)
        generator = subset_source(self.generator, rows)
        out = self._copy(
            x0=self.x0.index_select(0, rows),
            labels=self.labels.index_select(0, rows),
            eps=eps,
            targets=pick(self._targets),
            goal=pick(self._goal),
            clean_logits=pick(self.clean_logits),
            bar=pick(self.bar),
            generator=generator,
        )
        if self._region is not None:
            out._region = self._region.subset(rows)
        return out

    def toward(self, targets: Tensor) -> Task:
        """The same task with an objective that pulls towards ``targets`` (``(B,)``), while
        success keeps this task's rule (APGD-T and FAB-T optimise a targeted loss and count
        any misclassification)."""
        out = self._copy(targets=targets)
        out._region = self._region
        return out

    def using(
        self,
        *,
        objective: Objective | None = None,
        eps: Scalar | None = None,
        norm: Norm | None = None,
        generator: RandomSource | None = None,
        bar: Tensor | None = None,
    ) -> Task:
        """The same task with another objective, budget, norm, random source or bar
        (``None``: unchanged). The clean logits, once known, are shared with the new task."""
        changes: dict[str, Any] = {}
        if bar is not None:
            changes["bar"] = bar
        if objective is not None and objective is not self.objective:
            changes["objective"] = objective
        if eps is not None and eps is not self.eps:
            changes["eps"] = eps
        if norm is not None and norm != self.norm:
            changes["norm"] = norm
        if generator is not None and generator is not self.generator:
            changes["generator"] = generator
        if not changes:
            return self
        out = self._copy(**changes)
        if "eps" not in changes and type(out.norm) is type(self.norm):
            out._region = self._region
        return out
