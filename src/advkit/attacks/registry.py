"""The one list of advkit's attacks.

Every public attack is listed here once, with the facts the rest of the
project reads from it: `advkit.__all__` and `advkit.attacks.__all__`, the
command line's attack names (``advkit eval --attack NAME``), the attack
tables of the README and the docs' home page, the API reference, and the
contract test suite. Adding an attack is one module, one entry here, one
oracle test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from advkit.attacks.apgd import APGD
from advkit.attacks.autoattack import AutoAttack
from advkit.attacks.base import Attack
from advkit.attacks.compose import Ensemble, MultiTargeted, Sweep
from advkit.attacks.cw import CW
from advkit.attacks.deepfool import DeepFool
from advkit.attacks.fab import FAB
from advkit.attacks.fast_gradient import FGSM
from advkit.attacks.noise import GaussianNoise, UniformNoise
from advkit.attacks.pgd import BIM, PGD
from advkit.attacks.square import Square
from advkit.objectives import dlr

__all__ = ["PRESETS", "REGISTRY", "AttackEntry", "Preset", "by_class_name", "by_cli_name"]


@dataclass(frozen=True)
class AttackEntry:
    """One attack of the registry.

    Attributes:
        cls: the attack's class.
        cli: its name on the command line (``advkit eval --attack NAME``);
            ``None`` for attacks built from other attacks, which the command
            line cannot express.
        kind: ``"gradient"``, ``"minimal-norm"``, ``"score-based"`` (forward passes
            only), ``"noise"`` or ``"composite"``.
        norms: the threat models it supports.
        summary: what it does, in one line (the attack tables).
        reference: the paper it implements (empty for advkit's own).
        quick: constructor settings of a cheap run, for tests and smoke
            benchmarks (the contract suite runs every attack with them).
    """

    cls: type[Attack]
    cli: str | None
    kind: str
    norms: tuple[str, ...]
    summary: str
    reference: str = ""
    quick: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The class name, as exported from `advkit`."""
        return self.cls.__name__


ALL_NORMS = ("linf", "l2", "l1")

REGISTRY: tuple[AttackEntry, ...] = (
    AttackEntry(
        FGSM,
        "fgsm",
        "gradient",
        ALL_NORMS,
        "one step of length `eps` along the steepest ascent (FGSM for Linf, FGM for L2 / L1)",
        "Goodfellow et al., ICLR 2015",
    ),
    AttackEntry(
        BIM,
        "bim",
        "gradient",
        ALL_NORMS,
        "iterative steps from the clean input, no random start",
        "Kurakin et al., ICLR workshop 2017",
        {"steps": 4},
    ),
    AttackEntry(
        PGD,
        "pgd",
        "gradient",
        ALL_NORMS,
        "random start, iterative projected steps, restarts, best iterate kept",
        "Madry et al., ICLR 2018",
        {"steps": 4, "restarts": 2},
    ),
    AttackEntry(
        APGD,
        "apgd",
        "gradient",
        ALL_NORMS,
        "PGD with momentum and a per-sample step-size schedule (APGD-CE, APGD-DLR; "
        "exact L1-ball-and-box projection for L1)",
        "Croce & Hein, ICML 2020; ICCV 2021 (L1)",
        {"steps": 6, "restarts": 2},
    ),
    AttackEntry(
        DeepFool,
        "deepfool",
        "minimal-norm",
        ("l2", "linf"),
        "smallest perturbation to the nearest linearized decision boundary",
        "Moosavi-Dezfooli et al., CVPR 2016",
        {"steps": 5, "candidates": 3},
    ),
    AttackEntry(
        CW,
        "cw",
        "minimal-norm",
        ("l2",),
        "smallest L2 perturbation by optimisation, binary search over the constant",
        "Carlini & Wagner, IEEE S&P 2017",
        {"steps": 6, "search_steps": 2, "initial_const": 1.0},
    ),
    AttackEntry(
        Square,
        "square",
        "score-based",
        ("linf", "l2", "l1"),
        "random search over square windows on the model's scores, no gradients "
        "(queries per sample in `result.queries`)",
        "Andriushchenko et al., ECCV 2020",
        {"queries": 12},
    ),
    AttackEntry(
        FAB,
        "fab",
        "minimal-norm",
        ALL_NORMS,
        "projections onto the linearized boundary within the box, biased towards the clean "
        "input, with backward steps (`MultiTargeted(FAB(...))` is FAB-T)",
        "Croce & Hein, ICML 2020",
        {"steps": 4, "restarts": 2},
    ),
    AttackEntry(
        UniformNoise,
        "uniform",
        "noise",
        ALL_NORMS,
        "uniform random noise of norm exactly `eps` (a baseline)",
        "",
        {"restarts": 2},
    ),
    AttackEntry(
        GaussianNoise,
        "gaussian",
        "noise",
        ALL_NORMS,
        "Gaussian random noise of norm exactly `eps` (a baseline)",
    ),
    AttackEntry(
        MultiTargeted,
        None,
        "composite",
        ALL_NORMS,
        "a targeted attack towards each of the top-k wrong classes, any misclassification "
        "counts (`MultiTargeted(APGD(objective=dlr))` is APGD-T)",
        "Croce & Hein, ICML 2020 (APGD-T)",
    ),
    AttackEntry(
        Ensemble,
        None,
        "composite",
        ALL_NORMS,
        "the per-sample worst case over attacks, each run only on what is still robust",
        "Croce & Hein, ICML 2020 (AutoAttack's semantics)",
    ),
    AttackEntry(
        AutoAttack,
        "autoattack",
        "composite",
        ALL_NORMS,
        "the AutoAttack ensemble: versions `standard`, `plus`, `rand` as in the reference "
        "code, and advkit's `fast`",
        "Croce & Hein, ICML 2020",
        {"version": "standard", "steps": 2, "queries": 6, "num_targets": 2},
    ),
    AttackEntry(
        Sweep,
        None,
        "composite",
        ALL_NORMS,
        "a fixed-eps attack over a grid of budgets, as a minimal-norm attack",
    ),
)
"""Every public attack, in the order the tables list them."""


@dataclass(frozen=True)
class Preset:
    """A named configuration built from registered attacks (the command line's names for
    compositions, e.g. ``apgd-t``).

    Attributes:
        build: ``(norm=..., **settings) -> Attack``.
        summary: what it is, in one line.
    """

    build: Callable[..., Attack]
    summary: str


def _apgd_dlr(**settings: Any) -> Attack:
    return APGD(objective=dlr, **settings)


def _apgd_t(num_targets: int | None = None, **settings: Any) -> Attack:
    return MultiTargeted(APGD(objective=dlr, **settings), num_targets=num_targets)


PRESETS: dict[str, Preset] = {
    "apgd-ce": Preset(APGD, "APGD on the cross-entropy (the same as apgd)"),
    "apgd-dlr": Preset(_apgd_dlr, "APGD on the DLR loss"),
    "apgd-t": Preset(
        _apgd_t,
        "APGD-T: MultiTargeted(APGD(objective=dlr)) over the top num_targets classes "
        "(default min(9, C - 1))",
    ),
}
"""Command-line names of common compositions; options go to the inner attack, except
``num_targets``."""


def by_cli_name() -> dict[str, Callable[..., Attack]]:
    """The command line's attack names: ``{name: class or preset builder}``."""
    out: dict[str, Callable[..., Attack]] = {e.cli: e.cls for e in REGISTRY if e.cli is not None}
    out.update({name: p.build for name, p in PRESETS.items()})
    return out


def by_class_name() -> dict[str, AttackEntry]:
    """``{class name: entry}``."""
    return {e.name: e for e in REGISTRY}
