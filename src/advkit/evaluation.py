"""Robustness of a model over a whole dataset: clean accuracy, robust accuracy per attack
and per eps, and the per-sample worst case over an ensemble of attacks.

`evaluate` streams a dataset through the model in batches, runs each attack
only on the samples that are still robust (AutoAttack semantics, Croce & Hein,
"Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020), and returns a `RobustnessReport` with the
totals, one record per sample, a table, a JSON form and a plot. The same call
runs under ``torchrun`` on several processes (see `advkit.distributed`).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from advkit import checks
from advkit._data import Progress, load_batches, model_device, resolve
from advkit.attacks.autoattack import _Staged, probes_fired
from advkit.attacks.base import Attack
from advkit.attacks.compose import Ensemble, MultiTargeted, Sweep, name_attacks
from advkit.attacks.oracle import Oracle
from advkit.attacks.registry import by_class_name
from advkit.attacks.task import Task
from advkit.diagnostics import _SUMS as _SUM_KEYS
from advkit.diagnostics import EVIDENCE_KEYS, Diagnosis, _Plan
from advkit.distributed import (
    all_gather_rows,
    all_reduce_max,
    all_reduce_sum,
    collective_device,
    is_main,
    rank_world,
)
from advkit.functional import KeyedGenerator
from advkit.models import Classifier, model_guard, wrap
from advkit.objectives import Objective, cross_entropy, margin
from advkit.result import Part, Verdict

__all__ = ["AttackInfo", "RobustnessReport", "evaluate"]


@dataclass(frozen=True)
class AttackInfo:
    """One attack of an evaluation.

    Attributes:
        name: the attack's name in the report (a key of the mapping given to
            `evaluate`, else its class name, with ``#2``, ``#3`` appended to repeats).
        description: the attack's ``repr`` (its settings).
        minimal: whether it is a minimal-norm attack (one run, a distance per sample).
    """

    name: str
    description: str
    minimal: bool


def _format_eps(e: float) -> str:
    """``%g`` when short (``0.1``), else ``k/255`` for multiples of 1/255 (``8/255``)."""
    short = f"{e:.4g}"
    k = e * 255
    if float(short) != e and 0 < e < 1 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return short


def _json_float(v: float) -> float | None:
    return v if math.isfinite(v) else None


class RobustnessReport:
    """What `evaluate` measured: totals, one record per sample, a table and a plot.

    Per-sample results are kept as tensors, sorted by dataset index; every
    number of the report is derived from them.

    For each attack ``a``, ``distances[a]`` holds float64 values with one
    meaning everywhere: a finite value is the norm of an adversarial
    perturbation the attack found, ``inf`` means it ran and found none, and
    ``nan`` means it did not run on that sample (misclassified, or already
    broken, see `evaluate`). Its shape is ``(N, E)`` (one column per eps) for a
    fixed-eps attack and ``(N,)`` for a minimal-norm attack.

    A sample is **broken by an attack at eps** if the attack succeeded at that
    eps or at a smaller one of the grid (the adversarial it found lies in every
    larger ball), or, for a minimal-norm attack, if its distance is ``<= eps``.
    A sample is **robust** at eps if it is classified correctly and no attack
    broke it there (the worst case over the attacks).

    Attributes:
        norm: the threat model's name (``"linf"``, ``"l2"``, ``"l1"``).
        eps: the budgets, ascending, in the model's input space.
        attacks: the attacks, in the order they ran.
        indices: ``(N,)`` dataset indices, ascending.
        labels: ``(N,)`` true labels.
        predictions: ``(N,)`` the model's predictions on the clean inputs (``-1``
            where its output had a NaN or infinite logit: such a sample is never
            counted correct).
        distances: per attack name, the distances described above.
        independent: whether every attack ran on every correctly classified
            sample (``evaluate(..., independent=True)``).
        seed: the seed of every attack's random draws.
        world_size: number of processes that ran the evaluation.
        seconds: wall time of the evaluation (the slowest process).
        forward_passes: per attack, the number of batched forward passes of
            its calls, summed over batches and processes (a measure of its cost).
        diagnosis: what the diagnostics found (`advkit.Diagnosis`: flags that
            say when the figures cannot be believed, and what to do), or ``None``
            when they were turned off.
        verdict: the rule that decided success and the clean prediction
            (`advkit.Verdict`; one forward pass unless the model is randomized
            and more draws were asked for).
    """

    def __init__(
        self,
        *,
        norm: str,
        eps: Sequence[float],
        attacks: Sequence[AttackInfo],
        indices: Tensor,
        labels: Tensor,
        predictions: Tensor,
        distances: Mapping[str, Tensor],
        independent: bool,
        seed: int,
        world_size: int = 1,
        seconds: float = math.nan,
        forward_passes: Mapping[str, int] | None = None,
        diagnosis: Diagnosis | None = None,
        verdict: Verdict | None = None,
    ) -> None:
        self.norm = norm
        self.eps = tuple(float(e) for e in eps)
        self.attacks = tuple(attacks)
        self.indices = indices
        self.labels = labels
        self.predictions = predictions
        self.distances = dict(distances)
        self.independent = independent
        self.seed = seed
        self.world_size = world_size
        self.seconds = seconds
        self.forward_passes = dict(forward_passes or {})
        self.diagnosis = diagnosis
        self.verdict = verdict if verdict is not None else Verdict()

    @property
    def flags(self) -> tuple[Any, ...]:
        """The diagnostics' flags (`advkit.Flag`), empty when none was raised or the
        diagnostics did not run."""
        return () if self.diagnosis is None else self.diagnosis.flags

    # ------------------------------------------------------------------ per sample

    @property
    def n(self) -> int:
        """Number of samples evaluated."""
        return int(self.indices.shape[0])

    @property
    def correct(self) -> Tensor:
        """``(N,)`` bool: the clean input is classified correctly."""
        return self.predictions == self.labels

    def _info(self, name: str) -> AttackInfo:
        for a in self.attacks:
            if a.name == name:
                return a
        raise checks.ConfigError(
            f"no attack named {name!r} in this report; its attacks are "
            f"{[a.name for a in self.attacks]}."
        )

    def broken(self, attack: str) -> Tensor:
        """``(N, E)`` bool: the samples ``attack`` itself broke at each eps (see the class)."""
        return _broken(self._info(attack), self.distances[attack], self.eps)

    def robust(self, after: str | None = None) -> Tensor:
        """``(N, E)`` bool: per sample and eps, classified correctly and not broken.

        Args:
            after: ``None`` for the worst case over all attacks; an attack's
                name for the attacks up to and including that one (the rows of
                AutoAttack's log).
        """
        names = [a.name for a in self.attacks]
        upto = len(names) if after is None else names.index(self._info(after).name) + 1
        out = self.correct.unsqueeze(1).expand(self.n, len(self.eps)).clone()
        for a in self.attacks[:upto]:
            out &= ~self.broken(a.name)
        return out

    def attacked(self, attack: str) -> list[int]:
        """How many samples ``attack`` ran on, per eps (its cost, in samples)."""
        info, d = self._info(attack), self.distances[attack]
        if info.minimal:
            return [int((~d.isnan()).sum())] * len(self.eps)
        return [int(c) for c in (~d.isnan()).sum(dim=0)]

    def distance(self) -> Tensor:
        """``(N,)`` the smallest perturbation norm at which some attack broke each sample.

        ``0`` for misclassified samples, ``inf`` where no attack succeeded.
        For fixed-eps attacks this is the norm of the adversarial found, which
        is at most the eps it was found at.
        """
        best = torch.where(self.correct, math.inf, 0.0).double()
        for a in self.attacks:
            d = self.distances[a.name]
            d = d if a.minimal else d.nan_to_num(math.inf).amin(dim=1)
            best = torch.minimum(best, d.nan_to_num(math.inf))
        return best

    # ------------------------------------------------------------------ totals

    @property
    def clean_accuracy(self) -> float:
        """Fraction of samples classified correctly."""
        return int(self.correct.sum()) / max(self.n, 1)

    def robust_accuracy(
        self, attack: str | None = None, *, after: str | None = None
    ) -> list[float]:
        """Robust accuracy per eps.

        Args:
            attack: ``None`` (default) for the worst case over all attacks, or
                an attack's name for that attack alone. The latter is only
                known where the attack ran on every sample that was
                correctly classified and not broken by itself at a smaller
                eps: the first attack, or every attack with
                ``evaluate(..., independent=True)``.
            after: an attack's name: the robust accuracy after the attacks up
                to and including that one (AutoAttack's cumulative log).

        Returns:
            One float per eps of `eps`.

        Raises:
            ConfigError: for an unknown name, both arguments at once, or an
                attack that skipped samples other attacks had broken.
        """
        n = max(self.n, 1)
        if attack is not None and after is not None:
            raise checks.ConfigError("give either attack= or after=, not both.")
        if attack is None:
            return [int(c) / n for c in self.robust(after).sum(dim=0)]
        info, d = self._info(attack), self.distances[attack]
        broken = self.broken(attack)
        correct = self.correct
        if info.minimal:
            skipped = correct & d.isnan()
        else:
            # a missing run is fine only where the attack had broken the sample at a smaller eps
            earlier = torch.zeros_like(broken)
            earlier[:, 1:] = broken[:, :-1]
            skipped = (correct.unsqueeze(1) & d.isnan() & ~earlier).any(dim=1)
        if bool(skipped.any()):
            raise checks.ConfigError(
                f"{attack!r} did not run on {int(skipped.sum())} samples that earlier attacks had "
                "broken, so its own robust accuracy is unknown; use robust_accuracy(after=...) "
                "for the cumulative figure, or evaluate(..., independent=True) to run every "
                "attack on every sample."
            )
        alone = correct.unsqueeze(1) & ~broken
        return [int(c) / n for c in alone.sum(dim=0)]

    # ------------------------------------------------------------------ export

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per sample, in dataset order.

        Keys: ``index``, ``label``, ``prediction``, ``correct``, ``robust``
        (one bool per eps), ``distance`` (the smallest norm at which the sample
        was broken, ``None`` if never) and ``attacks``: per attack name,
        ``success`` (per eps: ``True``/``False``, ``None`` where it did not run)
        and ``distance`` (per eps for a fixed-eps attack, one value for a
        minimal-norm attack: the norm of the adversarial found, ``None`` where
        none was found or it did not run).
        """
        robust = self.robust().tolist()
        best = self.distance().tolist()
        eps_t = torch.tensor(self.eps, dtype=torch.float64)
        per_attack: dict[str, tuple[list[Any], list[Any]]] = {}
        for a in self.attacks:
            d = self.distances[a.name]
            dist: list[Any]
            if a.minimal:
                ran = ~d.isnan()
                ok = d.unsqueeze(1) <= eps_t
                succ = [
                    [bool(v) if r else None for v in row]
                    for row, r in zip(ok.tolist(), ran.tolist(), strict=True)
                ]
                dist = [_json_float(v) if v == v else None for v in d.tolist()]
            else:
                succ = [[None if v != v else math.isfinite(v) for v in row] for row in d.tolist()]
                dist = [[_json_float(v) if v == v else None for v in row] for row in d.tolist()]
            per_attack[a.name] = (succ, dist)
        out = []
        for i, (idx, lab, pred) in enumerate(
            zip(self.indices.tolist(), self.labels.tolist(), self.predictions.tolist(), strict=True)
        ):
            out.append(
                {
                    "index": idx,
                    "label": lab,
                    "prediction": pred,
                    "correct": lab == pred,
                    "robust": robust[i],
                    "distance": _json_float(best[i]),
                    "attacks": {
                        name: {"success": s[i], "distance": d[i]}
                        for name, (s, d) in per_attack.items()
                    },
                }
            )
        return out

    def to_dict(self, records: bool = True) -> dict[str, Any]:
        """The report as plain Python values (JSON-ready: no inf or nan).

        Args:
            records: include the per-sample `records` (key ``"records"``).

        The diagnostics are under ``"diagnostics"`` (`advkit.Diagnosis.to_dict`:
        ``"flags"``, each with ``"name"``, ``"message"`` and ``"evidence"``; ``None``
        when they were turned off), the verdict rule under ``"verdict"``.
        """
        alone: dict[str, list[float] | None] = {}
        for a in self.attacks:
            try:
                alone[a.name] = self.robust_accuracy(a.name)
            except checks.ConfigError:
                alone[a.name] = None
        out: dict[str, Any] = {
            "n": self.n,
            "norm": self.norm,
            "eps": list(self.eps),
            "seed": self.seed,
            "independent": self.independent,
            "world_size": self.world_size,
            "seconds": _json_float(self.seconds),
            "attacks": [
                {
                    "name": a.name,
                    "description": a.description,
                    "minimal": a.minimal,
                    "attacked": self.attacked(a.name),
                    "forward_passes": self.forward_passes.get(a.name),
                    "robust_accuracy_alone": alone[a.name],
                    "robust_accuracy_after": self.robust_accuracy(after=a.name),
                }
                for a in self.attacks
            ],
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy(),
            "verdict": {"draws": self.verdict.draws, "quorum": self.verdict.quorum},
            "diagnostics": None if self.diagnosis is None else self.diagnosis.to_dict(),
        }
        if records:
            out["records"] = self.records()
        return out

    def to_json(
        self, path: str | Path | None = None, *, records: bool = True, indent: int | None = None
    ) -> str:
        """The report as JSON (`to_dict`); written to ``path`` when given.

        Under ``torch.distributed`` every rank holds the full report: write it
        from one rank only (``if advkit.distributed.is_main(): ...``).
        """
        text = json.dumps(self.to_dict(records=records), indent=indent, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def plot(self, ax: Any = None, *, title: str | None = None) -> Any:
        """Plot robust accuracy against eps (needs matplotlib: ``pip install 'advkit[plot]'``).

        One line per attack (alone with ``independent=True``, else cumulative:
        after that attack and the ones before it), and the worst case in black.

        Args:
            ax: a matplotlib ``Axes`` to draw into; default a new figure.
            title: the axes' title.

        Returns:
            The matplotlib ``Axes``.
        """
        from advkit.plot import _pyplot

        if ax is None:
            _, ax = _pyplot().subplots(figsize=(5, 3.5))
        for a in self.attacks:
            ys = (
                self.robust_accuracy(a.name)
                if self.independent
                else self.robust_accuracy(after=a.name)
            )
            label = a.name if self.independent or a is self.attacks[0] else f"+ {a.name}"
            ax.plot(self.eps, ys, marker="o", markersize=3, linewidth=1, label=label)
        ax.plot(self.eps, self.robust_accuracy(), color="black", linewidth=2, label="worst case")
        ax.set_xlabel(f"eps ({self.norm} norm, input space)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.legend()
        if title:
            ax.set_title(title)
        return ax

    def __str__(self) -> str:
        n = self.n
        procs = f"{self.world_size} process" + ("es" if self.world_size != 1 else "")
        speed = f", {n / self.seconds:.0f} img/s" if self.seconds > 0 else ""
        lines = [
            f"Robustness of {n} samples: norm {self.norm}, seed {self.seed}, {procs}, "
            f"{self.seconds:.1f} s{speed}",
        ]
        if self.verdict.draws > 1:
            lines.append(
                f"verdict over {self.verdict.draws} draws: success where more than "
                f"{self.verdict.quorum:g} of them succeed"
            )
        lines += [
            f"clean accuracy: {100 * self.clean_accuracy:.2f}% ({int(self.correct.sum())}/{n})",
        ]
        heads = [f"eps={_format_eps(e)}" for e in self.eps]
        rows: list[tuple[str, list[float]]] = []
        for i, a in enumerate(self.attacks):
            if self.independent:
                rows.append((a.name, self.robust_accuracy(a.name)))
            else:
                rows.append(
                    ((a.name if i == 0 else f"+ {a.name}"), self.robust_accuracy(after=a.name))
                )
        rows.append(("worst case", self.robust_accuracy()))
        first = "robust accuracy" + (" (each attack alone)" if self.independent else "")
        w0 = max(len(first), *(len(r[0]) + 2 for r in rows))
        widths = [max(len(h), 7) for h in heads]
        lines.append(
            first.ljust(w0) + "".join("  " + h.rjust(w) for h, w in zip(heads, widths, strict=True))
        )
        for label, vals in rows:
            cells = "".join(
                "  " + f"{100 * v:.2f}%".rjust(w) for v, w in zip(vals, widths, strict=True)
            )
            lines.append(("  " + label).ljust(w0) + cells)
        if self.diagnosis is not None:
            lines.append(str(self.diagnosis))
        return "\n".join(lines)

    def __repr__(self) -> str:
        acc = ", ".join(
            f"{_format_eps(e)}: {v:.4f}"
            for e, v in zip(self.eps, self.robust_accuracy(), strict=True)
        )
        return (
            f"RobustnessReport(n={self.n}, norm={self.norm}, attacks={[a.name for a in self.attacks]}, "
            f"clean_accuracy={self.clean_accuracy:.4f}, robust_accuracy={{{acc}}})"
        )


def _broken(info: AttackInfo, d: Tensor, eps: Sequence[float]) -> Tensor:
    """``(N, E)`` bool: broken by this attack at each eps (see `RobustnessReport`): the
    smallest perturbation it found, at whichever eps it ran, is ``<= eps``."""
    eps_t = torch.tensor(eps, dtype=d.dtype, device=d.device)
    found = d if info.minimal else d.nan_to_num(nan=math.inf).amin(dim=1)
    return found.unsqueeze(1) <= eps_t  # nan (not run) compares False


def _robust(
    correct: Tensor, infos: Sequence[AttackInfo], dists: Mapping[str, Tensor], eps: Sequence[float]
) -> Tensor:
    """``(B, E)`` bool: correct and broken by no attack (the worst case), for one batch."""
    out = correct.unsqueeze(1).expand(correct.shape[0], len(eps)).clone()
    for info in infos:
        out &= ~_broken(info, dists[info.name], eps)
    return out


def _level_key(e: float) -> float:
    return float(e)


def _record(d: Tensor, rows: Tensor, part: Part, level_of: Mapping[float, int]) -> None:
    """Write, in place, what one attack (its `Sweep` over the grid) found on the batch's
    ``rows``: per budget it ran at (a fixed-eps attack) or once (a minimal-norm attack), the
    norm of the adversarial found, ``inf`` where it found none."""
    for run in part.result.parts:
        where = rows.index_select(0, run.rows)
        found = torch.where(run.result.success, run.result.distance.double(), math.inf)
        if d.ndim == 1:
            d[where] = found
        else:
            assert run.eps is not None
            d[where, level_of[_level_key(run.eps)]] = found


# ---------------------------------------------------------------------- evaluate


def _by_name(
    attacks: str | Attack | Sequence[str | Attack] | Mapping[str, Attack], norm: str
) -> Attack | Sequence[Attack] | Mapping[str, Attack]:
    """Attacks given by their command-line names (``"autoattack"``,
    ``"autoattack:version=fast"``, ``"apgd-t:steps=50"``) built in ``norm``, named by
    those strings; attack objects as they are."""
    listed = [attacks] if isinstance(attacks, str) else attacks
    if isinstance(listed, (Mapping, Attack)):
        return listed
    if not any(isinstance(a, str) for a in listed):
        return cast("Sequence[Attack]", listed)
    from advkit.cli import parse_attack  # the command line's parser, imported late (cycle)

    out: dict[str, Attack] = {}
    for a in listed:
        label, attack = parse_attack(a, norm) if isinstance(a, str) else (type(a).__name__, a)
        key, k = label, 1
        while key in out:
            k += 1
            key = f"{label}#{k}"
        out[key] = attack
    return out


def _name_attacks(
    attacks: Attack | Sequence[Attack] | Mapping[str, Attack],
) -> list[tuple[str, Attack]]:
    items = name_attacks(attacks)
    for name, a in items:
        if a.minimal and a.eps is not None:
            raise checks.ConfigError(
                f"the minimal-norm attack {name!r} was built with eps={a.eps}; evaluate runs "
                "minimal-norm attacks without a budget and reads every eps from their "
                "distances: build it without eps."
            )
    return items


def _check_eps_grid(eps: float | Sequence[float]) -> list[float]:
    values = [eps] if isinstance(eps, (int, float)) else list(eps)
    if not values:
        raise checks.ConfigError("eps is empty: give at least one budget, e.g. eps=[8/255].")
    grid = sorted({float(checks.check_eps(e, 1)) for e in values})
    return grid


def evaluate(
    model: nn.Module,
    data: Dataset[Any] | DataLoader[Any],
    attacks: str | Attack | Sequence[str | Attack] | Mapping[str, Attack],
    eps: float | Sequence[float],
    *,
    norm: str = "linf",
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    seed: int = 0,
    independent: bool = False,
    progress: bool | None = None,
    diagnostics: bool = True,
    diagnostic_samples: int = 64,
    verdict: Verdict | int | None = None,
) -> RobustnessReport:
    r"""Clean and robust accuracy of ``model`` over a dataset, per attack and per eps.

    For every batch the clean inputs are classified once; misclassified
    samples count as non-robust at every eps and are never attacked. Then the
    attacks run in the given order, each only on the samples that are still
    robust (AutoAttack semantics: correctly classified and not yet broken by
    an earlier attack, nor by the same attack at a smaller eps), so an
    ensemble costs little more than its first member:

    - a **fixed-eps** attack runs once per eps, ascending
      (``attack(model, x, y, eps=e, ...)``); a sample it breaks at one eps
      counts as broken at every larger eps, because the adversarial found lies
      in every larger ball (robust accuracy never increases with eps). At
      ``eps = 0`` nothing can be found and nothing is run.
    - a **minimal-norm** attack (``attack.minimal``, e.g. `DeepFool`, `CW`)
      runs once, without eps, on the samples still robust at the smallest
      positive eps, and breaks a sample at every eps ``>=`` the distance it found.

    The result, per sample and eps, is the worst case over the attacks: robust
    iff classified correctly and no attack found an adversarial within eps.

    Randomness: every attack call gets ``generator=torch.Generator(device).manual_seed(seed)``
    and ``sample_ids=`` the dataset indices of its samples, so each random
    draw of sample ``i`` depends only on ``seed`` and ``i``
    (`advkit.functional.KeyedGenerator`): results do not depend on the batch
    size, on which samples share a batch, or on the number of processes.
    (Attacks with batch-level decisions, like `CW`'s ``abort_early`` test on
    the batch's total loss, are the exception.) `advkit.AutoAttack`'s ``fast``
    version decides its escalation once for the dataset: every batch runs
    without it and, if a probe broke a sample anywhere, every batch runs again
    with it (the report's pass counts include both runs).

    Diagnostics (``diagnostics=True``, the default): `advkit.diagnose` runs on
    the first ``diagnostic_samples`` samples of the dataset (dataset indices
    ``0 .. diagnostic_samples - 1``) at the largest eps, with the objective of the
    first gradient attack (the margin for a minimal-norm attack), and its
    score-based check attacks the samples the evaluation's own attacks left
    robust there. Each flag it raises (gradient masking, randomness,
    probability outputs, ...) is shown with what to do in ``print(report)``, in
    the JSON and in ``report.flags``, and a `advkit.DiagnosticWarning` says that
    the figures may be wrong. It costs at most 175 passes of the model
    per diagnosed sample, typically a few percent of an evaluation (see
    `advkit.diagnose`).

    Randomized models: ``verdict=advkit.Verdict(draws=K)`` (or ``verdict=K``)
    decides the clean prediction and every attack's success over ``K`` forward
    passes by a strict majority (see `advkit.Verdict`); give the attacks
    ``eot=`` as well.

    Distributed: under ``torch.distributed`` (``torchrun``; NCCL or gloo) each
    rank evaluates its own contiguous shard of the dataset
    (`advkit.distributed.ShardSampler`: disjoint, nothing padded or repeated),
    the counts are summed with ``all_reduce``, the per-sample results of all
    ranks are gathered, and **every rank returns the same full report**; write
    files from rank 0 only (`advkit.distributed.is_main`). The diagnostics run
    on the diagnosed samples each rank holds (only rank 0 unless its shard is
    smaller than ``diagnostic_samples``); their figures, all counts, are summed
    over the ranks before the flags are decided, so every rank reports the
    same flags, and the same as one process would.

    Args:
        model: a `Classifier` (`advkit.wrap`) or any ``nn.Module``
            (wrapped with ``bounds=(0, 1)``), already on its device. It is
            put in eval mode for the evaluation and restored afterwards.
        data: a map-style ``Dataset`` whose items are ``(x, y)`` (batched here
            with ``batch_size`` and ``num_workers``), or a ``DataLoader`` over one
            whose sampler is sequential (``shuffle=False``) or a `ShardSampler`.
            Sample ids are positions in the dataset.
        attacks: one attack, a sequence (named by class, ``PGD``, ``PGD#2``,
            ...) or a mapping from names to attacks; untargeted, all in the
            same norm. Minimal-norm attacks must be built without eps. An
            attack may also be given by its command-line name, alone or in a
            sequence: ``"autoattack"``, ``"autoattack:version=fast"``,
            ``"apgd-t:steps=50"`` (the names of ``advkit eval --attack``), built
            in ``norm`` and named by that string.
        norm: the threat model of the attacks given by name (``"linf"``,
            ``"l2"``, ``"l1"``); attack objects carry their own.
        eps: the budgets, in the attacks' norm and the model's input space;
            sorted ascending, duplicates removed.
        batch_size: samples per batch when ``data`` is a Dataset.
        num_workers: DataLoader worker processes when ``data`` is a Dataset.
        device: where inputs go; default the device of the model's parameters.
        seed: seed of every attack's random draws.
        independent: run every attack on every correctly classified sample
            (each attack's own robust accuracy becomes known, at the price of
            running them all in full); the worst case is the same.
        progress: a progress bar on stderr (tqdm, ``pip install 'advkit[progress]'``)
            with the samples done, the robust accuracy so far and images/s.
            ``None``: shown when tqdm is installed and stderr is a terminal;
            ``True``: the same, but a missing tqdm raises; ``False``: never.
            Only rank 0 shows it, for its own shard.
        diagnostics: run `advkit.diagnose` on the first samples and report its
            flags (see above); ``False`` turns them off.
        diagnostic_samples: how many samples (the first of the dataset) the
            diagnostics look at.
        verdict: how success is decided on a randomized model (see above);
            default one forward pass.

    Returns:
        A `RobustnessReport`: ``print(report)`` for a table,
        ``report.robust_accuracy()``, ``report.records()``,
        ``report.to_json(path)``, ``report.plot()``.

    Raises:
        ConfigError: bad attacks, eps, batch settings, or a DataLoader whose
            sampler hides the dataset indices (shuffled or custom).
        InputError: ``data`` is not a map-style dataset, or its batches are not
            ``(x, y)`` pairs; the attacks' own errors for bad inputs or labels.
        ImportError: ``progress=True`` without tqdm.

    Examples:
        >>> import torch, advkit
        >>> from torch.utils.data import TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> data = TensorDataset(torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,)))
        >>> report = evaluate(net, data, [advkit.FGSM(), advkit.PGD(steps=5)], eps=[0.01, 0.1],
        ...                   batch_size=8, progress=False)
        >>> report.n, len(report.robust_accuracy())
        (20, 2)
        >>> all(w <= c for w, c in zip(report.robust_accuracy(), [report.clean_accuracy] * 2))
        True
    """
    start = time.perf_counter()
    named = _name_attacks(_by_name(attacks, norm))
    grid = _check_eps_grid(eps)
    norm = named[0][1].norm.name
    seed = int(seed)
    rule = Verdict.of(verdict)
    plan: _Plan | None = None
    diagnosed = 0
    gradient = _gradient_attacks(named)
    if diagnostics:
        diagnosed = checks.check_positive_int(diagnostic_samples, "diagnostic_samples")
        plan = _Plan(
            norm=named[0][1].norm,
            eps=grid[-1],
            objective=_objective_of(gradient),
            checks_run=None,
            steps=10,
            queries=100,
            directions=2,
            seed=seed,
            verdict=rule,
            eot=bool(gradient) and all(a.eot > 1 for a in gradient),
        )
    clf = model if isinstance(model, Classifier) else wrap(model)
    dev = torch.device(device) if device is not None else model_device(clf)
    source = resolve(
        data,
        batch_size=batch_size,
        num_workers=num_workers,
        caller="evaluate",
        shard=True,
        keep_loader_settings=True,
    )
    n_total = source.length
    world = rank_world()[1]
    n_total_t = all_reduce_max(torch.tensor([n_total], dtype=torch.int64, device=_comm(dev)))
    if int(n_total_t) == 0:
        raise checks.InputError("the dataset is empty: there is nothing to evaluate.")

    infos = [AttackInfo(name, repr(a), a.minimal) for name, a in named]
    num_eps = len(grid)
    passes = dict.fromkeys((name for name, _ in named), 0)
    level_of = {_level_key(e): k for k, e in enumerate(grid)}
    # The worst case over the attacks, each over the eps grid (a minimal-norm attack once),
    # each only on what is still robust: one composite attack, run on every batch.
    ensemble = Ensemble(
        {name: Sweep(a, grid, shared_seed=True) for name, a in named},
        independent=independent,
        shared_seed=True,
    )

    # AutoAttack(version='fast') runs the rest of standard when its probes break a sample.
    # Decided per batch, results would depend on the batch size; so the dataset is run with
    # that escalation off, and once more with it on if a probe broke a sample anywhere (any
    # batch, eps or rank): the result of one call over the whole dataset.
    staged = [a for _, a in named if isinstance(a, _Staged) and a.gated]
    saved = [a.escalate for a in staged]
    final = not staged
    evidence: dict[str, float] = {}
    bar: Progress | None = None
    try:
        for a in staged:
            a.escalate = False
        while True:
            picked: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # the diagnosed samples
            ids_parts: list[Tensor] = []
            label_parts: list[Tensor] = []
            pred_parts: list[Tensor] = []
            dist_parts: dict[str, list[Tensor]] = {name: [] for name, _ in named}
            fired = False
            bar = Progress(
                progress,
                total=len(source.indices),
                desc="evaluate",
                unit="img",
                fractions=[_format_eps(e) for e in grid],
            )
            with (
                model_guard(clf),
                torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []),
            ):
                for ids, x, y in load_batches(source, source.plan(), device=dev, seed=seed):
                    b = x.shape[0]
                    checks.check_inputs(x, clf.bounds)
                    with torch.no_grad():
                        logits = checks.check_logits(clf(x), b)
                        checks.check_labels(y, b, logits.shape[1])
                        if rule.draws > 1:  # a randomized model: the clean prediction by the rule
                            more = [checks.check_logits(clf(x), b) for _ in range(rule.draws - 1)]
                            logits, _ = rule.choose(torch.stack([logits, *more]), y)
                    # a row with a NaN or infinite logit has no prediction (-1): never correct
                    pred = torch.where(torch.isfinite(logits).all(dim=1), logits.argmax(dim=1), -1)
                    correct = pred == y
                    dists = {
                        info.name: torch.full(
                            (b,) if info.minimal else (b, num_eps),
                            math.nan,
                            dtype=torch.float64,
                            device=dev,
                        )
                        for info in infos
                    }
                    for info in infos:  # eps = 0: the ball is the clean input, nothing to find
                        if not info.minimal and grid[0] == 0:
                            dists[info.name][:, 0] = torch.where(correct, math.inf, math.nan)
                    idx = correct.nonzero().squeeze(1)
                    if idx.numel() and any(e > 0 for e in grid):
                        task = Task(
                            x0=x.index_select(0, idx),
                            labels=y.index_select(0, idx),
                            norm=named[0][1].norm,
                            bounds=clf.bounds,
                            objective=ensemble.objective,
                            generator=KeyedGenerator(seed, ids.index_select(0, idx)),
                            clean_logits=logits.index_select(0, idx),
                        )
                        res = ensemble.solve(Oracle(clf, verdict=rule), task)
                        if not final and not fired:  # a host sync per batch, in the first pass
                            fired = probes_fired(res)
                        for part in res.parts:
                            passes[part.name] += part.result.forward_passes
                            _record(
                                dists[part.name], idx.index_select(0, part.rows), part, level_of
                            )
                    for info in infos:
                        dist_parts[info.name].append(dists[info.name])

                    ids_parts.append(ids)
                    label_parts.append(y)
                    pred_parts.append(pred)
                    if bar.bar is not None:
                        bar.update(_robust(correct, infos, dists, grid))
                    if plan is not None and int(ids.min()) < diagnosed:
                        rows = (ids < diagnosed).nonzero().squeeze(1)
                        robust = _robust(correct, infos, dists, grid)[:, -1]
                        picked.append(
                            (
                                x.index_select(0, rows),
                                y.index_select(0, rows),
                                ids.index_select(0, rows),
                                robust.index_select(0, rows),
                            )
                        )
                rerun = False
                if not final:  # did a probe break a sample anywhere (any batch, eps, rank)?
                    flag = torch.tensor([int(fired)], dtype=torch.int64, device=_comm(dev))
                    all_reduce_max(flag)
                    rerun = int(flag) > 0
                if not rerun and plan is not None and picked:  # the result's diagnosed samples
                    xs, ys, ids_d, robust_d = (torch.cat(ts) for ts in zip(*picked, strict=True))
                    # The score-based check attacks what the evaluation's gradient attacks left
                    # robust; with none among them (noise only), what its own APGD left.
                    evidence = plan.measure(clf, xs, ys, ids_d, robust_d if gradient else None)
            bar.close()
            if not rerun:
                break
            for a in staged:
                a.escalate = True
            final = True
    finally:
        if bar is not None:
            bar.close()
        for a, e in zip(staged, saved, strict=True):
            a.escalate = e

    empty_i = torch.zeros(0, dtype=torch.int64, device=dev)
    local_ids = torch.cat(ids_parts) if ids_parts else empty_i
    local_labels = torch.cat(label_parts) if label_parts else empty_i
    local_preds = torch.cat(pred_parts) if pred_parts else empty_i
    local_dist = {
        info.name: (
            torch.cat(dist_parts[info.name])
            if dist_parts[info.name]
            else torch.zeros(
                (0,) if info.minimal else (0, num_eps), dtype=torch.float64, device=dev
            )
        )
        for info in infos
    }
    local = RobustnessReport(
        norm=norm,
        eps=grid,
        attacks=infos,
        indices=local_ids.cpu(),
        labels=local_labels.cpu(),
        predictions=local_preds.cpu(),
        distances={k: v.cpu() for k, v in local_dist.items()},
        independent=independent,
        seed=seed,
    )
    full = local if world == 1 else _gather(local, infos, dev)

    # Totals reduced over ranks must match the gathered records: a check that the
    # shards were disjoint and complete.
    counts = _counts(local).to(_comm(dev))
    all_reduce_sum(counts)
    if not torch.equal(counts.cpu(), _counts(full)):
        raise RuntimeError(
            "the per-sample records gathered from the ranks disagree with the reduced counts; "
            "some samples were evaluated twice or lost."
        )
    if bool((full.indices[1:] == full.indices[:-1]).any()):
        raise RuntimeError(
            "some dataset indices were evaluated more than once (a padding or overlapping "
            "sampler); use advkit.distributed.ShardSampler."
        )
    fw = torch.tensor([passes[i.name] for i in infos], dtype=torch.int64, device=_comm(dev))
    all_reduce_sum(fw)
    seconds = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=_comm(dev))
    all_reduce_max(seconds)
    full.world_size = world
    full.seconds = float(seconds)
    full.forward_passes = {i.name: int(c) for i, c in zip(infos, fw.tolist(), strict=True)}
    full.verdict = rule
    if plan is not None:
        full.diagnosis = plan.judge(_reduce_evidence(evidence, dev))
        if full.diagnosis.flags and is_main():
            warnings.warn(
                f"the evaluation's diagnostics raised {', '.join(full.diagnosis.names)}: its "
                "figures may be wrong; print(report) says why and what to do.",
                checks.DiagnosticWarning,
                stacklevel=2,
            )
    return full


def _reduce_evidence(evidence: Mapping[str, float], dev: torch.device) -> dict[str, float]:
    """The diagnostics' figures summed (counts) or maximised (the rest) over the ranks, so
    that every rank decides the same flags."""
    ev = {k: float(evidence.get(k, 0.0)) for k in EVIDENCE_KEYS}
    if rank_world()[1] == 1:
        return ev
    sums = [k for k in EVIDENCE_KEYS if k in _SUM_KEYS]
    maxes = [k for k in EVIDENCE_KEYS if k not in _SUM_KEYS]
    a = torch.tensor([ev[k] for k in sums], dtype=torch.float64, device=_comm(dev))
    b = torch.tensor([ev[k] for k in maxes], dtype=torch.float64, device=_comm(dev))
    all_reduce_sum(a)
    all_reduce_max(b)
    ev.update(zip(sums, a.tolist(), strict=True))
    ev.update(zip(maxes, b.tolist(), strict=True))
    return ev


def _gradient_attacks(named: Sequence[tuple[str, Attack]]) -> list[Attack]:
    """The attacks of an evaluation that take input gradients, composites unwrapped, in order
    (noise attacks take none)."""
    entries = by_class_name()
    out: list[Attack] = []

    def walk(a: Attack) -> None:
        if isinstance(a, (Sweep, MultiTargeted)):
            walk(a.attack)
        elif isinstance(a, Ensemble):
            for _, m in a.members:
                walk(m)
        else:
            entry = entries.get(type(a).__name__)
            if entry is None or entry.cls is not type(a) or entry.kind != "noise":
                out.append(a)

    for _, a in named:
        walk(a)
    return out


def _objective_of(attacks: Sequence[Attack]) -> Objective:
    """The loss whose gradients the diagnostics check: that of the first gradient attack,
    the margin for a minimal-norm one (DeepFool and CW climb logit differences), the
    cross-entropy if there is none."""
    if not attacks:
        return cross_entropy
    return margin if attacks[0].minimal else attacks[0].objective


def _comm(dev: torch.device) -> torch.device:
    """The device for this process group's collectives: `advkit.distributed.collective_device`
    of the compute device, the rule `all_gather_rows` follows too."""
    return collective_device(dev)


def _counts(report: RobustnessReport) -> Tensor:
    """``[n, correct, robust after each attack per eps...]`` as int64, for the cross-rank check."""
    parts = [torch.tensor([report.n, int(report.correct.sum())], dtype=torch.int64)]
    parts += [report.robust(after=a.name).sum(dim=0).to(torch.int64) for a in report.attacks]
    return torch.cat(parts)


def _gather(
    local: RobustnessReport, infos: Sequence[AttackInfo], dev: torch.device
) -> RobustnessReport:
    """The full report from every rank's local one (all ranks receive it)."""
    ints = torch.stack([local.indices, local.labels, local.predictions], dim=1)
    widths = [1 if i.minimal else len(local.eps) for i in infos]
    floats = torch.cat(
        [local.distances[i.name].reshape(local.n, w) for i, w in zip(infos, widths, strict=True)],
        dim=1,
    )
    all_ints = all_gather_rows(ints.to(_comm(dev))).cpu()
    all_floats = all_gather_rows(floats.to(_comm(dev))).cpu()
    order = all_ints[:, 0].argsort(stable=True)
    all_ints, all_floats = all_ints[order], all_floats[order]
    distances: dict[str, Tensor] = {}
    col = 0
    for i, width in zip(infos, widths, strict=True):
        block = all_floats[:, col : col + width]
        distances[i.name] = block[:, 0].clone() if i.minimal else block.clone()
        col += width
    return RobustnessReport(
        norm=local.norm,
        eps=local.eps,
        attacks=infos,
        indices=all_ints[:, 0].clone(),
        labels=all_ints[:, 1].clone(),
        predictions=all_ints[:, 2].clone(),
        distances=distances,
        independent=local.independent,
        seed=local.seed,
    )
