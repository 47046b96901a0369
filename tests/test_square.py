"""Square Attack: the paper's search, exact feasibility, per-sample randomness, query counts,
and models it must break where gradient attacks find nothing."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

import advkit
from advkit import functional as F
from advkit.attacks.square import _bump, _patterns, square_fraction, window_sides
from tests._digits import digits_data, digits_model
from tests._models import NUM_CLASSES, make_batch, make_model
from tests.test_contract import assert_feasible
from tests.test_oracles import exact_linf_robust, linear_model


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Quantized(nn.Module):
    """Inputs rounded to ``levels`` grey levels before the network: zero gradient almost
    everywhere, so gradient attacks see nothing."""

    def __init__(self, net: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.net = net
        self.levels = levels

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(torch.round(x * self.levels) / self.levels)
        return out


class ConvOn(nn.Module):
    """A small CNN on ``(B, C, H, W)`` images of any size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 6, 3, padding=1)
        self.head = nn.Linear(6, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))
        return out


# --------------------------------------------------------------------------- the schedule


def test_schedule_halves_p_at_the_papers_iterations() -> None:
    marks = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
    for k, mark in enumerate(marks):
        assert square_fraction(mark, 10000, 0.8) == 0.8 / 2**k
        assert square_fraction(mark + 1, 10000, 0.8) == 0.8 / 2 ** (k + 1)
    assert square_fraction(9999, 10000, 0.8) == 0.8 / 512
    # Other budgets rescale the iteration: at 5,000 queries p halves after iteration 5.
    assert square_fraction(5, 5000, 0.8) == 0.8 and square_fraction(6, 5000, 0.8) == 0.4
    # Without rescaling (AutoAttack's 5000 queries), the marks of a 10,000-query run stay.
    assert square_fraction(10, 5000, 0.8, rescale=False) == 0.8
    assert square_fraction(11, 5000, 0.8, rescale=False) == 0.4
    assert square_fraction(4999, 5000, 0.8, rescale=False) == 0.8 / 128  # 7 marks passed


def test_window_positions_uniform_or_as_the_reference_draws_them() -> None:
    """Uniform: every place the window fits, the last row and column included; the
    reference's: never flush with the bottom or right edge, unless the window spans it."""
    from advkit.attacks.square import _corner

    def seen(sides: tuple[int, int], h: int, w: int, edge: bool) -> tuple[set[int], set[int]]:
        bits = F.randbits((4000, 2), torch.Generator().manual_seed(0))
        c = _corner(bits, sides, h, w, edge)
        return set(c[:, 0].tolist()), set(c[:, 1].tolist())

    assert seen((3, 3), 8, 8, True) == (set(range(6)), set(range(6)))
    assert seen((3, 3), 8, 8, False) == (set(range(5)), set(range(5)))
    assert seen((1, 4), 1, 10, False) == ({0}, set(range(6)))  # a vector: the row spans it
    assert seen((8, 8), 8, 8, False) == ({0}, {0})


def test_the_attack_follows_its_schedule_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """``rescale`` reaches the search: 40 queries stretched run through every halving; on
    the marks of a 10,000-query run they end at the first one."""
    from advkit.attacks import square as square_module

    seen: list[float] = []

    def recording(p: float, *args: Any, **kw: Any) -> tuple[int, int]:
        seen.append(p)
        return window_sides(p, *args, **kw)

    monkeypatch.setattr(square_module, "window_sides", recording)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    for rescale, smallest in ((True, 0.8 / 512), (False, 0.4)):
        seen.clear()
        attack = advkit.Square(eps=1e-3, queries=40, rescale=rescale)
        attack(model, x, y, generator=torch.Generator().manual_seed(0))
        assert min(seen) == smallest and max(seen) == 0.8


