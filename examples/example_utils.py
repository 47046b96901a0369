"""Small helpers shared by the story examples: command line, device, output folder, figures.

Importing this module has no side effects. With ``examples/`` on ``sys.path``::

    from example_utils import example_parser, setup

    parser = example_parser(__doc__)
    args = parser.parse_args()
    device, out_dir = setup(args)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["example_parser", "pyplot", "save_figure", "setup", "write_summary"]

HERE = Path(__file__).resolve().parent
QUICK_ENV = "ADVKIT_EXAMPLES_QUICK"
OUT_ENV = "ADVKIT_EXAMPLES_OUT"


def example_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every story example takes: ``--quick``, ``--device``, ``--seed``, ``--out``."""
    parser = argparse.ArgumentParser(
        description=(doc or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get(QUICK_ENV, "") not in ("", "0"),
        help=f"a reduced run (fewer epochs, images and steps), also set by {QUICK_ENV}=1",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="'auto' (a GPU when there is one, else the CPU), 'cpu', 'cuda', 'cuda:1', ...",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data split, models, attacks"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"folder for figures and the JSON summary (default ${OUT_ENV} or examples/output)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch; the examples' models are tiny, where more threads only "
        "spin (0: torch's default)",
    )
    return parser


def setup(args: argparse.Namespace) -> tuple[torch.device, Path]:
    """Pick the device, set the CPU threads, create the output folder."""
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = args.out or Path(os.environ.get(OUT_ENV) or HERE / "output")
    out.mkdir(parents=True, exist_ok=True)
    return device, out


def pyplot() -> Any:
    """matplotlib's pyplot with a file-only backend, or ``None`` when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Save a figure as a small PNG and close it."""
    fig.savefig(path, dpi=100)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    print(f"Wrote {_shown(path)}")


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """The numbers an example measured, as JSON (the tests read them back)."""
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"Wrote {_shown(path)}")


def _shown(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel
