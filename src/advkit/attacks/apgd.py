"""Auto-PGD: PGD with momentum and a per-sample step-size schedule, for Linf, L2 and L1."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from advkit import _fused, checks
from advkit import functional as F
from advkit.attacks.base import Attack, Found
from advkit.attacks.oracle import CompileSpec, Oracle, PrecisionSpec
from advkit.attacks.task import Task, fork_generator, subset_source
from advkit.attacks.tracking import ActiveSet, BestByObjective
from advkit.functional import RandomSource
from advkit.norms import NormSpec
from advkit.objectives import Objective, cross_entropy

__all__ = ["APGD", "checkpoints"]


def checkpoints(steps: int) -> dict[int, int]:
    r"""APGD's checkpoints for ``steps`` iterations: ``{iteration: length of the interval
    that ends there}``.

    The checkpoints are $w_j = \lceil p_j N \rceil$ with $p_0 = 0$,
    $p_1 = 0.22$ and $p_{j+1} = p_j + \max(p_j - p_{j-1} - 0.03, 0.06)$
    (Croce & Hein, ICML 2020, section 3.2): intervals of 22% of the
    iterations, then 3% shorter each time, never under 6%. As in the reference
    implementation the fractions are turned into whole iterations once
    (``int(0.22 N)``, ``int(0.03 N)``, ``int(0.06 N)``, each at least 1) and a
    check happens after the iteration that ends an interval.

    Examples:
        >>> list(checkpoints(100))
        [22, 41, 57, 70, 80, 87, 93, 99]
    """
    first = max(int(0.22 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    out: dict[int, int] = {}
    position, length = first, first
    while position <= steps:
        out[position] = length
        length = max(length - shrink, shortest)
        position += length
    return out


def l1_checkpoints(steps: int) -> dict[int, int]:
    """APGD-L1's checkpoints: every ``max(int(0.04 N), 1)`` iterations (Croce & Hein, ICML
    2021, with the reference implementation's constant)."""
    every = max(int(0.04 * steps), 1)
    return {position: every for position in range(every, steps + 1, every)}


def halve(
    increases: Tensor,
    length: int,
    rho: float,
    best: Tensor,
    best_before: Tensor,
    halved_before: Tensor,
) -> Tensor:
    r"""APGD's step-size test at a checkpoint, per sample: ``True`` where the step halves.

    Condition 1: the objective rose in at most a fraction ``rho`` of the
    ``length`` steps of the interval (``increases <= rho * length``, the
    reference implementation's reading of the paper's strict inequality).
    Condition 2: the step was not halved at the previous checkpoint and the
    best objective has not improved since it (``best_before >= best``).

    Examples:
        >>> halve(torch.tensor([3.0, 9.0, 9.0]), 10, 0.75,
        ...       best=torch.tensor([1.0, 2.0, 1.0]), best_before=torch.tensor([1.0, 1.0, 1.0]),
        ...       halved_before=torch.tensor([False, False, True]))
        tensor([ True, False, False])
    """
    oscillating = increases <= rho * length
    stalled = ~halved_before & (best_before >= best)
    return oscillating | stalled


class _Scheme:
    """What differs between the norms: the start, the step and the checkpoint rule."""

    def __init__(self, attack: APGD, task: Task) -> None:
        self.attack = attack

    def checkpoints(self, steps: int) -> dict[int, int]:
        return checkpoints(steps)

    def start(self, task: Task) -> Tensor:
        """The first iterate of a restart, for the whole batch (a point uniform in the ball,
        as PGD's random start)."""
        x0, eps = task.x0, task.budget()
        if not self.attack.random_init:
            return x0
        base = x0.to(F.work_dtype(x0.dtype))
        return task.region(base + task.norm.sample(x0, eps, generator=task.generator))

    def region(self, task: Task) -> Any:
        """The projection onto the feasible set (a `advkit.norms.Region` for Linf and L2)."""
        return task.region

    def state(self, task: Task, start: Tensor, warm: bool) -> dict[str, Tensor]:
        """Per-sample schedule state at the start of a run (``warm``: from a point an earlier
        run found, not a random one)."""
        eps = _per_sample(task)
        return {"eta": 2.0 * eps}

    def step(
        self,
        state: dict[str, Tensor],
        region: Any,
        x: Tensor,
        x_prev: Tensor,
        grad: Tensor,
        first: bool,
    ) -> Tensor:
        """``z = P(x + eta d(g))``, then the momentum step ``P(x + a (z - x) + (1 - a)(x -
        x_prev))`` with ``a = 0.75`` (1 at the first step)."""
        z = _fused.step(region, x, grad, state["eta"])
        if first:
            return z
        work = F.work_dtype(x.dtype)
        xw = x.to(work)
        out: Tensor = region(xw + 0.75 * (z.to(work) - xw) + 0.25 * (xw - x_prev.to(work)))
        return out

    def check(
        self,
        state: dict[str, Tensor],
        length: int,
        track: dict[str, Tensor],
        task: Task,
    ) -> Tensor:
        reset = halve(
            track["increases"],
            length,
            self.attack.rho,
            track["loss_best"],
            state["loss_best_before"],
            state["halved_before"],
        )
        state["halved_before"] = reset
        state["loss_best_before"] = track["loss_best"]
        state["eta"] = torch.where(reset, state["eta"] / 2, state["eta"])
        return reset


