"""Targeted BIM at several eps on two kinds of models, then attribution maps of clean vs adversarial.

Run from the repository root (no download needed):

    python examples/targeted_bim_explain.py              # full run
    python examples/targeted_bim_explain.py --quick      # reduced run (what the tests run)
    python examples/targeted_bim_explain.py --target 8   # push every image towards an "8"

The workflow of "an elephant classified as a ping-pong ball", on scikit-learn's
8x8 digits: take one test image of every class but the target, push each of
them towards the target class with a targeted BIM (Kurakin et al. 2017) at
several Linf budgets, look at the clean image, the perturbation and the
adversarial image with the predicted class and confidence, then ask an
attribution method which pixels the model looks at, on the clean and on the
adversarial image.

Two models, chosen for the shape of what they return, since that is what
breaks hand-written attack loops:

- an Inception-style CNN with an auxiliary classifier, whose forward returns
  the pair ``(logits, aux_logits)`` (torchvision's Inception v3 returns such a
  pair in train mode);
- a Hugging Face-style image classifier, whose forward returns an object with
  a ``.logits`` field: a small ``transformers`` ViT built from a config (no
  downloaded weights) when ``transformers`` is installed, else a small
  stand-in network that returns an object of the same kind.

``advkit.wrap`` reads the logits out of either output, and every tensor advkit
returns lives in the input's own space (pixels in [0, 1]), so Captum's
``IntegratedGradients`` and ``Saliency`` take ``result.x_adv`` directly
(``pip install 'advkit[explain]'`` installs Captum; without it the attribution
maps are skipped). Figures go to the output folder (``examples/output/`` or
``$ADVKIT_EXAMPLES_OUT``): ``targeted_bim_grid.png`` and
``targeted_bim_attributions.png``, next to ``targeted_bim_explain.json``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

import advkit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `python examples/...`
from digits import NUM_CLASSES, accuracy, load_digits_tensors, train
from example_utils import example_parser, pyplot, save_figure, setup, write_summary

EPS = (0.05, 0.1, 0.2, 0.3)  # Linf budgets: how far each pixel (in [0, 1]) may move


# ---------------------------------------------------------------------------- model 1: a pair


class AuxOutputs(NamedTuple):
    """What the Inception-style model returns (like torchvision's ``InceptionOutputs``)."""

    logits: Tensor
    aux_logits: Tensor


class AuxCNN(nn.Module):
    """A small CNN with an auxiliary classifier on its first block, as Inception v3 has.

    It returns ``AuxOutputs(logits, aux_logits)`` in every mode (Inception does
    in train mode only; here the attack, which runs the model in eval mode,
    sees the pair too).
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.block1 = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * width * 4 * 4, NUM_CLASSES)
        self.aux = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(width * 4, NUM_CLASSES))

    def forward(self, x: Tensor) -> AuxOutputs:
        h = self.block1(x)
        return AuxOutputs(self.head(self.block2(h).flatten(1)), self.aux(h))


def aux_loss(out: AuxOutputs, y: Tensor) -> Tensor:
    """Inception's training loss: the main head's cross-entropy plus 0.4 times the auxiliary's."""
    ce = nn.functional.cross_entropy
    return ce(out.logits, y) + 0.4 * ce(out.aux_logits, y)


# ---------------------------------------------------------------------------- model 2: .logits


@dataclass
class ImageClassifierOutput:
    """The stand-in's output: like ``transformers``' ``ImageClassifierOutput``, the class
    scores are in ``.logits``."""

    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None


class TinyImageClassifier(nn.Module):
    """A stand-in for a Hugging Face image classifier: ``forward(pixel_values)`` returns an
    `ImageClassifierOutput`. Inside: a 2x2 patch embedding and a small conv net."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.patches = nn.Conv2d(1, width, kernel_size=2, stride=2)  # 8x8 -> 4x4 patches
        self.mix = nn.Sequential(nn.GELU(), nn.Conv2d(width, width, 3, padding=1), nn.GELU())
        self.classifier = nn.Linear(width * 4 * 4, NUM_CLASSES)

    def forward(self, pixel_values: Tensor) -> ImageClassifierOutput:
        h = self.mix(self.patches(pixel_values))
        return ImageClassifierOutput(logits=self.classifier(h.flatten(1)))


def hugging_face_style_model(use_transformers: bool = True) -> tuple[nn.Module, str, float]:
    """A ``transformers`` ViT built from a config (random weights, nothing downloaded) when
    the package is installed, else the stand-in; with what was built and a learning rate."""
    if use_transformers:
        try:
            from transformers import ViTConfig, ViTForImageClassification
        except ImportError:
            pass
        else:
            config = ViTConfig(
                image_size=8,
                patch_size=2,  # 16 patches of 2x2 pixels
                num_channels=1,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                num_labels=NUM_CLASSES,
            )
            return (
                ViTForImageClassification(config),
                "a transformers ViTForImageClassification",
                1e-3,
            )
    return TinyImageClassifier(), "a stand-in (transformers is not installed)", 3e-3


def logits_loss(out: Any, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out.logits, y)


# ---------------------------------------------------------------------------- the attack


def pick_images(x: Tensor, y: Tensor, target: int) -> tuple[Tensor, Tensor]:
    """The first test image of every class except the target."""
    rows = [int((y == c).nonzero()[0]) for c in range(NUM_CLASSES) if c != target]
    return x[rows], y[rows]


def targeted_sweep(
    model: advkit.Classifier, x: Tensor, y: Tensor, target: int, steps: int
) -> advkit.AttackResult:
    """Targeted BIM at every eps of `EPS` in one call: one copy of the images per eps.

    ``eps`` may be a tensor with one budget per sample, so the sweep is a single
    batched attack; rows ``k * len(x) ... (k + 1) * len(x) - 1`` hold ``EPS[k]``.
    """
    n = len(x)
    eps = torch.tensor(EPS, device=x.device).repeat_interleave(n)
    targets = torch.full((n * len(EPS),), target, device=x.device)  # an explicit target tensor
    # BIM: `steps` gradient steps from the clean image, each of 2.5 * eps / steps in Linf,
    # each followed by a projection onto the eps-ball and the [0, 1] box.
    attack = advkit.BIM(norm="linf", steps=steps)
    return attack(model, x.repeat(len(EPS), 1, 1, 1), y.repeat(len(EPS)), targets=targets, eps=eps)


# ---------------------------------------------------------------------------- attributions


def attributions(model: advkit.Classifier, x: Tensor, classes: Tensor) -> dict[str, Any] | None:
    """Integrated Gradients and Saliency of ``classes`` on ``x``, or None without Captum.

    The advkit wrapper is the function Captum explains: it takes pixels in
    [0, 1] and returns logits, whatever the wrapped network returns.
    """
    try:
        from captum.attr import IntegratedGradients, Saliency
    except ImportError:
        return None
    model.eval()
    x = x.detach().clone().requires_grad_(True)  # Captum differentiates with respect to x
    baseline = torch.zeros_like(x)  # a black image: the digits' background
    ig, delta = IntegratedGradients(model).attribute(
        x, baselines=baseline, target=classes, n_steps=64, return_convergence_delta=True
    )
    # Completeness: the attributions of a sample add up to f(x) - f(baseline) of its class.
    with torch.no_grad():
        gap = (model(x) - model(baseline)).gather(1, classes.unsqueeze(1)).squeeze(1)
    saliency = Saliency(model).attribute(x, target=classes, abs=True)
    return {
        "ig": ig.detach(),
        "saliency": saliency.detach(),
        "relative_delta": (delta.abs() / gap.abs().clamp_min(1e-6)).detach(),
    }


# ---------------------------------------------------------------------------- figures


def _show(
    ax: Any, img: Tensor, title: str, cmap: str = "gray", lim: tuple[float, float] = (0, 1)
) -> None:
    ax.imshow(img.cpu().numpy(), cmap=cmap, vmin=lim[0], vmax=lim[1], interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def grid_figure(
    path: Path, x: Tensor, res: advkit.AttackResult, clean_logits: Tensor, i: int
) -> None:
    """Rows: the eps; columns: clean image, perturbation, adversarial image."""
    plt = pyplot()
    if plt is None:
        print("matplotlib is not installed: skipped the figures.")
        return
    n = len(x)
    p_clean = clean_logits.softmax(1)[i]
    fig, axes = plt.subplots(len(EPS), 3, figsize=(5.2, 1.75 * len(EPS)), squeeze=False)
    for k, e in enumerate(EPS):
        r = k * n + i
        p_adv = res.logits[r].softmax(0)
        c_clean, c_adv = int(p_clean.argmax()), int(p_adv.argmax())
        _show(axes[k, 0], x[i, 0], f"clean: {c_clean} ({p_clean[c_clean]:.0%})")
        _show(
            axes[k, 1], (res.x_adv[r, 0] - x[i, 0]), f"perturbation, eps={e:g}", "RdBu_r", (-e, e)
        )
        _show(axes[k, 2], res.x_adv[r, 0], f"adversarial: {c_adv} ({p_adv[c_adv]:.0%})")
    fig.suptitle(f"Targeted BIM towards {int(res.targets[0])}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def attribution_figure(path: Path, rows: list[tuple[str, Tensor, dict[str, Any], int]]) -> None:
    """One row per (model, clean or adversarial) image: the image, IG and Saliency maps."""
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(len(rows), 3, figsize=(5.4, 1.8 * len(rows)), squeeze=False)
    for r, (title, img, attr, j) in enumerate(rows):
        ig, sal = attr["ig"][j, 0], attr["saliency"][j, 0]
        m = float(ig.abs().max()) or 1.0
        _show(axes[r, 0], img[0], title)
        _show(axes[r, 1], ig, "Integrated Gradients", "RdBu_r", (-m, m))
        _show(axes[r, 2], sal, "Saliency |grad|", "magma", (0, float(sal.max()) or 1.0))
    fig.suptitle("What the model looks at: clean vs adversarial", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = example_parser(__doc__)
    parser.add_argument(
        "--target", type=int, default=3, choices=range(NUM_CLASSES), help="the class to aim at"
    )
    parser.add_argument(
        "--no-transformers",
        action="store_true",
        help="use the stand-in even when transformers is installed",
    )
    args = parser.parse_args(argv)
    device, out_dir = setup(args)
    start = time.perf_counter()
    epochs, steps = (4, 10) if args.quick else (12, 20)

    x_train, y_train, x_test, y_test = load_digits_tensors(seed=args.seed)
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_test, y_test = x_test.to(device), y_test.to(device)

    # The models are built (and initialised) from the seed, then trained.
    torch.manual_seed(args.seed)
    hf_net, hf_name, hf_lr = hugging_face_style_model(use_transformers=not args.no_transformers)
    nets = {  # name: (network, training loss, learning rate, what it returns)
        "Inception-style": (AuxCNN(), aux_loss, 3e-3, "returns AuxOutputs(logits, aux_logits)"),
        "HF-style": (hf_net, logits_loss, hf_lr, f"{hf_name}, returns an object with .logits"),
    }
    x, y = pick_images(x_test, y_test, args.target)
    summary: dict[str, Any] = {"quick": args.quick, "device": str(device), "target": args.target}
    summary["eps"], summary["labels"], summary["models"] = list(EPS), y.tolist(), {}
    attr_rows: list[tuple[str, Tensor, dict[str, Any], int]] = []
    for name, (net, loss, lr, kind) in nets.items():
        net = net.to(device)
        train(net, x_train, y_train, epochs=epochs, seed=args.seed, lr=lr, reset=False, loss=loss)
        # `wrap` finds the logits: the first element of a tuple, or the `.logits` field.
        model = advkit.wrap(net, bounds=(0, 1))
        acc = accuracy(model, x_test, y_test)
        with torch.no_grad():
            clean_logits = model(x)
        res = targeted_sweep(model, x, y, args.target, steps)

        # Per eps: how many images reached the target, and with what confidence.
        n = len(x)
        success = res.success.view(len(EPS), n)
        conf = res.logits.softmax(1)[:, args.target].view(len(EPS), n)
        dist = res.distance.view(len(EPS), n)
        print(f"\n{name}: {kind}; clean test accuracy {acc:.1%}")
        print(f"  targeted BIM ({steps} steps) towards class {args.target}, {n} images per eps:")
        for k, e in enumerate(EPS):
            print(
                f"    eps={e:<5g} reached the target: {int(success[k].sum())}/{n}   "
                f"mean confidence in {args.target}: {float(conf[k].mean()):.0%}   "
                f"largest Linf change: {float(dist[k].max()):.3f}"
            )
        record: dict[str, Any] = {
            "output": kind,
            "clean_accuracy": acc,
            "success_rate": success.double().mean(1).tolist(),
            "target_confidence": conf.mean(1).tolist(),
            "max_distance": dist.max(1).values.tolist(),
        }

        # Attributions of the clean images (for the class they are) and of the adversarial
        # ones at the largest eps (for the class they are now): x_adv goes in as it is.
        last = slice((len(EPS) - 1) * n, len(EPS) * n)
        x_adv, adv_class = res.x_adv[last], res.logits[last].argmax(1)
        a_clean = attributions(model, x, clean_logits.argmax(1))
        a_adv = attributions(model, x_adv, adv_class)
        if a_clean is None or a_adv is None:
            print("  Captum is not installed (pip install 'advkit[explain]'): no attribution maps.")
        else:
            worst = max(
                float(a_clean["relative_delta"].max()), float(a_adv["relative_delta"].max())
            )
            print(
                f"  Integrated Gradients on the clean and the adversarial images: attributions "
                f"add up to f(x) - f(black) within {worst:.1%}"
            )
            record["ig_relative_delta"] = worst
            record["attribution_shape"] = list(a_adv["ig"].shape)
            j = 0  # the first image in the figure
            p_clean, p_adv = clean_logits[j].softmax(0), res.logits[last][j].softmax(0)
            c_clean, c_adv = int(p_clean.argmax()), int(adv_class[j])
            attr_rows += [
                (f"{name}, clean: {c_clean} ({p_clean[c_clean]:.0%})", x[j], a_clean, j),
                (f"eps={EPS[-1]:g}: {c_adv} ({p_adv[c_adv]:.0%})", x_adv[j], a_adv, j),
            ]
        summary["models"][name] = record
        if name == "Inception-style":
            grid_figure(out_dir / "targeted_bim_grid.png", x, res, clean_logits, i=0)

    if attr_rows:
        attribution_figure(out_dir / "targeted_bim_attributions.png", attr_rows)
    summary["seconds"] = time.perf_counter() - start
    write_summary(out_dir / "targeted_bim_explain.json", summary)
    print(f"Total time: {summary['seconds']:.1f} s")
    return summary


if __name__ == "__main__":
    main()
