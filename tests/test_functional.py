"""Properties of the norm kernels (functional.py / norms.py), checked with hypothesis."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from advkit import functional as F
from advkit.norms import L1, L2, Linf, Norm, resolve_norm

NORMS: list[Norm] = [Linf(), L2(), L1(q=0.25), L1(q=1e-6)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
ORDERS = {"linf": math.inf, "l2": 2.0, "l1": 1.0}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def exact(x: torch.Tensor, norm: Norm) -> torch.Tensor:
    return torch.linalg.vector_norm(x.double().flatten(1), ord=ORDERS[norm.name], dim=1)


@st.composite
def batches(draw: st.DrawFn) -> dict[str, object]:
    """A batch of any shape and dtype, a norm, and a budget (float or per sample, 0 included)."""
    b = draw(st.integers(1, 4))
    feat = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    dtype = draw(st.sampled_from(DTYPES))
    norm = draw(st.sampled_from(NORMS))
    scale = draw(st.sampled_from([1e-3, 0.1, 1.0, 10.0]))
    seed = draw(st.integers(0, 2**16))
    zero_rows = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn((b, *feat), generator=g, dtype=torch.float64) * scale).to(dtype)
    if zero_rows:
        x[0] = 0
    per_sample = draw(st.booleans())
    eps_vals = draw(
        st.lists(st.sampled_from([0.0, 1e-3, 0.05, 0.5, 2.0, 7.0]), min_size=b, max_size=b)
    )
    eps: float | torch.Tensor = torch.tensor(eps_vals) if per_sample else eps_vals[0]
    channels_last = len(feat) == 3 and draw(st.booleans())
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return {"x": x, "norm": norm, "eps": eps, "b": b, "channels_last": channels_last, "seed": seed}


def eps_tensor(eps: float | torch.Tensor, b: int) -> torch.Tensor:
    return eps.double() if isinstance(eps, torch.Tensor) else torch.full((b,), float(eps)).double()


def assert_layout(out: torch.Tensor, x: torch.Tensor, channels_last: bool) -> None:
    assert out.shape == x.shape and out.dtype == x.dtype
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)


@given(batches())
def test_project_lands_in_ball_and_is_idempotent(case: dict[str, object]) -> None:
    x, norm, eps, b = case["x"], case["norm"], case["eps"], case["b"]
    assert isinstance(x, torch.Tensor) and isinstance(norm, Norm)
    e = eps_tensor(eps, b)  # type: ignore[arg-type]
    tol = TOL[x.dtype]
    p = norm.project(x, eps)  # type: ignore[arg-type]
    assert_layout(p, x, bool(case["channels_last"]))
    assert not bool(torch.isnan(p).any())
    n_in, n_out = exact(x, norm), exact(p, norm)
    assert bool((n_out <= e * (1 + 4 * tol) + 1e-30).all())
    # Points inside the ball are unchanged; points outside end on the boundary.
    inside = n_in <= e
    assert torch.equal(p[inside], x[inside])
    outside = ~inside
    torch.testing.assert_close(n_out[outside], e[outside], rtol=4 * tol, atol=1e-6)
    # Idempotent (up to rounding in low precision).
    pp = norm.project(p, eps)  # type: ignore[arg-type]
    torch.testing.assert_close(pp.double(), p.double(), rtol=4 * tol, atol=4 * tol * float(e.max()))


@given(batches(), st.integers(0, 2**16))
def test_projection_is_euclidean_nearest(case: dict[str, object], seed: int) -> None:
    """No point of the ball is closer to x than its projection (exact for every norm here)."""
    x, norm, eps = case["x"], case["norm"], case["eps"]
    assert isinstance(x, torch.Tensor) and isinstance(norm, Norm)
    x = x.double()
    p = norm.project(x, eps)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed)
    d_p = torch.linalg.vector_norm((x - p).flatten(1), dim=1)
    for _ in range(8):
        z = norm.sample(x, eps, generator=g)  # type: ignore[arg-type]
        d_z = torch.linalg.vector_norm((x - z).flatten(1), dim=1)
        assert bool((d_p <= d_z + 1e-9).all())


@given(batches())
def test_l1_projection_has_soft_threshold_form(case: dict[str, object]) -> None:
    """KKT conditions of the L1 projection: p = sign(x) max(|x| - theta, 0) with one theta >= 0."""
    x, eps, b = case["x"], case["eps"], case["b"]
    assert isinstance(x, torch.Tensor)
    x = x.double().flatten(1)
    p = F.l1_project(x, eps)  # type: ignore[arg-type]
    shrink = x.abs() - p.abs()
    moved = p != 0
    for i in range(b):  # type: ignore[call-overload]
        s = shrink[i][moved[i]]
        if s.numel():
            assert float(s.max() - s.min()) < 1e-9
            theta = float(s[0])
            assert theta >= -1e-12
            assert bool((x[i][~moved[i]].abs() <= theta + 1e-9).all())
        assert bool((torch.sign(p[i]) * torch.sign(x[i]) >= 0).all())


@given(batches())
def test_direction_unit_norm_and_dual(case: dict[str, object]) -> None:
    g, norm = case["x"], case["norm"]
    assert isinstance(g, torch.Tensor) and isinstance(norm, Norm)
    d = norm.direction(g)
    assert_layout(d, g, bool(case["channels_last"]))
    assert not bool(torch.isnan(d).any())
    tol = TOL[g.dtype]
    nonzero = exact(g, norm) > 0
    dn = exact(d, norm)
    torch.testing.assert_close(
        dn[nonzero], torch.ones_like(dn[nonzero]), rtol=4 * tol, atol=4 * tol
    )
    assert bool((dn[~nonzero] == 0).all()), "zero gradient must give a zero direction"
    inner = (g.double() * d.double()).flatten(1).sum(1)
    gd = g.double().flatten(1)
    if isinstance(norm, Linf):
        dual = gd.abs().sum(1)
    elif isinstance(norm, L2):
        dual = torch.linalg.vector_norm(gd, dim=1)
    else:
        dual = gd.abs().amax(1)
    if isinstance(norm, L1) and norm.q > 1e-3:
        # SLIDE spreads the step: <g, d> is the mean of the kept |g_i|, between mean |g| and max |g|.
        assert bool((inner <= dual * (1 + 4 * tol) + 1e-12).all())
        assert bool((inner >= gd.abs().mean(1) * (1 - 4 * tol) - 1e-12).all())
    else:
        torch.testing.assert_close(inner, dual, rtol=8 * tol, atol=1e-12)


@given(batches())
def test_sample_lies_in_ball(case: dict[str, object]) -> None:
    x, norm, eps, b = case["x"], case["norm"], case["eps"], case["b"]
    assert isinstance(x, torch.Tensor) and isinstance(norm, Norm)
    g = torch.Generator().manual_seed(int(case["seed"]))  # type: ignore[call-overload]
    s = norm.sample(x, eps, generator=g)  # type: ignore[arg-type]
    assert_layout(s, x, bool(case["channels_last"]))
    e = eps_tensor(eps, b)  # type: ignore[arg-type]
    assert bool((exact(s, norm) <= e * (1 + 4 * TOL[x.dtype]) + 1e-30).all())


@given(batches(), st.sampled_from([0.01, 0.3, 2.0]))
def test_pgd_step_feasible_and_matches_composition(case: dict[str, object], alpha: float) -> None:
    x0, norm, eps, b = case["x"], case["norm"], case["eps"], case["b"]
    assert isinstance(x0, torch.Tensor) and isinstance(norm, Norm)
    x0 = x0.clamp(-1, 1)
    g = torch.Generator().manual_seed(int(case["seed"]))  # type: ignore[call-overload]
    x = F.clip(x0 + norm.sample(x0, eps, generator=g), (-1.0, 1.0))  # type: ignore[arg-type]
    grad = torch.randn(x0.shape, generator=g).to(x0.dtype)
    out = F.pgd_step(x, x0, grad, norm=norm, eps=eps, step_size=alpha, bounds=(-1.0, 1.0))  # type: ignore[arg-type]
    assert_layout(out, x0, bool(case["channels_last"]))
    e = eps_tensor(eps, b)  # type: ignore[arg-type]
    tol = TOL[x0.dtype]
    assert bool((exact(out - x0, norm) <= e * (1 + 4 * tol) + 4 * tol).all())
    assert float(out.min()) >= -1 and float(out.max()) <= 1
    # The composition it computes, up to the rounding towards x0 that keeps it exactly inside.
    ref = F.clip(x0 + norm.project(x + alpha * norm.direction(grad) - x0, eps), (-1.0, 1.0))  # type: ignore[arg-type]
    torch.testing.assert_close(
        out.double(), ref.double(), atol=4 * tol * (1 + eps_max(eps)), rtol=0
    )
    # Exactly inside the ball, in the returned values themselves.
    assert bool((exact(out.double() - x0.double(), norm) <= e).all())


def eps_max(eps: object) -> float:
    return float(eps.max()) if isinstance(eps, torch.Tensor) else float(eps)  # type: ignore[arg-type]


def test_pgd_step_zero_gradient_and_zero_eps() -> None:
    x0 = torch.rand(3, 2, 4, dtype=torch.float64)
    zero = torch.zeros_like(x0)
    for norm in NORMS:
        out = F.pgd_step(x0, x0, zero, norm=norm, eps=0.3, step_size=0.1, bounds=(0.0, 1.0))
        assert torch.equal(out, x0)
        out = F.pgd_step(
            x0, x0, torch.randn_like(x0), norm=norm, eps=0.0, step_size=0.1, bounds=(0.0, 1.0)
        )
        assert torch.equal(out, x0)


def test_per_sample_step_size() -> None:
    x0 = torch.full((3, 5), 0.5)
    grad = torch.ones(3, 5)
    steps = torch.tensor([0.0, 0.1, 0.2])
    out = F.pgd_step(x0, x0, grad, norm=Linf(), eps=1.0, step_size=steps, bounds=(0.0, 1.0))
    torch.testing.assert_close(out[:, 0], 0.5 + steps)


@pytest.mark.parametrize(
    ("norm", "dims", "radius", "expected"),
    [(L2(), 2, 0.5, 0.25), (L2(), 3, 0.5, 0.125), (L1(), 2, 0.5, 0.25), (Linf(), 2, 0.5, 0.25)],
)
def test_sampling_is_uniform_by_volume(
    norm: Norm, dims: int, radius: float, expected: float
) -> None:
    """P(||s|| <= r eps) = r^d for a uniform distribution in a d-dimensional ball."""
    x = torch.zeros(40000, dims, dtype=torch.float64)
    s = norm.sample(x, 2.0, generator=torch.Generator().manual_seed(0))
    frac = float((exact(s, norm) <= radius * 2.0).double().mean())
    assert abs(frac - expected) < 0.015, frac


def test_l1_direction_keeps_top_fraction() -> None:
    g = torch.tensor([[0.1, -5.0, 3.0, 0.2, -0.05, 4.0, 0.0, 1.0]])
    d = F.l1_direction(g, q=0.25)  # ceil(0.25 * 8) = 2 coordinates: -5 and 4
    torch.testing.assert_close(d, torch.tensor([[0, -0.5, 0, 0, 0, 0.5, 0, 0]]))
    assert F.l1_k(100, 0.01) == 1 and F.l1_k(100, 0.5) == 50 and F.l1_k(3, 1e-9) == 1


def test_l1_projection_known_value() -> None:
    x = torch.tensor([[3.0, -1.0, 0.5]])
    # theta = 1.25: (1.75, 0, 0) has L1 norm ... solve: 3 - t = 2 -> t = 1, |-1| - 1 = 0.
    p = F.l1_project(x, 2.0)
    torch.testing.assert_close(p, torch.tensor([[2.0, 0.0, 0.0]]))
    p = F.l1_project(x, 3.0)  # 3 - t + 1 - t = 3 -> t = 0.5
    torch.testing.assert_close(p, torch.tensor([[2.5, -0.5, 0.0]]))


def test_resolve_norm_names() -> None:
    assert resolve_norm("Linf") == Linf() and resolve_norm(math.inf) == Linf()
    assert resolve_norm("l2") == L2() and resolve_norm(2) == L2()
    assert resolve_norm("l1") == L1() and resolve_norm(L1(q=0.5)).q == 0.5  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- hyperplane in the box

HYPERPLANE = {
    "linf": F.linf_hyperplane_project,
    "l2": F.l2_hyperplane_project,
    "l1": F.l1_hyperplane_project,
}
BOXES = [(0.0, 1.0), (-1.0, 2.0), (0.0, math.inf), (-math.inf, math.inf)]


@st.composite
def hyperplanes(draw: st.DrawFn, max_d: int = 5) -> dict[str, object]:
    """Points in a box, normals with some zero coordinates, and offsets the box reaches
    (mostly) or not."""
    b = draw(st.integers(1, 4))
    feat = draw(
        st.lists(st.integers(1, 3), min_size=1, max_size=2).filter(lambda f: math.prod(f) <= max_d)
    )
    box = draw(st.sampled_from(BOXES))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    shape = (b, *feat)
    lo, hi = max(box[0], -3.0), min(box[1], 3.0)

    def inside() -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)

    x = inside()
    if draw(st.booleans()):  # some coordinates on the box's edges
        edge = torch.rand(shape, generator=g) < 0.3
        x = torch.where(edge, torch.full_like(x, lo if math.isfinite(box[0]) else hi), x)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    w = w * (torch.rand(shape, generator=g) > 0.25)
    if draw(st.booleans()):
        w[0] = 0
    reach = draw(st.sampled_from(["inside", "anywhere", "on"]))
    if reach == "inside":  # the hyperplane through a point of the box
        off = (w * inside()).flatten(1).sum(1)
    elif reach == "on":  # through x itself
        off = (w * x).flatten(1).sum(1)
    else:
        off = 5 * torch.randn(b, generator=g, dtype=torch.float64)
    return {"x": x, "w": w, "b": off, "box": box}


def vertex(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, box: tuple[float, float]
) -> torch.Tensor:
    """The box point nearest to the hyperplane: every coordinate with w != 0 at the bound
    towards it."""
    side = ((w * x).flatten(1).sum(1) - b).sign().reshape(-1, *([1] * (x.ndim - 1)))
    toward = torch.where(side * w > 0, box[0], box[1])
    return torch.where(w == 0, x, toward)


def reachable(case: dict[str, object]) -> torch.Tensor:
    """(B,): the box reaches the hyperplane with a margin (None: too close to call)."""
    x, w, b, box = case["x"], case["w"], case["b"], case["box"]
    assert isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor)
    assert isinstance(b, torch.Tensor) and isinstance(box, tuple)
    c = (w * x).flatten(1).sum(1) - b
    v = vertex(x, w, b, box)
    beyond = -c.sign() * ((w * v).flatten(1).sum(1) - b)  # > 0: the vertex is past the plane
    return beyond


@given(hyperplanes(max_d=12), st.sampled_from(list(HYPERPLANE)))
def test_hyperplane_projection_is_feasible_and_reaches_the_plane(
    case: dict[str, object], norm: str
) -> None:
    x, w, b, box = case["x"], case["w"], case["b"], case["box"]
    assert isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor)
    assert isinstance(b, torch.Tensor) and isinstance(box, tuple)
    delta = HYPERPLANE[norm](x, w, b, box)
    assert delta.shape == x.shape and delta.dtype == torch.float64
    z = x + delta
    scale = 1.0 + x.abs().amax()
    assert bool((z >= box[0] - 1e-12 * scale).all()) and bool((z <= box[1] + 1e-12 * scale).all())
    assert bool((delta[w == 0] == 0).all())  # coordinates the plane ignores never move
    residual = ((w * z).flatten(1).sum(1) - b).abs()
    size = (w.abs() * (x.abs() + delta.abs())).flatten(1).sum(1) + b.abs() + 1.0
    beyond = reachable(case)
    reached = beyond > 1e-9 * size
    assert bool((residual[reached] <= 1e-12 * size[reached]).all())
    missed = beyond < -1e-9 * size  # out of reach: the box point nearest to the plane
    v = vertex(x, w, b, box)
    assert torch.equal(z[missed], v[missed])


def _linprog(
    x: torch.Tensor, w: torch.Tensor, b: float, box: tuple[float, float], norm: str
) -> float:
    """The minimal Linf or L1 step onto the hyperplane within the box, by scipy's LP solver."""
    from scipy.optimize import linprog

    t, u = x.flatten().numpy(), w.flatten().numpy()
    d = t.size
    lo = [None if not math.isfinite(box[0]) else box[0] - ti for ti in t]
    hi = [None if not math.isfinite(box[1]) else box[1] - ti for ti in t]
    if norm == "linf":  # variables (delta, s): min s subject to -s <= delta <= s
        eye = torch.eye(d, dtype=torch.float64)
        ones = torch.ones(d, 1, dtype=torch.float64)
        a_ub = torch.cat([torch.cat([eye, -ones], 1), torch.cat([-eye, -ones], 1)]).numpy()
        res = linprog(
            [0.0] * d + [1.0],
            A_ub=a_ub,
            b_ub=[0.0] * (2 * d),
            A_eq=[[*u, 0.0]],
            b_eq=[b - float(u @ t)],
            bounds=[*zip(lo, hi, strict=True), (0, None)],
            method="highs",
        )
    else:  # delta = up - down, both >= 0: min sum(up + down)
        up = [(0, None if h is None else max(h, 0.0)) for h in hi]
        down = [(0, None if lw is None else max(-lw, 0.0)) for lw in lo]
        res = linprog(
            [1.0] * (2 * d),
            A_eq=[[*u, *(-u)]],
            b_eq=[b - float(u @ t)],
            bounds=up + down,
            method="highs",
        )
    assert res.status == 0, res.message
    return float(res.fun)


