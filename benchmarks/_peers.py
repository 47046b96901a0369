"""Peer libraries' PGD, FGSM and APGD-CE for the throughput benchmark, each optional.

Every builder returns a list of `Runner`s or raises `PeerMissing` with a one-line
reason; ``run.py`` prints that line and goes on. Nothing here installs anything.
Settings everywhere: Linf, eps and step size in pixels of ``[0, 1]`` images,
``steps`` iterations from a uniform random start inside the ball (PGD), one
full sign step of length eps (FGSM), cross-entropy loss. APGD-CE (Croce & Hein
2020): ``steps`` iterations, 1 restart, each library's own schedule and random
start; torchattacks, adv-lib and the AutoAttack reference code (``pyautoattack``).

The peers are given the model as a user holds it (eval mode, parameters with
``requires_grad=True``), so each library's own handling of the parameters is
part of its cost: torchattacks and adv-lib differentiate with respect to the
input only, foolbox 3 (through eagerpy's ``.backward()``) also computes and
accumulates the weight gradients. A second foolbox row gets a frozen copy to
show what that costs.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

PEERS = ("torchattacks", "foolbox", "adv-lib", "autoattack")


class PeerMissing(Exception):
    """The peer library does not import (not installed, or built for another torch)."""


@dataclass
class Runner:
    """One peer attack: ``run(model, x, y) -> x_adv``; ``frozen`` asks for frozen parameters."""

    name: str
    library: str
    version: str
    settings: str
    run: Callable[[nn.Module, Tensor, Tensor], Tensor]
    frozen: bool = False


def _placeholder(name: str) -> bool:
    """Register an inert module ``name`` when the real one does not import; True if registered."""
    try:
        importlib.import_module(name)
        return False
    except Exception:  # missing, or installed but built for another torch
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
    module = types.ModuleType(name)
    if name == "torchvision":  # adv_lib.distances.lpips does `from torchvision import models`
        sub = types.ModuleType("torchvision.models")
        module.models = sub  # type: ignore[attr-defined]
        sys.modules["torchvision.models"] = sub
    sys.modules[name] = module
    return True


def per_model(factory: Callable[[nn.Module], Any]) -> Callable[[nn.Module], Any]:
    """Build a library's attack object once per model object (construction is not timed twice)."""
    cache: dict[int, tuple[nn.Module, Any]] = {}

    def get(model: nn.Module) -> Any:
        hit = cache.get(id(model))
        if hit is None or hit[0] is not model:
            hit = (model, factory(model))
            cache[id(model)] = hit
        return hit[1]

    return get


def torchattacks_runners(attack: str, eps: float, alpha: float, steps: int) -> list[Runner]:
    try:
        import torchattacks
    except Exception as err:
        raise PeerMissing(f"torchattacks does not import ({type(err).__name__}: {err})") from None
    version = torchattacks.__version__
    if attack == "pgd":
        settings = (
            f"torchattacks.PGD(eps={eps:.6g}, alpha={alpha:.6g}, steps={steps}, random_start=True)"
        )
        get = per_model(
            lambda m: torchattacks.PGD(m, eps=eps, alpha=alpha, steps=steps, random_start=True)
        )
    elif attack == "fgsm":
        settings = f"torchattacks.FGSM(eps={eps:.6g})"
        get = per_model(lambda m: torchattacks.FGSM(m, eps=eps))
    elif attack == "apgd":
        settings = (
            f"torchattacks.APGD(norm='Linf', eps={eps:.6g}, steps={steps}, n_restarts=1, "
            "seed=0, loss='ce')"
        )
        get = per_model(
            lambda m: torchattacks.APGD(
                m, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=0, loss="ce"
            )
        )
    else:
        return []

    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        out: Tensor = get(model)(x, y)
        return out

    return [Runner("torchattacks", "torchattacks", version, settings, run)]


