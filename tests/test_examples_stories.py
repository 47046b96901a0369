"""The user-story examples run end to end (reduced mode) and show what each of them claims.

Each example runs in this process (the imports of torch, scikit-learn and
matplotlib are then paid once), with its own output folder, and returns the
numbers it also writes to its JSON summary; the checks below read them.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_story_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def run_example(name: str, out: Path, *args: str) -> dict[str, Any]:
    """Run ``examples/<name>.py --quick`` in this process; its summary, checked against its JSON."""
    path = list(sys.path)
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):  # the examples seed the global RNG
            summary: dict[str, Any] = _load(name).main(["--quick", "--out", str(out), *args])
    finally:
        sys.path[:] = path
        torch.set_num_threads(threads)
    written = json.loads((out / f"{name}.json").read_text())
    assert written["quick"] is True
    assert set(written) == set(summary)
    for png in out.glob("*.png"):
        assert 1_000 < png.stat().st_size < 200_000, png
    return summary


def test_lipschitz_defence_certificate_holds(tmp_path: Path) -> None:
    s = run_example("lipschitz_defence", tmp_path)
    assert (tmp_path / "lipschitz_defence.png").exists()
    lip, cnn = s["models"]["1-Lipschitz MLP"], s["models"]["SmallCNN"]
    # Orthogonal layers and GroupSort: a Lipschitz constant of 1 up to rounding.
    assert lip["lipschitz_bound"] <= 1 + 1e-4
    assert cnn["lipschitz_bound"] > 10
    for r in (lip, cnn):
        assert r["clean_accuracy"] >= 0.9
        cert = torch.tensor(r["certified_radius"], dtype=torch.float64)
        n, num_eps = len(cert), len(r["eps"])
        checked = 0
        for attack, flat in r["distances"].items():
            d = torch.tensor([math.nan if v is None else v for v in flat], dtype=torch.float64)
            d = d.view(n, -1)
            c = cert.unsqueeze(1).expand_as(d)
            found = torch.isfinite(d) & (c > 0)
            checked += int(found.sum())
            # No attack found an adversarial closer than the certified radius.
            assert bool((d[found] >= c[found] - 1e-4).all()), attack
            assert d.shape[1] in (1, num_eps)
        # The check is not vacuous: most correctly classified images were broken somewhere.
        assert checked >= n
        assert r["violations"] == 0
        assert r["adversarials_found"] == checked
        # Certified (lower bound) never above empirical (upper bound).
        for c_acc, e_acc in zip(r["certified_accuracy"], r["empirical_accuracy"], strict=True):
            assert c_acc <= e_acc + 1e-12
    k = lip["eps"].index(0.25)
    # The certificate is useful for the 1-Lipschitz model and not for the ordinary CNN.
    assert lip["certified_accuracy"][k] >= 0.6
    assert cnn["certified_accuracy"][k] <= 0.05


def test_targeted_bim_reaches_its_target_and_attributions_run(tmp_path: Path) -> None:
    s = run_example("targeted_bim_explain", tmp_path, "--target", "3")
    assert (tmp_path / "targeted_bim_grid.png").exists()
    assert (tmp_path / "targeted_bim_attributions.png").exists()
    assert 3 not in s["labels"] and len(s["labels"]) == 9
    eps = s["eps"]
    assert set(s["models"]) == {"Inception-style", "HF-style"}
    # (A transformers ViT, trained from scratch when transformers is installed, learns slower
    # than the stand-in used otherwise.)
    assert s["models"]["Inception-style"]["clean_accuracy"] >= 0.9
    assert s["models"]["HF-style"]["clean_accuracy"] >= 0.75
    for name, r in s["models"].items():
        # Every perturbation stays in its Linf ball.
        for e, d in zip(eps, r["max_distance"], strict=True):
            assert d <= e + 1e-6, name
        # The targeted attack hits its target at the largest eps, and more often than at
        # the smallest.
        assert r["success_rate"][-1] >= 0.85, name
        assert r["success_rate"][-1] > r["success_rate"][0], name
        assert r["target_confidence"][-1] > r["target_confidence"][0], name
        # Captum explained the clean and the adversarial images as advkit returned them:
        # Integrated Gradients' completeness holds (attributions sum to f(x) - f(baseline)).
        assert r["attribution_shape"] == [9, 1, 8, 8], name
        assert r["ig_relative_delta"] < 0.05, name


def test_fgsm_tutorial_sweep(tmp_path: Path) -> None:
    s = run_example("fgsm_tutorial", tmp_path)
    assert (tmp_path / "fgsm_tutorial_examples.png").exists()
    assert (tmp_path / "fgsm_tutorial_curve.png").exists()
    assert s["eps"] == [0.0, 0.01, 0.1, 0.15]
    # eps = 0 changes nothing; every other eps moves some pixel by exactly eps, none further.
    assert s["max_change"][0] == 0.0
    for e, m in zip(s["eps"][1:], s["max_change"][1:], strict=True):
        assert abs(m - e) < 1e-6
    assert s["over_budget"] == 0
    acc = s["curve_accuracy"]
    assert abs(acc[0] - s["clean_accuracy"]) < 1e-6
    assert s["clean_accuracy"] >= 0.9
    # Accuracy falls as eps grows (up to a little noise) and FGSM at 0.15 breaks a good part.
    assert all(b <= a + 0.02 for a, b in itertools.pairwise(acc))
    assert acc[s["curve_eps"].index(0.15)] <= s["clean_accuracy"] - 0.3
    # At eps = 0 the images keep the label the model gives them.
    assert s["predictions"][0] == s["clean_predictions"]


def test_noise_is_far_weaker_than_pgd_and_networks_trust_noise(tmp_path: Path) -> None:
    s = run_example("noise_confidence", tmp_path)
    assert (tmp_path / "noise_confidence.png").exists()
    assert (tmp_path / "noise_confidence_images.png").exists()
    assert set(s["models"]) == {"MLP", "CNN", "1-Lipschitz"}
    for name, r in s["models"].items():
        for norm, budgets in s["budgets"].items():
            acc = r["accuracy"][norm]
            pgd = acc["PGD"]
            for noise in ("uniform noise", "Gaussian noise"):
                # Noise never does better than PGD of the same norm, and at the largest
                # budget it leaves most images classified where PGD breaks most of them.
                assert all(a >= p for a, p in zip(acc[noise], pgd, strict=True)), (name, norm)
                assert acc[noise][-1] - pgd[-1] >= 0.4, (name, norm, noise)
                # At the smallest budget noise barely moves the accuracy.
                assert acc[noise][0] >= r["clean_accuracy"] - 0.05, (name, norm, noise)
            assert len(pgd) == len(budgets)
    # The ordinary networks name a class for pure noise with confidence far above chance (10%).
    for name in ("MLP", "CNN"):
        for kind in ("uniform", "gaussian"):
            assert s["models"][name][kind]["mean_confidence"] >= 0.3, (name, kind)
