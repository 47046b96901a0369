"""The attack contract, implemented once for every attack.

An attack is a class with settings in its constructor and one method,
``run(oracle, task)``: the `Oracle` is what it may ask of the model (counted
forward and gradient passes, in its precision, compiled when asked), the
`Task` what it is about (clean inputs, labels, targets, budget, norm, box,
objective, success rule). ``run`` returns what it `Found`; `Attack.finish`
turns that into an `AttackResult` (a feasible point, scored on exactly that
tensor); `Attack.solve` is ``run`` then ``finish``, and is how attacks run
other attacks. ``Attack.__call__``, the public entry, is the same for every
attack: it validates, guards the model, builds the oracle and the task, and
calls ``solve``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, final

import torch
from torch import Tensor, nn

from advkit import checks
from advkit.attacks.oracle import AUTOCAST, CompileSpec, Oracle, PrecisionSpec
from advkit.attacks.task import Task
from advkit.attacks.tracking import keep_best
from advkit.functional import KeyedGenerator, RandomSource, Scalar, clip, exact_dtype
from advkit.models import Classifier, model_guard, wrap
from advkit.norms import Norm, NormSpec, resolve_norm
from advkit.objectives import Objective, cross_entropy
from advkit.result import AttackResult, Verdict
from advkit.targets import TargetMap

__all__ = [
    "Attack",
    "CompileSpec",
    "Found",
    "MinNormAttack",
    "PrecisionSpec",
    "TargetSpec",
    "finish_minimal",
    "score",
]

TargetSpec = Tensor | TargetMap | None
"""``None`` (untargeted), a ``(B,)`` tensor of classes, or a target map."""


@dataclass
class Found:
    """What an attack's ``run`` found, before `Attack.finish` scores it.

    Attributes:
        x: the points ``(B, ...)``, feasible (in the ball and the box).
        logits: full-precision logits computed on exactly ``x``, or ``None`` to
            let ``finish`` compute them.
        extras: fields of the `AttackResult` a composite attack fills in
            (``broken_by``, ``parts``, ...).
    """

    x: Tensor
    logits: Tensor | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)


class _Checks:
    """The checks of one call that need the model's output (its number of classes): run on
    the first forward pass the attack makes, whichever point it is at, before any objective
    or gradient is computed. They validate the output and the labels, resolve the targets,
    and keep the logits of a full-precision pass at the clean inputs as the clean logits."""

    def __init__(self, task: Task, targets: TargetSpec) -> None:
        self.task = task
        self.targets = targets
        self.done = False
        self.probability_outputs = False
        self.oracle: Oracle | None = None

    def __call__(self, x: Tensor, out: Any, full_precision: bool) -> None:
        task = self.task
        batch = task.batch_size
        logits = checks.check_logits(out, batch)
        self.probability_outputs = checks.looks_like_probabilities(logits)
        num_classes = logits.shape[1]
        checks.check_labels(task.labels, batch, num_classes)
        if full_precision and x is task.x0:
            task.clean_logits = logits.detach()
        spec = self.targets
        if spec is not None:
            if not isinstance(spec, Tensor):
                if not callable(spec):
                    raise checks.LabelError(
                        "targets must be None, a tensor of classes or a target map such "
                        f"as advkit.targets.shift(1), got {type(spec).__name__}."
                    )
                if getattr(spec, "uses_logits", True):
                    assert self.oracle is not None
                    source = self.oracle.clean_logits(task)
                else:
                    source = logits.detach()
                spec = spec(source, task.labels, task.generator)
            checked = checks.check_targets(spec, task.labels, num_classes)
            task.set_targets(checked.to(device=task.x0.device, dtype=torch.int64))
        self.done = True

    def force(self) -> None:
        """Run the checks now if no forward pass has (an attack that read the targets first,
        or never ran the model): one forward pass on the clean inputs."""
        if not self.done:
            assert self.oracle is not None
            self.oracle.clean_logits(self.task)


@contextlib.contextmanager
def _private_rng(device: torch.device) -> Iterator[None]:
    """The global RNG as it was, whatever the model draws (dropout in train mode, a
    randomized defence): its state is forked for the call and restored after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


