"""FAB: exact on affine models (untargeted, targeted, budgeted, FAB-T through MultiTargeted),
pass counts, restarts, and a trained CNN."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import advkit
from advkit.attacks import Task
from advkit.attacks.tracking import BestByDistance
from advkit.objectives import cross_entropy

from ._digits import digits_data, digits_model

DUAL = {"l2": 2.0, "linf": 1.0, "l1": math.inf}
NORMS = ["l2", "linf", "l1"]
# FAB's first step lands eta = 1.05 past the closest boundary, its second (after the backward
# step) at 1.05 - 0.05 * 0.945 * (1 - alpha) with alpha = 0.055 / 1.055: 0.52% past it.
SECOND_STEP = 1.05 - 0.05 * 0.945 * (1 - 0.055 / 1.055)


def affine_problem(
    seed: int = 0, d: int = 20, c: int = 5, n: int = 60, spread: float = 0.2
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """f(x) = W x + b in float64; inputs in [0.5 - spread / 2, 0.5 + spread / 2]."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64) * 0.1
    model = nn.Linear(d, c).double()
    with torch.no_grad():
        model.weight.copy_(w)
        model.bias.copy_(b)
    x = 0.5 - spread / 2 + spread * torch.rand(n, d, generator=g, dtype=torch.float64)
    z = x @ w.T + b
    return model, w, x, z.argmax(1), z


def pair_distance(
    w: torch.Tensor, z: torch.Tensor, y: torch.Tensor, k: torch.Tensor, dual: float
) -> torch.Tensor:
    """Distance to the hyperplane f_k = f_y, (z_y - z_k) / ||w_y - w_k||_dual, per sample."""
    gap = (z.gather(1, y[:, None]) - z.gather(1, k[:, None])).squeeze(1)
    return gap / torch.linalg.vector_norm(w[y] - w[k], ord=dual, dim=1)


def exact_min_distance(
    w: torch.Tensor, z: torch.Tensor, y: torch.Tensor, dual: float
) -> torch.Tensor:
    """The smallest perturbation that changes the decision of an affine model (no box)."""
    c = w.shape[0]
    dists = [
        torch.where(y == k, math.inf, pair_distance(w, z, y, torch.full_like(y, k), dual))
        for k in range(c)
    ]
    return torch.stack(dists, dim=1).min(dim=1).values


def wide(model: nn.Module) -> advkit.Classifier:
    """The model with a box that never binds."""
    return advkit.wrap(model, bounds=(-100.0, 100.0))


@pytest.mark.parametrize("norm", NORMS)
def test_fab_is_exact_on_affine_models(norm: str) -> None:
    model, w, x, y, z = affine_problem()
    exact = exact_min_distance(w, z, y, DUAL[norm])
    steps = 10
    res = advkit.FAB(norm=norm, steps=steps)(wide(model), x, y)
    assert bool(res.success.all())
    ratio = res.distance / exact
    assert float(ratio.min()) >= 1.0 - 1e-9  # no adversarial is closer than the hyperplane
    assert float(ratio.max()) <= SECOND_STEP * (1 + 1e-9)
    assert SECOND_STEP < 1.006
    # Per step: one forward and C - 1 = 4 backward passes (the logit gaps), one forward to
    # score the new iterate; one clean forward; the verdict comes with the points.
    assert (res.forward_passes, res.backward_passes) == (1 + 2 * steps, 4 * steps)


@pytest.mark.parametrize("norm", NORMS)
def test_fab_never_beats_the_exact_minimum_when_the_box_binds(norm: str) -> None:
    """In [0, 1] the minimum is the closest projection onto {f_k = f_y} within the box, over
    the classes (computed with the norm's projection, itself checked against linprog)."""
    model, w, x, y, z = affine_problem(spread=1.0)
    n = advkit.norms.resolve_norm(norm)
    exact = torch.full_like(z[:, 0], math.inf)
    binds = 0
    for k in range(w.shape[0]):
        normal = w[k] - w[y]
        offset = (normal * x).sum(1) - (z[:, k] - z.gather(1, y[:, None]).squeeze(1))
        step = n.hyperplane_project(x, normal, offset, (0.0, 1.0))
        free = n.hyperplane_project(x, normal, offset, (-100.0, 100.0))
        reached = ((normal * (x + step)).sum(1) - offset).abs() < 1e-9
        dist = torch.where(reached & (y != k), n.measure(step), math.inf)
        binds += int(((dist < exact) & (dist > n.measure(free) * (1 + 1e-9))).sum())
        exact = torch.minimum(exact, dist)
    assert binds > 10  # the box matters on this problem
    res = advkit.FAB(norm=norm, steps=20)(model, x, y)
    assert bool(res.success.all())
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    ratio = res.distance / exact
    assert float(ratio.min()) >= 1.0 - 1e-9
    assert float(ratio.median()) <= 1.01


