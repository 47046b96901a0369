"""Minimal-norm attacks side by side: advkit vs. foolbox and adv-lib on the same model and batch.

advkit's ``DeepFool`` (L2 and Linf) and ``CW`` (L2) against foolbox 3's
``L2DeepFoolAttack``, ``LinfDeepFoolAttack`` and ``L2CarliniWagnerAttack``
and adv-lib's ``deepfool.df`` and ``carlini_wagner_l2``, with matched
settings, on the correctly classified test images of the digits SmallCNN of
``examples/digits.py``. DeepFool: 50 steps, overshoot 0.02, 10 candidate
classes, logit differences (foolbox's defaults). CW: lr 0.01, initial constant
0.001, kappa 0, abort early (everyone's defaults) and, to keep a run short, a
reduced budget matched across the libraries: 200 Adam steps x 9 binary-search
rounds by default (advkit's default is 1000 steps, foolbox's and adv-lib's
10000; ``--cw-steps`` / ``--cw-search-steps``).

For every method the script itself measures, from the returned points: the
success rate (its own forward pass: prediction != label), the median and mean
L2 (and Linf) norm of the successful perturbations ``x_adv - x``, whether the
points lie in the box [0, 1], the wall time (median and minimum of up to
``--repeats`` timed runs after one warm-up run, interleaved across methods; a
method stops repeating once its runs took ``--budget-s``), each peer's time
relative to advkit's for the same attack, and the number of forward and
backward passes through the model, counted during the warm-up run by a wrapper
module (one count per ``forward`` call; one per backward traversal that reaches
the input, seen by an identity ``autograd.Function`` in front of the model).
advkit's own counts are reported as well.

The peers are optional and never installed by this script (see
``benchmarks/README.md``); one that does not import is skipped with one line.
foolbox's minimal-norm attacks are called with ``epsilons=None`` and their raw
(unbounded) output is used. Every method gets the model in eval mode with its
parameters frozen (``requires_grad_(False)``), as advkit's guard does for
itself, so that no method pays for weight gradients.

Run from the repository root (not a test; a default run takes about 4 minutes
on 2 CPU cores, ``--quick`` about half a minute):

    python benchmarks/min_norm.py --threads 2
    python benchmarks/min_norm.py --quick           # 100 images, CW 50 steps x 9, 1 timed run
    python benchmarks/min_norm.py --batch-size 100 --cw-steps 1000 --repeats 1 --tag cw1000

The results go to ``benchmarks/results/min_norm-<device>[-<tag>]-<YYYYMMDD>.json``
(``--quick`` tags ``quick``) and a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import advkit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))  # the digits helpers live in examples/
from digits import SmallCNN, accuracy, load_digits_tensors, train  # noqa: E402

DEFAULT_RESULTS = ROOT / "benchmarks" / "results"

# DeepFool settings shared by every library (foolbox's defaults; adv-lib has no
# `candidates` and always uses all classes, which is 10 here too).
DF_STEPS, DF_OVERSHOOT, DF_CANDIDATES = 50, 0.02, 10
# Carlini-Wagner settings shared by every library (all three default to these).
CW_LR, CW_INITIAL_CONST, CW_KAPPA = 1e-2, 1e-3, 0.0


class _Tap(torch.autograd.Function):
    """Identity on the model's input whose backward counts the traversals that reach it.

    ``generate_vmap_rule`` keeps a vectorized backward (``is_grads_batched``)
    vectorized: it reaches the input once and counts once, for all its rows.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, counter: list[int]) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.counter = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        ctx.counter[0] += 1
        return grad, None