def foolbox_runners(attack: str, eps: float, alpha: float, steps: int) -> list[Runner]:
    try:
        import eagerpy
        import foolbox as fb
    except Exception as err:
        raise PeerMissing(f"foolbox does not import ({type(err).__name__}: {err})") from None
    version = f"{fb.__version__} (eagerpy {eagerpy.__version__})"
    if attack == "pgd":
        fb_attack: Any = fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)
        settings = f"foolbox.attacks.LinfPGD(abs_stepsize={alpha:.6g}, steps={steps}, random_start=True), epsilons={eps:.6g}"
    elif attack == "fgsm":
        fb_attack = fb.attacks.FGSM()
        settings = f"foolbox.attacks.FGSM(), epsilons={eps:.6g}"
    else:
        return []
    get = per_model(lambda m: fb.PyTorchModel(m, bounds=(0, 1), device=_device_of(m)))

    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        _raw, clipped, _ok = fb_attack(get(model), x, y, epsilons=eps)
        out: Tensor = clipped
        return out

    return [
        Runner("foolbox", "foolbox", version, settings, run),
        Runner("foolbox, frozen params", "foolbox", version, settings, run, frozen=True),
    ]


def adv_lib_runners(attack: str, eps: float, alpha: float, steps: int) -> list[Runner]:
    if attack not in ("pgd", "apgd"):
        return []  # adv-lib has no FGSM (its 1-step PGD returns the best *evaluated* point)
    placeholders = [n for n in ("torchvision", "visdom") if _placeholder(n)]
    try:
        import adv_lib
        from adv_lib.attacks import pgd_linf
        from adv_lib.attacks.auto_pgd import apgd
    except Exception as err:
        raise PeerMissing(f"adv-lib does not import ({type(err).__name__}: {err})") from None
    version = adv_lib.__version__ + (
        f" ({', '.join(placeholders)} placeholder)" if placeholders else ""
    )
    if attack == "apgd":

        def run_apgd(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            out: Tensor = apgd(
                model, x, y, eps, norm=float("inf"), n_iter=steps, n_restarts=1, loss_function="ce"
            )
            return out

        settings = (
            f"adv_lib.attacks.auto_pgd.apgd(eps={eps:.6g}, norm=inf, n_iter={steps}, "
            "n_restarts=1, loss_function='ce')"
        )
        return [Runner("adv-lib", "adv-lib", version, settings, run_apgd)]
    settings = (
        f"adv_lib.attacks.pgd_linf(eps={eps:.6g}, steps={steps}, absolute_step_size={alpha:.6g}, "
        "random_init=True, restarts=1, loss_function='ce')"
    )

    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        out: Tensor = pgd_linf(
            model, x, y, eps, steps=steps, random_init=True, absolute_step_size=alpha
        )
        return out

    return [Runner("adv-lib", "adv-lib", version, settings, run)]


def autoattack_runners(attack: str, eps: float, alpha: float, steps: int) -> list[Runner]:
    """The AutoAttack reference code's APGD-CE (``pyautoattack``, a PyPI copy of fra31/auto-attack).

    ``perturb`` re-seeds the global RNG with its ``seed`` argument on every call.
    """
    if attack != "apgd":
        return []
    try:
        import importlib.metadata

        from pyautoattack.autopgd_base import APGDAttack
    except Exception as err:
        raise PeerMissing(f"pyautoattack does not import ({type(err).__name__}: {err})") from None
    version = importlib.metadata.version("pyautoattack")
    settings = (
        f"pyautoattack.autopgd_base.APGDAttack(n_iter={steps}, norm='Linf', n_restarts=1, "
        f"eps={eps:.6g}, seed=0, loss='ce')"
    )

    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        attack = APGDAttack(
            model, n_iter=steps, norm="Linf", n_restarts=1, eps=eps, seed=0, loss="ce",
            device=x.device,
        )  # fmt: skip
        out: Tensor = attack.perturb(x, y)
        return out

    return [Runner("AutoAttack", "autoattack", version, settings, run)]


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


BUILDERS: dict[str, Callable[[str, float, float, int], list[Runner]]] = {
    "torchattacks": torchattacks_runners,
    "foolbox": foolbox_runners,
    "adv-lib": adv_lib_runners,
    "autoattack": autoattack_runners,
}
