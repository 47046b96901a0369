"""The attack contract, checked once for every attack configuration of attack_db.py."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import advkit
from advkit import checks
from advkit.attacks import Attack

from ._models import NUM_CLASSES, exact_norm_at_most, make_batch, make_model
from .attack_db import ATTACKS, CASE_IDS, CASES, AttackInfo

ORDERS = {"linf": float("inf"), "l2": 2.0, "l1": 1.0}


def exact_distance(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """The perturbation's norm, computed independently of advkit, in float64."""
    d = (x_adv.double() - x.double()).flatten(1)
    return torch.linalg.vector_norm(d, ord=ORDERS[norm], dim=1)


def assert_feasible(res: advkit.AttackResult, x: torch.Tensor, norm: str, eps: Any) -> None:
    """Inside the ball and the box exactly: the returned values themselves, measured in
    float64 (exact for the differences of float32 and half values), with no tolerance."""
    dist = exact_distance(res.x_adv, x, norm)
    assert bool(exact_norm_at_most(res.x_adv, x, norm, eps).all()), f"outside the ball: {dist}"
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert res.distance.dtype == torch.float64
    if bool(torch.isinf(res.distance).any()):
        # A minimal-norm attack reports inf where it found nothing, and returns the input there.
        failed = ~res.success
        assert bool(torch.isinf(res.distance[failed]).all())
        assert bool((dist[failed] == 0).all())
        dist = torch.where(failed, res.distance, dist)
    torch.testing.assert_close(res.distance, dist, atol=1e-12, rtol=1e-9)


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "grad_ids": [id(p.grad) for p in model.parameters()],
    }


def assert_same_model(before: dict[str, object], model: nn.Module) -> None:
    after = snapshot(model)
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["grad_ids"] == after["grad_ids"]
    for a, b in zip(before["grad"], after["grad"], strict=True):  # type: ignore[call-overload]
        assert (a is None and b is None) or torch.equal(a, b)
    for k, v in before["state"].items():  # type: ignore[attr-defined]
        assert torch.equal(v, after["state"][k]), f"{k} changed"  # type: ignore[index]


def prepared_model(kind: str) -> nn.Module:
    """A model in train mode, with one BatchNorm left in eval, one frozen parameter and a .grad."""
    model, _ = make_model(kind)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        bns[-1].eval()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[-1].grad = torch.ones_like(params[-1])
    return model


def fresh_success(model: nn.Module, res: advkit.AttackResult) -> torch.Tensor:
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        pred = m(res.x_adv).argmax(dim=1)
    return pred == res.targets if res.targets is not None else pred != res.labels


TARGETINGS = ["untargeted", "shift", "tensor"]


@pytest.mark.parametrize("targeting", TARGETINGS)
@pytest.mark.parametrize("kind", ["conv", "mlp", "seq"])
@pytest.mark.parametrize(("info", "name", "norm", "eps"), CASES, ids=CASE_IDS)
def test_contract(
    info: AttackInfo, name: str, norm: str, eps: float, kind: str, targeting: str
) -> None:
    model = prepared_model(kind)
    _, shape = make_model(kind)
    x, y = make_batch(shape)
    if kind == "conv":
        x = x.contiguous(memory_format=torch.channels_last)
    targets: object = None
    if targeting == "shift":
        targets = advkit.targets.shift(1)
    elif targeting == "tensor":
        targets = (y + 2) % NUM_CLASSES
    x_in, y_in = x.clone(), y.clone()
    t_in = targets.clone() if isinstance(targets, torch.Tensor) else None
    before = snapshot(model)
    rng = torch.get_rng_state()
    attack: Attack = info.make(norm, eps)

    if targets is not None and not info.targetable:  # it chooses its own targets
        with pytest.raises(advkit.ConfigError, match="targets"):
            attack(model, x, y, targets=targets, eps=eps)
        assert_same_model(before, model)
        assert torch.equal(torch.get_rng_state(), rng), "the global RNG was used"
        return
    # Minimal-norm attacks take eps at call time only (budgeted mode); pass it to all.
    res = attack(model, x, y, targets=targets, eps=eps, generator=torch.Generator().manual_seed(3))

    # Feasible, in the input's own layout.
    assert_feasible(res, x, norm, eps)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.x_adv.device == x.device
    if kind == "conv":
        assert res.x_adv.is_contiguous(memory_format=torch.channels_last)
    assert res.success.shape == (x.shape[0],) and res.success.dtype == torch.bool
    # Nothing of the caller's was touched.
    assert torch.equal(x, x_in) and torch.equal(y, y_in)
    if t_in is not None:
        assert torch.equal(targets, t_in)  # type: ignore[arg-type]
    assert_same_model(before, model)
    assert torch.equal(torch.get_rng_state(), rng), "the global RNG was used"
    # Success is what a fresh evaluation of x_adv says.
    assert torch.equal(res.success, fresh_success(model, res))
    if targeting == "shift":
        assert torch.equal(res.targets, (y + 1) % NUM_CLASSES)  # type: ignore[arg-type]
    # Pass counts: a forward and a verdict at least; gradient attacks do backward passes.
    assert res.forward_passes >= 2
    assert (res.backward_passes > 0) == info.gradient
    # Same generator, same result.
    again = attack(
        model, x, y, targets=targets, eps=eps, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(again.x_adv, res.x_adv)
    assert torch.equal(again.success, res.success)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("info", "name", "norm", "eps"), CASES, ids=CASE_IDS)