@pytest.mark.parametrize("norm", NORMS)
def test_fab_targeted_reaches_the_target_at_the_exact_distance(norm: str) -> None:
    """Any perturbation that makes t win crosses {f_t = f_y}: the distance to it is a lower
    bound, which FAB meets up to its overshoot (on this problem the target wins there)."""
    model, w, x, y, z = affine_problem()
    t = (y + 1) % w.shape[0]
    bound = pair_distance(w, z, y, t, DUAL[norm])
    steps = 10
    res = advkit.FAB(norm=norm, steps=steps)(wide(model), x, y, targets=t)
    assert bool(res.success.all())
    with torch.no_grad():
        assert torch.equal(model(res.x_adv).argmax(1), t)
    ratio = res.distance / bound
    assert float(ratio.min()) >= 1.0 - 1e-9
    assert float(ratio.max()) <= SECOND_STEP * (1 + 1e-9)
    # Per step: one forward and one backward pass (the target's gap), one forward to score.
    assert (res.forward_passes, res.backward_passes) == (1 + 2 * steps, steps)


@pytest.mark.parametrize("norm", NORMS)
def test_fab_targeted_gets_past_other_classes(norm: str) -> None:
    """With 10 classes and far targets, another class often wins on {f_t = f_y}: FAB then
    works on the target's strongest rival and still reaches the target."""
    model, w, x, y, z = affine_problem(c=10, n=40)
    t = (y + 5) % 10
    bound = pair_distance(w, z, y, t, DUAL[norm])
    with torch.no_grad():  # the point of {f_t = f_y} closest to x, pushed 1% past it
        n = advkit.norms.resolve_norm(norm)
        normal = w[t] - w[y]
        offset = (normal * x).sum(1) - (z.gather(1, t[:, None]) - z.gather(1, y[:, None]))[:, 0]
        step = n.hyperplane_project(x, normal, offset, (-100.0, 100.0))
        blocked = model(x + 1.01 * step).argmax(1) != t
    assert int(blocked.sum()) > 10
    res = advkit.FAB(norm=norm, steps=50)(wide(model), x, y, targets=t)
    assert bool(res.success.all())
    assert float((res.distance / bound).min()) >= 1.0 - 1e-9


@pytest.mark.parametrize("norm", NORMS)
def test_fab_budgeted(norm: str) -> None:
    model, w, x, y, z = affine_problem()
    exact = exact_min_distance(w, z, y, DUAL[norm])
    clf = wide(model)
    below = advkit.FAB(norm=norm, steps=10)(clf, x, y, eps=0.99 * exact)
    assert not bool(below.success.any())
    assert bool(torch.isinf(below.distance).all())
    assert torch.equal(below.x_adv, x)
    above = advkit.FAB(norm=norm, steps=30, eps=1.0)(clf, x, y, eps=1.01 * exact)
    assert bool(above.success.all())
    assert bool((above.distance <= 1.01 * exact).all())
    # Every sample is broken within eps at the first step: the batch empties at the first
    # look (after 10 steps), instead of running 30 steps.
    assert above.backward_passes == 4 * 10
    # A float budget: the points found farther are projected onto the ball and re-scored.
    eps = float(exact.median())
    mid = advkit.FAB(norm=norm, steps=10, eps=eps)(clf, x, y)
    assert torch.equal(mid.success, exact * SECOND_STEP <= eps)
    assert bool((mid.distance[mid.success] <= eps).all())


@pytest.mark.parametrize("norm", NORMS)
def test_fab_t_through_multitargeted_is_exact(norm: str) -> None:
    """FAB-T: FAB towards every other class in turn, any misclassification counts, the
    closest kept; over all the classes it is the untargeted minimum."""
    model, w, x, y, z = affine_problem()
    exact = exact_min_distance(w, z, y, DUAL[norm])
    steps = 5
    fab_t = advkit.MultiTargeted(advkit.FAB(norm=norm, steps=steps), num_targets=4)
    assert fab_t.minimal
    res = fab_t(wide(model), x, y)
    assert bool(res.success.all())
    assert res.targets is None
    ratio = res.distance / exact
    assert float(ratio.min()) >= 1.0 - 1e-9
    assert float(ratio.max()) <= SECOND_STEP * (1 + 1e-9)
    # 4 targets, every one on every sample: one backward pass per step each.
    assert res.backward_passes == 4 * steps
    assert len(res.parts) == 4
    # Budgeted, a target runs only on the samples the targets before it did not break.
    budgeted = fab_t(wide(model), x, y, eps=1.01 * exact)
    assert bool(budgeted.success.all())
    assert budgeted.backward_passes < res.backward_passes


