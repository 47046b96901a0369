"""Throughput features: no host syncs, FLOPs of a step, reduced precision, channels_last,
the fused step, early stopping and the compiled model path.

Only behaviour is tested here; speed is measured in benchmarks/.
"""

from __future__ import annotations

import copy
import gc
import math
import pickle
import warnings
import weakref
from collections import Counter
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import advkit
from advkit import _fused
from advkit import functional as F
from advkit.attacks import Oracle, Task
from tests._digits import digits_data, digits_model
from tests._models import make_batch, make_model

SYNC_OPS = ("aten::nonzero", "aten::_local_scalar_dense", "aten::item")


def sync_ops(fn: Any) -> Counter[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return Counter({e.key: e.count for e in prof.key_averages() if e.key in SYNC_OPS})


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_step_loop_has_no_host_sync(norm: str, targeted: bool) -> None:
    """Host syncs come from validation only: more steps add none."""
    model, shape = make_model("conv")
    x, y = make_batch(shape, batch=8)
    kw: dict[str, Any] = {"targets": advkit.targets.shift(1)} if targeted else {}

    def run(steps: int) -> Counter[str]:
        attack = advkit.PGD(norm=norm, eps=0.3, steps=steps, restarts=2)
        return sync_ops(
            lambda: attack(model, x, y, generator=torch.Generator().manual_seed(0), **kw)
        )

    assert run(6) == run(1)


def test_early_stop_syncs_only_every_few_steps() -> None:
    model, shape = make_model("conv")
    x, y = make_batch(shape, batch=8)

    def count(steps: int) -> int:
        attack = advkit.PGD(eps=1e-4, steps=steps, early_stop=True)  # nothing succeeds
        c = sync_ops(lambda: attack(model, x, y, generator=torch.Generator().manual_seed(0)))
        return c["aten::nonzero"]

    looks = advkit.PGD._compact_every
    assert count(1 + 3 * looks) - count(1) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "attack",
    [advkit.PGD(norm="l2", eps=0.3, steps=3), advkit.APGD(norm="l2", eps=0.3, steps=5),
     advkit.APGD(norm="l1", eps=2.0, steps=5), advkit.APGD(norm="linf", eps=0.1, steps=5),
     advkit.FAB(norm="linf", eps=0.1, steps=5), advkit.FAB(norm="l2", eps=0.3, steps=5),
     advkit.FAB(norm="l1", eps=2.0, steps=5),
     advkit.APGD(norm="l2", eps=0.3, steps=5, smoothing=0.2, smoothing_draws=2)],
    ids=["pgd-l2", "apgd-l2", "apgd-l1", "apgd-linf", "fab-linf", "fab-l2", "fab-l1",
         "apgd-smooth"],
)  # fmt: skip
def test_step_loop_has_no_cuda_sync(attack: advkit.Attack) -> None:
    """An attack's run (no call-level checks) never synchronises the device."""
    model, shape = make_model("conv")
    model = model.cuda()
    x, y = (t.cuda() for t in make_batch(shape, batch=8))
    gen = torch.Generator(device="cuda").manual_seed(0)
    clf = advkit.wrap(model)
    task = Task(
        x0=x,
        labels=y,
        norm=attack.norm,
        bounds=clf.bounds,
        objective=attack.objective,
        generator=gen,
        eps=attack.eps,
    )
    with advkit.model_guard(clf):
        oracle = Oracle(clf)
        attack.run(oracle, task)  # warm-up: compiled step, cuDNN choices
        torch.cuda.set_sync_debug_mode("error")
        try:
            attack.run(oracle, task)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_whole_pgd_call_syncs_a_fixed_number_of_times_on_cuda(norm: str) -> None:
    """The whole call, checks included (they run on the first iterate's pass): the syncs
    CUDA reports do not grow with the number of steps."""
    model, shape = make_model("conv")
    model = model.cuda()
    x, y = (t.cuda() for t in make_batch(shape, batch=8))

    def syncs(steps: int) -> int:
        attack = advkit.PGD(norm=norm, eps=0.3, steps=steps, restarts=2)
        gen = torch.Generator(device="cuda").manual_seed(0)
        attack(model, x, y, generator=gen)  # warm-up: compiled step, cuDNN choices
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                attack(model, x, y, generator=gen, targets=advkit.targets.shift(1))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in rec)

    assert syncs(6) == syncs(1)


