"""Diagnostics that say when a robustness evaluation cannot be believed.

A gradient attack reports a high robust accuracy for two different reasons:
the model is robust, or the attack could not see it (gradient masking: a
saturated softmax, rounding or JPEG inside the model, a detached branch,
randomness at inference, probabilities instead of logits). The second case is
the most common way an evaluation goes wrong (Athalye et al., "Obfuscated
Gradients Give a False Sense of Security", ICML 2018; Carlini et al., "On
Evaluating Adversarial Robustness", 2019; Tramèr et al., "On Adaptive Attacks
to Adversarial Example Defenses", NeurIPS 2020). `diagnose` runs cheap checks
for it on a batch and returns a `Diagnosis` whose `Flag`\\ s say what looks
wrong, with the figures that show it and what to do next. `advkit.evaluate`
runs them by default and prints the flags with its table.

The checks (`CHECKS`), on the correctly classified samples of the batch
unless said otherwise:

* ``randomized``: two forward passes of the same inputs give different outputs
  (in `advkit.evaluate`, a note instead of a flag when its gradient attacks use
  EOT and its verdict takes several draws).
* ``probability_outputs``: every output row lies in ``[0, 1]`` and sums to 1.
* ``zero_gradients``: the input gradient of the attack's loss is exactly zero
  (or subnormal) on at least 10% of the samples.
* ``non_differentiable``: autograd's directional derivative disagrees with the
  finite difference of the logit margin along random directions of length
  ``eps / 4`` in most trials (a disagreement: opposite signs, or one more than
  three times the other). Not checked on a randomized model, nor on one that
  holds an `advkit.BPDA` (whose gradient is an approximation by design: the
  other checks tell whether it works).
* ``not_monotonic``: more than 5% of the samples (and at least 2) are broken
  by the reference gradient attack at ``eps`` but not at a larger budget.
* ``unbounded_not_broken``: at a budget that reaches the whole input box, the
  reference gradient attack leaves more than 10% of the samples robust.
* ``gradient_free_stronger``: a score-based attack (`advkit.Square`; on inputs
  of more than four axes the random search of this module) breaks more than 5%
  (and at least 2) of the samples the gradient attacks left robust at ``eps``.

The reference gradient attack is APGD (``steps=10`` by default, from the
clean input, early stopping) on the objective under test, run at ``eps``, at
``4 * eps`` and at the box's diameter in the threat norm. On a randomized
model the three checks that attack decide success by the ``verdict`` given
(`advkit.Verdict`), and are skipped when it is one draw: a success could be
luck.

Every figure is a count over samples (or a maximum), and every random draw of
sample ``i`` depends only on ``(seed, sample id i)``, so a diagnosis does not
depend on the batch it runs in, and counts from several processes add up to
the same flags (`advkit.evaluate` under ``torchrun``).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advkit import checks
from advkit import functional as F
from advkit.attacks.apgd import APGD
from advkit.attacks.base import Attack, Found
from advkit.attacks.oracle import Oracle
from advkit.attacks.square import Square
from advkit.attacks.task import Task
from advkit.attacks.tracking import BestByObjective
from advkit.functional import KeyedGenerator
from advkit.models import BPDA, Classifier, model_guard, wrap
from advkit.norms import Norm, NormSpec, resolve_norm
from advkit.objectives import Objective, cross_entropy, margin
from advkit.result import Verdict

__all__ = ["CHECKS", "EVIDENCE_KEYS", "Diagnosis", "Flag", "diagnose", "judge"]

_checks = checks  # the module, under a name that `diagnose`'s ``checks`` argument does not hide

CHECKS: tuple[str, ...] = (
    "randomized",
    "probability_outputs",
    "zero_gradients",
    "non_differentiable",
    "not_monotonic",
    "unbounded_not_broken",
    "gradient_free_stronger",
)
"""The names of the checks, in the order they are reported."""

# Thresholds (fractions of the samples a check looks at). Chosen so that honestly trained
# models (standard and adversarially trained CNNs, linear models) raise no flag; the tests
# hold them to it.
ZERO_GRADIENT_FRACTION = 0.1
DISAGREE_FRACTION = 0.5
NOT_MONOTONIC_FRACTION = 0.05
UNBOUNDED_ROBUST_FRACTION = 0.1
SCORE_BROKEN_FRACTION = 0.05
MIN_SAMPLES = 2  # a count-based flag needs at least this many samples behind it
RANDOMIZED_RTOL = 1e-4  # outputs differ: by more than this fraction of the row's largest logit
FD_FLOOR = 1e-5  # a finite-difference trial says something above this fraction of the logits
FD_STEP = 0.25  # finite-difference step, as a fraction of eps
WIDE = 4.0  # the second budget of the monotonicity check, in multiples of eps

_SUMS = (
    "samples",
    "correct",
    "randomized",
    "probability_rows",
    "zero_gradient",
    "saturated",
    "fd_trials",
    "fd_disagree",
    "robust_eps",
    "robust_wide",
    "robust_unbounded",
    "not_monotonic",
    "gradient_robust",
    "score_broken",
    "forward_rows",
    "backward_rows",
)
_MAXES = (
    "logit_change",
    "detached",
    "bpda",
    "verdict_draws",
    "eps",
    "eps_wide",
    "eps_unbounded",
    "fd_step",
)
EVIDENCE_KEYS: tuple[str, ...] = _SUMS + _MAXES
"""The figures a diagnosis measures (`Diagnosis.evidence`): counts over samples, which add
up over batches and processes, then maxima (the largest relative logit change between two
passes, whether some gradient pass found no autograd path, whether the model holds an
`advkit.BPDA`, the draws of the verdict, the budgets used)."""


@dataclass(frozen=True)
class Flag:
    """One thing a diagnosis found wrong.

    Attributes:
        name: the check that raised it (one of `CHECKS`).
        message: what it means and what to do next.
        evidence: the figures behind it (counts, fractions, budgets).
    """

    name: str
    message: str
    evidence: Mapping[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """The flag as plain Python values."""
        return {"name": self.name, "message": self.message, "evidence": dict(self.evidence)}


@dataclass(frozen=True)
class Diagnosis:
    """What `diagnose` found: the flags raised, and every figure it measured.

    Attributes:
        flags: the `Flag`\\ s raised, in the order of `CHECKS`; empty when
            nothing looks wrong.
        evidence: every figure measured (see `EVIDENCE_KEYS`): sample counts
            and the budgets the checks used.
        checks: the checks that ran.
        skipped: checks that could not run, with the reason (e.g. no correctly
            classified sample, or a randomized model for the finite differences).
        score_attack: the score-based attack of ``gradient_free_stronger``
            (``"Square"`` or ``"random search"``).
        objective: the name of the objective whose gradients were checked.
        notes: findings that raise no flag because the evaluation already deals
            with them (a randomized model attacked with EOT and judged over
            several draws), by check name.
    """

    flags: tuple[Flag, ...]
    evidence: Mapping[str, float]
    checks: tuple[str, ...] = CHECKS
    skipped: Mapping[str, str] = field(default_factory=dict)
    score_attack: str = ""
    objective: str = ""
    notes: Mapping[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """The names of the flags raised."""
        return [f.name for f in self.flags]

    @property
    def ok(self) -> bool:
        """Whether no flag was raised."""
        return not self.flags

    def flag(self, name: str) -> Flag | None:
        """The flag ``name``, or ``None`` if it was not raised."""
        return next((f for f in self.flags if f.name == name), None)

    @property
    def samples(self) -> int:
        """Number of samples diagnosed."""
        return int(self.evidence.get("samples", 0))

    @property
    def forward_passes(self) -> float:
        """Forward passes of the model per diagnosed sample (its cost)."""
        return self.evidence.get("forward_rows", 0.0) / max(self.samples, 1)

    @property
    def backward_passes(self) -> float:
        """Input-gradient backward passes of the model per diagnosed sample."""
        return self.evidence.get("backward_rows", 0.0) / max(self.samples, 1)

    def to_dict(self) -> dict[str, Any]:
        """The diagnosis as plain Python values (JSON-ready)."""
        return {
            "samples": self.samples,
            "forward_passes_per_sample": self.forward_passes,
            "backward_passes_per_sample": self.backward_passes,
            "objective": self.objective,
            "score_attack": self.score_attack,
            "checks": list(self.checks),
            "skipped": dict(self.skipped),
            "notes": dict(self.notes),
            "flags": [f.to_dict() for f in self.flags],
            "evidence": dict(self.evidence),
        }

    def __str__(self) -> str:
        cost = (
            f"{self.samples} samples, {self.forward_passes:.1f} forward + "
            f"{self.backward_passes:.1f} backward passes per sample"
        )
        if not self.flags:
            head = f"diagnostics ({cost}): no flag"
            lines = [head]
        else:
            s = "s" if len(self.flags) > 1 else ""
            lines = [f"diagnostics ({cost}): {len(self.flags)} flag{s}, the figures may be wrong"]
            lines += [
                textwrap.fill(str(f), width=100, initial_indent="  ! ", subsequent_indent="    ")
                for f in self.flags
            ]
        for name, note in self.notes.items():
            lines.append(
                textwrap.fill(f"{name}: {note}", 100, initial_indent="  (", subsequent_indent="   ")
                + ")"
            )
        reasons: dict[str, list[str]] = {}
        for name, why in self.skipped.items():
            reasons.setdefault(why, []).append(name)
        for why, names in reasons.items():
            text = f"not checked: {', '.join(names)}; {why}"
            lines.append(
                textwrap.fill(text, 100, initial_indent="  (", subsequent_indent="   ") + ")"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Diagnosis(samples={self.samples}, flags={self.names})"


# ---------------------------------------------------------------------- random search


class _RandomSearch(Attack):
    """A score-based random search in the ball (no gradients): from a random point of the
    sphere (a vertex for Linf), each query proposes a change and keeps it where the
    objective (the margin) rises, per sample. Linf: a random fraction of the coordinates
    is set to a random vertex's (the fraction halves every quarter of the queries, from
    10%); other norms: a step of a random direction, of length a fraction of eps (halving
    from one half). Every query is one forward pass; the best point per sample is kept."""

    def __init__(self, norm: NormSpec = "linf", eps: float | None = None, queries: int = 100):
        super().__init__(norm=norm, eps=eps, objective=margin)
        self.queries = checks.check_positive_int(queries, "queries")

    def _settings(self) -> dict[str, Any]:
        return {**super()._settings(), "queries": self.queries}

    def run(self, oracle: Oracle, task: Task) -> Found:
        x0, norm, region, gen = task.x0, task.norm, task.region, task.generator
        work = F.work_dtype(x0.dtype)
        shape = tuple(x0.shape)
        eps = task.budget()
        e = F._per_sample(eps, x0, work)
        base = x0.to(work)
        clean = oracle.clean_logits(task)
        best = BestByObjective()
        best.consider(x0, clean, task.loss(clean), task.success(clean))

        def direction() -> Tensor:
            return norm.direction(F.randn(shape, gen, device=x0.device, dtype=work))

        current = region(base + e * direction())
        logits = oracle.logits(current)
        value = task.loss(logits)
        best.consider(current, logits, value, task.success(logits))
        linf = norm.name == "linf"  # chosen once: Linf searches the vertices of the ball
        quarter = max(self.queries // 4, 1)
        for q in range(1, self.queries):
            scale = 0.5 ** (q // quarter)
            if linf:
                resample = F.rand(shape, gen, device=x0.device, dtype=work) < 0.1 * scale
                proposal = torch.where(resample, base + e * direction(), current.to(work))
            else:
                proposal = current.to(work) + (0.5 * scale) * e * direction()
            proposal = region(proposal)
            logits_p = oracle.logits(proposal)
            value_p = task.loss(logits_p)
            best.consider(proposal, logits_p, value_p, task.success(logits_p))
            take = value_p > value
            current = torch.where(F.batch_view(take, x0.ndim), proposal, current)
            value = torch.where(take, value_p, value)
        return Found(best.x, best.logits)


def _score_attack(norm: Norm, queries: int) -> tuple[Attack, str]:
    """`advkit.Square` with ``queries`` queries (on inputs of more than four axes, which
    Square does not search, `_measure` runs this module's random search instead)."""
    return Square(norm=norm, queries=queries), "Square"


# ---------------------------------------------------------------------- measuring


class _Counter(nn.Module):
    """The model, counting the rows of every forward pass, and of those a backward pass
    will follow (a forward with autograd on an input that requires it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forward_rows = 0
        self.backward_rows = 0

    def forward(self, x: Tensor) -> Any:
        self.forward_rows += int(x.shape[0])
        if torch.is_grad_enabled() and x.requires_grad:
            self.backward_rows += int(x.shape[0])
        return self.model(x)


def _name(objective: Callable[..., Any]) -> str:
    return getattr(objective, "__name__", type(objective).__name__)


def _diameter(norm: Norm, bounds: tuple[float, float], features: int) -> float:
    """The largest distance between two points of the box, in ``norm``."""
    width = float(bounds[1]) - float(bounds[0])
    return width * features ** (1.0 / norm.p) if math.isfinite(norm.p) else width


@dataclass
class _Settings:
    norm: Norm
    eps: float
    objective: Objective
    steps: int
    queries: int
    directions: int
    seed: int
    checks: tuple[str, ...]
    verdict: Verdict


def _measure(
    clf: Classifier,
    x: Tensor,
    y: Tensor,
    ids: Tensor,
    s: _Settings,
    robust: Tensor | None,
    score_attack: Attack,
) -> dict[str, float]:
    """The figures of one batch (all counts: they add up over batches and processes)."""
    ev = dict.fromkeys(EVIDENCE_KEYS, 0.0)
    b = int(x.shape[0])
    ev["samples"] = float(b)
    if b == 0:
        return ev
    ev["bpda"] = float(any(isinstance(m, BPDA) for m in clf.modules()))
    counter = _Counter(clf)
    oracle = Oracle(Classifier(counter, bounds=clf.bounds), verdict=s.verdict)
    ev["verdict_draws"] = float(s.verdict.draws)
    want = set(s.checks)

    # Two no-grad passes: randomness, probabilities, correctness.
    z1 = checks.check_logits(oracle.logits(x), b)
    checks.check_labels(y, b, z1.shape[1])
    z2 = oracle.logits(x)
    scale = z1.abs().flatten(1).amax(dim=1).nan_to_num(0.0) + torch.finfo(torch.float32).tiny
    change = ((z1 - z2).abs().amax(dim=1) / scale).nan_to_num(0.0)
    rows = z1.float()
    prob = ((rows >= 0) & (rows <= 1)).all(dim=1) & ((rows.sum(dim=1) - 1).abs() <= 1e-3)
    ev["probability_rows"] = float(prob.sum())
    correct = (z1.argmax(dim=1) == y) & torch.isfinite(z1).all(dim=1)
    idx = correct.nonzero().squeeze(1)
    ev["correct"] = float(idx.numel())
    ev["eps"] = s.eps
    features = int(x[0].numel())
    unbounded = _diameter(s.norm, clf.bounds, features)
    wide = min(WIDE * s.eps, unbounded)
    ev["eps_wide"], ev["eps_unbounded"] = wide, unbounded

    if idx.numel() > 0:
        xc, yc, ic = x.index_select(0, idx), y.index_select(0, idx), ids.index_select(0, idx)
        task = Task(
            x0=xc,
            labels=yc,
            norm=s.norm,
            bounds=clf.bounds,
            objective=s.objective,
            generator=KeyedGenerator(s.seed, ic),
            clean_logits=z1.index_select(0, idx),
        )
        # The attack's loss at the clean inputs: its gradient (one more draw of the outputs).
        _, grad, z3 = oracle.value_and_grad(xc, task.loss)
        tiny = torch.finfo(grad.dtype).tiny
        zero = grad.flatten(1).abs().amax(dim=1) < tiny
        ev["zero_gradient"] = float(zero.sum())
        rows = zero.nonzero().squeeze(1)
        if rows.numel() > 0:  # saturated loss, or no gradient at all? The logit margin says.
            ev["saturated"] = _saturated(oracle, task.subset(rows), z1.index_select(0, idx)[rows])
        change3 = (z3 - z1.index_select(0, idx)).abs().amax(dim=1) / scale.index_select(0, idx)
        change = change.index_copy(0, idx, torch.maximum(change.index_select(0, idx), change3))
        ev["detached"] = float(oracle.detached)
        if "non_differentiable" in want and s.eps > 0:
            _finite_differences(oracle, task, z1.index_select(0, idx), s, ev)
        if want & {"not_monotonic", "unbounded_not_broken", "gradient_free_stronger"}:
            _budgets(oracle, task, s, robust, idx, score_attack, ev)

    ev["randomized"] = float((change.nan_to_num(0.0) > RANDOMIZED_RTOL).sum())
    ev["logit_change"] = float(change.nan_to_num(0.0).max())
    ev["forward_rows"] = float(counter.forward_rows)
    ev["backward_rows"] = float(counter.backward_rows)
    return ev


def _runner_up_margin(logits: Tensor, labels: Tensor, dtype: torch.dtype) -> Callable[..., Tensor]:
    """``z -> z_y - z_k`` with ``k`` the most likely wrong class at ``logits``: a smooth
    function of the logits (no max that switches) that no softmax saturates."""
    runner_up = logits.scatter(1, labels.unsqueeze(1), -math.inf).argmax(dim=1)

    def margin_of(z: Tensor) -> Tensor:
        zf = z.to(dtype)
        picked = zf.gather(1, torch.stack([labels, runner_up], dim=1))
        return picked[:, 0] - picked[:, 1]

    return margin_of


def _saturated(oracle: Oracle, task: Task, clean: Tensor) -> float:
    """How many of these samples (whose loss has a zero input gradient) have a logit margin
    whose input gradient is not zero: the loss saturates, the model is differentiable."""
    fn = _runner_up_margin(clean, task.labels, F.work_dtype(clean.dtype))
    _, grad, _ = oracle.value_and_grad(task.x0, fn)
    return float((grad.flatten(1).abs().amax(dim=1) >= torch.finfo(grad.dtype).tiny).sum())


def _finite_differences(
    oracle: Oracle, task: Task, clean: Tensor, s: _Settings, ev: dict[str, float]
) -> None:
    """Autograd's directional derivative of the logit margin against central differences
    along ``directions`` random directions of length ``FD_STEP * eps`` (in the norm), at the
    clean input moved into the box by the largest coordinate of the steps."""
    x0, y, gen = task.x0, task.labels, task.generator
    work = F.work_dtype(x0.dtype)
    shape = tuple(x0.shape)
    margin_of = _runner_up_margin(clean, y, work)

    lo, hi = float(task.bounds[0]), float(task.bounds[1])
    h = FD_STEP * s.eps
    steps = []
    for _ in range(s.directions):  # dense random signs, of norm h in the threat norm
        signs = (F.rand(shape, gen, device=x0.device, dtype=work) < 0.5).to(work) * 2 - 1
        steps.append(signs * F.batch_view(h / s.norm.measure(signs), x0.ndim))
    reach = torch.stack([d.flatten(1).abs().amax(dim=1) for d in steps]).amax(dim=0)
    # Keep x +- d inside the box: a model may clamp or quantize differently outside it.
    room = F.batch_view(reach.clamp_max((hi - lo) / 2), x0.ndim)
    center = torch.minimum(torch.maximum(x0.to(work), lo + room), hi - room).to(x0.dtype)
    _, grad, z = oracle.value_and_grad(center, margin_of)
    floor = FD_FLOOR * z.abs().flatten(1).amax(dim=1).to(work)
    trials = disagree = 0.0
    for d in steps:
        up = margin_of(oracle.logits((center.to(work) + d).to(x0.dtype)))
        down = margin_of(oracle.logits((center.to(work) - d).to(x0.dtype)))
        measured = up - down
        predicted = 2 * (grad.to(work) * d).flatten(1).sum(dim=1)
        size = torch.maximum(measured.abs(), predicted.abs())
        informative = torch.isfinite(measured) & torch.isfinite(predicted) & (size > floor)
        off = (measured - predicted).abs() > 0.5 * (measured.abs() + predicted.abs())
        trials += float(informative.sum())
        disagree += float((informative & off).sum())
    ev["fd_trials"], ev["fd_disagree"], ev["fd_step"] = trials, disagree, h


def _budgets(
    oracle: Oracle,
    task: Task,
    s: _Settings,
    robust: Tensor | None,
    idx: Tensor,
    score_attack: Attack,
    ev: dict[str, float],
) -> None:
    """The reference gradient attack at eps, 4 eps and the box's diameter; the score-based
    attack on what the gradient attacks left robust at eps."""
    apgd = APGD(
        norm=s.norm,
        steps=s.steps,
        objective=s.objective,
        random_init=False,
        early_stop=True,
    )
    broken: list[Tensor] = []
    levels = [s.eps, ev["eps_wide"], ev["eps_unbounded"]]
    for k, level in enumerate(levels):
        if level <= 0:
            broken.append(torch.zeros_like(task.labels, dtype=torch.bool))
        elif k > 0 and level == levels[k - 1]:
            broken.append(broken[-1])
        else:
            sub = task.using(eps=level, generator=_fresh(task.generator))
            broken.append(apgd.solve(oracle, sub).success)
    ev["robust_eps"] = float((~broken[0]).sum())
    ev["robust_wide"] = float((~broken[1]).sum())
    ev["robust_unbounded"] = float((~broken[2]).sum())
    later = broken[0] & ~(broken[1] & broken[2]) | (broken[1] & ~broken[2])
    ev["not_monotonic"] = float(later.sum())
    if "gradient_free_stronger" not in s.checks or s.eps <= 0:
        return
    target = ~broken[0] if robust is None else robust.index_select(0, idx)
    rows = target.nonzero().squeeze(1)
    ev["gradient_robust"] = float(rows.numel())
    if rows.numel() == 0:
        return
    sub = task.subset(rows)
    sub = sub.using(eps=s.eps, generator=_fresh(sub.generator))
    if isinstance(score_attack, Square) and task.x0.ndim > 4:  # Square: images, signals, vectors
        score_attack = _RandomSearch(norm=task.norm, queries=score_attack.queries)
    ev["score_broken"] = float(score_attack.solve(oracle, sub).success.sum())


def _fresh(generator: Any) -> Any:
    """The same keyed random source afresh: each run's draws depend on (seed, id) only."""
    if isinstance(generator, KeyedGenerator):
        return KeyedGenerator(generator.seed, generator.keys)
    return generator


# ---------------------------------------------------------------------- judging


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / max(whole, 1):.0f}%"


