"""How close is advkit's PGD to the bare forward + input-gradient loop?

A k-step gradient attack cannot cost less than k x (forward + backward to the
input). This script times that floor as a bare loop (``torch.autograd.grad``
of the summed cross-entropy w.r.t. the input only, parameters frozen) and
advkit's ``PGD(norm="linf", steps=k, random_init=True)`` on the same batch and
model, and reports the ratio. advkit also does one final forward pass to
score the last iterate (it makes none on the clean input: the input checks
run on the first iterate's pass), so a ratio of about ``1 + F / (k (F + B))``
is the best it can do; anything above that is the update itself (direction,
projection, clipping, which the bare loop skips), keeping the best iterate
per sample, input validation and Python overhead.

Run from the repository root (not a test; one run takes well under a minute
on 2 CPU cores):

    python benchmarks/bare_loop.py                     # trained digits SmallCNN
    python benchmarks/bare_loop.py --no-train          # seeded random weights, same architecture
    python benchmarks/bare_loop.py --device cuda --batch-size 1024 --steps 20

The results go to ``benchmarks/results/bare_loop-<device>[-random]-<YYYYMMDD>.json``
and a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import advkit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))  # the digits helpers live in examples/
from digits import SmallCNN, accuracy, load_digits_tensors, train  # noqa: E402

DEFAULT_RESULTS = ROOT / "benchmarks" / "results"


def bare_loop(model: nn.Module, x: Tensor, y: Tensor, steps: int) -> Tensor:
    """The cost floor: ``steps`` x (forward + gradient of the CE sum w.r.t. the input only)."""
    grad = x
    for _ in range(steps):
        xg = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(xg), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
    return grad


def hand_pgd(
    model: nn.Module, x: Tensor, y: Tensor, steps: int, eps: float, gen: torch.Generator
) -> Tensor:
    """A typical hand-written Linf PGD: random start, sign step, clamp to ball and box.

    The same passes as the bare loop plus the update; it keeps the last iterate
    (no validation, no best-iterate tracking, no final scoring forward).
    """
    alpha = 2.5 * eps / steps
    noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    xa = (x + (2 * noise - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        xg = xa.detach().requires_grad_(True)
        loss = F.cross_entropy(model(xg), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
        xa = (x + (xa + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return xa


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _summary(times: Sequence[float]) -> dict[str, float]:
    ms = [1000 * t for t in times]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms)}


def _batch(x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` samples, repeating the set when ``n`` exceeds it."""
    reps = -(-n // x.shape[0])
    return x.repeat(reps, 1, 1, 1)[:n].contiguous(), y.repeat(reps)[:n].contiguous()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", "-k", type=int, default=10, help="attack steps k")
    parser.add_argument("--eps", type=float, default=0.1, help="Linf radius (pixels in [0, 1])")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs of each method")
    parser.add_argument(
        "--repeats", type=int, default=50, help="timed runs of each method (at most)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=20.0,
        help="stop repeating once the timed runs took this long (at least 5 repeats are done)",
    )
    parser.add_argument("--no-train", action="store_true", help="seeded random weights")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--results-dir", type=Path, default=DEFAULT_RESULTS, help="default benchmarks/results/"
    )
    cli_args = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(cli_args)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    k = args.steps
    t0 = time.perf_counter()

    x_train, y_train, x_test, y_test = load_digits_tensors(seed=args.seed)
    if args.no_train:
        torch.manual_seed(args.seed)
        net: nn.Module = SmallCNN()
    else:
        net = train(SmallCNN(), x_train, y_train, seed=args.seed)
    net = net.to(device).eval()
    clean_acc = accuracy(net, x_test.to(device), y_test.to(device))
    x, y = _batch(x_test, y_test, args.batch_size)
    x, y = x.to(device), y.to(device)

    # The bare loop gets the same advantages advkit's guard gives itself: eval mode, frozen
    # parameters (no weight gradients are computed).
    net.requires_grad_(False)
    model = advkit.wrap(net, bounds=(0, 1))
    attack = advkit.PGD(norm="linf", eps=args.eps, steps=k, random_init=True)
    gen = torch.Generator(device=device)

    def run_bare() -> None:
        bare_loop(net, x, y, k)

    result: advkit.AttackResult | None = None

    def run_advkit() -> None:
        nonlocal result
        result = attack(model, x, y, generator=gen.manual_seed(args.seed))

    def run_hand() -> None:
        hand_pgd(net, x, y, k, args.eps, gen.manual_seed(args.seed))

    def run_forward() -> None:
        with torch.no_grad():
            net(x)

    for _ in range(args.warmup):
        run_bare()
        run_advkit()
        run_hand()
        run_forward()
    times: dict[str, list[float]] = {"bare": [], "advkit": [], "hand_pgd": [], "forward": []}
    timed_start = time.perf_counter()
    for i in range(args.repeats):  # interleaved, so that drift hits both methods alike
        times["bare"].append(_time(run_bare, device))
        times["advkit"].append(_time(run_advkit, device))
        times["hand_pgd"].append(_time(run_hand, device))
        times["forward"].append(_time(run_forward, device))
        if i + 1 >= 5 and time.perf_counter() - timed_start > args.budget_s:
            break
    repeats = len(times["bare"])
    # Untimed: how well the reference does (last iterate only).
    x_hand = hand_pgd(net, x, y, k, args.eps, gen.manual_seed(args.seed))
    with torch.no_grad():
        hand_success = float((net(x_hand).argmax(dim=1) != y).float().mean())
    assert result is not None

    bare, adv, hand, fwd = (_summary(times[n]) for n in ("bare", "advkit", "hand_pgd", "forward"))
    ratio = adv["median_ms"] / bare["median_ms"]
    paired = statistics.median(a / b for a, b in zip(times["advkit"], times["bare"], strict=True))
    extra_fwd = result.forward_passes - k
    floor_ratio = 1 + extra_fwd * fwd["median_ms"] / bare["median_ms"]
    record: dict[str, Any] = {
        "benchmark": "bare_loop",
        "command": " ".join(["python benchmarks/bare_loop.py", *cli_args]),
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
        "model": "SmallCNN(digits, " + ("random weights)" if args.no_train else "trained)"),
        "clean_accuracy": clean_acc,
        "batch_size": args.batch_size,
        "steps": k,
        "eps": args.eps,
        "attack": repr(attack),
        "warmup": args.warmup,
        "repeats": repeats,
        "bare_loop": {**bare, "forward_passes": k, "backward_passes": k},
        "advkit_pgd": {
            **adv,
            "forward_passes": result.forward_passes,
            "backward_passes": result.backward_passes,
            "success_rate": result.success_rate,
        },
        "hand_written_pgd": {
            **hand,
            "forward_passes": k,
            "backward_passes": k,
            "success_rate": hand_success,
        },
        "forward_no_grad": fwd,
        "ratio_hand_written_pgd_median": hand["median_ms"] / bare["median_ms"],
        "ratio_median": ratio,
        "ratio_min": adv["min_ms"] / bare["min_ms"],
        "ratio_paired_median": paired,
        "ratio_floor_from_pass_counts": floor_ratio,
        "times_s": times,
    }

    results_dir: Path = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.date.today().strftime("%Y%m%d")
    suffix = "-random" if args.no_train else ""
    path = results_dir / f"bare_loop-{device.type}{suffix}-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")

    print(
        f"{record['model']}, clean accuracy {100 * clean_acc:.1f}%, batch {args.batch_size}, "
        f"k={k}, Linf eps={args.eps:g}, device {device} ({record['device_name']}), "
        f"torch threads={record['torch_threads']}, torch {torch.__version__}; "
        f"{args.warmup} warm-up + {repeats} timed runs each.\n"
    )
    print("| method | median ms | min ms | max ms | forward | backward |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| bare loop (k x fwd + input grad) | {bare['median_ms']:.2f} | {bare['min_ms']:.2f} "
        f"| {bare['max_ms']:.2f} | {k} | {k} |"
    )
    print(
        f"| advkit PGD Linf, random init | {adv['median_ms']:.2f} | {adv['min_ms']:.2f} "
        f"| {adv['max_ms']:.2f} | {result.forward_passes} | {result.backward_passes} |"
    )
    print(
        f"| hand-written PGD loop (reference) | {hand['median_ms']:.2f} | {hand['min_ms']:.2f} "
        f"| {hand['max_ms']:.2f} | {k} | {k} |"
    )
    print(
        f"| one no-grad forward | {fwd['median_ms']:.2f} | {fwd['min_ms']:.2f} "
        f"| {fwd['max_ms']:.2f} | 1 | 0 |"
    )
    print(
        f"\nratio advkit / bare loop: {ratio:.2f} (medians), {paired:.2f} (median of paired runs); "
        f"floor from the {extra_fwd} extra forward pass(es): {floor_ratio:.2f}. "
        f"Hand-written PGD / bare loop: {hand['median_ms'] / bare['median_ms']:.2f}.\n"
        f"Success rate: advkit PGD {100 * result.success_rate:.1f}%, hand-written PGD "
        f"(last iterate) {100 * hand_success:.1f}%."
    )
    shown = os.path.relpath(path) if results_dir == DEFAULT_RESULTS else str(path)
    print(f"Wrote {shown} ({time.perf_counter() - t0:.1f} s)")
    return record


if __name__ == "__main__":
    main()