def test_fab_on_a_trained_cnn() -> None:
    """On the digits CNN (the box binds on most samples): every sample broken, closer than
    DeepFool; restarts only improve, sample by sample."""
    model = digits_model()
    _, _, x, y = digits_data()
    x, y = x[:32], y[:32]
    fab = advkit.FAB(norm="l2", steps=20)(model, x, y)
    df = advkit.DeepFool(norm="l2")(model, x, y)
    assert bool(fab.success.all())
    assert float(fab.x_adv.min()) >= 0 and float(fab.x_adv.max()) <= 1
    assert float(fab.distance.median()) < float(df.distance[df.success].median())
    gen = torch.Generator().manual_seed(0)
    more = advkit.FAB(norm="l2", steps=20, restarts=2)(model, x, y, generator=gen)
    assert bool((more.distance <= fab.distance).all())
    assert bool((more.distance < fab.distance).any())


def test_fab_restarts_do_not_depend_on_the_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    x = torch.rand(12, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = model(x).argmax(1)
    ids = torch.arange(100, 112)
    attack = advkit.FAB(norm="linf", steps=8, restarts=3)
    full = attack(model, x, y, sample_ids=ids, generator=torch.Generator().manual_seed(5))
    sub = [7, 3, 4]
    part = attack(
        model, x[sub], y[sub], sample_ids=ids[sub], generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(part.x_adv, full.x_adv[sub], atol=1e-9, rtol=0)
    # the restarts matter here: without ids their draws follow the batch position instead
    plain = attack(model, x[sub], y[sub], generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(plain.x_adv, full.x_adv[sub], atol=1e-6, rtol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_random_restarts_start_at_half_the_best_distance(norm: str) -> None:
    """The radius rule: min(closest adversarial so far, r) / 2 from the clean input, with r
    the budget or (without one) 0.3, 1, 5 for Linf, L2, L1 times the width of the box."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 10, 10, generator=g, dtype=torch.float64) - 0.5  # far from the box edges
    n = advkit.norms.resolve_norm(norm)
    task = Task(
        x0=x0,
        labels=torch.zeros(6, dtype=torch.int64),
        norm=n,
        bounds=(-100.0, 100.0),
        objective=cross_entropy,
        generator=g,
    )
    best = BestByDistance(x0, torch.zeros(6, 3), torch.zeros(6, dtype=torch.bool))
    best.distance = torch.tensor([math.inf, 0.5, 2.0, 100.0, 600.0, 1e4], dtype=torch.float64)
    start = advkit.FAB(norm=norm)._random_start(task, best)
    r = {"linf": 0.3, "l2": 1.0, "l1": 5.0}[norm] * 200.0
    expected = torch.minimum(best.distance, torch.tensor(r, dtype=torch.float64)) / 2
    torch.testing.assert_close(n.measure(start - x0), expected)
    budgeted = task.using(eps=torch.tensor([1.0, 1.0, 1.0, 50.0, 50.0, 50.0]))
    start = advkit.FAB(norm=norm)._random_start(budgeted, best)
    expected = torch.tensor([0.5, 0.25, 0.5, 25.0, 25.0, 25.0], dtype=torch.float64)
    torch.testing.assert_close(n.measure(start - x0), expected)


@pytest.mark.parametrize(
    "settings",
    [
        {"alpha_max": 1.5},
        {"alpha_max": -0.1},
        {"eta": 0.9},
        {"eta": math.inf},
        {"beta": 0.0},
        {"beta": 1.1},
        {"steps": 0},
        {"restarts": 0},
        {"norm": "l3"},
    ],
)
def test_fab_rejects_bad_settings(settings: dict[str, object]) -> None:
    with pytest.raises(advkit.ConfigError):
        advkit.FAB(**settings)  # type: ignore[arg-type]


def test_fab_repr_and_registry() -> None:
    attack = advkit.FAB(norm="l1", steps=7)
    assert repr(attack).startswith("FAB(norm='l1', eps=None, steps=7, restarts=1, alpha_max=0.1")
    from advkit.attacks.registry import by_cli_name

    assert by_cli_name()["fab"] is advkit.FAB