class FlopCount(TorchDispatchMode):
    """Adds up the FLOPs of every op that torch's flop registry knows."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        counter = flop_registry.get(func._overloadpacket)
        if counter is not None:
            self.flops += counter(*args, **kwargs, out_val=out)
        return out


def conv_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)
    ).eval()


def forward_flops(model: nn.Module, x: Tensor) -> int:
    with FlopCount() as fc, torch.no_grad():
        model(x)
    return fc.flops


def attack_flops(model: nn.Module, x: Tensor, y: Tensor, steps: int) -> int:
    attack = advkit.PGD(eps=0.1, steps=steps)
    with FlopCount() as fc:
        attack(model, x, y, generator=torch.Generator().manual_seed(0))
    return fc.flops


def test_one_step_costs_two_forwards_eager() -> None:
    """forward + input-gradient backward = 2 x forward FLOPs; weight gradients would add 1x."""
    model = conv_mlp()
    x, y = torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    f = forward_flops(model, x)
    per_step = (attack_flops(model, x, y, 4) - attack_flops(model, x, y, 1)) / 3
    assert f > 0
    assert per_step == pytest.approx(2 * f, rel=0.02)


def test_one_step_costs_two_forwards_compiled() -> None:
    """The compiled path (traced with frozen parameters) costs the same; counted by running
    its graphs op by op (aot_eager backend) under the FLOP counter."""
    model = advkit.wrap(conv_mlp())
    x, y = torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    f = forward_flops(model, x)
    model._compiled["default"] = torch.compile(model, backend="aot_eager", dynamic=False)
    try:

        def flops(steps: int) -> int:
            attack = advkit.PGD(eps=0.1, steps=steps, compile=True)
            attack(model, x, y, generator=torch.Generator().manual_seed(0))  # trace outside
            with FlopCount() as fc:
                attack(model, x, y, generator=torch.Generator().manual_seed(0))
            return fc.flops

        per_step = (flops(4) - flops(1)) / 3
    finally:
        model._compiled.clear()
    assert per_step == pytest.approx(2 * f, rel=0.02)


def test_compiled_path_matches_eager_and_leaves_the_model_alone() -> None:
    model, shape = make_model("conv")
    x, y = make_batch(shape, batch=6)
    flags = [p.requires_grad for p in model.parameters()]
    eager = advkit.PGD(norm="l2", eps=0.5, steps=3)(
        model, x, y, generator=torch.Generator().manual_seed(0)
    )
    comp = advkit.PGD(norm="l2", eps=0.5, steps=3, compile=True)(
        model, x, y, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(comp.x_adv, eager.x_adv, atol=1e-5, rtol=1e-5)
    assert torch.equal(comp.success, eager.success)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "make",
    [
        lambda c: advkit.PGD(norm="l2", eps=0.5, steps=4, restarts=2, compile=c),
        lambda c: advkit.BIM(eps=0.05, steps=4, compile=c),
        lambda c: advkit.PGD(eps=0.05, steps=8, early_stop=True, compile=c),
    ],
    ids=["pgd-restarts", "bim", "pgd-early-stop"],
)
def test_cuda_graph_path_matches_eager(make: Any) -> None:
    """compile="reduce-overhead" replays CUDA graphs whose output buffers the next replay
    overwrites: what an attack keeps across steps (best-so-far logits) must not alias them."""
    model, shape = make_model("conv")
    model = model.cuda()
    x, y = (t.cuda() for t in make_batch(shape, batch=6))
    runs = [
        make(c)(model, x, y, generator=torch.Generator(device="cuda").manual_seed(0))
        for c in (False, "reduce-overhead")
    ]
    eager, graph = runs
    torch.testing.assert_close(graph.x_adv, eager.x_adv, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(graph.logits, eager.logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(graph.success, eager.success)


def test_bad_precision_and_compile() -> None:
    with pytest.raises(advkit.ConfigError, match="precision"):
        advkit.PGD(eps=0.1, precision="int8")  # type: ignore[arg-type]
    with pytest.raises(advkit.ConfigError, match="compile"):
        advkit.PGD(eps=0.1, compile="fast")  # type: ignore[arg-type]
    assert "precision='bf16'" in repr(advkit.FGSM(eps=0.1, precision="bf16"))
    assert "precision" not in repr(advkit.FGSM(eps=0.1, precision="fp32"))


# --------------------------------------------------------------------------- bf16


class DtypeProbe(nn.Module):
    """Records the dtype its input arrives in (autocast casts inside the first layer)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seen: list[torch.dtype] = []

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        self.seen.append(out.dtype)
        return out


