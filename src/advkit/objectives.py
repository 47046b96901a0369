"""Attack objectives: ``(logits, labels, targets) -> Tensor[B]``, higher is better for the attacker.

``targets`` is ``None`` for an untargeted attack (push away from ``labels``)
and a ``(B,)`` tensor of classes for a targeted one (pull towards ``targets``).
Any callable with this signature can be passed as ``objective=`` to an
attack. Losses are computed in float32 (or float64 for float64 logits).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as nnf
from torch import Tensor

from advkit.checks import ConfigError

__all__ = ["Objective", "cross_entropy", "dlr", "margin"]


class Objective(Protocol):
    """The signature of an attack objective."""

    def __call__(self, logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor: ...


def _f(logits: Tensor) -> Tensor:
    return logits if logits.dtype == torch.float64 else logits.float()


def _max_other(z: Tensor, cls: Tensor) -> Tensor:
    """``max_{j != cls} z_j`` per row."""
    return z.scatter(1, cls.unsqueeze(1), float("-inf")).amax(dim=1)


def _pick(z: Tensor, cls: Tensor) -> Tensor:
    return z.gather(1, cls.unsqueeze(1)).squeeze(1)


def cross_entropy(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    r"""Cross-entropy: $\mathrm{CE}(z, y)$ untargeted, $-\mathrm{CE}(z, t)$ targeted.

    Examples:
        >>> z = torch.tensor([[2.0, 0.0]])
        >>> cross_entropy(z, torch.tensor([0])).round(decimals=4)
        tensor([0.1269])
    """
    z = _f(logits)
    if targets is None:
        return nnf.cross_entropy(z, labels, reduction="none")
    return -nnf.cross_entropy(z, targets, reduction="none")


def margin(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    r"""The Carlini-Wagner margin, positive exactly when the attack succeeds.

    Untargeted: $\max_{j \ne y} z_j - z_y$; targeted:
    $z_t - \max_{j \ne t} z_j$. Correct for logits of any sign and for
    log-probabilities (the margin is invariant to a per-row shift).

    Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks"
    (IEEE S&P 2017), objective $f_6$.
    """
    z = _f(logits)
    if targets is None:
        return _max_other(z, labels) - _pick(z, labels)
    return _pick(z, targets) - _max_other(z, targets)


def dlr(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    r"""Difference of Logits Ratio, invariant to shifting and rescaling the logits.

    Untargeted: $-(z_y - \max_{j \ne y} z_j) / (z_{\pi_1} - z_{\pi_3})$;
    targeted: $-(z_y - z_t) / (z_{\pi_1} - (z_{\pi_3} + z_{\pi_4}) / 2)$,
    with $z_{\pi_1} \ge z_{\pi_2} \ge \dots$ the sorted logits. Needs at
    least 3 (untargeted) or 4 (targeted) classes.

    Croce & Hein, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks" (ICML 2020).
    """
    z = _f(logits)
    c = z.shape[1]
    need = 3 if targets is None else 4
    if c < need:
        kind = "untargeted" if targets is None else "targeted"
        raise ConfigError(
            f"the {kind} DLR objective needs at least {need} classes, the model has {c}; "
            "use objectives.margin instead."
        )
    top = z.topk(need, dim=1).values
    zy = _pick(z, labels)
    if targets is None:
        return -(zy - _max_other(z, labels)) / (top[:, 0] - top[:, 2] + 1e-12)
    return -(zy - _pick(z, targets)) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)
