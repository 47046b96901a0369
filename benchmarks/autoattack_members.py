"""Which member of AutoAttack breaks what: the record behind ``fast``'s design.

With ``sample_ids`` every member of ``advkit.AutoAttack`` (but ``fast``'s
``NEAR`` members, which run on the samples near the boundary only) breaks
inside the ensemble exactly what it breaks alone with the same generator (``shared_seed``),
so the members can be run one by one and their broken sets combined. For each
model of ``apgd.py`` (first ``--n`` test images, first eps of its grid for
``--norm``) this script:

1. runs ``fast``'s first two members (``apgd-ce``, ``apgd-smooth``) and takes
   the samples they leave robust (S);
2. runs on S each part of ``standard`` alone: its APGD-CE restarts (one at a
   time, ``APGD(skip_restarts=)``; in Linf and L2 those after the first, which
   is ``fast``'s own ``apgd-ce``), each APGD-T target, each
   FAB-T target (``MultiTargeted(skip=)``), Square; T is the set of samples of S
   that some part breaks (what ``standard`` gets beyond the first two members),
   and for each sample of T it counts the parts that break it;
3. runs on S each candidate for the rest of a cheaper ensemble (``--candidates``,
   below) and reports how many of T it breaks, how many others (samples
   ``standard`` leaves robust), and its passes per sample of S.

The record lists the images each part and each candidate breaks, so the
strength of any ensemble of them can be read off it.

Candidates (the default: all): ``ce-restarts-RxS`` (APGD-CE restarts 2 to
R + 1 of S steps each; ``4x100`` is standard's restarts 2-5), ``ce-300`` (one
run of 3x the steps from the first start), ``apgd-t-dlr`` (standard's APGD-T:
targeted DLR, 5 targets), ``apgd-t-dlr-30`` (the same at 30% of the steps),
``apgd-t-ce-S`` (targeted cross-entropy, 5 targets, S% of the steps;
``30x9``: 9 targets), ``fab-tK`` (FAB-T's first K targets), ``fab-tK-S``
(the same with S steps). L1's APGD members use the large-eps schedule.

For each sample of S the record also holds its margin ratio: its margin
(the label's logit minus the largest other) at the best point of the first two
members over its clean margin, which ``fast``'s ``NEAR`` members compare
(``advkit.attacks.autoattack.NEAR``); and, when the candidates of ``fast``'s
L1 members are among those run, what they break together, the ``NEAR``
members on the samples within ``NEAR`` after the first two members only
(``fast_l1_rest``; inside ``fast`` the test comes after the members before
them too, which can only bring more samples near).

Run from the repository root (``--seed`` for other draws; the design of
``fast``'s L1 members was chosen on seeds 0-1 and checked on 2-3):

    python benchmarks/autoattack_members.py --norm l1 --threads 1 --seed 0

Results go to
``benchmarks/results/autoattack-members-<norm>[-seed<k>]-<YYYYMMDD>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import advkit
from advkit.attacks.autoattack import NEAR
from advkit.objectives import cross_entropy, dlr, margin

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import apgd as base  # noqa: E402  (models, data)
import run as throughput  # noqa: E402  (the counting wrapper, record_head)

MODELS = ("digits", "digits-at", "mnist", "mnist-at")
STEPS = 100


def _apgd(norm: str, eps: float, objective: Any = cross_entropy, **kw: Any) -> advkit.APGD:
    kw.setdefault("steps", STEPS)
    return advkit.APGD(
        norm, eps, objective=objective, early_stop=True, large_eps=norm == "l1", **kw
    )


def _fab(
    norm: str, eps: float, targets: int, skip: int = 0, steps: int = STEPS
) -> advkit.MultiTargeted:
    return advkit.MultiTargeted(advkit.FAB(norm, eps, steps=steps), targets, skip=skip)


def standard_parts(norm: str, eps: float, classes: int) -> dict[str, advkit.Attack]:
    """``standard``'s members split into single tries (its first APGD-CE restart too in L1,
    where ``fast``'s first APGD-CE is shorter)."""
    l1 = norm == "l1"
    restarts, apgd_targets = (5, 5) if l1 else (1, 9)
    targets = min(9, classes - 1)
    parts: dict[str, advkit.Attack] = {}
    for r in range(0 if l1 else 1, restarts):
        parts[f"apgd-ce restart {r + 1}"] = _apgd(norm, eps, restarts=r + 1, skip_restarts=r)
    for k in range(min(apgd_targets, classes - 1)):
        parts[f"apgd-t target {k + 1}"] = advkit.MultiTargeted(_apgd(norm, eps, dlr), k + 1, skip=k)
    for k in range(targets):
        parts[f"fab-t target {k + 1}"] = _fab(norm, eps, k + 1, skip=k)
    parts["square"] = advkit.Square(norm, eps, rescale=False, positions="reference")
    return parts