def _l2_brute_force(x: torch.Tensor, w: torch.Tensor, b: float, box: tuple[float, float]) -> float:
    """The Euclidean projection onto the hyperplane within the box by enumerating which
    coordinates sit on which bound (3^d cases; the free ones solve the plane in closed form)."""
    t, u = x.flatten(), w.flatten()
    best = math.inf
    for states in itertools.product((0, 1, 2), repeat=t.numel()):
        state = torch.tensor(states)
        delta = torch.zeros_like(t)
        delta = torch.where(state == 1, box[0] - t, delta)
        delta = torch.where(state == 2, box[1] - t, delta)
        if not bool(torch.isfinite(delta).all()):
            continue
        free = state == 0
        rest = b - float(u @ (t + delta))
        uf = u * free
        if float(uf @ uf) == 0.0:
            if abs(rest) > 1e-12 * (1 + abs(b)):
                continue
        else:
            delta = delta + rest * uf / float(uf @ uf)
        z = t + delta
        if bool((z < box[0] - 1e-12).any()) or bool((z > box[1] + 1e-12).any()):
            continue
        best = min(best, float(delta.norm()))
    return best


@given(hyperplanes(), st.sampled_from(list(HYPERPLANE)))
def test_hyperplane_projection_is_optimal(case: dict[str, object], norm: str) -> None:
    """Against scipy's LP solver (Linf, L1) and an enumeration of the active sets (L2), on
    the samples the box reaches the hyperplane with a margin."""
    x, w, b, box = case["x"], case["w"], case["b"], case["box"]
    assert isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor)
    assert isinstance(b, torch.Tensor) and isinstance(box, tuple)
    delta = HYPERPLANE[norm](x, w, b, box)
    beyond = reachable(case)
    for i in range(x.shape[0]):
        if float(beyond[i]) <= 1e-6:
            continue
        found = float(torch.linalg.vector_norm(delta[i].flatten(), ord=ORDERS[norm]))
        if norm == "l2":
            best = _l2_brute_force(x[i], w[i], float(b[i]), box)
        else:
            best = _linprog(x[i], w[i], float(b[i]), box, norm)
        assert found <= best + 1e-9 * (1 + best), (found, best)
        assert found >= best - 1e-6 * (1 + best), (found, best)  # the solver's tolerance