@pytest.mark.parametrize("positions", ["uniform", "reference"])
def test_the_attack_follows_its_positions_setting(positions: str) -> None:
    """On 13 x 13 images the L2 start leaves the last row and column alone; with the
    reference's positions no window reaches them either, with uniform ones some do."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(169, 10))
    x = torch.rand(32, 1, 13, 13, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    y = model(x).argmax(1)
    attack = advkit.Square("l2", eps=0.05, queries=60, p_init=0.1, positions=positions)  # type: ignore[arg-type]
    res = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    moved = (res.x_adv != x)[:, 0]
    edge = moved[:, -1, :].any() | moved[:, :, -1].any()
    assert moved.any() and bool(edge) == (positions == "uniform")


def test_window_sides_square_images_and_the_rest() -> None:
    assert window_sides(0.8, 28, 28) == (25, 25)
    assert window_sides(0.8 / 512, 28, 28) == (1, 1)
    assert window_sides(0.8 / 512, 28, 28, minimum=3, odd=True) == (3, 3)
    assert window_sides(0.1, 28, 28, minimum=3, odd=True) == (9, 9)  # round(8.85) = 9
    # Non-square: a square while it fits, then the shorter side, same area, up to the image.
    assert window_sides(0.05, 10, 40) == (4, 4)
    assert window_sides(0.8, 10, 40) == (10, 32)
    assert window_sides(1.0, 10, 40) == (10, 40)
    assert window_sides(0.8, 40, 10) == (32, 10)
    assert window_sides(0.3, 1, 20) == (1, 6)


def test_l2_bump_is_the_papers_nested_rectangles() -> None:
    """The value at Chebyshev distance d from the centre is sum_{k=d}^{K-1} 1 / (k + 1)^2."""
    b = _bump(5, 5, torch.float64, torch.device("cpu"))
    raw = torch.tensor([1 + 1 / 4 + 1 / 9, 1 / 4 + 1 / 9, 1 / 9], dtype=torch.float64)
    ring = torch.tensor(
        [[2, 2, 2, 2, 2], [2, 1, 1, 1, 2], [2, 1, 0, 1, 2], [2, 1, 1, 1, 2], [2, 2, 2, 2, 2]]
    )
    expected = raw[ring]
    torch.testing.assert_close(b, expected / torch.linalg.vector_norm(expected))
    pats = _patterns(6, 6, torch.float64, torch.device("cpu"))
    torch.testing.assert_close(pats[1], pats[0].T)  # the two orientations of a square
    assert bool((pats[0][:3] > 0).all()) and bool((pats[0][3:] < 0).all())
    torch.testing.assert_close(pats.flatten(1).norm(dim=1), torch.ones(2, dtype=torch.float64))


def test_l1_bump_decays_as_the_fourth_power_with_unit_l1_norm() -> None:
    """Croce & Hein's L1 update (ICML 2021): the same rings, sum_{k=d}^{K-1} 1 / (k + 1)^4."""
    b = _bump(5, 5, torch.float64, torch.device("cpu"), power=4)
    raw = torch.tensor([1 + 1 / 16 + 1 / 81, 1 / 16 + 1 / 81, 1 / 81], dtype=torch.float64)
    ring = torch.tensor(
        [[2, 2, 2, 2, 2], [2, 1, 1, 1, 2], [2, 1, 0, 1, 2], [2, 1, 1, 1, 2], [2, 2, 2, 2, 2]]
    )
    expected = raw[ring]
    torch.testing.assert_close(b, expected / expected.sum())
    pats = _patterns(5, 5, torch.float64, torch.device("cpu"), power=4)
    torch.testing.assert_close(pats[1], pats[0].T)
    assert bool((pats[0][:2] > 0).all()) and bool((pats[0][2:] < 0).all())
    # each half carries half the mass (the reference's halves, each of unit L1, then halved)
    torch.testing.assert_close(pats[0][:2].sum(), torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(pats.abs().flatten(1).sum(1), torch.ones(2, dtype=torch.float64))


# --------------------------------------------------------------------------- the start


class Recorder(nn.Module):
    """Records every batch it is queried on; the margin never changes (nothing breaks)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        ones = torch.ones(x.shape[0], dtype=x.dtype)
        return torch.stack([2 * ones, 0 * ones], dim=1)


def test_linf_start_is_vertical_stripes() -> None:
    """Away from the box edges every column of every channel moves by +eps or -eps, the
    same all the way down; one query per sample."""
    model = Recorder()
    x = 0.3 + 0.4 * torch.rand(6, 3, 7, 5, generator=seeded(1))
    res = advkit.Square(eps=0.1, queries=1)(model, x, torch.zeros(6).long(), generator=seeded())
    clean, start = model.seen  # the verdict reuses the start's logits
    assert torch.equal(clean, x) and res.queries.tolist() == [1] * 6  # type: ignore[union-attr]
    d = (start.double() - x.double()) / 0.1
    assert torch.allclose(d.abs(), torch.ones_like(d), atol=1e-5)
    assert bool((d.sign() == d.sign()[:, :, :1, :]).all())  # constant down each column
    assert not torch.equal(d[0], d[1])  # per sample


def test_l2_start_has_norm_eps_in_a_grid_of_bumps() -> None:
    model = Recorder()
    x = torch.full((4, 1, 10, 10), 0.5)
    advkit.Square(norm="l2", eps=0.5, queries=1)(
        model, x, torch.zeros(4).long(), generator=seeded()
    )
    d = (model.seen[1] - x).double()
    n = d.flatten(1).norm(dim=1)
    assert bool((n <= 0.5).all()) and bool((n > 0.5 * (1 - 1e-5)).all())
    assert bool((d != 0).all())  # 5 x 5 bumps of 2 x 2 tile the whole 10 x 10 image
    assert not torch.equal(d[0], d[1])  # signs and orientations are per sample


def test_l1_start_is_the_grid_of_bumps_projected_onto_the_ball() -> None:
    """The tiles carry far more than eps of L1 mass; the exact projection keeps the largest
    coordinates (the bumps' centres) and zeroes the rest."""
    model = Recorder()
    x = torch.full((4, 1, 10, 10), 0.5)
    advkit.Square(norm="l1", eps=2.0, queries=1)(
        model, x, torch.zeros(4).long(), generator=seeded()
    )
    d = (model.seen[1] - x).double()
    n = d.abs().flatten(1).sum(dim=1)
    assert bool((n <= 2.0).all()) and bool((n > 2.0 * (1 - 1e-5)).all())
    nonzero = (d != 0).flatten(1).sum(dim=1)
    assert bool((nonzero >= 25).all()) and bool((nonzero < 100).all())  # sparse, every tile
    assert not torch.equal(d[0], d[1])


@pytest.mark.parametrize("channels", [1, 3])
def test_l1_queries_spend_the_whole_budget(channels: int) -> None:
    """Away from the box, every L1 query lies on the sphere of radius eps: a proposal moves
    mass between windows and gives the new window what the budget has left."""
    model = Recorder()
    x = torch.full((3, channels, 9, 9), 0.5)
    advkit.Square(norm="l1", eps=1.5, queries=30)(
        model, x, torch.zeros(3).long(), generator=seeded()
    )
    for q in model.seen[1:]:
        n = (q - x).double().abs().flatten(1).sum(dim=1)  # float32 points: rounding below 1e-4
        assert bool((n <= 1.5).all()) and bool((n > 1.5 * (1 - 1e-4)).all())


def test_l1_proposal_follows_the_reference_rule() -> None:
    """From the clean point, a proposal puts, per channel, a bump of mass eps (the unused
    budget shared by the c channels, times c: the reference's rule) into the window, and
    projects the result onto the L1 ball and the box."""
    from advkit.attacks.square import _L1Search

    x0 = torch.full((1, 3, 7, 7), 0.5, dtype=torch.float64)
    eps = 0.6
    search = _L1Search((3, 7, 7), torch.device("cpu"), edge=False)
    const = {
        "x0": x0.flatten(2),
        "eps": torch.full((1, 1, 1), eps, dtype=torch.float64),
        "region": advkit.L1().region(x0, eps, (0.0, 1.0), exact=True),
    }
    draw = {
        "sides": (5, 5),
        "corner": torch.tensor([[1, 2]]),
        "corner2": torch.tensor([[0, 0]]),
        "turn": torch.tensor([1]),
        "sign": torch.tensor([[1, 0, 1]]),
    }
    out = search.propose(x0, const, draw, torch.tensor([False]))
    bump = _patterns(5, 5, torch.float64, torch.device("cpu"), power=4)[1]
    raw = torch.zeros_like(x0)
    for ch, sign in enumerate((1.0, -1.0, 1.0)):
        raw[0, ch, 1:6, 2:7] = sign * eps * bump
    expected = F.l1_box_project(raw, x0, eps, (0.0, 1.0))
    torch.testing.assert_close(out - x0, expected, atol=1e-9, rtol=0)
    assert float((out - x0).abs().sum()) == pytest.approx(eps, rel=1e-5)


# --------------------------------------------------------------------------- the search


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_exactly_feasible_at_the_box_edges_with_per_sample_eps(norm: str, dtype: Any) -> None:
    torch.manual_seed(0)
    model = ConvOn(2).to(dtype)
    g = seeded(2)
    x = torch.rand(5, 2, 6, 6, generator=g)
    x[:, :, :2] = torch.randint(0, 2, (5, 2, 2, 6), generator=g).float()  # pixels at 0 and 1
    x = x.to(dtype)
    y = torch.randint(0, NUM_CLASSES, (5,), generator=g)
    eps = torch.tensor([0.0, 0.03, 0.1, 0.3, 1.0]) * {"linf": 1, "l2": 5, "l1": 20}[norm]
    res = advkit.Square(norm=norm, queries=40)(model, x, y, eps=eps, generator=seeded())
    assert res.x_adv.dtype == dtype
    assert_feasible(res, x, norm, eps)
    assert torch.equal(res.x_adv[0], x[0])
    if norm == "linf" and dtype != torch.bfloat16:
        # Every searched coordinate sits at a vertex of the ball cut by the box, exactly.
        lo, hi = F.linf_box(x, eps, (0.0, 1.0))
        searched = (res.queries > 0).reshape(-1, 1, 1, 1)
        vertex = (res.x_adv == lo) | (res.x_adv == hi)
        assert bool((vertex | ~searched).all())


def test_a_proposal_is_kept_only_if_it_strictly_improves() -> None:
    """A model whose margin is the same at every point but the clean one: the start is kept
    (it improves on the clean point), no later proposal is (they only tie)."""

    class Plateau(nn.Module):
        def __init__(self, x0: Tensor) -> None:
            super().__init__()
            self.x0 = x0

        def forward(self, x: Tensor) -> Tensor:
            moved = (x != self.x0).flatten(1).any(dim=1).float()
            return torch.stack([2.0 - 0.5 * moved, torch.full_like(moved, 0.5)], dim=1)

    x = 0.2 + 0.6 * torch.rand(4, 1, 6, 6, generator=seeded(3))
    y = torch.zeros(4, dtype=torch.long)
    model = Plateau(x)
    for norm in ("linf", "l2", "l1"):
        start = advkit.Square(norm=norm, eps=0.1, queries=1)(model, x, y, generator=seeded(5))
        res = advkit.Square(norm=norm, eps=0.1, queries=30)(model, x, y, generator=seeded(5))
        assert not torch.equal(start.x_adv, x)
        assert torch.equal(res.x_adv, start.x_adv)
        assert res.queries.tolist() == [30] * 4


def test_linf_never_queries_a_proposal_that_changes_nothing() -> None:
    """On a one-channel vector with windows of one coordinate, half of the sign draws would
    leave the point as it is; those are redrawn, so every query sees a new point."""
    model = Recorder()
    x = torch.full((3, 4), 0.5)
    res = advkit.Square(eps=0.1, queries=40, p_init=0.05)(
        model, x, torch.zeros(3, dtype=torch.long), generator=seeded()
    )
    queries = model.seen[1:]  # the clean pass aside
    assert len(queries) == 40 and res.queries.tolist() == [40] * 3  # type: ignore[union-attr]
    # The point never moves (every proposal ties with the start), and each proposal differs.
    for q in queries[1:]:
        assert bool((q != queries[0]).flatten(1).any(dim=1).all())


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_results_do_not_depend_on_the_batch_with_sample_ids(norm: str) -> None:
    model, shape = make_model("conv")
    model.eval()
    x, y = make_batch(shape, batch=12)
    attack = advkit.Square(norm=norm, eps={"linf": 0.05, "l2": 0.3, "l1": 1.0}[norm], queries=40)
    whole = attack(model, x, y, generator=seeded(7), sample_ids=torch.arange(12))
    order = torch.tensor([11, 3, 7, 0, 5])
    rest = torch.tensor([i for i in range(12) if i not in order.tolist()])
    parts = [
        attack(model, x[idx], y[idx], generator=seeded(7), sample_ids=idx) for idx in (order, rest)
    ]
    searched = whole.queries > 0  # type: ignore[operator]
    assert 0 < int((whole.success & searched).sum()) < int(searched.sum())  # informative
    for idx, part in zip((order, rest), parts, strict=True):
        assert torch.equal(part.x_adv, whole.x_adv[idx])
        assert torch.equal(part.success, whole.success[idx])
        assert torch.equal(part.queries, whole.queries[idx])  # type: ignore[index]
    other = attack(model, x, y, generator=seeded(8), sample_ids=torch.arange(12))
    assert not torch.equal(other.x_adv, whole.x_adv)  # the seed matters


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize(
    ("shape", "kind"),
    [((1, 5, 9), "image"), ((3, 9, 4), "image"), ((7,), "vector"), ((4, 9), "signal")],
)
def test_any_image_shape_vectors_and_signals(norm: str, shape: tuple[int, ...], kind: str) -> None:
    torch.manual_seed(0)
    model: nn.Module
    if kind == "image":
        model = ConvOn(shape[0])
    elif kind == "vector":
        model, _ = make_model("mlp")
    else:
        model, _ = make_model("seq")
    model.eval()
    x, y = make_batch(shape, batch=8)
    eps = {"linf": 0.3, "l2": 1.5, "l1": 4.0}[norm]
    res = advkit.Square(norm=norm, eps=eps, queries=60)(model, x, y, generator=seeded())
    assert_feasible(res, x, norm, eps)
    assert res.x_adv.shape == x.shape
    assert res.success_rate > 0  # the search moves, whatever the shape


def test_inputs_with_more_axes_are_refused_with_the_fix() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 4 * 4, 3))
    x = torch.rand(2, 2, 3, 4, 4)
    with pytest.raises(advkit.InputError, match="Reshape them"):
        advkit.Square(eps=0.1, queries=5)(model, x, torch.tensor([0, 1]))