class Attack(ABC):
    """Base class of every attack: settings in the constructor, data in the call.

    A fixed-budget attack searches the eps-ball for an adversarial input; a
    minimal-norm attack (`MinNormAttack`) searches for the smallest
    perturbation and needs no eps. A subclass implements `run`; composite
    attacks call their members' `solve`.

    Args:
        norm: the threat model: ``"linf"``, ``"l2"``, ``"l1"`` or a
            `Norm`.
        eps: default budget (radius of the norm ball, in the model's input
            space); a call's ``eps=`` overrides it.
        objective: ``(logits, labels, targets) -> (B,)``, higher is better for
            the attacker; see `advkit.objectives`.
        precision: ``None`` or ``"fp32"`` (default): the model runs in the
            inputs' dtype. ``"bf16"`` / ``"fp16"``: the forward and backward
            passes of gradient steps run under ``torch.autocast`` in that
            precision, while the perturbation, the step, the projection and the
            loss stay in the inputs' dtype, and ``success`` is decided by a
            full-precision forward on the returned ``x_adv``. Prefer bf16:
            fp16 has no loss scaling here, and input gradients of confident
            samples can underflow to zero in an fp16 backward.
        compile: ``False`` (default), ``True`` or a ``torch.compile`` mode
            (``"reduce-overhead"`` and ``"max-autotune"`` use CUDA graphs on
            GPU): run the model's forward and backward of gradient steps
            compiled. Worth it for small, launch-bound models with a fixed
            batch shape; the first call per model and batch shape pays the
            compilation. The compiled model is cached on the wrapper: pass
            a model wrapped once with `advkit.wrap` (a plain ``nn.Module`` is
            wrapped, and so compiled, anew in every call). Parameters are
            frozen while tracing, so the compiled backward computes no weight
            gradient.
        eot: for randomized models (random transformations, noise, dropout at
            inference): every gradient the attack takes is the mean over ``eot``
            forward and backward passes, each counted (Expectation over
            Transformation, Athalye et al., "Synthesizing Robust Adversarial
            Examples", ICML 2018). Default 1.

    Randomized models (noise, random transformations or dropout at inference)
    need two things: ``eot=K`` here, so that each step follows the expected
    gradient rather than one draw's, and a verdict over several draws in the
    call (``verdict=advkit.Verdict(draws=K)``, or ``verdict=K``): the returned
    point is scored ``K`` times and a sample counts as broken only where a
    strict majority of the draws is fooled (the rule is configurable, see
    `advkit.Verdict`), since one lucky draw inflates success.
    `advkit.diagnose` tells whether a model is randomized.
    """

    minimal: bool = False
    """Whether this is a minimal-norm attack, which needs no eps (see `MinNormAttack`); a
    composite attack decides it per instance from its members."""

    def __init__(
        self,
        *,
        norm: NormSpec = "linf",
        eps: float | None = None,
        objective: Objective = cross_entropy,
        precision: PrecisionSpec = None,
        compile: CompileSpec = False,
        eot: int = 1,
    ) -> None:
        if precision not in AUTOCAST:
            raise checks.ConfigError(
                f"precision must be None, 'fp32', 'bf16' or 'fp16', got {precision!r}."
            )
        if compile not in (False, True, "default", "reduce-overhead", "max-autotune"):
            raise checks.ConfigError(
                "compile must be False, True or a torch.compile mode ('default', "
                f"'reduce-overhead', 'max-autotune'), got {compile!r}."
            )
        self.precision: PrecisionSpec = None if precision == "fp32" else precision
        self.compile: CompileSpec = compile
        self.eot = checks.check_positive_int(eot, "eot")
        self.norm: Norm = resolve_norm(norm)
        if isinstance(eps, Tensor):
            raise checks.ConfigError(
                "the constructor's eps is one float for every call; pass per-sample budgets "
                "to the call instead: attack(model, x, y, eps=tensor_of_shape_B)."
            )
        self.eps: float | None = None if eps is None else float(checks.check_eps(eps, 1))
        if not callable(objective):
            raise checks.ConfigError(
                f"objective must be a callable (logits, labels, targets) -> (B,), "
                f"got {type(objective).__name__}."
            )
        self.objective = objective

    # ------------------------------------------------------------------ description

    def _settings(self) -> dict[str, Any]:
        return {"norm": str(self.norm), "eps": self.eps}

    def _execution(self) -> dict[str, Any]:
        """How the attack runs (not what it computes); shown when not the default."""
        out: dict[str, Any] = {}
        if self.precision is not None:
            out["precision"] = self.precision
        if self.compile is not False:
            out["compile"] = self.compile
        if self.eot != 1:
            out["eot"] = self.eot
        return out

    def __repr__(self) -> str:
        settings = {**self._settings(), **self._execution()}
        args = ", ".join(f"{k}={v!r}" for k, v in settings.items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ the work

    @abstractmethod
    def run(self, oracle: Oracle, task: Task) -> Found:
        """Search for adversarial inputs.

        Args:
            oracle: the model, configured with this attack's precision and compile mode.
            task: the data and rules, with this attack's objective and budget
                (``task.eps`` is ``None`` only for a minimal-norm attack without one).

        Returns:
            What was found: feasible points (in the ball and the box) and,
            where known, full-precision logits computed on exactly them.
        """

    def finish(self, oracle: Oracle, task: Task, found: Found) -> AttackResult:
        """Turn what `run` found into the result: a point in the ball and the box (exactly,
        in the inputs' dtype), scored on exactly that tensor.

        Logits handed over by ``run`` are used when they are a verdict: computed in
        full precision on a deterministic model (not ``keep_mode``) and the call asked
        for a one-draw verdict; otherwise `score` scores ``x_adv`` (one forward pass,
        or ``verdict.draws`` of them). A point that ``run`` left outside the ball or the
        box is brought into it and re-scored. Minimal-norm attacks override this (see
        `MinNormAttack.finish`).
        """
        x0 = task.x0
        x_adv = _laid_out_like(found.x.detach(), x0)
        logits = found.logits
        if task.eps is not None:
            inside = _inside(task, x_adv)
            if not bool(inside.all()):  # run() broke the contract: repair and re-score
                x_adv = torch.where(_rows(inside, x_adv), x_adv, task.region(x_adv))
                logits = None
        if logits is None or _rescore(self, oracle):
            logits = score(oracle, task, x_adv)
        return self._result(task, x_adv, logits.detach(), found)

    def _result(self, task: Task, x_adv: Tensor, logits: Tensor, found: Found) -> AttackResult:
        success = task.success(logits)
        distance = _distance(task, x_adv)
        return AttackResult(
            x_adv=x_adv,
            success=success,
            distance=distance,
            logits=logits,
            labels=task.labels,
            targets=task.goal,
            norm=task.norm.name,
            forward_passes=0,
            backward_passes=0,
            **found.extras,
        )

    @final
    def solve(self, oracle: Oracle, task: Task) -> AttackResult:
        """Run this attack on ``task`` with ``oracle`` and finish: how attacks run attacks.

        The oracle is configured with this attack's precision, compile mode and EOT;
        the task gets this attack's objective and norm, and its budget when the
        task has none. The result's pass counts are the passes made here.
        """
        oracle = oracle.configured(self.precision, self.compile, self.eot)
        eps: Scalar | None = task.eps if task.eps is not None else self.eps
        if eps is None and not self.minimal:
            raise checks.ConfigError(
                f"{type(self).__name__} needs eps: give it to the constructor or to the call."
            )
        task = task.using(objective=self.objective, eps=eps, norm=self.norm)
        f0, b0 = oracle.forward_passes, oracle.backward_passes
        result = self.finish(oracle, task, self.run(oracle, task))
        return dataclasses.replace(
            result,
            forward_passes=oracle.forward_passes - f0,
            backward_passes=oracle.backward_passes - b0,
        )

    @final
    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        targets: TargetSpec = None,
        eps: float | Tensor | None = None,
        generator: torch.Generator | None = None,
        sample_ids: Tensor | None = None,
        keep_mode: bool = False,
        verdict: Verdict | int | None = None,
    ) -> AttackResult:
        """Attack ``model`` on inputs ``x`` with labels ``y``.

        Args:
            model: a `Classifier` or any ``nn.Module``
                (wrapped with ``bounds=(0, 1)``).
            x: clean inputs ``(B, ...)`` inside the model's bounds; never modified.
            y: true labels ``(B,)``, of any integer dtype.
            targets: ``None`` for an untargeted attack; a ``(B,)`` tensor of
                classes or a target map (`advkit.targets`) for a targeted one.
            eps: budget overriding the constructor's: a float, or a ``(B,)``
                tensor of per-sample budgets (e.g. an eps sweep over copies of a batch).
            generator: source of randomness; the same seeded generator gives
                the same result. The global RNG is never used, and its state is
                the same after the call (also when the model draws from it).
            sample_ids: optional ``(B,)`` integer ids of the samples (e.g. their
                indices in the dataset). With them every random draw of sample
                ``i`` (random start, random target) depends only on the
                generator's seed (``generator.initial_seed()``) and
                ``sample_ids[i]``, not on the batch it is in: results are the
                same sample by sample whatever the batch size, the order or the
                number of processes (see `advkit.functional.KeyedGenerator`).
            keep_mode: keep the model's train/eval mode instead of switching
                to eval mode (e.g. adversarial training with train-mode BatchNorm).
                Buffers are restored either way. Attacks run the samples they
                have not finished with, so batch statistics come from those;
                a BatchNorm layer without spatial dimensions cannot run on one
                sample in training mode, and the attack then raises
                `advkit.checks.ModelError`.
            verdict: for a randomized model, how ``success`` is decided: an
                `advkit.Verdict` or a number of draws ``K``. The returned
                ``x_adv`` is scored by ``K`` forward passes and a sample counts
                as broken only where more than half of them (the verdict's
                ``quorum``) succeed, in every part of a composite attack. Default
                (``None``): one pass, as for a deterministic model.

        Returns:
            The result of the attack, an `AttackResult`.

        Raises:
            InputError, BoundsError: bad inputs (not batched, NaN/Inf, outside bounds).
            LabelError: bad labels or targets.
            ConfigError: bad eps, generator or verdict.
            ModelOutputError: the model does not return ``(B, C)`` logits.
            ModelError: the model modified its input in place, or cannot run on
                the inputs' dtype.
        """
        if torch.is_inference_mode_enabled():
            raise checks.ConfigError(
                "attacks need input gradients, which torch.inference_mode() disables; call the "
                "attack outside that block (torch.no_grad() is fine: attacks re-enable autograd)."
            )
        clf = wrap(model) if not isinstance(model, Classifier) else model
        checks.check_inputs(x, clf.bounds)
        batch = x.shape[0]
        requested = self.eps if eps is None else eps
        budget: Scalar | None = None
        if requested is not None or not self.minimal:
            budget = checks.check_eps(requested, batch)
        if isinstance(budget, Tensor):
            budget = budget.detach().to(device=x.device).expand(batch).clone()
        checks.check_generator(generator, x.device)
        rule = Verdict.of(verdict)
        if generator is None:
            generator = torch.Generator(device=x.device)
            generator.seed()
        source: RandomSource = generator
        if sample_ids is not None:
            source = KeyedGenerator(
                generator.initial_seed(), checks.check_sample_ids(sample_ids, batch, x.device)
            )
        labels = checks.integer_labels(y).to(x.device)
        if isinstance(targets, Tensor):
            targets = checks.integer_labels(targets, name="targets").to(x.device)
        x0 = x.detach().clone(memory_format=torch.preserve_format)

        task = Task(
            x0=x0,
            labels=labels,
            norm=self.norm,
            bounds=clf.bounds,
            objective=self.objective,
            generator=source,
            eps=budget,
        )
        call_checks = _Checks(task, targets)
        if targets is not None:  # targets read before the first forward pass need one
            task._resolve = call_checks.force
        with model_guard(clf, keep_mode=keep_mode), _private_rng(x.device):
            oracle = Oracle(clf, keep_mode=keep_mode, observer=call_checks, verdict=rule)
            call_checks.oracle = oracle
            result = self.solve(oracle, task)
            call_checks.force()
        if call_checks.probability_outputs:  # pointing at the caller's line
            warnings.warn(checks.PROBABILITY_MESSAGE, checks.ProbabilityOutputWarning, stacklevel=2)
        if oracle.detached:
            warnings.warn(checks.DETACHED_MESSAGE, checks.GradientWarning, stacklevel=2)
        return result


