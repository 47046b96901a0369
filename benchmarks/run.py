"""Throughput of advkit's gradient attacks against the bare loop and the peer libraries.

The cost floor of a ``k``-step gradient attack is ``k x (one forward + one
input-gradient backward)`` of the model on the same batch, in the same
precision, memory format and compile setting. The *bare loop* runs exactly
that: ``torch.autograd.grad`` of the summed cross-entropy with respect to the
input, parameters frozen with ``requires_grad_(False)``, eval mode, no update
and no bookkeeping. For every configuration (model, batch, precision, memory
format, attack) this script times, in one process and interleaved so that load
changes hit every method alike:

* the bare loop in that configuration (eager, and compiled for the compile rows),
* advkit (``PGD`` / ``FGSM``, plus its ``early_stop`` and ``compile`` variants
  where the installed advkit has them),
* the peers that import: torchattacks, foolbox 3 and adv-lib (optional; a
  missing one is skipped with a printed line).

For each method it reports the median and interquartile range of the wall time
(CUDA events on GPU), images/s, the ratio to the bare loop and advkit's ratio
to each peer, forward and backward passes per sample (counted through a
wrapper module in an untimed run; advkit's own counts too), peak GPU memory,
and the success rate of the returned points on the same batch, evaluated by
this script.

Run from the repository root:

    python benchmarks/run.py --device cpu                      # small CNN b128 + ResNet-18 b32, PGD-10 + FGSM, fp32
    python benchmarks/run.py --quick                           # < 1 min on 2 CPU cores
    python benchmarks/run.py --device cuda --dtype fp32,bf16 --channels-last --variants all
    python benchmarks/run.py --models resnet50 --batch 8 --attacks pgd --steps 10 --repeats 5

Results go to ``benchmarks/results/<device>[-<tag>]-<YYYYMMDD>.json``; a
Markdown table with the exact command and the machine goes into
``benchmarks/README.md`` between the markers ``<!-- run.py:<device>:begin -->``
and ``<!-- run.py:<device>:end -->`` (not for ``--quick`` unless ``--readme`` is given).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import fractions
import gc
import inspect
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import advkit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _peers  # noqa: E402

import _models  # noqa: E402

DEFAULT_RESULTS = HERE / "results"
DEFAULT_README = HERE / "README.md"

# Batch sizes when --batch is not given: one per model and device.
DEFAULT_BATCH = {
    "cpu": {"smallcnn": 128, "resnet18": 32, "wrn28_10": 8, "resnet50": 8},
    "cuda": {"smallcnn": 1024, "resnet18": 256, "wrn28_10": 128, "resnet50": 64},
}
DEFAULT_MODELS = {"cpu": ("smallcnn", "resnet18"), "cuda": tuple(_models.MODELS)}

# advkit variants: constructor keywords on top of the configuration's precision.
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "early_stop": {"early_stop": True},
    "compile": {"compile": True},
    "reduce-overhead": {"compile": "reduce-overhead"},
}
COMPILE_MODE = {"compile": "default", "reduce-overhead": "reduce-overhead"}
NOT_ATTACKS = ("bare", "reference")  # rows that return no adversarial points
STEADY_MALLOC = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"
ENV_KEYS = ("GLIBC_TUNABLES", "LD_PRELOAD", "MALLOC_CONF", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# --------------------------------------------------------------------------- models


class Autocast(nn.Module):
    """Runs the wrapped model under ``torch.autocast(dtype)``; returns float32 logits.

    This is how the bare loop and the peers get the bf16 configuration: the
    model's forward (and hence its backward) in bf16, the loss and the
    perturbation in float32, as advkit's ``precision="bf16"`` does.
    """

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype
        self.train(model.training)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out: Tensor = self.model(x)
        return out.float()


class _Tap(torch.autograd.Function):
    """Identity on the model input whose backward counts the samples a backward pass reaches."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, counter: list[int]) -> Tensor:  # type: ignore[override]
        ctx.counter = counter
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        ctx.counter[0] += grad.shape[0]
        return grad, None


