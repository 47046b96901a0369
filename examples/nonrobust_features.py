"""Non-robust features (Ilyas et al., NeurIPS 2019) on scikit-learn's digits, end to end.

Run from the repository root (no download needed; about 15 s on one CPU core):

    python examples/nonrobust_features.py           # full run
    python examples/nonrobust_features.py --quick   # smoke test, a few seconds

1. Train a small CNN on the digits' training split.
2. Attack every *training* image with a targeted L2 PGD toward ``(y + 1) % 10``
   (``advkit.targets.shift(1)``; 100 steps of 0.1, eps measured in pixel space)
   and save the adversarial set with ``advkit.io.export`` (safetensors shards +
   a JSON manifest; run the script again after a crash and it resumes from the
   shards already on disk, or returns at once if the export is complete).
3. Load it back with ``advkit.io.AdversarialDataset(path, relabel="target")``:
   every image is labelled with its *target* class, and keep the images that
   reached it (the stored ``success`` field).
4. Train a fresh CNN on that relabelled set only and evaluate it on the clean
   test set. Its labels are "wrong" for the robust content of the images (a
   perturbed "3" labelled "4"); accuracy far above chance (10%) means that the
   perturbations carry features of the target class that generalise to clean
   images: "non-robust features".

How much do the images still look like their original class? A 5-nearest-
neighbour classifier on the clean training pixels, a crude stand-in for a
human, is reported too. On 8x8 digits the perturbation needed to reach a
target is a large fraction of the image: with ``--eps 2`` most adversarial
images already *look like* the target digit to the nearest-neighbour test and
the experiment says little; the default eps keeps most of them looking like
their original class. A grid of clean training images and their adversarial
versions is written to ``examples/output/nonrobust_features.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset, TensorDataset

import advkit
from advkit import io as advio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `python examples/...`
from digits import SmallCNN, accuracy, load_digits_tensors, train

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "output"


def knn_predict(x: Tensor, own: Tensor, x_ref: Tensor, y_ref: Tensor, k: int = 5) -> Tensor:
    """Majority label of the ``k`` nearest reference images in pixel space (L2).

    ``own[i]`` is the index in ``x_ref`` of the clean image ``x[i]`` was made
    from; it is left out, so that each image is judged by the *other* images.
    """
    dist = torch.cdist(x.flatten(1), x_ref.flatten(1))
    dist[torch.arange(x.shape[0]), own] = torch.inf
    return y_ref[dist.topk(k, largest=False).indices].mode(dim=1).values


def save_grid(
    path: Path, clean: torch.Tensor, adv: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor
) -> bool:
    """Two rows per group: clean images with their label, adversarial ones with their target."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = clean.shape[0]
    fig, axes = plt.subplots(2, cols, figsize=(1.2 * cols, 2.9), squeeze=False)
    for c in range(cols):
        for r, (img, name) in enumerate(
            ((clean[c, 0], f"label {int(labels[c])}"), (adv[c, 0], f"as {int(targets[c])}"))
        ):
            ax = axes[r, c]
            ax.imshow(img.numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("clean", fontsize=9)
    axes[1, 0].set_ylabel("adversarial", fontsize=9)
    fig.suptitle("Training images and their relabelled adversarial versions", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (smoke test)")
    parser.add_argument("--eps", type=float, default=1.25, help="L2 radius in pixel space")
    parser.add_argument(
        "--keep",
        choices=("success", "all"),
        default="success",
        help="train on the images that reached their target (default) or on all of them",
    )
    parser.add_argument("--steps", type=int, default=100, help="PGD steps")
    parser.add_argument("--step-size", type=float, default=0.1, help="PGD step size (L2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of split, models and attack")
    parser.add_argument("--data", type=Path, default=None, help="directory of the exported set")
    parser.add_argument("--out", type=Path, default=None, help="path of the PNG grid")
    args = parser.parse_args(argv)
    # An 8x8 CNN is too small to gain from intra-op threads; on a busy machine extra threads
    # only spin (ten times slower measured on 2 shared cores).
    torch.set_num_threads(1)
    start = time.perf_counter()

    x_train, y_train, x_test, y_test = load_digits_tensors(seed=args.seed)
    epochs, steps, n_train = (3, 10, 256) if args.quick else (10, args.steps, None)
    if n_train is not None:
        x_train, y_train = x_train[:n_train], y_train[:n_train]
    suffix = "_quick" if args.quick else ""
    data_dir = args.data or OUTPUT / f"nonrobust_digits{suffix}"
    out = args.out or OUTPUT / "nonrobust_features.png"

    # 1. a standard classifier; the wrapper says pixels live in [0, 1] (eps is measured there)
    net = train(SmallCNN(), x_train, y_train, epochs=epochs, seed=args.seed)
    model = advkit.wrap(net, bounds=(0, 1))
    print(
        f"1. SmallCNN trained on {len(x_train)} digits: clean test accuracy "
        f"{accuracy(model, x_test, y_test):.1%}"
    )

    # 2. targeted L2 PGD toward (y + 1) % 10 on the whole training set, saved to disk
    attack = advkit.PGD(norm="l2", eps=args.eps, steps=steps, step_size=args.step_size)
    t0 = time.perf_counter()
    report = advio.export(
        model,
        TensorDataset(x_train, y_train),
        attack,
        data_dir,
        batch_size=256,
        shard_size=512,
        targets=advkit.targets.shift(1),
        seed=args.seed,
    )
    reused = f" ({report.shards_reused} shards reused from an earlier run)" * bool(
        report.shards_reused
    )
    print(
        f"2. {attack!r} toward (y + 1) % 10: {report.success_rate:.1%} of the "
        f"{report.num_samples} training images reach their target; saved {report.num_shards} "
        f"shard(s) to {os.path.relpath(data_dir)} in {time.perf_counter() - t0:.1f} s{reused}"
    )

    # 3. load it back, labelled with the targets (no pickle: safetensors + JSON)
    adv_set = advio.AdversarialDataset(data_dir, relabel="target")
    reached = adv_set.column("success")
    keep = reached if args.keep == "success" else torch.ones_like(reached)
    kept = Subset(adv_set, keep.nonzero().flatten().tolist())
    x_adv, t = next(iter(DataLoader(kept, batch_size=len(kept))))
    own = adv_set.column("index")[keep]  # dataset index of each kept image's clean source
    looks = float((knn_predict(x_adv, own, x_train, y_train) == y_train[own]).float().mean())
    print(
        f"3. loaded {len(adv_set)} adversarial images labelled with their targets; kept "
        f"{len(kept)} ({args.keep}). A 5-nearest-neighbour classifier on the other clean "
        f"training images still reads {looks:.0%} of them as their original class"
    )

    # 4. a fresh model trained only on the relabelled adversarial images
    fresh = train(SmallCNN(), x_adv, t, epochs=epochs, seed=args.seed + 1)
    acc = accuracy(fresh, x_test, y_test)
    print(
        f"4. fresh SmallCNN trained on those images with target labels: clean test "
        f"accuracy {acc:.1%} (chance: 10%)"
    )

    x_all, t_all = next(iter(DataLoader(adv_set, batch_size=len(adv_set))))
    if save_grid(out, x_train[:10], x_all[:10], y_train[:10], t_all[:10]):
        print(f"Wrote the image grid to {os.path.relpath(out)}")
    else:
        print("matplotlib is not installed: skipped the image grid.")
    print(f"Total time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
