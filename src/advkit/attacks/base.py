"""The attack contract, implemented once for every attack.

``Attack.__call__`` validates the inputs, clones them, guards the model (eval
mode, frozen parameters, everything restored afterwards), resolves the
targets, hands a `Context` to the subclass's `Attack.run`, and
scores the returned tensor. Subclasses only implement ``run``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from advkit import checks
from advkit.functional import Bounds, KeyedGenerator, RandomSource, Scalar, clip
from advkit.models import Classifier, model_guard, wrap
from advkit.norms import Norm, NormSpec, resolve_norm
from advkit.objectives import Objective, cross_entropy
from advkit.result import AttackResult
from advkit.targets import TargetMap

__all__ = ["Attack", "CompileSpec", "Context", "MinNormAttack", "PrecisionSpec", "TargetSpec"]

PrecisionSpec = Literal["fp32", "bf16", "fp16"] | None
"""The precision of the model's forward and backward passes inside an attack."""

CompileSpec = bool | Literal["default", "reduce-overhead", "max-autotune"]
"""Whether (and in which ``torch.compile`` mode) the model runs compiled inside an attack."""

_AUTOCAST: dict[str | None, torch.dtype | None] = {
    None: None,
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def _compiled(model: Classifier, mode: str) -> Callable[[Tensor], Any]:
    """``torch.compile(model, mode=...)``, cached on the wrapper itself (so that it lives
    and dies with it). Traced inside the model guard, with the parameters frozen, so its
    backward computes no weight gradient. ``dynamic=None``: the first batch shape is
    compiled static, and a second one (early stopping's smaller batches) once for all sizes."""
    cache: dict[str, Callable[[Tensor], Any]] = model._compiled
    if mode not in cache:
        cache[mode] = torch.compile(model, mode=None if mode == "default" else mode)
    return cache[mode]


TargetSpec = Tensor | TargetMap | None
"""``None`` (untargeted), a ``(B,)`` tensor of classes, or a target map."""

CleanPass = Literal["forward", "graph", "none"]
"""How an attack call begins (see `Attack._clean_pass`): a no-grad forward on the clean
inputs, a forward with autograd whose graph serves the first gradient, or no clean pass."""


def _needs_clean_logits(targets: TargetSpec) -> bool:
    """Whether resolving ``targets`` needs the model's logits on the clean inputs."""
    if targets is None or isinstance(targets, Tensor):
        return False
    return bool(getattr(targets, "uses_logits", True))


class Context:
    """Everything one attack call works with; counts the model's passes.

    Attributes:
        model: the guarded `Classifier`.
        x0: clean inputs (a private copy; never modified).
        labels: ``(B,)`` true labels.
        targets: ``(B,)`` target classes, or ``None`` when untargeted.
        eps: the budget, a float or a ``(B,)`` tensor on the inputs' device;
            ``None`` for a minimal-norm attack called without one.
        norm: the threat model.
        bounds: the input box.
        objective: the attacker's objective (higher is better).
        generator: the source of all randomness of this call: a
            ``torch.Generator``, or a `advkit.functional.KeyedGenerator` when
            the call was given ``sample_ids``.
        autocast: the reduced precision of gradient passes (``torch.bfloat16``,
            ``torch.float16``) or ``None`` for the inputs' own dtype.
        clean_logits: ``(B, C)`` logits on ``x0`` (computed on first use when the
            call began without a clean pass).

    The call's checks of the model's output, of the labels' range and of the
    targets need the number of classes, hence one forward pass: they run on
    the first forward pass the attack makes, whichever point it is at (with
    ``clean_pass="none"``, the first iterate of a random start), before any
    objective or gradient is computed.
    """

    def __init__(
        self,
        *,
        model: Classifier,
        x0: Tensor,
        labels: Tensor,
        eps: Scalar | None,
        norm: Norm,
        objective: Objective,
        generator: RandomSource,
        autocast: torch.dtype | None = None,
        compile: CompileSpec = False,
        targets: TargetSpec = None,
        clean_pass: CleanPass = "forward",
    ) -> None:
        self.model = model
        self.x0 = x0
        self.labels = labels
        self.targets: Tensor | None = None
        self.eps = eps
        self.norm = norm
        self.bounds: Bounds = model.bounds
        self.objective = objective
        self.generator = generator
        self.autocast = autocast
        # The modes that replay CUDA graphs (max-autotune does too).
        self._graph_steps = compile in ("reduce-overhead", "max-autotune") and (
            x0.device.type == "cuda"
        )
        self._grad_model: Callable[[Tensor], Any] = (
            model
            if compile is False
            else _compiled(model, "default" if compile is True else compile)
        )
        self.forward_passes = 0
        self.backward_passes = 0
        self._target_spec = targets
        self._admitted = False
        self.probability_outputs = False  # set by the call's checks (`_admit`)
        self._clean_logits: Tensor | None = None
        if clean_pass == "graph" and autocast is not None:
            # Reduced-precision logits are no clean verdict: the first gradient pass (at the
            # clean input) runs the checks instead, and the verdict comes at the end.
            clean_pass = "none"
        if clean_pass == "none" and _needs_clean_logits(targets):
            clean_pass = "forward"  # a target map that reads the clean logits
        # An attack whose first gradient is taken at the clean input gets it from the clean
        # forward pass itself (kept with its graph), not from a second forward.
        self._clean_graph: tuple[Tensor, Tensor] | None = None
        if clean_pass == "graph":
            xg = x0.detach().requires_grad_(True)
            logits = self.grad_forward(xg)
            self._clean_graph = (xg, logits)
            self._clean_logits = logits.detach()
        elif clean_pass != "none":
            self._clean_logits = self.logits(x0)

    @property
    def clean_logits(self) -> Tensor:
        """``(B, C)`` logits on ``x0``: one no-grad forward pass the first time it is needed
        if the call began without one."""
        if self._clean_logits is None:
            self._clean_logits = self.logits(self.x0)
        return self._clean_logits

    def _admit(self, out: Tensor) -> None:
        """The call's checks on the first model output of the call (any point of the batch):
        logits of shape ``(B, C)``, labels in ``[0, C)``, targets resolved and valid."""
        batch = self.x0.shape[0]
        logits = checks.check_logits(out, batch)
        self.probability_outputs = checks.looks_like_probabilities(logits)
        num_classes = logits.shape[1]
        checks.check_labels(self.labels, batch, num_classes)
        targets = self._target_spec
        if targets is not None:
            if not isinstance(targets, Tensor):
                if not callable(targets):
                    raise checks.LabelError(
                        "targets must be None, a tensor of classes or a target map such "
                        f"as advkit.targets.shift(1), got {type(targets).__name__}."
                    )
                targets = targets(logits.detach(), self.labels, self.generator)
            self.targets = checks.check_targets(targets, self.labels, num_classes)
        self._admitted = True

    def ensure_checked(self) -> None:
        """Run the call's checks now if no forward pass has run them yet (an attack whose
        ``run`` never ran the model): one forward pass on the clean inputs."""
        if not self._admitted:
            self.clean_logits  # noqa: B018  (its forward pass runs the checks)

    def budget(self) -> Scalar:
        """The budget of a fixed-eps attack (never ``None`` there)."""
        if self.eps is None:
            raise checks.ConfigError("this attack needs eps")
        return self.eps

    def _forward(self, x: Tensor) -> Tensor:
        self.forward_passes += 1
        out: Tensor = self.model(x)
        if not self._admitted:
            self._admit(out)
        return out

    @contextlib.contextmanager
    def _reduced_precision(self, device: torch.device) -> Iterator[None]:
        if self.autocast is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=self.autocast):
                yield

    def grad_forward(self, x: Tensor) -> Tensor:
        """The forward pass of a gradient step: logits at ``x`` with autograd on.

        Runs the model in the attack's ``precision`` (autocast) and, if asked
        for, compiled; the logits come back in ``float32`` (or ``x``'s dtype
        when that is wider), so losses and everything after them stay exact.
        """
        self.forward_passes += 1
        if self._graph_steps:
            # CUDA graphs replay into static buffers: tell the graph trees a new step begins.
            torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
        with torch.enable_grad():  # also the clone and cast below: they stay differentiable
            with self._reduced_precision(x.device):
                out: Tensor = self._grad_model(x)
            if self._graph_steps:
                # A graph's outputs live in buffers its next replay overwrites; the logits are
                # kept across steps (best-so-far), so they get storage of their own.
                out = out.clone()
            if self.autocast is not None and out.dtype in (torch.float16, torch.bfloat16):
                out = out.float()
        if not self._admitted:
            self._admit(out)
        return out

    def logits(self, x: Tensor) -> Tensor:
        """Model outputs on ``x`` without autograd (one forward pass, in full precision)."""
        with torch.no_grad():
            return self._forward(x)

    def loss(self, logits: Tensor, index: Tensor | None = None) -> Tensor:
        """The objective per sample, ``(B,)``; ``index`` selects the samples of ``logits``."""
        labels, targets = self.labels, self.targets
        if index is not None:
            labels = labels.index_select(0, index)
            targets = None if targets is None else targets.index_select(0, index)
        out = self.objective(logits, labels, targets)
        if out.shape != (logits.shape[0],):
            raise checks.ConfigError(
                f"the objective must return one value per sample, shape ({logits.shape[0]},), "
                f"got shape {tuple(out.shape)}."
            )
        return out

    def value_and_grad(
        self, x: Tensor, index: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Objective, its gradient with respect to the input only, and the logits at ``x``.

        One forward and one backward pass (in the attack's precision, see
        `grad_forward`). Parameters are frozen by the guard, so no weight
        gradient is computed. ``index`` selects the samples ``x`` belongs to,
        for attacks that work on a subset of the batch.
        """
        clean, self._clean_graph = self._clean_graph, None
        if clean is not None and x is self.x0 and index is None:
            xg, logits = clean  # the clean forward pass, graph included
        else:
            xg = x.detach().requires_grad_(True)
            logits = self.grad_forward(xg)
        with torch.enable_grad():
            loss = self.loss(logits, index)
            grads: tuple[Tensor | None, ...] = torch.autograd.grad(
                loss.sum(), xg, allow_unused=True
            )
        self.backward_passes += 1
        grad = grads[0]
        if grad is None:  # the objective does not depend on the input
            grad = torch.zeros_like(x)
        return loss.detach(), grad, logits.detach()

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
        loop of its own for them, and was the slower of the two on CPU.
        """
        b, k = classes.shape
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.grad_forward(xg)
            seeds = torch.zeros((k, b, logits.shape[1]), dtype=logits.dtype, device=logits.device)
            seeds.scatter_(2, classes.T.unsqueeze(2), 1.0)
            if relative:
                seeds = seeds[1:] - seeds[:1]
            n = seeds.shape[0]
            rows = [
                torch.autograd.grad(logits, xg, grad_outputs=seeds[j], retain_graph=j < n - 1)[0]
                for j in range(n)
            ]
        self.backward_passes += n
        return logits.detach(), torch.stack(rows)

    def is_success(self, logits: Tensor, index: Tensor | None = None) -> Tensor:
        """``(B,)`` bool: misclassified (untargeted) or classified as the target (targeted).

        ``index`` selects the samples ``logits`` belong to, for attacks that work
        on a subset of the batch.
        """
        pred = logits.argmax(dim=1)
        ref = self.labels if self.targets is None else self.targets
        if index is not None:
            ref = ref.index_select(0, index)
        return pred != ref if self.targets is None else pred == ref


class Attack(ABC):
    """Base class of every attack: settings in the constructor, data in the call.

    A fixed-budget attack searches the eps-ball for an adversarial input; a
    minimal-norm attack (`MinNormAttack`) searches for the smallest
    perturbation and needs no eps.

    Args:
        norm: the threat model: ``"linf"``, ``"l2"``, ``"l1"`` or a
            `Norm`.
        eps: default budget (radius of the norm ball, in the model's input
            space); a call's ``eps=`` overrides it.
        objective: ``(logits, labels, targets) -> (B,)``, higher is better for
            the attacker; see `advkit.objectives`.
        precision: ``None`` or ``"fp32"`` (default): the model runs in the
            inputs' dtype. ``"bf16"`` / ``"fp16"``: the forward and backward
            passes of gradient steps run under ``torch.autocast`` in that
            precision, while the perturbation, the step, the projection and the
            loss stay in the inputs' dtype, and ``success`` is decided by a
            full-precision forward on the returned ``x_adv``. Prefer bf16:
            fp16 has no loss scaling here, and input gradients of confident
            samples can underflow to zero in an fp16 backward.
        compile: ``False`` (default), ``True`` or a ``torch.compile`` mode
            (``"reduce-overhead"`` and ``"max-autotune"`` use CUDA graphs on
            GPU): run the model's forward and backward of gradient steps
            compiled. Worth it for small, launch-bound models with a fixed
            batch shape; the first call per model and batch shape pays the
            compilation. The compiled model is cached on the wrapper: pass
            a model wrapped once with `advkit.wrap` (a plain ``nn.Module`` is
            wrapped, and so compiled, anew in every call). Parameters are
            frozen while tracing, so the compiled backward computes no weight
            gradient.
    """

    def __init__(
        self,
        *,
        norm: NormSpec = "linf",
        eps: float | None = None,
        objective: Objective = cross_entropy,
        precision: PrecisionSpec = None,
        compile: CompileSpec = False,
    ) -> None:
        if precision not in _AUTOCAST:
            raise checks.ConfigError(
                f"precision must be None, 'fp32', 'bf16' or 'fp16', got {precision!r}."
            )
        if compile not in (False, True, "default", "reduce-overhead", "max-autotune"):
            raise checks.ConfigError(
                "compile must be False, True or a torch.compile mode ('default', "
                f"'reduce-overhead', 'max-autotune'), got {compile!r}."
            )
        self.precision: PrecisionSpec = None if precision == "fp32" else precision
        self.compile: CompileSpec = compile
        self.norm: Norm = resolve_norm(norm)
        if isinstance(eps, Tensor):
            raise checks.ConfigError(
                "the constructor's eps is one float for every call; pass per-sample budgets "
                "to the call instead: attack(model, x, y, eps=tensor_of_shape_B)."
            )
        self.eps: float | None = None if eps is None else float(checks.check_eps(eps, 1))
        if not callable(objective):
            raise checks.ConfigError(
                f"objective must be a callable (logits, labels, targets) -> (B,), "
                f"got {type(objective).__name__}."
            )
        self.objective = objective

    minimal: ClassVar[bool] = False
    """Whether this is a minimal-norm attack (see `MinNormAttack`)."""

    def _clean_pass(self) -> CleanPass:
        """How a call begins: ``"forward"`` (default), a no-grad forward on the clean
        inputs; ``"graph"``, for a ``run`` that takes its first gradient at the clean input
        (``ctx.x0`` itself), a forward with autograd whose graph serves that gradient;
        ``"none"``, for a ``run`` that never needs the clean logits (the call's checks then
        run on its first forward pass, see `Context`)."""
        return "forward"

    def _settings(self) -> dict[str, Any]:
        return {"norm": str(self.norm), "eps": self.eps}

    def _execution(self) -> dict[str, Any]:
        """How the attack runs (not what it computes); shown when not the default."""
        out: dict[str, Any] = {}
        if self.precision is not None:
            out["precision"] = self.precision
        if self.compile is not False:
            out["compile"] = self.compile
        return out

    def __repr__(self) -> str:
        settings = {**self._settings(), **self._execution()}
        args = ", ".join(f"{k}={v!r}" for k, v in settings.items())
        return f"{type(self).__name__}({args})"

    @abstractmethod
    def run(self, ctx: Context) -> tuple[Tensor, Tensor | None]:
        """Find adversarial inputs.

        Returns:
            The pair ``(x_adv, logits)``: ``x_adv`` feasible (in the ball and
                the box), ``logits`` computed on exactly ``x_adv`` or ``None`` to
                let the caller compute them.
        """

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        targets: TargetSpec = None,
        eps: float | Tensor | None = None,
        generator: torch.Generator | None = None,
        sample_ids: Tensor | None = None,
        keep_mode: bool = False,
    ) -> AttackResult:
        """Attack ``model`` on inputs ``x`` with labels ``y``.

        Args:
            model: a `Classifier` or any ``nn.Module``
                (wrapped with ``bounds=(0, 1)``).
            x: clean inputs ``(B, ...)`` inside the model's bounds; never modified.
            y: true labels ``(B,)``.
            targets: ``None`` for an untargeted attack; a ``(B,)`` tensor of
                classes or a target map (`advkit.targets`) for a targeted one.
            eps: budget overriding the constructor's: a float, or a ``(B,)``
                tensor of per-sample budgets (e.g. an eps sweep over copies of a batch).
            generator: source of randomness; the same seeded generator gives
                the same result. The global RNG is never used.
            sample_ids: optional ``(B,)`` integer ids of the samples (e.g. their
                indices in the dataset). With them every random draw of sample
                ``i`` (random start, random target) depends only on the
                generator's seed (``generator.initial_seed()``) and
                ``sample_ids[i]``, not on the batch it is in: results are the
                same sample by sample whatever the batch size, the order or the
                number of processes (see `advkit.functional.KeyedGenerator`).
            keep_mode: keep the model's train/eval mode instead of switching
                to eval mode (e.g. adversarial training with train-mode BatchNorm).
                Buffers are restored either way.

        Returns:
            The result of the attack, an `AttackResult`.

        Raises:
            InputError, BoundsError: bad inputs (not batched, NaN/Inf, outside bounds).
            LabelError: bad labels or targets.
            ConfigError: bad eps or generator.
            ModelOutputError: the model does not return ``(B, C)`` logits.
        """
        if torch.is_inference_mode_enabled():
            raise checks.ConfigError(
                "attacks need input gradients, which torch.inference_mode() disables; call the "
                "attack outside that block (torch.no_grad() is fine: attacks re-enable autograd)."
            )
        clf = wrap(model) if not isinstance(model, Classifier) else model
        checks.check_inputs(x, clf.bounds)
        batch = x.shape[0]
        requested = self.eps if eps is None else eps
        budget: Scalar | None = None
        if requested is not None or not self.minimal:
            budget = checks.check_eps(requested, batch)
        if isinstance(budget, Tensor):
            budget = budget.detach().to(device=x.device).expand(batch).clone()
        checks.check_generator(generator, x.device)
        if generator is None:
            generator = torch.Generator(device=x.device)
            generator.seed()
        source: RandomSource = generator
        if sample_ids is not None:
            source = KeyedGenerator(
                generator.initial_seed(), checks.check_sample_ids(sample_ids, batch, x.device)
            )
        if not isinstance(y, Tensor):
            raise checks.LabelError(f"labels must be a torch.Tensor, got {type(y).__name__}.")
        if isinstance(targets, Tensor):
            targets = targets.to(x.device)
        x0 = x.detach().clone(memory_format=torch.preserve_format)
        labels = y.detach().to(x.device)

        with model_guard(clf, keep_mode=keep_mode):
            ctx = Context(
                model=clf,
                x0=x0,
                labels=labels,
                eps=budget,
                norm=self.norm,
                objective=self.objective,
                generator=source,
                autocast=_AUTOCAST[self.precision],
                compile=self.compile,
                targets=targets,
                clean_pass=self._clean_pass(),
            )
            x_adv, logits = self.run(ctx)
            ctx.ensure_checked()
            if ctx.probability_outputs:  # pointing at the caller's line
                warnings.warn(
                    checks.PROBABILITY_MESSAGE, checks.ProbabilityOutputWarning, stacklevel=2
                )
            x_adv = x_adv.detach()
            if x_adv.stride() != x0.stride():  # keep the caller's memory format
                x_adv = torch.empty_like(x0).copy_(x_adv)
            if self.minimal and budget is not None:
                # A budgeted minimal-norm attack: the point found, brought into the ball.
                x_adv = clip(x0 + self.norm.project(x_adv - x0, budget), clf.bounds)
                logits = None
            if logits is None or keep_mode or self.precision is not None:
                # A reduced-precision attack is judged by a full-precision forward.
                logits = ctx.logits(x_adv)
            success = ctx.is_success(logits)
            distance = self.norm.measure(x_adv - x0)
            if self.minimal:
                # Where nothing was found: the clean input, at distance inf.
                x_adv = keep_best(~success, (x_adv,), (x0,))[0]
                logits = keep_best(~success, (logits,), (ctx.clean_logits,))[0]
                distance = torch.where(success, distance, torch.full_like(distance, math.inf))

        return AttackResult(
            x_adv=x_adv,
            success=success,
            distance=distance,
            logits=logits.detach(),
            labels=labels,
            targets=ctx.targets,
            norm=self.norm.name,
            forward_passes=ctx.forward_passes,
            backward_passes=ctx.backward_passes,
        )


