"""Plots of attack results (needs matplotlib: ``pip install advkit[plot]``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from advkit.checks import ConfigError
from advkit.result import AttackResult

__all__ = ["robust_accuracy_curve"]


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "advkit.plot needs matplotlib: pip install 'advkit[plot]' (or matplotlib)."
        ) from None
    return plt


def robust_accuracy_curve(
    results: AttackResult | Mapping[str, AttackResult],
    eps: Sequence[float] | None = None,
    *,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Plot robust accuracy against eps, one line per attack result.

    A minimal-norm result (`DeepFool`, `CW`) gives the whole curve from one
    run: the robust accuracy at eps is the fraction of samples whose smallest
    adversarial perturbation is larger than eps (`AttackResult.robust_accuracy`).

    Args:
        results: one result, or a mapping from a label to a result.
        eps: the budgets to plot, in the attack's norm and the model's input
            space. Default: every distinct finite distance of the results
            (an exact step curve) and 0.
        ax: a matplotlib ``Axes`` to draw into; default a new figure.
        title: the axes' title.

    Returns:
        The matplotlib ``Axes``.

    Raises:
        ConfigError: for targeted results, or results of different norms.
    """
    named = {"": results} if isinstance(results, AttackResult) else dict(results)
    norms = {r.norm for r in named.values()}
    if len(norms) != 1:
        raise ConfigError(f"results measured in different norms {sorted(norms)} share no eps axis.")
    if eps is None:
        found = {0.0}
        for r in named.values():
            found.update(float(d) for d in r.distance.tolist() if math.isfinite(d))
        grid = sorted(found)
    else:
        grid = sorted(float(e) for e in eps)
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(5, 3.5))
    for label, r in named.items():
        ax.step(grid, r.robust_accuracy(grid), where="post", label=label or None)
    ax.set_xlabel(f"eps ({norms.pop()} norm, input space)")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    if any(named):
        ax.legend()
    if title:
        ax.set_title(title)
    return ax
