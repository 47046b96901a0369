"""The one result type every attack returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from advkit.checks import ConfigError

__all__ = ["AttackResult"]


@dataclass(frozen=True, repr=False)
class AttackResult:
    """What an attack found, batched over the samples of one call.

    Attributes:
        x_adv: adversarial inputs, always feasible: inside the eps-ball around
            the clean inputs and inside the model's input box. Same shape,
            dtype, device and memory format as the inputs. Where the attack
            failed it holds the best attempt (highest objective), which is
            still feasible.
        success: ``(B,)`` bool, computed on exactly ``x_adv``: the prediction
            differs from the label (untargeted) or equals the target (targeted).
            An untargeted attack succeeds trivially on misclassified inputs.
        distance: ``(B,)`` norm of ``x_adv - x`` in the attack's norm, in input
            space (float32 for half-precision inputs).
        logits: ``(B, C)`` model outputs on ``x_adv``.
        labels: ``(B,)`` true labels the attack was given.
        targets: ``(B,)`` target classes of a targeted attack, else ``None``.
        norm: name of the threat model (``"linf"``, ``"l2"``, ``"l1"``).
        forward_passes: number of batched forward passes of the model.
        backward_passes: number of batched input-gradient backward passes.
    """

    x_adv: Tensor
    success: Tensor
    distance: Tensor
    logits: Tensor
    labels: Tensor
    targets: Tensor | None
    norm: str
    forward_passes: int
    backward_passes: int

    @property
    def targeted(self) -> bool:
        """Whether the attack was targeted."""
        return self.targets is not None

    @property
    def success_rate(self) -> float:
        """Fraction of samples on which the attack succeeded (a host sync)."""
        return int(self.success.sum()) / max(self.success.numel(), 1)

    def robust_accuracy(self) -> float:
        """Fraction of samples still classified correctly on ``x_adv`` (untargeted attacks).

        Raises:
            ConfigError: for a targeted attack, where robust accuracy is not
                the complement of success; use ``success_rate`` there.
        """
        if self.targets is not None:
            raise ConfigError(
                "robust_accuracy() is defined for untargeted attacks; for a targeted attack "
                "use result.success_rate (fraction of samples that reached their target)."
            )
        return int((~self.success).sum()) / max(self.success.numel(), 1)

    def __repr__(self) -> str:
        kind = "targeted" if self.targeted else "untargeted"
        return (
            f"AttackResult({kind}, norm={self.norm}, batch={self.x_adv.shape[0]}, "
            f"success_rate={self.success_rate:.4f}, forward_passes={self.forward_passes}, "
            f"backward_passes={self.backward_passes})"
        )