class _L1Scheme(_Scheme):
    """APGD-L1 (Croce & Hein, "Mind the box: l1-APGD for sparse adversarial attacks on image
    classifiers", ICML 2021): exact projection onto the L1 ball and the box, sparse steps
    whose sparsity follows that of the best point, no momentum."""

    def checkpoints(self, steps: int) -> dict[int, int]:
        return l1_checkpoints(steps)

    def region(self, task: Task) -> Any:
        return task.norm.region(task.x0, task.budget(), task.bounds, exact=True)

    def start(self, task: Task) -> Tensor:
        """A Gaussian point projected onto the L1 ball and the box (the reference's start)."""
        x0 = task.x0
        if not self.attack.random_init:
            return x0
        draw = F.work_dtype(x0.dtype)
        noise = F.randn(tuple(x0.shape), task.generator, device=x0.device, dtype=draw)
        out: Tensor = self.region(task)(x0.to(draw) + noise)
        return out

    def state(self, task: Task, start: Tensor, warm: bool) -> dict[str, Tensor]:
        eps = _per_sample(task)
        d = float(task.x0[0].numel())
        if warm:  # the sparsity of the point it starts from (the reference's custom start)
            support = (start != task.x0).flatten(1).sum(dim=1).to(eps.dtype)
            sparsity, before = support / d / 1.5, support
        else:
            sparsity, before = torch.full_like(eps, 0.2), torch.full_like(eps, d)
        return {"eta": eps.clone(), "eps": eps, "sparsity": sparsity, "support_before": before}

    def step(
        self,
        state: dict[str, Tensor],
        region: Any,
        x: Tensor,
        x_prev: Tensor,
        grad: Tensor,
        first: bool,
    ) -> Tensor:
        direction = F.l1_direction(grad, state["sparsity"])
        work = F.work_dtype(x.dtype)
        eta = F.batch_view(state["eta"].to(work), x.ndim)
        out: Tensor = region(x.to(work) + eta * direction.to(work))
        return out

    def check(
        self,
        state: dict[str, Tensor],
        length: int,
        track: dict[str, Tensor],
        task: Task,
    ) -> Tensor:
        d = float(task.x0[0].numel())
        support = (track["x_best"] != task.x0).flatten(1).sum(dim=1).to(state["eta"].dtype)
        sparser = support / state["support_before"] < 0.95
        state["sparsity"] = support / d / 1.5
        eps = state["eps"]
        eta = torch.where(sparser, eps, state["eta"] / 1.5)
        state["eta"] = torch.minimum(torch.maximum(eta, eps / 10), eps)
        state["support_before"] = support
        return sparser


def _per_sample(task: Task) -> Tensor:
    eps = task.budget()
    dev = task.x0.device
    if isinstance(eps, Tensor):
        return eps.to(device=dev, dtype=torch.float32).expand(task.batch_size).clone()
    return torch.full((task.batch_size,), float(eps), dtype=torch.float32, device=dev)


_NOISE_TAG = 0x5E00
"""Tags the smoothing noise's source apart from the other draws of a call (`fork_generator`)."""


