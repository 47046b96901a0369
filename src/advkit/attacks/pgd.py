"""Iterative gradient attacks: PGD and BIM, for any norm."""

from __future__ import annotations

from typing import Any

from advkit import _fused, checks
from advkit.attacks.base import Attack, Found
from advkit.attacks.oracle import CompileSpec, Oracle, PrecisionSpec
from advkit.attacks.task import Task
from advkit.attacks.tracking import ActiveSet, BestByObjective, keep_best
from advkit.functional import Scalar, work_dtype
from advkit.norms import NormSpec
from advkit.objectives import Objective, cross_entropy

__all__ = ["BIM", "PGD"]


class PGD(Attack):
    r"""Projected Gradient Descent (Madry et al., "Towards Deep Learning Models
    Resistant to Adversarial Attacks", ICLR 2018), for the Linf, L2 and L1 balls.

    Each of ``restarts`` runs starts at a point drawn uniformly from the ball
    (``random_init=True``) and repeats ``steps`` times

    $$
    x \leftarrow \operatorname{clip}_{[l,u]}\big(x_0 + \Pi_\epsilon(x + \alpha\, d(\nabla_x L(x)) - x_0)\big)
    $$

    with $d$ the norm's steepest-ascent direction (sign for Linf, the
    normalized gradient for L2, SLIDE's sparse sign for L1) and $L$ the
    objective. Every iterate is scored: per sample the attack returns the best
    point seen over all steps and restarts (a successful one first, then the
    highest objective), so a success found at any step is never lost. Each
    iterate is scored from the forward pass that computes its gradient, and
    the last one of each restart by one more forward pass: a call makes
    ``restarts * (steps + 1)`` forward and ``restarts * steps`` backward
    passes, and nothing else. The candidates are the iterates; the clean
    input is one of them only without a random start (where it is the first
    iterate), since scoring it would cost a forward pass of its own.

    Args:
        norm: threat model, ``"linf"`` (default), ``"l2"``, ``"l1"`` or a Norm.
        eps: radius of the ball in input space (may also be given per call).
        steps: gradient steps per restart.
        step_size: step length $\alpha$ in the norm, in input space.
            Default ``2.5 * eps / steps`` (Madry et al.), per sample when eps is.
        random_init: start from a uniform random point in the ball.
        restarts: independent runs; the best result per sample is kept.
        objective: loss to maximise, ``(logits, labels, targets) -> (B,)``.
        early_stop: a sample stops moving at the first iterate that succeeds
            (which is then its result), and every few steps the samples that
            succeed are dropped from the batch the model sees (with
            ``compile``, in batch sizes ``ceil(B / 2**k)``, so compiled code
            sees few shapes); a
            sample that succeeds skips later restarts. Robust accuracy is the
            same as without it; it saves the passes spent on broken samples
            at the price of one host sync every few steps.
        precision: model precision in gradient steps (``"bf16"``, ``"fp16"``;
            see `advkit.Attack`).
        compile: run the model compiled (see `advkit.Attack`).
        eot: gradients averaged over this many passes, for randomized models
            (see `advkit.Attack`).

    Examples:
        >>> import advkit
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
        >>> res = PGD(norm="l2", eps=0.5, steps=5)(net, x, y,
        ...           generator=torch.Generator().manual_seed(0))
        >>> bool((res.distance <= 0.5 + 1e-6).all())
        True
    """

    _default_step_factor = 2.5
    _compact_every = 4
    """With ``early_stop``: steps between two looks at which samples are still running."""

    def __init__(
        self,
        norm: NormSpec = "linf",
        eps: float | None = None,
        steps: int = 10,
        step_size: float | None = None,
        random_init: bool = True,
        restarts: int = 1,
        objective: Objective = cross_entropy,
        early_stop: bool = False,
        precision: PrecisionSpec = None,
        compile: CompileSpec = False,
        eot: int = 1,
    ) -> None:
        super().__init__(
            norm=norm,
            eps=eps,
            objective=objective,
            precision=precision,
            compile=compile,
            eot=eot,
        )
        self.steps = checks.check_positive_int(steps, "steps")
        self.step_size = (
            None if step_size is None else checks.check_positive(step_size, "step_size")
        )
        self.random_init = bool(random_init)
        self.restarts = checks.check_positive_int(restarts, "restarts")
        self.early_stop = bool(early_stop)

    def _settings(self) -> dict[str, Any]:
        return {
            **super()._settings(),
            "steps": self.steps,
            "step_size": self.step_size,
            "random_init": self.random_init,
            "restarts": self.restarts,
            "early_stop": self.early_stop,
        }

    def _step_size(self, eps: Scalar) -> Scalar:
        if self.step_size is not None:
            return self.step_size
        return eps * (self._default_step_factor / self.steps)

    def run(self, oracle: Oracle, task: Task) -> Found:
        x0, norm, eps = task.x0, task.norm, task.budget()
        alpha = self._step_size(eps)
        best = BestByObjective()
        for restart in range(self.restarts):
            # The samples being attacked; padded to few batch sizes for compiled code only.
            active = ActiveSet(task.batch_size, padded=oracle.compile is not False)
            if self.early_stop and restart > 0 and not active.update(best.success):
                break
            if self.random_init:
                start = x0.to(work_dtype(x0.dtype))
                x_all = task.region(start + norm.sample(x0, eps, generator=task.generator))
            else:
                x_all = x0  # the clean point is the first iterate (its pass runs the checks)
            sub = task if active.rows is None else task.subset(active.rows)
            x, alpha_r = active.take(x_all, alpha)
            for step in range(self.steps):
                if self.early_stop and step > 0 and step % self._compact_every == 0:
                    # A look at the host (one sync every few steps): drop the samples that
                    # already succeed from the batch, in a few fixed batch sizes.
                    x_all = active.put(x_all, x)
                    if not active.update(best.success):
                        break
                    sub = task if active.rows is None else task.subset(active.rows)
                    x, alpha_r = active.take(x_all, alpha)
                loss, grad, logits = oracle.value_and_grad(x, sub.loss)
                ok = sub.success(logits)
                best.consider(x, logits, loss, ok, active.rows)
                x_next = _fused.step(sub.region, x, grad, alpha_r)
                # early stop: a sample that succeeds here stays here (its best point)
                x = keep_best(ok, (x_next,), (x,))[0] if self.early_stop else x_next
            else:
                logits = oracle.logits(x)
                best.consider(x, logits, sub.loss(logits), sub.success(logits), active.rows)
        return Found(best.x, best.logits)