class Counting(nn.Module):
    """Wraps a model; counts the samples of its forward calls and of the backward passes to its input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forward_samples = 0
        self.backward_samples = [0]
        self.train(model.training)  # a new module is in training mode; libraries read this flag

    def forward(self, x: Tensor) -> Tensor:
        self.forward_samples += x.shape[0]
        if x.requires_grad:
            x = _Tap.apply(x, self.backward_samples)
        out: Tensor = self.model(x)
        return out


def bare_loop(
    model: nn.Module, x: Tensor, y: Tensor, steps: int, mark_step: bool = False
) -> Tensor:
    """The cost floor: ``steps`` x (forward + gradient of the summed CE w.r.t. the input only)."""
    grad = x
    for _ in range(steps):
        if mark_step:  # CUDA graphs: each iteration is a new step whose outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        xg = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(xg), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
    return grad


# --------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes: CUDA events on GPU, ``perf_counter`` on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _paired(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Median over the timed rounds of ``a``'s time / ``b``'s time in the same round."""
    return statistics.median(x / y for x, y in zip(a["times_ms"], b["times_ms"], strict=False))


def _quantiles(ms: Sequence[float]) -> tuple[float, float]:
    if len(ms) < 2:
        return ms[0], ms[0]
    q = statistics.quantiles(ms, n=4, method="inclusive")
    return q[0], q[2]


# --------------------------------------------------------------------------- methods


@dataclass
class Method:
    """One timed row: ``run(model, x, y)`` on ``model`` returns x_adv, an AttackResult or a gradient."""

    name: str
    library: str
    version: str
    variant: str
    settings: str
    model: nn.Module
    run: Callable[[nn.Module, Tensor, Tensor], Any]
    baseline: str  # the bare loop it is compared with
    countable: bool = True  # a counting wrapper can replace its model (not for compiled paths)
    times: list[float] = field(default_factory=list)
    first_call_s: float = 0.0
    record: dict[str, Any] = field(default_factory=dict)


def advkit_method(
    attack: str,
    variant: str,
    precision: str,
    model: nn.Module,
    args: argparse.Namespace,
    device: torch.device,
    baseline: str,
) -> Method | str:
    """The advkit row of one variant, or a message saying why the installed advkit cannot run it."""
    classes = {"pgd": advkit.PGD, "fgsm": advkit.FGSM, "apgd": getattr(advkit, "APGD", None)}
    cls = classes[attack]
    if cls is None:
        return f"advkit {advkit.__version__} has no APGD; skipping its APGD rows"
    extra = dict(VARIANTS[variant])
    if precision != "fp32":
        extra["precision"] = precision
    params = inspect.signature(cls).parameters
    missing = [k for k in extra if k not in params]
    if missing:
        kw = ", ".join(f"{k}={extra[k]!r}" for k in missing)
        return f"advkit {advkit.__version__} has no {cls.__name__}({kw}); skipping that row"
    if attack == "pgd":
        obj: advkit.Attack = advkit.PGD(
            norm="linf",
            eps=args.eps,
            steps=args.steps,
            step_size=args.step_size,
            random_init=True,
            **extra,
        )
    elif attack == "apgd":
        obj = cls(norm="linf", eps=args.eps, steps=args.steps, restarts=1, **extra)
    else:
        obj = advkit.FGSM(norm="linf", eps=args.eps, **extra)
    gen = torch.Generator(device=device)
    wrapped = _peers.per_model(lambda m: advkit.wrap(m, bounds=(0, 1)))
    seed = args.seed

    def run(m: nn.Module, x: Tensor, y: Tensor) -> advkit.AttackResult:
        res: advkit.AttackResult = obj(wrapped(m), x, y, generator=gen.manual_seed(seed))
        return res

    name = "advkit" if variant == "plain" else f"advkit, {variant}"
    return Method(
        name,
        "advkit",
        advkit.__version__,
        variant,
        repr(obj),
        model,
        run,
        baseline,
        countable=not variant.startswith(("compile", "reduce")),
    )


