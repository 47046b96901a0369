"""Attack strength in bf16 vs fp32: robust accuracy at equal budget on the trained digits CNN.

``precision="bf16"`` runs the model's forward and backward passes of every
gradient step under autocast, while the perturbation, the step, the projection
and the loss stay in float32 and the verdict comes from a float32 forward. This
script measures what that costs in strength: robust accuracy of PGD (Linf and
L2) and FGSM at several budgets, fp32 and bf16, same seeds, same batch.

    python benchmarks/precision.py                 # CPU; about a minute on 2 cores
    python benchmarks/precision.py --device cuda

Results go to ``benchmarks/results/precision-<device>-<YYYYMMDD>.json`` and a
Markdown table is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

import advkit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))  # the digits helpers live in examples/
from digits import SmallCNN, accuracy, load_digits_tensors, train  # noqa: E402

CONFIGS: list[tuple[str, str, list[float], dict[str, Any]]] = [
    ("FGSM", "linf", [0.05, 0.1, 0.2], {}),
    ("PGD-20", "linf", [0.05, 0.1, 0.2], {"steps": 20}),
    ("PGD-20", "l2", [0.5, 1.0, 2.0], {"steps": 20}),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    xtr, ytr, xte, yte = load_digits_tensors()
    model = train(SmallCNN(), xtr, ytr).to(dev)
    x, y = xte.to(dev), yte.to(dev)
    clean = accuracy(model, x, y)

    rows = []
    for name, norm, budgets, kw in CONFIGS:
        for eps in budgets:
            acc = {}
            for precision in ("fp32", "bf16"):
                if name == "FGSM":
                    attack: advkit.Attack = advkit.FGSM(norm=norm, eps=eps, precision=precision)  # type: ignore[arg-type]
                else:
                    attack = advkit.PGD(norm=norm, eps=eps, precision=precision, **kw)  # type: ignore[arg-type]
                gen = torch.Generator(device=dev).manual_seed(0)
                acc[precision] = attack(model, x, y, generator=gen).robust_accuracy()
            rows.append(
                {
                    "attack": name,
                    "norm": norm,
                    "eps": eps,
                    "robust_fp32": acc["fp32"],
                    "robust_bf16": acc["bf16"],
                    "difference": acc["bf16"] - acc["fp32"],
                }
            )
    result = {
        "benchmark": "precision",
        "date": dt.date.today().isoformat(),
        "device": str(dev),
        "torch": torch.__version__,
        "advkit": advkit.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "samples": int(y.numel()),
        "clean_accuracy": clean,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"precision-{dev.type}-{dt.date.today():%Y%m%d}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")

    print(f"digits SmallCNN, {y.numel()} test images, clean accuracy {clean:.3f}, device {dev}")
    print("| attack | norm | eps | robust acc. fp32 | robust acc. bf16 | bf16 - fp32 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['attack']} | {r['norm']} | {r['eps']} | {r['robust_fp32']:.3f} "
            f"| {r['robust_bf16']:.3f} | {r['difference']:+.3f} |"
        )
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