def judge(
    evidence: Mapping[str, float],
    *,
    objective: str = "cross_entropy",
    score_attack: str = "random search",
    checks_run: Sequence[str] = CHECKS,
    steps: int = 10,
    eot: bool = False,
) -> Diagnosis:
    """The flags that ``evidence`` (figures summed over batches or processes) calls for.

    Args:
        evidence: the figures of `EVIDENCE_KEYS`.
        objective: the name of the objective whose gradients were checked.
        score_attack: the name of the score-based attack that ran.
        checks_run: the checks that were asked for.
        steps: the reference gradient attack's steps (for the messages).
        eot: whether the evaluation's gradient attacks average gradients over
            draws (``eot > 1``); with a verdict over several draws as well, a
            randomized model is a note, not a flag.

    Returns:
        The `Diagnosis`.
    """
    ev = {k: float(evidence.get(k, 0.0)) for k in EVIDENCE_KEYS}
    n, correct = ev["samples"], ev["correct"]
    want = set(checks_run)
    flags: list[Flag] = []
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    randomized = ev["randomized"] > 0
    draws = int(ev["verdict_draws"])
    eps, wide, unbounded = ev["eps"], ev["eps_wide"], ev["eps_unbounded"]

    def counted(count: float, whole: float, fraction: float) -> bool:
        return count >= MIN_SAMPLES and count > fraction * whole

    if n == 0:
        return Diagnosis((), ev, tuple(c for c in CHECKS if c in want), {}, score_attack, objective)
    if "randomized" in want and randomized and eot and draws > 1:
        notes["randomized"] = (
            f"two forward passes differ on {int(ev['randomized'])} of {int(n)} samples: the "
            "model is randomized; the evaluation averages gradients over draws (EOT) and "
            f"decides success by a majority of {draws} draws"
        )
    elif "randomized" in want and randomized:
        flags.append(
            Flag(
                "randomized",
                f"two forward passes of the same inputs differ on {int(ev['randomized'])} of "
                f"{int(n)} samples (by up to {ev['logit_change']:.2g} of the largest logit): "
                "the model is randomized, so one pass's gradient is noisy and one pass's "
                "success can be luck. Attack with EOT, e.g. advkit.APGD(eot=20), and decide "
                "success by a majority of draws: advkit.evaluate(..., "
                "verdict=advkit.Verdict(draws=9)) or attack(model, x, y, verdict=9). If the "
                "randomness is not meant to be there (dropout or noise left on at test "
                "time), remove it.",
                {"samples": n, "differ": ev["randomized"], "logit_change": ev["logit_change"]},
            )
        )
    if "probability_outputs" in want and ev["probability_rows"] >= n:
        flags.append(
            Flag(
                "probability_outputs",
                "every output row lies in [0, 1] and sums to 1: the model returns "
                "probabilities, not logits, and losses on probabilities saturate. Remove "
                "the final softmax, or wrap the model with advkit.wrap(model, "
                "output=torch.log) if only probabilities are available.",
                {"samples": n, "rows": ev["probability_rows"]},
            )
        )
    gradient_checks = [c for c in CHECKS[2:] if c in want]
    if correct == 0:
        for c in gradient_checks:
            skipped[c] = "no correctly classified sample"
        gradient_checks = []
    if "zero_gradients" in gradient_checks and counted(
        ev["zero_gradient"], correct, ZERO_GRADIENT_FRACTION
    ):
        if ev["detached"] > 0:
            cause = (
                "The model's output does not depend on its input through autograd "
                "(torch.no_grad() or .detach() in forward): remove that, or wrap the "
                "non-differentiable part in advkit.BPDA(fn)."
            )
        elif ev["saturated"] >= ev["zero_gradient"] / 2:
            cause = (
                f"The logit margin still has a gradient on {int(ev['saturated'])} of them: "
                "the softmax saturates (logits scaled up, a low temperature, a very "
                "confident model). Use a loss that does not saturate: "
                "advkit.APGD(objective=advkit.objectives.dlr) or "
                "advkit.PGD(objective=advkit.objectives.margin)."
            )
        else:
            cause = (
                "The logits themselves have no input gradient there: a step autograd "
                "cannot differentiate (rounding, quantization, an argmax) sits in the "
                "model. Wrap it in advkit.BPDA(fn), or evaluate with a score-based attack."
            )
        flags.append(
            Flag(
                "zero_gradients",
                f"the input gradient of the {objective} loss is exactly zero (or subnormal) "
                f"on {int(ev['zero_gradient'])} of {int(correct)} correctly classified "
                f"samples ({_pct(ev['zero_gradient'], correct)}), so gradient attacks on "
                f"this loss cannot move and report too high a robust accuracy. {cause}",
                {
                    "samples": correct,
                    "zero_gradient": ev["zero_gradient"],
                    "saturated": ev["saturated"],
                    "fraction": ev["zero_gradient"] / correct,
                },
            )
        )
    if "non_differentiable" in gradient_checks:
        if randomized:
            skipped["non_differentiable"] = "the model is randomized"
        elif ev["bpda"] > 0:
            skipped["non_differentiable"] = "the model's gradient is advkit.BPDA's, by design"
        elif eps <= 0:
            skipped["non_differentiable"] = "eps is 0"
        elif ev["fd_trials"] >= 2 * MIN_SAMPLES and (
            ev["fd_disagree"] > DISAGREE_FRACTION * ev["fd_trials"]
        ):
            flags.append(
                Flag(
                    "non_differentiable",
                    "autograd's gradient does not predict how the outputs change: along "
                    f"random steps of length {ev['fd_step']:.3g}, the change of the logit "
                    "margin it predicts and the change measured disagree in "
                    f"{int(ev['fd_disagree'])} of {int(ev['fd_trials'])} trials "
                    f"({_pct(ev['fd_disagree'], ev['fd_trials'])}). A step autograd cannot "
                    "differentiate or does not see sits in the model: rounding, "
                    "quantization, JPEG-like compression, an argmax, a .detach() or "
                    "torch.no_grad() branch. Wrap it in advkit.BPDA(fn) (identity backward) "
                    "or advkit.BPDA(fn, approx=smooth_fn), or remove the detach; else "
                    "evaluate with a score-based attack.",
                    {
                        "trials": ev["fd_trials"],
                        "disagree": ev["fd_disagree"],
                        "fraction": ev["fd_disagree"] / ev["fd_trials"],
                        "step": ev["fd_step"],
                    },
                )
            )
    attacked = ("not_monotonic", "unbounded_not_broken", "gradient_free_stronger")
    if eps <= 0 or (randomized and draws == 1):
        why = "eps is 0" if eps <= 0 else "a randomized model judged on one draw"
        for c in attacked:
            if c in gradient_checks:
                skipped[c] = why
        gradient_checks = [c for c in gradient_checks if c not in attacked]
    attack = f"APGD ({steps} steps, {objective})"
    if "not_monotonic" in gradient_checks and counted(
        ev["not_monotonic"], correct, NOT_MONOTONIC_FRACTION
    ):
        flags.append(
            Flag(
                "not_monotonic",
                f"robust accuracy goes up with eps: {attack} breaks "
                f"{int(ev['not_monotonic'])} samples at a budget but not at a larger one "
                f"(robust: {int(ev['robust_eps'])} at eps={eps:.4g}, "
                f"{int(ev['robust_wide'])} at {wide:.4g}, {int(ev['robust_unbounded'])} "
                f"at {unbounded:.4g}, of {int(correct)}). A larger ball holds the smaller "
                "one, so the attack is failing, not the model: a sign of gradient masking. "
                "Use a loss that does not saturate (advkit.objectives.dlr), more steps and "
                "restarts, and a score-based attack, and look at the other flags.",
                {
                    "samples": correct,
                    "not_monotonic": ev["not_monotonic"],
                    "robust_eps": ev["robust_eps"],
                    "robust_wide": ev["robust_wide"],
                    "robust_unbounded": ev["robust_unbounded"],
                    "eps": eps,
                    "eps_wide": wide,
                    "eps_unbounded": unbounded,
                },
            )
        )
    if (
        "unbounded_not_broken" in gradient_checks
        and ev["robust_unbounded"] >= MIN_SAMPLES
        and ev["robust_unbounded"] > UNBOUNDED_ROBUST_FRACTION * correct
    ):
        flags.append(
            Flag(
                "unbounded_not_broken",
                f"at eps={unbounded:.4g}, a budget that reaches every point of the input "
                f"box, {attack} leaves {int(ev['robust_unbounded'])} of {int(correct)} "
                f"samples ({_pct(ev['robust_unbounded'], correct)}) robust, where it should "
                "break nearly all. Either the gradients are masked (see the other flags) or "
                "the input box is wrong: are the inputs in the model's bounds, and is the "
                "normalization applied once, inside advkit.wrap(model, bounds=..., mean=..., "
                "std=...)?",
                {
                    "samples": correct,
                    "robust_unbounded": ev["robust_unbounded"],
                    "fraction": ev["robust_unbounded"] / correct,
                    "eps_unbounded": unbounded,
                },
            )
        )
    if "gradient_free_stronger" in gradient_checks and counted(
        ev["score_broken"], ev["gradient_robust"], SCORE_BROKEN_FRACTION
    ):
        flags.append(
            Flag(
                "gradient_free_stronger",
                f"a score-based attack ({score_attack}, no gradients) broke "
                f"{int(ev['score_broken'])} of the {int(ev['gradient_robust'])} samples the "
                f"gradient attacks left robust at eps={eps:.4g} "
                f"({_pct(ev['score_broken'], ev['gradient_robust'])}): the robust accuracy "
                "they report is too high. The gradient attacks are too weak (one step, too "
                "few steps, too small a step: prefer advkit.APGD, with more steps and "
                "restarts) or the gradients mislead them (see the other flags; where they "
                "stop at thresholds, advkit.APGD(smoothing=0.2) averages them under noise). "
                + (
                    "Add advkit.Square to the evaluation."
                    if score_attack == "Square"
                    else "Evaluate with a score-based attack as well."
                ),
                {
                    "gradient_robust": ev["gradient_robust"],
                    "score_broken": ev["score_broken"],
                    "fraction": ev["score_broken"] / max(ev["gradient_robust"], 1),
                    "eps": eps,
                },
            )
        )
    order = {c: i for i, c in enumerate(CHECKS)}
    flags.sort(key=lambda f: order[f.name])
    ran = tuple(c for c in CHECKS if c in want and c not in skipped)
    return Diagnosis(tuple(flags), ev, ran, skipped, score_attack, objective, notes)


