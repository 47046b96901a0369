"""Attacks made of attacks: the worst-case `Ensemble` and `MultiTargeted`.

Both are ordinary attacks: they run their members through `Attack.solve` on
sub-tasks (`Task.subset`, `Task.toward`), so they nest, their pass counts are
the sums of their members', and their results say which part broke each
sample (``result.broken_by``, ``result.parts``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from advkit import checks
from advkit.attacks.base import Attack, Found, MinNormAttack, finish_minimal
from advkit.attacks.oracle import Oracle
from advkit.attacks.task import Task, fork_generator
from advkit.attacks.tracking import BestByDistance, BestByObjective
from advkit.functional import KeyedGenerator
from advkit.objectives import Objective, margin
from advkit.result import AttackResult, Part

__all__ = ["Ensemble", "MultiTargeted", "Sweep", "name_attacks"]


def name_attacks(
    attacks: Attack | Sequence[Attack] | Mapping[str, Attack],
) -> list[tuple[str, Attack]]:
    """Attacks with names: a mapping's keys, else class names (``PGD``, ``PGD#2``, ...).

    Raises:
        ConfigError: not attacks, none at all, or attacks in different norms.
    """
    if isinstance(attacks, Attack):
        items: list[tuple[str, Any]] = [(type(attacks).__name__, attacks)]
    elif isinstance(attacks, Mapping):
        items = [(str(k), v) for k, v in attacks.items()]
    elif isinstance(attacks, Sequence):
        items = []
        seen: dict[str, int] = {}
        for a in attacks:
            base = type(a).__name__
            seen[base] = seen.get(base, 0) + 1
            items.append((base if seen[base] == 1 else f"{base}#{seen[base]}", a))
    else:
        raise checks.ConfigError(
            "attacks must be an Attack, a sequence of attacks or a mapping from names to attacks, "
            f"got {type(attacks).__name__}."
        )
    if not items:
        raise checks.ConfigError("attacks is empty: give at least one attack, e.g. [advkit.PGD()].")
    for name, a in items:
        if not isinstance(a, Attack):
            raise checks.ConfigError(
                f"attack {name!r} is a {type(a).__name__}, not an advkit Attack "
                "(e.g. advkit.PGD(norm='linf', steps=10))."
            )
    norms = {a.norm.name for _, a in items}
    if len(norms) != 1:
        raise checks.ConfigError(
            f"the attacks use different norms {sorted(norms)}, which share no eps axis; "
            "attack each threat model separately."
        )
    return items


def _rows(todo: Tensor) -> Tensor:
    """The indices where ``todo`` holds (a host sync: once per part, never per step)."""
    return todo.nonzero().squeeze(1)


def _record(broken_by: Tensor, rows: Tensor, taken: Tensor, index: int) -> Tensor:
    """``broken_by`` with ``index`` written at the ``rows`` whose candidate was ``taken``."""
    current = broken_by.index_select(0, rows)
    return broken_by.index_copy(0, rows, torch.where(taken, index, current))


def _draws(generator: Any, tag: int, shared: bool) -> Any:
    """The random source of one part: its own stream, or (``shared``) the call's seed afresh,
    as if the part were called alone."""
    if not shared:
        return fork_generator(generator, tag)
    if isinstance(generator, KeyedGenerator):
        return KeyedGenerator(generator.seed, generator.keys)
    if isinstance(generator, torch.Generator):
        fresh = torch.Generator(device=generator.device)
        fresh.manual_seed(generator.initial_seed())
        return fresh
    return generator


def _tag(value: float) -> int:
    """A stable integer for a budget, to key its random draws (Python's float hash is not salted)."""
    return hash(float(value)) & ((1 << 62) - 1)


class Ensemble(Attack):
    r"""The per-sample worst case over attacks: each member runs only on the samples the
    ones before it did not break (the semantics of AutoAttack, Croce & Hein, "Reliable
    evaluation of adversarial robustness with an ensemble of diverse parameter-free
    attacks", ICML 2020).

    With a budget (``eps`` here or in the call; by default the budget the
    fixed-eps members were built with, when they agree on one) it is a
    fixed-eps attack: a sample is broken when some member finds an adversarial
    in the ball.
    Fixed-eps members run at that budget (the call's budget overrides their
    own, as for any attack); minimal-norm members run budgeted (what they find
    is projected onto the ball and re-scored). The result holds, per sample,
    the point of the first member that broke it, or, where none did, the
    members' candidate with the highest ``objective``.

    An ensemble of minimal-norm members (`advkit.DeepFool`, `advkit.CW`,
    `advkit.Sweep`, ...) called without a budget is itself a minimal-norm
    attack: per sample, the smallest adversarial perturbation any member found
    (``inf`` where none); each member runs on every sample not yet at
    distance 0 and is told the distance to beat (`Task.bar`), which a
    `advkit.Sweep` uses to skip the budgets already broken.

    Samples the model already misclassifies are never attacked (their
    result is the clean input). Members get independent random draws (keyed
    by the member's position, so results still do not depend on the batch
    with ``sample_ids``), or, with ``shared_seed``, each the call's own seed
    afresh, so that a member's result on a sample is what a direct call of
    it with the same generator and ``sample_ids`` gives (`advkit.evaluate`
    relies on this). Every member's passes count in the total.
    Ensembles nest. ``result.broken_by`` holds the member that produced each
    returned point (``-1``: none; the clean input) and ``result.parts`` each
    member's own result on the samples it ran on.

    Args:
        attacks: the members, in the order they run: a sequence (named by
            class, ``PGD``, ``PGD#2``, ...) or a mapping from names to attacks.
            All in the same norm.
        eps: default budget of the ensemble (a call's ``eps=`` overrides it).
        independent: run every member on every sample the model classifies
            correctly (each member's own robust accuracy is then known, from
            ``result.parts``); the worst case is the same, at the price of
            running them all in full.
        objective: ranks the members' candidates on samples none of them
            broke (default: the margin, comparable across members).
        shared_seed: give every member the call's own random source afresh
            instead of a stream of its own (see above); two identical members
            then find the same points.

    Examples:
        >>> import advkit
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
        >>> ensemble = Ensemble([advkit.FGSM(), advkit.PGD(steps=5)])
        >>> res = ensemble(net, x, y, eps=0.1, generator=torch.Generator().manual_seed(0))
        >>> [part.name for part in res.parts][:1], res.broken_by.shape
        (['FGSM'], torch.Size([8]))
    """

    def __init__(
        self,
        attacks: Sequence[Attack] | Mapping[str, Attack],
        *,
        eps: float | None = None,
        independent: bool = False,
        objective: Objective = margin,
        shared_seed: bool = False,
    ) -> None:
        self.members = name_attacks(attacks)
        if eps is None:  # the members' own budget, when the fixed-eps ones agree on one
            own = {a.eps for _, a in self.members if not a.minimal}
            eps = own.pop() if len(own) == 1 else None
        super().__init__(norm=self.members[0][1].norm, eps=eps, objective=objective)
        self.independent = bool(independent)
        self.shared_seed = bool(shared_seed)
        self.minimal = eps is None and all(a.minimal for _, a in self.members)

    def _settings(self) -> dict[str, Any]:
        return {
            "attacks": {name: a for name, a in self.members},
            "eps": self.eps,
            "independent": self.independent,
        }

    def __repr__(self) -> str:
        inner = ", ".join(f"{name!r}: {a!r}" for name, a in self.members)
        extra = "" if self.eps is None else f", eps={self.eps!r}"
        extra += ", independent=True" if self.independent else ""
        return f"Ensemble({{{inner}}}{extra})"

    def _runs(self, name: str, parts: Sequence[Part]) -> bool:
        """Whether member ``name`` runs, given the ``parts`` of the members that ran before
        it: always, here; a subclass may make later members depend on earlier results."""
        return True

    def _eligible(self, name: str, task: Task, clean: Tensor, best: Tensor) -> Tensor | None:
        """Which samples member ``name`` may attack, as a ``(B,)`` bool tensor, given their
        ``clean`` logits and the ``best`` logits the members before it found; ``None``: all.
        Asked of every member of a budgeted, not ``independent``, ensemble (never in the
        minimal-norm search): all, here; a subclass may keep a member to some samples, by a
        test on each sample alone (so results still do not depend on the batch)."""
        return None

    def finish(self, oracle: Oracle, task: Task, found: Found) -> AttackResult:
        if self.minimal:  # budgeted or not, the result reads as a minimal-norm attack's
            return finish_minimal(self, oracle, task, found)
        return super().finish(oracle, task, found)

    def run(self, oracle: Oracle, task: Task) -> Found:
        clean = oracle.clean_logits(task)
        clean_ok = task.success(clean)
        broken_by = torch.full((task.batch_size,), -1, dtype=torch.int64, device=clean.device)
        parts: list[Part] = []
        if task.eps is not None:
            best = BestByObjective()
            best.consider(task.x0, clean, task.loss(clean), clean_ok)
            for m, (name, member) in enumerate(self.members):
                done = clean_ok if self.independent else best.success
                rows = _rows(~done)
                if rows.numel() == 0:
                    break
                if not self._runs(name, parts):
                    continue
                eligible = (
                    None if self.independent else self._eligible(name, task, clean, best.logits)
                )
                if eligible is not None:  # a second host sync, for these members only
                    rows = _rows(~done & eligible)
                    if rows.numel() == 0:
                        continue
                sub = task.subset(rows)
                draws = _draws(sub.generator, m, self.shared_seed)
                res = member.solve(oracle, sub.using(generator=draws))
                parts.append(Part(name, rows, res))
                taken = best.consider(
                    res.x_adv, res.logits, sub.loss(res.logits), res.success, rows
                )
                broken_by = _record(broken_by, rows, taken, m)
            broken_by = torch.where(best.success & ~clean_ok, broken_by, -1)
            return Found(best.x, best.logits, {"broken_by": broken_by, "parts": tuple(parts)})

        tracker = BestByDistance(task.x0, clean, clean_ok)
        start = torch.where(clean_ok, 0.0, math.inf).to(tracker.distance.dtype)
        for m, (name, member) in enumerate(self.members):
            bar = start if self.independent else tracker.distance
            if task.bar is not None:
                bar = torch.minimum(bar, task.bar.to(bar.dtype))
            rows = _rows(bar > 0)
            if rows.numel() == 0 or not self._runs(name, parts):
                continue
            sub = task.subset(rows)
            sub = sub.using(
                generator=_draws(sub.generator, m, self.shared_seed),
                bar=bar.index_select(0, rows),
            )
            res = member.solve(oracle, sub)
            parts.append(Part(name, rows, res))
            taken = tracker.consider(res.x_adv, res.logits, res.success, res.distance, rows)
            broken_by = _record(broken_by, rows, taken, m)
        return Found(tracker.x, tracker.logits, {"broken_by": broken_by, "parts": tuple(parts)})


class MultiTargeted(Attack):
    r"""A targeted attack run towards each of the ``k`` most likely wrong classes in turn,
    counting any misclassification as success.

    The targets of each sample are the classes with the highest clean logits
    other than its label; target ``j`` runs only on the samples no earlier
    target broke (with a budget) and its member optimises the targeted
    objective towards it (`Task.toward`), while success keeps the call's own
    rule. ``MultiTargeted(APGD(objective=objectives.dlr))`` is APGD-T, the
    targeted member of AutoAttack (Croce & Hein, ICML 2020), whose targeted DLR
    loss needs at least 4 classes (`advkit.objectives.dlr` raises a
    ``ConfigError`` naming the fix on models with fewer; use
    ``objectives.margin`` there). A minimal-norm member called without a budget
    runs every target on every sample and keeps the closest adversarial.

    Args:
        attack: the member, an attack that takes ``targets`` (its objective is
            called with the target classes).
        num_targets: how many targets ``k``; default ``min(9, C - 1)`` for a
            model with ``C`` classes (AutoAttack's 9 on 10 classes), and never
            more than ``C - 1``.
        skip: leave out the ``skip`` most likely targets and run the ranks after
            them, up to ``num_targets`` (each with the draws it has in the full
            run): the rest of a run that stopped after ``skip`` targets.
        objective: ranks the targets' candidates on samples none broke
            (default: the untargeted margin).

    Raises:
        ConfigError: ``num_targets < 1``, or a call with ``targets=`` (the targets
            are chosen here).

    Examples:
        >>> import advkit
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
        >>> x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 5, (8,))
        >>> apgd_t = MultiTargeted(advkit.APGD(eps=0.1, steps=10, objective=advkit.objectives.dlr))
        >>> res = apgd_t(net, x, y, generator=torch.Generator().manual_seed(0))
        >>> len(res.parts) <= 4
        True
    """

    def __init__(
        self,
        attack: Attack,
        num_targets: int | None = None,
        *,
        objective: Objective = margin,
        skip: int = 0,
    ) -> None:
        if not isinstance(attack, Attack):
            raise checks.ConfigError(
                f"MultiTargeted needs an advkit Attack, got {type(attack).__name__}."
            )
        super().__init__(norm=attack.norm, eps=attack.eps, objective=objective)
        self.attack = attack
        self.num_targets = (
            None if num_targets is None else checks.check_positive_int(num_targets, "num_targets")
        )
        self.skip = checks.check_positive_int(skip, "skip", minimum=0)
        self.minimal = attack.minimal

    def _settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attack": self.attack, "num_targets": self.num_targets}
        if self.skip:
            out["skip"] = self.skip
        return out

    def finish(self, oracle: Oracle, task: Task, found: Found) -> AttackResult:
        if self.minimal:  # budgeted or not, the result reads as a minimal-norm attack's
            return finish_minimal(self, oracle, task, found)
        return super().finish(oracle, task, found)

    def run(self, oracle: Oracle, task: Task) -> Found:
        if task.goal is not None:
            raise checks.ConfigError(
                "MultiTargeted chooses its own targets (the most likely wrong classes); call "
                "it without targets=, or call the member itself for a targeted attack."
            )
        clean = oracle.clean_logits(task)
        classes = clean.shape[1]
        k = min(self.num_targets or 9, classes - 1)
        ranked = clean.scatter(1, task.labels.unsqueeze(1), -math.inf).topk(k, dim=1).indices
        clean_ok = task.success(clean)
        broken_by = torch.full((task.batch_size,), -1, dtype=torch.int64, device=clean.device)
        parts: list[Part] = []
        budgeted = task.eps is not None
        best = BestByObjective()
        tracker = BestByDistance(task.x0, clean, clean_ok)
        if budgeted:
            best.consider(task.x0, clean, task.loss(clean), clean_ok)
        for j in range(self.skip):  # a plain generator: the skipped targets' draws, discarded
            fork_generator(task.generator, j)
        for j in range(self.skip, k):
            rows = _rows(~best.success if budgeted else ~clean_ok)
            if rows.numel() == 0:
                break
            sub = task.subset(rows)
            aimed = sub.toward(ranked.index_select(0, rows)[:, j])
            res = self.attack.solve(oracle, aimed.using(generator=fork_generator(sub.generator, j)))
            parts.append(Part(f"target {j + 1}", rows, res))
            if budgeted:
                taken = best.consider(
                    res.x_adv, res.logits, sub.loss(res.logits), res.success, rows
                )
            else:
                taken = tracker.consider(res.x_adv, res.logits, res.success, res.distance, rows)
            broken_by = _record(broken_by, rows, taken, j)
        extras = {"parts": tuple(parts)}
        if budgeted:
            broken_by = torch.where(best.success & ~clean_ok, broken_by, -1)
            return Found(best.x, best.logits, {**extras, "broken_by": broken_by})
        return Found(tracker.x, tracker.logits, {**extras, "broken_by": broken_by})


class Sweep(MinNormAttack):
    """An attack over a grid of budgets, as a minimal-norm attack: how `advkit.evaluate`
    runs a fixed-eps attack over its eps grid.

    A fixed-eps member runs at each budget of the grid, ascending, each time
    only on the samples that neither it (at a smaller budget) nor the attacks
    before it (`Task.bar`) broke within that budget; the result per sample is
    the closest adversarial found, as a distance. A minimal-norm member runs
    once, unbudgeted, on the samples not yet broken within the smallest
    budget. ``result.parts`` holds one part per budget run (``"eps=..."``).

    Args:
        attack: the member.
        eps: the budgets; zeros are skipped (nothing fits in a ball of radius 0).
        shared_seed: run every budget with the call's own random source afresh
            (a direct call's draws) instead of a stream of its own per budget.

    Examples:
        >>> import advkit
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
        >>> res = Sweep(advkit.PGD(steps=5), eps=[0.01, 0.05, 0.1])(net, x, y)
        >>> curve = res.robust_accuracy([0.01, 0.05, 0.1])
        >>> curve == sorted(curve, reverse=True)
        True
    """

    minimal = True

    def __init__(self, attack: Attack, eps: Sequence[float], *, shared_seed: bool = False) -> None:
        if not isinstance(attack, Attack):
            raise checks.ConfigError(f"Sweep needs an advkit Attack, got {type(attack).__name__}.")
        super().__init__(norm=attack.norm)
        self.attack = attack
        self.shared_seed = bool(shared_seed)
        if isinstance(eps, (str, bytes)) or not isinstance(eps, Sequence):
            raise checks.ConfigError(
                f"Sweep needs a list of budgets, got {type(eps).__name__}; e.g. "
                "Sweep(attack, eps=[2/255, 4/255, 8/255])."
            )
        grid = sorted({float(checks.check_eps(e, 1)) for e in eps})
        self.grid = [e for e in grid if e > 0]
        if not self.grid:
            raise checks.ConfigError(
                f"Sweep needs a budget above 0, got eps={list(eps)}; e.g. eps=[8/255]."
            )

    def _settings(self) -> dict[str, Any]:
        return {"attack": self.attack, "eps": self.grid}

    def run(self, oracle: Oracle, task: Task) -> Found:
        clean = oracle.clean_logits(task)
        tracker = BestByDistance(task.x0, clean, task.success(clean))
        parts: list[Part] = []
        levels: list[float | None] = [None] if self.attack.minimal else list(self.grid)
        for level in levels:
            floor = self.grid[0] if level is None else level
            if not self.grid:
                break
            bar = tracker.distance
            if task.bar is not None:
                bar = torch.minimum(bar, task.bar.to(bar.dtype))
            rows = _rows(bar > floor)
            if rows.numel() == 0:
                continue
            tag = 0 if level is None else _tag(level)
            sub = task.subset(rows)
            sub = sub.using(generator=_draws(sub.generator, tag, self.shared_seed))
            if level is not None:
                sub = sub.using(eps=level)
            res = self.attack.solve(oracle, sub)
            name = type(self.attack).__name__ if level is None else f"eps={level:g}"
            parts.append(Part(name, rows, res, level))
            tracker.consider(res.x_adv, res.logits, res.success, res.distance, rows)
        return Found(tracker.x, tracker.logits, {"parts": tuple(parts)})
