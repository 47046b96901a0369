"""Throughput of ``advkit.evaluate`` end to end, and its speed-up on two gloo processes.

Two measurements on the digits SmallCNN (scikit-learn's 8x8 digits, no download),
the whole digits set (1797 images, train and test) as a map-style dataset:

1. **Overhead.** ``evaluate(model, dataset, PGD, eps=[e])`` (data loading, the
   clean forward pass, picking the correctly classified samples, per-sample
   keyed randomness, the records, the report) against the bare attack on the
   same batches: ``for x, y in DataLoader(dataset): PGD(model, x, y, eps=e)``.
   A third row adds ``sample_ids=`` to the bare loop, to show what the keyed
   random start costs by itself. Runs are interleaved; medians are reported.
   Goal: evaluate's throughput >= 90% of the bare loop's.
   Also: the ensemble ``[PGD, PGD(margin), DeepFool]`` against ``PGD`` alone
   (AutoAttack semantics: later attacks only see what is still robust).

2. **Two processes.** The same evaluation under ``torch.distributed`` with the
   gloo backend on the loopback (two ranks spawned here, 1 torch thread each)
   against one process with 1 thread (the fair comparison on a 2-core machine:
   one thread per core) and one process with 2 threads. A fourth configuration
   separates advkit's cost from the machine's: two independent processes (no
   process group) that each evaluate one shard as a dataset of their own, i.e.
   perfect sharding with no communication; its speed-up is the most two
   processes can get on this machine. The per-sample records of the 2-rank and
   2-thread runs are compared with the 1-process, 1-thread run. Timings are the
   wall time of the ``evaluate`` call (the slowest process, started together
   after a warm-up; gathering included, process start-up excluded); every
   spawned process works on private copies of the model and data, as a
   ``torchrun`` job would. Goal: >= 1.7x over 1 process at 1 thread.

Run from the repository root (not a test; several minutes on 2 CPU cores):

    python benchmarks/evaluate.py
    python benchmarks/evaluate.py --part overhead --repeats 7
    python benchmarks/evaluate.py --part distributed --world 2

Results go to ``benchmarks/results/evaluate-<device>-<YYYYMMDD>.json`` and a summary
is printed.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import advkit
from advkit.distributed import shard_range
from advkit.evaluation import RobustnessReport, evaluate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))  # the digits helpers live in examples/
from digits import SmallCNN, load_digits_tensors, train  # noqa: E402

DEFAULT_RESULTS = ROOT / "benchmarks" / "results"


def _pgd(steps: int) -> advkit.PGD:
    return advkit.PGD(norm="linf", steps=steps, random_init=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _comparable(report: dict[str, Any]) -> dict[str, Any]:
    """Everything that must not depend on the number of processes or batches."""
    keep = {k: v for k, v in report.items() if k not in ("seconds", "world_size", "attacks")}
    keep["attacks"] = [
        {k: v for k, v in a.items() if k != "forward_passes"} for a in report["attacks"]
    ]
    return keep


# --------------------------------------------------------------------------- part 1


def overhead(
    model: nn.Module, data: TensorDataset, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    attack = _pgd(args.steps)
    n = len(data)

    def bare(sample_ids: bool) -> Callable[[], None]:
        def run() -> None:
            loader = DataLoader(data, batch_size=args.batch_size)
            start = 0
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                ids = torch.arange(start, start + x.shape[0], device=device)
                start += x.shape[0]
                attack(
                    model,
                    x,
                    y,
                    eps=args.eps,
                    generator=torch.Generator(device).manual_seed(args.seed),
                    sample_ids=ids if sample_ids else None,
                )

        return run

    report: list[RobustnessReport] = []

    def run_evaluate() -> None:
        report.append(
            evaluate(
                model,
                data,
                attack,
                eps=[args.eps],
                batch_size=args.batch_size,
                device=device,
                seed=args.seed,
                progress=False,
            )
        )

    ensemble = {
        "PGD": _pgd(args.steps),
        "PGD-margin": advkit.PGD(
            norm="linf", steps=args.steps, random_init=True, objective=advkit.objectives.margin
        ),
        "DeepFool": advkit.DeepFool(norm="linf"),
    }
    ens_report: list[RobustnessReport] = []

    def run_ensemble() -> None:
        ens_report.append(
            evaluate(
                model,
                data,
                ensemble,
                eps=[args.eps],
                batch_size=args.batch_size,
                device=device,
                seed=args.seed,
                progress=False,
            )
        )

    runs = {
        "bare": bare(False),
        "bare_sample_ids": bare(True),
        "evaluate": run_evaluate,
        "evaluate_ensemble": run_ensemble,
    }
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):  # interleaved: drift and other load hit every method alike
        for name, fn in runs.items():
            times[name].append(_timed(fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    rep, ens = report[-1], ens_report[-1]
    return {
        "samples": n,
        "clean_accuracy": rep.clean_accuracy,
        "attack": repr(attack),
        "eps": args.eps,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "median_s": med,
        "images_per_s": {k: n / v for k, v in med.items()},
        "throughput_evaluate_over_bare": med["bare"] / med["evaluate"],
        "throughput_evaluate_over_bare_sample_ids": med["bare_sample_ids"] / med["evaluate"],
        "paired_throughput_ratio_median": statistics.median(
            b / e for b, e in zip(times["bare"], times["evaluate"], strict=True)
        ),
        "ensemble": {
            "attacks": [a.description for a in ens.attacks],
            "time_over_pgd_alone": med["evaluate_ensemble"] / med["evaluate"],
            "attacked": {a.name: ens.attacked(a.name)[0] for a in ens.attacks},
            "robust_accuracy_after": {
                a.name: ens.robust_accuracy(after=a.name)[0] for a in ens.attacks
            },
        },
        "robust_accuracy": rep.robust_accuracy()[0],
        "times_s": times,
    }


# --------------------------------------------------------------------------- part 2


def _loopback() -> None:
    names = {name for _, name in socket.if_nameindex()}
    for lo in ("lo", "lo0"):
        if lo in names:
            os.environ["GLOO_SOCKET_IFNAME"] = lo
            return


def _work(model: nn.Module, data: TensorDataset, args: argparse.Namespace) -> Any:
    return evaluate(
        model,
        data,
        _pgd(args.steps),
        eps=args.dist_eps,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=False,
    )


def _timed_work(
    model: nn.Module, data: TensorDataset, args: argparse.Namespace
) -> tuple[float, float, Any]:
    """Wall seconds (the report's: the slowest rank), this process's CPU seconds, the report."""
    cpu = time.process_time()
    report = _work(model, data, args)
    return report.seconds, time.process_time() - cpu, report


def _rank(
    rank: int,
    world: int,
    store: str,
    out: str,
    model: nn.Module,
    data: TensorDataset,
    args: Any,
    grouped: bool,
    start: Any,
) -> None:
    """One process of 1 thread. ``grouped``: a gloo rank running ``evaluate`` on the whole
    dataset (it takes its shard). Otherwise an independent process that evaluates the same
    shard as a dataset of its own, with no process group: the no-overhead baseline."""
    torch.set_num_threads(1)
    model = copy.deepcopy(model)  # private memory, as in a torchrun job that loads its own
    data = TensorDataset(*(t.clone() for t in data.tensors))
    if grouped:
        _loopback()
        dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world)
    else:
        shard = shard_range(len(data), rank, world)
        data = TensorDataset(*(t[shard.start : shard.stop] for t in data.tensors))
    try:
        _work(model, TensorDataset(*(t[: 4 * args.batch_size] for t in data.tensors)), args)
        start.wait()  # every process starts the timed run together
        cpu = time.process_time()
        wall = time.perf_counter()
        report = _work(model, data, args)
        result: dict[str, Any] = {
            "wall": time.perf_counter() - wall,
            "cpu": time.process_time() - cpu,
        }
        if grouped and rank == 0:
            result["report"] = report.to_dict()
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        if grouped:
            dist.destroy_process_group()


def _spawn(
    model: nn.Module, data: TensorDataset, args: argparse.Namespace, grouped: bool
) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(args.world)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(
            _rank,
            args=(args.world, f"file://{tmp}/store", tmp, model, data, args, grouped, start),
            nprocs=args.world,
            join=True,
        )
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(args.world)]


def distributed(model: nn.Module, data: TensorDataset, args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved repeats of: 1 process at 1 thread, at 2 threads, ``world`` independent
    processes on one shard each (no group), ``world`` gloo ranks."""
    threads = torch.get_num_threads()
    n = len(data)
    multi = f"{args.world}_ranks_1_thread"
    halves = f"{args.world}_independent_shards_1_thread"
    names = ["1_process_1_thread", "1_process_2_threads", halves, multi]
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    reports: dict[str, dict[str, Any]] = {}
    warm = TensorDataset(*(x[: 4 * args.batch_size] for x in data.tensors))
    for _ in range(args.repeats):
        for t, name in ((1, names[0]), (2, names[1])):
            torch.set_num_threads(t)
            _work(model, warm, args)
            c, w = time.process_time(), time.perf_counter()
            rep = _work(model, data, args)
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
            reports[name] = rep.to_dict()
        torch.set_num_threads(threads)
        for grouped, name in ((False, halves), (True, multi)):
            ranks = _spawn(model, data, args, grouped)
            wall[name].append(max(r["wall"] for r in ranks))
            cpu[name].append(max(r["cpu"] for r in ranks))
            if grouped:
                reports[name] = ranks[0]["report"]

    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ref = _comparable(reports["1_process_1_thread"])
    return {
        "samples": n,
        "attack": repr(_pgd(args.steps)),
        "eps": args.dist_eps,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "world": args.world,
        "median_wall_s": med,
        "images_per_s": {k: n / v for k, v in med.items()},
        "speedup_over_1_process_1_thread": med[names[0]] / med[multi],
        "speedup_over_1_process_2_threads": med[names[1]] / med[multi],
        "speedup_of_independent_shards_over_1_process_1_thread": med[names[0]] / med[halves],
        "ranks_vs_independent_shards_time_ratio": med[multi] / med[halves],
        "median_cpu_s_slowest_process": med_cpu,
        "identical_records": {
            f"{multi}_vs_1_process_1_thread": _comparable(reports[multi]) == ref,
            "1_process_2_threads_vs_1_thread": _comparable(reports[names[1]]) == ref,
        },
        "robust_accuracy": reports[multi]["robust_accuracy"],
        "wall_s": wall,
        "cpu_s": cpu,
    }


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "overhead", "distributed"), default="all")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="part 1 only")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", "-k", type=int, default=10, help="PGD steps")
    parser.add_argument("--eps", type=float, default=0.1, help="Linf budget of part 1")
    parser.add_argument(
        "--dist-eps", type=float, nargs="+", default=[0.05, 0.1], help="budgets of part 2"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each method")
    parser.add_argument("--world", type=int, default=2, help="processes of part 2")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of part 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    cli_args = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(cli_args)
    t0 = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    x_train, y_train, x_test, y_test = load_digits_tensors(seed=args.seed)
    net = train(SmallCNN(), x_train, y_train, seed=args.seed).eval()
    data = TensorDataset(torch.cat([x_train, x_test]), torch.cat([y_train, y_test]))
    if args.threads is not None:  # after training: the weights do not depend on it
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    record: dict[str, Any] = {
        "benchmark": "evaluate",
        "command": " ".join(["python benchmarks/evaluate.py", *cli_args]),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "advkit": advkit.__version__,
        "python": platform.python_version(),
        "model": "SmallCNN(digits, trained)",
        "load_average_before": load_before,
    }
    if args.part in ("all", "overhead"):
        record["overhead"] = {
            "torch_threads": torch.get_num_threads(),
            **overhead(net.to(device), data, args, device),
        }
        net = net.cpu()
    if args.part in ("all", "distributed"):
        record["distributed"] = distributed(net, data, args)
    record["load_average_after"] = os.getloadavg()

    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.date.today().strftime("%Y%m%d")
    tag = f"-{args.tag}" if args.tag else ""
    path = args.results_dir / f"evaluate-{device.type}{tag}-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")

    print(
        f"{record['model']}, {len(data)} images, device {device} ({record['device_name']}), "
        f"torch {torch.__version__}, load average before {load_before[0]:.1f}"
    )
    if "overhead" in record:
        o = record["overhead"]
        ips = o["images_per_s"]
        print(
            f"\n1. {o['attack']} at eps={o['eps']:g}, batch {o['batch_size']}, "
            f"{o['torch_threads']} torch threads, median of {o['repeats']} interleaved runs"
        )
        print("| method | median s | images/s |")
        print("|---|---:|---:|")
        for name in ("bare", "bare_sample_ids", "evaluate", "evaluate_ensemble"):
            print(f"| {name} | {o['median_s'][name]:.3f} | {ips[name]:.0f} |")
        print(
            f"evaluate / bare throughput: {o['throughput_evaluate_over_bare']:.3f} "
            f"(paired median {o['paired_throughput_ratio_median']:.3f}; "
            f"vs bare with sample_ids {o['throughput_evaluate_over_bare_sample_ids']:.3f}); "
            f"clean accuracy {100 * o['clean_accuracy']:.1f}%, "
            f"robust {100 * o['robust_accuracy']:.1f}%"
        )
        e = o["ensemble"]
        print(
            f"ensemble [PGD, PGD-margin, DeepFool] / PGD alone: {e['time_over_pgd_alone']:.2f}x "
            f"time; samples attacked {e['attacked']}; robust after {e['robust_accuracy_after']}"
        )
    if "distributed" in record:
        d = record["distributed"]
        print(
            f"\n2. {d['attack']}, eps={d['eps']}, batch {d['batch_size']}, "
            f"median of {d['repeats']} interleaved runs (wall time of evaluate; slowest process)"
        )
        print("| configuration | median wall s | images/s | median CPU s (slowest process) |")
        print("|---|---:|---:|---:|")
        for name, w in d["median_wall_s"].items():
            c = d["median_cpu_s_slowest_process"][name]
            print(f"| {name} | {w:.3f} | {d['images_per_s'][name]:.0f} | {c:.3f} |")
        print(
            f"speed-up of {d['world']} ranks: {d['speedup_over_1_process_1_thread']:.2f}x over 1 "
            f"process at 1 thread, {d['speedup_over_1_process_2_threads']:.2f}x over 1 process "
            f"at 2 threads. {d['world']} independent processes on one shard each (no group, "
            f"the machine's own limit): "
            f"{d['speedup_of_independent_shards_over_1_process_1_thread']:.2f}x; ranks / "
            f"independent shards time: {d['ranks_vs_independent_shards_time_ratio']:.3f}. "
            f"Identical records: {d['identical_records']}"
        )
    shown = os.path.relpath(path) if args.results_dir == DEFAULT_RESULTS else str(path)
    print(f"\nWrote {shown} ({time.perf_counter() - t0:.1f} s)")
    return record


if __name__ == "__main__":
    main()
