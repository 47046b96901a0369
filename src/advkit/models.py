"""The model wrapper, which owns the input space, and the guard that restores a model.

`wrap` turns any ``nn.Module`` into a `Classifier` that

* declares the input box (``bounds``) in which attacks work and eps is measured,
* normalizes inside the model (``mean`` / ``std``), so perturbations live in
  pixel space and never in normalized space,
* picks the logits out of whatever the module returns (a tensor, an object
  with ``.logits``, a dict, a tuple, ...).

`model_guard` puts a model in the state an attack needs (eval mode,
parameters frozen) and restores it exactly afterwards, also when the attack
raises.

`BPDA` lets gradients through non-differentiable preprocessing inside a model.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from advkit.checks import ConfigError

__all__ = ["BPDA", "Classifier", "OutputSpec", "model_guard", "wrap"]

OutputSpec = str | int | Callable[[Any], Tensor] | None
"""How to get logits out of a module's output (see `wrap`)."""


def _auto_logits(out: Any) -> Any:
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    if isinstance(out, (tuple, list)) and len(out) > 0:
        return out[0]
    return out


def _as_stat(value: float | Sequence[float] | Tensor | None, name: str) -> Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32).detach().clone()
    if t.ndim > 1 or t.numel() == 0 or not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{name} must be a float or a 1-D sequence (one per channel), got {t}.")
    return t