class BIM(PGD):
    r"""Basic Iterative Method (Kurakin et al., "Adversarial examples in the
    physical world", ICLR workshop 2017): PGD from the clean input, no random start.

    Args:
        norm: threat model, ``"linf"`` (default), ``"l2"``, ``"l1"`` or a Norm.
        eps: radius of the ball in input space.
        steps: number of steps.
        step_size: step length; default ``1.25 * eps / steps``, Kurakin et al.'s
            choice of a total path 1.25 times the budget.
        objective: loss to maximise.
        early_stop: stop samples at their first success (see `PGD`).
        precision: model precision in gradient steps (see `advkit.Attack`).
        compile: run the model compiled (see `advkit.Attack`).
        eot: gradients averaged over this many passes, for randomized models
            (see `advkit.Attack`).
    """

    _default_step_factor = 1.25

    def __init__(
        self,
        norm: NormSpec = "linf",
        eps: float | None = None,
        steps: int = 10,
        step_size: float | None = None,
        objective: Objective = cross_entropy,
        early_stop: bool = False,
        precision: PrecisionSpec = None,
        compile: CompileSpec = False,
        eot: int = 1,
    ) -> None:
        super().__init__(
            norm=norm,
            eps=eps,
            steps=steps,
            step_size=step_size,
            random_init=False,
            restarts=1,
            objective=objective,
            early_stop=early_stop,
            precision=precision,
            compile=compile,
            eot=eot,
        )

    def _settings(self) -> dict[str, Any]:
        s = super()._settings()
        del s["random_init"], s["restarts"]
        return s