class MinNormAttack(Attack):
    """An attack that looks for the smallest adversarial perturbation; no eps needed.

    Its `AttackResult` holds, per sample, the best adversarial found and its
    ``distance`` in the attack's norm; where none was found ``success`` is
    False, ``x_adv`` is the clean input and ``distance`` is ``inf``. One run
    gives the whole robust-accuracy curve: ``result.robust_accuracy([eps, ...])``.

    Called with ``eps=`` (a float or per-sample tensor) it becomes a budgeted
    attack: the perturbation found is projected onto the eps-ball, re-scored,
    and counts as a success only if it is still adversarial there.
    """

    minimal = True

    def finish(self, oracle: Oracle, task: Task, found: Found) -> AttackResult:
        """Score the point found (see `finish_minimal`)."""
        return finish_minimal(self, oracle, task, found)


def finish_minimal(attack: Attack, oracle: Oracle, task: Task, found: Found) -> AttackResult:
    """The finish of a minimal-norm search: score the point found, brought into the eps-ball
    first when the call has a budget; the clean input at distance ``inf`` where nothing
    adversarial was found."""
    x0 = task.x0
    x_adv = _laid_out_like(found.x.detach(), x0)
    logits = found.logits
    if task.eps is not None:
        inside = _inside(task, x_adv)
        if not bool(inside.all()):
            x_adv = torch.where(_rows(inside, x_adv), x_adv, task.region(x_adv))
            logits = None
    elif not bool(_inside_box(task, x_adv).all()):
        x_adv = clip(x_adv, task.bounds)
        logits = None
    if logits is None or _rescore(attack, oracle):
        logits = score(oracle, task, x_adv)
    result = attack._result(task, x_adv, logits.detach(), found)
    success = result.success
    clean = oracle.clean_logits(task)
    x_adv, logits = keep_best(~success, (result.x_adv, result.logits), (x0, clean))
    distance = torch.where(success, result.distance, math.inf)
    return dataclasses.replace(result, x_adv=x_adv, logits=logits, distance=distance)


