"""Objectives (higher is better for the attacker) and target maps."""

from __future__ import annotations

import pytest
import torch

import advkit
from advkit import objectives, targets


@pytest.fixture
def logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 6, generator=g, dtype=torch.float64) * 3


def test_margin_sign_is_success(logits: torch.Tensor) -> None:
    y = torch.randint(0, 6, (64,), generator=torch.Generator().manual_seed(1))
    t = (y + 2) % 6
    pred = logits.argmax(1)
    assert torch.equal(objectives.margin(logits, y, None) > 0, pred != y)
    assert torch.equal(objectives.margin(logits, y, t) > 0, pred == t)


@pytest.mark.parametrize("objective", [objectives.margin, objectives.dlr])
def test_invariant_to_log_softmax_and_negative_logits(
    logits: torch.Tensor, objective: object
) -> None:
    y = torch.randint(0, 6, (64,), generator=torch.Generator().manual_seed(1))
    for t in (None, (y + 1) % 6):
        base = objective(logits, y, t)  # type: ignore[operator]
        torch.testing.assert_close(objective(logits.log_softmax(1), y, t), base)  # type: ignore[operator]
        torch.testing.assert_close(objective(logits - 100.0, y, t), base)  # type: ignore[operator]


def test_dlr_known_values() -> None:
    z = torch.tensor([[4.0, 3.0, 1.0, 0.0]])
    # untargeted, y = 0: -(4 - 3) / (4 - 1)
    torch.testing.assert_close(objectives.dlr(z, torch.tensor([0])), torch.tensor([-1 / 3]))
    # targeted, y = 0, t = 2: -(4 - 1) / (4 - (1 + 0) / 2)
    torch.testing.assert_close(
        objectives.dlr(z, torch.tensor([0]), torch.tensor([2])), torch.tensor([-3 / 3.5])
    )
    # rescaling the logits does not change DLR
    torch.testing.assert_close(objectives.dlr(5 * z, torch.tensor([0])), torch.tensor([-1 / 3]))


def test_cross_entropy_targeted_is_negated(logits: torch.Tensor) -> None:
    y = torch.zeros(64, dtype=torch.long)
    t = torch.ones(64, dtype=torch.long)
    ce_t = torch.nn.functional.cross_entropy(logits, t, reduction="none")
    torch.testing.assert_close(objectives.cross_entropy(logits, y, t), -ce_t)


def test_target_maps(logits: torch.Tensor) -> None:
    y = torch.randint(0, 6, (64,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(targets.shift(1)(logits, y, None), (y + 1) % 6)
    assert torch.equal(targets.shift(-1)(logits, y, None), (y - 1) % 6)
    r1 = targets.random()(logits, y, torch.Generator().manual_seed(5))
    r2 = targets.random()(logits, y, torch.Generator().manual_seed(5))
    assert torch.equal(r1, r2) and bool((r1 != y).all())
    assert bool((r1 >= 0).all()) and bool((r1 < 6).all())
    assert len(set(r1.tolist())) >= 4  # spread over the wrong classes
    ll = targets.least_likely()(logits, y, None)
    masked = logits.scatter(1, y.unsqueeze(1), float("inf"))
    assert torch.equal(ll, masked.argmin(1)) and bool((ll != y).all())


def test_least_likely_targets_reach_the_attack() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4)
    x, y = torch.rand(10, 5), torch.randint(0, 4, (10,))
    res = advkit.PGD(eps=0.2, steps=3)(model, x, y, targets=targets.least_likely())
    with torch.no_grad():
        expected = model(x).scatter(1, y.unsqueeze(1), float("inf")).argmin(1)
    assert torch.equal(res.targets, expected)  # type: ignore[arg-type]