def test_settings_are_checked() -> None:
    with pytest.raises(advkit.ConfigError, match="p_init"):
        advkit.Square(eps=0.1, p_init=1.5)
    with pytest.raises(advkit.ConfigError, match="queries"):
        advkit.Square(eps=0.1, queries=0)
    with pytest.raises(advkit.ConfigError, match="positions"):
        advkit.Square(eps=0.1, positions="edge")  # type: ignore[arg-type]
    assert "queries=100" in repr(advkit.Square(eps=0.1, queries=100))


# --------------------------------------------------------------------------- query counts


def test_query_counts() -> None:
    _, _, x, y = digits_data()
    x, y = x[:40], y[:40].clone()
    model = digits_model()
    y[:3] = (y[:3] + 1) % 10  # three samples the model already gets wrong
    # Nothing breaks within a tiny budget: every searched sample spends the whole budget.
    q, restarts = 17, 2
    res = advkit.Square(eps=1e-6, queries=q, restarts=restarts)(model, x, y, generator=seeded())
    assert res.queries is not None and res.queries.dtype == torch.int64
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    assert bool(wrong[:3].all())
    assert torch.equal(res.queries, torch.where(wrong, 0, q * restarts))
    assert res.forward_passes == 1 + q * restarts  # the clean pass, then the queries
    # A large budget: most break at once or early, none spends more than the budget.
    res = advkit.Square(eps=0.3, queries=200)(model, x, y, generator=seeded())
    assert bool((res.queries[wrong] == 0).all()) and bool((res.queries <= 200).all())
    assert float(res.success[~wrong].float().mean()) > 0.9
    assert int((res.queries == 1).sum()) > 0  # broken by the start
    assert float(res.queries[~wrong].float().mean()) < 20
    assert res.forward_passes < 200


