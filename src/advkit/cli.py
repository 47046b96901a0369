"""The ``advkit`` command line: ``advkit eval`` measures a model's robustness over a dataset.

Example::

    advkit eval --model nets.py:build_model --weights ckpt.pt --data data.py:test_set \\
        --attack fgsm --attack pgd:steps=20 --norm linf --eps 2/255,4/255,8/255 \\
        --json report.json --plot curve.png

The same command runs on several processes with ``torchrun --nproc_per_node=N -m advkit
eval ...``. Everything it does is one call of `advkit.evaluate`; the Python API
offers more (any attack object, custom objectives, a report object to inspect).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from advkit import objectives
from advkit.attacks import Attack
from advkit.attacks.registry import by_cli_name
from advkit.checks import AdvkitError, ConfigError
from advkit.distributed import init_from_env, is_main, shutdown
from advkit.evaluation import evaluate
from advkit.models import Classifier, wrap

__all__ = ["ATTACKS", "main", "parse_attack", "parse_eps", "parse_number"]

ATTACKS: dict[str, Callable[..., Attack]] = by_cli_name()
"""The attacks ``--attack`` knows, by name (from `advkit.attacks.registry`)."""

_OBJECTIVES = {
    "cross_entropy": objectives.cross_entropy,
    "margin": objectives.margin,
    "dlr": objectives.dlr,
}


def parse_number(text: str) -> float:
    """A float from ``"0.03"``, ``"1e-2"`` or a fraction such as ``"8/255"``.

    Examples:
        >>> parse_number("8/255") == 8 / 255, parse_number("0.5")
        (True, 0.5)
    """
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{text!r} is not a number; write e.g. 0.03, 1e-2 or 8/255.") from None
    if not math.isfinite(value):
        raise ConfigError(f"{text!r} is not a finite number.")
    return value


def parse_eps(values: Sequence[str]) -> list[float]:
    """Budgets from command-line words, each a number or a comma-separated list.

    Examples:
        >>> parse_eps(["0", "2/255,4/255"]) == [0.0, 2 / 255, 4 / 255]
        True
    """
    out = [parse_number(p) for v in values for p in v.split(",") if p.strip()]
    if not out:
        raise ConfigError("--eps needs at least one value, e.g. --eps 8/255 or --eps 0.1,0.2.")
    return out


_WORDS = {"version", "precision", "compile"}
"""Options whose values are words (``version=fast``, ``precision=bf16``,
``compile=reduce-overhead``; ``compile=true`` / ``false`` too)."""


def _parse_value(key: str, text: str) -> Any:
    low = text.strip().lower()
    if key == "compile" and low in ("true", "false"):
        return low == "true"
    if key in _WORDS:
        return low
    if key == "objective":
        if low not in _OBJECTIVES:
            raise ConfigError(f"objective={text!r}: choose one of {sorted(_OBJECTIVES)}.")
        return _OBJECTIVES[low]
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low == "none":
        return None
    try:
        return int(low)
    except ValueError:
        return parse_number(text)


def parse_attack(spec: str, norm: str) -> tuple[str, Attack]:
    """An attack from ``NAME`` or ``NAME:key=value,key=value`` (values: numbers, fractions,
    true/false, none; ``objective=margin``; words for ``version``, ``precision`` and
    ``compile``, e.g.
    ``autoattack:version=fast``), in the threat model ``norm``.

    Returns:
        ``(label, attack)``, the label being the spec itself.

    Examples:
        >>> parse_attack("pgd:steps=20,step_size=1/255", "linf")[1]
        PGD(norm='linf', eps=None, steps=20, step_size=0.00392156862745098, random_init=True, restarts=1, early_stop=False)
    """
    name, _, rest = spec.partition(":")
    cls = ATTACKS.get(name.strip().lower())
    if cls is None:
        raise ConfigError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}.")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"attack option {item!r} must read key=value, e.g. steps=20.")
        if key.strip() == "norm":
            raise ConfigError("set the threat model of every attack with --norm, not per attack.")
        kwargs[key.strip()] = _parse_value(key.strip(), value)
    try:
        return spec, cls(norm=norm, **kwargs)
    except TypeError as e:
        raise ConfigError(f"--attack {spec!r}: {e}") from None


def _load_callable(spec: str, what: str) -> Callable[[], Any]:
    """``path/to/file.py:function`` or ``package.module:function``."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(
            f"--{what} {spec!r} must read path/to/file.py:function or package.module:function."
        )
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"--{what}: no such file {target!r}.")
        name = f"_advkit_cli_{what}_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigError(f"--{what}: cannot import {target!r}.")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module  # lets pickling (DataLoader workers) find its classes
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ConfigError(f"--{what}: cannot import module {target!r} ({e}).") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"--{what}: {target!r} has no function {attr!r}.")
    return fn  # type: ignore[no-any-return]


def _load_model(args: argparse.Namespace) -> nn.Module:
    model = _load_callable(args.model, "model")()
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"--model {args.model!r} returned a {type(model).__name__}, not an nn.Module."
        )
    if args.weights is not None:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ConfigError(
                f"--weights {args.weights!r} holds a {type(state).__name__}; save the model's "
                "state_dict: torch.save(model.state_dict(), path)."
            )
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"--weights {args.weights!r} do not fit the model: {e}") from None
    options = args.bounds is not None or args.mean is not None or args.std is not None
    if isinstance(model, Classifier):
        if options:
            raise ConfigError(
                "--model already returns an advkit Classifier with its own bounds and "
                "normalization; drop --bounds/--mean/--std."
            )
        return model
    bounds = (0.0, 1.0) if args.bounds is None else (args.bounds[0], args.bounds[1])
    return wrap(model, bounds=bounds, mean=args.mean, std=args.std)


