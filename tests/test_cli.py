"""The ``advkit eval`` command line, on a tiny model and dataset written to tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

import advkit
from advkit.cli import main, parse_attack, parse_eps, parse_number
from advkit.evaluation import evaluate

MODEL_FILE = """
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def not_a_model():
    return 42
"""

DATA_FILE = """
from pathlib import Path

import torch
from torch.utils.data import TensorDataset


def build_data():
    saved = torch.load(Path(__file__).with_name("data.pt"), weights_only=True)
    return TensorDataset(saved["x"], saved["y"])
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "net.py").write_text(MODEL_FILE)
    (tmp_path / "data.py").write_text(DATA_FILE)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    )
    with torch.no_grad():  # steeper hidden units: boundaries within reach of small budgets
        model[1].weight.mul_(4)
        model[1].bias.sub_(model[1].weight.sum(1) / 2)
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(45, 1, 4, 4, generator=g)
    y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 3  # five misclassified samples
    data = TensorDataset(x, y)
    torch.save({"x": data.tensors[0], "y": data.tensors[1]}, tmp_path / "data.pt")
    return {"dir": tmp_path, "model": model, "data": data}


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in ("seconds",)}


def test_eval_end_to_end(files: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    tmp = files["dir"]
    argv = [
        "eval",
        "--model", f"{tmp / 'net.py'}:build_model",
        "--weights", str(tmp / "ckpt.pt"),
        "--data", f"{tmp / 'data.py'}:build_data",
        "--attack", "fgsm",
        "--attack", "pgd:steps=5,step_size=1/100,random_init=true",
        "--norm", "l2",
        "--eps", "0", "1/10,0.5",
        "--batch-size", "16",
        "--seed", "5",
        "--json", str(tmp / "report.json"),
        "--plot", str(tmp / "curve.png"),
        "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Robustness of 45 samples" in out and "worst case" in out and "eps=0.1" in out
    got = json.loads((tmp / "report.json").read_text())
    attacks = {
        "fgsm": advkit.FGSM(norm="l2"),
        "pgd:steps=5,step_size=1/100,random_init=true": advkit.PGD(
            norm="l2", steps=5, step_size=0.01, random_init=True
        ),
    }
    expected = evaluate(
        files["model"], files["data"], attacks, eps=[0, 0.1, 0.5], batch_size=16, seed=5
    )
    assert _strip(got) == _strip(expected.to_dict())
    assert got["robust_accuracy"][-1] < got["clean_accuracy"]
    assert (tmp / "curve.png").stat().st_size > 0

    # the same data from a .pt file, the first 20 samples, no records
    argv2 = [
        "eval", "--model", f"{tmp / 'net.py'}:build_model", "--weights", str(tmp / "ckpt.pt"),
        "--data", str(tmp / "data.pt"), "--attack", "fgsm", "--norm", "l2", "--eps", "0.5",
        "--limit", "20", "--json", str(tmp / "r2.json"), "--no-records",
    ]  # fmt: skip
    assert main(argv2) == 0
    got2 = json.loads((tmp / "r2.json").read_text())
    assert got2["n"] == 20 and "records" not in got2
    first20 = [r["robust"][-1] for r in expected.records()[:20]]
    fgsm_only = evaluate(
        files["model"],
        TensorDataset(*(t[:20] for t in files["data"].tensors)),
        advkit.FGSM(norm="l2"),
        eps=0.5,
    )
    assert got2["robust_accuracy"] == fgsm_only.robust_accuracy()
    assert got2["robust_accuracy"][0] >= sum(first20) / 20  # FGSM alone is weaker than FGSM+PGD


def test_eps_and_attack_parsing() -> None:
    assert parse_number("8/255") == 8 / 255
    assert parse_number(" 1e-2") == 0.01
    assert parse_eps(["0", "2/255,4/255", "0.5,"]) == [0.0, 2 / 255, 4 / 255, 0.5]
    for bad in ["8/0", "abc", "inf", "1/x"]:
        with pytest.raises(advkit.ConfigError, match="number"):
            parse_number(bad)
    label, attack = parse_attack("pgd:steps=20,restarts=2,objective=margin,random_init=off", "l2")
    assert label == "pgd:steps=20,restarts=2,objective=margin,random_init=off"
    assert isinstance(attack, advkit.PGD) and str(attack.norm) == "l2"
    assert (attack.steps, attack.restarts, attack.random_init) == (20, 2, False)
    assert attack.objective is advkit.objectives.margin
    assert isinstance(parse_attack("DeepFool", "linf")[1], advkit.DeepFool)
    assert parse_attack("apgd:compile=reduce-overhead", "linf")[1].compile == "reduce-overhead"
    assert parse_attack("apgd:compile=true", "linf")[1].compile is True
    assert parse_attack("apgd:compile=false", "linf")[1].compile is False


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"--attack": "boundary"}, "unknown attack 'boundary'"),
        ({"--attack": "pgd:stepz=3"}, "stepz"),
        ({"--attack": "pgd:steps"}, "key=value"),
        ({"--attack": "pgd:norm=l2"}, "--norm"),
        ({"--attack": "cw"}, "norm='l2'"),
        ({"--eps": "8/0"}, "not a number"),
        ({"--model": "net.py"}, "file.py:function"),
        ({"--model": "missing.py:build_model"}, "no such file"),
        ({"--model": "net.py:nothing"}, "no function 'nothing'"),
        ({"--model": "net.py:not_a_model"}, "not an nn.Module"),
        ({"--model": "no_such_module_xyz:f"}, "cannot import module"),
        ({"--weights": "other.pt"}, "do not fit the model"),
        ({"--data": "net.py:build_model"}, "not a Dataset"),
    ],
)
def test_errors_name_the_problem(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str], change: dict[str, str], match: str
) -> None:
    tmp = files["dir"]
    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp / "other.pt")
    args = {
        "--model": "net.py:build_model",
        "--weights": "ckpt.pt",
        "--data": "data.py:build_data",
        "--attack": "fgsm",
        "--eps": "0.1",
        **change,
    }
    argv = ["eval", "--no-progress"]
    for k, v in args.items():
        if k == "--weights" or (k in ("--model", "--data") and ".py" in v):
            v = str(tmp / v)
        argv += [k, v]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "advkit eval: error:" in err
    assert match in err


def test_python_dash_m_advkit() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "advkit", "eval", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--eps EPS" in done.stdout and "torchrun" in done.stdout
    none = subprocess.run(
        [sys.executable, "-m", "advkit"], capture_output=True, text=True, check=False
    )
    assert none.returncode == 2 and "eval" in none.stderr


def test_classifier_models_keep_their_own_space(tmp_path: Path) -> None:
    (tmp_path / "wrapped.py").write_text(
        textwrap.dedent(
            """
            import torch, advkit

            def build():
                torch.manual_seed(0)
                return advkit.wrap(torch.nn.Linear(4, 3), bounds=(0, 255))

            def data():
                g = torch.Generator().manual_seed(0)
                return torch.utils.data.TensorDataset(
                    255 * torch.rand(12, 4, generator=g), torch.randint(0, 3, (12,), generator=g))
            """
        )
    )
    base = ["eval", "--model", f"{tmp_path / 'wrapped.py'}:build"]
    rest = ["--data", f"{tmp_path / 'wrapped.py'}:data", "--eps", "8", "--no-progress"]
    assert main([*base, *rest]) == 0  # inputs in [0, 255] are fine for this Classifier
    with pytest.raises(SystemExit):
        main([*base, "--bounds", "0", "1", *rest])