def test_the_loop_syncs_with_the_host_only_every_few_iterations() -> None:
    model, shape = make_model("conv")
    model.eval()
    x, y = make_batch(shape, batch=8)

    def syncs(queries: int) -> Counter[str]:
        attack = advkit.Square(eps=1e-6, queries=queries)  # nothing breaks: the whole loop
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            attack(model, x, y, generator=seeded())
        keys = ("aten::nonzero", "aten::_local_scalar_dense", "aten::item")
        return Counter({e.key: e.count for e in prof.key_averages() if e.key in keys})

    every = advkit.Square._look_every
    few, more = syncs(1 + 2 * every), syncs(1 + 5 * every)
    assert more["aten::nonzero"] - few["aten::nonzero"] == 3  # one look per `every` iterations
    assert more["aten::_local_scalar_dense"] == few["aten::_local_scalar_dense"]
    assert more["aten::item"] == few["aten::item"]


# --------------------------------------------------------------------------- strength


def test_breaks_a_quantized_model_where_gradient_attacks_find_nothing() -> None:
    _, _, x, y = digits_data()
    x, y = x[:100], y[:100]
    model = Quantized(digits_model())
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    assert clean > 0.95
    eps = 0.15
    pgd = advkit.PGD(eps=eps, steps=20)(model, x, y, generator=seeded()).robust_accuracy()
    apgd = advkit.APGD(eps=eps, steps=20)(model, x, y, generator=seeded()).robust_accuracy()
    square = advkit.Square(eps=eps, queries=100)(model, x, y, generator=seeded()).robust_accuracy()
    assert pgd > clean - 0.05 and apgd > clean - 0.05  # gradients find ~nothing
    assert square < 0.25  # the search breaks most of them


