"""A small, download-free image task for the examples and benchmarks.

scikit-learn's bundled ``load_digits`` (1797 grey 8x8 images of handwritten
digits, 10 classes) as PyTorch tensors, a small CNN, and a seeded training
loop that reaches >= 95% test accuracy in a few seconds on a laptop CPU.

Importing this module has no side effects; everything happens in functions.

Example (with ``examples/`` on ``sys.path``)::

    from digits import SmallCNN, accuracy, load_digits_tensors, train

    x_train, y_train, x_test, y_test = load_digits_tensors(seed=0)
    model = train(SmallCNN(), x_train, y_train, seed=0)
    print(accuracy(model, x_test, y_test))  # about 0.99
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["NUM_CLASSES", "SmallCNN", "accuracy", "load_digits_tensors", "train"]

NUM_CLASSES = 10
N_TEST = 360


def load_digits_tensors(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's digits as ``(x_train, y_train, x_test, y_test)``.

    Images are float32 of shape ``(N, 1, 8, 8)`` scaled to ``[0, 1]``
    (pixel / 16), labels int64 of shape ``(N,)``. The split (1437 train /
    360 test) comes from a permutation seeded with ``seed``, so it is the
    same on every machine.
    """
    from sklearn.datasets import load_digits  # local import: no cost on module import

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    test, tr = perm[:N_TEST], perm[N_TEST:]
    return x[tr].contiguous(), y[tr].contiguous(), x[test].contiguous(), y[test].contiguous()


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks (conv + BatchNorm + ReLU), a 2x2 max-pool and a linear head.

    Input ``(B, 1, 8, 8)``, output ``(B, 10)`` logits.
    """

    def __init__(self, width: int = 16, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.head = nn.Linear(2 * width * 4 * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.features(x).flatten(1))
        return out


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 3e-3,
    reset: bool = True,
    loss: Callable[[Any, Tensor], Tensor] | None = None,
) -> nn.Module:
    """Train ``model`` on ``(x, y)`` with Adam; returns it in eval mode.

    The weights are re-initialised from ``seed`` (unless ``reset=False``, e.g.
    to fine-tune) and the mini-batch order is drawn from a generator seeded
    with ``seed``, so the same seed gives the same model on the same machine
    and torch build. Note that this seeds torch's global RNG too.

    ``loss(output, labels)`` is the training loss, cross-entropy by default;
    give one for models whose output is not a logits tensor (a tuple, an
    object with ``.logits``) or for another objective (a hinge loss).
    """
    torch.manual_seed(seed)
    if reset:  # re-initialise from the seed, whatever happened before
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * -(-x.shape[0] // batch_size)
    )
    loss_fn = nn.CrossEntropyLoss() if loss is None else loss
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode (the mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        return float((model(x).argmax(dim=1) == y).float().mean())
    finally:
        model.train(was_training)