class MinNormAttack(Attack):
    """An attack that looks for the smallest adversarial perturbation; no eps needed.

    Its `AttackResult` holds, per sample, the best adversarial found and its
    ``distance`` in the attack's norm; where none was found ``success`` is
    False, ``x_adv`` is the clean input and ``distance`` is ``inf``. One run
    gives the whole robust-accuracy curve: ``result.robust_accuracy([eps, ...])``.

    Called with ``eps=`` (a float or per-sample tensor) it becomes a budgeted
    attack: the perturbation found is projected onto the eps-ball, re-scored,
    and counts as a success only if it is still adversarial there.
    """

    minimal = True


def keep_best(
    better: Tensor,
    best: tuple[Tensor, ...],
    new: tuple[Tensor, ...],
) -> tuple[Tensor, ...]:
    """Per sample, take ``new`` where ``better`` (``(B,)`` bool) else ``best``; no host sync."""
    out = []
    for b, n in zip(best, new, strict=True):
        mask = better.reshape(better.shape[0], *([1] * (b.ndim - 1)))
        out.append(torch.where(mask, n, b))
    return tuple(out)


def improves(success: Tensor, loss: Tensor, best_success: Tensor, best_loss: Tensor) -> Tensor:
    """A candidate beats the best so far if it succeeds where the best does not,
    or ties on success with a higher objective."""
    return (success & ~best_success) | ((success == best_success) & (loss > best_loss))
