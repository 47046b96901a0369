"""The attacks. Import them from `advkit` directly."""

from advkit.attacks.base import Attack, Context
from advkit.attacks.fast_gradient import FGSM
from advkit.attacks.noise import GaussianNoise, UniformNoise
from advkit.attacks.pgd import BIM, PGD

__all__ = ["BIM", "FGSM", "PGD", "Attack", "Context", "GaussianNoise", "UniformNoise"]