# ---------------------------------------------------------------------- the entry


def _check_names(names: Sequence[str] | None) -> tuple[str, ...]:
    if names is None:
        return CHECKS
    if isinstance(names, str):
        names = [names]
    unknown = [c for c in names if c not in CHECKS]
    if unknown:
        raise checks.ConfigError(f"unknown checks {unknown}; choose among {list(CHECKS)}.")
    return tuple(c for c in CHECKS if c in names)


class _Plan:
    """Validated settings of a diagnosis, shared by `diagnose` and `advkit.evaluate`."""

    def __init__(
        self,
        *,
        norm: NormSpec,
        eps: float,
        objective: Objective,
        checks_run: Sequence[str] | None,
        steps: int,
        queries: int,
        directions: int,
        seed: int,
        verdict: Verdict | int | None = None,
        eot: bool = False,
    ) -> None:
        value = checks.check_eps(eps, 1)
        if isinstance(value, Tensor):
            raise checks.ConfigError("diagnose takes one eps, a float.")
        if not callable(objective):
            raise checks.ConfigError(
                "objective must be a callable (logits, labels, targets) -> (B,), "
                f"got {type(objective).__name__}."
            )
        norm_value = resolve_norm(norm)
        self.settings = _Settings(
            norm=norm_value,
            eps=float(value),
            objective=objective,
            steps=checks.check_positive_int(steps, "steps"),
            queries=checks.check_positive_int(queries, "queries"),
            directions=checks.check_positive_int(directions, "directions"),
            seed=int(seed),
            checks=_check_names(checks_run),
            verdict=Verdict.of(verdict),
        )
        self.eot = bool(eot)
        self.score_attack, self.score_name = _score_attack(norm_value, self.settings.queries)

    def measure(
        self, clf: Classifier, x: Tensor, y: Tensor, ids: Tensor, robust: Tensor | None
    ) -> dict[str, float]:
        dev = x.device
        with model_guard(clf), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            return _measure(clf, x, y, ids, self.settings, robust, self.score_attack)

    def judge(self, evidence: Mapping[str, float]) -> Diagnosis:
        s = self.settings
        return judge(
            evidence,
            objective=_name(s.objective),
            score_attack=self.score_name,
            checks_run=s.checks,
            steps=s.steps,
            eot=self.eot,
        )


