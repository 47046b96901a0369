"""Every bad input raises the documented, typed error with a message that names the problem."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import advkit
from advkit import checks, objectives, targets

from ._models import make_batch, make_model


@pytest.fixture
def setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, shape = make_model("mlp")
    x, y = make_batch(shape)
    return model, x, y


def attack() -> advkit.PGD:
    return advkit.PGD(eps=0.1, steps=1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs(setup: Any, bad: float) -> None:
    model, x, y = setup
    x = x.clone()
    x[2, 3] = bad
    with pytest.raises(checks.InputError, match=r"NaN or Inf.*\[2\]"):
        attack()(model, x, y)


def test_inputs_outside_bounds(setup: Any) -> None:
    model, x, y = setup
    with pytest.raises(checks.BoundsError, match=r"outside the model's bounds \[0, 1\]"):
        attack()(model, x * 3, y)
    with pytest.raises(checks.BoundsError, match="advkit.wrap"):
        attack()(advkit.wrap(model, bounds=(0.2, 1.0)), x - 0.15, y)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.rand(7), r"batched with shape \(B, \.\.\.\)"),
        (torch.randint(0, 2, (4, 7)), "floating point"),
        (torch.rand(0, 7), "empty batch"),
        ([[0.5] * 7], "torch.Tensor"),
    ],
)
def test_malformed_inputs(setup: Any, x: Any, match: str) -> None:
    model, _, y = setup
    with pytest.raises(checks.InputError, match=match):
        attack()(model, x, y[:4] if isinstance(x, torch.Tensor) and x.ndim == 2 else y)


@pytest.mark.parametrize(
    ("make_labels", "match"),
    [
        (lambda y: y + 5, r"must lie in \[0, 4\] for a model with 5 classes"),
        (lambda y: y - 1 - y.max(), r"must lie in \[0, 4\]"),
        (lambda y: y[:3], r"must have shape \(6,\)"),
        (lambda y: y.unsqueeze(1), r"must have shape \(6,\)"),
        (lambda y: y.float(), "integer class indices"),
        (lambda y: nn.functional.one_hot(y, 5), r"must have shape \(6,\)"),
        (lambda y: y.tolist(), "torch.Tensor"),
    ],
)
def test_bad_labels(setup: Any, make_labels: Any, match: str) -> None:
    model, x, y = setup
    with pytest.raises(checks.LabelError, match=match):
        attack()(model, x, make_labels(y))


def test_bad_targets(setup: Any) -> None:
    model, x, y = setup
    with pytest.raises(checks.LabelError, match=r"targets equal the true labels for samples \[0"):
        attack()(model, x, y, targets=y.clone())
    with pytest.raises(checks.LabelError, match=r"targets must have shape \(6,\)"):
        attack()(model, x, y, targets=(y[:2] + 1) % 5)
    with pytest.raises(checks.LabelError, match=r"targets must lie in \[0, 4\]"):
        attack()(model, x, y, targets=y + 7)
    with pytest.raises(checks.LabelError, match="target map"):
        attack()(model, x, y, targets="shift")
    with pytest.raises(checks.ConfigError, match="maps every label to itself"):
        attack()(model, x, y, targets=targets.shift(5))


@pytest.mark.parametrize(
    ("eps", "match"),
    [
        (-0.1, "finite and >= 0"),
        (math.nan, "finite and >= 0"),
        (math.inf, "finite and >= 0"),
        (torch.tensor([0.1, -0.1, 0.1, 0.1, 0.1, 0.1]), "finite and >= 0"),
        (torch.tensor([0.1, 0.2]), r"shape \(6,\)"),
        ("0.1", "float or a tensor"),
        (torch.tensor([True, False, True, True, True, True]), "bool tensor"),
    ],
)
def test_bad_eps_in_call(setup: Any, eps: Any, match: str) -> None:
    model, x, y = setup
    with pytest.raises(checks.ConfigError, match=match):
        attack()(model, x, y, eps=eps)


def test_missing_eps(setup: Any) -> None:
    model, x, y = setup
    with pytest.raises(checks.ConfigError, match="eps is required"):
        advkit.FGSM()(model, x, y)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: advkit.PGD(eps=-1.0), "eps must be finite and >= 0"),
        (lambda: advkit.PGD(eps=0.1, steps=0), "steps must be an integer >= 1"),
        (lambda: advkit.PGD(eps=0.1, steps=2.5), "steps must be an integer >= 1"),
        (lambda: advkit.PGD(eps=0.1, restarts=0), "restarts must be an integer >= 1"),
        (lambda: advkit.PGD(eps=0.1, step_size=0.0), "step_size must be finite and > 0"),
        (lambda: advkit.PGD(norm="l3", eps=0.1), "Unknown norm 'l3'"),
        (lambda: advkit.FGSM(norm=3, eps=0.1), "Unknown norm 3"),
        (lambda: advkit.L1(q=0.0), r"fraction in \(0, 1\]"),
        (lambda: advkit.PGD(eps=0.1, objective="ce"), "objective must be a callable"),
        (lambda: advkit.UniformNoise(eps=0.1, restarts=-1), "restarts"),
        (lambda: targets.shift(1.5), "integer k"),
        (lambda: advkit.PGD(eps=torch.tensor([0.1, 0.2])), "per-sample budgets"),
    ],
)
def test_bad_hyperparameters(make: Any, match: str) -> None:
    with pytest.raises(checks.ConfigError, match=match):
        make()


def test_bad_generator(setup: Any) -> None:
    model, x, y = setup
    with pytest.raises(checks.ConfigError, match=r"torch\.Generator"):
        attack()(model, x, y, generator=0)


class ReturnsDict(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scores": x[:, :3]}


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (ReturnsDict(), "not a logit tensor; pass output="),
        (nn.Flatten(0), r"\(B, C\) floating-point logits"),
        (nn.Unflatten(1, (7, 1)), r"\(B, C\) floating-point logits"),
        (nn.Linear(7, 1), r"C >= 2"),
    ],
)
def test_model_output_not_logits(setup: Any, module: nn.Module, match: str) -> None:
    _, x, y = setup
    with pytest.raises(checks.ModelOutputError, match=match):
        attack()(module, x, y.clamp(max=0))


def test_probability_outputs_warn(setup: Any) -> None:
    model, x, y = setup
    probs = nn.Sequential(model, nn.Softmax(dim=1))
    with pytest.warns(checks.ProbabilityOutputWarning, match="look like probabilities") as rec:
        attack()(probs, x, y)
    assert rec[0].filename == __file__  # the warning points at the caller's line


def test_objective_with_wrong_shape(setup: Any) -> None:
    model, x, y = setup

    def total(logits: torch.Tensor, labels: torch.Tensor, t: Any) -> torch.Tensor:
        return objectives.cross_entropy(logits, labels, t).sum()

    with pytest.raises(checks.ConfigError, match="one value per sample"):
        advkit.PGD(eps=0.1, steps=1, objective=total)(model, x, y)


def test_dlr_needs_enough_classes() -> None:
    model = nn.Linear(4, 3)
    x, y = torch.rand(2, 4), torch.tensor([0, 1])
    with pytest.raises(checks.ConfigError, match="at least 4 classes"):
        advkit.PGD(eps=0.1, steps=1, objective=objectives.dlr)(
            model, x, y, targets=targets.shift(1)
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bounds": (1.0, 0.0)}, "low < high"),
        ({"bounds": 1.0}, "pair"),
        ({"std": [1.0, 0.0, 1.0]}, "std must be > 0"),
        ({"mean": [[0.5]]}, "1-D sequence"),
        ({"output": 2.5}, "output must be None"),
    ],
)
def test_bad_wrapper_settings(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(checks.ConfigError, match=match):
        advkit.wrap(nn.Linear(3, 2), **kwargs)


def test_mean_std_channel_mismatch() -> None:
    model = advkit.wrap(nn.Flatten(), mean=[0.5, 0.5, 0.5])
    with pytest.raises(checks.ConfigError, match="mean/std have 3 entries"):
        model(torch.rand(2, 4))


def test_errors_are_value_errors_too() -> None:
    """Code that catches ValueError/TypeError keeps working."""
    assert issubclass(checks.InputError, ValueError)
    assert issubclass(checks.LabelError, ValueError)
    assert issubclass(checks.ConfigError, ValueError)
    assert issubclass(checks.ModelOutputError, TypeError)
    assert issubclass(checks.BoundsError, checks.InputError)


def test_checks_run_even_when_an_attack_never_calls_the_model(setup: Any) -> None:
    """A subclass whose run makes no pass at all still gets the call's checks: they run on
    the one forward pass the base class makes, the verdict on x_adv."""

    class Identity(advkit.Attack):
        def run(self, oracle: Any, task: Any) -> Any:
            return advkit.attacks.Found(task.x0)

    model, x, y = setup
    with pytest.raises(checks.LabelError, match=r"must lie in \[0, 4\]"):
        Identity(eps=0.1)(model, x, y + 5)
    res = Identity(eps=0.1)(model, x, y)
    assert res.forward_passes == 1  # the verdict on x_adv, which runs the checks


@pytest.mark.parametrize(
    "eps", [np.float32(0.1), np.float64(0.1), np.float16(0.1), np.int64(0), 0, 0.1]
)
def test_numpy_real_scalars_are_budgets_like_floats(setup: Any, eps: Any) -> None:
    """Any real scalar is a budget: np.float32 like np.float64 (a float subclass) and float."""
    model, x, y = setup
    assert checks.check_eps(eps, 1) == float(eps)
    assert isinstance(checks.check_eps(eps, 1), float)
    assert advkit.PGD(eps=eps, steps=1).eps == float(eps)
    res = advkit.FGSM()(model, x, y, eps=eps)
    assert float(res.distance.max()) <= float(eps) + 1e-6
    assert checks.check_positive(np.float32(0.5), "step_size") == 0.5
    assert checks.check_positive_int(np.int64(3), "steps") == 3
    with pytest.raises(checks.ConfigError, match="float or a tensor"):
        checks.check_eps(np.bool_(True), 1)
    with pytest.raises(checks.ConfigError, match="finite and >= 0"):
        checks.check_eps(np.float32("nan"), 1)


def test_robust_accuracy_takes_numpy_scalars_and_tensors() -> None:
    r = advkit.AttackResult(
        x_adv=torch.zeros(4, 1),
        success=torch.tensor([True, True, True, False]),
        distance=torch.tensor([0.05, 0.5, 2.0, math.inf]),
        logits=torch.zeros(4, 2),
        labels=torch.zeros(4, dtype=torch.long),
        targets=None,
        norm="l2",
        forward_passes=1,
        backward_passes=0,
    )
    for eps in (0.1, np.float32(0.1), np.float64(0.1), torch.tensor(0.1)):
        assert r.robust_accuracy(eps) == 0.75
    curve = [0.75, 0.5]
    assert r.robust_accuracy([np.float32(0.1), 1]) == curve
    assert r.robust_accuracy(torch.tensor([0.1, 1.0])) == curve
    assert r.robust_accuracy(np.array([0.1, 1.0])) == curve
    with pytest.raises(checks.ConfigError, match="sequence of numbers"):
        r.robust_accuracy("0.1")  # type: ignore[arg-type]


def test_inputs_that_require_grad_give_no_scalar_conversion_warning(setup: Any) -> None:
    model, x, y = setup
    x = x.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "requires_grad=True to a scalar" UserWarning
        checks.check_inputs(x, (0.0, 1.0))
        res = advkit.FGSM(eps=0.1)(model, x, y)
    assert x.grad is None and x.requires_grad  # the caller's tensor is left as it was
    assert not res.x_adv.requires_grad


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8])
def test_labels_of_every_integer_dtype_pass_the_checks_as_int64(dtype: torch.dtype) -> None:
    y = torch.tensor([0, 3, 1, 2], dtype=dtype)
    out = checks.check_labels(y, 4, 5)
    assert out.dtype == torch.int64 and torch.equal(out, y.long())
    t = checks.check_targets(torch.tensor([1, 4, 0, 3], dtype=dtype), y, 5)
    assert t.dtype == torch.int64
    with pytest.raises(checks.LabelError, match=r"lie in \[0, 4\]"):
        checks.check_labels(torch.tensor([0, 5, 1, 2], dtype=dtype), 4, 5)
