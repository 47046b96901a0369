"""Evaluating a defended model: a certified 1-Lipschitz classifier next to an ordinary CNN.

Run from the repository root (no download needed):

    python examples/lipschitz_defence.py           # full run
    python examples/lipschitz_defence.py --quick   # reduced run (what the tests run)
    python examples/lipschitz_defence.py --device cuda

The idea. If a network's logits move by at most ``L * ||dx||_2`` when its input
moves by ``dx`` (``L`` is its Lipschitz constant in the L2 norm), then every
difference of two logits ``f_y - f_k`` moves by at most ``sqrt(2) * L * ||dx||_2``.
A correctly classified input whose top logit beats the runner-up by ``margin``
therefore keeps its class inside the L2 ball of radius

    certified radius = margin / (sqrt(2) * L)

and no attack, however strong, can find an adversarial example closer than
that: the certificate is a *lower* bound of the distance to the nearest
adversarial, and every adversarial an attack finds is an *upper* bound.

What the example does, on scikit-learn's 8x8 digits (pixels in [0, 1]):

1. trains a 1-Lipschitz network (weight matrices kept orthogonal by
   ``torch.nn.utils.parametrizations.orthogonal``, the norm-preserving GroupSort
   activation, and a hinge-Kantorovich-Rubinstein loss as in Serrurier et al.,
   "Achieving robustness in classification using optimal transport with hinge
   regularization", CVPR 2021) and an ordinary CNN (``digits.SmallCNN``,
   cross-entropy);
2. bounds each model's Lipschitz constant by the product of its layers' operator
   norms, and computes every test image's certified radius;
3. attacks both with ``advkit.evaluate``: DeepFool and Carlini-Wagner (minimal
   L2 perturbation per image), FGM and PGD (fixed L2 budgets), each attack on
   every image (``independent=True``), the worst case per image over all four;
4. prints certified and empirical robust accuracy per eps, and checks that no
   attack found an adversarial inside a certified ball (the script fails if one
   did: the certificate or the bound on L would be wrong);
5. plots both curves for both models: ``lipschitz_defence.png`` in the output
   folder (``examples/output/`` or ``$ADVKIT_EXAMPLES_OUT``), next to
   ``lipschitz_defence.json`` with every number.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal
from torch.utils.data import TensorDataset

import advkit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `python examples/...`
from digits import NUM_CLASSES, SmallCNN, load_digits_tensors, train
from example_utils import example_parser, pyplot, save_figure, setup, write_summary

# L2 budgets in pixel space (an 8x8 image in [0, 1] has L2 norm up to 8).
EPS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.25, 1.5)
EPS_QUICK = (0.0, 0.25, 0.5, 0.75, 1.0)
# Slack for float32 rounding in "no attack beats the certificate" (distances are ~0.1-2).
TOLERANCE = 1e-4


# ---------------------------------------------------------------------------- the 1-Lipschitz model


class GroupSort2(nn.Module):
    """GroupSort with groups of two ("MaxMin", Anil et al. 2019): sorts each pair of features.

    It only permutes its inputs, so it is 1-Lipschitz and keeps the gradient's
    norm, unlike ReLU, which zeroes part of it and wastes the Lipschitz budget.
    """

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.unflatten(1, (-1, 2)).unbind(2)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


def lipschitz_mlp(in_features: int = 64, width: int = 128, depth: int = 3) -> nn.Sequential:
    """A 1-Lipschitz MLP: orthogonal linear layers and GroupSort2 activations.

    ``orthogonal`` re-parametrizes each weight matrix so that it stays
    (semi-)orthogonal during training (singular values all 1, hence operator
    norm 1); the Cayley map is much cheaper than the default matrix exponential.
    """
    layers: list[nn.Module] = [nn.Flatten()]
    d = in_features
    for _ in range(depth):
        layers += [orthogonal(nn.Linear(d, width), orthogonal_map="cayley"), GroupSort2()]
        d = width
    layers.append(orthogonal(nn.Linear(d, NUM_CLASSES), orthogonal_map="cayley"))
    return nn.Sequential(*layers)


def freeze(model: nn.Module) -> nn.Module:
    """Replace each orthogonal parametrization by the matrix it gives (after training).

    The network computes the same function, and a forward pass no longer
    re-computes the orthogonal matrices: attacks run several times faster.
    """
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


def hkr_loss(margin: float = 1.0, alpha: float = 10.0) -> Callable[[Tensor, Tensor], Tensor]:
    """Multi-class hinge-Kantorovich-Rubinstein loss (one output per class, one-vs-all).

    ``alpha * hinge - KR``: the hinge term asks every logit to be on the right
    side of ``+-margin / 2`` (so the top logit beats every other by ``margin``,
    a certified radius of ``margin / sqrt(2)`` for a 1-Lipschitz model); the
    KR term pushes each class's logit up on its own images and down on the
    others' (the dual of the Wasserstein-1 distance between the two sets).
    """

    def loss(logits: Tensor, y: Tensor) -> Tensor:
        own = nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype)
        sign = 2 * own - 1  # +1 on the true class, -1 elsewhere
        hinge = torch.relu(margin / 2 - sign * logits).sum(dim=1).mean()
        mean_own = (logits * own).sum(0) / own.sum(0).clamp_min(1)
        mean_other = (logits * (1 - own)).sum(0) / (1 - own).sum(0).clamp_min(1)
        return alpha * hinge - (mean_own - mean_other).mean()

    return loss


# ---------------------------------------------------------------------------- the certificate


def _conv_norm(conv: nn.Conv2d, size: tuple[int, int]) -> float:
    """Exact operator norm of a circular convolution that contains ``conv`` (an upper bound).

    A zero-padded convolution over an ``h x w`` input is a crop of the circular
    convolution over the padded ``(h + 2p) x (w + 2p)`` grid, and a stride only
    drops outputs, so neither can have a larger norm. The circular one is
    diagonalised by the 2-D Fourier transform: its norm is the largest singular
    value of the ``C_out x C_in`` kernel transform over all frequencies
    (Sedghi, Gupta & Long, "The singular values of convolutional layers", ICLR 2019).
    """
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        raise TypeError(f"no bound implemented for {conv}: groups, dilation or padding mode")
    if isinstance(conv.padding, str):
        raise TypeError(f"no bound implemented for {conv}: give padding as numbers")
    grid = (size[0] + 2 * conv.padding[0], size[1] + 2 * conv.padding[1])
    spectrum = torch.fft.fft2(conv.weight.detach().double(), s=grid)  # (C_out, C_in, H, W)
    return float(torch.linalg.matrix_norm(spectrum.permute(2, 3, 0, 1), ord=2).max())


def lipschitz_bound(model: nn.Module, example: Tensor) -> float:
    """An upper bound of the L2 Lipschitz constant of a plain chain of layers.

    The product of the layers' own bounds: linear and convolution layers by
    their operator norm, BatchNorm (in eval mode) by its largest scale,
    advkit's normalization by ``1 / std``; ReLU, GroupSort, flattening and
    non-overlapping max-pooling are 1-Lipschitz. Valid for networks that apply
    their layers one after the other (no skip connections); an unknown layer
    raises. ``example`` (one input) gives the convolutions' input sizes.
    """
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(mod: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
        sizes[mod] = (inputs[0].shape[-2], inputs[0].shape[-1])

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks = [m.register_forward_hook(record) for m in convs]
    with torch.no_grad():
        model.eval()(example[:1])
    for h in hooks:
        h.remove()

    bound = 1.0
    for m in model.modules():
        if type(m).__module__.startswith("torch.nn.utils.parametriz"):
            continue  # the orthogonal parametrization's internals: the weight is read below
        if isinstance(m, nn.Linear):
            bound *= float(torch.linalg.matrix_norm(m.weight.detach().double(), ord=2))
        elif isinstance(m, nn.Conv2d):
            bound *= _conv_norm(m, sizes[m])
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.running_var is None:
                raise TypeError(f"{m} keeps no running statistics: no bound in eval mode")
            scale = 1 / torch.sqrt(m.running_var.double() + m.eps)
            if m.weight is not None:
                scale = scale * m.weight.detach().double()
            bound *= float(scale.abs().max())
        elif isinstance(m, advkit.Classifier):
            if m.std is not None:
                bound /= float(m.std.min())
        elif isinstance(m, nn.MaxPool2d):
            if m.stride != m.kernel_size or m.padding != 0 or m.dilation != 1:
                raise TypeError(f"no bound implemented for overlapping pooling {m}")
        elif isinstance(m, (nn.ReLU, GroupSort2, nn.Flatten, nn.Identity, nn.Sequential)):
            pass
        elif not list(m.children()):  # a layer this function does not know
            raise TypeError(f"no Lipschitz bound implemented for {type(m).__name__}")
    return bound


@torch.no_grad()
def certified_radius(model: nn.Module, x: Tensor, y: Tensor, lipschitz: float) -> Tensor:
    """``margin / (sqrt(2) L)`` per sample; 0 where the model is already wrong."""
    logits = model(x)
    top2 = logits.topk(2, dim=1)
    margin = top2.values[:, 0] - top2.values[:, 1]
    correct = top2.indices[:, 0] == y
    return torch.where(correct, margin / (math.sqrt(2) * lipschitz), torch.zeros_like(margin))


# ---------------------------------------------------------------------------- the evaluation


def evaluate_model(
    name: str,
    model: advkit.Classifier,
    x: Tensor,
    y: Tensor,
    eps: Sequence[float],
    attacks: dict[str, advkit.Attack],
    seed: int,
) -> dict[str, Any]:
    """Certificate, attacks and the check for one model; returns its numbers."""
    lipschitz = lipschitz_bound(model, x)
    cert = certified_radius(model, x, y, lipschitz).double().cpu()
    report = advkit.evaluate(
        model,
        TensorDataset(x.cpu(), y.cpu()),
        attacks,
        eps=eps,
        batch_size=512,
        seed=seed,
        independent=True,  # every attack on every image: each one's distances are known
        progress=False,
    )
    cert = cert[report.indices]
    certified = [float(((cert > e) & report.correct).double().mean()) for e in report.eps]
    empirical = report.robust_accuracy()  # worst case over the four attacks, per eps

    # The check: every adversarial any attack found lies outside the certified ball.
    closest = math.inf
    violations = 0
    found_total = 0
    for attack in attacks:
        d = report.distances[attack]  # (N,) or (N, E); inf: none found; nan: not run
        c = cert if d.ndim == 1 else cert.unsqueeze(1).expand_as(d)
        found = torch.isfinite(d) & (c > 0)
        found_total += int(found.sum())
        violations += int((d[found] < c[found] - TOLERANCE).sum())
        if bool(found.any()):
            closest = min(closest, float((d[found] / c[found]).min()))
    print(
        f"\n{name}: clean accuracy {report.clean_accuracy:.1%}, Lipschitz constant "
        f"L <= {lipschitz:#.4g}"
    )
    print(f"  {'L2 eps':>8} {'certified':>10} {'empirical':>10}   (robust accuracy)")
    for e, c_acc, e_acc in zip(report.eps, certified, empirical, strict=True):
        print(f"  {e:8.3f} {c_acc:10.1%} {e_acc:10.1%}")
    per_attack = ", ".join(
        f"{a} {report.robust_accuracy(a)[report.eps.index(0.5)]:.1%}"
        for a in attacks
        if 0.5 in report.eps
    )
    if per_attack:
        print(f"  each attack alone at eps=0.5: {per_attack}")
    verdict = "OK" if violations == 0 else f"FAILED ({violations} adversarials inside)"
    print(
        f"  check: no attack beats the certificate: {found_total} adversarials found, "
        f"smallest distance / certified radius = {closest:.3f} -> {verdict}"
    )
    return {
        "clean_accuracy": report.clean_accuracy,
        "lipschitz_bound": lipschitz,
        "eps": list(report.eps),
        "certified_accuracy": certified,
        "empirical_accuracy": empirical,
        "attack_accuracy": {a: report.robust_accuracy(a) for a in attacks},
        "certified_radius": cert.tolist(),
        "distances": {
            a: [None if v != v else v for v in report.distances[a].flatten().tolist()]
            for a in attacks
        },
        "adversarials_found": found_total,
        "closest_ratio": closest,
        "violations": violations,
        "seconds": report.seconds,
    }


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Robust accuracy against eps: attacks (solid) and certificate (dashed), per model."""
    plt = pyplot()
    if plt is None:
        print("matplotlib is not installed: skipped the figure.")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, r), color in zip(results.items(), ("tab:blue", "tab:red"), strict=False):
        label = f"{name}: attacks (upper bound)"
        ax.plot(r["eps"], r["empirical_accuracy"], "-o", color=color, ms=3, label=label)
        # The certified accuracy is known at every eps: the share of radii above it.
        cert = torch.tensor(r["certified_radius"])
        fine = torch.linspace(0, max(r["eps"]), 301)
        curve = (cert.unsqueeze(0) > fine.unsqueeze(1)).double().mean(dim=1)
        label = f"{name}: certified (lower bound)"
        ax.plot(fine.numpy(), curve.numpy(), "--", color=color, label=label)
    ax.set_xlabel("eps (L2 norm, pixel space)")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Certified vs empirical robustness on 8x8 digits", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = example_parser(__doc__)
    args = parser.parse_args(argv)
    device, out_dir = setup(args)
    start = time.perf_counter()

    quick = args.quick
    eps = EPS_QUICK if quick else EPS
    lip_epochs, cnn_epochs, n_test = (6, 3, 100) if quick else (20, 10, None)
    cw_steps, cw_rounds, pgd_steps = (20, 3, 10) if quick else (100, 6, 20)

    x_train, y_train, x_test, y_test = load_digits_tensors(seed=args.seed)
    if n_test is not None:
        x_test, y_test = x_test[:n_test], y_test[:n_test]
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_test, y_test = x_test.to(device), y_test.to(device)

    # 1. Train both models. The 1-Lipschitz one sees raw pixels: a normalization by std < 1
    # would multiply its Lipschitz constant by 1 / std.
    torch.manual_seed(args.seed)  # the orthogonal layers are initialised when built
    lip = lipschitz_mlp().to(device)
    train(lip, x_train, y_train, epochs=lip_epochs, seed=args.seed, reset=False, loss=hkr_loss())
    freeze(lip)
    cnn = train(SmallCNN().to(device), x_train, y_train, epochs=cnn_epochs, seed=args.seed)
    models = {
        "1-Lipschitz MLP": advkit.wrap(lip, bounds=(0, 1)),
        "SmallCNN": advkit.wrap(cnn, bounds=(0, 1)),
    }
    print(
        f"Trained both models on {len(x_train)} digits in {time.perf_counter() - start:.1f} s; "
        f"evaluating {len(x_test)} test images on {device}."
    )

    # 2-4. Certificates, attacks and the check, per model. Minimal-norm attacks (DeepFool,
    # CW) give each image's distance to the nearest adversarial they find, one run for every
    # eps; fixed-budget attacks (FGM: one L2 gradient step; PGD) run once per eps. All in L2,
    # in pixel space: the model's wrapper says the inputs live in [0, 1].
    attacks = {
        "DeepFool": advkit.DeepFool(norm="l2"),
        # CW's lr is in tanh space, where pixels at exactly 0 or 1 (most of a digit) sit on
        # the flat ends: the paper's lr=0.01 barely moves them in 100 steps.
        "CW": advkit.CW(steps=cw_steps, search_steps=cw_rounds, initial_const=0.1, lr=0.05),
        "FGM": advkit.FGSM(norm="l2"),
        "PGD": advkit.PGD(norm="l2", steps=pgd_steps),
    }
    results = {
        name: evaluate_model(name, m, x_test, y_test, eps, attacks, args.seed)
        for name, m in models.items()
    }

    # 5. The figure and the numbers.
    plot(results, out_dir / "lipschitz_defence.png")
    summary = {"quick": quick, "device": str(device), "models": results}
    summary["seconds"] = time.perf_counter() - start
    write_summary(out_dir / "lipschitz_defence.json", summary)
    print(f"Total time: {summary['seconds']:.1f} s")
    if any(r["violations"] for r in results.values()):
        raise SystemExit("an attack beat the certificate: the Lipschitz bound is wrong")
    return summary


if __name__ == "__main__":
    main()