@pytest.mark.parametrize(
    "attack",
    [
        advkit.FGSM(eps=0.1, precision="bf16"),
        advkit.PGD(norm="l2", eps=0.5, steps=3, precision="bf16"),
        advkit.PGD(norm="linf", eps=0.1, steps=3, precision="bf16", early_stop=True),
        advkit.CW(steps=5, search_steps=2, precision="bf16"),
        advkit.DeepFool(steps=3, precision="bf16"),
    ],
    ids=repr,
)
def test_bf16_attacks_step_in_bf16_and_judge_in_fp32(attack: advkit.Attack) -> None:
    probe = DtypeProbe(conv_mlp())
    x, y = torch.rand(6, 3, 6, 6), torch.tensor([0, 1, 2, 3, 4, 0])
    res = attack(probe, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.bfloat16 in probe.seen  # gradient passes ran in bf16
    assert probe.seen[-1] == torch.float32  # the verdict came from a float32 forward
    assert res.x_adv.dtype == torch.float32
    with torch.no_grad():
        ref = probe.net(res.x_adv)
    assert torch.equal(res.logits, ref)
    assert torch.equal(res.success, ref.argmax(1) != y)
    if attack.eps is not None:
        assert bool((attack.norm.measure(res.x_adv - x) <= attack.eps * (1 + 1e-6)).all())
    assert bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())


def test_bf16_is_about_as_strong_as_fp32_on_digits() -> None:
    _, _, x, y = digits_data()
    x, y, model = x[:200], y[:200], digits_model()
    accs = {}
    for precision in ("fp32", "bf16"):
        attack = advkit.PGD(eps=0.1, steps=10, precision=precision)  # type: ignore[arg-type]
        accs[precision] = attack(
            model, x, y, generator=torch.Generator().manual_seed(0)
        ).robust_accuracy()
    assert abs(accs["bf16"] - accs["fp32"]) <= 0.03, accs


# --------------------------------------------------------------------------- channels_last


