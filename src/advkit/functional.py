"""Pure, batched kernels shared by every attack.

Every function here takes a batch ``(B, ...)`` of any shape (vectors, images,
sequences) and memory format, treats each sample independently, and returns a
tensor with the input's shape, dtype, device and memory format. ``eps`` and
``step_size`` are either Python floats (one value for the batch) or tensors of
shape ``(B,)`` (one value per sample), always measured in the model's input
space (pixels).

Half-precision inputs (``float16``, ``bfloat16``) are reduced in ``float32``:
norms, per-sample scale factors and the L1 sort/cumsum run in ``float32`` and
only the elementwise result is cast back, so that no reduction overflows and
no zero gradient turns into ``0 * inf = NaN``.

This module is the specification: faster paths must agree with it. It imports
nothing from the rest of advkit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Bounds",
    "KeyedGenerator",
    "NormLike",
    "RandomSource",
    "Scalar",
    "batch_view",
    "clip",
    "exact_dtype",
    "feasible",
    "inner_bounds",
    "l1_box_project",
    "l1_direction",
    "l1_hyperplane_project",
    "l1_norm",
    "l1_project",
    "l1_sample",
    "l2_direction",
    "l2_hyperplane_project",
    "l2_norm",
    "l2_project",
    "l2_sample",
    "linf_box",
    "linf_direction",
    "linf_hyperplane_project",
    "linf_norm",
    "linf_project",
    "linf_sample",
    "pgd_step",
    "rand",
    "randbits",
    "randbits_ahead",
    "randint",
    "randn",
    "round_toward",
    "safe_radius",
    "work_dtype",
]

Scalar = float | Tensor
"""A Python float (same value for every sample) or a tensor of shape ``(B,)``."""

Bounds = tuple[float, float]
"""Lower and upper bound of every input coordinate, in the model's input space."""

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class NormLike(Protocol):
    """What `pgd_step` and `feasible` need from a norm (see `advkit.norms`)."""

    @property
    def p(self) -> float: ...

    def measure(self, x: Tensor) -> Tensor: ...

    def direction(self, grad: Tensor) -> Tensor: ...

    def project(self, delta: Tensor, eps: Scalar) -> Tensor: ...

    def feasible(self, x: Tensor, x0: Tensor, eps: Scalar, bounds: Bounds) -> Tensor: ...


# --------------------------------------------------------------------------- randomness

_MASK64 = (1 << 64) - 1


def _i64(c: int) -> int:
    """An unsigned 64-bit constant as the signed value torch's int64 stores."""
    c &= _MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _i64(0x9E3779B97F4A7C15)
_MIX1 = _i64(0xBF58476D1CE4E5B9)
_MIX2 = _i64(0x94D049BB133111EB)


def _shr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 values (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: Tensor) -> Tensor:
    """The SplitMix64 finalizer (Steele, Lea & Flood, OOPSLA 2014) on int64 tensors.

    Integer multiplication wraps modulo 2**64 on every backend, so the result is
    the same bit pattern on CPU and CUDA.
    """
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


class KeyedGenerator:
    """A counter-based random source whose draws for sample ``i`` depend only on ``(seed, keys[i])``.

    A ``torch.Generator`` hands out one stream for the whole batch, so what a
    sample receives depends on its position in the batch. This source hashes
    ``(seed, key, draw number, coordinate)`` with SplitMix64 instead: a sample
    gets the same random start whatever batch, batch size, device or process
    it is attacked in, which makes dataset-scale and distributed runs
    reproducible sample by sample. Pass ``sample_ids=`` to an attack call to
    use it; keys are typically the samples' indices in the dataset.

    Each draw (``rand``, ``randn``, ``randint``) advances a draw counter, so
    successive draws (e.g. restarts) differ, and two sources with the same
    seed and keys give the same sequence of draws.

    Args:
        seed: any integer.
        keys: ``(B,)`` integer tensor, one key per sample, on the device where
            values are drawn.

    Examples:
        >>> a = KeyedGenerator(7, torch.tensor([3, 5]))
        >>> b = KeyedGenerator(7, torch.tensor([5]))
        >>> bool((rand((2, 4), a)[1] == rand((1, 4), b)[0]).all())
        True
    """

    def __init__(self, seed: int, keys: Tensor) -> None:
        if keys.ndim != 1 or keys.dtype.is_floating_point or keys.dtype == torch.bool:
            raise ValueError("keys must be a 1-D integer tensor, one key per sample.")
        self.seed = int(seed)
        self.keys = keys.to(torch.int64)
        self.draws = 0
        self._hashed: Tensor | None = None  # the keys mixed with the seed, once

    def subset(self, rows: Tensor) -> KeyedGenerator:
        """The source of the samples ``rows`` (a ``(K,)`` index tensor): their keys, the same
        seed and the same draw count, so its next draws for a sample are the ones this
        source would have given it."""
        out = KeyedGenerator(self.seed, self.keys.index_select(0, rows))
        out.draws = self.draws
        if self._hashed is not None:
            out._hashed = self._hashed.index_select(0, rows)
        return out

    @property
    def device(self) -> torch.device:
        """Where values are drawn."""
        return self.keys.device

    def bits(self, shape: tuple[int, ...]) -> Tensor:
        """64 random bits per element of ``shape`` (``shape[0]`` = number of keys), as int64."""
        return self.bits_ahead(shape, 1)[0]

    def bits_ahead(self, shape: tuple[int, ...], count: int) -> Tensor:
        """``(count, *shape)``: the next ``count`` draws of `bits` at once, the values that
        ``count`` calls ``bits(shape)`` would return (in one hash over all of them)."""
        if not shape or shape[0] != self.keys.shape[0]:
            raise ValueError(
                f"a keyed draw needs shape (B, ...) with B = {self.keys.shape[0]} keys, got {shape}."
            )
        draw = torch.arange(self.draws + 1, self.draws + count + 1, device=self.device)
        self.draws += count
        per_key = _mix(self._keys_hashed().unsqueeze(1) + draw * _GOLDEN)  # (B, count)
        n = math.prod(shape[1:])
        counter = torch.arange(1, n + 1, device=self.device, dtype=torch.int64) * _GOLDEN
        out = _mix(per_key.unsqueeze(2) + counter)  # (B, count, n)
        return out.transpose(0, 1).reshape(count, *shape)

    def _keys_hashed(self) -> Tensor:
        """The keys mixed with the seed (computed once)."""
        if self._hashed is None:
            head = _mix(torch.full((), _i64(self.seed), dtype=torch.int64) + _GOLDEN)
            self._hashed = _mix(self.keys ^ head.to(self.keys.device))
        return self._hashed