def diagnose(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: NormSpec = "linf",
    eps: float,
    objective: Objective = cross_entropy,
    checks: Sequence[str] | None = None,
    robust: Tensor | None = None,
    steps: int = 10,
    queries: int = 100,
    directions: int = 2,
    seed: int = 0,
    sample_ids: Tensor | None = None,
    verdict: Verdict | int | None = None,
) -> Diagnosis:
    r"""Check whether gradient attacks can be trusted on ``model``: gradient masking,
    randomness, probability outputs, and the attack failures they cause.

    Runs the checks of `CHECKS` (see the module's documentation for each rule)
    on the batch ``(x, y)`` and returns a `Diagnosis`; ``diagnosis.flags``
    lists what looks wrong, each `Flag` with a message that says what to do
    and the figures behind it. Honestly trained models (standard or
    adversarially trained) raise no flag.

    Cost, in passes of the model per sample (the whole batch, all checks): 2
    forward passes (randomness, correctness), 1 forward and 1 backward
    (gradient of the loss; 1 + 1 more on the samples where it is zero, to tell
    saturation from a missing gradient), 1 + 1 and ``2 * directions`` forward
    (finite differences), at most ``3 * (steps + 1)`` forward and
    ``3 * steps`` backward (the reference APGD at three budgets, stopping early
    on the samples it breaks; a budget that equals the next one runs once),
    and ``queries`` forward on the samples the gradient attacks left robust
    (the score-based attack). With the defaults, at most 142 forward and 33
    backward passes per sample, and far fewer on a model that breaks easily;
    the diagnosis reports what it spent (`Diagnosis.forward_passes`). For
    scale: AutoAttack's APGD-CE alone makes 101 forward and 100 backward
    passes per sample, and its APGD-T up to 9 times as many.

    Args:
        model: a `Classifier` or any ``nn.Module`` (wrapped with ``bounds=(0, 1)``).
            Left as it was found (mode, parameters, buffers).
        x: inputs ``(B, ...)`` inside the model's bounds (a few dozen suffice).
        y: labels ``(B,)``.
        norm: the threat model of the evaluation.
        eps: the budget of the evaluation, in the model's input space.
        objective: the loss the evaluation's gradient attacks climb
            (default the cross-entropy of PGD and APGD-CE); its gradient is the
            one checked, and the reference gradient attack uses it.
        checks: the names of the checks to run (default all of `CHECKS`).
        robust: optional ``(B,)`` bool, the samples your own gradient attacks
            left robust at ``eps``; ``gradient_free_stronger`` then tests those
            instead of what the reference gradient attack left.
        steps: steps of the reference gradient attack.
        queries: queries (forward passes) of the score-based attack per sample.
        directions: random directions of the finite-difference test.
        seed: seed of every random draw.
        sample_ids: ``(B,)`` integer ids of the samples (default ``0..B-1``):
            each sample's draws depend only on ``seed`` and its id.
        verdict: for a randomized model, the rule that decides the success of
            the checks' attacks (`advkit.Verdict`, or a number of draws). With
            one draw (the default), the checks that attack a randomized model
            are skipped: their successes could be luck.

    Returns:
        The `Diagnosis`: ``print(diagnosis)``, ``diagnosis.flags``, ``diagnosis.ok``.

    Raises:
        InputError, BoundsError, LabelError: bad inputs or labels.
        ConfigError: bad eps, objective, check names or budgets.

    Examples:
        >>> import torch, advkit
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x = torch.rand(32, 1, 4, 4)
        >>> y = net(x).argmax(1)
        >>> advkit.diagnose(net, x, y, eps=0.1).names
        []
        >>> hot = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> hot.load_state_dict(net.state_dict())  # the same model, logits times 1000
        <All keys matched successfully>
        >>> _ = hot[1].requires_grad_(False).weight.mul_(1000), hot[1].bias.mul_(1000)
        >>> advkit.diagnose(hot, x, y, eps=0.1, checks=["zero_gradients"]).names
        ['zero_gradients']
    """
    plan = _Plan(
        norm=norm,
        eps=eps,
        objective=objective,
        checks_run=checks,
        steps=steps,
        queries=queries,
        directions=directions,
        seed=seed,
        verdict=verdict,
    )
    clf = model if isinstance(model, Classifier) else wrap(model)
    _checks.check_inputs(x, clf.bounds)
    labels = _checks.integer_labels(y).to(x.device)
    b = int(x.shape[0])
    ids = (
        torch.arange(b, device=x.device)
        if sample_ids is None
        else _checks.check_sample_ids(sample_ids, b, x.device)
    )
    mask = None
    if robust is not None:
        if not isinstance(robust, Tensor) or robust.dtype != torch.bool or robust.shape != (b,):
            raise _checks.ConfigError(
                f"robust must be a ({b},) bool tensor (e.g. ~result.success of your attack), "
                f"got {robust!r}."
            )
        mask = robust.to(x.device)
    ev = plan.measure(clf, x.detach(), labels, ids, mask)
    return plan.judge(ev)