@pytest.mark.parametrize(
    "attack",
    [
        advkit.FGSM(eps=0.1),
        advkit.PGD(norm="linf", eps=0.1, steps=2),
        advkit.PGD(norm="l2", eps=0.5, steps=2, early_stop=True),
        advkit.PGD(norm="l1", eps=2.0, steps=2),
        advkit.PGD(norm="linf", eps=0.1, steps=2, precision="bf16"),
        advkit.DeepFool(steps=3),
        advkit.CW(steps=3, search_steps=1),
        advkit.UniformNoise(eps=0.1),
    ],
    ids=repr,
)
def test_channels_last_end_to_end(attack: advkit.Attack) -> None:
    model = conv_mlp().to(memory_format=torch.channels_last)
    x = torch.rand(5, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 3, 4])
    res = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert res.x_adv.is_contiguous(memory_format=torch.channels_last)
    ref = attack(model, x.contiguous(), y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.x_adv, ref.x_adv, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- fused step


@pytest.mark.parametrize("norm", [advkit.Linf(), advkit.L2(), advkit.L1(q=0.1)], ids=str)
def test_compiled_step_agrees_with_the_reference(norm: advkit.Norm) -> None:
    """In float64, where the sign of a coordinate is never decided by rounding; the reference
    step over a region is the specification's pgd_step."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 5, 5, generator=g, dtype=torch.float64)
    x = (x0 + 0.05 * torch.randn(x0.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    grad = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    step = _fused.compiled_step()
    for eps, alpha in [(0.03, 0.01), (torch.linspace(0.01, 0.5, 6, dtype=torch.float64), 0.02)]:
        region = norm.region(x0, eps, (0.0, 1.0))
        ref = F.pgd_step(x, x0, grad, norm=norm, eps=eps, step_size=alpha, bounds=(0.0, 1.0))
        torch.testing.assert_close(_fused.reference_step(region, x, grad, alpha), ref)
        torch.testing.assert_close(step(region, x, grad, alpha), ref)


def test_dispatcher_uses_the_reference_on_cpu() -> None:
    x = torch.rand(2, 3)
    region = advkit.Linf().region(x, 0.1, (0, 1))
    out = _fused.step(region, x, torch.ones(2, 3), 0.1)
    ref = F.pgd_step(
        x, x, torch.ones(2, 3), norm=advkit.Linf(), eps=0.1, step_size=0.1, bounds=(0, 1)
    )
    assert torch.equal(out, ref)
    assert not _fused._worth_fusing(x)


# --------------------------------------------------------------------------- early stop


class Recorder(nn.Module):
    """Records every input the model sees."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        out: Tensor = self.net(x)
        return out

    @property
    def sizes(self) -> list[int]:
        """The batch size of every pass."""
        return [seen.shape[0] for seen in self.seen]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_early_stop_finds_the_same_successes_and_shrinks_the_batch(norm: str) -> None:
    _, _, x, y = digits_data()
    x, y = x[:200], y[:200]
    eps = 0.1 if norm == "linf" else 1.0
    probe = Recorder(digits_model())
    common = {"norm": norm, "eps": eps, "steps": 12, "restarts": 2}
    full = advkit.PGD(**common)(probe, x, y, generator=torch.Generator().manual_seed(0))
    probe.seen.clear()
    fast = advkit.PGD(**common, early_stop=True)(
        probe, x, y, generator=torch.Generator().manual_seed(0)
    )
    # The same samples are broken (up to a sample whose trajectory a different batch
    # composition changed by rounding).
    assert (fast.success != full.success).sum() <= 1
    assert 0.2 < fast.success_rate < 1.0
    # Samples that succeed stop moving: their result is a successful iterate, feasible.
    assert bool((fast.distance <= eps * (1 + 1e-5)).all())
    # Eager: the model sees exactly the samples still running.
    assert min(probe.sizes) < 200
    assert sum(probe.sizes) < 0.8 * 200 * (2 * 12 + 3)
    assert any(size not in {math.ceil(200 / 2**k) for k in range(9)} for size in probe.sizes)


@pytest.mark.parametrize("eps", [0.1, 0.05])  # 0.05: over half the batch runs on
@pytest.mark.parametrize("cls", [advkit.PGD, advkit.APGD])
def test_early_stop_pads_the_batch_to_few_sizes_for_compiled_code(cls: Any, eps: float) -> None:
    """With compile=, the rows a compiled model sees come in batch sizes ceil(B / 2**k)
    (the padding repeats a running sample, also at the full size once some are done, so
    a broken sample never runs again); the result is the eager one, point for point."""
    _, _, x, y = digits_data()
    x, y = x[:200], y[:200]
    model = advkit.wrap(digits_model())
    sizes: list[int] = []

    def compiled(inputs: torch.Tensor) -> torch.Tensor:
        sizes.append(inputs.shape[0])
        out: torch.Tensor = model(inputs)
        return out

    model._compiled["default"] = compiled
    common: dict[str, Any] = {"eps": eps, "steps": 12, "restarts": 3, "early_stop": True}
    try:
        padded = cls(**common, compile=True)(
            model, x, y, generator=torch.Generator().manual_seed(0)
        )
    finally:
        model._compiled.clear()
    eager = cls(**common)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert set(sizes) <= {math.ceil(200 / 2**k) for k in range(9)}
    assert min(sizes) < 200 or eps < 0.1
    assert torch.equal(padded.success, eager.success)
    assert torch.allclose(padded.x_adv, eager.x_adv, atol=1e-6, rtol=0)


def test_early_stop_skips_restarts_once_everything_succeeds() -> None:
    probe = Recorder(conv_mlp())
    x, y = torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    res = advkit.PGD(eps=1.0, steps=8, restarts=5, early_stop=True)(
        probe, x, y, generator=torch.Generator().manual_seed(0)
    )
    assert bool(res.success.all())
    assert len(probe.sizes) < 8


def test_attacks_starting_at_the_clean_input_reuse_the_clean_pass() -> None:
    """FGSM and BIM take their first gradient from the clean forward pass: no second forward."""
    model = conv_mlp()
    x, y = torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    fgsm = advkit.FGSM(eps=0.05)(model, x, y)
    assert (fgsm.forward_passes, fgsm.backward_passes) == (2, 1)  # clean+gradient, verdict
    bim = advkit.BIM(eps=0.05, steps=5)(model, x, y)
    assert (bim.forward_passes, bim.backward_passes) == (6, 5)
    # The reused pass gives the very same gradient as a fresh one: the same step, up to the
    # rounding towards x that keeps x_adv exactly in the ball.
    xg = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(xg), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xg)
    step = (x.double() + 0.05 * g.sign().double()).clamp(0, 1)
    torch.testing.assert_close(fgsm.x_adv.double(), step, atol=1e-7, rtol=0)
    assert bool(((fgsm.x_adv.double() - x.double()).abs() <= 0.05).all())
    # In reduced precision the bf16 gradient pass at the clean input runs the call's checks,
    # and the verdict on x_adv is a full-precision forward: still 2 forward passes.
    half = advkit.FGSM(eps=0.05, precision="bf16")(model, x, y)
    assert (half.forward_passes, half.backward_passes) == (2, 1)
    bim_half = advkit.BIM(eps=0.05, steps=5, precision="bf16")(model, x, y)
    assert (bim_half.forward_passes, bim_half.backward_passes) == (7, 5)  # + verdict