def bare_method(
    name: str,
    model: nn.Module,
    steps: int,
    point: Tensor,
    where: str,
    mark_step: bool = False,
    countable: bool = True,
) -> Method:
    """The bare loop on ``point`` (whatever inputs the method is called with)."""

    def run(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return bare_loop(m, point, y, steps, mark_step)

    settings = (
        f"{steps} x (forward + autograd.grad(CE sum, input)) {where}, parameters frozen, eval mode"
    )
    return Method(name, "bare", torch.__version__, name, settings, model, run, name, countable)


def forward_method(model: nn.Module, point: Tensor, where: str) -> Method:
    """One no-grad forward: what each extra scoring forward pass of an attack costs."""

    def run(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            out: Tensor = m(point)
        return out

    name = "one no-grad forward"
    settings = f"with torch.no_grad(): model(input) {where}, the price of an extra forward pass"
    return Method(name, "reference", torch.__version__, name, settings, model, run, "bare loop")


def peer_methods(
    attack: str,
    args: argparse.Namespace,
    user: nn.Module,
    frozen: nn.Module,
    messages: list[str],
    versions: dict[str, str],
) -> list[Method]:
    methods = []
    for peer in args.peers:
        try:
            runners = _peers.BUILDERS[peer](attack, args.eps, args.step_size, args.steps)
        except _peers.PeerMissing as err:
            msg = f"{peer}: skipped, {err}"
            if msg not in messages:
                messages.append(msg)
                print(msg, flush=True)
            versions[peer] = f"not available: {err}"
            continue
        for r in runners:
            versions[peer] = r.version

            def run(m: nn.Module, x: Tensor, y: Tensor, r: _peers.Runner = r) -> Tensor:
                torch.manual_seed(args.seed)  # peers draw their random start from the global RNG
                return r.run(m, x, y)

            model = frozen if r.frozen else user
            methods.append(
                Method(r.name, r.library, r.version, "plain", r.settings, model, run, "bare loop")
            )
    return methods


# --------------------------------------------------------------------------- one configuration


@dataclass
class Config:
    model: str
    batch: int
    dtype: str
    memory_format: str
    attack: str


def _x_adv(out: Any) -> Tensor | None:
    if isinstance(out, advkit.AttackResult):
        return out.x_adv
    return out if isinstance(out, Tensor) else None


def measure(
    cfg: Config,
    base: nn.Module,
    x_cpu: Tensor,
    y_cpu: Tensor,
    args: argparse.Namespace,
    device: torch.device,
    messages: list[str],
    versions: dict[str, str],
) -> dict[str, Any]:
    """Time every method on one configuration; returns its JSON record."""
    fmt = torch.channels_last if cfg.memory_format == "channels_last" else torch.contiguous_format
    steps = 1 if cfg.attack == "fgsm" else args.steps

    # The user's model (parameters require grad, as a user holds it) and a frozen copy.
    user = copy.deepcopy(base).to(device=device, memory_format=fmt).eval().requires_grad_(True)
    frozen = copy.deepcopy(base).to(device=device, memory_format=fmt).eval().requires_grad_(False)
    x = x_cpu.to(device=device).contiguous(memory_format=fmt)
    y = y_cpu.to(device)
    if cfg.dtype == "bf16":
        user_view: nn.Module = Autocast(user, device.type, torch.bfloat16)
        frozen_view: nn.Module = Autocast(frozen, device.type, torch.bfloat16)
    else:
        user_view, frozen_view = user, frozen

    # Where the bare loop differentiates: PGD's iterates lie in the eps-ball around x, not at
    # x, and on the CPU some kernels (max-pooling, for one) run measurably faster on clean
    # images with large constant regions than on perturbed ones; so (A)PGD's floor is measured
    # at one fixed random point of the ball (drawn like a random start), FGSM's at x itself.
    if cfg.attack != "fgsm":
        gen = torch.Generator(device=device).manual_seed(args.seed + 3)
        noise = torch.rand(x.shape, generator=gen, device=device, dtype=x.dtype)
        point = (x + (2 * noise - 1) * args.eps).clamp(0, 1).contiguous(memory_format=fmt)
        where = "at a fixed random point of the eps-ball around x"
    else:
        point, where = x, "at x"
    methods: list[Method] = [bare_method("bare loop", frozen_view, steps, point, where)]
    for variant in args.variants:
        baseline = "bare loop"
        if variant in COMPILE_MODE:
            mode = COMPILE_MODE[variant]
            baseline = f"bare loop, {variant}"
            # Parameters are frozen before tracing, so the compiled backward skips weight grads.
            compiled = torch.compile(frozen_view, mode=mode)
            mark = mode == "reduce-overhead" and device.type == "cuda"
            methods.append(
                bare_method(baseline, compiled, steps, point, where, mark, countable=False)
            )
        got = advkit_method(cfg.attack, variant, cfg.dtype, user, args, device, baseline)
        if isinstance(got, str):
            if got not in messages:
                messages.append(got)
                print(got, flush=True)
            if variant in COMPILE_MODE:
                methods.pop()  # no advkit row to compare the compiled bare loop with
            continue
        methods.append(got)
    methods += peer_methods(cfg.attack, args, user_view, frozen_view, messages, versions)
    methods.append(forward_method(frozen_view, point, where))

    label = f"{cfg.model} b{cfg.batch} {cfg.dtype} {cfg.memory_format} {cfg.attack}"
    errors: dict[str, str] = {}

    # Warm-up (compilation happens here; the first call's time is kept).
    for m in list(methods):
        for i in range(args.warmup):
            try:
                dt_s = time_call(lambda m=m: m.run(m.model, x, y), device)
            except Exception as err:
                errors[m.name] = f"{type(err).__name__}: {err}"
                print(f"[{label}] {m.name}: failed, dropped ({errors[m.name]})", flush=True)
                methods.remove(m)
                if device.type == "cuda":  # e.g. out of memory: give the others a clean slate
                    torch.cuda.empty_cache()
                break
            if i == 0:
                m.first_call_s = dt_s

    # Pass counts per sample, untimed, through a counting wrapper around the method's model.
    batch = x.shape[0]
    for m in methods:
        out = None
        if m.countable:
            counter = Counting(m.model)
            out = m.run(counter, x, y)
            m.record["forward_per_sample"] = counter.forward_samples / batch
            m.record["backward_per_sample"] = counter.backward_samples[0] / batch
        if isinstance(out, advkit.AttackResult) or m.library == "advkit":
            res = out if isinstance(out, advkit.AttackResult) else m.run(m.model, x, y)
            m.record["advkit_forward_passes"] = res.forward_passes
            m.record["advkit_backward_passes"] = res.backward_passes
        if m.library == "bare" and not m.countable:
            m.record["forward_per_sample"] = m.record["backward_per_sample"] = float(steps)

    # Timed rounds, interleaved; the order rotates every round.
    t_start = time.perf_counter()
    for rnd in range(args.repeats):
        k = rnd % len(methods)
        for m in methods[k:] + methods[:k]:
            m.times.append(time_call(lambda m=m: m.run(m.model, x, y), device))
        if rnd + 1 >= args.min_repeats and time.perf_counter() - t_start > args.budget_s:
            break

    # One more untimed call per method: peak memory and the points whose strength is measured,
    # judged by the model in full precision (the model as deployed) whatever the attack ran in.
    with torch.no_grad():
        clean_pred = frozen(x).argmax(1)
    clean_acc = float((clean_pred == y).float().mean())
    for m in methods:
        peak = None
        for p in user.parameters():  # foolbox accumulates weight gradients: count them anew
            p.grad = None
        if device.type == "cuda":
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            out = m.run(m.model, x, y)
            _sync(device)
            peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        else:
            out = m.run(m.model, x, y)
        m.record["peak_memory_mib"] = peak
        xa = _x_adv(out) if m.library not in NOT_ATTACKS else None
        if xa is not None:
            xa = xa.detach()  # some peers return points that still require grad
            with torch.no_grad():
                pred = frozen(xa).argmax(1)
            dist = (xa.float() - x.float()).abs().flatten(1).amax(1)
            m.record["success_rate"] = float((pred != y).float().mean())
            m.record["max_linf"] = float(dist.max())
            m.record["feasible"] = bool(
                (dist <= args.eps * (1 + 1e-5) + 1e-6).all() and xa.min() >= 0 and xa.max() <= 1
            )
        if isinstance(out, advkit.AttackResult):
            m.record["advkit_success_rate"] = out.success_rate

    by_name = {m.name: m for m in methods}
    rows = []
    for m in methods:
        ms = [1000 * t for t in m.times]
        med = statistics.median(ms)
        q1, q3 = _quantiles(ms)
        base_m = by_name.get(m.baseline)
        row: dict[str, Any] = {
            "method": m.name,
            "library": m.library,
            "version": m.version,
            "variant": m.variant,
            "settings": m.settings,
            "median_ms": med,
            "q1_ms": q1,
            "q3_ms": q3,
            "min_ms": min(ms),
            "max_ms": max(ms),
            "images_per_s": batch / (med / 1000),
            "first_call_s": m.first_call_s,
            "baseline": m.baseline,
            **m.record,
        }
        if base_m is not None:
            bms = [1000 * t for t in base_m.times]
            row["ratio_to_bare"] = med / statistics.median(bms)
            row["ratio_to_bare_paired"] = _paired({"times_ms": ms}, {"times_ms": bms})
        row["times_ms"] = ms
        rows.append(row)
    # advkit / each peer (medians; below 1: advkit is faster).
    peers_rows = [r for r in rows if r["library"] not in ("advkit", *NOT_ATTACKS)]
    for r in rows:
        if r["library"] == "advkit":
            r["ratio_to_peers"] = {p["method"]: r["median_ms"] / p["median_ms"] for p in peers_rows}
            r["ratio_to_peers_paired"] = {p["method"]: _paired(r, p) for p in peers_rows}
    # What the extra forward passes alone cost: 1 + (forwards - k) x F / bare, F one no-grad
    # forward; advkit's time above this is its update, bookkeeping and overhead.
    fwd = next((r for r in rows if r["library"] == "reference"), None)
    bare_row = next((r for r in rows if r["method"] == "bare loop"), None)
    for r in rows:
        if fwd and bare_row and r["library"] != "reference" and "forward_per_sample" in r:
            extra = r["forward_per_sample"] - steps
            r["floor_from_extra_forwards"] = 1 + extra * fwd["median_ms"] / bare_row["median_ms"]
    adv = next((r for r in rows if r["method"] == "advkit"), None)
    if adv is not None:
        for p in peers_rows:
            p["advkit_over_this"] = adv["median_ms"] / p["median_ms"]
            p["advkit_over_this_paired"] = _paired(adv, p)

    del methods, by_name, user, frozen, user_view, frozen_view
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "model": cfg.model,
        "model_description": _models.MODELS[cfg.model].description,
        "batch": batch,
        "dtype": cfg.dtype,
        "memory_format": cfg.memory_format,
        "attack": cfg.attack,
        "steps": steps,
        "clean_accuracy": clean_acc,
        "repeats": len(rows[0]["times_ms"]) if rows else 0,
        "rows": rows,
        "errors": errors,
    }


# --------------------------------------------------------------------------- data


def make_data(
    name: str, batch: int, args: argparse.Namespace, device: torch.device
) -> tuple[nn.Module, Tensor, Tensor, str]:
    """The model (CPU, eval) and a batch ``(x, y)``; the last item says what the labels are."""
    spec = _models.MODELS[name]
    model = _models.build(name, seed=args.seed)
    if name == "smallcnn" and not args.no_train:
        x_tr, y_tr, x_te, y_te = _models.digits28(seed=args.seed)
        model, secs = _models.train_smallcnn(
            model, x_tr, y_tr, epochs=args.train_epochs, seed=args.seed
        )
        reps = -(-batch // x_te.shape[0])
        x = x_te.repeat(reps, 1, 1, 1)[:batch].contiguous()
        y = y_te.repeat(reps)[:batch].contiguous()
        return model, x, y, f"digits test images (trained {args.train_epochs} epochs, {secs:.1f} s)"
    gen = torch.Generator().manual_seed(args.seed + 2)
    x = torch.rand((batch, *spec.input_shape), generator=gen)
    with torch.no_grad():  # on the device: a big model's forward on CPU takes a while
        y = model.to(device)(x.to(device)).argmax(1).cpu()
    model.cpu()
    return model, x, y, "random images, labels = the model's clean predictions"


# --------------------------------------------------------------------------- report


def record_head(
    benchmark: str,
    cli: list[str],
    device: torch.device,
    load_start: float | None,
    elapsed: float | None = None,
) -> dict[str, Any]:
    """The first fields of a benchmark script's results record: its name, the command that
    ran it, the date, the elapsed seconds (when given), the device and the machine."""
    head: dict[str, Any] = {
        "benchmark": benchmark,
        "command": " ".join([f"python benchmarks/{benchmark}.py", *cli]),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if elapsed is not None:
        head["elapsed_s"] = elapsed
    head["device"] = device.type
    head["machine"] = {**machine_info(device), "load_average_1min_at_start": load_start}
    return head


def results_path(results_dir: Path, *parts: str | None) -> Path:
    """Where a benchmark script writes its record: ``results_dir/<parts>-<YYYYMMDD>.json``,
    the non-empty ``parts`` joined by ``-`` (``results_dir`` is made if need be)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    name = "-".join(part for part in parts if part)
    return results_dir / f"{name}-{dt.date.today():%Y%m%d}.json"


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a results record as indented JSON."""
    path.write_text(json.dumps(record, indent=1) + "\n")


def machine_line(mi: dict[str, Any]) -> str:
    """"Machine: ..." for a README block: hardware, threads, torch, Python, advkit and its
    commit, the load (a sentence, with its full stop)."""
    return (
        f"Machine: {mi.get('gpu') or mi['cpu']}; {mi['cpu_count']} CPUs, torch threads "
        f"{mi['torch_threads']}; torch {mi['torch']}; Python {mi['python']}; advkit "
        f"{mi['advkit']} ({mi['advkit_commit']})" + _load_note(mi) + "."
    )


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "advkit": advkit.__version__,
        "advkit_commit": _git_commit(),
    }
    # Settings that change CPU timings a lot (the allocator's, the thread pools').
    env = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
    if env:
        info["environment"] = env
    with contextlib.suppress(OSError, AttributeError):
        # Other jobs on the machine distort CPU timings: say how busy it was.
        info["load_average_1_5_15min_at_end"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty src" if dirty else "")


def _fmt_ms(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _passes(r: dict[str, Any]) -> str:
    if "forward_per_sample" in r:
        return f"{r['forward_per_sample']:g} / {r['backward_per_sample']:g}"
    if "advkit_forward_passes" in r:
        return f"{r['advkit_forward_passes']} / {r['advkit_backward_passes']} (batched)"
    return "-"


def _load_note(mi: dict[str, Any]) -> str:
    start, end = mi.get("load_average_1min_at_start"), mi.get("load_average_1_5_15min_at_end")
    if start is None or end is None:
        return ""
    return f"; load average {start} at the start, {end[0]} at the end (1 min)"


def markdown(record: dict[str, Any]) -> str:
    """The Markdown block for the README: command, machine, one table, footnotes."""
    mi = record["machine"]
    hw = mi.get("gpu") or mi["cpu"]
    lines = [
        f"`{record['command']}` ({record['date']}, {record['elapsed_s']:.0f} s)",
        "",
        f"Machine: {hw}; {mi['cpu_count']} CPUs, torch threads {mi['torch_threads']}; "
        f"torch {mi['torch']}"
        + (f", CUDA {mi['cuda']}" if "cuda" in mi else "")
        + f"; Python {mi['python']}; advkit {mi['advkit']} ({mi['advkit_commit']})"
        + _load_note(mi)
        + ".",
        "Peers: "
        + (", ".join(f"{k} {v}" for k, v in record["peers"].items()) or "none requested")
        + ".",
        f"Attacks: Linf, eps {record['settings']['eps']:.6g}, PGD step "
        f"{record['settings']['step_size']:.6g}, random start; warm-up "
        f"{record['settings']['warmup']}, then up to {record['settings']['repeats']} interleaved "
        f"timed runs per method ({record['settings']['timer']}).",
        "",
        "| model | batch | prec. | format | attack | method | median ms | IQR ms | img/s "
        "| x bare | pass floor | advkit / this | fwd / bwd per sample | peak MiB | success |",
        "|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in record["groups"]:
        attack = g["attack"].upper() + (f"-{g['steps']}" if g["attack"] != "fgsm" else "")
        for r in g["rows"]:
            peak, ok = r.get("peak_memory_mib"), r.get("success_rate")
            vs = "-"
            if "advkit_over_this" in r:
                vs = f"{r['advkit_over_this']:.2f} ({r['advkit_over_this_paired']:.2f})"
            cells = [
                g["model"],
                str(g["batch"]),
                g["dtype"],
                g["memory_format"],
                attack,
                r["method"],
                _fmt_ms(r["median_ms"]),
                f"{_fmt_ms(r['q1_ms'])}-{_fmt_ms(r['q3_ms'])}",
                f"{r['images_per_s']:.0f}",
                f"{r['ratio_to_bare']:.2f} ({r['ratio_to_bare_paired']:.2f})"
                if "ratio_to_bare" in r
                else "-",
                f"{r['floor_from_extra_forwards']:.2f}"
                if "floor_from_extra_forwards" in r
                else "-",
                vs,
                _passes(r),
                "n/a" if peak is None else f"{peak:.0f}",
                "-" if ok is None else f"{100 * ok:.1f}%",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        '"x bare": median time / the bare loop\'s of the same configuration (the compiled bare '
        "loop for compiled rows), and in parentheses the median of the per-round ratios (the "
        "methods run one after the other in each round, so a change of load between rounds "
        'moves both sides of such a ratio); "pass floor": what "x bare" would be if the row\'s forward '
        "passes beyond k cost one no-grad forward each and nothing else did (counted rows); "
        "\"advkit / this\": advkit's median / this peer's (below 1: "
        "advkit is faster). Success: the fraction of the returned points the model misclassifies, "
        "judged by the script with the model in float32 on the same batch (clean accuracy, raw "
        "times and settings are in the JSON).",
    ]
    if record["messages"]:
        notes += ["", "Skipped: " + "; ".join(record["messages"]) + "."]
    return "\n".join(lines + notes)


def update_readme(path: Path, device: str, block: str, script: str = "run.py") -> None:
    """Put ``block`` between this script's and device's markers in ``path`` (appended if absent)."""
    begin, end = f"<!-- {script}:{device}:begin -->", f"<!-- {script}:{device}:end -->"
    text = path.read_text() if path.exists() else ""
    new = f"{begin}\n{block}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: new, text, count=1)
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + new + "\n"
    path.write_text(text)


# --------------------------------------------------------------------------- main


def _fraction(s: str) -> float:
    return float(fractions.Fraction(s))


def _csv(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--quick", action="store_true", help="tiny smoke run (< 1 min on 2 CPU cores)")
    p.add_argument(
        "--models", type=_csv, default=None, help=f"comma list of {', '.join(_models.MODELS)}"
    )
    p.add_argument(
        "--batch", type=_csv, default=None, help="comma list of batch sizes (every model)"
    )
    p.add_argument("--dtype", type=_csv, default=["fp32"], help="comma list of fp32, bf16")
    p.add_argument(
        "--memory-format", type=_csv, default=["contiguous"], help="contiguous, channels_last"
    )
    p.add_argument("--channels-last", action="store_true", help="add the channels_last format")
    p.add_argument(
        "--variants",
        type=_csv,
        default=["plain"],
        help=f"advkit variants: {', '.join(VARIANTS)} or all",
    )
    p.add_argument(
        "--attacks", type=_csv, default=["pgd", "fgsm"], help="pgd, fgsm, apgd (APGD-CE)"
    )
    p.add_argument("--steps", "-k", type=int, default=10)
    p.add_argument("--eps", type=_fraction, default=8 / 255, help="Linf radius, e.g. 8/255")
    p.add_argument("--step-size", type=_fraction, default=2 / 255, help="PGD step, e.g. 2/255")
    p.add_argument(
        "--peers", type=_csv, default=list(_peers.PEERS), help="comma list of peers, or none"
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15, help="timed runs per method (at most)")
    p.add_argument("--min-repeats", type=int, default=5)
    p.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="stop a configuration's timed rounds after this",
    )
    p.add_argument("--no-train", action="store_true", help="random weights for the small CNN too")
    p.add_argument("--train-epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--tag", default=None, help="added to the results file name")
    p.add_argument("--readme", type=Path, default=None, help="README to update (default: ours)")
    p.add_argument("--no-readme", action="store_true")
    args = p.parse_args(argv)

    if args.quick:
        args.models = args.models or ["smallcnn"]
        args.batch = args.batch or ["16"]
        args.warmup, args.repeats, args.min_repeats = 1, 3, 3
        args.train_epochs = min(args.train_epochs, 1)
        args.tag = args.tag or "quick"
    if args.peers == ["none"]:
        args.peers = []
    if args.variants == ["all"]:
        args.variants = list(VARIANTS)
    if "plain" not in args.variants:
        args.variants.insert(0, "plain")
    if args.channels_last and "channels_last" not in args.memory_format:
        args.memory_format.append("channels_last")
    for name, got, allowed in (
        ("--models", args.models or [], _models.MODELS),
        ("--dtype", args.dtype, ("fp32", "bf16")),
        ("--memory-format", args.memory_format, ("contiguous", "channels_last")),
        ("--variants", args.variants, VARIANTS),
        ("--attacks", args.attacks, ("pgd", "fgsm", "apgd")),
        ("--peers", args.peers, _peers.PEERS),
    ):
        bad = [g for g in got if g not in allowed]
        if bad:
            p.error(f"{name}: unknown {bad}; choose from {', '.join(allowed)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cli = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(cli)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if any(v in COMPILE_MODE for v in args.variants):
        # Every configuration compiles new module objects; keep dynamo from giving up on them.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    models = args.models or list(DEFAULT_MODELS[device.type])
    if (
        device.type == "cpu"
        and sys.platform.startswith("linux")
        and not any(k in os.environ for k in ("GLIBC_TUNABLES", "LD_PRELOAD"))
    ):
        print(
            "note: glibc's malloc hands large freed blocks back to the OS, so every pass pays "
            "page faults that vary from run to run; for steadier CPU timings run with "
            f"GLIBC_TUNABLES={STEADY_MALLOC}",
            flush=True,
        )
    t0 = time.perf_counter()
    load_start = _load()
    messages: list[str] = []
    versions: dict[str, str] = {}
    groups = []
    data_notes = {}
    for name in models:
        batches = [int(b) for b in args.batch] if args.batch else [DEFAULT_BATCH[device.type][name]]
        for batch in batches:
            base, x, y, note = make_data(name, batch, args, device)
            data_notes[name] = note
            for dtype in args.dtype:
                for fmt in args.memory_format:
                    for attack in args.attacks:
                        cfg = Config(name, batch, dtype, fmt, attack)
                        print(f"== {name} batch {batch} {dtype} {fmt} {attack}", flush=True)
                        g = measure(cfg, base, x, y, args, device, messages, versions)
                        g["data"] = note
                        groups.append(g)
                        for r in g["rows"]:
                            print(
                                f"   {r['method']:<26} {_fmt_ms(r['median_ms']):>9} ms"
                                f"  x bare {r.get('ratio_to_bare', float('nan')):.2f}"
                                f"  passes {_passes(r)}"
                                f"  success {r.get('success_rate', float('nan')):.3f}",
                                flush=True,
                            )
    elapsed = time.perf_counter() - t0
    record: dict[str, Any] = {
        "benchmark": "throughput",
        "command": " ".join(
            [
                *(f"{k}={os.environ[k]}" for k in ENV_KEYS if k in os.environ),
                "python benchmarks/run.py",
                *cli,
            ]
        ),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "elapsed_s": elapsed,
        "device": device.type,
        "machine": {**machine_info(device), "load_average_1min_at_start": load_start},
        "settings": {
            "eps": args.eps,
            "step_size": args.step_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "min_repeats": args.min_repeats,
            "budget_s": args.budget_s,
            "variants": args.variants,
            "seed": args.seed,
            "timer": "CUDA events" if device.type == "cuda" else "time.perf_counter",
            "peak_memory": "torch.cuda.max_memory_allocated above the pre-call allocation"
            if device.type == "cuda"
            else "n/a on CPU",
        },
        "peers": {p: versions.get(p, "not run") for p in args.peers},
        "messages": messages,
        "groups": groups,
    }
    path = results_path(args.results_dir, device.type, args.tag)
    write_record(path, record)
    block = markdown(record)
    print("\n" + block + "\n")
    readme = args.readme if args.readme is not None else (None if args.quick else DEFAULT_README)
    if readme is not None and not args.no_readme:
        update_readme(readme, device.type, block)
        print(f"Updated {readme}")
    print(f"Wrote {path} ({elapsed:.1f} s)")
    return record


if __name__ == "__main__":
    main()
