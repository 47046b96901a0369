"""The networks the throughput benchmark attacks, defined here (no torchvision).

Four image classifiers spanning the sizes attacks are run on, all taking
inputs in ``[0, 1]`` and returning logits:

* ``smallcnn``: a small CNN on 28x28 grey images (MNIST-sized), 10 classes,
  optionally trained on scikit-learn's digits upscaled to 28x28 so that attack
  strength means something;
* ``resnet18``: the CIFAR ResNet-18 (3x3 stem, no max-pool; He et al. 2016,
  as used in most adversarial-training papers), 32x32 RGB, 10 classes;
* ``wrn28_10``: WideResNet-28-10 (Zagoruyko & Komodakis 2016, pre-activation
  blocks), 32x32 RGB, 10 classes;
* ``resnet50``: the ImageNet ResNet-50 (bottleneck blocks, 7x7 stem and
  max-pool), 224x224 RGB, 1000 classes.

Weights are random and seeded; BatchNorm statistics are set by a few no-grad
train-mode passes over seeded random images, so that activations keep a sane
scale through depth. Models are returned in eval mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MODELS", "ModelSpec", "build", "digits28"]


class SmallCNN28(nn.Module):
    """conv32-BN-ReLU-pool, conv64-BN-ReLU-pool, fc128, fc10 on ``(B, 1, 28, 28)``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 14 -> 7
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.features(x))
        return out


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a projection shortcut when the shape changes."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), as in torchvision's ResNet v1.5."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with a CIFAR stem (3x3 conv, no pool) or an ImageNet stem (7x7/2 conv + pool)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int,
        imagenet_stem: bool,
    ) -> None:
        super().__init__()
        if imagenet_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
            )
        cin = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, planes, stride))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.stages(self.stem(x))
        logits: Tensor = self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))
        return logits


class WideBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3, BN-ReLU-conv3x3, 1x1 shortcut on shape change."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        out = self.conv1(o)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class WideResNet(nn.Module):
    """WideResNet-depth-width for 32x32 inputs (depth 28, width 10: 36.5 M parameters)."""

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * width, 32 * width, 64 * width)
        self.conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, cout in enumerate(widths[1:]):
            for j in range(n):
                blocks.append(WideBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.blocks(self.conv(x))))
        logits: Tensor = self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))
        return logits


@dataclass(frozen=True)
class ModelSpec:
    """How to build one benchmark model and what it takes."""

    name: str
    description: str
    input_shape: tuple[int, int, int]
    num_classes: int
    make: Callable[[], nn.Module]


MODELS: dict[str, ModelSpec] = {
    "smallcnn": ModelSpec("smallcnn", "small CNN, 28x28x1 (digits)", (1, 28, 28), 10, SmallCNN28),
    "resnet18": ModelSpec(
        "resnet18",
        "CIFAR ResNet-18, 32x32x3",
        (3, 32, 32),
        10,
        lambda: ResNet(BasicBlock, (2, 2, 2, 2), 10, imagenet_stem=False),
    ),
    "wrn28_10": ModelSpec(
        "wrn28_10", "WideResNet-28-10, 32x32x3", (3, 32, 32), 10, lambda: WideResNet(28, 10, 10)
    ),
    "resnet50": ModelSpec(
        "resnet50",
        "ResNet-50, 224x224x3",
        (3, 224, 224),
        1000,
        lambda: ResNet(Bottleneck, (3, 4, 6, 3), 1000, imagenet_stem=True),
    ),
}


def _calibrate_batchnorm(model: nn.Module, shape: tuple[int, ...], seed: int) -> None:
    """Set BatchNorm running statistics from one no-grad train-mode pass over random images."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass sets the statistics of that batch
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    with torch.no_grad():
        model(torch.rand((8, *shape), generator=gen))
    for m in bns:
        m.momentum = 0.1
    model.eval()


def build(name: str, seed: int = 0) -> nn.Module:
    """The named model with seeded random weights and calibrated BatchNorm, in eval mode, on CPU."""
    spec = MODELS[name]
    torch.manual_seed(seed)
    model = spec.make()
    _calibrate_batchnorm(model, spec.input_shape, seed)
    return model.eval()


def digits28(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 8x8 digits, bilinearly upscaled to 24x24 and zero-padded to 28x28.

    Returns ``(x_train, y_train, x_test, y_test)`` (1437 / 360 images, float32 in
    ``[0, 1]``, shape ``(N, 1, 28, 28)``), split by a permutation seeded with ``seed``.
    """
    from sklearn.datasets import load_digits  # local import: only needed when training

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)
    x = F.pad(x, (2, 2, 2, 2)).clamp(0, 1)
    y = torch.as_tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    test, tr = perm[:360], perm[360:]
    return x[tr].contiguous(), y[tr].contiguous(), x[test].contiguous(), y[test].contiguous()


def train_smallcnn(
    model: nn.Module, x: Tensor, y: Tensor, epochs: int = 4, seed: int = 0, lr: float = 3e-3
) -> tuple[nn.Module, float]:
    """Train the small CNN with Adam (one-cycle schedule); returns it in eval mode and the seconds taken."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    batch = 64
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * -(-x.shape[0] // batch)
    )
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], batch):
            idx = perm[i : i + batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model, time.perf_counter() - start
