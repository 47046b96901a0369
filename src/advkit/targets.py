"""Target maps for targeted attacks: which class each sample should be pushed to.

A target map is a callable ``(logits, labels, generator) -> Tensor[B]`` that
receives the model's logits on the clean inputs. Pass one (or an explicit
tensor of classes) as ``targets=`` when calling an attack.

A map that reads only the number of classes from ``logits`` may say so with a
class attribute ``uses_logits = False``: an attack that needs no forward pass
on the clean inputs (PGD with a random start) then hands it the logits of its
first forward pass instead of paying for a clean one. Maps without the
attribute get the clean logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from torch import Tensor

from advkit.checks import ConfigError
from advkit.functional import RandomSource, randint

__all__ = ["LeastLikely", "RandomTarget", "Shift", "TargetMap", "least_likely", "random", "shift"]


class TargetMap(Protocol):
    """The signature of a target map."""

    def __call__(self, logits: Tensor, labels: Tensor, generator: RandomSource) -> Tensor: ...


@dataclass(frozen=True)
class Shift:
    """Targets ``(labels + k) % C`` (see `shift`)."""

    k: int = 1
    uses_logits: ClassVar[bool] = False

    def __call__(self, logits: Tensor, labels: Tensor, generator: RandomSource = None) -> Tensor:
        c = logits.shape[1]
        if self.k % c == 0:
            raise ConfigError(
                f"targets.shift({self.k}) maps every label to itself for {c} classes; "
                f"use a shift that is not a multiple of {c}."
            )
        return (labels + self.k) % c


@dataclass(frozen=True)
class RandomTarget:
    """A class drawn uniformly among the ``C - 1`` wrong ones (see `random`)."""

    uses_logits: ClassVar[bool] = False

    def __call__(self, logits: Tensor, labels: Tensor, generator: RandomSource = None) -> Tensor:
        c = logits.shape[1]
        r = randint(1, c, tuple(labels.shape), generator, device=labels.device, dtype=labels.dtype)
        return (labels + r) % c


@dataclass(frozen=True)
class LeastLikely:
    """The class with the lowest clean logit other than the label (see `least_likely`)."""

    uses_logits: ClassVar[bool] = True

    def __call__(self, logits: Tensor, labels: Tensor, generator: RandomSource = None) -> Tensor:
        z = logits.detach().scatter(1, labels.unsqueeze(1), float("inf"))
        return z.argmin(dim=1).to(labels.dtype)


def shift(k: int = 1) -> Shift:
    """Target ``(y + k) % C``, as in Ilyas et al. (NeurIPS 2019)'s non-robust features dataset.

    Examples:
        >>> shift(1)(torch.zeros(2, 10), torch.tensor([3, 9]), None)
        tensor([4, 0])
    """
    if isinstance(k, bool) or not isinstance(k, int):
        raise ConfigError(f"shift(k) needs an integer k, got {k!r}.")
    return Shift(k)


def random() -> RandomTarget:
    """Target a class drawn uniformly among the wrong ones, from the attack's ``generator``."""
    return RandomTarget()


def least_likely() -> LeastLikely:
    """Target the least likely wrong class on the clean input (Kurakin et al., 2017)."""
    return LeastLikely()