class Counting(nn.Module):
    """Wraps a model; counts its forward calls and the backward traversals through its input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = [0]

    def forward(self, x: Tensor) -> Tensor:
        self.forwards += 1
        out: Tensor = self.model(_Tap.apply(x, self.backwards))
        return out


@dataclass
class Method:
    """One attack of one library: ``run(model, x, y)`` returns the adversarial points."""

    name: str
    library: str
    version: str
    family: str  # rows of one family are compared with each other
    norm: str  # the norm the attack minimises: "l2" or "linf"
    settings: str
    run: Callable[[nn.Module, Tensor, Tensor], Tensor]
    times: list[float] = field(default_factory=list)


def _placeholder(name: str, used: list[str]) -> None:
    """Register an inert module ``name`` in ``sys.modules`` when the real one does not import."""
    try:
        importlib.import_module(name)
        return
    except Exception:  # missing, or installed but built for another torch
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
    module = types.ModuleType(name)
    if name == "torchvision":  # adv_lib.distances.lpips does `from torchvision import models`
        module.models = types.ModuleType("torchvision.models")  # type: ignore[attr-defined]
        sys.modules["torchvision.models"] = module.models  # type: ignore[attr-defined]
    sys.modules[name] = module
    used.append(name)


def _advkit_methods(args: argparse.Namespace) -> list[Method]:
    version = advkit.__version__
    df_l2 = advkit.DeepFool(
        norm="l2", steps=DF_STEPS, overshoot=DF_OVERSHOOT, candidates=DF_CANDIDATES
    )
    df_linf = advkit.DeepFool(
        norm="linf", steps=DF_STEPS, overshoot=DF_OVERSHOOT, candidates=DF_CANDIDATES
    )
    cw = advkit.CW(
        steps=args.cw_steps,
        search_steps=args.cw_search_steps,
        initial_const=CW_INITIAL_CONST,
        lr=CW_LR,
        kappa=CW_KAPPA,
        abort_early=True,
    )
    methods: list[Method] = []
    for name, family, norm, attack in (
        ("advkit DeepFool L2", "DeepFool L2", "l2", df_l2),
        ("advkit DeepFool Linf", "DeepFool Linf", "linf", df_linf),
        ("advkit CW L2", "CW L2", "l2", cw),
    ):
        method = Method(name, "advkit", version, family, norm, repr(attack), _advkit_runner(attack))
        methods.append(method)
    return methods


def _advkit_runner(attack: advkit.Attack) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """``run`` for an advkit attack; its last `AttackResult` is kept in ``run.last``."""

    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        res = attack(advkit.wrap(model, bounds=(0, 1)), x, y)
        run.last = res  # type: ignore[attr-defined]
        return res.x_adv

    return run


def _foolbox_methods(args: argparse.Namespace) -> list[Method]:
    import eagerpy
    import foolbox as fb

    version = f"{fb.__version__} (eagerpy {eagerpy.__version__})"
    df = {"steps": DF_STEPS, "candidates": DF_CANDIDATES, "overshoot": DF_OVERSHOOT}
    attacks = (
        ("DeepFool L2", "l2", fb.attacks.L2DeepFoolAttack(**df, loss="logits")),
        ("DeepFool Linf", "linf", fb.attacks.LinfDeepFoolAttack(**df, loss="logits")),
        (
            "CW L2",
            "l2",
            fb.attacks.L2CarliniWagnerAttack(
                binary_search_steps=args.cw_search_steps,
                steps=args.cw_steps,
                stepsize=CW_LR,
                confidence=CW_KAPPA,
                initial_const=CW_INITIAL_CONST,
                abort_early=True,
            ),
        ),
    )
    methods = []
    for family, norm, attack in attacks:

        def run(model: nn.Module, x: Tensor, y: Tensor, a: Any = attack) -> Tensor:
            fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=x.device)
            raw, _clipped, _success = a(fmodel, x, y, epsilons=None)
            return raw

        settings = (
            f"{type(attack).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(attack).items())})"
        )
        methods.append(Method(f"foolbox {family}", "foolbox", version, family, norm, settings, run))
    return methods


def _adv_lib_methods(args: argparse.Namespace, placeholders: list[str]) -> list[Method]:
    _placeholder("torchvision", placeholders)
    _placeholder("visdom", placeholders)
    import adv_lib
    from adv_lib.attacks.carlini_wagner import carlini_wagner_l2
    from adv_lib.attacks.deepfool import df

    version = adv_lib.__version__ + (
        f" ({', '.join(placeholders)} placeholder)" if placeholders else ""
    )

    def df_l2(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return df(model, x, y, steps=DF_STEPS, overshoot=DF_OVERSHOOT, norm=2)

    def df_linf(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return df(model, x, y, steps=DF_STEPS, overshoot=DF_OVERSHOOT, norm=float("inf"))

    cw_kwargs = {
        "confidence": CW_KAPPA,
        "learning_rate": CW_LR,
        "initial_const": CW_INITIAL_CONST,
        "binary_search_steps": args.cw_search_steps,
        "max_iterations": args.cw_steps,
        "abort_early": True,
    }

    def cw(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return carlini_wagner_l2(model, x, y, **cw_kwargs)

    df_settings = f"steps={DF_STEPS}, overshoot={DF_OVERSHOOT}"
    return [
        Method(
            "adv-lib DeepFool L2",
            "adv-lib",
            version,
            "DeepFool L2",
            "l2",
            f"df(norm=2, {df_settings})",
            df_l2,
        ),
        Method(
            "adv-lib DeepFool Linf",
            "adv-lib",
            version,
            "DeepFool Linf",
            "linf",
            f"df(norm=inf, {df_settings})",
            df_linf,
        ),
        Method(
            "adv-lib CW L2",
            "adv-lib",
            version,
            "CW L2",
            "l2",
            "carlini_wagner_l2(" + ", ".join(f"{k}={v!r}" for k, v in cw_kwargs.items()) + ")",
            cw,
        ),
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(values: Tensor) -> dict[str, float | None]:
    if values.numel() == 0:
        return {"median": None, "mean": None}
    # quantile(0.5), not Tensor.median(): the mean of the two middle values for an even count
    return {"median": float(values.quantile(0.5)), "mean": float(values.mean())}


def _evaluate(net: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Any]:
    """Success and norms measured here, from the points only."""
    x_adv = x_adv.detach().to(x.dtype)
    with torch.no_grad():
        success = net(x_adv).argmax(dim=1) != y
    delta = (x_adv - x).flatten(1)
    l2, linf = delta.norm(dim=1), delta.abs().amax(dim=1)
    # foolbox's CW returns an all-zero (blank) image where it found nothing
    blank = (x_adv == 0).flatten(1).all(dim=1) & (x != 0).flatten(1).any(dim=1)
    return {
        "success": success,
        "l2": l2,
        "linf": linf,
        "summary": {
            "success_rate": float(success.float().mean()),
            "successes": int(success.sum()),
            "l2": _stats(l2[success]),
            "linf": _stats(linf[success]),
            "in_box": bool(x_adv.min() >= 0 and x_adv.max() <= 1),
            "blank_points": int(blank.sum()),
            "blank_successes": int((blank & success).sum()),
            "min": float(x_adv.min()),
            "max": float(x_adv.max()),
        },
    }


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="the first n correctly classified test images (default: all, about 355)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs of each method, at most (default 10)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=30.0,
        help="stop repeating a method once its timed runs took this long (at least 1 run)",
    )
    parser.add_argument(
        "--cw-steps", type=int, default=None, help="CW optimisation steps per round (default 200)"
    )
    parser.add_argument(
        "--cw-search-steps", type=int, default=None, help="CW binary-search rounds (default 9)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="first 100 images, CW 50 steps x 9 rounds, 1 timed run (about 30 s)",
    )
    parser.add_argument("--no-peers", action="store_true", help="advkit only")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tag", default=None, help="added to the results file name, min_norm-<device>-<tag>-..."
    )
    parser.add_argument(
        "--results-dir", type=Path, default=DEFAULT_RESULTS, help="default benchmarks/results/"
    )
    cli_args = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(cli_args)
    quick = args.quick
    if args.batch_size is None and quick:
        args.batch_size = 100
    if args.repeats is None:
        args.repeats = 1 if quick else 10
    if args.cw_steps is None:
        args.cw_steps = 50 if quick else 200
    if args.cw_search_steps is None:
        args.cw_search_steps = 9
    if args.tag is None and quick:
        args.tag = "quick"

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()

    x_train, y_train, x_test, y_test = load_digits_tensors(seed=args.seed)
    net = train(SmallCNN(), x_train, y_train, seed=args.seed).to(device).eval()
    net.requires_grad_(False)  # every method: no weight gradients
    x_test, y_test = x_test.to(device), y_test.to(device)
    clean_acc = accuracy(net, x_test, y_test)
    with torch.no_grad():
        correct = net(x_test).argmax(dim=1) == y_test
    x, y = x_test[correct], y_test[correct]
    if args.batch_size is not None:
        x, y = x[: args.batch_size], y[: args.batch_size]
    x, y = x.contiguous(), y.contiguous()

    methods = _advkit_methods(args)
    skipped: dict[str, str] = {}
    placeholders: list[str] = []
    if not args.no_peers:
        for lib, load in (
            ("foolbox", lambda: _foolbox_methods(args)),
            ("adv-lib", lambda: _adv_lib_methods(args, placeholders)),
        ):
            try:
                methods += load()
            except Exception as exc:  # a missing or broken peer is skipped, never fatal
                skipped[lib] = f"{type(exc).__name__}: {exc}"
                print(f"skipping {lib}: {skipped[lib]}")
    order = {"DeepFool L2": 0, "DeepFool Linf": 1, "CW L2": 2}
    methods.sort(key=lambda m: order[m.family])

    # Warm-up run of each method, through the counting wrapper: pass counts and the points.
    evals: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, int]] = {}
    advkit_results: dict[str, advkit.AttackResult | None] = {}
    failed: dict[str, str] = {}
    for m in methods:
        counter = Counting(net).eval()
        start = time.perf_counter()
        try:
            x_adv = m.run(counter, x, y)
        except Exception as exc:
            failed[m.name] = f"{type(exc).__name__}: {exc}"
            print(f"skipping {m.name}: {failed[m.name]}")
            continue
        evals[m.name] = _evaluate(net, x, y, x_adv)
        advkit_results[m.name] = getattr(m.run, "last", None)  # advkit's own result of this run
        counts[m.name] = {"forward": counter.forwards, "backward": counter.backwards[0]}
        print(f"warm-up {m.name}: {time.perf_counter() - start:.1f} s", flush=True)
    methods = [m for m in methods if m.name not in failed]

    # Timed runs on the bare model, interleaved so that load changes hit every method alike.
    for i in range(args.repeats):
        for m in methods:
            if i > 0 and sum(m.times) > args.budget_s:
                continue
            _sync(device)
            start = time.perf_counter()
            m.run(net, x, y)
            _sync(device)
            m.times.append(time.perf_counter() - start)

    rows: list[dict[str, Any]] = []
    advkit_of = {m.family: m.name for m in methods if m.library == "advkit"}
    for m in methods:
        ev = evals[m.name]
        row: dict[str, Any] = {
            "method": m.name,
            "library": m.library,
            "version": m.version,
            "family": m.family,
            "norm": m.norm,
            "settings": m.settings,
            **ev["summary"],
            "median_ms": 1000 * statistics.median(m.times),
            "min_ms": 1000 * min(m.times),
            "timed_runs": len(m.times),
            "times_s": m.times,
            "forward_calls": counts[m.name]["forward"],
            "backward_calls": counts[m.name]["backward"],
        }
        res = advkit_results[m.name]
        if res is not None:
            agree = bool((res.success.cpu() == ev["success"].cpu()).all())
            own = ev[m.norm][ev["success"]]
            reported = res.distance[ev["success"]]
            row["advkit_reported"] = {
                "forward_passes": res.forward_passes,
                "backward_passes": res.backward_passes,
                "success_rate": res.success_rate,
                "success_agrees": agree,
                "max_distance_error": float((own - reported).abs().max()) if own.numel() else 0.0,
            }
        ref = advkit_of.get(m.family)
        if ref is not None and ref != m.name:
            both = ev["success"] & evals[ref]["success"]
            mine, theirs = ev[m.norm][both], evals[ref][m.norm][both]
            ratio = mine / theirs.clamp_min(1e-12)
            ref_times = next(r.times for r in methods if r.name == ref)
            row["vs_advkit"] = {
                "time_ratio_median": statistics.median(m.times) / statistics.median(ref_times),
                "time_ratio_min": min(m.times) / min(ref_times),
                "common_successes": int(both.sum()),
                "median_norm_ratio": float(ratio.median()) if both.any() else None,
                "advkit_smaller_fraction": float((theirs < mine - 1e-6).float().mean())
                if both.any()
                else None,
                "advkit_larger_fraction": float((theirs > mine + 1e-6).float().mean())
                if both.any()
                else None,
            }
        rows.append(row)

    record: dict[str, Any] = {
        "benchmark": "min_norm",
        "command": " ".join(["python benchmarks/min_norm.py", *cli_args]),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "advkit": advkit.__version__,
        "python": platform.python_version(),
        "model": "SmallCNN(digits, trained)",
        "clean_accuracy": clean_acc,
        "batch_size": int(x.shape[0]),
        "deepfool": {"steps": DF_STEPS, "overshoot": DF_OVERSHOOT, "candidates": DF_CANDIDATES},
        "cw": {
            "steps": args.cw_steps,
            "search_steps": args.cw_search_steps,
            "lr": CW_LR,
            "initial_const": CW_INITIAL_CONST,
            "kappa": CW_KAPPA,
            "abort_early": True,
        },
        "warmup": 1,
        "repeats": args.repeats,
        "budget_s": args.budget_s,
        "skipped": skipped,
        "failed": failed,
        "placeholder_modules": placeholders,
        "methods": rows,
    }

    results_dir: Path = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.date.today().strftime("%Y%m%d")
    tag = f"-{args.tag}" if args.tag else ""
    path = results_dir / f"min_norm-{device.type}{tag}-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")

    print(
        f"\n{record['model']}, clean accuracy {100 * clean_acc:.1f}%, {x.shape[0]} correctly "
        f"classified test images, device {device} ({record['device_name']}), torch threads="
        f"{record['torch_threads']}, torch {torch.__version__}; 1 warm-up (counted) + up to "
        f"{args.repeats} timed runs each (fewer once a method's runs took {args.budget_s:g} s).\n"
        f"DeepFool: steps={DF_STEPS}, overshoot={DF_OVERSHOOT}, candidates={DF_CANDIDATES} "
        f"(adv-lib: all classes). CW L2: steps={args.cw_steps}, search_steps="
        f"{args.cw_search_steps}, lr={CW_LR:g}, initial_const={CW_INITIAL_CONST:g}, "
        f"kappa={CW_KAPPA:g}, abort_early.\n"
        + "".join(
            f"{row['method']}: {row['settings']}\n" for row in rows if row["library"] == "advkit"
        )
    )
    print(
        "| method | success | median L2 | mean L2 | median Linf | mean Linf "
        "| norm / advkit's | median ms | min ms | time / advkit's | runs | forward | backward "
        "| in [0, 1] |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|")
    for row in rows:
        linf = row["norm"] == "linf"
        vs = row.get("vs_advkit", {}).get("median_norm_ratio")
        t_med = row.get("vs_advkit", {}).get("time_ratio_median")
        t_min = row.get("vs_advkit", {}).get("time_ratio_min")
        t_vs = "-" if t_med is None else f"{t_med:.2f} ({t_min:.2f})"
        fwd, bwd = str(row["forward_calls"]), str(row["backward_calls"])
        if "advkit_reported" in row:
            own = row["advkit_reported"]
            fwd += f" ({own['forward_passes']})"
            bwd += f" ({own['backward_passes']})"
        success = f"{100 * row['success_rate']:.1f}%"
        if row["blank_successes"]:
            success += f" ({row['blank_successes']} blank)"
        print(
            f"| {row['method']} | {success} | {_fmt(row['l2']['median'])} "
            f"| {_fmt(row['l2']['mean'])} | {_fmt(row['linf']['median'] if linf else None)} "
            f"| {_fmt(row['linf']['mean'] if linf else None)} | {_fmt(vs)} "
            f"| {row['median_ms']:.0f} | {row['min_ms']:.0f} | {t_vs} | {row['timed_runs']} "
            f"| {fwd} | {bwd} "
            f"| {'yes' if row['in_box'] else 'NO'} |"
        )
    print(
        "\nforward / backward: calls counted by the wrapper (a backward call is one traversal "
        "reaching the input); in parentheses advkit's own counts. norm / advkit's: median over "
        "the samples both broke of this row's norm (L2, or Linf for Linf rows) divided by the "
        "advkit row of the same attack. time / advkit's: this row's median time divided by the "
        "advkit row's (in parentheses: the ratio of the minima)."
    )
    for row in rows:
        if row["blank_points"]:
            print(
                f"{row['method']}: {row['blank_points']} of the points are the all-zero image "
                "(foolbox's CW returns it where it found nothing), of which "
                f"{row['blank_successes']} count as successes (the model misclassifies the blank "
                "image) and enter the norms."
            )
    for name, why in {**skipped, **failed}.items():
        print(f"skipped {name}: {why}")
    shown = os.path.relpath(path) if results_dir == DEFAULT_RESULTS else str(path)
    print(f"Wrote {shown} ({time.perf_counter() - t0:.1f} s)")
    return record


if __name__ == "__main__":
    main()
