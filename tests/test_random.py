"""Per-sample keyed randomness: draws depend on (seed, sample id) only, not on the batch."""

from __future__ import annotations

import pytest
import torch

import advkit
from advkit import functional as F
from advkit.functional import KeyedGenerator


def test_keyed_draws_do_not_depend_on_the_batch() -> None:
    keys = torch.tensor([10, 3, 7, 42])
    full = KeyedGenerator(5, keys)
    u, n, r = F.rand((4, 6), full), F.randn((4, 6), full), F.randint(0, 9, (4, 6), full)
    part = KeyedGenerator(5, keys[[2, 0]])
    assert torch.equal(F.rand((2, 6), part), u[[2, 0]])
    assert torch.equal(F.randn((2, 6), part), n[[2, 0]])
    assert torch.equal(F.randint(0, 9, (2, 6), part), r[[2, 0]])


def test_subset_continues_each_samples_stream() -> None:
    keys = torch.tensor([10, 3, 7, 42])
    full = KeyedGenerator(5, keys)
    F.rand((4, 3), full)  # one draw before the split
    part = full.subset(torch.tensor([3, 1]))
    assert part.draws == full.draws
    assert torch.equal(F.randbits((2, 5), part), F.randbits((4, 5), full)[[3, 1]])
    assert torch.equal(F.randn((2, 5), part), F.randn((4, 5), full)[[3, 1]])


def test_randbits_keyed_and_plain() -> None:
    keys = torch.arange(300)
    for source in (KeyedGenerator(2, keys), torch.Generator().manual_seed(2)):
        b = F.randbits((300, 400), source)
        assert b.dtype == torch.int64 and int(b.min()) >= 0 and int(b.max()) < 2**62
        assert int(b.max()) >= 2**61  # the top bit is used
        for k in (0, 30, 61):  # each bit is a fair coin
            assert abs(float(((b >> k) & 1).double().mean()) - 0.5) < 0.005
        counts = torch.bincount((b % 3).flatten(), minlength=3).double() / b.numel()
        assert torch.allclose(counts, torch.full_like(counts, 1 / 3), atol=0.004)


@pytest.mark.parametrize("keyed", [True, False])
def test_randbits_ahead_gives_the_draws_of_successive_calls(keyed: bool) -> None:
    """A block of k draws equals k calls of randbits, and the source continues after it as
    after those calls (a keyed source also after a subset; a CPU generator in order)."""

    def source() -> F.RandomSource:
        if keyed:
            return KeyedGenerator(9, torch.tensor([4, 8, 15, 16, 23]))
        return torch.Generator().manual_seed(9)

    one, block = source(), source()
    F.rand((5, 2), one), F.rand((5, 2), block)  # an earlier draw of another kind
    calls = torch.stack([F.randbits((5, 3, 2), one) for _ in range(4)])
    ahead = F.randbits_ahead((5, 3, 2), 4, block)
    assert ahead.shape == (4, 5, 3, 2) and torch.equal(ahead, calls)
    assert torch.equal(F.randbits((5, 7), block), F.randbits((5, 7), one))
    if keyed:
        assert isinstance(one, KeyedGenerator) and isinstance(block, KeyedGenerator)
        rows = torch.tensor([4, 0])
        part_one, part_block = one.subset(rows), block.subset(rows)
        calls = torch.stack([F.randbits((2, 6), part_one) for _ in range(3)])
        assert torch.equal(F.randbits_ahead((2, 6), 3, part_block), calls)
        with pytest.raises(ValueError, match="5 keys"):
            F.randbits_ahead((4, 2), 2, block)


def test_keyed_draws_differ_between_keys_seeds_and_draws() -> None:
    g = KeyedGenerator(0, torch.tensor([0, 1]))
    a, b = F.rand((2, 100), g), F.rand((2, 100), g)
    assert not torch.equal(a[0], a[1])  # keys
    assert not torch.equal(a, b)  # successive draws
    other = F.rand((2, 100), KeyedGenerator(1, torch.tensor([0, 1])))
    assert not torch.equal(other, a)  # seeds


def test_keyed_distributions() -> None:
    g = KeyedGenerator(123, torch.arange(200))
    u = F.rand((200, 1000), g)
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005
    assert abs(float(u.var()) - 1 / 12) < 0.002
    z = F.randn((200, 1000), g, dtype=torch.float64)
    assert z.dtype == torch.float64
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    k = F.randint(2, 7, (200, 1000), g)
    counts = torch.bincount(k.flatten(), minlength=7)[2:].double() / k.numel()
    assert int(k.min()) == 2 and int(k.max()) == 6
    assert torch.allclose(counts, torch.full_like(counts, 0.2), atol=0.005)


def test_keyed_generator_needs_one_key_per_sample() -> None:
    g = KeyedGenerator(0, torch.arange(3))
    with pytest.raises(ValueError, match="3 keys"):
        F.rand((4, 2), g)
    with pytest.raises(ValueError, match="integer"):
        KeyedGenerator(0, torch.zeros(3))


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_attack_with_sample_ids_is_batch_independent(norm: str) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    x = torch.rand(6, 3, 2, 2)
    y = net(x).argmax(1)
    ids = torch.arange(100, 106)
    eps = {"linf": 0.05, "l2": 0.3, "l1": 1.0}[norm]
    # a short step keeps the result close to the random start, so it shows the draws
    attack = advkit.PGD(norm=norm, eps=eps, steps=2, step_size=eps / 10)
    full = attack(net, x, y, generator=torch.Generator().manual_seed(9), sample_ids=ids)
    sub = [4, 1]
    part = attack(
        net, x[sub], y[sub], generator=torch.Generator().manual_seed(9), sample_ids=ids[sub]
    )
    assert torch.allclose(part.x_adv, full.x_adv[sub], atol=1e-6, rtol=0)
    # without ids the draws follow the batch position instead
    plain = attack(net, x[sub], y[sub], generator=torch.Generator().manual_seed(9))
    assert not torch.allclose(plain.x_adv, full.x_adv[sub], atol=1e-6, rtol=0)


def test_random_targets_with_sample_ids() -> None:
    net = torch.nn.Linear(5, 10)
    x, y = torch.rand(8, 5), torch.randint(0, 10, (8,))
    ids = torch.arange(8) * 3
    attack = advkit.FGSM(norm="linf", eps=0.01)
    a = attack(
        net,
        x,
        y,
        targets=advkit.targets.random(),
        sample_ids=ids,
        generator=torch.Generator().manual_seed(1),
    )
    b = attack(
        net,
        x[2:5],
        y[2:5],
        targets=advkit.targets.random(),
        sample_ids=ids[2:5],
        generator=torch.Generator().manual_seed(1),
    )
    assert a.targets is not None and b.targets is not None
    assert torch.equal(a.targets[2:5], b.targets)
    assert bool((a.targets != y).all())


@pytest.mark.parametrize(
    ("ids", "match"),
    [(torch.arange(3), r"shape \(4,\)"), (torch.zeros(4), "integers"), ([0, 1, 2, 3], "tensor")],
)
def test_bad_sample_ids(ids: object, match: str) -> None:
    net = torch.nn.Linear(5, 3)
    with pytest.raises(advkit.InputError, match=match):
        advkit.PGD(eps=0.1)(net, torch.rand(4, 5), torch.zeros(4).long(), sample_ids=ids)  # type: ignore[arg-type]
