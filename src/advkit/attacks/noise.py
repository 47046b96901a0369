"""Additive random-noise baselines, for comparison with gradient attacks at the same budget."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advkit import checks
from advkit.attacks.base import Attack, Found
from advkit.attacks.oracle import Oracle
from advkit.attacks.task import Task
from advkit.attacks.tracking import BestByObjective
from advkit.functional import (
    RandomSource,
    Scalar,
    batch_view,
    exact_dtype,
    rand,
    randn,
    work_dtype,
)
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
        """Noise rescaled to norm exactly ``eps`` per sample, in the exact dtype of ``x``."""
        work = exact_dtype(x.dtype, x.device)
        draw = work_dtype(x.dtype)
        raw = self._noise(x.to(draw), generator).to(work)
        n = self.norm.measure(raw).clamp_min(torch.finfo(work).tiny)
        e = eps.to(work) if isinstance(eps, Tensor) else torch.full_like(n, float(eps))
        return raw * batch_view(e / n, raw.ndim)

    def run(self, oracle: Oracle, task: Task) -> Found:
        x0 = task.x0
        clean = oracle.clean_logits(task)
        best = BestByObjective()
        best.consider(x0, clean, task.loss(clean), task.success(clean))
        for _ in range(self.restarts):
            noise = self._on_sphere(x0, task.budget(), task.generator)
            x = task.region(x0.to(noise.dtype) + noise)
            logits = oracle.logits(x)
            best.consider(x, logits, task.loss(logits), task.success(logits))
        return Found(best.x, best.logits)


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
