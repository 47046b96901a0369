"""Defects found by trying advkit as a hostile but realistic user would: each one's smallest
reproduction, and a random sweep over attacks, norms, dtypes, shapes, boxes and targets that
checks the ball and the box in the returned dtype, success against a fresh forward, the
model's state and the global RNG."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import advkit
from advkit import checks

from ._models import exact_norm_at_most
from .attack_db import ATTACKS
from .test_contract import assert_same_model, snapshot

ORDERS = {"linf": math.inf, "l2": 2.0, "l1": 1.0}


def dist(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    return torch.linalg.vector_norm((a.double() - b.double()).flatten(1), ord=ORDERS[norm], dim=1)


# --------------------------------------------------------------------------- defect 2


class EditsItsInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(8, 3)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        v.mul_(0.5).add_(0.25)
        return self.lin(v)


@pytest.mark.parametrize(
    "attack",
    [
        advkit.UniformNoise(eps=0.1),
        advkit.CW(steps=5, search_steps=1),
        advkit.PGD(eps=0.1, steps=2),
        advkit.FGSM(eps=0.1),
        advkit.DeepFool(steps=3),
        advkit.APGD(eps=0.1, steps=3),
    ],
    ids=lambda a: type(a).__name__,
)
def test_a_model_that_edits_its_input_is_refused(attack: advkit.Attack) -> None:
    x = torch.rand(5, 8)
    x_in = x.clone()
    y = torch.tensor([0, 1, 2, 0, 1])
    with pytest.raises(checks.ModelError, match="in place"):
        attack(EditsItsInput(), x, y)
    assert torch.equal(x, x_in)
    # Normalization inside the wrapper hands the module a tensor of its own: then it works.
    wrapped = advkit.wrap(EditsItsInput(), mean=0.0, std=1.0)
    res = attack(wrapped, x, y, eps=0.1) if not attack.minimal else attack(wrapped, x, y)
    assert torch.equal(x, x_in)
    assert torch.isfinite(res.x_adv).all()


# --------------------------------------------------------------------------- defect 3


class NaNAbove(nn.Module):
    """NaN logits wherever the first feature exceeds a threshold, finite elsewhere."""

    def __init__(self, threshold: float = 0.6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(6, 4)
        self.threshold = threshold

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        out = self.lin(v)
        bad = (v[:, :1] > self.threshold).expand_as(out)
        return torch.where(bad, torch.full_like(out, math.nan), out)


@pytest.mark.parametrize(
    "attack",
    [
        advkit.PGD(eps=0.3, steps=5),
        advkit.APGD(eps=0.3, steps=5),
        advkit.FGSM(eps=0.3),
        advkit.UniformNoise(eps=0.3, restarts=4),
        advkit.DeepFool(steps=5),
        advkit.CW(steps=10, search_steps=2),
    ],
    ids=lambda a: type(a).__name__,
)
def test_non_finite_logits_are_never_a_success(attack: advkit.Attack) -> None:
    model = NaNAbove()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 6, generator=g) * 0.55  # finite at the clean points
    y = torch.randint(0, 4, (32,), generator=g)
    res = attack(model, x, y, eps=0.3, generator=torch.Generator().manual_seed(1))
    assert bool(torch.isfinite(res.x_adv).all())
    assert bool(
        (
            dist(res.x_adv, x, "linf" if not attack.minimal else attack.norm.name) <= 0.3 + 1e-12
        ).all()
    )
    with torch.no_grad():
        out = model(res.x_adv)
    finite = torch.isfinite(out).all(dim=1)
    assert not bool((res.success & ~finite).any())  # a NaN row never counts as broken
    assert torch.equal(res.success, (out.argmax(1) != y) & finite)


def test_evaluate_never_counts_a_nan_sample_as_skipped_or_robust() -> None:
    from torch.utils.data import TensorDataset

    model = NaNAbove(threshold=0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 6, generator=g) * 0.7  # some clean rows are already NaN
    with torch.no_grad():
        y = model.lin(x).argmax(1)
    data = TensorDataset(x, y)
    attacks = {"PGD": advkit.PGD(steps=5), "DeepFool": advkit.DeepFool(norm="linf", steps=10)}
    report = advkit.evaluate(model, data, attacks, eps=[0.1, 0.3], batch_size=16, progress=False)
    nan_clean = x[:, 0] > 0.5
    assert bool(nan_clean.any())
    assert not bool(report.correct[nan_clean].any())  # no prediction there: never correct
    assert bool((report.predictions[nan_clean] == -1).all())
    alone = advkit.evaluate(model, data, attacks["DeepFool"], eps=[0.1, 0.3], progress=False)
    worst, df = report.robust_accuracy(), alone.robust_accuracy()
    assert all(w <= d for w, d in zip(worst, df, strict=True))
    # every correctly classified sample was attacked by the first attack: no "skipped" rows
    assert not bool(report.distances["PGD"][report.correct, 0].isnan().any())


# --------------------------------------------------------------------------- defect 4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_half_precision_inputs_come_back_inside_the_ball(dtype: torch.dtype, norm: str) -> None:
    torch.manual_seed(0)
    net = nn.Linear(48, 5).to(dtype)
    x = torch.rand(64, 48).to(dtype)
    y = torch.randint(0, 5, (64,))
    eps = {"linf": 8 / 255, "l2": 0.5, "l1": 2.0}[norm]
    for attack in (
        advkit.PGD(norm=norm, eps=eps, steps=5),
        advkit.APGD(norm=norm, eps=eps, steps=5),
    ):
        res = attack(net, x, y, generator=torch.Generator().manual_seed(0))
        assert res.x_adv.dtype == dtype
        assert bool((dist(res.x_adv, x, norm) <= eps).all()), dist(res.x_adv, x, norm).max()
        assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1


# --------------------------------------------------------------------------- defects 5 and 6


def test_cw_refuses_an_unbounded_box() -> None:
    model = advkit.wrap(nn.Linear(4, 3), bounds=(-math.inf, math.inf))
    with pytest.raises(checks.ConfigError, match="finite input box"):
        advkit.CW(steps=3)(model, torch.rand(2, 4), torch.tensor([0, 1]))
    # the attacks that need no box work there
    res = advkit.DeepFool()(model, torch.rand(2, 4), torch.tensor([0, 1]))
    assert bool(res.success.all())


@pytest.mark.parametrize("half_width", [1e30, 1e4])
def test_cw_refuses_a_box_far_wider_than_its_inputs(half_width: float) -> None:
    """Bounds standing in for "unbounded" (inputs in [-1, 1], box +-1e30 or +-1e4): CW's
    steps are sized to the box and its distances blow up (every sample "not found" at 1e30,
    60x the minimum at 1e4), so it refuses, naming the fix; a box 10x wider still runs."""
    torch.manual_seed(0)
    net = nn.Linear(6, 3)
    x = torch.rand(8, 6) * 2 - 1
    y = net(x).argmax(1)
    with pytest.raises(checks.ConfigError, match="times wider than the inputs' range"):
        advkit.CW(steps=3)(advkit.wrap(net, bounds=(-half_width, half_width)), x, y)
    res = advkit.CW(steps=20)(advkit.wrap(net, bounds=(-10.0, 10.0)), x, y)
    assert bool(res.success.all())


def test_cw_is_invariant_to_an_affine_change_of_the_input_range() -> None:
    """The same affine model on [0, 1] and on [-10, 10] (composed with the map between the
    two): CW's distances scale with the box, 20x, and stay at the exact minimum."""
    torch.manual_seed(0)
    w, b = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, dtype=torch.float64) * 0.1
    x = torch.rand(40, 6, dtype=torch.float64) * 0.6 + 0.2
    y = (x @ w.T + b).argmax(1)

    class Affine(nn.Module):
        def __init__(self, lo: float, hi: float) -> None:
            super().__init__()
            self.lo, self.hi = lo, hi

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            u = (v - self.lo) / (self.hi - self.lo)  # back to [0, 1]
            return u @ w.T + b

    attack = advkit.CW(steps=300, search_steps=6, initial_const=1.0, lr=0.05)
    unit = attack(advkit.wrap(Affine(0, 1), bounds=(0, 1)), x, y)
    wide = attack(advkit.wrap(Affine(-10, 10), bounds=(-10, 10)), x * 20 - 10, y)
    ok = unit.success & wide.success
    assert float(ok.double().mean()) > 0.9
    torch.testing.assert_close(wide.distance[ok], 20 * unit.distance[ok], rtol=1e-3, atol=1e-9)
    # and both at the exact minimal L2 distance (the box does not bind here)
    z = x @ w.T + b
    gaps = (z.gather(1, y[:, None]) - z).clamp_min(0)
    norms = torch.linalg.vector_norm(w[None] - w[y][:, None], dim=2)
    exact = torch.where(norms > 0, gaps / norms, math.inf).scatter(1, y[:, None], math.inf).amin(1)
    ratio = (unit.distance[ok] / exact[ok]).median()
    assert 0.999 < float(ratio) < 1.02