@given(hyperplanes(max_d=12), st.sampled_from(list(HYPERPLANE)))
def test_hyperplane_projection_batched_is_per_sample(case: dict[str, object], norm: str) -> None:
    x, w, b, box = case["x"], case["w"], case["b"], case["box"]
    assert isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor)
    assert isinstance(b, torch.Tensor) and isinstance(box, tuple)
    fn = HYPERPLANE[norm]
    batched = fn(x, w, b, box)
    for i in range(x.shape[0]):
        alone = fn(x[i : i + 1], w[i : i + 1], b[i : i + 1], box)
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-12, rtol=1e-12)
    # a float offset is the same offset for every sample
    torch.testing.assert_close(fn(x, w, float(b[0]), box), fn(x, w, b[0].expand_as(b), box))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm", list(HYPERPLANE))
def test_hyperplane_projection_dtypes_and_layout(dtype: torch.dtype, norm: str) -> None:
    """Half precision is solved in float32; the result keeps the points' memory format."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 4, 4, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(3, 2, 4, 4, generator=g).to(dtype)
    b = (w.float() * torch.rand(3, 2, 4, 4, generator=g)).flatten(1).sum(1)
    delta = HYPERPLANE[norm](x, w, b, (0.0, 1.0))
    assert delta.dtype == torch.float32
    assert delta.is_contiguous(memory_format=torch.channels_last)
    z = x.float() + delta
    assert float(z.min()) >= -1e-6 and float(z.max()) <= 1 + 1e-6
    residual = ((w.float() * z).flatten(1).sum(1) - b).abs()
    assert float(residual.max()) <= 1e-4
    # The norm's method is this kernel.
    same = resolve_norm(norm).hyperplane_project(x, w, b, (0.0, 1.0))
    assert torch.equal(same, delta)


def test_hyperplane_projection_known_values() -> None:
    x = torch.tensor([[0.5, 0.9]])
    # <w, z> = 1.8 needs 0.4 more: Linf and L2 move both coordinates, the second only to 1.
    assert torch.allclose(
        F.linf_hyperplane_project(x, torch.tensor([[1.0, 1.0]]), 1.8, (0, 1)),
        torch.tensor([[0.3, 0.1]]),
    )
    assert torch.allclose(
        F.l2_hyperplane_project(x, torch.tensor([[1.0, 3.0]]), 3.4, (-9, 9)),
        torch.tensor([[0.02, 0.06]]),
    )
    # L1 moves the coordinate of largest |w| first, to its bound, then the next.
    assert torch.allclose(
        F.l1_hyperplane_project(x, torch.tensor([[1.0, 2.0]]), 2.7, (0, 1)),
        torch.tensor([[0.2, 0.1]]),
    )
    # Out of reach: both to the upper bound.
    assert torch.allclose(
        F.l2_hyperplane_project(x, torch.tensor([[1.0, 1.0]]), 5.0, (0, 1)),
        torch.tensor([[0.5, 0.1]]),
    )


@given(
    st.sampled_from([torch.float32, torch.float64]),
    st.lists(
        st.one_of(
            st.sampled_from([0.0, -0.0, math.inf, 5e-324, 1e-45, 1.0, 2.0]),
            st.floats(0.0, 1e30, allow_nan=False),
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_sort_key_orders_non_negative_floats_like_their_values(
    dtype: torch.dtype, values: list[float]
) -> None:
    # The projections sort integer views of non-negative floats (faster on CPU): the same
    # stable order as sorting the values, ties (0.0 and -0.0 included) in their input order.
    t = torch.tensor([values], dtype=dtype)
    key = F._order_key(t)
    assert key.dtype != dtype
    for descending in (False, True):
        assert torch.equal(
            key.argsort(dim=1, stable=True, descending=descending),
            t.argsort(dim=1, stable=True, descending=descending),
        )
    assert torch.equal(key.sort(dim=1).values.view(dtype), t.sort(dim=1).values + 0.0)
    half = t.to(torch.float16)
    assert F._order_key(half) is half  # other dtypes sort as they are


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [0.3, 0.1, 8 / 255])
def test_linf_box_lies_within_the_python_float_eps(dtype: torch.dtype, eps: float) -> None:
    # eps rounded to float32 can lie above eps itself (0.3 does): the interval of half inputs
    # must hold the Python float budget, measured in float64.
    x0 = torch.rand(64, 256, generator=torch.Generator().manual_seed(0)).to(dtype)
    lo, hi = F.linf_box(x0, eps, (0.0, 1.0))
    assert lo.dtype == hi.dtype == dtype
    base = x0.double()
    assert bool((hi.double() - base <= eps).all())
    assert bool((base - lo.double() <= eps).all())
    assert bool((lo >= 0).all()) and bool((hi <= 1).all())