class Classifier(nn.Module):
    r"""A classifier whose inputs live in the box ``bounds`` and whose output is ``(B, C)`` logits.

    ``forward(x)`` computes ``extract(module((x - mean) / std))``. ``mean`` and
    ``std`` broadcast over dimension 1 (channels for images, features for
    vectors). Build it with `wrap`.

    Attributes:
        module: the wrapped network.
        bounds: ``(low, high)`` of every input coordinate, in input space.
        output: how logits are extracted (see `wrap`).
    """

    mean: Tensor | None
    std: Tensor | None

    def __init__(
        self,
        module: nn.Module,
        bounds: tuple[float, float] = (0.0, 1.0),
        mean: float | Sequence[float] | Tensor | None = None,
        std: float | Sequence[float] | Tensor | None = None,
        output: OutputSpec = None,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ConfigError(f"advkit.wrap needs an nn.Module, got {type(module).__name__}.")
        try:
            lo, hi = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise ConfigError(f"bounds must be a pair (low, high), got {bounds!r}.") from None
        if not lo < hi:
            raise ConfigError(f"bounds must satisfy low < high, got {bounds!r}.")
        if not (output is None or isinstance(output, (str, int)) or callable(output)):
            raise ConfigError(
                "output must be None, an attribute/key name, an index, or a callable, "
                f"got {type(output).__name__}."
            )
        m, s = _as_stat(mean, "mean"), _as_stat(std, "std")
        if s is not None and bool((s <= 0).any()):
            raise ConfigError(f"std must be > 0, got {s}.")
        self.module = module
        self.bounds = (lo, hi)
        self.output = output
        # On the module's device, so that wrap(net.cuda(), mean=...) works without a .cuda().
        home = next(itertools.chain(module.parameters(), module.buffers()), None)
        if home is not None:
            m = None if m is None else m.to(home.device)
            s = None if s is None else s.to(home.device)
        self.register_buffer("mean", m, persistent=False)
        self.register_buffer("std", s, persistent=False)
        # Compiled versions of this wrapper, by torch.compile mode (see advkit.Attack's
        # compile=): a plain dict, not a submodule, left out of pickles and copies.
        self._compiled: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_compiled"] = {}
        return state

    def _stat(self, t: Tensor, x: Tensor) -> Tensor:
        if t.ndim == 1 and t.numel() > 1:
            if x.ndim < 2 or x.shape[1] != t.numel():
                raise ConfigError(
                    f"mean/std have {t.numel()} entries but the inputs have "
                    f"{x.shape[1] if x.ndim > 1 else 'no'} channels (dim 1)."
                )
            t = t.reshape(1, -1, *([1] * (x.ndim - 2)))
        return t.to(device=x.device, dtype=x.dtype)

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` (identity where they are not set)."""
        if self.mean is not None:
            x = x - self._stat(self.mean, x)
        if self.std is not None:
            x = x / self._stat(self.std, x)
        return x

    def extract(self, out: Any) -> Any:
        """Pick the logits out of the module's raw output."""
        spec = self.output
        if spec is None:
            return _auto_logits(out)
        if isinstance(spec, str):
            if isinstance(out, Mapping):
                return out[spec]
            return getattr(out, spec)
        if isinstance(spec, int):
            return out[spec]
        return spec(out)

    def forward(self, x: Tensor) -> Any:
        return self.extract(self.module(self.normalize(x)))

    def extra_repr(self) -> str:
        return f"bounds={self.bounds}, output={self.output!r}"


def wrap(
    module: nn.Module,
    bounds: tuple[float, float] = (0.0, 1.0),
    mean: float | Sequence[float] | Tensor | None = None,
    std: float | Sequence[float] | Tensor | None = None,
    output: OutputSpec = None,
) -> Classifier:
    """Wrap a network so that attacks work in its input space and read its logits.

    Args:
        module: any ``nn.Module`` mapping inputs ``(B, ...)`` to class scores.
        bounds: ``(low, high)`` of valid inputs, e.g. ``(0, 1)`` for images
            scaled to [0, 1] or ``(0, 255)``. Attacks keep every coordinate in
            this box, and eps is measured in this space.
        mean: per-channel mean subtracted *inside* the model (normalization).
        std: per-channel standard deviation divided *inside* the model.
        output: how to read logits from the module's output. ``None`` (default):
            the output itself if it is a tensor, else its ``.logits``, else
            ``out["logits"]``, else the first element of a tuple or list. A
            string: that key of a dict or attribute of an object. An int: that
            element of a tuple. A callable: applied to the output.

    Returns:
        The wrapped `Classifier`; a `Classifier` passed with no other
        argument is returned as is.

    Examples:
        >>> net = torch.nn.Linear(3, 2)
        >>> model = wrap(net, bounds=(0, 1), mean=0.5, std=0.25)
        >>> model(torch.rand(4, 3)).shape
        torch.Size([4, 2])
    """
    if isinstance(module, Classifier) and (
        tuple(bounds) == module.bounds and mean is None and std is None and output is None
    ):
        return module
    return Classifier(module, bounds=bounds, mean=mean, std=std, output=output)


@contextlib.contextmanager
def model_guard(model: nn.Module, *, keep_mode: bool = False) -> Iterator[nn.Module]:
    """Prepare ``model`` for an attack and restore it exactly on exit.

    Inside the block every module is in eval mode (unless ``keep_mode``, for
    adversarial training with the model's own mode) and every parameter has
    ``requires_grad=False``, so no weight gradient is ever computed, also by a
    ``torch.compile``-d backward. On exit, also after an exception, every
    module's ``training`` flag, every parameter's ``requires_grad`` and
    ``.grad``, and every buffer (e.g. BatchNorm running statistics, which a
    forward pass in train mode would update) are put back as they were.

    Every restore step runs whatever the others did: a step that fails does
    not keep the rest from being restored, and its error is raised once all
    have run. Scripted and traced modules (``torch.jit.script`` /
    ``torch.jit.trace``) are guarded like any other.

    Raises:
        ConfigError: the model has uninitialized parameters or buffers (a lazy
            module such as ``nn.LazyLinear`` that has not run yet); nothing
            is changed then.
    """
    lazy = [name for name, t in _named_tensors(model) if is_lazy(t)]
    if lazy:
        raise ConfigError(
            f"the model has uninitialized (lazy) parameters or buffers ({', '.join(lazy[:3])}"
            f"{', ...' if len(lazy) > 3 else ''}): run it once on a batch of inputs, "
            "e.g. model(x), so that they get their shapes, then attack it."
        )
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    # (module, name, the buffer tensor, a copy of its values); named_buffers(recurse=False)
    # reads the buffer table of plain and scripted modules alike.
    buffers = [
        (mod, name, buf, buf.detach().clone())
        for mod in model.modules()
        for name, buf in mod.named_buffers(recurse=False)
    ]
    try:
        if not keep_mode:
            model.eval()
        for p, _, _ in params:
            p.requires_grad_(False)
        yield model
    finally:
        errors: list[BaseException] = []
        for mod, name, buf, saved in buffers:
            _attempt(errors, _restore_buffer, mod, name, buf, saved)
        for p, req, grad in params:
            _attempt(errors, _restore_parameter, p, req, grad)
        for m, mode in modes:
            _attempt(errors, _restore_mode, m, mode)
        if errors:
            raise errors[0]


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


def _attempt(errors: list[BaseException], step: Callable[..., None], *args: Any) -> None:
    """Run one restore step; a failure is recorded, not raised, so that the others run."""
    try:
        step(*args)
    except Exception as err:
        errors.append(err)


def _restore_buffer(mod: nn.Module, name: str, buf: Tensor, saved: Tensor) -> None:
    # The forward may have replaced the buffer object itself (self.b = new tensor) or
    # removed it. A plain module's table is a dict; a scripted module's is a read-only
    # view, where the attribute is set instead.
    table: Any = mod._buffers
    if isinstance(table, dict):
        if table.get(name) is not buf:
            table[name] = buf
    elif getattr(mod, name, None) is not buf:
        setattr(mod, name, buf)
    with torch.no_grad():
        buf.copy_(saved)


def _restore_parameter(p: Tensor, requires_grad: bool, grad: Tensor | None) -> None:
    p.requires_grad_(requires_grad)
    p.grad = grad


def _restore_mode(m: nn.Module, mode: bool) -> None:
    m.training = mode


class BPDA(nn.Module):
    r"""Backward Pass Differentiable Approximation: ``fn`` on the way forward, the identity
    (or the gradient of a differentiable ``approx``) on the way back.

    Non-differentiable preprocessing inside a model (rounding, quantization,
    JPEG compression, median filters, anything computed with NumPy or under
    ``torch.no_grad()``) gives gradient attacks a zero or meaningless input
    gradient, and with it a robust accuracy that means nothing (see
    `advkit.diagnose`). Put the preprocessing inside ``BPDA`` and gradient
    attacks see through it: the forward pass computes exactly ``fn(x)``, and
    the backward pass treats it as the identity, $\partial\,\mathrm{fn}(x) /
    \partial x \approx I$ (the straight-through estimator), or as
    ``approx`` when one is given, $\partial\,\mathrm{fn}(x) / \partial x
    \approx \partial\,\mathrm{approx}(x) / \partial x$ (Athalye et al.,
    "Obfuscated Gradients Give a False Sense of Security", ICML 2018).

    ``fn`` is called on a detached copy of the input, without autograd, so it
    may be anything that maps a tensor to a tensor (it must not modify its
    input in place). The identity backward needs ``fn(x)`` to have ``x``'s
    shape; a preprocessing that changes the shape needs an ``approx`` with the
    same output shape as ``fn``.

    Args:
        fn: the preprocessing, ``(B, ...) -> (B, ...)`` tensors.
        approx: a differentiable function close to ``fn`` (e.g. a smooth
            quantizer), whose gradient the backward pass uses; ``None``: the
            identity.

    Raises:
        ConfigError: ``fn`` or ``approx`` is not callable; at the first call,
            ``fn`` returned no floating-point tensor or one whose shape differs
            from the input's (identity backward) or from ``approx``'s.

    Examples:
        >>> quantize = BPDA(lambda x: torch.round(x * 4) / 4)
        >>> x = torch.tensor([0.1, 0.3, 0.9], requires_grad=True)
        >>> y = quantize(x)
        >>> y.detach().tolist()
        [0.0, 0.25, 1.0]
        >>> torch.autograd.grad(y.sum(), x)[0].tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(
        self, fn: Callable[[Tensor], Tensor], approx: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        super().__init__()
        if not callable(fn):
            raise ConfigError(f"BPDA needs a callable fn, got {type(fn).__name__}.")
        if approx is not None and not callable(approx):
            raise ConfigError(
                f"BPDA's approx must be callable or None, got {type(approx).__name__}."
            )
        self.fn = fn
        self.approx = approx

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            out = self.fn(x.detach())
        if not isinstance(out, Tensor) or not out.is_floating_point():
            got = f"a {out.dtype} tensor" if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(
                f"BPDA's fn must return a floating-point tensor, got {got}; convert it, e.g. "
                "return out.float()."
            )
        if self.approx is None:
            surrogate = x
        elif torch.is_grad_enabled() and x.requires_grad:
            surrogate = self.approx(x)
        else:  # no backward pass will follow: the approximation is not needed
            return out
        if surrogate.shape != out.shape:
            which = "the input" if self.approx is None else "approx(x)"
            fix = (
                "give BPDA an approx with fn's output shape"
                if self.approx is None
                else "make approx return fn's output shape"
            )
            raise ConfigError(
                f"BPDA's fn returned shape {tuple(out.shape)} but {which} has shape "
                f"{tuple(surrogate.shape)}; the backward pass needs them equal: {fix}."
            )
        # The value of fn exactly (adding an exact zero), the gradient of the surrogate.
        return out.to(surrogate.dtype) + (surrogate - surrogate.detach())

    def extra_repr(self) -> str:
        approx = "identity" if self.approx is None else getattr(self.approx, "__name__", "approx")
        return f"fn={getattr(self.fn, '__name__', type(self.fn).__name__)}, backward={approx}"