# --------------------------------------------------------------------------- defect 7


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, torch.int8])
def test_labels_of_every_integer_dtype(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    net = nn.Linear(6, 4)
    x = torch.rand(8, 6)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    ref = advkit.PGD(eps=0.2, steps=3)(net, x, y, generator=torch.Generator().manual_seed(0))
    for attack in (advkit.PGD(eps=0.2, steps=3), advkit.FGSM(eps=0.2), advkit.DeepFool()):
        res = attack(net, x, y.to(dtype), generator=torch.Generator().manual_seed(0))
        assert res.labels.dtype == torch.int64
    res = advkit.PGD(eps=0.2, steps=3)(
        net,
        x,
        y.to(dtype),
        targets=((y + 1) % 4).to(dtype),
        generator=torch.Generator().manual_seed(0),
    )
    assert res.targets is not None and res.targets.dtype == torch.int64
    again = advkit.PGD(eps=0.2, steps=3)(
        net, x, y.to(dtype), generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(again.x_adv, ref.x_adv)


# --------------------------------------------------------------------------- defect 9


def test_keep_mode_with_dropout_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.Linear(16, 3)).train()
    x, y = torch.rand(8, 6), torch.randint(0, 3, (8,))
    state = torch.get_rng_state()
    advkit.PGD(eps=0.1, steps=3)(net, x, y, keep_mode=True)
    advkit.APGD(eps=0.1, steps=3, eot=2)(net, x, y, keep_mode=True)
    assert torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------------------- defect 10


class Detached(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(6, 3)
        self.how = how

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.how == "no_grad":
            with torch.no_grad():
                return self.lin(v)
        return self.lin(v.detach())


@pytest.mark.parametrize("how", ["no_grad", "detach"])
@pytest.mark.parametrize(
    "attack",
    [advkit.FGSM(eps=0.1), advkit.BIM(eps=0.1, steps=2), advkit.PGD(eps=0.1, steps=2),
     advkit.DeepFool(steps=2), advkit.APGD(eps=0.1, steps=2)],
    ids=lambda a: type(a).__name__,
)  # fmt: skip
def test_a_model_with_no_gradient_path_gets_a_warning_and_a_result(
    how: str, attack: advkit.Attack
) -> None:
    x, y = torch.rand(4, 6), torch.tensor([0, 1, 2, 0])
    with pytest.warns(advkit.GradientWarning, match="does not depend on its input"):
        res = attack(Detached(how), x, y)
    assert res.x_adv.shape == x.shape


# --------------------------------------------------------------------------- defect 11


def test_bf16_model_on_channels_last_inputs_keeps_the_format_and_scores_what_it_returns() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)
    ).bfloat16()
    net = net.to(memory_format=torch.channels_last)
    x = torch.rand(16, 3, 6, 6).bfloat16().contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (16,))
    for attack in (advkit.PGD(eps=0.1, steps=4), advkit.APGD(eps=0.1, steps=4)):
        res = attack(net, x, y, generator=torch.Generator().manual_seed(0))
        assert res.x_adv.is_contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            assert torch.equal(res.success, net(res.x_adv).argmax(1) != y)