CANDIDATES: dict[str, Callable[[str, float], advkit.Attack]] = {
    "ce-restarts-4x100": lambda n, e: _apgd(n, e, restarts=5, skip_restarts=1),
    "ce-restarts-4x50": lambda n, e: _apgd(n, e, steps=STEPS // 2, restarts=5, skip_restarts=1),
    "ce-restarts-8x50": lambda n, e: _apgd(n, e, steps=STEPS // 2, restarts=9, skip_restarts=1),
    "ce-300": lambda n, e: _apgd(n, e, steps=3 * STEPS),
    "apgd-t-dlr": lambda n, e: advkit.MultiTargeted(_apgd(n, e, dlr), 5),
    "apgd-t-ce-30": lambda n, e: advkit.MultiTargeted(_apgd(n, e, steps=3 * STEPS // 10), 5),
    "fab-t2": lambda n, e: _fab(n, e, 2),
    "ce-restarts-4x25": lambda n, e: _apgd(n, e, steps=STEPS // 4, restarts=5, skip_restarts=1),
    "ce-restarts-8x25": lambda n, e: _apgd(n, e, steps=STEPS // 4, restarts=9, skip_restarts=1),
    "ce-restarts-6x30": lambda n, e: _apgd(
        n, e, steps=3 * STEPS // 10, restarts=7, skip_restarts=1
    ),
    "apgd-t-ce-20": lambda n, e: advkit.MultiTargeted(_apgd(n, e, steps=STEPS // 5), 5),
    "apgd-t-ce-30x9": lambda n, e: advkit.MultiTargeted(_apgd(n, e, steps=3 * STEPS // 10), 9),
    "apgd-t-dlr-30": lambda n, e: advkit.MultiTargeted(_apgd(n, e, dlr, steps=3 * STEPS // 10), 5),
    "fab-t2-50": lambda n, e: _fab(n, e, 2, steps=STEPS // 2),
    "fab-t2-30": lambda n, e: _fab(n, e, 2, steps=3 * STEPS // 10),
    "fab-t3-30": lambda n, e: _fab(n, e, 3, steps=3 * STEPS // 10),
    "fab-t1-50": lambda n, e: _fab(n, e, 1, steps=STEPS // 2),
}


# fast's L1 members after its first two, as candidates: those run on every sample left, and
# those run only on the samples within NEAR of the boundary.
FAST_L1_REST = ("apgd-t-ce-20", "ce-restarts-6x30")
FAST_L1_NEAR = ("apgd-t-dlr-30", "fab-t2")


def broken(
    attack: advkit.Attack, model: nn.Module, x: Tensor, y: Tensor, ids: Tensor, seed: int
) -> tuple[Tensor, float]:
    """The samples ``attack`` breaks (judged here on a fresh pass), and its passes per sample."""
    counter = throughput.Counting(model)
    res = attack(counter, x, y, generator=torch.Generator().manual_seed(seed), sample_ids=ids)
    with torch.no_grad():
        out = model(res.x_adv).argmax(1) != y
    passes = (counter.forward_samples + counter.backward_samples[0]) / max(len(y), 1)
    return out, passes


def one_model(name: str, norm: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = base.MODELS[name]
    _, _, x_test, y_test = base.load_data(spec.data)
    model, _ = base.trained_model(spec, base.DEFAULT_CACHE, False)
    model = model.eval().requires_grad_(False)
    x, y = x_test[: args.n].contiguous(), y_test[: args.n]
    ids = torch.arange(len(y))
    eps = spec.grid()[norm][0]
    with torch.no_grad():
        logits = model(x)
    robust = logits.argmax(1) == y
    fast = dict(advkit.AutoAttack(norm, eps, version="fast").members)
    head = advkit.Ensemble(
        {name: fast[name] for name in ("apgd-ce", "apgd-smooth")}, shared_seed=True
    )
    res = head(model, x, y, generator=torch.Generator().manual_seed(args.seed), sample_ids=ids)
    with torch.no_grad():
        reached = model(res.x_adv)
    robust &= reached.argmax(1) == y
    s = robust.nonzero().flatten()
    # How near each sample of S came to the boundary: its margin at the best point of the
    # first two members over its clean margin (what fast's NEAR compares; 0 for a clean tie,
    # which fast counts as near).
    clean_gap = margin(logits, y)
    ratio = torch.where(clean_gap < 0, margin(reached, y) / clean_gap.clamp_max(-1e-30), 0.0)
    xs, ys, ids_s = x[s], y[s], ids[s]
    hits: dict[str, Tensor] = {}
    for part, attack in standard_parts(norm, eps, logits.shape[1]).items():
        hits[part], _ = broken(attack, model, xs, ys, ids_s, args.seed)
    by = torch.stack(list(hits.values())).sum(0)  # how many parts break each sample of S
    target = by > 0
    record: dict[str, Any] = {
        "model": name,
        "eps": eps,
        "clean_robust_after_first_two": len(s),
        "standard_breaks_beyond": int(target.sum()),
        "parts_breaking_each": sorted(by[target].tolist()),
        "single_part_breaks": {
            part: int((h & (by == 1)).sum()) for part, h in hits.items() if (h & (by == 1)).any()
        },
        # the test images (indices into the first --n) each part breaks: unions can be taken
        "parts": {part: ids_s[h].tolist() for part, h in hits.items()},
        "margin_ratio": {int(i): round(float(ratio[i]), 4) for i in s},
        "candidates": {},
    }
    print(
        f"{name} {norm} eps={eps:g}: {len(s)} left by apgd-ce + apgd-smooth, standard's other "
        f"parts break {int(target.sum())} of them; parts breaking each: "
        f"{record['parts_breaking_each']}",
        flush=True,
    )
    for cand in args.candidates:
        out, passes = broken(CANDIDATES[cand](norm, eps), model, xs, ys, ids_s, args.seed)
        row = {
            "of_standard": int((out & target).sum()),
            "others": int((out & ~target).sum()),
            "passes_per_sample": passes,
            "broken": ids_s[out].tolist(),
        }
        record["candidates"][cand] = row
        print(
            f"   {cand:<18} breaks {row['of_standard']:3d} of them, {row['others']:3d} others, "
            f"{passes:6.0f} passes per sample",
            flush=True,
        )
    rest = record["candidates"]
    if all(name in rest for name in FAST_L1_REST + FAST_L1_NEAR):
        near = {int(i) for i in s[ratio[s] <= NEAR]}
        got = set().union(*(set(rest[name]["broken"]) for name in FAST_L1_REST))
        got |= near & set().union(*(set(rest[name]["broken"]) for name in FAST_L1_NEAR))
        wanted = set(ids_s[target].tolist())
        record["fast_l1_rest"] = {
            "near": len(near),
            "of_standard": len(got & wanted),
            "others": len(got - wanted),
            "missed": sorted(wanted - got),
        }
        print(f"   fast's L1 members: {record['fast_l1_rest']}", flush=True)
    return record


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cli = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--models", type=base._csv, default=list(MODELS))
    p.add_argument("--norm", default="l1", choices=("linf", "l2", "l1"))
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--candidates", type=base._csv, default=list(CANDIDATES))
    p.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = p.parse_args(cli)
    unknown = set(args.candidates) - set(CANDIDATES)
    if unknown:
        p.error(f"unknown candidates {sorted(unknown)}; known: {list(CANDIDATES)}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load_start = throughput._load()
    configs = [one_model(name, args.norm, args) for name in args.models]
    record = {
        **throughput.record_head(
            "autoattack_members", cli, torch.device("cpu"), load_start, time.perf_counter() - t0
        ),
        "seed": args.seed,
        "configs": configs,
    }
    seed = f"seed{args.seed}" if args.seed else None
    path = throughput.results_path(args.results_dir, "autoattack-members", args.norm, seed)
    throughput.write_record(path, record)
    print(f"Wrote {path}")
    return record


if __name__ == "__main__":
    main()
