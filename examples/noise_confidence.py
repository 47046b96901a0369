"""Random noise that networks label with confidence, and noise vs PGD at the same norm.

Run from the repository root (no download needed):

    python examples/noise_confidence.py           # full run
    python examples/noise_confidence.py --quick   # reduced run (what the tests run)

Part 1 feeds images of pure noise (uniform on [0, 1], and Gaussian around mid
grey) to three networks trained on scikit-learn's 8x8 digits (an MLP, a CNN and
the 1-Lipschitz network of ``lipschitz_defence.py``) and records the top-1
class and its softmax confidence: none of the noise is a digit, yet the
networks name one, often with high confidence. A softmax score is no sign that
an input is in-distribution.

Part 2 asks the companion question on real test images: how much does random
noise of a given norm change the accuracy, next to PGD of that same norm?
``advkit.UniformNoise`` and ``advkit.GaussianNoise`` are ordinary attacks (same
call, same ``eps``, same result type), so the comparison is one line each.
Random directions are almost orthogonal to the few directions that change the
decision, so noise does little where PGD, which follows the gradient, breaks
the model.

Written to the output folder (``examples/output/`` or ``$ADVKIT_EXAMPLES_OUT``):
``noise_confidence_images.png`` (per network, the noise image it is most
confident about, with its label and confidence), ``noise_confidence.png`` (accuracy against eps: noise vs
PGD, per network and norm) and ``noise_confidence.json``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import advkit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `python examples/...`
from digits import NUM_CLASSES, SmallCNN, accuracy, load_digits_tensors, train
from example_utils import example_parser, pyplot, save_figure, setup, write_summary
from lipschitz_defence import freeze, hkr_loss, lipschitz_mlp

# Budgets in pixel space (pixels in [0, 1]; an 8x8 image has 64 of them).
BUDGETS = {"linf": (0.05, 0.1, 0.2), "l2": (0.5, 1.0, 2.0)}


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, NUM_CLASSES),
    )


def noise_images(n: int, device: torch.device, seed: int) -> dict[str, Tensor]:
    """``n`` uniform and ``n`` Gaussian noise images of shape (1, 8, 8), pixels in [0, 1]."""
    gen = torch.Generator(device=device).manual_seed(seed)
    uniform = torch.rand(n, 1, 8, 8, generator=gen, device=device)
    gaussian = (0.5 + 0.25 * torch.randn(n, 1, 8, 8, generator=gen, device=device)).clamp(0, 1)
    return {"uniform": uniform, "gaussian": gaussian}


@torch.no_grad()
def top1(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Predicted class and its softmax confidence per image."""
    conf, cls = model(x).softmax(dim=1).max(dim=1)
    return cls, conf


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = example_parser(__doc__).parse_args(argv)
    device, out_dir = setup(args)
    start = time.perf_counter()
    epochs, lip_epochs, steps, restarts, n_noise, n_test = (
        (3, 6, 10, 5, 200, 120) if args.quick else (10, 20, 20, 10, 1000, None)
    )

    x_train, y_train, x_test, y_test = load_digits_tensors(seed=args.seed)
    if n_test is not None:
        x_test, y_test = x_test[:n_test], y_test[:n_test]
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_test, y_test = x_test.to(device), y_test.to(device)

    # Three networks trained on the digits; every one wrapped for pixels in [0, 1].
    torch.manual_seed(args.seed)  # the orthogonal layers are initialised when built
    lip = lipschitz_mlp().to(device)
    train(lip, x_train, y_train, epochs=lip_epochs, seed=args.seed, reset=False, loss=hkr_loss())
    freeze(lip)
    models = {
        "MLP": advkit.wrap(train(mlp().to(device), x_train, y_train, epochs, args.seed)),
        "CNN": advkit.wrap(train(SmallCNN().to(device), x_train, y_train, epochs, args.seed)),
        "1-Lipschitz": advkit.wrap(lip),
    }
    summary: dict[str, Any] = {"quick": args.quick, "device": str(device), "models": {}}

    # ---- Part 1: what the networks say about pure noise.
    noise = noise_images(n_noise, device, args.seed)
    print(f"Part 1: {n_noise} noise images of each kind; top-1 class and softmax confidence.")
    print(
        f"  {'model':<12} {'images':<9} {'accuracy':>8} {'mean conf':>10} {'conf>=0.9':>10}"
        f"  most frequent class"
    )
    for name, model in models.items():
        cls, conf = top1(model, x_test)
        rec: dict[str, Any] = {
            "clean_accuracy": accuracy(model, x_test, y_test),
            "clean_confidence": float(conf.mean()),
            "clean_confident": float((conf >= 0.9).double().mean()),
        }
        print(
            f"  {name:<12} {'digits':<9} {rec['clean_accuracy']:8.1%} "
            f"{rec['clean_confidence']:10.1%} {rec['clean_confident']:10.1%}"
        )
        for kind, images in noise.items():
            cls, conf = top1(model, images)
            counts = torch.bincount(cls, minlength=NUM_CLASSES)
            top_class = int(counts.argmax())
            rec[kind] = {
                "mean_confidence": float(conf.mean()),
                "confident": float((conf >= 0.9).double().mean()),
                "top_class": top_class,
                "top_class_share": float(counts[top_class]) / n_noise,
            }
            r = rec[kind]
            print(
                f"  {'':<12} {kind:<9} {'-':>8} {r['mean_confidence']:10.1%} "
                f"{r['confident']:10.1%}  {top_class} ({r['top_class_share']:.0%} of them)"
            )
        summary["models"][name] = rec
    print(
        "  (The 1-Lipschitz network's logits change slowly by construction, so its softmax\n"
        "  scores are low everywhere, on digits too: a threshold on them is no safer.)"
    )

    # ---- Part 2: random noise of a given norm next to PGD of the same norm, on test images.
    print(f"\nPart 2: accuracy on {len(x_test)} test images, noise vs PGD at the same budget")
    print(f"  (noise: best of {restarts} random draws per image; PGD: {steps} steps).")
    attacks = {
        "uniform noise": lambda norm: advkit.UniformNoise(norm=norm, restarts=restarts),
        "Gaussian noise": lambda norm: advkit.GaussianNoise(norm=norm, restarts=restarts),
        "PGD": lambda norm: advkit.PGD(norm=norm, steps=steps),
    }
    for name, model in models.items():
        table: dict[str, dict[str, list[float]]] = {}
        for norm, budgets in BUDGETS.items():
            print(
                f"  {name:<12} {norm:<5}"
                + "".join(f"{'eps=' + format(e, 'g'):>10}" for e in budgets)
            )
            table[norm] = {}
            for label, make in attacks.items():
                row = []
                for eps in budgets:
                    gen = torch.Generator(device=device).manual_seed(args.seed)
                    res = make(norm)(model, x_test, y_test, eps=eps, generator=gen)
                    row.append(res.robust_accuracy())
                table[norm][label] = row
                print(f"  {'':<12} {label:<16}" + "".join(f"{a:>10.1%}" for a in row))
        summary["models"][name]["accuracy"] = table
    summary["budgets"] = {k: list(v) for k, v in BUDGETS.items()}

    # ---- Figures.
    plt = pyplot()
    if plt is None:
        print("matplotlib is not installed: skipped the figures.")
    else:
        # For each network and kind of noise, the noise image it is most sure is a digit.
        fig, axes = plt.subplots(len(noise), len(models), figsize=(5.4, 4.0), squeeze=False)
        for r, (kind, images) in enumerate(noise.items()):
            for c, (name, model) in enumerate(models.items()):
                cls, conf = top1(model, images)
                j = int(conf.argmax())
                ax = axes[r, c]
                ax.imshow(
                    images[j, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest"
                )
                ax.set_title(f"{name}: {int(cls[j])} ({float(conf[j]):.0%})", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[r, 0].set_ylabel(f"{kind} noise", fontsize=8)
        fig.suptitle("The noise image each network is most sure is a digit", fontsize=10)
        fig.tight_layout()
        save_figure(fig, out_dir / "noise_confidence_images.png")

        fig, axes = plt.subplots(
            len(BUDGETS), len(models), figsize=(8, 5), squeeze=False, sharey=True
        )
        for r, (norm, budgets) in enumerate(BUDGETS.items()):
            for c, name in enumerate(models):
                ax = axes[r, c]
                for label, accs in summary["models"][name]["accuracy"][norm].items():
                    ax.plot(
                        [0, *budgets],
                        [summary["models"][name]["clean_accuracy"], *accs],
                        "-o",
                        ms=3,
                        label=label,
                    )
                ax.set_title(f"{name}, {norm}", fontsize=9)
                ax.set_xlabel(f"eps ({norm}, pixel space)", fontsize=8)
                ax.set_ylim(-0.02, 1.02)
                ax.tick_params(labelsize=7)
        axes[0, 0].set_ylabel("accuracy")
        axes[1, 0].set_ylabel("accuracy")
        axes[0, 0].legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, out_dir / "noise_confidence.png")

    summary["seconds"] = time.perf_counter() - start
    write_summary(out_dir / "noise_confidence.json", summary)
    print(f"Total time: {summary['seconds']:.1f} s")
    return summary


if __name__ == "__main__":
    main()
