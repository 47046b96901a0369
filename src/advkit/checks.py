"""Input validation: typed errors whose message says what is wrong and how to fix it.

Checks run once per attack call, before the step loop, never inside it. They
use real exceptions (not ``assert``, which ``python -O`` removes).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "AdvkitError",
    "BoundsError",
    "ConfigError",
    "DiagnosticWarning",
    "GradientWarning",
    "InputError",
    "LabelError",
    "ModelError",
    "ModelOutputError",
    "ProbabilityOutputWarning",
    "check_eps",
    "check_generator",
    "check_inputs",
    "check_labels",
    "check_logits",
    "check_positive",
    "check_positive_int",
    "check_sample_ids",
    "check_targets",
    "integer_labels",
    "looks_like_probabilities",
    "warn_if_probabilities",
]


class AdvkitError(Exception):
    """Base class of every error advkit raises on purpose."""


class ConfigError(AdvkitError, ValueError):
    """An attack hyperparameter is invalid (eps < 0, steps < 1, unknown norm, ...)."""


class InputError(AdvkitError, ValueError):
    """The inputs ``x`` are not a finite, batched floating-point tensor."""


class BoundsError(InputError):
    """The inputs lie outside the model wrapper's bounds."""


class LabelError(AdvkitError, ValueError):
    """Labels or targets have the wrong shape, dtype, or values out of range."""


class ModelOutputError(AdvkitError, TypeError):
    """The model (after output extraction) did not return ``(B, C)`` logits."""


class ModelError(AdvkitError, RuntimeError):
    """The model did something an attack cannot work with (e.g. it modified its input in
    place, or it cannot run on the inputs' dtype)."""


class ProbabilityOutputWarning(UserWarning):
    """The model seems to return probabilities instead of logits."""


class DiagnosticWarning(UserWarning):
    """The diagnostics of an evaluation (`advkit.diagnose`) raised flags: its robust
    accuracy may be wrong; the report says why and what to do."""


class GradientWarning(UserWarning):
    """The input gradient a gradient attack needs is missing or zero, so its result says
    little about the model's robustness."""


def _describe(t: Any) -> str:
    if isinstance(t, Tensor):
        return f"tensor of shape {tuple(t.shape)} and dtype {t.dtype}"
    return type(t).__name__


def _is_real(value: Any) -> bool:
    """A real Python or numpy scalar (``float``, ``int``, ``np.float32``, ...), not a bool.

    numpy registers its real and integer scalars with `numbers`; ``np.bool_``
    is not registered, and Python's ``bool`` is excluded here.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_float(value: Any) -> float:
    """``float(value)`` for a real scalar; an integer too large for a float gives +-inf."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def check_inputs(x: Any, bounds: tuple[float, float]) -> Tensor:
    """Check that ``x`` is a finite, batched, floating tensor inside ``bounds``.

    Reads ``x`` without autograd: an input with ``requires_grad=True`` is
    checked like any other and left as it is.
    """
    if not isinstance(x, Tensor):
        raise InputError(f"inputs must be a torch.Tensor, got {_describe(x)}.")
    if not x.is_floating_point():
        raise InputError(
            f"inputs must be floating point (got {x.dtype}); convert them, e.g. "
            "x.float() / 255 for uint8 images."
        )
    if x.ndim < 2:
        raise InputError(
            f"inputs must be batched with shape (B, ...), got shape {tuple(x.shape)}; "
            "for a single sample use x.unsqueeze(0)."
        )
    if x.shape[0] == 0:
        raise InputError("inputs hold an empty batch (B = 0).")
    if x[0].numel() == 0:
        raise InputError(f"inputs have no features per sample (shape {tuple(x.shape)}).")
    values = x.detach()  # no "requires_grad tensor to a scalar" warning from the reads below
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = (~finite).flatten(1).any(dim=1).nonzero().flatten()[:5].tolist()
        raise InputError(
            f"inputs contain NaN or Inf (first samples: {bad}); clean or drop them first."
        )
    lo, hi = bounds
    xmin, xmax = float(values.min()), float(values.max())
    if xmin < lo or xmax > hi:
        raise BoundsError(
            f"inputs lie in [{xmin:g}, {xmax:g}], outside the model's bounds [{lo:g}, {hi:g}]. "
            "Attack the inputs in the model's input space (e.g. pixels in [0, 1] before "
            "normalization) and set bounds/mean/std with advkit.wrap(model, bounds=..., "
            "mean=..., std=...)."
        )
    return x


