"""What an attack may ask of the model: the `Oracle`.

Every pass through the model goes through an oracle, which counts it, runs it
in the attack's precision and compiled when asked, and computes input
gradients only (the model guard has frozen the parameters). The attack's own
settings (``precision=``, ``compile=``) configure a view of the call's oracle
(`Oracle.configured`); views share the pass counts, so a composite attack's
total is the sum of its members' passes without bookkeeping.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from advkit import checks
from advkit.functional import work_dtype
from advkit.models import Classifier
from advkit.result import Verdict

__all__ = ["CompileSpec", "Oracle", "PrecisionSpec"]

PrecisionSpec = Literal["fp32", "bf16", "fp16"] | None
"""The precision of the model's forward and backward passes inside an attack."""

CompileSpec = bool | Literal["default", "reduce-overhead", "max-autotune"]
"""Whether (and in which ``torch.compile`` mode) the model runs compiled inside an attack."""

AUTOCAST: dict[str | None, torch.dtype | None] = {
    None: None,
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

Observer = Callable[[Tensor, Tensor, bool], None]
"""Called with ``(x, output, full_precision)`` on the first model output of a call."""


def _compiled(model: Classifier, mode: str) -> Callable[[Tensor], Any]:
    """``torch.compile(model, mode=...)``, cached on the wrapper itself (so that it lives
    and dies with it). Traced inside the model guard, with the parameters frozen, so its
    backward computes no weight gradient. ``dynamic=None``: the first batch shape is
    compiled static, and a second one (early stopping's smaller batches) once for all sizes."""
    cache: dict[str, Callable[[Tensor], Any]] = model._compiled
    if mode not in cache:
        cache[mode] = torch.compile(model, mode=None if mode == "default" else mode)
    return cache[mode]


@dataclass
class _Shared:
    """State shared by an oracle and its views."""

    forward_passes: int = 0
    backward_passes: int = 0
    observer: Observer | None = None
    detached: bool = False  # a gradient pass found no autograd path from the input


class Oracle:
    """The model as an attack sees it: counted forward, input-gradient and class-gradient
    passes, in the attack's precision, compiled when asked.

    Attributes:
        model: the guarded `advkit.Classifier`.
        keep_mode: the model runs in its own train/eval mode (``keep_mode=True``
            in the call): its outputs may be random (dropout), so an attack's
            verdict is re-computed on the returned tensor.
        precision: ``None`` (the inputs' dtype) or ``"bf16"`` / ``"fp16"`` for
            gradient passes under autocast.
        compile: ``False`` or the ``torch.compile`` mode of gradient passes.
        eot: passes averaged per gradient (Expectation over Transformation,
            Athalye et al., "Synthesizing Robust Adversarial Examples", ICML
            2018): a randomized model's input gradient, objective and logits are
            the means over ``eot`` forward and backward passes, each counted.
        verdict: how an attack's result is scored (`advkit.Verdict`): over
            ``verdict.draws`` forward passes of a randomized model (the call's
            ``verdict=``); shared by every view.
    """

    def __init__(
        self,
        model: Classifier,
        *,
        keep_mode: bool = False,
        precision: PrecisionSpec = None,
        compile: CompileSpec = False,
        eot: int = 1,
        observer: Observer | None = None,
        verdict: Verdict | None = None,
        _shared: _Shared | None = None,
    ) -> None:
        self.model = model
        self.keep_mode = keep_mode
        self.verdict = verdict if verdict is not None else Verdict()
        self.precision: PrecisionSpec = None if precision == "fp32" else precision
        self.compile: CompileSpec = compile
        self.eot = eot
        self._shared = _shared if _shared is not None else _Shared(observer=observer)
        self._autocast = AUTOCAST[self.precision]
        self._grad_model: Callable[[Tensor], Any] = (
            model
            if compile is False
            else _compiled(model, "default" if compile is True else compile)
        )
        # The modes that replay CUDA graphs (max-autotune does too); decided per input device.
        self._graph_modes = compile in ("reduce-overhead", "max-autotune")

    def configured(self, precision: PrecisionSpec, compile: CompileSpec, eot: int = 1) -> Oracle:
        """A view of this oracle with another precision, compile mode and EOT count; the pass
        counts and the call's checks are shared."""
        precision = None if precision == "fp32" else precision
        if precision == self.precision and compile == self.compile and eot == self.eot:
            return self
        return Oracle(
            self.model,
            keep_mode=self.keep_mode,
            precision=precision,
            compile=compile,
            eot=eot,
            verdict=self.verdict,
            _shared=self._shared,
        )

    # ------------------------------------------------------------------ counts

    @property
    def forward_passes(self) -> int:
        """Batched forward passes so far (this call, all views)."""
        return self._shared.forward_passes

    @property
    def backward_passes(self) -> int:
        """Batched input-gradient backward passes so far (this call, all views)."""
        return self._shared.backward_passes

    @property
    def detached(self) -> bool:
        """Whether some gradient pass of this call found that the model's output does not
        depend on its input through autograd (``torch.no_grad()`` or ``.detach()`` inside
        the model): its input gradient was taken as zero."""
        return self._shared.detached

    def count_backward(self, n: int = 1) -> None:
        """Count ``n`` backward passes an attack ran itself through a `grad_forward` graph."""
        self._shared.backward_passes += n

    def _observe(self, x: Tensor, out: Tensor, full: bool) -> None:
        shared = self._shared
        if shared.observer is not None:
            observer, shared.observer = shared.observer, None
            observer(x, out, full)

    # ------------------------------------------------------------------ passes

    def _run(self, fn: Callable[[Tensor], Any], x: Tensor) -> Any:
        """``fn(x)``, refusing a model that edits ``x`` in place (the attack relies on it),
        and naming a dtype mismatch between the inputs and the model."""
        version = x._version
        try:
            out = fn(x)
        except ValueError as e:
            if self.keep_mode and x.shape[0] == 1 and _training_batch_norm(self.model):
                raise checks.ModelError(
                    f"the model failed on a batch of one sample ({e}): its BatchNorm layers "
                    "are in training mode (keep_mode=True), where they need two samples or "
                    "more, and the attack had one sample left to run (it drops the samples "
                    "it has finished with). Call the attack with keep_mode=False (the model "
                    "runs in eval mode), or put the BatchNorm layers in eval mode first."
                ) from e
            raise
        except RuntimeError as e:
            if x._version != version or "in-place" in str(e):
                raise checks.ModelError(checks.INPLACE_MESSAGE) from e
            param = next((p for p in self.model.parameters() if p.is_floating_point()), None)
            if param is not None and param.dtype != x.dtype and self._autocast is None:
                raise checks.ModelError(
                    f"the model's parameters are {param.dtype} but the inputs {x.dtype}, and "
                    f"the model failed on them ({e}). Give the attack inputs in the model's "
                    f"dtype (x.to({param.dtype})) or convert the model (model.to({x.dtype}))."
                ) from e
            raise
        if x._version != version:
            raise checks.ModelError(checks.INPLACE_MESSAGE)
        return out

    def logits(self, x: Tensor) -> Tensor:
        """Model outputs at ``x``, without autograd (one forward pass, in full precision)."""
        self._shared.forward_passes += 1
        with torch.no_grad():
            out: Tensor = self._run(self.model, x)
        self._observe(x, out, True)
        return out

    def scores(self, x: Tensor) -> Tensor:
        """Model outputs at ``x`` without autograd, in the attack's ``precision`` and compile
        mode: the queries of a forward-only (score-based) search such as `advkit.Square`.

        One forward pass, counted (with ``eot=K``, the mean over ``K`` passes, each
        counted). The logits come back in ``float32`` (or ``x``'s dtype when that is
        wider), as from `grad_forward`. Under ``precision="bf16"`` they are not a
        verdict: `advkit.Attack.finish` scores the returned point in full precision.
        """
        outs = []
        for _ in range(self.eot):
            self._shared.forward_passes += 1
            graphs = self._graph_modes and x.device.type == "cuda"
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
            with torch.no_grad(), self._reduced_precision(x.device):
                out: Tensor = self._run(self._grad_model, x)
            if graphs:  # the next replay overwrites a graph's output buffers
                out = out.clone()
            if self._autocast is not None and out.dtype in (torch.float16, torch.bfloat16):
                out = out.float()
            self._observe(x, out, self._autocast is None)
            outs.append(out)
        return outs[0] if self.eot == 1 else _mean(outs)

    def clean_logits(self, task: Any) -> Tensor:
        """``(B, C)`` logits at ``task.x0``: the ones some pass already computed, or one
        no-grad forward pass, kept on the task."""
        if task.clean_logits is None:
            task.clean_logits = self.logits(task.x0)
        out: Tensor = task.clean_logits
        return out

    @contextlib.contextmanager
    def _reduced_precision(self, device: torch.device) -> Iterator[None]:
        if self._autocast is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=self._autocast):
                yield

    def grad_forward(self, x: Tensor, *, origin: Tensor | None = None) -> Tensor:
        """The forward pass of a gradient step: logits at ``x`` with autograd on.

        ``x`` must require gradients for the backward to reach it. Runs the
        model in the attack's ``precision`` (autocast) and, if asked for,
        compiled; the logits come back in ``float32`` (or ``x``'s dtype when
        that is wider), so losses and everything after them stay exact. An
        attack that runs its own backward through these logits counts it with
        `count_backward`. ``origin``: the tensor ``x`` was detached from, if any (the
        call's checks recognise a pass at the clean inputs by it).
        """
        self._shared.forward_passes += 1
        graphs = self._graph_modes and x.device.type == "cuda"
        if graphs:
            # CUDA graphs replay into static buffers: tell the graph trees a new step begins.
            torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
        with torch.enable_grad():  # also the clone and cast below: they stay differentiable
            with self._reduced_precision(x.device):
                out: Tensor = self._run(self._grad_model, x)
            if graphs:
                # A graph's outputs live in buffers its next replay overwrites; the logits are
                # kept across steps (best-so-far), so they get storage of their own.
                out = out.clone()
            if self._autocast is not None and out.dtype in (torch.float16, torch.bfloat16):
                out = out.float()
        self._observe(x if origin is None else origin, out, self._autocast is None)
        return out

    def value_and_grad(
        self, x: Tensor, fn: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``fn(logits)`` (``(B,)``, e.g. a task's loss), its gradient with respect to the
        input only, and the logits at ``x``.

        One forward and one backward pass (in the attack's precision, see
        `grad_forward`); with ``eot=K``, ``K`` of each, and the three results are
        the means over them. Parameters are frozen by the model guard, so no
        weight gradient is computed. Where ``fn`` does not depend on the input (a
        model with no gradient path) the gradient is zero.
        """
        values, grads, outs = [], [], []
        for _ in range(self.eot):
            xg = x.detach().requires_grad_(True)
            logits = self.grad_forward(xg, origin=x)
            with torch.enable_grad():
                value = fn(logits)
                grad: Tensor | None = None
                if value.requires_grad:
                    grad = torch.autograd.grad(value.sum(), xg, allow_unused=True)[0]
                else:
                    self._shared.detached = self._shared.detached or not logits.requires_grad
            self._shared.backward_passes += 1
            values.append(value.detach())
            grads.append(torch.zeros_like(x) if grad is None else grad)
            outs.append(logits.detach())
        if self.eot == 1:
            return values[0], grads[0], outs[0]
        return _mean(values), _mean(grads), _mean(outs)

    def class_gradients(
        self, x: Tensor, classes: Tensor, *, relative: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Logits at ``x`` and the input gradients of ``K`` chosen logits per sample.

        Args:
            x: inputs ``(B, ...)``.
            classes: ``(B, K)`` class indices; row ``i`` picks the logits of sample ``i``.
            relative: return instead the gradients of the ``K - 1`` differences
                ``logits[i, classes[i, k]] - logits[i, classes[i, 0]]``, ``k >= 1``
                (one backward pass fewer than the ``K`` logits).

        Returns:
            ``logits`` ``(B, C)`` and ``grads`` ``(K, B, ...)`` with
            ``grads[k, i] = d logits[i, classes[i, k]] / d x[i]``; with ``relative``,
            ``(K - 1, B, ...)`` with ``grads[k - 1, i] = d (logits[i, classes[i, k]]
            - logits[i, classes[i, 0]]) / d x[i]``.

        One forward pass, then one backward pass per returned row through the
        same graph, seeded with that row's one-hot vector (or difference of two)
        over the logits; each is counted. A loop and not autograd's vectorized
        backward (``is_grads_batched``): that one has no batching rule for the
        backward of convolutions and normalizations, falls back to a slower
        loop of its own for them, and was the slower of the two on CPU. With
        ``eot=K`` the logits and gradients are means over ``K`` such rounds.
        """
        outs, stacks = [], []
        for _ in range(self.eot):
            logits, grads = self._class_gradients(x, classes, relative)
            outs.append(logits)
            stacks.append(grads)
        if self.eot == 1:
            return outs[0], stacks[0]
        return _mean(outs), _mean(stacks)

    def _class_gradients(self, x: Tensor, classes: Tensor, relative: bool) -> tuple[Tensor, Tensor]:
        b, k = classes.shape
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.grad_forward(xg, origin=x)
            seeds = torch.zeros((k, b, logits.shape[1]), dtype=logits.dtype, device=logits.device)
            seeds.scatter_(2, classes.T.unsqueeze(2), 1.0)
            if relative:
                seeds = seeds[1:] - seeds[:1]
            n = seeds.shape[0]
            rows: list[Tensor] = []
            for j in range(n):
                if logits.requires_grad:
                    g = torch.autograd.grad(
                        logits, xg, grad_outputs=seeds[j], retain_graph=j < n - 1, allow_unused=True
                    )[0]
                else:
                    g = None
                    self._shared.detached = True
                rows.append(torch.zeros_like(x) if g is None else g)
        self._shared.backward_passes += n
        return logits.detach(), torch.stack(rows)


def _mean(ts: list[Tensor]) -> Tensor:
    """The mean of same-shaped tensors (in float32 at least for half precision)."""
    work = work_dtype(ts[0].dtype)
    return (torch.stack(ts).to(work).mean(dim=0)).to(ts[0].dtype)


def _training_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` has a batch-norm layer in training mode (batch statistics)."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules()
    )