# --------------------------------------------------------------------------- defect 12


def test_a_model_in_another_dtype_gets_a_typed_error() -> None:
    net = nn.Linear(6, 3).double()
    with pytest.raises(checks.ModelError, match=r"x.to\(torch.float64\)"):
        advkit.PGD(eps=0.1, steps=2)(net, torch.rand(4, 6), torch.tensor([0, 1, 2, 0]))


# --------------------------------------------------------------------------- the sweep

BOXES = [(0.0, 1.0), (-1.0, 1.0), (0.0, 255.0), (-2.5, 3.75)]


@st.composite
def hostile_cases(draw: st.DrawFn) -> dict[str, Any]:
    info = draw(st.sampled_from(ATTACKS))
    norm = draw(st.sampled_from(info.norms))
    b = draw(st.integers(1, 5))
    feat = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    box = draw(st.sampled_from(BOXES))
    scale = (box[1] - box[0]) / (255.0 if norm == "linf" else 1.0)
    eps = draw(st.sampled_from([0.0, 0.5, 4.0, 16.0, 100.0])) * scale / 8
    return {
        "info": info, "norm": norm, "shape": (b, *feat), "dtype": dtype, "box": box,
        "eps": eps, "targeted": draw(st.booleans()) and info.targetable,
        "seed": draw(st.integers(0, 2**16)),
    }  # fmt: skip