def test_l1_breaks_a_quantized_model_where_apgd_finds_little() -> None:
    _, _, x, y = digits_data()
    x, y = x[:100], y[:100]
    model = Quantized(digits_model())
    eps = 3.0
    apgd = advkit.APGD("l1", eps=eps, steps=20)(model, x, y, generator=seeded())
    square = advkit.Square("l1", eps=eps, queries=100)(model, x, y, generator=seeded())
    assert_feasible(square, x, "l1", eps)
    assert apgd.robust_accuracy() > 0.85
    assert square.robust_accuracy() < 0.4


def test_close_to_the_exact_worst_case_of_a_linear_model() -> None:
    """Multiclass linear model, Linf: the exact robust accuracy is known in closed form. A
    search over vertices gets close; random noise of the same budget does not."""
    g = seeded(1)
    d, c, n, eps = 10, 4, 400, 0.15
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64) * 0.2
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    y = (x @ w.T + b).argmax(1)
    y = torch.where(torch.rand(n, generator=g) < 0.1, (y + 1) % c, y)
    exact = exact_linf_robust(w, b, x, y, eps).double().mean().item()
    model = linear_model(w, b)
    square = advkit.Square(eps=eps, queries=100)(model, x, y, generator=seeded()).robust_accuracy()
    noise = advkit.UniformNoise(eps=eps, restarts=100)(model, x, y, generator=seeded())
    assert exact <= square <= exact + 0.02, (square, exact)
    assert noise.robust_accuracy() > exact + 0.05