class APGD(Attack):
    r"""Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", ICML 2020), for the Linf, L2 and L1 balls
    (L1: Croce & Hein, "Mind the box: l1-APGD for sparse adversarial attacks on image
    classifiers", ICML 2021).

    PGD with momentum whose step size adapts to each sample. Linf and L2: from
    $x^{(0)}$, with $\eta^{(0)} = 2\epsilon$ and $P$ the projection onto the
    ball and the box,

    $$
    z = P\big(x^{(k)} + \eta\, d(\nabla L(x^{(k)}))\big), \qquad
    x^{(k+1)} = P\big(x^{(k)} + \alpha (z - x^{(k)}) + (1 - \alpha)(x^{(k)} - x^{(k-1)})\big)
    $$

    with $d$ the norm's steepest-ascent direction and $\alpha = 0.75$ (1 at
    the first step). At the checkpoints (`checkpoints`: after 22% of the
    steps, then intervals 3% shorter, never under 6%) a sample's step halves
    if its objective rose in at most a fraction ``rho`` of the interval's
    steps, or if the step was not halved at the previous checkpoint and its
    best objective has not improved since (`halve`); a sample whose step
    halves restarts from its best point. L1: the start is a Gaussian point
    projected onto the ball and the box; the step moves the top fraction of
    gradient coordinates (20% at first, then 1/1.5 of the best point's
    support) by $\eta$ (initially $\epsilon$) along the sparse sign
    direction, projected exactly onto the intersection of the L1 ball and the
    box (`advkit.functional.l1_box_project`), without momentum; every 4% of
    the steps, a sample whose best point became sparser (support below 95% of
    the last check) restarts from it with $\eta = \epsilon$, the others divide
    $\eta$ by 1.5 (within $[\epsilon / 10, \epsilon]$).

    Every iterate is scored from the forward pass that computes its gradient
    (the last by one more forward pass): a success at any iterate is kept
    (per sample the attack returns a successful point first, then the one with
    the highest objective). A restart after the first runs only on the samples
    not yet broken. A call makes ``steps + 1`` forward (``steps + 3`` with
    ``large_eps``, whose three stages each score their start) and ``steps``
    backward passes per restart, and all the schedule state lives in tensors: no host
    synchronisation in the step loop (one per restart, to find the samples
    still robust). With ``sample_ids`` the result of each sample does not
    depend on the batch it is in (its draws do not; the model's batched
    passes may round the last bits differently by batch size).

    Targeted (``targets=``) with a targeted objective, e.g. the targeted DLR
    loss (``objective=objectives.dlr``); `advkit.MultiTargeted` over the top
    classes makes APGD-T.

    Args:
        norm: ``"linf"`` (default), ``"l2"`` or ``"l1"``.
        eps: radius of the ball in input space (may also be given per call, per sample).
        steps: gradient steps per restart (the paper's $N_{iter}$, 100).
        restarts: runs from independent random starts, each on the samples
            still robust.
        skip_restarts: leave out the first ``skip_restarts`` restarts (their
            random starts are drawn and discarded, so the others start where
            they would in a full run): the rest of a run that stopped after
            them, with the same draws as the full run (with ``sample_ids``).
            Below ``restarts``; default 0.
        objective: the loss to maximise: `advkit.objectives.cross_entropy`
            (APGD-CE, default), `advkit.objectives.dlr` (APGD-DLR, needs at
            least 3 classes; targeted 4) or any ``(logits, labels, targets) -> (B,)``.
        rho: the fraction of the checkpoint test (0.75 in the paper).
        random_init: start at a random point of the ball (the paper's choice);
            ``False`` starts at the clean input.
        early_stop: a sample stops moving at its first success, and every few
            steps the samples that succeeded are dropped from the batch (with
            ``compile``, in a few fixed batch sizes, as `advkit.PGD`); saves
            their passes at the price of a host sync every few steps. The
            robust accuracy is the same.
        precision: model precision in gradient steps (``"bf16"``, ``"fp16"``;
            see `advkit.Attack`).
        compile: run the model compiled (see `advkit.Attack`).
        eot: gradients averaged over this many passes, for randomized models
            (see `advkit.Attack`).
        smoothing: ``0`` (default) or the standard deviation of Gaussian noise, as
            a fraction of the input box's width, under which the gradient is
            smoothed: each step's gradient is the mean of the gradient at the
            iterate and at ``smoothing_draws`` noisy copies of it (the gradient
            of the loss of the model averaged over the noise, as in randomized
            smoothing, estimated from a few draws). The objective and the
            success of each iterate stay its own, from its own pass. On models
            whose gradients mislead locally (gradient masking: quantized or
            thresholded inputs, the first layers of adversarially trained MNIST
            models) the smoothed gradient still points across the boundary;
            on the benchmark's MNIST CNN trained against Linf attacks and
            attacked in L2, ``smoothing=0.2`` breaks samples that neither APGD
            nor FAB nor Square break (``benchmarks/README.md``). The noise is
            drawn from the call's random source, per sample with ``sample_ids``.
        smoothing_draws: noisy copies per step with ``smoothing`` (default 3):
            each step then costs ``1 + smoothing_draws`` forward and backward
            passes (times ``eot``). The copies are not clipped to the input
            box: the gradient is that of the model averaged over the noise.

    Examples:
        >>> import advkit
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
        >>> res = APGD(eps=0.1, steps=20)(net, x, y, generator=torch.Generator().manual_seed(0))
        >>> (res.forward_passes, res.backward_passes), bool((res.distance <= 0.1).all())
        ((21, 20), True)
    """

    _compact_every = 4
    """With ``early_stop``: steps between two looks at which samples are still running."""

    def __init__(
        self,
        norm: NormSpec = "linf",
        eps: float | None = None,
        steps: int = 100,
        restarts: int = 1,
        objective: Objective = cross_entropy,
        rho: float = 0.75,
        random_init: bool = True,
        early_stop: bool = False,
        large_eps: bool = False,
        precision: PrecisionSpec = None,
        compile: CompileSpec = False,
        eot: int = 1,
        skip_restarts: int = 0,
        smoothing: float = 0.0,
        smoothing_draws: int = 3,
    ) -> None:
        super().__init__(
            norm=norm,
            eps=eps,
            objective=objective,
            precision=precision,
            compile=compile,
            eot=eot,
        )
        self.steps = checks.check_positive_int(steps, "steps")
        self.restarts = checks.check_positive_int(restarts, "restarts")
        self.skip_restarts = checks.check_positive_int(skip_restarts, "skip_restarts", minimum=0)
        if self.skip_restarts >= self.restarts:
            raise checks.ConfigError(
                f"skip_restarts={self.skip_restarts} leaves none of the {self.restarts} "
                "restarts to run: it must be below restarts."
            )
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 < rho <= 1.0:
            raise checks.ConfigError(f"rho must be a fraction in (0, 1], got {rho!r}.")
        self.rho = float(rho)
        self.random_init = bool(random_init)
        self.early_stop = bool(early_stop)
        self.large_eps = bool(large_eps)
        if (
            isinstance(smoothing, bool)
            or not isinstance(smoothing, (int, float))
            or not 0.0 <= smoothing < math.inf
        ):
            raise checks.ConfigError(
                f"smoothing must be a finite fraction >= 0 of the input box's width (the noise's "
                f"standard deviation; 0 for none), got {smoothing!r}."
            )
        self.smoothing = float(smoothing)
        self.smoothing_draws = checks.check_positive_int(smoothing_draws, "smoothing_draws")
        if self.large_eps and self.norm.name != "l1":
            raise checks.ConfigError(
                "large_eps is APGD-L1's schedule (AutoAttack's for L1); the norm here is "
                f"{self.norm.name}: drop large_eps or use norm='l1'."
            )

    def _settings(self) -> dict[str, Any]:
        return {
            **super()._settings(),
            "steps": self.steps,
            "restarts": self.restarts,
            "rho": self.rho,
            "random_init": self.random_init,
            "early_stop": self.early_stop,
            "large_eps": self.large_eps,
            **({"skip_restarts": self.skip_restarts} if self.skip_restarts else {}),
            **(
                {"smoothing": self.smoothing, "smoothing_draws": self.smoothing_draws}
                if self.smoothing
                else {}
            ),
        }

    def run(self, oracle: Oracle, task: Task) -> Found:
        task.budget()
        scheme = (_L1Scheme if task.norm.name == "l1" else _Scheme)(self, task)
        best = BestByObjective()
        for restart in range(self.restarts):
            if restart < self.skip_restarts:  # its draws, discarded (no pass)
                _ = self._large_eps_start(task) if self.large_eps else scheme.start(task)
                continue
            # Padded to few batch sizes for compiled code only (eager cost follows the rows).
            active = ActiveSet(task.batch_size, padded=oracle.compile is not False)
            if restart > self.skip_restarts and not active.update(best.success):
                break
            noise = self._noise_source(task, restart) if self.smoothing else None
            if self.large_eps:
                self._run_large_eps(oracle, task, scheme, best, active, noise)
                continue
            start = scheme.start(task)  # the whole batch: keyed draws do not depend on it
            self._run_once(oracle, task, scheme, start, best, active, self.steps, noise=noise)
        return Found(best.x, best.logits)

    def _run_large_eps(
        self,
        oracle: Oracle,
        task: Task,
        scheme: _Scheme,
        best: BestByObjective,
        active: ActiveSet,
        noise: RandomSource = None,
    ) -> None:
        """AutoAttack's L1 schedule: 30% of the steps at 3 eps, 30% at 2 eps, 40% at eps, each
        stage from the best point of the one before (projected onto its smaller ball); only
        the last stage, in the real ball, can break a sample."""
        first = math.ceil(0.3 * self.steps)
        stages = [(3.0, first), (2.0, first), (1.0, max(self.steps - 2 * first, 0))]
        eps = task.budget()
        point = self._large_eps_start(task)
        for k, (scale, steps) in enumerate(stages):
            final = k == len(stages) - 1
            if steps < 1 and not final:  # the last stage always scores its start
                continue
            stage = task.using(eps=eps * scale)
            point = scheme.region(stage)(point)
            point = self._run_once(
                oracle,
                stage,
                scheme,
                point,
                best if final else None,
                active,
                steps,
                warm=True,
                noise=noise,
                tag=k * self.steps,
            )

    def _large_eps_start(self, task: Task) -> Tensor:
        """The large-eps schedule's start: the clean input plus Gaussian noise (projected by
        its first stage); the clean input itself without ``random_init``."""
        x0 = task.x0
        if not self.random_init:
            return x0
        draw = F.work_dtype(x0.dtype)
        noise = F.randn(tuple(x0.shape), task.generator, device=x0.device, dtype=draw)
        return x0.to(draw) + noise

    def _run_once(
        self,
        oracle: Oracle,
        task: Task,
        scheme: _Scheme,
        start: Tensor,
        best: BestByObjective | None,
        active: ActiveSet,
        steps: int,
        warm: bool = False,
        noise: RandomSource = None,
        tag: int = 0,
    ) -> Tensor:
        """One run of ``steps`` iterations on the samples of ``active``, from ``start``;
        candidates go to ``best`` (unless ``None``). Returns ``start`` with the running rows
        replaced by their highest-objective points. ``noise``: the source of the smoothing
        noise (with ``smoothing``), its draws at step ``i`` tagged ``tag + i``."""
        sub = task if active.rows is None else task.subset(active.rows)
        region = scheme.region(sub)
        marks = scheme.checkpoints(steps)
        (x,) = active.take(start)

        def value_and_grad(x: Tensor, i: int) -> tuple[Tensor, Tensor, Tensor]:
            if noise is None:
                return oracle.value_and_grad(x, sub.loss)
            return self._smoothed(oracle, sub, x, noise, active, tag + i)

        loss, grad, logits = value_and_grad(x, 0)
        ok = sub.success(logits)
        if best is not None:
            best.consider(x, logits, loss, ok, active.rows)
        state = scheme.state(sub, x, warm)
        state["halved_before"] = torch.ones_like(ok)
        state["loss_best_before"] = loss
        track: dict[str, Tensor] = {
            "x": x,
            "x_prev": x,
            "grad": grad,
            "x_best": x,
            "grad_best": grad,
            "loss_best": loss,
            "loss_prev": loss,
            "increases": torch.zeros_like(loss),
            "ok": ok,
        }
        done = best.success if best is not None else None
        for i in range(steps):
            if self.early_stop and done is not None and i > 0 and i % self._compact_every == 0:
                # A look at the host (one sync every few steps): drop the samples that already
                # succeed from the batch, in a few fixed batch sizes.
                assert best is not None
                track, state = self._compact(active, best.success, track, state)
                if active.running == 0:
                    return start
                sub = task if active.rows is None else task.subset(active.rows)
                region = scheme.region(sub)
            x, x_prev = track["x"], track["x_prev"]
            x_next = scheme.step(state, region, x, x_prev, track["grad"], first=i == 0)
            if self.early_stop and best is not None:  # a success (that counts) stays put
                x_next = torch.where(_rows(track["ok"], x), x, x_next)
            last = i == steps - 1
            if last:
                logits = oracle.logits(x_next)
                loss = sub.loss(logits)
                grad = track["grad"]
            else:
                loss, grad, logits = value_and_grad(x_next, i + 1)
            ok = sub.success(logits)
            if best is not None:
                best.consider(x_next, logits, loss, ok, active.rows)
            better = loss > track["loss_best"]
            mask = _rows(better, x_next)
            track["x_best"] = torch.where(mask, x_next, track["x_best"])
            track["grad_best"] = torch.where(mask, grad, track["grad_best"])
            track["loss_best"] = torch.where(better, loss, track["loss_best"])
            track["increases"] = track["increases"] + (loss > track["loss_prev"]).to(loss.dtype)
            track.update(x=x_next, x_prev=x, grad=grad, loss_prev=loss, ok=ok)
            length = marks.get(i + 1)
            if length is not None and not last:
                reset = scheme.check(state, length, track, sub)
                back = _rows(reset, x_next)
                track["x"] = torch.where(back, track["x_best"], track["x"])
                track["grad"] = torch.where(back, track["grad_best"], track["grad"])
                track["increases"] = torch.zeros_like(track["increases"])
        return active.put(start, track["x_best"])

    @staticmethod
    def _noise_source(task: Task, restart: int) -> RandomSource:
        """The source of a restart's smoothing noise: a keyed source of its own, forked from
        the call's (per sample, no host sync); a ``torch.Generator`` is the call's itself
        (forking one reads a seed from it, a host sync)."""
        if isinstance(task.generator, F.KeyedGenerator):
            return fork_generator(task.generator, _NOISE_TAG + restart)
        return task.generator

    def _smoothed(
        self,
        oracle: Oracle,
        task: Task,
        x: Tensor,
        noise: RandomSource,
        active: ActiveSet,
        tag: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The objective and logits at ``x`` and the mean of the gradients at ``x`` and at
        ``smoothing_draws`` copies with Gaussian noise (``smoothing`` times the box's width).
        A keyed source draws the noise of step ``tag`` for each sample from its key alone; a
        ``torch.Generator`` draws for the whole batch, so that the rows that pad the running
        samples to a fixed batch size (compiled models) get the noise of the row they copy."""
        loss, grad, logits = oracle.value_and_grad(x, task.loss)
        rows = active.rows
        batch = tuple(x.shape)
        select = None
        if isinstance(noise, F.KeyedGenerator):
            noise = fork_generator(noise if rows is None else subset_source(noise, rows), tag)
        elif rows is not None:  # also at the full size, where padding rows repeat others
            batch, select = (active.batch, *x.shape[1:]), rows
        lo, hi = task.bounds
        sigma = self.smoothing * (float(hi) - float(lo))
        work = F.work_dtype(x.dtype)
        total = grad
        for _ in range(self.smoothing_draws):
            draw = F.randn(batch, noise, device=x.device, dtype=work)
            if select is not None:
                draw = draw.index_select(0, select)
            # Not clipped to the box: the model's average over the noise, as randomized
            # smoothing has it (clipping measured weaker on the benchmark's masked model).
            noisy = x.to(work) + sigma * draw
            total = total + oracle.value_and_grad(noisy.to(x.dtype), task.loss)[1]
        return loss, total / (1 + self.smoothing_draws), logits

    @staticmethod
    def _compact(
        active: ActiveSet,
        done: Tensor,
        track: dict[str, Tensor],
        state: dict[str, Tensor],
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Move the per-sample tensors to the samples still running."""
        rows, batch = active.rows, active.batch

        def widen(t: Tensor) -> Tensor:
            if rows is None:
                return t
            full = torch.zeros((batch, *t.shape[1:]), dtype=t.dtype, device=t.device)
            return full.index_copy(0, rows, t)

        full_track = {k: widen(v) for k, v in track.items()}
        full_state = {k: widen(v) for k, v in state.items()}
        if not active.update(done):
            return track, state
        return (
            {k: active.take(v)[0] for k, v in full_track.items()},
            {k: active.take(v)[0] for k, v in full_state.items()},
        )


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    return F.batch_view(mask, like.ndim)