RandomSource = torch.Generator | KeyedGenerator | None
"""Where random draws come from: a ``torch.Generator`` (``None``: the global
one), or a `KeyedGenerator` for per-sample reproducible draws."""


def _uniform_from_bits(bits: Tensor, dtype: torch.dtype) -> Tensor:
    """Uniform values in the open interval (0, 1) from 64 random bits."""
    if dtype == torch.float64:
        return (_shr(bits, 11).to(torch.float64) + 0.5) * 2.0**-53
    return ((_shr(bits, 40).to(torch.float32) + 0.5) * 2.0**-24).to(dtype)


def rand(
    shape: tuple[int, ...],
    generator: RandomSource,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform values in [0, 1) from ``generator`` (a keyed source gives (0, 1))."""
    if isinstance(generator, KeyedGenerator):
        return _uniform_from_bits(generator.bits(shape), dtype)
    return torch.rand(shape, generator=generator, dtype=dtype, device=device)


def randn(
    shape: tuple[int, ...],
    generator: RandomSource,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Standard normal values from ``generator`` (Box-Muller for a keyed source)."""
    if isinstance(generator, KeyedGenerator):
        work = work_dtype(dtype)
        u1 = _uniform_from_bits(generator.bits(shape), work)
        u2 = _uniform_from_bits(generator.bits(shape), work)
        return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2 * math.pi) * u2)).to(dtype)
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def randint(
    low: int,
    high: int,
    shape: tuple[int, ...],
    generator: RandomSource,
    *,
    dtype: torch.dtype = torch.int64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Integers drawn uniformly from ``[low, high)``."""
    if isinstance(generator, KeyedGenerator):
        span = high - low
        return (_shr(generator.bits(shape), 1) % span + low).to(dtype)
    return torch.randint(low, high, shape, generator=generator, dtype=dtype, device=device)


def randbits(
    shape: tuple[int, ...], generator: RandomSource, *, device: torch.device | str | None = None
) -> Tensor:
    """Non-negative int64 values with 62 uniform random bits each: one draw from which a loop
    takes several small integers (``bits[:, k] % n``, bias below ``n / 2**62``; ``bits & 1``)
    in one call rather than one call each.

    Examples:
        >>> b = randbits((3, 4), torch.Generator().manual_seed(0))
        >>> bool(((b >= 0) & (b < 2**62)).all())
        True
    """
    if isinstance(generator, KeyedGenerator):
        return _shr(generator.bits(shape), 2)
    return torch.randint(0, 2**62, shape, generator=generator, device=device)


def randbits_ahead(
    shape: tuple[int, ...],
    count: int,
    generator: RandomSource,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """``(count, *shape)``: ``count`` successive `randbits` draws of ``shape`` at once, for a
    loop that draws the same shape every iteration. A keyed source gives exactly the values
    of ``count`` separate calls; so does a CPU ``torch.Generator``, whose values come out in
    order (a CUDA generator's stream is split differently, the values as random).

    Examples:
        >>> g, h = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        >>> block = randbits_ahead((3, 2), 4, g)
        >>> all(bool((block[i] == randbits((3, 2), h)).all()) for i in range(4))
        True
    """
    if isinstance(generator, KeyedGenerator):
        return _shr(generator.bits_ahead(shape, count), 2)
    return torch.randint(0, 2**62, (count, *shape), generator=generator, device=device)


# --------------------------------------------------------------------------- helpers


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which advkit computes per-sample reductions, scale factors, random draws
    and losses for inputs of ``dtype``: float32 for half precision, the inputs' own dtype
    otherwise (`exact_dtype` is the other rule: where a perturbation must be exact)."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def batch_view(value: Tensor, ndim: int) -> Tensor:
    """Reshape a per-sample tensor ``(B,)`` to ``(B, 1, ..., 1)`` with ``ndim`` dims.

    Examples:
        >>> batch_view(torch.ones(4), 4).shape
        torch.Size([4, 1, 1, 1])
    """
    return value.reshape(value.shape[0], *([1] * (ndim - 1)))


_SORT_KEYS = {torch.float32: torch.int32, torch.float64: torch.int64}


def _order_key(t: Tensor) -> Tensor:
    """``t``, non-negative floats, as integers in the same order, for sorting.

    The bit patterns of non-negative IEEE floats (``+inf`` included) order like
    their values, and CPU sorts integers about 30% faster than floats; ``+ 0.0``
    turns ``-0.0`` into ``+0.0`` first. Other dtypes, and MPS devices, get ``t``.
    """
    key = _SORT_KEYS.get(t.dtype)
    if key is None or t.device.type == "mps":
        return t
    return (t + 0.0).view(key)


def _per_sample(value: Scalar, like: Tensor, dtype: torch.dtype) -> Tensor:
    """``value`` as a ``(B, 1, ..., 1)`` tensor (floats are broadcast)."""
    if isinstance(value, Tensor):
        if value.ndim == 0:
            value = value.expand(like.shape[0])
        return batch_view(value.to(device=like.device, dtype=dtype), like.ndim)
    return torch.full(
        (like.shape[0],) + (1,) * (like.ndim - 1), float(value), dtype=dtype, device=like.device
    )


def _rescale(t: Tensor, factor: Tensor) -> Tensor:
    """Multiply each sample of ``t`` by ``factor`` (shape ``(B,)``, work dtype)."""
    factor = batch_view(factor, t.ndim)
    if t.dtype in _LOW_PRECISION:
        return (t.to(factor.dtype) * factor).to(t.dtype)
    return t * factor.to(t.dtype)


def _like(sample: Tensor, x: Tensor) -> Tensor:
    """Copy ``sample`` (contiguous, same shape) into a tensor laid out like ``x``."""
    out = torch.empty_like(x)
    out.copy_(sample)
    return out


def clip(x: Tensor, bounds: Bounds) -> Tensor:
    """Clip every coordinate of ``x`` to the box ``[bounds[0], bounds[1]]``.

    Examples:
        >>> clip(torch.tensor([[-1.0, 0.5, 2.0]]), (0.0, 1.0))
        tensor([[0.0000, 0.5000, 1.0000]])
    """
    return x.clamp(bounds[0], bounds[1])


# --------------------------------------------------------------------------- Linf


def linf_norm(x: Tensor) -> Tensor:
    r"""Per-sample $\|x_i\|_\infty$, shape ``(B,)``.

    The result has the input's dtype (a maximum is exact in any precision).
    """
    return x.flatten(1).abs().amax(dim=1)


def linf_project(delta: Tensor, eps: Scalar) -> Tensor:
    r"""Euclidean projection onto the Linf ball $\{\|\delta\|_\infty \le \epsilon\}$.

    Coordinate-wise clamping to ``[-eps, eps]``. Followed by box clipping it is
    the exact projection onto the intersection of the ball and the box.
    """
    if isinstance(eps, Tensor):
        e = _per_sample(eps, delta, delta.dtype)
        return torch.maximum(torch.minimum(delta, e), -e)
    return delta.clamp(-float(eps), float(eps))


def linf_direction(grad: Tensor) -> Tensor:
    r"""Steepest-ascent direction under Linf: $\operatorname{sign}(g)$.

    It has Linf norm 1 (0 where the gradient is 0) and attains the dual norm:
    $\langle g, \operatorname{sign}(g)\rangle = \|g\|_1$.
    """
    return grad.sign()


def linf_sample(x: Tensor, eps: Scalar, *, generator: RandomSource = None) -> Tensor:
    """A perturbation drawn uniformly from the Linf ball of radius ``eps``, laid out like ``x``."""
    work = work_dtype(x.dtype)
    u = rand(tuple(x.shape), generator, device=x.device, dtype=work)
    return _like((2 * u - 1) * _per_sample(eps, x, work), x)


# --------------------------------------------------------------------------- L2


def l2_norm(x: Tensor) -> Tensor:
    r"""Per-sample $\|x_i\|_2$, shape ``(B,)``, accumulated in at least float32."""
    n: Tensor = torch.linalg.vector_norm(x.flatten(1), ord=2, dim=1, dtype=work_dtype(x.dtype))
    return n


def l2_project(delta: Tensor, eps: Scalar) -> Tensor:
    r"""Euclidean projection onto the L2 ball $\{\|\delta\|_2 \le \epsilon\}$.

    Samples inside the ball are unchanged; the others are scaled radially onto
    the sphere, which is the Euclidean-nearest point of the ball. Followed by
    box clipping the result is feasible but is *not* the exact projection onto
    the intersection of the ball and the box (that would need an iterative
    solver); the clipped point is never farther from the ball's centre.
    """
    n = l2_norm(delta)
    e = _per_sample(eps, delta, n.dtype).reshape(-1)
    factor = torch.clamp(e / n.clamp_min(torch.finfo(n.dtype).tiny), max=1.0)
    return _rescale(delta, factor)


def l2_direction(grad: Tensor) -> Tensor:
    r"""Steepest-ascent direction under L2: $g / \|g\|_2$ (0 for a zero gradient)."""
    n = l2_norm(grad)
    inv = torch.where(n > 0, 1.0 / n.clamp_min(torch.finfo(n.dtype).tiny), torch.zeros_like(n))
    return _rescale(grad, inv)


def l2_sample(x: Tensor, eps: Scalar, *, generator: RandomSource = None) -> Tensor:
    r"""A perturbation drawn uniformly (by volume) from the L2 ball of radius ``eps``.

    A Gaussian direction on the unit sphere times a radius
    $\epsilon\, U^{1/d}$ with $U \sim \mathcal{U}(0, 1)$ and ``d``
    the number of coordinates per sample (uniform radii would crowd the centre).
    """
    work = work_dtype(x.dtype)
    b, d = x.shape[0], x[0].numel()
    g = randn(tuple(x.shape), generator, device=x.device, dtype=work)
    u = rand((b,), generator, device=x.device, dtype=work)
    radius = u.pow(1.0 / max(d, 1)) * _per_sample(eps, x, work).reshape(-1)
    n = torch.linalg.vector_norm(g.flatten(1), dim=1).clamp_min(torch.finfo(work).tiny)
    return _like(g * batch_view(radius / n, x.ndim), x)


# --------------------------------------------------------------------------- L1


def l1_norm(x: Tensor) -> Tensor:
    r"""Per-sample $\|x_i\|_1$, shape ``(B,)``, accumulated in at least float32."""
    n: Tensor = torch.linalg.vector_norm(x.flatten(1), ord=1, dim=1, dtype=work_dtype(x.dtype))
    return n


def l1_project(delta: Tensor, eps: Scalar) -> Tensor:
    r"""Exact Euclidean projection onto the L1 ball $\{\|\delta\|_1 \le \epsilon\}$.

    The sort-based algorithm of Duchi et al., "Efficient Projections onto the
    l1-Ball for Learning in High Dimensions" (ICML 2008), batched: for a sample
    outside the ball the projection is
    $\operatorname{sign}(\delta)\max(|\delta| - \theta, 0)$ with the
    threshold $\theta \ge 0$ that makes its L1 norm equal to
    $\epsilon$. Cost $O(d \log d)$ per sample, no loop over samples.
    """
    work = work_dtype(delta.dtype)
    values = delta.to(work)
    a = values.flatten(1).abs()
    b, d = a.shape
    e = _per_sample(eps, delta, work).reshape(b)
    u = _order_key(a).sort(dim=1, descending=True).values.view(a.dtype)
    css = u.cumsum(dim=1) - e.unsqueeze(1)
    k = torch.arange(1, d + 1, device=a.device, dtype=work)
    # rho = max{j : u_j > (cumsum_j - eps) / j}; the condition holds exactly for j <= rho.
    rho = (u * k > css).sum(dim=1, keepdim=True).clamp_min(1)
    theta = (css.gather(1, rho - 1) / rho.to(work)).clamp_min(0).reshape(b)
    theta = torch.where(a.sum(dim=1) <= e, torch.zeros_like(theta), theta)
    out = values.sign() * (values.abs() - batch_view(theta, values.ndim)).clamp_min(0)
    # |x| - theta cancels badly when eps << |x|: a radial rescale removes that rounding
    # error, so the result is in the ball up to a relative (not absolute) rounding error.
    n = out.flatten(1).abs().sum(dim=1)
    fix = torch.where(n > e, e / n.clamp_min(torch.finfo(work).tiny), torch.ones_like(n))
    return (out * batch_view(fix, out.ndim)).to(delta.dtype)


def l1_k(d: int, q: float) -> int:
    """Number of coordinates SLIDE keeps out of ``d``: ``ceil(q * d)``, at least 1."""
    return max(1, min(d, math.ceil(q * d - 1e-9)))


def l1_direction(grad: Tensor, q: Scalar = 0.01) -> Tensor:
    r"""Sparse steepest-ascent direction under L1 (SLIDE).

    The sign of the ``ceil(q * d)`` gradient coordinates of largest magnitude
    (all coordinates tied with the smallest of them are kept too), scaled to
    unit L1 norm. With ``q -> 0`` this is the exact L1 steepest ascent (one
    coordinate); larger ``q`` spreads the step, which works better for
    iterative attacks. A zero gradient gives a zero direction. ``q`` is a
    float, or a ``(B,)`` tensor of per-sample fractions (APGD-L1 adapts the
    sparsity of each sample's step).

    Tramèr & Boneh, "Adversarial Training and Robustness for Multiple
    Perturbations" (NeurIPS 2019), Sparse L1 Descent; their percentile is
    ``1 - q``.
    """
    flat = grad.flatten(1).abs()
    d = flat.shape[1]
    if isinstance(q, Tensor):
        # ceil(q d), forgiving the float32 rounding of q (0.2 is stored a little above 0.2)
        k = (q.to(torch.float64) * d - 1e-5).ceil().clamp(1, d).to(torch.int64)
        ordered = _order_key(flat).sort(dim=1, descending=True).values.view(flat.dtype)
        thr = ordered.gather(1, (k - 1).unsqueeze(1)).squeeze(1)
    else:
        thr = flat.topk(l1_k(d, float(q)), dim=1, sorted=False).values.amin(dim=1)
    mask = grad.abs() >= batch_view(thr, grad.ndim)
    s = grad.sign() * mask
    count = s.flatten(1).abs().sum(dim=1, dtype=work_dtype(grad.dtype))
    return _rescale(s, 1.0 / count.clamp_min(1.0))


def l1_sample(x: Tensor, eps: Scalar, *, generator: RandomSource = None) -> Tensor:
    r"""A perturbation drawn uniformly (by volume) from the L1 ball of radius ``eps``.

    With $E_1, \dots, E_{d+1}$ i.i.d. exponential, the vector
    $(E_1, \dots, E_d) / \sum_{i \le d+1} E_i$ is uniform in the simplex
    $\{v \ge 0, \sum v \le 1\}$; random signs make it uniform in the ball.
    """
    work = work_dtype(x.dtype)
    b, d = x.shape[0], x[0].numel()
    e = -torch.log1p(-rand((b, d + 1), generator, device=x.device, dtype=work))  # Exp(1)
    v = e[:, :d] / e.sum(dim=1, keepdim=True)
    signs = randint(0, 2, (b, d), generator, device=x.device).to(work) * 2 - 1
    v = (v * signs * _per_sample(eps, x, work).reshape(b, 1)).reshape(x.shape)
    return _like(v, x)


def l1_box_project(delta: Tensor, x0: Tensor, eps: Scalar, bounds: Bounds) -> Tensor:
    r"""Exact Euclidean projection of ``delta`` onto the L1 ball intersected with the box.

    Solves, per sample,
    $\min_{\delta'} \|\delta' - \delta\|_2$ subject to $\|\delta'\|_1 \le \epsilon$ and
    $l \le x_0 + \delta' \le u$. The KKT conditions give
    $\delta'_i = \operatorname{sign}(\delta_i)\,\min(\max(|\delta_i| - \lambda, 0), c_i)$
    with $c_i$ the room the box leaves in the direction of $\delta_i$
    ($u - x_{0,i}$ or $x_{0,i} - l$) and the smallest $\lambda \ge 0$ that
    meets the budget. The L1 norm is piecewise linear and non-increasing in
    $\lambda$, with breakpoints $\max(|\delta_i| - c_i, 0)$ and $|\delta_i|$:
    one sort of the $2d$ breakpoints and a cumulative sum find $\lambda$
    exactly, for every sample at once. Cost $O(d \log d)$ per sample, no host
    sync. Projecting onto the ball and then clipping to the box (what
    `pgd_step` does) is feasible but wastes budget when the box binds; this is
    the projection APGD-L1 needs (Croce & Hein, "Mind the box: l1-APGD for
    sparse adversarial attacks on image classifiers", ICML 2021).

    Args:
        delta: perturbations ``(B, ...)`` to project.
        x0: the centres ``(B, ...)``, inside the box.
        eps: L1 radius, a float or ``(B,)``.
        bounds: the box ``(low, high)``; infinite bounds are allowed.

    Returns:
        The projected perturbations, in the work dtype of ``delta`` (float32 for
        half precision), laid out like ``delta``; their L1 norm is at most
        ``eps`` up to a relative rounding error of the work dtype.

    Examples:
        >>> x0 = torch.tensor([[0.9, 0.5]])
        >>> l1_box_project(torch.tensor([[0.5, 0.3]]), x0, 0.4, (0.0, 1.0))
        tensor([[0.1000, 0.3000]])
    """
    work = work_dtype(delta.dtype)
    y = delta.to(work).flatten(1)
    base = x0.to(work).flatten(1)
    b = y.shape[0]
    a = y.abs()
    room = torch.where(y >= 0, bounds[1] - base, base - bounds[0]).clamp_min(0)
    e = _per_sample(eps, delta, work).reshape(b)
    clipped = torch.minimum(a, room)
    g0 = clipped.sum(dim=1)
    # Breakpoints of g(lam) = sum_i clamp(a_i - lam, 0, room_i) on lam >= 0: the slope drops by
    # one at max(a_i - room_i, 0) and comes back at a_i.
    starts = (a - room).clamp_min(0)
    points = torch.cat([starts, a], dim=1)
    weights = torch.cat([torch.full_like(a, -1.0), torch.ones_like(a)], dim=1)
    order = _order_key(points).argsort(dim=1)
    v = points.gather(1, order)
    slope = weights.gather(1, order).cumsum(dim=1)  # slope of g on (v_j, v_{j+1})
    gaps = (v[:, 1:] - v[:, :-1]) * slope[:, :-1]
    g = torch.cat([g0.unsqueeze(1), g0.unsqueeze(1) + gaps.cumsum(dim=1)], dim=1)  # g at v_j
    first = (g <= e.unsqueeze(1)).to(torch.int8).argmax(dim=1).clamp_min(1)
    prev = (first - 1).unsqueeze(1)
    s = slope.gather(1, prev).squeeze(1)
    lam = v.gather(1, prev).squeeze(1) + (g.gather(1, prev).squeeze(1) - e) / (-s).clamp_min(1.0)
    lam = torch.where(g0 > e, lam.clamp_min(0), torch.zeros_like(lam))
    out = y.sign() * torch.minimum((a - lam.unsqueeze(1)).clamp_min(0), room)
    # Rounding in the cumulative sums: a radial shrink (towards x0, so the box still holds).
    n = out.abs().sum(dim=1)
    fix = torch.where(n > e, e / n.clamp_min(torch.finfo(work).tiny), torch.ones_like(n))
    return _like((out * fix.unsqueeze(1)).reshape(delta.shape), delta.to(work))


# --------------------------------------------------------------------------- hyperplane in the box
#
# The three projections below solve, per sample, for a point x in the box [l, u], a normal w
# and an offset b:
#
#     min ||delta||_p  subject to  <w, x + delta> = b  and  l <= x + delta <= u.
#
# With c = <w, x> - b and s = sign(c), the hyperplane is reached by moving coordinate i by
# -s sign(w_i) m_i with 0 <= m_i <= room_i (the distance from x_i to the bound in that
# direction): moving any coordinate the other way only takes the point away from the
# hyperplane. What is left is a problem on m >= 0 alone,
#
#     min ||m||_p  subject to  sum_i a_i m_i = |c|  and  0 <= m_i <= room_i,  a_i = |w_i|,
#
# which each norm solves exactly and in closed form after one sort. When the box does not
# reach the hyperplane (sum_i a_i room_i < |c|) every m_i with a_i > 0 is room_i: the box
# point nearest to the hyperplane (the smallest |<w, z> - b| over the box), with the other
# coordinates unchanged.


def _hyperplane_problem(
    x: Tensor, w: Tensor, b: Scalar, bounds: Bounds
) -> tuple[Tensor, Tensor, Tensor, Tensor, torch.dtype]:
    """The reduced problem: ``(a, room, need, direction, work dtype)``, each ``(B, d)``
    but ``need`` ``(B,)``; ``room`` is 0 where ``a`` is 0 (the coordinate never moves)."""
    work = torch.promote_types(work_dtype(x.dtype), work_dtype(w.dtype))
    t = x.to(work).flatten(1)
    u = w.to(work).flatten(1)
    offset = _per_sample(b, x, work).reshape(-1)
    c = (u * t).sum(dim=1) - offset
    side = torch.where(c >= 0, 1.0, -1.0).to(work).unsqueeze(1)
    down = side * u > 0  # lowering this coordinate brings the point towards the hyperplane
    lo, hi = float(bounds[0]), float(bounds[1])
    room = torch.where(down, t - lo, hi - t).clamp_min(0)
    a = u.abs()
    room = torch.where(a > 0, room, torch.zeros_like(room))
    direction = -(side * u).sign()
    return a, room, c.abs(), direction, work


def _level(kappa: Tensor, full: Tensor, slope: Tensor, need: Tensor) -> Tensor:
    r"""The smallest $\lambda \ge 0$ with $G(\lambda) = \sum_i \min(\lambda \phi_i, r_i) a_i
    = $ ``need``, per row, given the breakpoints ``kappa`` $= r_i / \phi_i$, the capped terms
    ``full`` $= a_i r_i$ and the slopes ``slope`` $= a_i \phi_i$ (0 for coordinates that
    never move); ``inf`` where even $G(\infty)$ falls short.

    $G$ is piecewise linear, non-decreasing and concave: sorting the breakpoints gives its
    value at each of them with two cumulative sums, and the piece on which it reaches
    ``need`` gives $\lambda$ exactly.
    """
    order = _order_key(kappa).argsort(dim=1, stable=True)
    k = kappa.gather(1, order)
    f = full.gather(1, order)
    s = slope.gather(1, order)
    d = k.shape[1]
    capped = f.cumsum(dim=1)  # sum of the terms capped at or before breakpoint j
    rising = s.flip(1).cumsum(dim=1).flip(1)  # sum of the slopes from breakpoint j on
    after = torch.cat([rising[:, 1:], torch.zeros_like(rising[:, :1])], dim=1)
    g = capped + torch.where(after > 0, k * after, torch.zeros_like(k))  # G at breakpoint j
    need_ = need.unsqueeze(1)
    j = (g < need_).sum(dim=1, keepdim=True)  # the first breakpoint where G reaches need
    at = j.clamp_max(d - 1)
    before = torch.cat([torch.zeros_like(capped[:, :1]), capped[:, :-1]], dim=1).gather(1, at)
    rate = rising.gather(1, at)
    tiny = torch.finfo(k.dtype).tiny
    lam = ((need_ - before) / rate.clamp_min(tiny)).clamp_min(0)
    lam = torch.where(rate > 0, lam, torch.zeros_like(lam))
    return torch.where(j >= d, torch.full_like(lam, math.inf), lam).squeeze(1)


def _hyperplane_result(direction: Tensor, m: Tensor, x: Tensor) -> Tensor:
    return _like((direction * m).reshape(x.shape), x.to(m.dtype))


def linf_hyperplane_project(x: Tensor, w: Tensor, b: Scalar, bounds: Bounds) -> Tensor:
    r"""The smallest Linf step from ``x`` onto the hyperplane $\langle w, z\rangle = b$
    within the box.

    Solves, per sample,
    $\min_\delta \|\delta\|_\infty$ subject to $\langle w, x + \delta\rangle = b$ and
    $l \le x + \delta \le u$. The solution moves every coordinate with
    $w_i \ne 0$ by $\min(\lambda, \rho_i)$ towards the hyperplane, with $\rho_i$ the
    room the box leaves in that direction and the smallest $\lambda$ that reaches
    it; coordinates with $w_i = 0$ stay. Where the box does not reach the
    hyperplane, every coordinate with $w_i \ne 0$ goes to its bound (the box point
    nearest to the hyperplane). This is the projection of FAB for Linf (Croce &
    Hein, ICML 2020). Exact, after one sort: $O(d \log d)$ per sample, no loop
    over samples, no host sync.

    Args:
        x: points ``(B, ...)`` in the box.
        w: normals ``(B, ...)``, laid out like ``x``.
        b: offsets, a float or ``(B,)``.
        bounds: the box ``(low, high)``; infinite bounds are allowed.

    Returns:
        The steps ``delta`` ``(B, ...)`` in the work dtype of ``x`` and ``w``
        (float32 for half precision), laid out like ``x``.

    Examples:
        >>> x = torch.tensor([[0.5, 0.9]])
        >>> linf_hyperplane_project(x, torch.tensor([[1.0, 1.0]]), 1.8, (0.0, 1.0))
        tensor([[0.3000, 0.1000]])
    """
    a, room, need, direction, _ = _hyperplane_problem(x, w, b, bounds)
    moves = a > 0
    lam = _level(room, a * room, a, need).unsqueeze(1)
    m = torch.where(moves, torch.minimum(lam.expand_as(room), room), torch.zeros_like(room))
    return _hyperplane_result(direction, m, x)


def l2_hyperplane_project(x: Tensor, w: Tensor, b: Scalar, bounds: Bounds) -> Tensor:
    r"""The Euclidean projection of ``x`` onto the hyperplane $\langle w, z\rangle = b$
    intersected with the box, as a step.

    Solves, per sample,
    $\min_\delta \|\delta\|_2$ subject to $\langle w, x + \delta\rangle = b$ and
    $l \le x + \delta \le u$. The KKT conditions give
    $|\delta_i| = \min(\lambda |w_i|, \rho_i)$ towards the hyperplane, with $\rho_i$
    the room the box leaves in that direction and the smallest $\lambda \ge 0$
    that reaches it: without the box, the familiar
    $\delta = -(\langle w, x\rangle - b)\, w / \|w\|_2^2$. Where the box does not
    reach the hyperplane, every coordinate with $w_i \ne 0$ goes to its bound
    (the box point nearest to the hyperplane). This is the projection of FAB
    for L2 (Croce & Hein, ICML 2020). Exact, after one sort: $O(d \log d)$ per
    sample, no loop over samples, no host sync.

    Args:
        x: points ``(B, ...)`` in the box.
        w: normals ``(B, ...)``, laid out like ``x``.
        b: offsets, a float or ``(B,)``.
        bounds: the box ``(low, high)``; infinite bounds are allowed.

    Returns:
        The steps ``delta`` ``(B, ...)`` in the work dtype of ``x`` and ``w``
        (float32 for half precision), laid out like ``x``.

    Examples:
        >>> x = torch.tensor([[0.5, 0.9]])
        >>> l2_hyperplane_project(x, torch.tensor([[1.0, 1.0]]), 1.8, (0.0, 1.0))
        tensor([[0.3000, 0.1000]])
    """
    a, room, need, direction, _ = _hyperplane_problem(x, w, b, bounds)
    moves = a > 0
    kappa = torch.where(moves, room / a.clamp_min(torch.finfo(a.dtype).tiny), room)
    lam = _level(kappa, a * room, a * a, need).unsqueeze(1)
    m = torch.where(moves, torch.minimum(lam * a, room), torch.zeros_like(room))
    return _hyperplane_result(direction, m, x)


def l1_hyperplane_project(x: Tensor, w: Tensor, b: Scalar, bounds: Bounds) -> Tensor:
    r"""The smallest L1 step from ``x`` onto the hyperplane $\langle w, z\rangle = b$
    within the box.

    Solves, per sample,
    $\min_\delta \|\delta\|_1$ subject to $\langle w, x + \delta\rangle = b$ and
    $l \le x + \delta \le u$: a linear program, a fractional knapsack, whose solution
    moves the coordinates in decreasing order of $|w_i|$ (the most progress per unit
    of L1 norm first), each to its bound towards the hyperplane, and the last one
    only as far as the hyperplane. Without the box that is a single coordinate, the
    one of largest $|w_i|$. Where the box does not reach the hyperplane, every
    coordinate with $w_i \ne 0$ goes to its bound (the box point nearest to the
    hyperplane). Among coordinates of equal $|w_i|$ the one first in memory moves
    first (the minimum is then not unique). This is the projection of FAB for L1
    (Croce & Hein, ICML 2020). Exact, after one sort: $O(d \log d)$ per sample, no
    loop over samples, no host sync.

    Args:
        x: points ``(B, ...)`` in the box.
        w: normals ``(B, ...)``, laid out like ``x``.
        b: offsets, a float or ``(B,)``.
        bounds: the box ``(low, high)``; infinite bounds are allowed.

    Returns:
        The steps ``delta`` ``(B, ...)`` in the work dtype of ``x`` and ``w``
        (float32 for half precision), laid out like ``x``.

    Examples:
        >>> x = torch.tensor([[0.5, 0.9]])
        >>> l1_hyperplane_project(x, torch.tensor([[1.0, 2.0]]), 2.7, (0.0, 1.0))
        tensor([[0.2000, 0.1000]])
    """
    a, room, need, direction, _ = _hyperplane_problem(x, w, b, bounds)
    order = _order_key(a).argsort(dim=1, descending=True, stable=True)
    a_s = a.gather(1, order)
    r_s = room.gather(1, order)
    cap = a_s * r_s  # how far each coordinate alone can go, in units of <w, z>
    done = torch.cat([torch.zeros_like(cap[:, :1]), cap.cumsum(dim=1)[:, :-1]], dim=1)
    left = (need.unsqueeze(1) - done).clamp_min(0)
    tiny = torch.finfo(a.dtype).tiny
    m_s = torch.minimum(left / a_s.clamp_min(tiny), r_s)
    m_s = torch.where(a_s > 0, m_s, torch.zeros_like(m_s))
    m = torch.zeros_like(m_s).scatter(1, order, m_s)
    return _hyperplane_result(direction, m, x)


# --------------------------------------------------------------------------- exact feasibility


def exact_dtype(dtype: torch.dtype, device: torch.device | None = None) -> torch.dtype:
    """The dtype in which a perturbation of inputs in ``dtype`` is computed exactly enough:
    float64 for float32/float64 inputs, float32 for half precision (and on Apple's MPS
    devices, which have no float64; the rounding margins of `feasible` still hold there)."""
    if device is not None and device.type == "mps":
        return torch.float32
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


def round_toward(p: Tensor, x0: Tensor) -> Tensor:
    """``p`` rounded to ``x0``'s dtype, each coordinate towards ``x0``.

    Rounding to nearest can move a coordinate one unit in the last place
    *away* from ``x0`` and so out of a ball the wider ``p`` lay in; rounding
    towards ``x0`` keeps every coordinate of the rounded perturbation no larger
    than ``p``'s, so any Lp norm of it is no larger, and keeps it between ``x0``
    and ``p``, so inside any box that holds both. The result is laid out like
    ``x0``.

    Examples:
        >>> x0 = torch.zeros(1, 1, dtype=torch.bfloat16)
        >>> p = torch.tensor([[0.0314]], dtype=torch.float32)  # bfloat16 rounds it up to 0.03149
        >>> float(round_toward(p, x0)) <= 0.0314
        True
    """
    r = _like(p, x0) if p.dtype == x0.dtype else _like(p.to(x0.dtype), x0)
    if p.dtype == x0.dtype:
        return r
    base = x0.to(p.dtype)
    over = (r.to(p.dtype) - base).abs() > (p - base).abs()
    return torch.where(over, torch.nextafter(r, x0), r)


def linf_box(x0: Tensor, eps: Scalar, bounds: Bounds) -> tuple[Tensor, Tensor]:
    r"""Per coordinate, the interval ``[lo, hi]`` of the Linf ball around ``x0`` intersected
    with the box, as values of ``x0``'s dtype that lie exactly inside both.

    ``clamp(x, lo, hi)`` is then the exact Euclidean projection onto the
    intersection, and its result is exactly feasible in the inputs' own dtype:
    $|x - x_0| \le \epsilon$ holds for the returned values themselves, not
    only up to rounding (``x0 + eps`` rounded to nearest can lie outside).

    Examples:
        >>> lo, hi = linf_box(torch.tensor([[0.0, 0.5]]), 0.25, (0.0, 1.0))
        >>> lo, hi
        (tensor([[0.0000, 0.2500]]), tensor([[0.2500, 0.7500]]))
    """
    # float64 for every input dtype: eps (a Python float) rounded to float32 for half inputs
    # can lie above eps itself (0.3 does).
    work = exact_dtype(torch.float64, x0.device)
    base = x0.to(work)
    e = _per_sample(eps, x0, work)
    if work == x0.dtype or work != torch.float64:
        # No wider dtype (float64 inputs), or float32 on MPS for any input: shrink the radius
        # by the rounding of eps and of x0 +- e, so that the rounded bounds are still within
        # e of x0.
        e = (e - 2 * (torch.finfo(work).eps / 2) * (base.abs() + e)).clamp_min(0)
    lo_box, hi_box = inner_bounds((float(bounds[0]), float(bounds[1])), x0.dtype)
    lo = round_toward((base - e).clamp_min(lo_box), x0)
    hi = round_toward((base + e).clamp_max(hi_box), x0)
    return lo, hi


@functools.lru_cache(maxsize=64)
def inner_bounds(bounds: Bounds, dtype: torch.dtype) -> Bounds:
    """The box's bounds as values of ``dtype`` inside the box (the nearest representable
    values at or inside ``bounds``), so that clamping to them keeps a point in the box.
    Pure Python: no tensor, no device synchronisation.

    Examples:
        >>> inner_bounds((0.0, 1.0), torch.float32)
        (0.0, 1.0)
        >>> inner_bounds((-0.1, 0.1), torch.bfloat16)[1] <= 0.1
        True
    """

    kinds: dict[torch.dtype, Any] = {torch.float32: np.float32, torch.float16: np.float16}

    def inside(v: float, up: bool) -> float:
        if not math.isfinite(v) or dtype == torch.float64:
            return v
        if dtype in kinds:  # numpy: no tensor, so nothing a profiler counts as a sync
            kind = kinds[dtype]
            r = kind(v)
            if (up and float(r) < v) or (not up and float(r) > v):
                r = np.nextafter(r, kind(math.inf if up else -math.inf))
            return float(r)
        t = torch.tensor(v, dtype=torch.float64).to(dtype)  # bfloat16: a CPU tensor
        if (up and float(t) < v) or (not up and float(t) > v):
            t = torch.nextafter(t, torch.tensor(math.inf if up else -math.inf, dtype=dtype))
        return float(t)

    return inside(float(bounds[0]), True), inside(float(bounds[1]), False)


def safe_radius(x0: Tensor, eps: Scalar, p: float) -> Tensor:
    r"""``(B,)`` radii, just below ``eps``, within which a step computed in ``x0``'s own
    dtype (float32 or float64) lands inside the ball of radius ``eps`` after rounding.

    A perturbation $t$ with $\|t\|_p \le r$ added to $x_0$ and rounded to
    nearest gives $\|\mathrm{fl}(x_0 + t) - x_0\|_p \le \|t\|_p + u\|x_0 + t\|_p$
    with $u$ the unit roundoff, so $r = \epsilon - 2u(\|x_0\|_p + 2\epsilon)$
    (a relative change of about $10^{-6}$ on images in float32) covers it, and
    the rounding of the subtraction and the scaling with it. Accumulated in
    float64 (float32 on MPS).
    """
    acc = torch.float32 if x0.device.type == "mps" else torch.float64
    unit = torch.finfo(x0.dtype).eps / 2
    n0 = torch.linalg.vector_norm(x0.flatten(1), ord=p, dim=1, dtype=acc)
    e = _per_sample(eps, x0, acc).reshape(-1)
    radius: Tensor = (e - 2 * unit * (n0 + 2 * e)).clamp_min(0)
    return radius


def feasible(
    x: Tensor,
    x0: Tensor,
    *,
    norm: NormLike,
    eps: Scalar,
    bounds: Bounds,
    project: Callable[[Tensor, Scalar], Tensor] | None = None,
    radius: Tensor | None = None,
) -> Tensor:
    r"""``x`` brought into the ball of radius ``eps`` around ``x0`` and into the box,
    exactly, in ``x0``'s dtype and memory format.

    Mathematically ``clip(x0 + project(x - x0))``; the returned values
    themselves satisfy $\|x - x_0\| \le \epsilon$ and $l \le x \le u$, not
    only up to rounding. For float32 and float64 inputs the step is computed
    in their own dtype, projected onto a ball whose radius leaves room for the
    rounding of ``x0 + delta`` (`safe_radius`, a relative margin of about
    $10^{-6}$ in float32), checked with a float64-accumulated norm, and
    clamped to the box's representable bounds (`inner_bounds`). Half
    precision has too coarse a rounding for a margin: there the perturbation
    is projected in float32 and rounded to nearest where that stays inside,
    else towards ``x0`` (`round_toward`).

    Args:
        x: points ``(B, ...)``, in any floating dtype.
        x0: the centres ``(B, ...)``.
        norm: the threat model.
        eps: the radius, a float or ``(B,)``.
        bounds: the box.
        project: ``project(delta, eps)`` replacing the norm's ball projection (e.g.
            the exact projection onto the L1 ball and the box, `l1_box_project`).
        radius: `safe_radius` of ``x0`` and ``eps``, when computed once for many calls.
    """
    proj = norm.project if project is None else project
    if x0.dtype in (torch.float32, torch.float64):
        r = safe_radius(x0, eps, norm.p) if radius is None else radius
        t = proj(x.to(x0.dtype) - x0, r)
        n = torch.linalg.vector_norm(t.flatten(1), ord=norm.p, dim=1, dtype=r.dtype)
        limit = r * (1 - 2 * torch.finfo(x0.dtype).eps)
        shrink = torch.where(n > limit, limit / n.clamp_min(torch.finfo(r.dtype).tiny), 1.0)
        lo, hi = inner_bounds((float(bounds[0]), float(bounds[1])), x0.dtype)
        return _like((x0 + _rescale(t.to(x0.dtype), shrink)).clamp(lo, hi), x0)
    work = torch.float32
    base = x0.to(work)
    delta = proj(x.to(work) - base, eps)
    n = norm.measure(delta).to(work)
    e = _per_sample(eps, delta, work).reshape(-1)
    safe = 1.0 - 16 * torch.finfo(work).eps
    shrink = torch.where(n > e * safe, e * safe / n.clamp_min(torch.finfo(work).tiny), 1.0)
    p = clip(base + delta * batch_view(shrink, delta.ndim), bounds)
    nearest = _like(p.to(x0.dtype), x0)
    wide = nearest.to(work)
    # the differences of half-precision values are exact in float32; their norm is taken in
    # float64 (float32 on MPS) so that the test does not pass on rounding
    acc = torch.float32 if x0.device.type == "mps" else torch.float64
    n_near = torch.linalg.vector_norm((wide - base).flatten(1), ord=norm.p, dim=1, dtype=acc)
    e_acc = _per_sample(eps, delta, acc).reshape(-1)
    inside = ((wide >= bounds[0]) & (wide <= bounds[1])).flatten(1).all(dim=1)
    ok = (n_near <= e_acc) & inside
    result: Tensor = torch.where(batch_view(ok, p.ndim), nearest, round_toward(p, x0))
    return result


# --------------------------------------------------------------------------- the step


def pgd_step(
    x: Tensor,
    x0: Tensor,
    grad: Tensor,
    *,
    norm: NormLike,
    eps: Scalar,
    step_size: Scalar,
    bounds: Bounds,
) -> Tensor:
    r"""One projected steepest-ascent step (the reference implementation).

    $$
    x' = \operatorname{clip}_{[l, u]}\Big(x_0 + \Pi_{\|\cdot\| \le \epsilon}
         \big(x + \alpha\, d(g) - x_0\big)\Big)
    $$

    with $d(g)$ the norm's steepest-ascent direction of ``grad`` and
    $\Pi$ its ball projection. The result is always feasible: clipping
    to the box only shrinks every coordinate of the perturbation towards 0
    (``x0`` lies in the box), so it cannot leave the ball. For Linf this is the
    exact projection onto the intersection of ball and box; for L2 and L1 it is
    a feasible point, not the exact projection onto the intersection. The
    projection and the clipping go through the norm's ``feasible`` (see
    `feasible`), so the returned values lie in the ball and the box exactly,
    in the inputs' own dtype, not only up to rounding.

    Args:
        x: current iterate ``(B, ...)``.
        x0: clean inputs ``(B, ...)``, the centre of the ball.
        grad: gradient of the attacker's objective with respect to ``x``.
        norm: the threat model, e.g. `advkit.norms.L2`.
        eps: ball radius in input space, a float or ``(B,)``.
        step_size: step length in the norm, a float or ``(B,)``.
        bounds: the input box ``(low, high)``.

    Returns:
        The next iterate, with the dtype and memory format of ``x``.

    Examples:
        >>> from advkit.norms import Linf
        >>> x0 = torch.full((1, 3), 0.5)
        >>> pgd_step(x0, x0, torch.tensor([[1.0, -2.0, 0.0]]), norm=Linf(),
        ...          eps=0.1, step_size=0.25, bounds=(0.0, 1.0))
        tensor([[0.6000, 0.4000, 0.5000]])
    """
    d = norm.direction(grad)
    if isinstance(step_size, Tensor):
        d = d * _per_sample(step_size, x, x.dtype)
    else:
        d = d * float(step_size)
    return norm.feasible(x + d, x0, eps, bounds)
