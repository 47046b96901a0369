"""Attacks against models whose worst case is known in closed form.

These tests fail for a weak attack, not only for a crash.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import advkit
from advkit import objectives


def linear_model(w: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    m = nn.Linear(w.shape[1], w.shape[0]).double()
    with torch.no_grad():
        m.weight.copy_(w)
        m.bias.copy_(b)
    return m


@pytest.mark.parametrize(("norm", "dual_order"), [("linf", 1.0), ("l2", 2.0)])
def test_fgsm_is_exact_worst_case_for_binary_linear(norm: str, dual_order: float) -> None:
    """For logits (z0, z1) affine in x, the worst case of z_other - z_y over the eps-ball
    (box not binding) is the clean value plus eps * ||w_other - w_y||_dual, and FGSM attains it."""
    g = torch.Generator().manual_seed(0)
    d, n = 20, 200
    w = torch.randn(2, d, generator=g, dtype=torch.float64)
    b = torch.randn(2, generator=g, dtype=torch.float64) * 0.1
    model = linear_model(w, b)
    x = 0.4 + 0.2 * torch.rand(n, d, generator=g, dtype=torch.float64)  # far from the box edges
    y = torch.randint(0, 2, (n,), generator=g)
    eps = 0.02 if norm == "linf" else 0.1

    res = advkit.FGSM(norm=norm, eps=eps)(model, x, y)

    sign = torch.where(y == 0, 1.0, -1.0).double()  # z_other - z_y = sign * (z1 - z0)
    a = w[1] - w[0]
    clean_gap = sign * ((x @ a) + (b[1] - b[0]))
    worst_gap = clean_gap + eps * torch.linalg.vector_norm(a, ord=dual_order)
    adv_gap = sign * (res.logits[:, 1] - res.logits[:, 0])
    torch.testing.assert_close(adv_gap, worst_gap, rtol=1e-9, atol=1e-9)
    assert torch.equal(res.success, worst_gap > 0)
    assert 0.05 < float(res.success.double().mean()) < 0.95  # the test is informative


def exact_linf_robust(
    w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float
) -> torch.Tensor:
    """Per sample: is every class-pair margin positive over the whole Linf ball cut by [0, 1]?

    A linear function's minimum over a box is attained coordinate-wise at a corner."""
    lower = torch.clamp(-x, min=-eps)  # most negative move allowed per coordinate
    upper = torch.clamp(1 - x, max=eps)
    robust = torch.ones(x.shape[0], dtype=torch.bool)
    for k in range(w.shape[0]):
        a = w[y] - w[k]  # (n, d): margin z_y - z_k = a . x + (b_y - b_k)
        worst = ((a * x).sum(1) + b[y] - b[k]) + torch.where(a > 0, a * lower, a * upper).sum(1)
        robust &= (worst > 0) | (y == k)
    return robust


@pytest.mark.parametrize(("d", "eps"), [(10, 0.15), (20, 0.15), (10, 0.2)])
def test_pgd_linf_reaches_exact_worst_case_of_multiclass_linear(d: int, eps: float) -> None:
    g = torch.Generator().manual_seed(1)
    c, n = 4, 400
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64) * 0.2
    model = linear_model(w, b)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)  # the box binds for many coordinates
    y = (x @ w.T + b).argmax(1)
    flip = torch.rand(n, generator=g) < 0.1
    y = torch.where(flip, (y + 1) % c, y)  # some clean errors too

    exact = exact_linf_robust(w, b, x, y, eps).double().mean().item()
    assert 0.2 < exact < 0.8  # informative
    pgd = advkit.PGD(norm="linf", eps=eps, steps=30, restarts=2, objective=objectives.margin)
    attacked = pgd(model, x, y, generator=torch.Generator().manual_seed(0)).robust_accuracy()
    assert attacked >= exact, "an attack can never beat the exact worst case"
    assert attacked <= exact + 0.01, f"PGD too weak: {attacked:.4f} vs exact {exact:.4f}"
    # Cross-entropy PGD, the default, is nearly as strong here.
    res_ce = advkit.PGD(norm="linf", eps=eps, steps=30, restarts=2)(
        model, x, y, generator=torch.Generator().manual_seed(0)
    )
    assert exact <= res_ce.robust_accuracy() <= exact + 0.025


def test_multiclass_linear_oracle_tells_weak_attacks_apart() -> None:
    """The oracle above is sharp: a single FGSM step stays visibly above the exact worst case."""
    g = torch.Generator().manual_seed(1)
    d, c, n, eps = 10, 4, 400, 0.15
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64) * 0.2
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    y = (x @ w.T + b).argmax(1)
    y = torch.where(torch.rand(n, generator=g) < 0.1, (y + 1) % c, y)
    exact = exact_linf_robust(w, b, x, y, eps).double().mean().item()
    fgsm = advkit.FGSM(eps=eps)(linear_model(w, b), x, y).robust_accuracy()
    assert fgsm > exact + 0.01


def test_targeted_pgd_l2_reaches_affine_target_when_possible() -> None:
    """For an affine model without box constraints the minimal L2 perturbation that makes
    class t beat class j is a closed form; with eps above max_j of it, PGD must succeed."""
    g = torch.Generator().manual_seed(2)
    d, c, n = 16, 3, 60
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    b = torch.zeros(c, dtype=torch.float64)
    model = advkit.wrap(linear_model(w, b), bounds=(-100.0, 100.0))
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (x @ w.T).argmax(1)
    t = (y + 1) % c
    # Distance to the half-space {z_t >= z_j} for each j, and a radius that reaches all of them.
    need = torch.zeros(n, dtype=torch.float64)
    for j in range(c):
        a = w[t] - w[j]
        gap = -((x * a).sum(1))
        dist = gap.clamp_min(0) / torch.linalg.vector_norm(a, dim=1).clamp_min(1e-12)
        need = torch.maximum(need, torch.where(t == j, torch.zeros_like(dist), dist))
    eps = torch.clamp(need * 1.5, min=0.1)  # the intersection needs a little more
    res = advkit.PGD(norm="l2", steps=100, step_size=0.05)(
        model, x, y, targets=t, eps=eps, generator=torch.Generator().manual_seed(0)
    )
    assert float(res.success.double().mean()) >= 0.95
    assert bool((res.distance <= eps * (1 + 1e-9)).all())
