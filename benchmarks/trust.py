"""Evaluations you can trust: what the diagnostics say on broken and honest models, what
the fixes they recommend change, and what the diagnostics cost.

On the digits SmallCNN of ``examples/digits.py`` (scikit-learn's 8x8 digits, no
download; 360 test images), Linf eps 0.1:

1. **Traps.** Five models built from the trained CNN, each hiding its weakness
   from gradients: logits times 100 (a saturated softmax), inputs rounded to 16
   levels, Gaussian input noise (sigma 0.3) at every pass, softmax outputs, and
   a detached denoiser. For each: the flags that ``advkit.evaluate``'s default
   diagnostics raise over the default evaluation (``advkit eval``'s default
   attack, PGD with 10 steps on the cross-entropy), its robust accuracy, the
   robust accuracy under the fix the flags' messages recommend (and the flags
   the diagnostics raise then), and a score-based reference (the diagnostics'
   score-based attack, ``advkit.Square`` where advkit has it, else their random
   search; 1000 queries, no gradients; judged over 9 draws on the noisy model).
2. **False alarms.** ``advkit.diagnose`` on honest models (the standard CNN, an
   adversarially trained one, a linear model) at several budgets in Linf and L2,
   and ``advkit.evaluate``'s default diagnostics over the default evaluation:
   every flag raised is a false alarm (goal: none).
3. **Cost.** The diagnostics' passes of the model per diagnosed sample, against
   those of an evaluation with ``[APGD-CE, APGD-T]`` (AutoAttack's gradient
   attacks, 100 steps, 9 targets) at the same eps on the same samples, counted
   row by row (a pass over a batch of B samples counts B, padding included),
   forward and backward passes added; and the passes of the default evaluation
   (PGD, 10 steps, on all the test images) with and without its diagnostics
   (which see the first 64 samples).

Run from the repository root (not a test; a few minutes on 2 CPU cores):

    python benchmarks/trust.py
    python benchmarks/trust.py --n 120 --skip-cost     # quicker

Results go to ``benchmarks/results/trust-<device>-<YYYYMMDD>.json`` and the
tables are printed in Markdown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import advkit
from advkit.diagnostics import _score_attack
from advkit.norms import resolve_norm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))  # the digits helpers live in examples/
from digits import SmallCNN, load_digits_tensors, train  # noqa: E402

# ---------------------------------------------------------------------- the models


class Hot(nn.Module):
    """Logits times 100 (a temperature of 0.01): the same predictions."""

    def __init__(self, net: nn.Module, scale: float = 100.0) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x) * self.scale
        return out


def quantize(x: Tensor) -> Tensor:
    """4-bit pixels."""
    return torch.round(x * 16) / 16


class Preprocessed(nn.Module):
    """``net(pre(x))``."""

    def __init__(self, net: nn.Module, pre: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.net, self.pre = net, pre

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(self.pre(x))
        return out


class Noisy(nn.Module):
    """Gaussian noise on the input at every pass."""

    def __init__(self, net: nn.Module, sigma: float = 0.3) -> None:
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x + self.sigma * torch.randn_like(x))
        return out


class Denoised(nn.Module):
    """A 3x3 mean filter mixed into the input, computed on a detached copy: autograd sees
    only the 10% skip connection. ``denoise`` replaces the detached filter (the fix)."""

    def __init__(self, net: nn.Module, denoise: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.blur = nn.AvgPool2d(3, stride=1, padding=1)
        self.denoise = denoise

    def forward(self, x: Tensor) -> Tensor:
        smooth = self.blur(x).detach() if self.denoise is None else self.denoise(x)
        out: Tensor = self.net(0.1 * x + 0.9 * smooth)
        return out


def adversarial(x: Tensor, y: Tensor, eps: float, epochs: int, seed: int) -> nn.Module:
    """SmallCNN trained on FGSM examples from a random start (Wong et al., ICLR 2020)."""
    torch.manual_seed(seed)
    model = SmallCNN()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            xb, yb = x[idx], y[idx]
            model.eval()
            start = (xb + (torch.rand(xb.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
            start.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(start), yb), start)
            step = start.detach() + 1.25 * eps * grad.sign()
            adv = (xb + (step - xb).clamp(-eps, eps)).clamp(0, 1)
            model.train()
            loss = F.cross_entropy(model(adv), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


class Rows(nn.Module):
    """The model, counting the rows of its forward passes and of those a backward pass
    follows (autograd on, an input that requires it)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.forward_rows = 0
        self.backward_rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.forward_rows += x.shape[0]
        if torch.is_grad_enabled() and x.requires_grad:
            self.backward_rows += x.shape[0]
        out: Tensor = self.net(x)
        return out


# ---------------------------------------------------------------------- the parts


