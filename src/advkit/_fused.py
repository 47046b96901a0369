"""Faster variants of the shared step, chosen by one dispatcher.

`advkit.functional.pgd_step` is the specification: a handful of elementwise
kernels (direction, scaled step, ball projection, box clip), each reading and
writing the whole batch. On a GPU that is memory traffic and kernel launches
the model's own passes do not need, so there the dispatcher `pgd_step` runs the
same function compiled by ``torch.compile``, which fuses the elementwise chain
(and the per-sample reductions of L2) into one or two kernels. On the CPU, where
the gain is small next to the model and compiling costs seconds, and inside
code that is itself being compiled, it runs the reference. The tests check
that both agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from advkit import functional as F

__all__ = ["compiled_pgd_step", "fused_enabled", "pgd_step"]

fused_enabled = True
"""Set to False to always run the reference step (e.g. to compare or debug)."""

_compiled: Callable[..., Tensor] | None = None


def compiled_pgd_step() -> Callable[..., Tensor]:
    """`advkit.functional.pgd_step` compiled with ``torch.compile`` (built on first use)."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(F.pgd_step, dynamic=True)
    return _compiled


def _worth_fusing(x: Tensor) -> bool:
    return (
        fused_enabled
        and x.device.type == "cuda"
        and not torch.compiler.is_compiling()
        and x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    )


def pgd_step(
    x: Tensor,
    x0: Tensor,
    grad: Tensor,
    *,
    norm: F.NormLike,
    eps: F.Scalar,
    step_size: F.Scalar,
    bounds: F.Bounds,
) -> Tensor:
    """The step of `advkit.functional.pgd_step`, fused on CUDA; same arguments and result."""
    fn: Callable[..., Any] = compiled_pgd_step() if _worth_fusing(x) else F.pgd_step
    out: Tensor = fn(x, x0, grad, norm=norm, eps=eps, step_size=step_size, bounds=bounds)
    return out