def check_labels(y: Any, batch: int, num_classes: int, *, name: str = "labels") -> Tensor:
    """Check that ``y`` is an integer tensor ``(B,)`` with values in ``[0, num_classes)``.

    Every integer dtype is accepted (``int64``, ``int32`` as numpy often gives,
    ``int16``, ``int8``, ``uint8``, ...). Returns the labels as ``int64``, the
    dtype that cross-entropy, ``scatter`` and indexing need (``y`` itself when
    it is ``int64`` already).
    """
    if not isinstance(y, Tensor):
        raise LabelError(f"{name} must be a torch.Tensor of class indices, got {_describe(y)}.")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise LabelError(
            f"{name} must hold integer class indices (got {y.dtype}); one-hot labels "
            "can be converted with .argmax(dim=1)."
        )
    if y.ndim != 1 or y.shape[0] != batch:
        raise LabelError(
            f"{name} must have shape ({batch},) to match the batch of inputs, "
            f"got shape {tuple(y.shape)}."
        )
    ymin, ymax = int(y.min()), int(y.max())
    if ymin < 0 or ymax >= num_classes:
        raise LabelError(
            f"{name} must lie in [0, {num_classes - 1}] for a model with {num_classes} "
            f"classes, got values in [{ymin}, {ymax}]."
        )
    return y.to(torch.int64)


def integer_labels(y: Any, *, name: str = "labels") -> Tensor:
    """Labels (or targets) as an int64 tensor, from a tensor of any integer dtype (int32 from
    numpy, uint8, ...); their shape and range are checked once the number of classes is known."""
    if not isinstance(y, Tensor):
        raise LabelError(f"{name} must be a torch.Tensor of class indices, got {_describe(y)}.")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise LabelError(
            f"{name} must hold integer class indices (got {y.dtype}); one-hot labels "
            "can be converted with .argmax(dim=1)."
        )
    return y.detach().to(torch.int64)


def check_targets(t: Any, y: Tensor, num_classes: int) -> Tensor:
    """Check targets like labels, and that no target equals its sample's label.

    Returns the targets as ``int64`` (see `check_labels`).
    """
    checked: Tensor = check_labels(t, y.shape[0], num_classes, name="targets")
    same = checked.to(y.device) == y
    if bool(same.any()):
        idx = same.nonzero().flatten()[:5].tolist()
        raise LabelError(
            f"targets equal the true labels for samples {idx}: a targeted attack needs a "
            "different class; use advkit.targets.shift(1) or random() to pick one."
        )
    return checked


def check_eps(eps: Any, batch: int, *, name: str = "eps") -> float | Tensor:
    """Check a budget: a real number ``>= 0`` or a tensor of shape ``()`` or ``(B,)``, finite, ``>= 0``.

    A real number is a Python ``float`` or ``int`` or a numpy real scalar
    (``np.float32``, ``np.float64``, ``np.int64``, ...); it is returned as a
    Python ``float``. A tensor is returned as it is.
    """
    if eps is None:
        raise ConfigError(
            f"{name} is required: give it to the attack's constructor or to the call."
        )
    if isinstance(eps, Tensor):
        if eps.ndim > 1 or (eps.ndim == 1 and eps.shape[0] != batch):
            raise ConfigError(
                f"{name} must be a float or a tensor of shape ({batch},) (one per sample), "
                f"got shape {tuple(eps.shape)}."
            )
        if eps.dtype == torch.bool:
            raise ConfigError(
                f"{name} must hold numbers, got a bool tensor; give the budgets as floats "
                "(e.g. mask.float() * 0.03)."
            )
        if eps.is_complex() or not bool(torch.isfinite(eps).all()) or bool((eps < 0).any()):
            raise ConfigError(f"{name} must be finite and >= 0, got {eps}.")
        return eps
    if not _is_real(eps):
        raise ConfigError(f"{name} must be a float or a tensor, got {type(eps).__name__}.")
    value = _as_float(eps)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be finite and >= 0, got {eps!r}.")
    return value


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Check an integer hyperparameter such as ``steps`` or ``restarts``.

    A Python ``int`` or a numpy integer scalar; returned as a Python ``int``.
    """
    if not (isinstance(value, numbers.Integral) and _is_real(value)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_positive(value: Any, name: str) -> float:
    """Check a positive, finite real hyperparameter such as ``step_size``.

    A Python or numpy real scalar; returned as a Python ``float``.
    """
    if not _is_real(value):
        raise ConfigError(f"{name} must be a positive float, got {type(value).__name__}.")
    number = _as_float(value)
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{name} must be finite and > 0, got {value!r}.")
    return number


def check_generator(generator: Any, device: torch.device) -> None:
    """Check that a user generator is a ``torch.Generator`` on the inputs' device."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ConfigError(f"generator must be a torch.Generator, got {type(generator).__name__}.")
    g = generator.device
    same_index = g.index is None or device.index is None or g.index == device.index
    if g.type != device.type or not same_index:
        raise ConfigError(
            f"generator lives on {generator.device} but the inputs on {device}: create it "
            f"with torch.Generator(device={str(device)!r}).manual_seed(...)."
        )