def _seeded(seed: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the global RNG (the noisy model's draws) seeded, and
    restored after."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return fn(*args, **kwargs)


def _evaluate(model: nn.Module, data: TensorDataset, attacks: Any, eps: float, **kw: Any) -> Any:
    return advkit.evaluate(model, data, attacks, eps=[eps], seed=0, progress=False, **kw)


def traps(
    net: nn.Module, data: TensorDataset, eps: float, queries: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    pgd = {"PGD": advkit.PGD()}
    rows: list[dict[str, Any]] = []
    noisy = Noisy(net)
    cases: list[tuple[str, nn.Module, str, nn.Module, Any, dict[str, Any]]] = [
        (
            "saturated logits (x100)",
            Hot(net),
            "APGD-DLR: advkit.APGD(objective=advkit.objectives.dlr)",
            Hot(net),
            {"APGD-DLR": advkit.APGD(objective=advkit.objectives.dlr)},
            {},
        ),
        (
            "quantized input (16 levels)",
            Preprocessed(net, quantize),
            "PGD through advkit.BPDA(quantize)",
            Preprocessed(net, advkit.BPDA(quantize)),
            pgd,
            {},
        ),
        (
            "noisy input (sigma 0.3)",
            noisy,
            "APGD(eot=20), verdict over 9 draws",
            noisy,
            {"APGD-EOT": advkit.APGD(eot=20, steps=50)},
            {"verdict": 9},
        ),
        (
            "softmax outputs",
            nn.Sequential(net, nn.Softmax(dim=1)),
            "PGD on advkit.wrap(model, output=torch.log)",
            advkit.wrap(nn.Sequential(net, nn.Softmax(dim=1)), output=torch.log),
            pgd,
            {},
        ),
        (
            "detached branch (denoiser)",
            Denoised(net),
            "PGD with the detach removed: advkit.BPDA(blur, approx=blur)",
            Denoised(net, advkit.BPDA(nn.AvgPool2d(3, 1, 1), approx=nn.AvgPool2d(3, 1, 1))),
            pgd,
            {},
        ),
    ]
    for name, model, fix_name, fixed, fix_attacks, fix_kw in cases:
        default = _seeded(0, _evaluate, model, data, pgd, eps)
        after = _seeded(0, _evaluate, fixed, data, fix_attacks, eps, **fix_kw)
        search, _ = _score_attack(resolve_norm("linf"), queries)
        g = torch.Generator().manual_seed(0)
        score = _seeded(
            0, search, model, *data.tensors, eps=eps, generator=g, verdict=fix_kw.get("verdict")
        )
        clean = after.correct
        score_robust = float((clean & ~score.success).float().mean())
        rows.append(
            {
                "trap": name,
                "flags": default.diagnosis.names,
                "robust_default": default.robust_accuracy()[0],
                "fix": fix_name,
                "robust_fix": after.robust_accuracy()[0],
                "flags_after_fix": after.diagnosis.names,
                "notes_after_fix": dict(after.diagnosis.notes),
                "robust_score_based": score_robust,
                "clean_accuracy": after.clean_accuracy,
                "messages": {f.name: f.message for f in default.diagnosis.flags},
            }
        )
        print(f"  {name}: {default.diagnosis.names} -> {after.diagnosis.names}", flush=True)
    reference = _seeded(0, _evaluate, net, data, pgd, eps)
    return rows, {
        "clean_accuracy": reference.clean_accuracy,
        "robust_pgd": reference.robust_accuracy()[0],
        "flags": reference.diagnosis.names,
    }


def false_alarms(
    models: dict[str, nn.Module], data: TensorDataset, budgets: Sequence[tuple[str, float]]
) -> list[dict[str, Any]]:
    x, y = data.tensors
    out = []
    for name, model in models.items():
        for norm, eps in budgets:
            d = advkit.diagnose(model, x[:64], y[:64], norm=norm, eps=eps)
            out.append({"model": name, "how": "diagnose", "norm": norm, "eps": eps,
                        "flags": d.names})  # fmt: skip
        report = _evaluate(model, data, {"PGD": advkit.PGD()}, 0.1)
        out.append({"model": name, "how": "evaluate (PGD)", "norm": "linf", "eps": 0.1,
                    "flags": report.diagnosis.names})  # fmt: skip
        print(f"  {name}: {sum(len(r['flags']) for r in out if r['model'] == name)} flags",
              flush=True)  # fmt: skip
    return out


def cost(models: dict[str, nn.Module], data: TensorDataset, eps: float) -> list[dict[str, Any]]:
    x, y = data.tensors
    x, y = x[:64], y[:64]
    out = []
    for name, model in models.items():
        counted = Rows(model)
        d = advkit.diagnose(counted, x, y, eps=eps)
        diag = (counted.forward_rows, counted.backward_rows)
        counted = Rows(model)
        attacks = {
            "APGD-CE": advkit.APGD(),
            "APGD-T": advkit.MultiTargeted(advkit.APGD(objective=advkit.objectives.dlr)),
        }
        report = _evaluate(counted, TensorDataset(x, y), attacks, eps, diagnostics=False)
        ev = (counted.forward_rows, counted.backward_rows)
        default = {}
        for on in (True, False):
            counted = Rows(model)
            _evaluate(counted, data, {"PGD": advkit.PGD()}, eps, diagnostics=on)
            default[on] = counted.forward_rows + counted.backward_rows
        n = x.shape[0]
        row = {
            "model": name,
            "samples": n,
            "diagnose_forward_per_sample": diag[0] / n,
            "diagnose_backward_per_sample": diag[1] / n,
            "diagnose_reported": [d.forward_passes, d.backward_passes],
            "evaluate_forward_per_sample": ev[0] / n,
            "evaluate_backward_per_sample": ev[1] / n,
            "robust_accuracy": report.robust_accuracy()[0],
            "fraction": sum(diag) / sum(ev),
            "default_evaluation_samples": len(data),
            "default_evaluation_passes": default[False],
            "default_evaluation_passes_with_diagnostics": default[True],
            "default_fraction": (default[True] - default[False]) / default[True],
        }
        out.append(row)
        print(f"  {name}: diagnose {sum(diag) / n:.0f}, evaluate {sum(ev) / n:.0f} passes "
              f"per sample ({100 * row['fraction']:.1f}%); default evaluation "
              f"{default[True]} passes, {100 * row['default_fraction']:.1f}% diagnostics",
              flush=True)  # fmt: skip
    return out


# ---------------------------------------------------------------------- output


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| trap | flags raised (default evaluation) | robust acc., default (PGD) | "
        "fix the message recommends | robust acc., fixed | flags after the fix | "
        "score-based reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["traps"]:
        after = ", ".join(f"`{f}`" for f in r["flags_after_fix"]) or "none"
        if r["notes_after_fix"]:
            after += " (note: " + ", ".join(r["notes_after_fix"]) + ")"
        lines.append(
            f"| {r['trap']} | {', '.join(f'`{f}`' for f in r['flags']) or 'none'} | "
            f"{_pct(r['robust_default'])} | {r['fix']} | {_pct(r['robust_fix'])} | {after} | "
            f"{_pct(r['robust_score_based'])} |"
        )
    alarms = result["false_alarms"]
    raised = sum(len(r["flags"]) for r in alarms)
    lines += ["", f"False alarms on honest models: {raised} flags in {len(alarms)} diagnoses."]
    if result.get("cost"):
        lines += [
            "",
            "| model | diagnose, passes / sample (fwd + bwd) | [APGD-CE, APGD-T], passes / "
            "sample | ratio | default evaluation (PGD) of all samples: passes, share of "
            "its diagnostics |",
            "|---|---|---|---|---|",
        ]
        for c in result["cost"]:
            d = c["diagnose_forward_per_sample"] + c["diagnose_backward_per_sample"]
            e = c["evaluate_forward_per_sample"] + c["evaluate_backward_per_sample"]
            lines.append(
                f"| {c['model']} | {c['diagnose_forward_per_sample']:.0f} + "
                f"{c['diagnose_backward_per_sample']:.0f} = {d:.0f} | "
                f"{c['evaluate_forward_per_sample']:.0f} + "
                f"{c['evaluate_backward_per_sample']:.0f} = {e:.0f} | {_pct(c['fraction'])} | "
                f"{c['default_evaluation_passes_with_diagnostics']} "
                f"({c['default_evaluation_samples']} samples), {_pct(c['default_fraction'])} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=360, help="test images evaluated")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--queries", type=int, default=1000, help="score-based reference")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    x_train, y_train, x_test, y_test = load_digits_tensors(seed=0)
    data = TensorDataset(x_test[: args.n], y_test[: args.n])
    net = train(SmallCNN(), x_train, y_train, seed=0)
    robust = adversarial(x_train, y_train, eps=args.eps, epochs=10, seed=1)
    linear = train(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), x_train, y_train,
                   epochs=30, lr=1e-2, seed=2)  # fmt: skip
    honest = {"standard CNN": net, "adversarially trained CNN": robust, "linear": linear}

    print("traps", flush=True)
    trap_rows, reference = traps(net, data, args.eps, args.queries)
    print("false alarms", flush=True)
    budgets = [("linf", 0.05), ("linf", 0.1), ("linf", 0.2), ("l2", 0.5), ("l2", 1.0)]
    alarms = false_alarms(honest, data, budgets)
    costs = []
    if not args.skip_cost:
        print("cost", flush=True)
        costs = cost({**honest, "saturated logits (x100)": Hot(net)}, data, args.eps)

    result = {
        "date": dt.date.today().isoformat(),
        "device": "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "advkit": advkit.__version__,
        "n": len(data),
        "eps": args.eps,
        "norm": "linf",
        "score_attack": _score_attack(resolve_norm("linf"), 1)[1],
        "reference": reference,
        "traps": trap_rows,
        "false_alarms": alarms,
        "cost": costs,
    }
    out = Path(args.results_dir) / f"trust-cpu-{dt.date.today():%Y%m%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    print(f"\nwritten to {out}")
    return result


if __name__ == "__main__":
    main()