def test_targeted() -> None:
    _, _, x, y = digits_data()
    x, y = x[:30], y[:30]
    model = digits_model()
    res = advkit.Square(eps=0.3, queries=150)(
        model, x, y, targets=advkit.targets.shift(1), generator=seeded()
    )
    assert torch.equal(res.targets, (y + 1) % 10)  # type: ignore[arg-type]
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == res.targets)
    assert res.success_rate > 0.7


def test_in_an_ensemble_after_a_gradient_attack() -> None:
    """AutoAttack's shape: APGD first, Square on what is left; the clean pass is shared."""
    _, _, x, y = digits_data()
    x, y = x[:50], y[:50]
    model = Quantized(digits_model())
    ens = advkit.Ensemble([advkit.APGD(steps=5), advkit.Square(queries=60)], eps=0.15)
    res = ens(model, x, y, generator=seeded())
    apgd, square = (part.result for part in res.parts)
    assert square.queries is not None and res.queries is None
    assert square.success_rate > 0.5
    assert res.forward_passes == 1 + apgd.forward_passes + square.forward_passes


# --------------------------------------------------------------------------- execution


class DtypeProbe(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seen: list[torch.dtype] = []

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        self.seen.append(out.dtype)
        return out


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_queries_in_bf16_verdict_in_fp32(norm: str) -> None:
    _, _, x, y = digits_data()
    x, y = x[:40], y[:40]
    probe = DtypeProbe(digits_model())
    eps = {"linf": 0.2, "l2": 1.0, "l1": 3.0}[norm]
    res = advkit.Square(norm=norm, eps=eps, queries=30, precision="bf16")(
        probe, x, y, generator=seeded()
    )
    assert probe.seen.count(torch.bfloat16) == res.forward_passes - 2  # the queries
    assert probe.seen[0] == probe.seen[-1] == torch.float32  # clean pass and verdict
    assert_feasible(res, x, norm, eps)
    with torch.no_grad():
        ref = probe.net(res.x_adv)
    assert torch.equal(res.logits, ref)
    assert torch.equal(res.success, ref.argmax(1) != y)
    assert res.success_rate > 0.1


def test_queries_run_through_the_compiled_model() -> None:
    """compile=True routes the queries through the model's compiled form (here a stand-in
    that counts its calls; the clean pass and the verdict stay eager)."""
    model = advkit.wrap(digits_model())
    _, _, x, y = digits_data()
    x, y = x[:20], y[:20]
    calls: list[int] = []

    def compiled(inputs: Tensor) -> Tensor:
        calls.append(inputs.shape[0])
        out: Tensor = model(inputs)
        return out

    model._compiled["default"] = compiled
    try:
        res = advkit.Square(eps=0.1, queries=25, compile=True)(model, x, y, generator=seeded())
        eager = advkit.Square(eps=0.1, queries=25)(model, x, y, generator=seeded())
    finally:
        model._compiled.clear()
    assert len(calls) == res.forward_passes - 1  # every pass but the clean one
    assert torch.equal(res.x_adv, eager.x_adv)


def test_command_line_name() -> None:
    from advkit.cli import parse_attack

    _label, attack = parse_attack("square:queries=50,p_init=0.3,restarts=2", "l2")
    assert isinstance(attack, advkit.Square) and str(attack.norm) == "l2"
    assert (attack.queries, attack.p_init, attack.restarts) == (50, 0.3, 2)