@settings(deadline=None)
@given(hostile_cases())
def test_random_configurations_stay_feasible_and_honest(case: dict[str, Any]) -> None:
    shape, dtype, (lo, hi), eps = case["shape"], case["dtype"], case["box"], case["eps"]
    g = torch.Generator().manual_seed(case["seed"])
    d = math.prod(shape[1:])
    torch.manual_seed(case["seed"])
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, 6), nn.BatchNorm1d(6), nn.Linear(6, 5)).to(dtype)
    net.train()
    net[2].running_mean.uniform_(-0.1, 0.1)
    model = advkit.wrap(net, bounds=(lo, hi), mean=(lo + hi) / 2, std=(hi - lo) / 2)
    x = (torch.rand(shape, generator=g) * (hi - lo) + lo).to(dtype).clamp(lo, hi)
    x[0].flatten()[0] = hi  # a coordinate on the box's edge
    y = torch.randint(0, 5, (shape[0],), generator=g)
    x_in = x.clone()
    before = snapshot(model)
    rng = torch.get_rng_state()
    targets = advkit.targets.shift(1) if case["targeted"] else None
    attack = case["info"].make(case["norm"], eps if eps > 0 else 0.1)
    res = attack(model, x, y, eps=eps, targets=targets, generator=g)
    # the ball and the box, on the returned values themselves
    assert res.x_adv.dtype == dtype and torch.equal(x, x_in)
    assert bool(exact_norm_at_most(res.x_adv, x, case["norm"], eps).all())
    assert float(res.x_adv.min()) >= lo and float(res.x_adv.max()) <= hi
    # success is what a fresh forward says
    frozen = copy.deepcopy(model).eval()
    with torch.no_grad():
        out = frozen(res.x_adv)
    ok = torch.isfinite(out).all(dim=1)
    expected = (out.argmax(1) == res.targets) if case["targeted"] else (out.argmax(1) != y)
    assert torch.equal(res.success, expected & ok)
    assert_same_model(before, model)
    assert torch.equal(torch.get_rng_state(), rng)
