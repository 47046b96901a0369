"""The model wrapper: output extraction, normalization inside the model, the guard."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import pytest
import torch
from torch import nn

import advkit
from advkit.models import Classifier, model_guard

Out = namedtuple("Out", ["logits", "aux"])


class Obj:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self.hidden = logits * 0


class Multi(nn.Module):
    """Returns its logits in a chosen container, like Inception (tuple) or Hugging Face (.logits)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> Any:
        z = self.lin(x)
        return {
            "tensor": z,
            "tuple": (z, z * 0),
            "list": [z, z * 0],
            "namedtuple": Out(z, z * 0),
            "object": Obj(z),
            "dict": {"logits": z, "aux": z * 0},
            "dict_other": {"scores": z, "aux": z * 0},
            "aux_first": (z * 0, z),
        }[self.kind]


@pytest.mark.parametrize(
    ("kind", "output"),
    [
        ("tensor", None),
        ("tuple", None),
        ("list", None),
        ("namedtuple", None),
        ("object", None),
        ("dict", None),
        ("dict_other", "scores"),
        ("object", "logits"),
        ("aux_first", 1),
        ("dict_other", lambda out: out["scores"]),
    ],
)
def test_output_extraction(kind: str, output: Any) -> None:
    torch.manual_seed(0)
    net = Multi(kind)
    x = torch.rand(5, 4)
    model = advkit.wrap(net, output=output)
    torch.testing.assert_close(model(x), net.lin(x))
    res = advkit.PGD(eps=0.1, steps=2)(model, x, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(res.logits, net.lin(res.x_adv))


def test_normalization_lives_inside_the_model() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    net(torch.rand(1, 3, 5, 5))
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    model = advkit.wrap(net, bounds=(0, 1), mean=mean, std=std)
    x = torch.rand(4, 3, 5, 5)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), net((x - m) / s))
    # eps is measured in pixel space, and the box is the pixel box.
    res = advkit.PGD(norm="l2", eps=0.3, steps=5)(model, x, torch.zeros(4, dtype=torch.long))
    dist = torch.linalg.vector_norm((res.x_adv - x).flatten(1), dim=1)
    assert bool((dist <= 0.3 + 1e-5).all())
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1


