"""Small seeded models for tests: images (with BatchNorm), vectors and sequences."""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 5


class ConvNet(nn.Module):
    """(B, 3, 6, 6) images; two BatchNorms, the second of which tests like to freeze in eval."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
        )
        self.head = nn.Linear(4 * 6 * 6, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class SeqNet(nn.Module):
    """(B, 4, 9) sequences."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3)
        self.head = nn.Linear(6, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=2))


def mlp(features: int = 7) -> nn.Module:
    return nn.Sequential(
        nn.Linear(features, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, NUM_CLASSES)
    )


def make_model(kind: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    """A seeded model and the per-sample input shape it takes."""
    torch.manual_seed(seed)
    if kind == "conv":
        model: nn.Module = ConvNet()
        shape: tuple[int, ...] = (3, 6, 6)
    elif kind == "mlp":
        model, shape = mlp(), (7,)
    elif kind == "seq":
        model, shape = SeqNet(), (4, 9)
    else:
        raise ValueError(kind)
    # Non-trivial BatchNorm statistics, so that a reset or an update would show.
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.8, 1.2)
    return model, shape


def make_batch(
    shape: tuple[int, ...], batch: int = 6, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, *shape), generator=g) * 0.8 + 0.1
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    return x, y


def exact_norm_at_most(
    x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: object
) -> torch.Tensor:
    """``(B,)`` bool: ``||x_adv - x|| <= eps`` in exact arithmetic on the values themselves.

    Differences of float32 and half-precision values are exact in float64 and their norms
    are accurate to about 1e-16 there, far below the attacks' rounding margins; float64
    values are compared as exact fractions (Linf, L1; L2 squared).
    """
    import math
    from fractions import Fraction

    budgets = eps.double().expand(x.shape[0]) if isinstance(eps, torch.Tensor) else None
    if x.dtype != torch.float64:
        order = {"linf": math.inf, "l2": 2.0, "l1": 1.0}[norm]
        d = torch.linalg.vector_norm((x_adv.double() - x.double()).flatten(1), ord=order, dim=1)
        limit = budgets if budgets is not None else torch.full_like(d, float(eps))  # type: ignore[arg-type]
        return d <= limit
    out = []
    for i in range(x.shape[0]):
        e = Fraction(float(budgets[i] if budgets is not None else eps))  # type: ignore[arg-type]
        diffs = [
            Fraction(a) - Fraction(b)
            for a, b in zip(x_adv[i].flatten().tolist(), x[i].flatten().tolist(), strict=True)
        ]
        if norm == "linf":
            out.append(max((abs(v) for v in diffs), default=Fraction(0)) <= e)
        elif norm == "l1":
            out.append(sum(abs(v) for v in diffs) <= e)
        else:
            out.append(sum(v * v for v in diffs) <= e * e)
    return torch.tensor(out, dtype=torch.bool)