def test_contract_dtypes(
    info: AttackInfo, name: str, norm: str, eps: float, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4)).to(dtype)
    x, _ = make_batch((3, 4), batch=5)
    x = x.to(dtype)
    y = torch.tensor([0, 1, 2, 3, 0])
    res = info.make(norm, eps)(model, x, y, eps=eps, generator=torch.Generator().manual_seed(0))
    assert res.x_adv.dtype == dtype
    assert not bool(torch.isnan(res.x_adv).any())
    assert_feasible(res, x, norm, eps)
    with torch.no_grad():
        pred = model(res.x_adv).argmax(dim=1)
    assert torch.equal(res.success, pred != y)


@pytest.mark.parametrize(("info", "name", "norm", "eps"), CASES, ids=CASE_IDS)
def test_eps_zero_returns_input(info: AttackInfo, name: str, norm: str, eps: float) -> None:
    model, shape = make_model("mlp")
    x, y = make_batch(shape)
    res = info.make(norm, eps)(model, x, y, eps=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.x_adv, x)
    if info.minimal:  # nothing found within a zero budget but the misclassified inputs
        assert torch.equal(torch.isinf(res.distance), ~res.success)
        assert bool((res.distance[res.success] == 0).all())
    else:
        assert bool((res.distance == 0).all())


@pytest.mark.parametrize(("info", "name", "norm", "eps"), CASES, ids=CASE_IDS)
def test_per_sample_eps(info: AttackInfo, name: str, norm: str, eps: float) -> None:
    model, shape = make_model("conv")
    x, y = make_batch(shape, batch=4)
    budgets = torch.tensor([0.0, 0.25, 0.5, 1.0]) * eps
    res = info.make(norm, eps)(model, x, y, eps=budgets, generator=torch.Generator().manual_seed(0))
    assert_feasible(res, x, norm, budgets)
    assert torch.equal(res.x_adv[0], x[0])


def test_keep_mode_restores_batchnorm_statistics() -> None:
    model, shape = make_model("conv")
    model.train()
    before = snapshot(model)
    x, y = make_batch(shape)
    res = advkit.PGD(eps=0.1, steps=2)(model, x, y, keep_mode=True)
    assert_same_model(before, model)
    assert res.forward_passes >= 3


def test_model_restored_when_attack_raises() -> None:
    model = prepared_model("conv")
    before = snapshot(model)
    x, y = make_batch((3, 6, 6))

    def broken(logits: torch.Tensor, labels: torch.Tensor, targets: object) -> torch.Tensor:
        raise RuntimeError("objective failed")

    with pytest.raises(RuntimeError, match="objective failed"):
        advkit.PGD(eps=0.1, steps=2, objective=broken)(model, x, y)
    assert_same_model(before, model)


def test_no_weight_gradients_computed() -> None:
    model, shape = make_model("conv")
    seen: list[torch.Tensor] = []
    for p in model.parameters():
        p.register_hook(lambda g: seen.append(g))  # fires only if a weight gradient is computed
    x, y = make_batch(shape)
    advkit.PGD(eps=0.1, steps=3)(model, x, y)
    assert seen == []
    assert all(p.grad is None for p in model.parameters())


