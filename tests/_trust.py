"""Models for the diagnostics tests: honest ones (a trained digits CNN, an adversarially
trained one, a linear model) and traps that mask gradients, each built from an honest one."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._digits import digits_cnn, digits_data, digits_model


def _finish(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


@functools.cache
def adversarial_model(eps: float = 0.1, epochs: int = 6) -> nn.Module:
    """The digits CNN trained on FGSM examples from a random start (Wong et al., "Fast is
    better than free", ICLR 2020), Linf eps 0.1: about 97% clean, more robust than the
    standard one."""
    xtr, ytr, _, _ = digits_data()
    g = torch.Generator().manual_seed(1)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = digits_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(ytr), generator=g).split(64):
            x, y = xtr[idx], ytr[idx]
            model.eval()
            start = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
            start.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(start), y), start)
            step = start.detach() + 1.25 * eps * grad.sign()
            adv = (x + (step - x).clamp(-eps, eps)).clamp(0, 1)
            model.train()
            loss = F.cross_entropy(model(adv), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return _finish(model)


@functools.cache
def linear_model() -> nn.Module:
    """Multinomial logistic regression on the digits' 64 pixels (about 94% test accuracy)."""
    xtr, ytr, _, _ = digits_data()
    g = torch.Generator().manual_seed(2)
    with torch.random.fork_rng():
        torch.manual_seed(2)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        for idx in torch.randperm(len(ytr), generator=g).split(64):
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return _finish(model)


def honest_models() -> dict[str, nn.Module]:
    return {
        "standard": digits_model(),
        "adversarial": adversarial_model(),
        "linear": linear_model(),
    }


class Scaled(nn.Module):
    """Logits times ``t``: the same predictions, a float32 softmax that saturates."""

    def __init__(self, net: nn.Module, t: float = 100.0) -> None:
        super().__init__()
        self.net, self.t = net, t

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) * self.t


class Quantized(nn.Module):
    """Inputs rounded to ``levels`` steps before the network (``pre`` replaces the rounding,
    e.g. with advkit.BPDA around it)."""

    def __init__(self, net: nn.Module, levels: int = 16, pre: nn.Module | None = None) -> None:
        super().__init__()
        self.net, self.levels, self.pre = net, levels, pre

    def quantize(self, x: Tensor) -> Tensor:
        return torch.round(x * self.levels) / self.levels

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.quantize(x) if self.pre is None else self.pre(x))


class Noisy(nn.Module):
    """Gaussian noise of standard deviation ``sigma`` added to the input at every pass."""

    def __init__(self, net: nn.Module, sigma: float = 0.3) -> None:
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x + self.sigma * torch.randn_like(x))


class Softmax(nn.Module):
    """Probabilities instead of logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).softmax(dim=1)


class Detached(nn.Module):
    """The classifier on a detached copy of the input, plus a small differentiable branch:
    autograd sees only the small branch."""

    def __init__(self, net: nn.Module, aux: nn.Module, weight: float = 0.1) -> None:
        super().__init__()
        self.net, self.aux, self.weight = net, aux, weight

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.detach()) + self.weight * self.aux(x)


class Pocket(nn.Module):
    """Two classes; class 1 only in a thin shell (L2 radius ``r0``) around each centre, so an
    attack breaks a sample near it and not far away: robust accuracy that grows with eps."""

    def __init__(self, centers: Tensor, r0: float = 0.25, width: float = 0.05) -> None:
        super().__init__()
        self.register_buffer("centers", centers.flatten(1).clone())
        self.r0, self.width = r0, width

    def forward(self, x: Tensor) -> Tensor:
        r = torch.cdist(x.flatten(1), self.centers).amin(dim=1)
        bump = torch.exp(-(((r - self.r0) / self.width) ** 2))
        m = 1 - 2 * bump
        return torch.stack([m, -m], dim=1) * 4


def pocket_data(n: int = 32) -> tuple[Pocket, Tensor, Tensor]:
    """The pocket model and inputs at L2 distance 0.05 from its centres, all of class 0."""
    g = torch.Generator().manual_seed(0)
    centers = torch.rand(n, 1, 4, 4, generator=g) * 0.6 + 0.2
    offset = torch.randn(n, 1, 4, 4, generator=g)
    offset = offset / offset.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.05
    return Pocket(centers), centers + offset, torch.zeros(n, dtype=torch.long)


def digits_batch(n: int = 64) -> tuple[Tensor, Tensor]:
    _, _, x, y = digits_data()
    return x[:n], y[:n]
