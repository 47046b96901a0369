"""Iterative gradient attacks: PGD and BIM, for any norm."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from advkit import checks
from advkit.attacks.base import Attack, Context, improves, keep_best
from advkit.functional import Scalar, clip, pgd_step
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
    highest objective), so a success found at any step is never lost.

    Args:
        norm: threat model, ``"linf"`` (default), ``"l2"``, ``"l1"`` or a Norm.
        eps: radius of the ball in input space (may also be given per call).
        steps: gradient steps per restart.
        step_size: step length $\alpha$ in the norm, in input space.
            Default ``2.5 * eps / steps`` (Madry et al.), per sample when eps is.
        random_init: start from a uniform random point in the ball.
        restarts: independent runs; the best result per sample is kept.
        objective: loss to maximise, ``(logits, labels, targets) -> (B,)``.

    Example:
        >>> import advkit
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
        >>> res = PGD(norm="l2", eps=0.5, steps=5)(net, x, y,
        ...           generator=torch.Generator().manual_seed(0))
        >>> bool((res.distance <= 0.5 + 1e-6).all())
        True
    """

    _default_step_factor = 2.5

    def __init__(
        self,
        norm: NormSpec = "linf",
        eps: float | None = None,
        steps: int = 10,
        step_size: float | None = None,
        random_init: bool = True,
        restarts: int = 1,
        objective: Objective = cross_entropy,
    ) -> None:
        super().__init__(norm=norm, eps=eps, objective=objective)
        self.steps = checks.check_positive_int(steps, "steps")
        self.step_size = (
            None if step_size is None else checks.check_positive(step_size, "step_size")
        )
        self.random_init = bool(random_init)
        self.restarts = checks.check_positive_int(restarts, "restarts")

    def _settings(self) -> dict[str, Any]:
        return {
            **super()._settings(),
            "steps": self.steps,
            "step_size": self.step_size,
            "random_init": self.random_init,
            "restarts": self.restarts,
        }

    def _step_size(self, eps: Scalar) -> Scalar:
        if self.step_size is not None:
            return self.step_size
        return eps * (self._default_step_factor / self.steps)

    def run(self, ctx: Context) -> tuple[Tensor, Tensor | None]:
        x0, norm, eps, bounds = ctx.x0, ctx.norm, ctx.budget(), ctx.bounds
        alpha = self._step_size(eps)
        best_x, best_logits = x0, ctx.clean_logits
        best_loss, best_ok = ctx.loss(best_logits), ctx.is_success(best_logits)

        def consider(x: Tensor, logits: Tensor, loss: Tensor) -> None:
            nonlocal best_x, best_logits, best_loss, best_ok
            ok = ctx.is_success(logits)
            better = improves(ok, loss, best_ok, best_loss)
            best_x, best_logits, best_loss, best_ok = keep_best(
                better, (best_x, best_logits, best_loss, best_ok), (x, logits, loss, ok)
            )

        for restart in range(self.restarts):
            if self.random_init:
                x = clip(x0 + norm.sample(x0, eps, generator=ctx.generator), bounds)
            else:
                x = x0
            for step in range(self.steps):
                loss, grad, logits = ctx.value_and_grad(x)
                if self.random_init or step > 0 or restart > 0:
                    consider(x, logits, loss)
                x = pgd_step(x, x0, grad, norm=norm, eps=eps, step_size=alpha, bounds=bounds)
            logits = ctx.logits(x)
            consider(x, logits, ctx.loss(logits))
        return best_x, best_logits


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
    """

    _default_step_factor = 1.25

    def __init__(
        self,
        norm: NormSpec = "linf",
        eps: float | None = None,
        steps: int = 10,
        step_size: float | None = None,
        objective: Objective = cross_entropy,
    ) -> None:
        super().__init__(
            norm=norm,
            eps=eps,
            steps=steps,
            step_size=step_size,
            random_init=False,
            restarts=1,
            objective=objective,
        )

    def _settings(self) -> dict[str, Any]:
        s = super()._settings()
        del s["random_init"], s["restarts"]
        return s
