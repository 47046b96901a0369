"""The attack contract on CUDA tensors, reduced precision on a GPU, and CPU/GPU agreement.

Every test here needs a CUDA device and is skipped without one; ``bash benchmarks/gpu.sh``
runs them (with tests/test_throughput.py's CUDA tests) on a machine that has one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import advkit
from advkit.attacks import Attack
from tests._digits import digits_data, digits_model
from tests._models import NUM_CLASSES, make_batch, make_model
from tests.attack_db import CASE_IDS, CASES, AttackInfo
from tests.test_contract import (
    REDUCED,
    assert_feasible,
    assert_same_model,
    fresh_success,
    prepared_model,
    snapshot,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cuda_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


@pytest.mark.parametrize("targeting", ["untargeted", "tensor"])
@pytest.mark.parametrize(("info", "name", "norm", "eps"), CASES, ids=CASE_IDS)
def test_contract_on_cuda(
    info: AttackInfo, name: str, norm: str, eps: float, targeting: str
) -> None:
    """Every attack configuration on CUDA tensors (channels_last, a model in train mode with
    a frozen parameter and a .grad): feasible exactly, on the inputs' device and layout,
    nothing of the caller's touched, neither the CPU nor the CUDA global RNG used, and the
    same result from the same CUDA generator."""
    model = prepared_model("conv").cuda()
    _, shape = make_model("conv")
    x, y = (t.cuda() for t in make_batch(shape))
    x = x.contiguous(memory_format=torch.channels_last)
    targets = (y + 2) % NUM_CLASSES if targeting == "tensor" else None
    x_in, y_in = x.clone(), y.clone()
    before = snapshot(model)
    cpu_rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state()
    attack = info.make(norm, eps)
    if targets is not None and not info.targetable:  # it chooses its own targets
        with pytest.raises(advkit.ConfigError, match="targets"):
            attack(model, x, y, targets=targets, eps=eps, generator=cuda_generator(3))
        assert_same_model(before, model)
        assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)
        return
    res = attack(model, x, y, targets=targets, eps=eps, generator=cuda_generator(3))
    assert res.x_adv.device == x.device and res.success.device == x.device
    assert res.x_adv.dtype == x.dtype
    assert res.x_adv.is_contiguous(memory_format=torch.channels_last)
    assert_feasible(res, x, norm, eps)
    assert torch.equal(x, x_in) and torch.equal(y, y_in)
    assert_same_model(before, model)
    assert torch.equal(torch.get_rng_state(), cpu_rng), "the CPU global RNG was used"
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng), "the CUDA global RNG was used"
    assert torch.equal(res.success, fresh_success(model, res))
    again = attack(model, x, y, targets=targets, eps=eps, generator=cuda_generator(3))
    assert torch.equal(again.x_adv, res.x_adv)
    assert torch.equal(again.success, res.success)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("name", list(REDUCED))
def test_reduced_precision_on_cuda(name: str, norm: str, precision: str) -> None:
    """float32 inputs, the search in bf16/fp16 under autocast on the GPU: the returned points
    are float32, feasible exactly, and their success is a fresh float32 verdict."""
    eps = {"linf": 0.3, "l2": 0.5, "l1": 2.0}[norm]
    model, shape = make_model("conv")
    model = model.cuda().eval()
    x, y = (t.cuda() for t in make_batch(shape, batch=16))
    res = REDUCED[name](norm, eps, precision)(model, x, y, generator=cuda_generator(0))
    assert res.x_adv.dtype == torch.float32
    assert_feasible(res, x, norm, eps)
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(dim=1) != y)


@pytest.mark.parametrize(
    ("make", "norm", "eps"),
    [
        (lambda: advkit.APGD(eps=0.1, steps=20), "linf", 0.1),
        (lambda: advkit.FAB(norm="l2", eps=0.6, steps=20), "l2", 0.6),
        (lambda: advkit.Square(eps=0.1, queries=300), "linf", 0.1),
        (
            lambda: advkit.AutoAttack("linf", 0.1, version="fast", steps=20, queries=300),
            "linf",
            0.1,
        ),
    ],
    ids=["apgd", "fab", "square", "autoattack-fast"],
)
def test_cuda_is_as_strong_as_cpu_on_digits(
    make: Callable[[], Attack], norm: str, eps: float
) -> None:
    """The same attack on a trained model, CPU vs GPU: the devices' generators draw
    differently, so the success rates agree to a few points rather than exactly."""
    model = digits_model()
    _, _, xte, yte = digits_data()
    x, y = xte[:200], yte[:200]
    cpu = make()(model, x, y, generator=torch.Generator().manual_seed(0))
    gpu = make()(on_cuda(model), x.cuda(), y.cuda(), generator=cuda_generator(0))
    assert_feasible(gpu, x.cuda(), norm, eps)
    gap = abs(float(cpu.success.float().mean()) - float(gpu.success.float().mean()))
    assert gap <= 0.03, (
        f"CPU {cpu.success.float().mean():.3f} vs CUDA {gpu.success.float().mean():.3f}"
    )


def on_cuda(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cuda()


def test_evaluate_on_cuda_matches_cpu_with_deterministic_attacks() -> None:
    """evaluate() over a CPU dataset with device="cuda": batches move to the GPU, and an
    attack without random draws (APGD from the clean input) gives the CPU's report up to a
    sample or two that float rounding on the other device can flip."""
    model = digits_model()
    _, _, xte, yte = digits_data()
    data = TensorDataset(xte[:128], yte[:128])
    attack = advkit.APGD(eps=0.1, steps=10, random_init=False)
    cpu = advkit.evaluate(model, data, attack, eps=[0.05, 0.1], batch_size=64, progress=False)
    gpu = advkit.evaluate(
        on_cuda(model), data, attack, eps=[0.05, 0.1], batch_size=64, device="cuda", progress=False
    )
    assert gpu.clean_accuracy == cpu.clean_accuracy
    for a, b in zip(gpu.robust_accuracy(), cpu.robust_accuracy(), strict=True):
        assert abs(a - b) <= 2 / 128
