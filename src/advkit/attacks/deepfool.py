"""DeepFool: the minimal perturbation that crosses the nearest linearized decision boundary."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from advkit import checks
from advkit.attacks.base import Context, MinNormAttack, keep_best
from advkit.functional import batch_view, clip
from advkit.norms import NormSpec

__all__ = ["DeepFool"]


class DeepFool(MinNormAttack):
    r"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate
    method to fool deep neural networks", CVPR 2016), multi-class, batched.

    At each iterate the classifier is linearized around ``x``. For each
    candidate class ``k`` (the ``candidates - 1`` most likely wrong classes on
    the clean input) the gap $g_k = f_k(x) - f_y(x) < 0$ and its gradient
    $w_k$ give the distance $|g_k| / \|w_k\|_*$ to the linearized boundary
    (dual norm: L2 for L2, L1 for Linf). The attack steps to the nearest
    boundary, $r = (|g_l| + 10^{-4}) / \|w_l\|_* \cdot d(w_l)$ with $d$ the
    norm's unit steepest-ascent direction, accumulates $r_{tot}$, and puts the
    iterate at $x_0 + (1 + \eta) r_{tot}$ (the overshoot $\eta$ applies to the
    total perturbation, as in the paper). The first adversarial iterate of
    each sample is kept; samples stop moving once adversarial.

    The input box: every iterate is clipped to the box and $r_{tot}$ is kept
    equal to the clipped perturbation (it never accumulates mass outside the
    box). For the first three iterations that is all, as in the reference
    implementations: where clipping eats part of a step, the next iteration
    re-linearizes closer to the boundary, which follows its curvature and gives
    the smallest perturbations. A sample still not adversarial after that would
    creep towards a logit tie it never crosses (clipping removes a fixed share
    of every step), so from then on the coordinates that sit on a bound and
    would be pushed out of the box are removed from its linearization: the
    step goes to the linearized boundary within the face of the box and
    survives clipping whole. On the digits CNN this gives the reference
    implementations' norms in 6-7 instead of 13-19 passes.

    Targeted (``targets=``): the gaps are $f_t - f_k$ for the candidate classes
    and the step goes to the farthest still-violated linearized boundary, until
    the target wins.

    Refinement (``refine_steps > 0``, off by default, not in the paper): a
    bisection on the scale $s \in [0, 1]$ of each sample's perturbation keeps
    the smallest $x_0 + s\,\delta$ that is still adversarial (one no-grad
    forward per bisection step), which removes the overshoot; on an affine
    model the result is then exact to $2^{-\text{refine\_steps}}$.

    Cost per iteration: one forward and one vectorized backward over the
    ``candidates`` logits (counted as ``candidates`` backward passes) of the
    samples not yet adversarial. The loop synchronises with the host once per
    iteration, to find those samples (the batch shrinks as they are fooled) and
    to stop as soon as there are none: DeepFool usually needs 2-5 of its
    ``steps``, and most samples only the first one or two.

    Args:
        norm: ``"l2"`` (default) or ``"linf"`` (``"l1"`` works through the
            sparse L1 direction, without the paper's guarantees).
        steps: maximal number of iterations.
        overshoot: $\eta \ge 0$, relative overshoot of the total perturbation.
        candidates: number of classes considered, the label (or target) included
            (the paper uses 10); capped at the number of classes.
        refine_steps: bisection steps on the perturbation's scale after the
            attack (default 0: the paper's algorithm).
        eps: optional budget, which turns the attack into a fixed-eps one.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Linear(4, 3)
        >>> x = torch.rand(2, 4)
        >>> res = DeepFool()(net, x, net(x).argmax(1))
        >>> bool(res.success.all()), bool((res.distance > 0).all())
        (True, True)
    """

    _clip_only_iterations: ClassVar[int] = 3

    def __init__(
        self,
        norm: NormSpec = "l2",
        steps: int = 50,
        overshoot: float = 0.02,
        candidates: int = 10,
        refine_steps: int = 0,
        eps: float | None = None,
    ) -> None:
        super().__init__(norm=norm, eps=eps)
        self.steps = checks.check_positive_int(steps, "steps")
        if (
            isinstance(overshoot, bool)
            or not isinstance(overshoot, (int, float))
            or not (0.0 <= overshoot < float("inf"))
        ):
            raise checks.ConfigError(f"overshoot must be a finite float >= 0, got {overshoot!r}.")
        self.overshoot = float(overshoot)
        self.candidates = checks.check_positive_int(candidates, "candidates", minimum=2)
        self.refine_steps = checks.check_positive_int(refine_steps, "refine_steps", minimum=0)

    def _settings(self) -> dict[str, Any]:
        return {
            "norm": str(self.norm),
            "steps": self.steps,
            "overshoot": self.overshoot,
            "candidates": self.candidates,
            "refine_steps": self.refine_steps,
            "eps": self.eps,
        }

    def run(self, ctx: Context) -> tuple[Tensor, Tensor | None]:
        x0, (lo, hi) = ctx.x0, ctx.bounds
        clean = ctx.clean_logits
        c = clean.shape[1]
        k = min(self.candidates, c)
        anchor = ctx.labels if ctx.targets is None else ctx.targets
        sign = 1.0 if ctx.targets is None else -1.0
        others = clean.detach().scatter(1, anchor.unsqueeze(1), float("-inf")).topk(k - 1).indices
        classes = torch.cat([anchor.unsqueeze(1), others], dim=1)  # (B, K), anchor first
        scale = 1.0 + self.overshoot

        x = x0
        r_tot = torch.zeros_like(x0)
        found = ctx.is_success(clean)
        found_x, found_logits = x0, clean
        for step in range(self.steps + 1):
            # The samples still to fool: one host sync per iteration, which lets the attack
            # work on that shrinking subset only and stop as soon as it is empty.
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xa, x0a = x.index_select(0, idx), x0.index_select(0, idx)
            if step == self.steps:  # out of iterations: score the last iterate only
                logits = ctx.logits(xa)
                ok = ctx.is_success(logits, idx)
            else:
                logits, grads = ctx.class_gradients(xa, classes.index_select(0, idx))
                ok = ctx.is_success(logits, idx)
                # Box-aware linearization only for the samples still running after the
                # first iterations (see the class docstring).
                box = (lo, hi) if step >= self._clip_only_iterations else (-math.inf, math.inf)
                r = self._step(xa, logits, grads, classes.index_select(0, idx), sign, ok, *box)
                ra = r_tot.index_select(0, idx) + r
                xa_next = clip(x0a + scale * ra, (lo, hi))
                x = x.index_copy(0, idx, xa_next)
                r_tot = r_tot.index_copy(0, idx, (xa_next - x0a) / scale)
            fx, fl = keep_best(
                ok, (found_x.index_select(0, idx), found_logits.index_select(0, idx)), (xa, logits)
            )
            found_x = found_x.index_copy(0, idx, fx)
            found_logits = found_logits.index_copy(0, idx, fl)
            found = found.index_copy(0, idx, ok)
        return self._refine(ctx, found_x, found_logits)

    def _refine(self, ctx: Context, x_adv: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Bisect the scale of each perturbation: the smallest still-adversarial point on the ray.

        Points on the segment between ``x0`` and ``x_adv`` stay in the box (it is convex),
        so no clipping is needed. Samples not adversarial at ``x_adv`` stay as they are."""
        x0 = ctx.x0
        delta = x_adv - x0
        b = x0.shape[0]
        lo = torch.zeros(b, dtype=torch.float32, device=x0.device)
        hi = torch.ones_like(lo)
        for _ in range(self.refine_steps):
            mid = (lo + hi) / 2
            x = x0 + delta * batch_view(mid, x0.ndim).to(delta.dtype)
            out = ctx.logits(x)
            ok = ctx.is_success(out)
            x_adv, logits = keep_best(ok, (x_adv, logits), (x, out))
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)
        return x_adv, logits

    def _step(
        self,
        x: Tensor,
        logits: Tensor,
        grads: Tensor,
        classes: Tensor,
        sign: float,
        done: Tensor,
        lo: float,
        hi: float,
    ) -> Tensor:
        """The linearized step of every sample (zero for samples already adversarial)."""
        kk, b = grads.shape[0] - 1, grads.shape[1]
        f = logits.gather(1, classes)
        gap = sign * (f[:, 1:] - f[:, :1]).T  # (K-1, B); < 0 while the boundary is not crossed
        w = sign * (grads[1:] - grads[:1])  # (K-1, B, ...): gradients of the gaps
        xb = x.unsqueeze(0)
        blocked = ((xb <= lo) & (w < 0)) | ((xb >= hi) & (w > 0))
        w = w.masked_fill(blocked, 0.0)
        flat = w.reshape(kk * b, *w.shape[2:])
        direction = self.norm.direction(flat)
        slope = (flat * direction).flatten(1).sum(dim=1, dtype=torch.float32).reshape(kk, b)
        dist = gap.abs().float() / slope.clamp_min(1e-12)
        dist = torch.where(slope > 0, dist, torch.full_like(dist, float("inf")))
        if sign > 0:  # untargeted: cross the nearest boundary
            pick = dist.argmin(dim=0)
        else:  # targeted: cross the farthest boundary still violated
            pick = torch.where(gap < 0, dist, torch.full_like(dist, -1.0)).argmax(dim=0)
        idx = pick.unsqueeze(0)
        length = (gap.abs().float().gather(0, idx) + 1e-4) / slope.gather(0, idx).clamp_min(1e-12)
        length = torch.where(slope.gather(0, idx) > 0, length, torch.zeros_like(length))[0]
        length = torch.where(done, torch.zeros_like(length), length)
        d = direction.reshape(kk, b, *w.shape[2:])
        chosen = d.gather(0, batch_view(pick, d.ndim - 1).unsqueeze(0).expand(1, *d.shape[1:]))[0]
        return chosen * batch_view(length, chosen.ndim).to(chosen.dtype)
