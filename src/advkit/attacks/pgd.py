"""Iterative gradient attacks: PGD and BIM, for any norm."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advkit import checks
from advkit._fused import pgd_step
from advkit.attacks.base import (
    Attack,
    CleanPass,
    CompileSpec,
    Context,
    PrecisionSpec,
    improves,
    keep_best,
)
from advkit.functional import Scalar, clip
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
            succeed are dropped from the batch the model sees (batch sizes
            ``ceil(B / 2**k)``, so compiled and cuDNN caches stay warm); a
            sample that succeeds skips later restarts. Robust accuracy is the
            same as without it; it saves the passes spent on broken samples
            at the price of one host sync every few steps.
        precision: model precision in gradient steps (``"bf16"``, ``"fp16"``;
            see `advkit.Attack`).
        compile: run the model compiled (see `advkit.Attack`).

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
    ) -> None:
        super().__init__(
            norm=norm, eps=eps, objective=objective, precision=precision, compile=compile
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

    def _clean_pass(self) -> CleanPass:
        # From a random start the clean point is not a candidate: no pass on it at all.
        return "none" if self.random_init else "graph"

    def run(self, ctx: Context) -> tuple[Tensor, Tensor | None]:
        x0, norm, eps, bounds = ctx.x0, ctx.norm, ctx.budget(), ctx.bounds
        alpha = self._step_size(eps)
        best = _Best(ctx)
        for restart in range(self.restarts):
            rows: Tensor | None = None  # the samples being attacked; None: all of them
            if self.early_stop and restart > 0:
                rows = _still_running(best.ok)
                if rows is not None and rows.numel() == 0:
                    break
            if self.random_init:
                x_all = clip(x0 + norm.sample(x0, eps, generator=ctx.generator), bounds)
            else:
                x_all = x0
            x, x0r, eps_r, alpha_r = _take((x_all, x0, eps, alpha), rows)
            for step in range(self.steps):
                if self.early_stop and step > 0 and step % self._compact_every == 0:
                    # A look at the host (one sync every few steps): drop the samples that
                    # already succeed from the batch, in a few fixed batch shapes.
                    x_all = _put(x_all, rows, x)
                    rows = _still_running(best.ok)
                    if rows is not None and rows.numel() == 0:
                        break
                    x, x0r, eps_r, alpha_r = _take((x_all, x0, eps, alpha), rows)
                loss, grad, logits = ctx.value_and_grad(x, rows)
                ok = best.consider(x, logits, loss, rows)
                x_next = pgd_step(
                    x, x0r, grad, norm=norm, eps=eps_r, step_size=alpha_r, bounds=bounds
                )
                # early stop: a sample that succeeds here stays here (its best point)
                x = keep_best(ok, (x_next,), (x,))[0] if self.early_stop else x_next
            else:
                logits = ctx.logits(x)
                best.consider(x, logits, ctx.loss(logits, rows), rows)
        return best.x, best.logits


class _Best:
    """Per sample, the best point seen so far (a success first, then the highest objective).

    Empty until the first candidate, which is the whole batch: the clean point when the
    attack starts there, else the first iterate.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.x = self.logits = self.loss = self.ok = torch.empty(0)
        self.empty = True

    def consider(self, x: Tensor, logits: Tensor, loss: Tensor, rows: Tensor | None) -> Tensor:
        """Take the candidates that improve on the best; returns their success, ``(len(x),)``."""
        ok = self.ctx.is_success(logits, rows)
        if self.empty:
            if rows is not None:
                raise RuntimeError("the first candidate must cover the whole batch")
            self.x, self.logits, self.loss, self.ok, self.empty = x, logits, loss, ok, False
            return ok
        cur = _take((self.x, self.logits, self.loss, self.ok), rows)
        better = improves(ok, loss, cur[3], cur[2])
        new = keep_best(better, cur, (x, logits, loss, ok))
        self.x, self.logits, self.loss, self.ok = (
            _put(full, rows, part)
            for full, part in zip((self.x, self.logits, self.loss, self.ok), new, strict=True)
        )
        return ok


def _still_running(ok: Tensor) -> Tensor | None:
    """Indices of the samples not yet successful, padded to one of a few batch sizes.

    ``None`` when the full batch size is needed anyway. Sizes are ``ceil(B / 2**k)``,
    so compiled code and cuDNN see at most ``log2(B) + 1`` shapes; padding repeats
    the first running sample, whose copies compute and write identical values.
    """
    b = ok.shape[0]
    running = (~ok).nonzero().squeeze(1)  # the deliberate host sync
    n = running.numel()
    size = b
    while n > 0 and -(-size // 2) >= n and size > 1:
        size = -(-size // 2)
    if size == b or n == 0:
        return running if n == 0 else None
    return torch.cat([running, running[:1].expand(size - n)])


def _take(ts: tuple[Any, ...], rows: Tensor | None) -> tuple[Any, ...]:
    """The rows of each per-sample tensor (floats pass through)."""
    if rows is None:
        return ts
    return tuple(t.index_select(0, rows) if isinstance(t, Tensor) else t for t in ts)


def _put(full: Tensor, rows: Tensor | None, part: Tensor) -> Tensor:
    """``full`` with ``rows`` replaced by ``part`` (``part`` itself when ``rows`` is None)."""
    return part if rows is None else full.index_copy(0, rows, part)


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
        )

    def _settings(self) -> dict[str, Any]:
        s = super()._settings()
        del s["random_init"], s["restarts"]
        return s