def test_success_tracks_best_iterate() -> None:
    """A success found at some step is kept even if later steps undo it."""
    torch.manual_seed(0)
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[0.5, 0.45]])
    y = torch.tensor([0])

    calls = {"n": 0}

    def flip_flop(logits: torch.Tensor, labels: torch.Tensor, targets: object) -> torch.Tensor:
        # Ascend towards class 1 on the first step, then back towards class 0.
        calls["n"] += 1
        sign = 1.0 if calls["n"] <= 2 else -1.0
        return sign * (logits[:, 1] - logits[:, 0])

    res = advkit.BIM(eps=0.1, steps=6, step_size=0.1, objective=flip_flop)(model, x, y)
    assert bool(res.success.all())
    assert float(res.x_adv[0, 1]) > float(res.x_adv[0, 0])


@st.composite
def attack_cases(draw: st.DrawFn) -> dict[str, Any]:
    info = draw(st.sampled_from(ATTACKS))
    norm = draw(st.sampled_from(info.norms))
    b = draw(st.integers(1, 5))
    feat = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    eps_vals = draw(st.lists(st.sampled_from([0.0, 0.01, 0.1, 0.5, 3.0]), min_size=b, max_size=b))
    per_sample = draw(st.booleans())
    targeted = draw(st.booleans()) and info.targetable
    seed = draw(st.integers(0, 2**16))
    return {
        "info": info,
        "norm": norm,
        "shape": (b, *feat),
        "dtype": dtype,
        "eps": torch.tensor(eps_vals) if per_sample else eps_vals[0],
        "targeted": targeted,
        "seed": seed,
    }


@given(attack_cases())
def test_every_attack_is_feasible_for_any_shape_dtype_eps_and_norm(case: dict[str, Any]) -> None:
    g = torch.Generator().manual_seed(case["seed"])
    shape, dtype = case["shape"], case["dtype"]
    d = math.prod(shape[1:])
    torch.manual_seed(case["seed"])
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 5)).to(dtype)
    x = torch.rand(shape, generator=g).to(dtype)
    x[0].flatten()[0] = 1.0  # a coordinate on the box edge
    y = torch.randint(0, 5, (shape[0],), generator=g)
    x_in = x.clone()
    targets = advkit.targets.shift(1) if case["targeted"] else None
    eps = case["eps"]
    attack = case["info"].make(case["norm"], 0.1)
    res = attack(model, x, y, eps=eps, targets=targets, generator=g)
    assert torch.equal(x, x_in)
    assert res.x_adv.dtype == dtype
    assert res.x_adv.shape == x.shape
    assert_feasible(res, x, case["norm"], eps)
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    expected = pred == res.targets if case["targeted"] else pred != y
    assert torch.equal(res.success, expected)


REDUCED = {
    "PGD": lambda n, e, p: advkit.PGD(norm=n, eps=e, steps=2, precision=p),
    "APGD": lambda n, e, p: advkit.APGD(norm=n, eps=e, steps=3, precision=p),
    "FAB": lambda n, e, p: advkit.FAB(norm=n, eps=e, steps=3, precision=p),
    "Square": lambda n, e, p: advkit.Square(norm=n, eps=e, queries=8, precision=p),
    "AutoAttack": lambda n, e, p: advkit.AutoAttack(n, e, steps=2, queries=8, precision=p),
}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("name", list(REDUCED))
def test_half_inputs_in_reduced_precision(
    name: str, norm: str, dtype: torch.dtype, precision: str
) -> None:
    # Half inputs with a reduced-precision model: the clean logits come from a pass in the
    # inputs' dtype, the search's in float32; the result is feasible in the inputs' dtype.
    eps = {"linf": 0.3, "l2": 0.5, "l1": 2.0}[norm]
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4)).to(dtype)
    x = torch.rand(16, 3, 4, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = torch.arange(16) % 4
    res = REDUCED[name](norm, eps, precision)(
        model, x, y, generator=torch.Generator().manual_seed(0)
    )
    assert res.x_adv.dtype == dtype
    assert_feasible(res, x, norm, eps)
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(dim=1) != y)


def test_keep_mode_with_training_batchnorm_on_one_sample_is_a_model_error() -> None:
    # BatchNorm1d in training mode cannot run on one sample: a typed error that names the
    # fix, not torch's ValueError (attacks narrow to the samples still running).
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    model.train()
    before = snapshot(model)
    x = torch.rand(1, 3, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(checks.ModelError, match="keep_mode=False"):
        advkit.PGD(eps=0.1, steps=2)(model, x, torch.tensor([1]), keep_mode=True)
    assert_same_model(before, model)
    res = advkit.PGD(eps=0.1, steps=2)(model, x, torch.tensor([1]))  # eval mode: fine
    assert res.x_adv.shape == x.shape