@pytest.mark.parametrize("restarts", [1, 3])
@pytest.mark.parametrize("targets", [None, "tensor", "shift", "random"])
def test_pgd_from_a_random_start_makes_no_clean_pass(restarts: int, targets: str | None) -> None:
    """PGD-k from a random start costs k forward + backward passes and one forward to score
    the last iterate of each restart; the model never sees the clean input."""
    probe = Recorder(conv_mlp())
    x, y = torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    spec: Any = {
        None: None,
        "tensor": (y + 2) % 5,
        "shift": advkit.targets.shift(1),
        "random": advkit.targets.random(),
    }[targets]
    res = advkit.PGD(eps=0.05, steps=4, restarts=restarts)(
        probe, x, y, targets=spec, generator=torch.Generator().manual_seed(0)
    )
    assert (res.forward_passes, res.backward_passes) == (restarts * 5, restarts * 4)
    assert len(probe.seen) == restarts * 5
    assert not any(torch.equal(seen, x) for seen in probe.seen)
    if targets == "shift":
        assert torch.equal(res.targets, (y + 1) % 5)  # type: ignore[arg-type]
    if targets == "random":
        assert res.targets is not None and bool((res.targets != y).all())
    # Without a random start the clean input is the first iterate, from one shared pass.
    probe.seen.clear()
    res = advkit.PGD(eps=0.05, steps=4, random_init=False)(probe, x, y, targets=spec)
    assert (res.forward_passes, res.backward_passes) == (5, 4)
    assert torch.equal(probe.seen[0], x)


