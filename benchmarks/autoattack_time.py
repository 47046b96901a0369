"""Wall time of AutoAttack ``standard``: advkit against the reference code, alternating.

The time column of ``autoattack.py`` comes from one call per method, which on a
shared or noisy machine says little. This script runs, in one process and one
thread, ``advkit.AutoAttack(norm, eps, "standard")`` (keyed draws,
``sample_ids``) and the reference's ``AutoAttack(model, norm, eps,
version="standard").run_standard_evaluation(x, y, bs=n)`` (``pyautoattack``
0.2.0) ``--reps`` times each, in alternating order (advkit first on even
repetitions, the reference first on odd ones), seed = repetition, on the first
``--n`` test images of each model of ``apgd.py`` at the first eps of its grid
for each of ``--norms`` (Linf by default); ``--version fast`` times advkit's
``fast`` against the reference's ``standard`` instead. It records wall and process CPU
seconds and the robust accuracy of every call, and prints the medians, the sums
and their ratios (reference / advkit: above 1, advkit is faster).

Run from the repository root:

    python benchmarks/autoattack_time.py --threads 1 --reps 3
    python benchmarks/autoattack_time.py --models digits-at --reps 5
    python benchmarks/autoattack_time.py --norms l1 --models digits-at,mnist --reps 2 --tag l1

Results go to ``benchmarks/results/autoattack-time-<device>[-<tag>]-<YYYYMMDD>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import advkit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import apgd as base  # noqa: E402  (models, data, the RNG guard)
import run as throughput  # noqa: E402  (record_head)

MODELS = ("digits-at", "mnist", "mnist-at")
NAMES = {"linf": "Linf", "l2": "L2", "l1": "L1"}


VERSION = ["standard"]  # advkit's version (--version)


def _advkit(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, seed: int
) -> float:
    gen = torch.Generator().manual_seed(seed)
    res = advkit.AutoAttack(norm, eps, VERSION[0])(  # type: ignore[arg-type]
        model, x, y, generator=gen, sample_ids=torch.arange(len(y))
    )
    return res.robust_accuracy()


def _reference(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, seed: int
) -> float:
    from pyautoattack import AutoAttack

    aa = AutoAttack(
        model, norm=NAMES[norm], eps=eps, version="standard", seed=seed, device=x.device
    )
    aa.logger.disabled = True
    with base._own_rng(seed):
        out = aa.run_standard_evaluation(x, y, batch_size=x.shape[0])
    x_adv = out[0] if isinstance(out, tuple) else out
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cli = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--models", type=base._csv, default=list(MODELS))
    p.add_argument("--norms", type=base._csv, default=["linf"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results-dir", type=Path, default=HERE / "results")
    p.add_argument("--tag", default=None, help="added to the results file name")
    p.add_argument(
        "--version", default="standard", choices=("standard", "fast"), help="advkit's version"
    )
    args = p.parse_args(cli)
    VERSION[0] = args.version
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    t0 = time.perf_counter()
    load_start = throughput._load()
    runs = {"advkit": _advkit, "reference": _reference}
    configs = []
    for name, norm in [(m, n) for m in args.models for n in args.norms]:
        spec = base.MODELS[name]
        _, _, x_test, y_test = base.load_data(spec.data)
        model, _ = base.trained_model(spec, base.DEFAULT_CACHE, False)
        model = model.eval().requires_grad_(False)
        x, y = x_test[: args.n].contiguous(), y_test[: args.n]
        eps = spec.grid()[norm][0]
        calls: dict[str, list[dict[str, float]]] = {lib: [] for lib in runs}
        for rep in range(args.reps):
            order = list(runs) if rep % 2 == 0 else list(runs)[::-1]
            for lib in order:
                wall, cpu = time.perf_counter(), time.process_time()
                robust = runs[lib](model, x, y, norm, eps, rep)
                call = {
                    "seed": rep,
                    "wall_s": time.perf_counter() - wall,
                    "cpu_s": time.process_time() - cpu,
                    "robust_accuracy": robust,
                }
                calls[lib].append(call)
                print(f"{name} {norm} {eps:g} {lib:9s} seed {rep}: {call['wall_s']:.1f} s, "
                      f"robust {robust:.3f}", flush=True)  # fmt: skip
        walls = {lib: [c["wall_s"] for c in calls[lib]] for lib in runs}
        summary = {
            "median_wall_s": {lib: statistics.median(w) for lib, w in walls.items()},
            "sum_wall_s": {lib: sum(w) for lib, w in walls.items()},
        }
        summary["ratio_of_medians"] = (
            summary["median_wall_s"]["reference"] / summary["median_wall_s"]["advkit"]
        )
        summary["ratio_of_sums"] = (
            summary["sum_wall_s"]["reference"] / summary["sum_wall_s"]["advkit"]
        )
        print(f"{name} {norm}: {json.dumps(summary)}", flush=True)
        configs.append(
            {"model": name, "norm": norm, "eps": eps, "n": len(y), "calls": calls, **summary}
        )
    elapsed = time.perf_counter() - t0
    record = {
        **throughput.record_head("autoattack_time", cli, device, load_start, elapsed),
        "configs": configs,
    }
    path = throughput.results_path(args.results_dir, "autoattack-time", device.type, args.tag)
    throughput.write_record(path, record)
    print(f"Wrote {path} ({elapsed:.1f} s)")
    return record


if __name__ == "__main__":
    main()
