"""A small export that tests run in separate processes (SIGKILL + resume, and 2-rank gloo).

    python tests/_io_worker.py OUT [--delay SECONDS] [--rank R --world W --init URL]

Prints the `ExportReport` counts as JSON on the last line of stdout. The test
module imports `setup` and `run` from here so that in-process and
out-of-process exports use the very same model, data and attack.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `tests` importable like under pytest
    sys.path.insert(0, str(ROOT))

import advkit  # noqa: E402
from advkit import io as advio  # noqa: E402

N, SHARD, BATCH, CLASSES = 45, 8, 3, 4  # 6 shards, the last one of 5 samples


class Data(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``N`` seeded 1x4x4 images in [0, 1]; ``delay`` seconds per item slows an export down."""

    def __init__(self, n: int = N, delay: float = 0.0) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, 4, 4, generator=g)
        self.y = torch.randint(0, CLASSES, (n,), generator=g)
        self.delay = delay

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.delay:
            time.sleep(self.delay)
        return self.x[i], self.y[i]


def make_model() -> advkit.Classifier:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, CLASSES))
    return advkit.wrap(net.eval(), bounds=(0, 1), mean=0.5, std=0.25)


# A lambda objective with a set constant (iterated in hash order): its fingerprint must not
# depend on the process (see test_callable_fingerprints_are_the_same_in_every_process).
SET_OBJECTIVE = lambda z, y, t: advkit.objectives.margin(z, y, t) * (  # noqa: E731
    2.0 if str(z.dtype) in {"torch.float32", "torch.float64", "torch.bfloat16"} else 1.0
)


def make_attack() -> advkit.PGD:
    return advkit.PGD(norm="l2", eps=0.6, steps=4, step_size=0.2)


def run(out: Path | str, *, delay: float = 0.0, **overrides: Any) -> advio.ExportReport:
    """The reference export: random start and random targets, both keyed by dataset index."""
    kwargs: dict[str, Any] = {
        "batch_size": BATCH,
        "shard_size": SHARD,
        "targets": advkit.targets.random(),
        "seed": 5,
    }
    kwargs.update(overrides)
    return advio.export(make_model(), Data(delay=delay), make_attack(), out, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--init", default=None, help="init_method of a gloo process group")
    args = parser.parse_args()
    torch.set_num_threads(1)  # two ranks on two cores: more threads only spin
    if args.init is not None:
        import torch.distributed as dist

        dist.init_process_group(
            "gloo", init_method=args.init, rank=args.rank, world_size=args.world
        )
    try:
        report = run(args.out, delay=args.delay)
    finally:
        if args.init is not None:
            dist.destroy_process_group()
    print(
        json.dumps(
            {
                "written": report.shards_written,
                "reused": report.shards_reused,
                "success": report.success_count,
            }
        )
    )


if __name__ == "__main__":
    main()
