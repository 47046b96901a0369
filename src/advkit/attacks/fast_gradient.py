"""Single-step gradient attacks: FGSM (Linf) and FGM (L2, L1)."""

from __future__ import annotations

from advkit import _fused
from advkit.attacks.base import Attack, Found
from advkit.attacks.oracle import Oracle
from advkit.attacks.task import Task

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

    A call makes one forward and one backward pass at the clean input (which
    also run the call's checks) and one forward pass to score the result.

    Args:
        norm: ``"linf"`` (default, FGSM), ``"l2"`` or ``"l1"`` (FGM) or a Norm.
        eps: step length = budget, in input space (may be given per call).
        objective: loss to maximise, ``(logits, labels, targets) -> (B,)``.
        precision: model precision of the gradient pass (see `advkit.Attack`).
        compile: run the model compiled (see `advkit.Attack`).
        eot: the gradient averaged over this many passes, for randomized models
            (see `advkit.Attack`).

    Examples:
        >>> net = torch.nn.Linear(4, 2)
        >>> res = FGSM(eps=0.1)(net, torch.full((3, 4), 0.5), torch.tensor([0, 1, 0]))
        >>> res.distance
        tensor([0.1000, 0.1000, 0.1000], dtype=torch.float64)
    """

    def run(self, oracle: Oracle, task: Task) -> Found:
        _, grad, _ = oracle.value_and_grad(task.x0, task.loss)
        return Found(_fused.step(task.region, task.x0, grad, task.budget()))
