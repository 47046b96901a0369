"""Single-step gradient attacks: FGSM (Linf) and FGM (L2, L1)."""

from __future__ import annotations

from torch import Tensor

from advkit._fused import pgd_step
from advkit.attacks.base import Attack, CleanPass, Context

__all__ = ["FGSM"]


class FGSM(Attack):
    r"""Fast Gradient (Sign) Method: one full step of length eps along the steepest ascent.

    $$
    x_{adv} = \operatorname{clip}_{[l,u]}\big(x + \epsilon\, d(\nabla_x L(x, y))\big)
    $$

    with $d$ the norm's steepest-ascent direction: the sign of the
    gradient for Linf (FGSM, Goodfellow et al., "Explaining and Harnessing
    Adversarial Examples", ICLR 2015), the normalized gradient for L2 and the
    sparse SLIDE direction for L1 (FGM, Miyato et al. 2016). Targeted through
    ``targets=`` at call time: the step then descends the loss towards the target.

    Args:
        norm: ``"linf"`` (default, FGSM), ``"l2"`` or ``"l1"`` (FGM) or a Norm.
        eps: step length = budget, in input space (may be given per call).
        objective: loss to maximise, ``(logits, labels, targets) -> (B,)``.

    Example:
        >>> net = torch.nn.Linear(4, 2)
        >>> res = FGSM(eps=0.1)(net, torch.full((3, 4), 0.5), torch.tensor([0, 1, 0]))
        >>> res.distance
        tensor([0.1000, 0.1000, 0.1000])
    """

    def _clean_pass(self) -> CleanPass:
        return "graph"

    def run(self, ctx: Context) -> tuple[Tensor, Tensor | None]:
        _, grad, _ = ctx.value_and_grad(ctx.x0)
        eps = ctx.budget()
        x = pgd_step(ctx.x0, ctx.x0, grad, norm=ctx.norm, eps=eps, step_size=eps, bounds=ctx.bounds)
        return x, None
