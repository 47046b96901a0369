"""Additive random-noise baselines, for comparison with gradient attacks at the same budget."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advkit import checks
from advkit.attacks.base import Attack, Context, improves, keep_best
from advkit.functional import RandomSource, Scalar, batch_view, clip, rand, randn
from advkit.norms import NormSpec
from advkit.objectives import Objective, cross_entropy

__all__ = ["GaussianNoise", "UniformNoise"]


class _AdditiveNoise(Attack):
    """Draw i.i.d. noise, rescale each sample to norm exactly eps, clip to the box."""

    def __init__(
        self,
        norm: NormSpec = "linf",
        eps: float | None = None,
        restarts: int = 1,
        objective: Objective = cross_entropy,
    ) -> None:
        super().__init__(norm=norm, eps=eps, objective=objective)
        self.restarts = checks.check_positive_int(restarts, "restarts")

    def _settings(self) -> dict[str, Any]:
        return {**super()._settings(), "restarts": self.restarts}

    def _noise(self, x: Tensor, generator: RandomSource) -> Tensor:
        raise NotImplementedError

    def _on_sphere(self, x: Tensor, eps: Scalar, generator: RandomSource) -> Tensor:
        wd = torch.float64 if x.dtype == torch.float64 else torch.float32
        raw = self._noise(x.to(wd), generator)
        n = self.norm.measure(raw).clamp_min(torch.finfo(wd).tiny)
        e = eps.to(wd) if isinstance(eps, Tensor) else torch.full_like(n, float(eps))
        out = torch.empty_like(x)
        out.copy_(raw * batch_view(e / n, raw.ndim))
        return out

    def run(self, ctx: Context) -> tuple[Tensor, Tensor | None]:
        best_x, best_logits = ctx.x0, ctx.clean_logits
        best_loss, best_ok = ctx.loss(best_logits), ctx.is_success(best_logits)
        for _ in range(self.restarts):
            x = clip(ctx.x0 + self._on_sphere(ctx.x0, ctx.budget(), ctx.generator), ctx.bounds)
            logits = ctx.logits(x)
            loss, ok = ctx.loss(logits), ctx.is_success(logits)
            better = improves(ok, loss, best_ok, best_loss)
            best_x, best_logits, best_loss, best_ok = keep_best(
                better, (best_x, best_logits, best_loss, best_ok), (x, logits, loss, ok)
            )
        return best_x, best_logits


class UniformNoise(_AdditiveNoise):
    """Uniform noise ``U(-1, 1)`` per coordinate, rescaled to norm exactly ``eps``, then clipped.

    Args:
        norm: the norm in which the noise is scaled (``"linf"``, ``"l2"``, ``"l1"``).
        eps: norm of the noise, in input space.
        restarts: independent draws; per sample the best one is kept
            (a successful one first, then the highest objective).
        objective: used only to rank draws that all fail.
    """

    def _noise(self, x: Tensor, generator: RandomSource) -> Tensor:
        return rand(tuple(x.shape), generator, device=x.device, dtype=x.dtype) * 2 - 1


class GaussianNoise(_AdditiveNoise):
    """Gaussian noise ``N(0, 1)`` per coordinate, rescaled to norm exactly ``eps``, then clipped.

    Args:
        norm: the norm in which the noise is scaled (``"linf"``, ``"l2"``, ``"l1"``).
        eps: norm of the noise, in input space.
        restarts: independent draws; per sample the best one is kept.
        objective: used only to rank draws that all fail.
    """

    def _noise(self, x: Tensor, generator: RandomSource) -> Tensor:
        return randn(tuple(x.shape), generator, device=x.device, dtype=x.dtype)