def test_target_maps_that_read_the_clean_logits_get_them() -> None:
    """least_likely() and user maps (no ``uses_logits = False``) see the clean logits: PGD
    then makes the one clean pass they need."""
    net = conv_mlp()
    probe = Recorder(net)
    x, y = torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        clean = net(x)
    handed: list[Tensor] = []

    def second_best(logits: Tensor, labels: Tensor, generator: Any) -> Tensor:
        handed.append(logits)
        return logits.scatter(1, labels.unsqueeze(1), -math.inf).argmax(dim=1)

    attack = advkit.PGD(eps=0.05, steps=3)
    res = attack(probe, x, y, targets=second_best)
    assert res.forward_passes == 1 + 4
    assert sum(torch.equal(seen, x) for seen in probe.seen) == 1  # the one clean pass
    assert len(handed) == 1
    torch.testing.assert_close(handed[0], clean)
    ll = attack(net, x, y, targets=advkit.targets.least_likely())
    expected = clean.scatter(1, y.unsqueeze(1), math.inf).argmin(dim=1)
    assert torch.equal(ll.targets, expected)  # type: ignore[arg-type]
    assert ll.forward_passes == 1 + 4


@pytest.mark.parametrize(
    "make",
    [
        lambda: advkit.PGD(eps=0.1, steps=2),  # checks on the first iterate's pass
        lambda: advkit.PGD(eps=0.1, steps=2, random_init=False),  # on the clean graph pass
        lambda: advkit.FGSM(eps=0.1, precision="bf16"),  # on a no-grad clean pass
        lambda: advkit.DeepFool(steps=2, candidates=3),
    ],
    ids=["random-start", "clean-graph", "clean-forward", "minimal-norm"],
)
def test_every_way_a_call_begins_checks_outputs_labels_and_targets(make: Any) -> None:
    model, x, y = conv_mlp(), torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    with pytest.raises(advkit.checks.LabelError, match=r"must lie in \[0, 4\]"):
        make()(model, x, y + 5)
    with pytest.raises(advkit.checks.LabelError, match="targets equal the true labels"):
        make()(model, x, y, targets=y.clone())
    with pytest.raises(advkit.checks.ModelOutputError, match="C >= 2"):
        make()(nn.Sequential(model, nn.Linear(5, 1)), x, y.clamp(max=0))
    with pytest.warns(advkit.checks.ProbabilityOutputWarning):
        make()(nn.Sequential(model, nn.Softmax(dim=1)), x, y)


@pytest.mark.parametrize(
    "attack",
    [
        advkit.PGD(eps=0.05, steps=2, precision="bf16"),
        advkit.FGSM(eps=0.05, precision="bf16"),
        advkit.DeepFool(steps=2, candidates=3, precision="bf16"),
    ],
    ids=["pgd", "fgsm", "deepfool"],
)
def test_reduced_precision_attacks_run_under_no_grad(attack: advkit.Attack) -> None:
    """The cast of autocast logits to float32 stays differentiable under torch.no_grad()."""
    model, x, y = conv_mlp(), torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        res = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    ref = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.x_adv, ref.x_adv)


def test_compiled_models_are_cached_on_the_wrapper_and_die_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One compile per wrapper and mode, reused across calls; no global reference keeps the
    wrapper (or its compiled graphs) alive."""
    compiled: list[nn.Module] = []

    def fake_compile(module: nn.Module, **kwargs: Any) -> nn.Module:
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    clf = advkit.wrap(conv_mlp())
    x, y = torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        advkit.PGD(eps=0.05, steps=2, compile=True)(clf, x, y)
    advkit.PGD(eps=0.05, steps=2, compile="max-autotune")(clf, x, y)
    assert compiled == [clf, clf]
    assert set(clf._compiled) == {"default", "max-autotune"}
    assert copy.deepcopy(clf)._compiled == {}
    assert pickle.loads(pickle.dumps(clf))._compiled == {}
    ref = weakref.ref(clf)
    del clf, compiled[:]
    gc.collect()
    assert ref() is None
