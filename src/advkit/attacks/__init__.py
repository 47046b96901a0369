"""The attacks. Import them from `advkit` directly."""

from advkit.attacks.base import Attack, Context, MinNormAttack
from advkit.attacks.cw import CW
from advkit.attacks.deepfool import DeepFool
from advkit.attacks.fast_gradient import FGSM
from advkit.attacks.noise import GaussianNoise, UniformNoise
from advkit.attacks.pgd import BIM, PGD

__all__ = [
    "BIM",
    "CW",
    "FGSM",
    "PGD",
    "Attack",
    "Context",
    "DeepFool",
    "GaussianNoise",
    "MinNormAttack",
    "UniformNoise",
]