def test_normalized_wrapper_equals_manual_normalization_layer() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.3, 0.4])

    class Manual(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return net((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))

    x, y = torch.rand(6, 3, 2, 2), torch.randint(0, 3, (6,))
    pgd = advkit.PGD(norm="linf", eps=0.05, steps=4)
    a = pgd(advkit.wrap(net, mean=mean, std=std), x, y, generator=torch.Generator().manual_seed(1))
    b = pgd(Manual(), x, y, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.x_adv, b.x_adv)


def test_bounds_other_than_unit_box() -> None:
    torch.manual_seed(0)
    net = nn.Linear(6, 3)
    model = advkit.wrap(net, bounds=(0, 255))
    x = torch.rand(8, 6) * 255
    res = advkit.PGD(eps=8.0, steps=3)(model, x, torch.zeros(8, dtype=torch.long))
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 255
    assert float(res.distance.max()) <= 8.0 + 1e-4


def test_wrap_is_idempotent_and_plain_modules_default_to_unit_box() -> None:
    net = nn.Linear(3, 2)
    model = advkit.wrap(net)
    assert advkit.wrap(model) is model
    assert isinstance(model, Classifier) and model.bounds == (0.0, 1.0)
    assert advkit.wrap(model, bounds=(0, 2)).bounds == (0.0, 2.0)


def test_wrapper_follows_the_module_to_another_dtype() -> None:
    model = advkit.wrap(nn.Linear(3, 2), mean=[0.1, 0.2, 0.3], std=0.5).double()
    out = model(torch.rand(2, 3, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_guard_restores_everything_even_on_error() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    net.train()
    net[1].eval()
    net[0].weight.requires_grad_(False)
    g = torch.ones_like(net[2].weight)
    net[2].weight.grad = g
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(RuntimeError), model_guard(net, keep_mode=True):
        net[1].train()
        net(torch.randn(8, 3))  # updates running statistics
        net[1].running_mean = torch.zeros(4)  # even a replaced buffer is put back
        raise RuntimeError
    assert net.training and not net[1].training and net[2].training
    assert not net[0].weight.requires_grad and net[2].weight.requires_grad
    assert net[2].weight.grad is g
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_guard_freezes_parameters_and_sets_eval() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5))
    with model_guard(net) as m:
        assert not m.training and not m[1].training
        assert not any(p.requires_grad for p in m.parameters())
    assert net.training and all(p.requires_grad for p in net.parameters())


def test_wrap_follows_the_module_and_the_inputs_device() -> None:
    """mean/std are made on the module's device, and meet the inputs wherever they are."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Flatten())
    clf = advkit.wrap(net.to(torch.float64), mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    assert clf.mean is not None and clf.mean.device == next(net.parameters()).device
    x = torch.rand(2, 3, 1, 1, dtype=torch.float64)
    expected = net((x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1).double()) / 0.5)
    torch.testing.assert_close(clf(x), expected)
    meta = advkit.wrap(torch.nn.Linear(3, 2).to("meta"), mean=(0.1, 0.2, 0.3))
    assert meta.mean is not None and meta.mean.device.type == "meta"


def _bn_mlp() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("kind", ["script", "trace"])
def test_guard_restores_scripted_and_traced_models(kind: str) -> None:
    """A ScriptModule's buffer table is not a dict; the guard restores it all the same."""
    x = torch.rand(5, 4)
    net = _bn_mlp().train()
    scripted = torch.jit.script(net) if kind == "script" else torch.jit.trace(net, x)
    scripted.train()
    before = _state(scripted)
    with model_guard(scripted, keep_mode=True):
        assert not any(p.requires_grad for p in scripted.parameters())
        scripted(x)  # a train-mode forward moves the BatchNorm statistics
        assert not torch.equal(scripted.state_dict()["1.running_mean"], before["1.running_mean"])
    assert all(torch.equal(v, before[k]) for k, v in scripted.state_dict().items())
    with model_guard(scripted):
        assert not any(m.training for m in scripted.modules())
    assert all(m.training for m in scripted.modules())
    assert all(p.requires_grad for p in scripted.parameters())

    # the reproduction: any attack on a scripted model in train mode
    y = torch.randint(0, 3, (5,), generator=torch.Generator().manual_seed(0))
    res = advkit.FGSM(eps=0.1)(scripted, x, y)
    assert float((res.x_adv - x).abs().max()) <= 0.1 + 1e-7
    assert all(m.training for m in scripted.modules())
    assert all(p.requires_grad for p in scripted.parameters())
    assert all(torch.equal(v, before[k]) for k, v in scripted.state_dict().items())


def test_lazy_model_is_refused_and_left_as_found() -> None:
    net = nn.Sequential(nn.LazyLinear(3)).train()
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    with pytest.raises(advkit.ConfigError, match=r"lazy.*model\(x\)"):
        advkit.FGSM(eps=0.1)(net, x, y)
    assert net.training and all(p.requires_grad for p in net.parameters())
    net(x)  # the fix the message names: one forward pass gives the parameters their shapes
    advkit.FGSM(eps=0.1)(net, x, y)
    assert net.training and all(p.requires_grad for p in net.parameters())


def test_every_restore_step_runs_when_one_fails() -> None:
    """A restore step that raises does not keep the others from running; its error is raised
    once they all ran."""
    net = _bn_mlp().train()
    before = _state(net)
    stuck = net[0].weight

    def refuse(*args: Any) -> None:
        raise RuntimeError("this parameter cannot be restored")

    with pytest.raises(RuntimeError, match="cannot be restored"), model_guard(net):
        net[1].running_mean.add_(1.0)
        stuck.requires_grad_ = refuse  # the guard's restore of this parameter fails
    del stuck.requires_grad_
    assert all(m.training for m in net.modules())  # modes: restored after the failed step
    assert all(p.requires_grad for p in net.parameters() if p is not stuck)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
