"""DeepFool: the minimal perturbation that crosses the nearest linearized decision boundary."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from advkit import checks
from advkit.attacks.base import Found, MinNormAttack
from advkit.attacks.oracle import CompileSpec, Oracle, PrecisionSpec
from advkit.attacks.task import Task
from advkit.attacks.tracking import ActiveSet, BestByDistance, keep_best
from advkit.functional import batch_view, clip, work_dtype
from advkit.norms import L2, Linf, NormSpec

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
    box). For the first two iterations that is all, as in the reference
    implementations: where clipping eats part of a step, the next iteration
    re-linearizes closer to the boundary, which follows its curvature and gives
    the smallest perturbations. A sample still not adversarial after that would
    creep towards a logit tie it never crosses (clipping removes a fixed share
    of every step), so from then on the coordinates that sit on a bound and
    would be pushed out of the box are removed from its linearization: the
    step goes to the linearized boundary within the face of the box and
    survives clipping whole. On the digits CNN this gives the reference
    implementations' norms (median per-sample ratio 1.000) with gradients at 3
    iterates for most samples, where clipping alone creeps over the boundary in
    3-12; box-aware steps from the first iteration on land about 1.5% farther
    (a long step onto the face of the box overshoots the curved boundary).

    Targeted (``targets=``): the gaps are $f_t - f_k$ for the candidate classes
    and the step goes to the farthest still-violated linearized boundary, until
    the target wins.

    Refinement (``refine_steps > 0``, off by default, not in the paper): a
    bisection on the scale $s \in [0, 1]$ of each sample's perturbation keeps
    the smallest $x_0 + s\,\delta$ that is still adversarial (one no-grad
    forward per bisection step), which removes the overshoot; on an affine
    model the result is then exact to $2^{-\text{refine\_steps}}$.

    Cost per iteration, on the samples not yet adversarial only: one forward
    pass and ``candidates - 1`` backward passes through its graph, one per
    candidate, each seeded with $e_k - e_y$ so that it gives the gap's gradient
    $w_k$ directly (`Context.class_gradients` with ``relative=True``; counted
    as ``candidates - 1`` backward passes). After a box-aware step, which
    usually crosses the boundary, the iterate is scored first with one forward
    pass and only the samples it did not fool pay for the gradients (one more
    forward pass for them); this goes on while at least one in ``candidates``
    of the scored samples was fooled. The loop synchronises with the host once
    per iteration, to find the samples still running (the batch shrinks as they
    are fooled) and to stop as soon as there are none. On the digits CNN,
    DeepFool stops after 5 iterations.

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
        precision: model precision in the gradient passes (``"bf16"``,
            ``"fp16"``; see `advkit.Attack`).
        compile: run the model compiled (see `advkit.Attack`).
        eot: gradients averaged over this many passes, for randomized models
            (see `advkit.Attack`).

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Linear(4, 3)
        >>> x = torch.rand(2, 4)
        >>> res = DeepFool()(net, x, net(x).argmax(1))
        >>> bool(res.success.all()), bool((res.distance > 0).all())
        (True, True)
    """

    _clip_only_iterations: ClassVar[int] = 2

    def __init__(
        self,
        norm: NormSpec = "l2",
        steps: int = 50,
        overshoot: float = 0.02,
        candidates: int = 10,
        refine_steps: int = 0,
        eps: float | None = None,
        precision: PrecisionSpec = None,
        compile: CompileSpec = False,
        eot: int = 1,
    ) -> None:
        super().__init__(norm=norm, eps=eps, precision=precision, compile=compile, eot=eot)
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

    def run(self, oracle: Oracle, task: Task) -> Found:
        x0, bounds, norm = task.x0, task.bounds, task.norm
        clean = oracle.clean_logits(task)
        k = min(self.candidates, clean.shape[1])
        targets = task.targets
        anchor = task.labels if targets is None else targets
        sign = 1.0 if targets is None else -1.0
        others = clean.detach().scatter(1, anchor.unsqueeze(1), float("-inf")).topk(k - 1).indices
        classes = torch.cat([anchor.unsqueeze(1), others], dim=1)  # (B, K), anchor first
        scale = 1.0 + self.overshoot
        free = (-math.inf, math.inf)

        # Per sample: its first adversarial iterate (the clean input where it already is).
        best = BestByDistance(x0, clean, task.success(clean))
        # The samples still running: the attack works on that shrinking subset only (`sub`,
        # and the state below, one row per running sample) and stops once it is empty.
        active = ActiveSet(task.batch_size, padded=False, device=x0.device)
        if not active.update(best.found):
            return self._refine(oracle, task, best)
        sub = task.subset(active.indices)
        x0a, cls = sub.x0, classes.index_select(0, active.indices)
        xa, r_tot = x0a, torch.zeros_like(x0a)
        score_first = False
        for step in range(self.steps + 1):
            if step == self.steps or score_first:
                # Out of iterations, or the last step most likely crossed the boundary:
                # score the iterate first (one forward pass), then compute gradients only
                # for the samples it did not fool, instead of K - 1 backward passes for all.
                logits = oracle.logits(xa)
                ok = sub.success(logits)
                best.consider(xa, logits, ok, norm.measure(xa - x0a), active.indices)
                running = active.running
                keep = active.retain(~ok)  # host sync
                # Go on scoring first while it pays: while the forward pass it costs for
                # every running sample saves K - 1 backward passes for at least 1 in K.
                score_first = (running - active.running) * k >= running
                if keep is not None:
                    sub = sub.subset(keep)
                    x0a, xa, r_tot, cls = (t.index_select(0, keep) for t in (x0a, xa, r_tot, cls))
                if step == self.steps or active.running == 0:
                    break
                logits, w = oracle.class_gradients(xa, cls, relative=True)
                # Not adversarial a moment ago; a model with randomness may disagree now.
                ok = sub.success(logits)
                best.consider(xa, logits, ok, norm.measure(xa - x0a), active.indices)
            else:
                logits, w = oracle.class_gradients(xa, cls, relative=True)
                ok = sub.success(logits)
                best.consider(xa, logits, ok, norm.measure(xa - x0a), active.indices)
                keep = active.retain(~ok)  # host sync
                if keep is not None:
                    sub = sub.subset(keep)
                    x0a, xa, r_tot, cls, logits = (
                        t.index_select(0, keep) for t in (x0a, xa, r_tot, cls, logits)
                    )
                    w, ok = w[:, keep], ok[keep]
                if active.running == 0:
                    break
            # Box-aware linearization from iteration `_clip_only_iterations` on (see the
            # class docstring); fooled samples (`ok`) stay where they are.
            box = bounds if step >= self._clip_only_iterations else free
            r = self._step(xa, logits, w, cls, sign, ok, *box)
            xa = clip(x0a + scale * (r_tot + r), bounds)
            r_tot = (xa - x0a) / scale
            if step == self._clip_only_iterations:  # the first box-aware step usually crosses
                score_first = True
        return self._refine(oracle, task, best)

    def _refine(self, oracle: Oracle, task: Task, best: BestByDistance) -> Found:
        """Bisect the scale of each perturbation: the smallest still-adversarial point on the ray.

        Points on the segment between ``x0`` and ``x_adv`` stay in the box (it is convex),
        so no clipping is needed. Samples not adversarial at ``x_adv`` stay as they are."""
        x_adv, logits = best.x, best.logits
        x0 = task.x0
        delta = x_adv - x0
        b = x0.shape[0]
        lo = torch.zeros(b, dtype=torch.float32, device=x0.device)
        hi = torch.ones_like(lo)
        for _ in range(self.refine_steps):
            mid = (lo + hi) / 2
            x = x0 + delta * batch_view(mid, x0.ndim).to(delta.dtype)
            out = oracle.logits(x)
            ok = task.success(out)
            x_adv, logits = keep_best(ok, (x_adv, logits), (x, out))
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)
        return Found(x_adv, logits)

    def _step(
        self,
        x: Tensor,
        logits: Tensor,
        w: Tensor,
        classes: Tensor,
        sign: float,
        done: Tensor,
        lo: float,
        hi: float,
    ) -> Tensor:
        """The linearized step of every sample (zero where ``done``); ``w`` ``(K - 1, B, ...)``
        are the gradients of the logit differences ``f_k - f_anchor``."""
        f = logits.gather(1, classes)
        gap = sign * (f[:, 1:] - f[:, :1]).T  # (K-1, B); < 0 while the boundary is not crossed
        if sign < 0:
            w = -w
        if lo > -math.inf or hi < math.inf:  # box-aware: drop the coordinates pushed out
            xb = x.unsqueeze(0)
            w = w.masked_fill(((xb <= lo) & (w < 0)) | ((xb >= hi) & (w > 0)), 0.0)
        flat = w.flatten(0, 1)
        if isinstance(self.norm, (L2, Linf)):  # <w, direction(w)> is the dual norm
            slope = self.norm.dual_measure(flat)
        else:
            work = work_dtype(flat.dtype)
            slope = (flat * self.norm.direction(flat)).flatten(1).sum(1, dtype=work)
        slope = slope.reshape(gap.shape)
        violated = gap < 0
        gap = gap.abs().to(slope.dtype)
        dist = torch.where(slope > 0, gap / slope.clamp_min(1e-12), math.inf)
        # Untargeted: cross the nearest boundary; targeted: the farthest one still violated.
        pick = dist.argmin(0) if sign > 0 else torch.where(violated, dist, -1.0).argmax(0)
        at = pick.unsqueeze(0)
        s = slope.gather(0, at)[0]
        length = torch.where(s > 0, (gap.gather(0, at)[0] + 1e-4) / s.clamp_min(1e-12), 0.0)
        length = torch.where(done, 0.0, length)
        chosen = w.gather(0, batch_view(pick, w.ndim - 1)[None].expand(1, *w.shape[1:]))[0]
        d = self.norm.direction(chosen)
        return d * batch_view(length, d.ndim).to(d.dtype)
