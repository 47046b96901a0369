"""The FGSM tutorial: a sweep of eps in one call, predictions and confidence, the sign image.

Run from the repository root (no download needed):

    python examples/fgsm_tutorial.py           # full run
    python examples/fgsm_tutorial.py --quick   # reduced run (what the tests run)

The Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy, "Explaining and
Harnessing Adversarial Examples", ICLR 2015) takes one step of size eps in the
direction that increases the model's loss fastest under an Linf budget, the
*sign* of the loss's gradient with respect to the input:

    x_adv = clip(x + eps * sign(grad_x loss(model(x), y)), 0, 1)

Every pixel moves by exactly eps (unless the [0, 1] box clips it), so eps is
both the step size and the budget: the largest change of any single pixel.

The classic tutorial attacks a pretrained MobileNetV2 or a LeNet on MNIST;
here a small CNN trained in seconds on scikit-learn's 8x8 digits takes its
place. The same code runs on any classifier: wrap it with its own
``bounds``, ``mean`` and ``std``.

Written to the output folder (``examples/output/`` or ``$ADVKIT_EXAMPLES_OUT``):
``fgsm_tutorial_examples.png`` (sign image and adversarial images with the
predicted label and confidence per eps), ``fgsm_tutorial_curve.png`` (accuracy
against eps) and ``fgsm_tutorial.json``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import advkit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `python examples/...`
from digits import SmallCNN, accuracy, load_digits_tensors, train
from example_utils import example_parser, pyplot, save_figure, setup, write_summary

# The tutorial's budgets: how far (at most) each pixel may move, pixels being in [0, 1].
EPS = (0.0, 0.01, 0.1, 0.15)
# A finer sweep for the accuracy curve.
CURVE_EPS = (0.0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3)


def fgsm_sweep(
    model: advkit.Classifier, x: Tensor, y: Tensor, eps: Sequence[float]
) -> tuple[advkit.AttackResult, Tensor]:
    """FGSM at every eps in one call. Returns the result and each row's eps.

    The batch holds one copy of the images per eps, and ``eps=`` gets one budget
    per row: rows ``k * len(x)`` to ``(k + 1) * len(x) - 1`` are attacked with
    ``eps[k]``. One forward and one backward pass for the whole sweep.
    """
    n = len(x)
    row_eps = torch.tensor(eps, device=x.device).repeat_interleave(n)
    # norm="linf": the budget bounds the largest change of any pixel (the sign step).
    attack = advkit.FGSM(norm="linf")
    res = attack(model, x.repeat(len(eps), 1, 1, 1), y.repeat(len(eps)), eps=row_eps)
    return res, row_eps


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = example_parser(__doc__).parse_args(argv)
    device, out_dir = setup(args)
    start = time.perf_counter()
    epochs, n_show = (3, 4) if args.quick else (10, 6)

    # 1. Data: 8x8 grey images with pixels in [0, 1], labels 0-9.
    x_train, y_train, x_test, y_test = load_digits_tensors(seed=args.seed)
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_test, y_test = x_test.to(device), y_test.to(device)

    # 2. The model. Networks are usually trained on normalized inputs, (x - mean) / std. advkit
    # puts that normalization *inside* the wrapper: the attack sees pixels in `bounds`, and eps
    # is measured there. (Perturbing normalized inputs instead would measure eps in units of
    # std: eps=0.1 would move pixels by 0.1 * std.)
    mean, std = float(x_train.mean()), float(x_train.std())
    model = advkit.wrap(SmallCNN().to(device), bounds=(0, 1), mean=mean, std=std)
    train(model, x_train, y_train, epochs=epochs, seed=args.seed)  # trains through the wrapper
    clean_acc = accuracy(model, x_test, y_test)
    print(
        f"SmallCNN on 8x8 digits, inputs normalized inside the model with mean {mean:.3f}, "
        f"std {std:.3f}: clean test accuracy {clean_acc:.1%}"
    )

    # 3. The tutorial's sweep on a few test images, in one attack call. No `targets`: the
    # attack is untargeted (it pushes away from the true label y). FGSM draws nothing at random.
    x, y = x_test[:n_show], y_test[:n_show]
    with torch.no_grad():
        clean_pred = model(x).argmax(dim=1)
    res, _ = fgsm_sweep(model, x, y, EPS)
    prob = res.logits.softmax(dim=1).view(len(EPS), n_show, -1)
    pred, conf = prob.argmax(dim=2), prob.amax(dim=2)
    print(f"\nPredicted label (confidence) per eps, for {n_show} test images:")
    print("  label " + "".join(f"{'eps=' + format(e, 'g'):>13}" for e in EPS))
    for i in range(n_show):
        cells = "".join(f"{int(pred[k, i]):>7} ({float(conf[k, i]):4.0%})" for k in range(len(EPS)))
        print(f"  {int(y[i]):>5} {cells}")
    # res.distance: the Linf norm of x_adv - x per row, in pixel space (never above its eps).
    moved = res.distance.view(len(EPS), n_show).amax(dim=1)
    print("  largest pixel change per eps: " + ", ".join(f"{float(m):.3f}" for m in moved))

    # 4. The accuracy curve over the whole test set, again in one call.
    res_all, row_eps = fgsm_sweep(model, x_test, y_test, CURVE_EPS)
    correct = (res_all.logits.argmax(dim=1) == res_all.labels).view(len(CURVE_EPS), -1)
    curve = correct.double().mean(dim=1).tolist()
    over_budget = int((res_all.distance > row_eps + 1e-6).sum())
    print(f"\nAccuracy under FGSM on the {len(x_test)} test images (Linf eps, pixel space):")
    for e, a in zip(CURVE_EPS, curve, strict=True):
        print(f"  eps={e:<6g} {a:6.1%}  " + "#" * round(40 * a))
    print(f"  rows whose perturbation exceeds their eps: {over_budget}")

    # 5. Figures.
    plt = pyplot()
    if plt is None:
        print("matplotlib is not installed: skipped the figures.")
    else:
        rows = min(n_show, 4)
        fig, axes = plt.subplots(rows, len(EPS) + 1, figsize=(1.6 * (len(EPS) + 1), 1.8 * rows))
        for i in range(rows):
            # The sign image: the direction every pixel moved (0 where the box clipped the step).
            sign = torch.sign(res.x_adv[(len(EPS) - 1) * n_show + i, 0] - x[i, 0]).cpu()
            panels = [(sign, "sign of the step", "RdBu_r", -1.0)]
            panels += [
                (
                    res.x_adv[k * n_show + i, 0].cpu(),
                    f"eps={e:g}: {int(pred[k, i])} ({float(conf[k, i]):.0%})",
                    "gray",
                    0.0,
                )
                for k, e in enumerate(EPS)
            ]
            for c, (img, title, cmap, lo) in enumerate(panels):
                ax = axes[i, c]
                ax.imshow(img.numpy(), cmap=cmap, vmin=lo, vmax=1.0, interpolation="nearest")
                ax.set_title(title, fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle("FGSM: predicted label (confidence) as eps grows", fontsize=10)
        fig.tight_layout()
        save_figure(fig, out_dir / "fgsm_tutorial_examples.png")

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(CURVE_EPS, curve, "-o", ms=4)
        ax.set_xlabel("eps (Linf norm, pixel space)")
        ax.set_ylabel("accuracy under FGSM")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("Accuracy against eps, 8x8 digits", fontsize=10)
        fig.tight_layout()
        save_figure(fig, out_dir / "fgsm_tutorial_curve.png")

    summary: dict[str, Any] = {
        "quick": args.quick,
        "device": str(device),
        "clean_accuracy": clean_acc,
        "eps": list(EPS),
        "labels": y.tolist(),
        "clean_predictions": clean_pred.tolist(),
        "predictions": pred.tolist(),
        "confidences": conf.tolist(),
        "max_change": moved.tolist(),
        "curve_eps": list(CURVE_EPS),
        "curve_accuracy": curve,
        "over_budget": over_budget,
        "seconds": time.perf_counter() - start,
    }
    write_summary(out_dir / "fgsm_tutorial.json", summary)
    print(f"Total time: {summary['seconds']:.1f} s")
    return summary


if __name__ == "__main__":
    main()
