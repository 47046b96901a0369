"""Every attack configuration, listed once; the contract suite runs over all of them.

A new attack is one more entry here (plus its own oracle or paper-figure test).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import advkit
from advkit import objectives
from advkit.attacks import Attack


@dataclass(frozen=True)
class AttackInfo:
    """One attack configuration of the contract table."""

    name: str
    make: Callable[[str, float], Attack]
    norms: tuple[str, ...] = ("linf", "l2", "l1")
    eps: dict[str, float] = field(default_factory=lambda: {"linf": 0.1, "l2": 0.5, "l1": 2.0})
    randomized: bool = False
    gradient: bool = True
    minimal: bool = False

    def cases(self) -> list[tuple[str, str, float]]:
        return [(f"{self.name}-{n}", n, self.eps[n]) for n in self.norms]


ATTACKS: list[AttackInfo] = [
    AttackInfo("FGSM", lambda n, e: advkit.FGSM(norm=n, eps=e)),
    AttackInfo("BIM", lambda n, e: advkit.BIM(norm=n, eps=e, steps=4)),
    AttackInfo("PGD", lambda n, e: advkit.PGD(norm=n, eps=e, steps=4, restarts=2), randomized=True),
    AttackInfo(
        "PGD-margin",
        lambda n, e: advkit.PGD(norm=n, eps=e, steps=3, objective=objectives.margin),
        randomized=True,
    ),
    AttackInfo(
        "PGD-dlr",
        lambda n, e: advkit.PGD(norm=n, eps=e, steps=3, objective=objectives.dlr),
        randomized=True,
    ),
    AttackInfo(
        "PGD-noinit",
        lambda n, e: advkit.PGD(norm=n, eps=e, steps=3, step_size=e / 2, random_init=False),
    ),
    AttackInfo(
        "UniformNoise",
        lambda n, e: advkit.UniformNoise(norm=n, eps=e, restarts=2),
        randomized=True,
        gradient=False,
    ),
    AttackInfo(
        "GaussianNoise",
        lambda n, e: advkit.GaussianNoise(norm=n, eps=e),
        randomized=True,
        gradient=False,
    ),
    AttackInfo(
        "DeepFool",
        lambda n, e: advkit.DeepFool(norm=n, steps=5, candidates=3),
        norms=("l2", "linf"),
        minimal=True,
    ),
    AttackInfo(
        "CW",
        lambda n, e: advkit.CW(steps=6, search_steps=2, initial_const=1.0),
        norms=("l2",),
        minimal=True,
    ),
]

CASES = [(info, name, norm, eps) for info in ATTACKS for (name, norm, eps) in info.cases()]
CASE_IDS = [c[1] for c in CASES]
