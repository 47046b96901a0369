"""Carlini-Wagner L2: the smallest L2 perturbation found by optimisation."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from advkit import checks
from advkit import functional as F
from advkit.attacks.base import Found, MinNormAttack
from advkit.attacks.oracle import CompileSpec, Oracle, PrecisionSpec
from advkit.attacks.task import Task
from advkit.attacks.tracking import BestByDistance
from advkit.norms import L2, NormSpec, resolve_norm
from advkit.objectives import margin

__all__ = ["CW"]


_WIDEST_BOX = 100.0
"""The widest input box CW accepts, as a multiple of the inputs' own range (beyond it, its
distances grow: 2x the exact minimum at 1000x on an affine model, 60x at 10^4x)."""


class CW(MinNormAttack):
    r"""Carlini & Wagner's L2 attack ("Towards Evaluating the Robustness of Neural
    Networks", IEEE S&P 2017), batched, targeted and untargeted.

    For each sample it minimises
    $\|x - x_0\|_2^2 + c \cdot \max(-m(x), -\kappa)$ with $m$ the margin
    (`objectives.margin`: $\max_{j \ne y} z_j - z_y$ untargeted,
    $z_t - \max_{j \ne t} z_j$ targeted), computed correctly for logits of any
    sign and for log-probabilities. The box is handled by the change of
    variables $x = l + (u - l)(\tanh(w) + 1) / 2$ and $w$ is optimised with
    Adam. The distance term is measured in units of the box width,
    $\|(x - x_0) / (u - l)\|_2^2$, so that the whole optimisation (in $w$)
    is the same for a model on ``[0, 1]`` pixels and the same model on
    ``[0, 255]`` or ``[-1, 1]``: ``initial_const`` and ``lr`` mean the same
    for every box, and the distances found scale with it (the paper's unit
    box is the special case $u - l = 1$). The box must be finite. A binary search over the constant $c$ per sample (``search_steps``
    rounds from ``initial_const``; $c$ grows tenfold until a success is found,
    then bisects) trades distance for success. Every iterate that is
    adversarial with margin $\ge \kappa$ is a candidate; per sample the
    smallest is kept.

    With ``abort_early`` a round stops when the total loss has not decreased by
    0.01% over the last tenth of its steps (a host sync every ``steps // 10``
    steps, never per step).

    Args:
        norm: only ``"l2"``.
        steps: Adam steps per binary-search round.
        search_steps: rounds of the binary search over ``c``.
        initial_const: the first ``c`` of every sample.
        lr: Adam's learning rate, in ``tanh``-space units.
        kappa: confidence $\kappa \ge 0$ required of the margin.
        abort_early: stop a round when the loss stalls.
        eps: optional budget, which turns the attack into a fixed-eps one.
        precision: model precision in the gradient steps (``"bf16"``,
            ``"fp16"``; see `advkit.Attack`): the distance, the margin and
            Adam stay in full precision.
        compile: run the model compiled (see `advkit.Attack`).
        eot: gradients averaged over this many passes, for randomized models
            (see `advkit.Attack`).

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Linear(4, 3)
        >>> x = torch.rand(2, 4)
        >>> res = CW(steps=100, search_steps=5, initial_const=1.0)(net, x, net(x).argmax(1))
        >>> bool(res.success.all()), bool((res.distance > 0).all())
        (True, True)
    """

    def __init__(
        self,
        norm: NormSpec = "l2",
        steps: int = 1000,
        search_steps: int = 9,
        initial_const: float = 1e-3,
        lr: float = 1e-2,
        kappa: float = 0.0,
        abort_early: bool = True,
        eps: float | None = None,
        precision: PrecisionSpec = None,
        compile: CompileSpec = False,
        eot: int = 1,
    ) -> None:
        if not isinstance(resolve_norm(norm), L2):
            raise checks.ConfigError(f"CW is an L2 attack; got norm={norm!r}. Use norm='l2'.")
        super().__init__(norm=norm, eps=eps, precision=precision, compile=compile, eot=eot)
        self.steps = checks.check_positive_int(steps, "steps")
        self.search_steps = checks.check_positive_int(search_steps, "search_steps")
        self.initial_const = checks.check_positive(initial_const, "initial_const")
        self.lr = checks.check_positive(lr, "lr")
        if (
            isinstance(kappa, bool)
            or not isinstance(kappa, (int, float))
            or not (0.0 <= kappa < math.inf)
        ):
            raise checks.ConfigError(f"kappa must be a finite float >= 0, got {kappa!r}.")
        self.kappa = float(kappa)
        self.abort_early = bool(abort_early)

    def _settings(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "search_steps": self.search_steps,
            "initial_const": self.initial_const,
            "lr": self.lr,
            "kappa": self.kappa,
            "abort_early": self.abort_early,
            "eps": self.eps,
        }

    def run(self, oracle: Oracle, task: Task) -> Found:
        x0, (lo, hi) = task.x0, task.bounds
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise checks.ConfigError(
                f"CW needs a finite input box for its tanh change of variables, got bounds "
                f"({lo}, {hi}); wrap the model with the real range of its inputs, "
                "advkit.wrap(model, bounds=(low, high)), or use DeepFool or PGD, which work "
                "without bounds."
            )
        b = x0.shape[0]
        work = F.work_dtype(x0.dtype)
        dev = x0.device
        width = hi - lo
        # Adam's steps are sized to the box in tanh space: a box far wider than the inputs
        # (bounds standing in for "unbounded") leaves them no resolution. One host sync.
        spread = x0.to(work)
        scale = float(torch.maximum(spread.amax() - spread.amin(), spread.abs().amax()))
        if scale > 0 and width > _WIDEST_BOX * scale:
            raise checks.ConfigError(
                f"CW's tanh change of variables is sized to the input box ({lo}, {hi}), which "
                f"is {width / scale:.3g} times wider than the inputs' range; its steps cannot "
                "resolve perturbations of the inputs' size. Wrap the model with the real range "
                "of its inputs, advkit.wrap(model, bounds=(low, high)), or use DeepFool or PGD, "
                "which work without bounds."
            )
        base = x0.to(work)
        # tanh-space start: atanh of the input scaled to (-1, 1), shrunk so that bounds stay finite.
        w_max = math.atanh(1 - 1e-6)
        w_start = torch.atanh(((base - lo) / width * 2 - 1) * (1 - 1e-6))
        targets = task.targets
        kappa = self.kappa

        def to_x(w: Tensor) -> Tensor:
            return (lo + width * (torch.tanh(w) + 1) / 2).to(x0.dtype)

        const = torch.full((b,), self.initial_const, dtype=work, device=dev)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, math.inf)
        clean = oracle.clean_logits(task)
        best = BestByDistance(x0, clean, self._succeeds(task, clean))
        beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
        check_every = max(self.steps // 10, 1)

        for _ in range(self.search_steps):
            w = w_start.clone()
            m, v = torch.zeros_like(w), torch.zeros_like(w)
            found = torch.zeros(b, dtype=torch.bool, device=dev)
            prev = math.inf
            for step in range(1, self.steps + 1):
                x = to_x(w)
                c = const

                def hinge(logits: Tensor, c: Tensor = c) -> Tensor:
                    m_now = margin(logits, task.labels, targets).to(work)
                    return c * torch.clamp(kappa - m_now, min=0.0)

                penalty, gx, logits = oracle.value_and_grad(x, hinge)
                diff = (x.to(work) - base) / width
                dist = diff.flatten(1).pow(2).sum(dim=1)  # in units of the box width
                loss = dist + penalty
                t = torch.tanh(w)
                # d loss / d w through x = lo + width (tanh(w) + 1) / 2
                g = (2 * diff / width + gx.to(work)) * (width * (1 - t * t) / 2)
                ok = self._succeeds(task, logits)
                best.consider(x, logits, ok, dist.sqrt() * width)
                found = found | ok
                # Adam, sync-free.
                m = beta1 * m + (1 - beta1) * g
                v = beta2 * v + (1 - beta2) * g * g
                m_hat = m / (1 - beta1**step)
                v_hat = v / (1 - beta2**step)
                # Adam moves w by about lr per step whatever the gradient, so a pixel pushed
                # towards a bound would drift into tanh's flat tail, where gradients turn
                # subnormal (slow on CPUs) and the pixel can no longer come back: clamp w.
                w = (w - self.lr * m_hat / (v_hat.sqrt() + adam_eps)).clamp(-w_max, w_max)
                if self.abort_early and step % check_every == 0:
                    total = float(loss.sum())
                    if total > prev * 0.9999:
                        break
                    prev = total
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < math.inf, (lower + upper) / 2, const * 10)
        return Found(best.x, best.logits)

    def _succeeds(self, task: Task, logits: Tensor) -> Tensor:
        return (margin(logits, task.labels, task.targets) >= self.kappa) & task.success(logits)
