"""The attacks. Import them from `advkit` directly.

The attack classes are listed once, in `advkit.attacks.registry.REGISTRY`;
``__all__`` here and in `advkit` is built from it. The imports below re-export
them for static type checkers (a test checks them against the registry).
"""

from advkit.attacks.apgd import APGD as APGD
from advkit.attacks.autoattack import AutoAttack as AutoAttack
from advkit.attacks.base import Attack, Found, MinNormAttack
from advkit.attacks.compose import Ensemble as Ensemble
from advkit.attacks.compose import MultiTargeted as MultiTargeted
from advkit.attacks.compose import Sweep as Sweep
from advkit.attacks.cw import CW as CW
from advkit.attacks.deepfool import DeepFool as DeepFool
from advkit.attacks.fab import FAB as FAB
from advkit.attacks.fast_gradient import FGSM as FGSM
from advkit.attacks.noise import GaussianNoise as GaussianNoise
from advkit.attacks.noise import UniformNoise as UniformNoise
from advkit.attacks.oracle import Oracle
from advkit.attacks.pgd import BIM as BIM
from advkit.attacks.pgd import PGD as PGD
from advkit.attacks.registry import REGISTRY
from advkit.attacks.square import Square as Square
from advkit.attacks.task import Task

__all__ = [
    "Attack",
    "Found",
    "MinNormAttack",
    "Oracle",
    "Task",
    *(entry.name for entry in REGISTRY),
]
