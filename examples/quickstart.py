"""advkit in one screen: train a small CNN on digits, attack it, compare with random noise.

Run from the repository root (no download needed; about 10 s on 2 CPU cores):

    python examples/quickstart.py            # full demo, writes examples/output/quickstart.png
    python examples/quickstart.py --quick    # smoke test, a few seconds
    python examples/quickstart.py --out grid.png

It trains `SmallCNN` (see `digits.py`) on scikit-learn's 8x8 digits, wraps it with
``advkit.wrap(model, bounds=(0, 1))`` (pixels in [0, 1]; eps is measured in
that space) and prints the clean accuracy and the robust accuracy under FGSM,
BIM and PGD (Linf and L2) at a few budgets, the success rate of a targeted
L2 PGD towards ``(y + 1) % 10``, and the same budgets spent on uniform random
noise, which barely moves the accuracy where PGD drives it down. Finally it
draws a grid of clean images, perturbations and adversarial images.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import advkit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `python examples/quickstart.py`
from digits import SmallCNN, accuracy, load_digits_tensors, train

LINF_EPS = (0.05, 0.1, 0.2)
L2_EPS = (0.5, 1.0, 2.0)
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "output" / "quickstart.png"


def _pct(v: float) -> str:
    return f"{100 * v:5.1f}%"


def _row(label: str, metric: str, cells: Sequence[str]) -> str:
    return f"  {label:<24} {metric:<12}" + "".join(f"{c:>10}" for c in cells)


def _header(title: str, eps: Sequence[float]) -> str:
    return f"{title:<39}" + "".join(f"{'eps=' + format(e, 'g'):>10}" for e in eps)


def robustness_table(
    model: advkit.Classifier, x: torch.Tensor, y: torch.Tensor, seed: int, steps: int
) -> tuple[list[str], dict[tuple[str, str, float], advkit.AttackResult]]:
    """Run every attack at every budget; return the table lines and a few results to plot."""
    bim_steps = max(1, steps // 2)
    linf_rows = [
        ("UniformNoise (baseline)", advkit.UniformNoise(norm="linf"), None),
        ("FGSM", advkit.FGSM(norm="linf"), None),
        (f"BIM ({bim_steps} steps)", advkit.BIM(norm="linf", steps=bim_steps), None),
        (f"PGD ({steps} steps)", advkit.PGD(norm="linf", steps=steps), None),
    ]
    l2_rows = [
        ("UniformNoise (baseline)", advkit.UniformNoise(norm="l2"), None),
        (f"PGD ({steps} steps)", advkit.PGD(norm="l2", steps=steps), None),
        (
            f"PGD targeted y+1 ({steps})",
            advkit.PGD(norm="l2", steps=steps),
            advkit.targets.shift(1),
        ),
    ]
    lines: list[str] = []
    kept: dict[tuple[str, str, float], advkit.AttackResult] = {}
    for norm, eps_list, rows in (("Linf", LINF_EPS, linf_rows), ("L2", L2_EPS, l2_rows)):
        lines.append(_header(f"{norm} threat model", eps_list))
        for label, attack, targets in rows:
            cells = []
            for eps in eps_list:
                gen = torch.Generator().manual_seed(seed)  # one seeded generator per call
                res = attack(model, x, y, eps=eps, targets=targets, generator=gen)
                cells.append(_pct(res.success_rate if res.targeted else res.robust_accuracy()))
                kept[norm, label, eps] = res
            metric = "success" if targets is not None else "robust acc"
            lines.append(_row(label, metric, cells))
        lines.append("")
    return lines, kept


def save_grid(
    path: Path,
    model: advkit.Classifier,
    x: torch.Tensor,
    res: advkit.AttackResult,
    eps: float,
    title: str,
    rows: int = 5,
) -> bool:
    """Clean / perturbation / adversarial for a few samples; False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Prefer samples the attack fooled (that is what the grid is meant to show).
    order = torch.argsort(res.success.int(), descending=True, stable=True)[:rows]
    with torch.no_grad():
        clean_pred = model(x[order]).argmax(dim=1).tolist()
    fig, axes = plt.subplots(len(order), 3, figsize=(5.4, 1.9 * len(order)), squeeze=False)
    for r, i in enumerate(order.tolist()):
        delta = (res.x_adv[i, 0] - x[i, 0]).cpu()
        adv_pred = int(res.logits[i].argmax())
        panels = (
            (x[i, 0].cpu(), f"clean: pred {clean_pred[r]}", "gray", 0.0, 1.0),
            (delta, f"perturbation (+/-{eps:g})", "RdBu_r", -eps, eps),
            (res.x_adv[i, 0].cpu(), f"adversarial: pred {adv_pred}", "gray", 0.0, 1.0),
        )
        for c, (img, name, cmap, lo, hi) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img.numpy(), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer epochs, steps and test images (smoke test)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="path of the PNG image grid (default examples/output/quickstart.png)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data split, model, attacks")
    args = parser.parse_args(argv)
    out: Path = DEFAULT_OUT if args.out is None else args.out

    start = time.perf_counter()
    epochs, steps, n_test = (3, 5, 100) if args.quick else (10, 20, None)

    x_train, y_train, x_test, y_test = load_digits_tensors(seed=args.seed)
    if n_test is not None:
        x_test, y_test = x_test[:n_test], y_test[:n_test]
    net = train(SmallCNN(), x_train, y_train, epochs=epochs, seed=args.seed)
    trained = time.perf_counter() - start

    # The wrapper owns the input space: pixels in [0, 1], eps measured there.
    model = advkit.wrap(net, bounds=(0, 1))
    clean = accuracy(model, x_test, y_test)

    print(
        f"SmallCNN on digits: trained {epochs} epochs on {len(x_train)} images in "
        f"{trained:.1f} s; attacking {len(x_test)} test images (pixels in [0, 1])."
    )
    print(f"Clean accuracy: {_pct(clean).strip()}\n")
    lines, kept = robustness_table(model, x_test, y_test, seed=args.seed, steps=steps)
    print("\n".join(lines))
    print(
        "robust acc = accuracy on the adversarial inputs (result.robust_accuracy());\n"
        "success = fraction classified as the target (y + 1) % 10 (result.success_rate).\n"
    )

    eps = LINF_EPS[1]
    title = f"PGD Linf ({steps} steps), eps={eps:g}, on 8x8 digits"
    if save_grid(out, model, x_test, kept["Linf", f"PGD ({steps} steps)", eps], eps, title):
        shown = os.path.relpath(out) if args.out is None else out
        print(f"Wrote the image grid to {shown}")
    else:
        print("matplotlib is not installed: skipped the image grid.")
    print(f"Total time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
