"""Every attack configuration, listed once; the contract suite runs over all of them.

The table is built from the attack registry (`advkit.attacks.registry.REGISTRY`):
every registered attack runs with its entry's ``quick`` settings, composites with
the small configurations below, and a few variants (objectives, no random
start) are added. `tests/test_registry.py` checks that no registered attack is
missing here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import advkit
from advkit import objectives
from advkit.attacks import Attack
from advkit.attacks.registry import REGISTRY, AttackEntry


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
    targetable: bool = True
    cls: type[Attack] | None = None

    def cases(self) -> list[tuple[str, str, float]]:
        return [(f"{self.name}-{n}", n, self.eps[n]) for n in self.norms]


COMPOSITES: dict[str, Callable[[str, float], Attack]] = {
    # APGD-T on 2 targets.
    "MultiTargeted": lambda n, e: advkit.MultiTargeted(
        advkit.APGD(norm=n, eps=e, steps=3, objective=objectives.dlr), num_targets=2
    ),
    "Ensemble": lambda n, e: advkit.Ensemble(
        [advkit.FGSM(norm=n, eps=e), advkit.PGD(norm=n, eps=e, steps=2)]
    ),
    "Sweep": lambda n, e: advkit.Sweep(advkit.PGD(norm=n, steps=2), eps=[e / 4, e / 2, e]),
}
RANDOMIZED = {
    "PGD",
    "APGD",
    "Square",
    "UniformNoise",
    "GaussianNoise",
    "MultiTargeted",
    "Ensemble",
    "Sweep",
    "AutoAttack",
}


def _from_registry(entry: AttackEntry) -> AttackInfo:
    if entry.name in COMPOSITES:
        make = COMPOSITES[entry.name]
    elif entry.kind == "minimal-norm":

        def make(n: str, e: float, entry: AttackEntry = entry) -> Attack:
            return entry.cls(norm=n, **entry.quick)

    else:

        def make(n: str, e: float, entry: AttackEntry = entry) -> Attack:
            return entry.cls(norm=n, eps=e, **entry.quick)

    probe = make(entry.norms[0], 0.1)
    return AttackInfo(
        entry.name,
        make,
        norms=entry.norms,
        randomized=entry.name in RANDOMIZED,
        gradient=entry.kind not in ("noise", "score-based"),
        minimal=probe.minimal,
        targetable=entry.cls not in (advkit.MultiTargeted, advkit.AutoAttack),
        cls=entry.cls,
    )


ATTACKS: list[AttackInfo] = [_from_registry(entry) for entry in REGISTRY] + [
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
        "APGD-dlr-earlystop",
        lambda n, e: advkit.APGD(norm=n, eps=e, steps=9, objective=objectives.dlr, early_stop=True),
        randomized=True,
    ),
    AttackInfo(
        "APGD-smooth-earlystop",
        lambda n, e: advkit.APGD(
            norm=n, eps=e, steps=6, smoothing=0.2, smoothing_draws=2, early_stop=True
        ),
        randomized=True,
    ),
    AttackInfo(
        "Ensemble-minimal",
        lambda n, e: advkit.Ensemble(
            [
                advkit.DeepFool(norm=n, steps=3, candidates=3),
                advkit.Sweep(advkit.PGD(norm=n, steps=2), eps=[e / 2, e]),
            ]
        ),
        norms=("l2", "linf"),
        randomized=True,
        minimal=True,
    ),
    AttackInfo(
        "Ensemble-nested",
        lambda n, e: advkit.Ensemble(
            [advkit.Ensemble([advkit.FGSM(norm=n)]), advkit.APGD(norm=n, steps=2)], eps=e
        ),
        randomized=True,
    ),
]

CASES = [(info, name, norm, eps) for info in ATTACKS for (name, norm, eps) in info.cases()]
CASE_IDS = [c[1] for c in CASES]