def check_sample_ids(ids: Any, batch: int, device: torch.device) -> Tensor:
    """Check per-sample ids: a ``(B,)`` integer tensor; returns it as int64 on ``device``."""
    if not isinstance(ids, Tensor):
        raise InputError(f"sample_ids must be a (B,) integer tensor, got {type(ids).__name__}.")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise InputError(f"sample_ids must be integers (e.g. dataset indices), got {ids.dtype}.")
    if tuple(ids.shape) != (batch,):
        raise InputError(
            f"sample_ids must have shape ({batch},), one id per input, got {tuple(ids.shape)}."
        )
    return ids.detach().to(device=device, dtype=torch.int64)


def check_logits(out: Any, batch: int) -> Tensor:
    """Check that the model returned floating ``(B, C)`` logits with ``C >= 2``."""
    if not isinstance(out, Tensor):
        raise ModelOutputError(
            f"the model returned {_describe(out)}, not a logit tensor; pass "
            "output=... to advkit.wrap (an attribute or key name, an index, or a callable) "
            "to pick the logits."
        )
    if out.ndim != 2 or out.shape[0] != batch or out.shape[1] < 2 or not out.is_floating_point():
        raise ModelOutputError(
            f"the model must return (B, C) floating-point logits with B = {batch} and C >= 2, "
            f"got a {_describe(out)}; flatten or select the class scores with "
            "advkit.wrap(model, output=...)."
        )
    return out


PROBABILITY_MESSAGE = (
    "the model's outputs look like probabilities (rows in [0, 1] summing to 1); "
    "attacks expect logits: cross-entropy and margin losses on probabilities give "
    "weak, saturated gradients. Remove the final softmax or wrap the model with "
    "advkit.wrap(model, output=torch.log) if only probabilities are available."
)


def looks_like_probabilities(logits: Tensor) -> bool:
    """Whether every row lies in ``[0, 1]`` and sums to 1 (softmax outputs); a host sync."""
    with torch.no_grad():
        f = logits.float()
        rows = f.sum(dim=1)
        return bool(((f >= 0) & (f <= 1)).all()) and bool(
            torch.allclose(rows, torch.ones_like(rows), atol=1e-3)
        )


def warn_if_probabilities(logits: Tensor, *, stacklevel: int = 2) -> None:
    """Warn (`ProbabilityOutputWarning`) when ``logits`` look like probabilities.

    ``stacklevel`` counts from the caller of this function, as in `warnings.warn`.
    """
    if looks_like_probabilities(logits):
        warnings.warn(PROBABILITY_MESSAGE, ProbabilityOutputWarning, stacklevel=stacklevel + 1)


DETACHED_MESSAGE = (
    "the model's output does not depend on its input through autograd (torch.no_grad() or "
    ".detach() inside forward?), so this gradient attack saw a zero input gradient and its "
    "result says nothing about robustness. Remove the no_grad/detach from the model's "
    "forward, wrap non-differentiable preprocessing in a straight-through (BPDA) module, or "
    "use a gradient-free attack."
)

INPLACE_MESSAGE = (
    "the model modified its input tensor in place (e.g. x.mul_() or x.add_() in forward); "
    "attacks rely on the tensors they pass to the model. Make the model work on a copy "
    "(x = x.mul(...) instead of x.mul_(...)), or wrap it with advkit.wrap(model, mean=..., "
    "std=...), whose normalization hands the module a fresh tensor."
)
