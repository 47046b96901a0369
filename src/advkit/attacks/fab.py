"""FAB: the fast adaptive boundary attack, a minimal-norm attack for Linf, L2 and L1."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from advkit import checks
from advkit import functional as F
from advkit.attacks.base import Found, MinNormAttack
from advkit.attacks.oracle import CompileSpec, Oracle, PrecisionSpec
from advkit.attacks.task import Task
from advkit.attacks.tracking import ActiveSet, BestByDistance
from advkit.norms import NormSpec

__all__ = ["FAB"]

Boundary = Callable[[Oracle, Task, Tensor], tuple[Tensor, Tensor, Tensor]]
"""``(oracle, task, x) -> (value, normal, logits)``: the linearized decision boundary at
``x``, ``{z : value + <normal, z - x> = 0}``, and the logits of the pass that computed it."""

_RESTART_RADIUS = {"linf": 0.3, "l2": 1.0, "l1": 5.0}
"""The reference implementation's default radius for random restarts, per norm, on inputs in
``[0, 1]`` (scaled here by the width of the box)."""


class FAB(MinNormAttack):
    r"""The fast adaptive boundary attack (Croce & Hein, "Minimally distorted adversarial
    examples with a fast adaptive boundary attack", ICML 2020), for Linf, L2 and L1.

    A minimal-norm attack: it looks for the smallest perturbation that changes the
    decision, within the input box $C = [l, u]^d$. At each iterate $x^{(i)}$
    the classifier is linearized: for every class $k \ne y$ the logit gap
    $g_k = f_k - f_y$ and its gradient $w_k$ give the hyperplane
    $\pi_k = \{z : g_k(x^{(i)}) + \langle w_k, z - x^{(i)}\rangle = 0\}$ at the distance
    $|g_k| / \|w_k\|_*$ ($\|\cdot\|_*$ the dual norm), and the attack takes the
    closest, $\pi_s$. With $P$ the projection onto $\pi_s \cap C$ (the step of
    smallest norm onto the hyperplane within the box, `advkit.norms.Norm.hyperplane_project`;
    where the box does not reach it, the box point nearest to it),
    $\delta = P(x^{(i)}) - x^{(i)}$ and $\delta_0 = P(x_0) - x_0$, the step is
    biased towards the clean input $x_0$:

    $$
    x^{(i+1)} = \operatorname{clip}_C\big((1 - \alpha)(x^{(i)} + \eta\,\delta)
        + \alpha\,(x_0 + \eta\,\delta_0)\big), \qquad
    \alpha = \min\Big(\frac{\|\delta\|}{\|\delta\| + \|\delta_0\|},\ \alpha_{max}\Big),
    $$

    with the overshoot $\eta$. Once $x^{(i+1)}$ is adversarial it is kept if
    it is the closest so far, and the attack steps back towards the clean
    input, $x^{(i+1)} \leftarrow x_0 + \beta (x^{(i+1)} - x_0)$, to look for a
    closer one. The first run starts at $x_0$; each further restart from a
    random point at distance $\min(\rho, r)/2$ of $x_0$ (uniform on that sphere
    of the norm, clipped to the box), with $\rho$ the smallest perturbation
    found so far and $r$ the budget ``eps`` when there is one, else the
    reference implementation's default (0.3, 1 and 5 for Linf, L2 and L1,
    times the width of the box): the radius rule of the paper's code. Samples
    the model already misclassifies are not attacked. On an affine model the
    first step lands on the closest boundary (overshot by $\eta$) and the
    second within 1% of it, like DeepFool.

    Targeted (``targets=``, or driven by `advkit.MultiTargeted`, whose
    ``MultiTargeted(FAB(...))`` is AutoAttack's FAB-T): the attack works on one
    boundary, the target's logit against its strongest rival at the iterate,
    $f_t - \max_{k \ne t} f_k$ (the label while the sample is classified
    correctly: the reference implementation's $f_t - f_y$). Success follows
    the call's rule: reaching the target for a targeted call, any
    misclassification under `advkit.MultiTargeted`.

    Budgeted (``eps=`` in the constructor or the call): the closest adversarial
    found is projected onto the eps-ball and re-scored (see
    `advkit.attacks.MinNormAttack`); a restart runs only on the samples not yet
    broken within ``eps``, and every few steps (a host sync) the samples
    already broken within ``eps`` leave the batch.

    Cost per step, on the samples still running: untargeted, one forward pass and
    ``C - 1`` backward passes for the gradients of the logit gaps
    (`advkit.attacks.Oracle.class_gradients`; the reference implementation
    makes ``C``), then one forward pass to score the new iterate; targeted, one
    forward and one backward pass, then the scoring forward. The logits of the
    gradient pass also score the point stepped back to (full precision only),
    which the reference implementation never checks: a closer adversarial
    found there for free is kept. No host synchronisation inside the step loop
    (once per restart, and in budgeted mode every few steps).

    Args:
        norm: ``"linf"`` (default), ``"l2"`` or ``"l1"``.
        eps: optional budget, which turns the attack into a fixed-eps one.
        steps: iterations per restart (the paper's 100).
        restarts: runs per sample; the first from the clean input, the others from
            random points (see above).
        alpha_max: $\alpha_{max} \in [0, 1]$, the largest weight of the step from
            the clean input (0.1 in the paper).
        eta: $\eta \ge 1$, the overshoot of the projections (1.05 in the paper).
        beta: $\beta \in (0, 1]$, the backward step towards the clean input after
            a success (0.9 in the paper; 1: none).
        precision: model precision in the gradient passes (``"bf16"``,
            ``"fp16"``; see `advkit.Attack`).
        compile: run the model compiled (see `advkit.Attack`).
        eot: gradients averaged over this many passes, for randomized models
            (see `advkit.Attack`).

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Linear(4, 3)
        >>> x = torch.rand(2, 4)
        >>> res = FAB(norm="l2", steps=10)(net, x, net(x).argmax(1))
        >>> bool(res.success.all()), bool((res.distance > 0).all())
        (True, True)
    """

    _compact_every: ClassVar[int] = 10
    """Budgeted mode: steps between two looks at which samples are broken within eps."""

    def __init__(
        self,
        norm: NormSpec = "linf",
        eps: float | None = None,
        steps: int = 100,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        precision: PrecisionSpec = None,
        compile: CompileSpec = False,
        eot: int = 1,
    ) -> None:
        super().__init__(norm=norm, eps=eps, precision=precision, compile=compile, eot=eot)
        self.steps = checks.check_positive_int(steps, "steps")
        self.restarts = checks.check_positive_int(restarts, "restarts")
        self.alpha_max = _check_real(alpha_max, "alpha_max", 0.0, 1.0, "a fraction in [0, 1]")
        self.eta = _check_real(eta, "eta", 1.0, math.inf, "a finite float >= 1")
        self.beta = _check_real(beta, "beta", 0.0, 1.0, "a fraction in (0, 1]", open_low=True)

    def _settings(self) -> dict[str, Any]:
        return {
            "norm": str(self.norm),
            "eps": self.eps,
            "steps": self.steps,
            "restarts": self.restarts,
            "alpha_max": self.alpha_max,
            "eta": self.eta,
            "beta": self.beta,
        }

    # ------------------------------------------------------------------ the search

    def run(self, oracle: Oracle, task: Task) -> Found:
        x0 = task.x0
        clean = oracle.clean_logits(task)
        best = BestByDistance(x0, clean, task.success(clean))
        budget = None if task.eps is None else _per_sample(task.eps, x0)
        boundary = self._nearest_boundary if task.targets is None else self._target_boundary
        for restart in range(self.restarts):
            done = best.distance <= 0
            if budget is not None:
                done = done | (best.distance <= budget)
            active = ActiveSet(task.batch_size, padded=False, device=x0.device)
            if not active.update(done):  # a host sync, once per restart
                break
            start = x0 if restart == 0 else self._random_start(task, best)
            self._descend(oracle, task, boundary, start, best, active, budget)
        return Found(best.x, best.logits)

    def _descend(
        self,
        oracle: Oracle,
        task: Task,
        boundary: Boundary,
        start: Tensor,
        best: BestByDistance,
        active: ActiveSet,
        budget: Tensor | None,
    ) -> None:
        """One run of ``steps`` iterations from ``start`` on the samples of ``active``."""
        norm, bounds = task.norm, task.bounds
        sub = task if active.rows is None else task.subset(active.rows)
        (x,) = active.take(start)
        x0 = sub.x0
        work = F.work_dtype(x0.dtype)
        lo, hi = F.inner_bounds((float(bounds[0]), float(bounds[1])), x0.dtype)
        # The logits of a gradient pass are a verdict only in full precision.
        free_check = self.precision is None
        for step in range(self.steps):
            if budget is not None and step > 0 and step % self._compact_every == 0:
                # A look at the host every few steps: drop the samples broken within eps.
                within = best.distance.index_select(0, active.indices) <= budget.index_select(
                    0, active.indices
                )
                keep = active.retain(~within)
                if active.running == 0:
                    return
                if keep is not None:
                    sub = sub.subset(keep)
                    x, x0 = x.index_select(0, keep), sub.x0
            rows = active.rows
            value, normal, logits = boundary(oracle, sub, x)
            if free_check and step > 0:  # the point stepped back to may be adversarial too
                ok = sub.success(logits)
                best.consider(x, logits, ok, norm.measure(x - x0), rows)
            x_new = self._step(x, x0, value, normal, task, work).clamp(lo, hi)
            logits = oracle.logits(x_new)
            ok = sub.success(logits)
            best.consider(x_new, logits, ok, norm.measure(x_new - x0), rows)
            back = (x0.to(work) + self.beta * (x_new.to(work) - x0.to(work))).to(x0.dtype)
            x = torch.where(F.batch_view(ok, x.ndim), back.clamp(lo, hi), x_new)

    def _step(
        self, x: Tensor, x0: Tensor, value: Tensor, normal: Tensor, task: Task, work: torch.dtype
    ) -> Tensor:
        """The biased, overshot step towards the projections of ``x`` and ``x0`` onto the
        linearized boundary ``value + <normal, z - x> = 0`` within the box; in ``x0``'s dtype,
        before clipping."""
        norm = task.norm
        n = x.shape[0]
        normal = normal.to(work)
        offset = (normal * x.to(work)).flatten(1).sum(dim=1) - value.to(work)
        steps = norm.hyperplane_project(
            torch.cat([x, x0]), torch.cat([normal, normal]), offset.repeat(2), task.bounds
        ).to(work)
        d, d0 = steps[:n], steps[n:]
        a = norm.measure(d).clamp_min(1e-8)
        a0 = norm.measure(d0).clamp_min(1e-8)
        alpha = F.batch_view((a / (a + a0)).clamp(0.0, self.alpha_max), x.ndim).to(work)
        eta = self.eta
        out = (1 - alpha) * (x.to(work) + eta * d) + alpha * (x0.to(work) + eta * d0)
        return out.to(x0.dtype)

    # ------------------------------------------------------------------ the boundaries

    @staticmethod
    def _nearest_boundary(oracle: Oracle, task: Task, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The closest linearized boundary between the label and another class: one forward
        pass and ``C - 1`` backward passes."""
        labels = task.labels
        b = labels.shape[0]
        assert task.clean_logits is not None  # run() computed them
        c = task.clean_logits.shape[1]
        classes = (labels.unsqueeze(1) + torch.arange(c, device=labels.device)) % c  # label first
        logits, grads = oracle.class_gradients(x, classes, relative=True)  # (C - 1, B, ...)
        work = F.work_dtype(grads.dtype)
        f = logits.gather(1, classes).to(work)
        gaps = f[:, 1:] - f[:, :1]  # (B, C - 1), < 0 while the label wins
        slopes = task.norm.dual_measure(grads.flatten(0, 1)).reshape(c - 1, b).T.to(work)
        pick = (gaps.abs() / (slopes + 1e-12)).argmin(dim=1)
        value = gaps.gather(1, pick.unsqueeze(1)).squeeze(1)
        normal = grads[pick, torch.arange(b, device=pick.device)]
        return value, normal, logits

    @staticmethod
    def _target_boundary(oracle: Oracle, task: Task, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The linearized boundary between the target and its strongest rival: one forward
        and one backward pass."""
        targets = task.targets
        assert targets is not None
        at = targets.unsqueeze(1)

        def gap(logits: Tensor) -> Tensor:
            rival = logits.scatter(1, at, -math.inf).amax(dim=1)
            out: Tensor = logits.gather(1, at).squeeze(1) - rival
            return out

        value, normal, logits = oracle.value_and_grad(x, gap)
        return value, normal, logits

    # ------------------------------------------------------------------ restarts

    def _random_start(self, task: Task, best: BestByDistance) -> Tensor:
        """Random points at distance ``min(best distance, r) / 2`` of the clean inputs (see the
        class docstring), clipped to the box; for the whole batch."""
        x0, norm = task.x0, task.norm
        work = F.work_dtype(x0.dtype)
        lo, hi = float(task.bounds[0]), float(task.bounds[1])
        if task.eps is not None:
            cap = _per_sample(task.eps, x0).to(work)
        else:
            width = hi - lo if math.isfinite(hi - lo) else 1.0
            r = _RESTART_RADIUS.get(norm.name, 1.0) * width
            cap = torch.full((x0.shape[0],), r, dtype=work, device=x0.device)
        radius = torch.minimum(best.distance.to(work), cap) / 2
        u = norm.sample(x0, 1.0, generator=task.generator).to(work)
        scale = radius / norm.measure(u).to(work).clamp_min(torch.finfo(work).tiny)
        start = x0.to(work) + u * F.batch_view(scale, x0.ndim)
        inner = F.inner_bounds((lo, hi), x0.dtype)
        return start.to(x0.dtype).clamp(*inner)


def _per_sample(eps: F.Scalar, x0: Tensor) -> Tensor:
    """The budget as a ``(B,)`` float64 tensor (float32 on MPS), like the tracked distances."""
    exact = torch.float32 if x0.device.type == "mps" else torch.float64
    if isinstance(eps, Tensor):
        return eps.to(device=x0.device, dtype=exact).expand(x0.shape[0])
    return torch.full((x0.shape[0],), float(eps), dtype=exact, device=x0.device)


def _check_real(
    value: float, name: str, low: float, high: float, what: str, *, open_low: bool = False
) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < low
        or (open_low and value == low)
        or value > high
    ):
        raise checks.ConfigError(f"{name} must be {what}, got {value!r}.")
    return float(value)
