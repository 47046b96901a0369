"""Faster variants of the shared step, chosen by one dispatcher.

An iterative attack's step moves an iterate along the norm's steepest-ascent
direction and brings it back into the call's feasible set
(`advkit.norms.Region`): `reference_step` is that, written plainly, and it
computes exactly what `advkit.functional.pgd_step` (the specification) does.
On a GPU those few elementwise kernels (direction, scaled step, projection,
rounding) are memory traffic and kernel launches the model's own passes do
not need, so there the dispatcher `step` runs the same function compiled by
``torch.compile``, which fuses the chain (and the per-sample reductions of L2)
into one or two kernels. On the CPU, where the gain is small next to the model
and compiling costs seconds, and inside code that is itself being compiled, it
runs the reference. The tests check that both agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from advkit import functional as F
from advkit.norms import Region

__all__ = ["compiled_step", "fused_enabled", "reference_step", "step"]

fused_enabled = True
"""Set to False to always run the reference step (e.g. to compare or debug)."""

_compiled: Callable[..., Tensor] | None = None


def reference_step(region: Region, x: Tensor, grad: Tensor, step_size: F.Scalar) -> Tensor:
    """``region(x + step_size * direction(grad))``: one projected steepest-ascent step."""
    d = region.norm.direction(grad)
    if isinstance(step_size, Tensor):
        d = d * F.batch_view(step_size.to(device=d.device, dtype=d.dtype), d.ndim)
    else:
        d = d * float(step_size)
    return region(x + d)


def compiled_step() -> Callable[..., Tensor]:
    """`reference_step` compiled with ``torch.compile`` (built on first use)."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(reference_step, dynamic=True)
    return _compiled


def _worth_fusing(x: Tensor) -> bool:
    return (
        fused_enabled
        and x.device.type == "cuda"
        and not torch.compiler.is_compiling()
        and x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    )


def step(region: Region, x: Tensor, grad: Tensor, step_size: F.Scalar) -> Tensor:
    """`reference_step`, fused on CUDA; same arguments and result."""
    fn: Callable[..., Any] = compiled_step() if _worth_fusing(x) else reference_step
    out: Tensor = fn(region, x, grad, step_size)
    return out