def _rescore(attack: Attack, oracle: Oracle) -> bool:
    """Whether logits that ``run`` handed over may not serve as the verdict: the model may
    be random (``keep_mode``), the call asked for a verdict over several draws, or the
    attack ran in reduced precision."""
    return oracle.keep_mode or oracle.verdict.draws > 1 or attack.precision is not None


def score(oracle: Oracle, task: Task, x: Tensor) -> Tensor:
    """The verdict's logits at ``x`` (a feasible point): one full-precision forward pass,
    or, with ``oracle.verdict.draws = K > 1`` (a randomized model), ``K`` of them and the
    logits of the first draw that agrees with the majority rule of `advkit.Verdict`, so
    that ``task.success`` of the returned logits is the verdict."""
    verdict = oracle.verdict
    if verdict.draws == 1:
        return oracle.logits(x)
    draws = torch.stack([oracle.logits(x) for _ in range(verdict.draws)])
    logits, _ = verdict.choose(draws, task.labels, task.goal)
    return logits


# ---------------------------------------------------------------------- helpers


def _laid_out_like(x: Tensor, like: Tensor) -> Tensor:
    """``x`` in ``like``'s memory format (a copy only when the strides differ)."""
    if x.stride() == like.stride():
        return x
    return torch.empty_like(like).copy_(x)


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape(mask.shape[0], *([1] * (like.ndim - 1)))


def _inside_box(task: Task, x: Tensor) -> Tensor:
    lo, hi = task.bounds
    return ((x >= lo) & (x <= hi)).flatten(1).all(dim=1)


def _inside(task: Task, x: Tensor) -> Tensor:
    """``(B,)`` bool: ``x`` lies in the ball and the box, measured exactly: in float64
    (float32 on MPS) whatever ``x``'s dtype, so that a budget given as a Python float is
    not rounded to a wider one before the comparison."""
    n = _distance(task, x)
    eps = task.budget()
    e = eps.to(n) if isinstance(eps, Tensor) else eps
    return (n <= e) & _inside_box(task, x)


def _distance(task: Task, x: Tensor) -> Tensor:
    """``(B,)`` norm of ``x - x0``, computed in float64 (float32 on MPS) from the exact
    differences, so that a point inside the ball never reports a distance above eps."""
    work = exact_dtype(torch.float64, x.device)
    return task.norm.measure(x.to(work) - task.x0.to(work))