def _load_data(spec: str) -> Dataset[Any]:
    if spec.endswith((".pt", ".pth")) and Path(spec).is_file():
        obj = torch.load(spec, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and "x" in obj and "y" in obj:
            obj = (obj["x"], obj["y"])
        if (
            isinstance(obj, (tuple, list))
            and len(obj) == 2
            and all(isinstance(t, torch.Tensor) for t in obj)
        ):
            return TensorDataset(obj[0], obj[1])
        raise ConfigError(
            f"--data {spec!r} must hold two tensors: torch.save((x, y), path) or "
            "torch.save({'x': x, 'y': y}, path)."
        )
    data = _load_callable(spec, "data")()
    if not isinstance(data, Dataset):
        raise ConfigError(f"--data {spec!r} returned a {type(data).__name__}, not a Dataset.")
    return data


def _floats(text: str) -> float:
    try:
        return parse_number(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``advkit`` command."""
    parser = argparse.ArgumentParser(
        prog="advkit", description="Adversarial robustness tools (advkit)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser(
        "eval",
        help="clean and robust accuracy of a model over a dataset",
        description=(
            "Clean accuracy, robust accuracy per attack and eps and the per-sample worst case "
            "over the attacks (each attack runs only on the samples still robust). Runs under "
            "torchrun as well: torchrun --nproc_per_node=N -m advkit eval ..."
        ),
    )
    ev.add_argument("--model", required=True, metavar="FILE.py:FUNC",
                    help="function (no arguments) returning the nn.Module; also package.module:func")  # fmt: skip
    ev.add_argument("--weights", metavar="PATH",
                    help="state_dict saved with torch.save, loaded with weights_only=True")  # fmt: skip
    ev.add_argument("--data", required=True, metavar="SPEC",
                    help="FILE.py:FUNC returning a map-style Dataset of (x, y), or a .pt file "
                    "holding (x, y) tensors")  # fmt: skip
    ev.add_argument("--attack", action="append", metavar="NAME[:k=v,...]",
                    help=f"repeatable, in order; NAME in {sorted(ATTACKS)}; e.g. "
                    "pgd:steps=20,restarts=2 (default: pgd)")  # fmt: skip
    ev.add_argument("--norm", default="linf", choices=["linf", "l2", "l1"],
                    help="threat model of every attack (default linf)")  # fmt: skip
    ev.add_argument("--eps", required=True, nargs="+", metavar="EPS",
                    help="budgets in input space: numbers, fractions, comma lists (8/255,16/255)")  # fmt: skip
    ev.add_argument("--bounds", nargs=2, type=_floats, metavar=("LOW", "HIGH"),
                    help="input box of the model (default 0 1)")  # fmt: skip
    ev.add_argument("--mean", nargs="+", type=_floats, help="per-channel normalization mean")
    ev.add_argument("--std", nargs="+", type=_floats, help="per-channel normalization std")
    ev.add_argument("--batch-size", type=int, default=128)
    ev.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    ev.add_argument("--device", help="cuda or cpu (default cuda when available)")
    ev.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    ev.add_argument("--limit", type=int, metavar="N", help="evaluate the first N samples only")
    ev.add_argument("--independent", action="store_true",
                    help="run every attack on every correctly classified sample")  # fmt: skip
    ev.add_argument("--no-diagnostics", action="store_true",
                    help="skip the checks for gradient masking, randomness and probability "
                    "outputs (advkit.diagnose) that the report shows by default")  # fmt: skip
    ev.add_argument("--diagnostic-samples", type=int, default=64, metavar="N",
                    help="how many samples (the first of the dataset) the diagnostics look at")  # fmt: skip
    ev.add_argument("--verdict-draws", type=int, default=1, metavar="K",
                    help="randomized models: decide the clean prediction and each attack's "
                    "success over K forward passes, by a strict majority (default 1)")  # fmt: skip
    ev.add_argument("--json", metavar="PATH", help="write the report as JSON")
    ev.add_argument(
        "--no-records", action="store_true", help="leave per-sample records out of --json"
    )
    ev.add_argument("--plot", metavar="PATH", help="save robust accuracy vs eps (needs matplotlib)")
    ev.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar on stderr (default: when tqdm is installed and stderr is a terminal)")  # fmt: skip
    ev.set_defaults(func=_run_eval)
    return parser


def _run_eval(args: argparse.Namespace) -> int:
    eps = parse_eps(args.eps)
    attacks = dict(parse_attack(s, args.norm) for s in (args.attack or ["pgd"]))
    device = init_from_env(args.device)
    try:
        model = _load_model(args).to(device)
        data = _load_data(args.data)
        if args.limit is not None:
            data = Subset(data, range(min(args.limit, len(data))))  # type: ignore[arg-type]
        report = evaluate(
            model,
            data,
            attacks,
            eps=eps,
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=device,
            seed=args.seed,
            independent=args.independent,
            progress=args.progress,
            diagnostics=not args.no_diagnostics,
            diagnostic_samples=args.diagnostic_samples,
            verdict=args.verdict_draws,
        )
        if is_main():
            print(report)
            if args.json:
                report.to_json(args.json, records=not args.no_records)
            if args.plot:
                ax = report.plot(
                    title=f"{Path(args.model.rpartition(':')[0]).name}, {report.n} samples"
                )
                ax.figure.savefig(args.plot, bbox_inches="tight", dpi=150)
    finally:
        shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``advkit`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except AdvkitError as e:
        parser.exit(2, f"advkit {args.command}: error: {e}\n")
    return code
