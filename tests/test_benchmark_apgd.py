"""The APGD benchmarks run end to end in quick mode: benchmarks/apgd.py and run.py's apgd rows.

Functional checks only (rows, verdicts, pass counts, feasibility, the README
block); no timing is asserted. The benchmarks run advkit's APGD rows when the
installed advkit has ``APGD`` / ``MultiTargeted`` and skip them with a message
when it has not: each test fixes which case it sees, by removing those names
from advkit or by installing stand-ins built on ``advkit.PGD`` (same call, same
result type), so that the harness is exercised whatever advkit provides. The
peers are hidden from apgd.py (as on a machine without them) and used by run.py
where installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import advkit

ROOT = Path(__file__).resolve().parents[1]
PEER_MODULES = ["torchattacks", "foolbox", "eagerpy", "adv_lib", "pyautoattack"]
# What importing benchmarks/apgd.py (and a peer's placeholder modules) may add to sys.modules.
TRACES = ["apgd", "run", "_peers", "_models", "digits", "torchvision", "torchvision.models"]
TRACES += ["visdom"]


class StandInAPGD(advkit.PGD):
    """Called like the coming ``advkit.APGD``; PGD underneath (same result type and counts)."""

    def __init__(
        self,
        norm: str = "linf",
        eps: float | None = None,
        steps: int = 100,
        restarts: int = 1,
        objective: Any = advkit.objectives.cross_entropy,
    ) -> None:
        super().__init__(norm=norm, eps=eps, steps=steps, restarts=restarts, objective=objective)


class StandInMultiTargeted:
    """Called like the coming ``advkit.MultiTargeted``: runs the inner attack as it is."""

    def __init__(self, attack: advkit.Attack, num_targets: int | None = None) -> None:
        self.attack, self.num_targets = attack, num_targets

    def __call__(self, model: Any, x: Any, y: Any, **kwargs: Any) -> advkit.AttackResult:
        return self.attack(model, x, y, **kwargs)


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    """benchmarks/apgd.py imported in this process, the peers hidden; leaves no trace."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # apgd.py puts benchmarks/ on it
    for name in TRACES + PEER_MODULES:
        if name in sys.modules:
            monkeypatch.setitem(sys.modules, name, sys.modules[name])
        else:  # restored to absent afterwards
            monkeypatch.setitem(sys.modules, name, None)
            monkeypatch.delitem(sys.modules, name)
    for name in PEER_MODULES:  # a None entry makes `import` raise ImportError
        monkeypatch.setitem(sys.modules, name, None)
    spec = importlib.util.spec_from_file_location("apgd", ROOT / "benchmarks" / "apgd.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "apgd", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One weight cache for the tests of this module (each quick model trains once)."""
    return tmp_path_factory.mktemp("apgd-cache")


def _apgd(
    bench: Any, tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[dict[str, Any], str]:
    common = ["--quick", "--device", "cpu", "--cache-dir", str(cache)]
    common += ["--results-dir", str(tmp_path), "--readme", str(tmp_path / "README.md")]
    bench.main([*common, *args])
    (path,) = tmp_path.glob("apgd-cpu-quick-*.json")
    return json.loads(path.read_text()), capsys.readouterr().out


def test_apgd_quick_with_advkit_rows(
    bench: Any,
    tmp_path: Path,
    cache: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(advkit, "APGD", StandInAPGD, raising=False)
    monkeypatch.setattr(advkit, "MultiTargeted", StandInMultiTargeted, raising=False)
    record, out = _apgd(bench, tmp_path, cache, capsys, "--models", "digits-at")
    for peer in ("autoattack", "torchattacks", "adv-lib"):
        assert f"{peer}: skipped" in out
        assert record["peers"][peer].startswith("not available")
    assert set(record["models"]) == {"digits-at"}
    assert [(g["model"], g["norm"], g["eps"]) for g in record["configs"]] == [
        ("digits-at", "linf", 0.1),
        ("digits-at", "l2", 0.75),
        ("digits-at", "l1", 1.5),
    ]
    for g in record["configs"]:
        assert g["n"] == 64
        rows = {r["method"]: r for r in g["rows"]}
        assert set(rows) == {"advkit PGD", "advkit APGD-CE", "advkit APGD-DLR", "advkit APGD-T"}
        for r in rows.values():
            assert r["seeds"] == [0, 1]
            assert len(r["robust_accuracy"]) == 2
            assert r["feasible"], r
            assert not r["changed_inputs"]
            assert r["max_distance"] <= g["eps"] * (1 + 1e-6) + 1e-7
            assert r["robust_accuracy_max"] == max(r["robust_accuracy"])
            assert 0 <= r["robust_accuracy_min"] <= r["robust_accuracy_max"] <= g["clean_accuracy"]
            # The wrapper's per-sample counts match what advkit reports (10 steps, random
            # start, one scoring pass), and so does the verdict on every sample.
            assert r["forward_per_sample"] == [11, 11]
            assert r["backward_per_sample"] == [10, 10]
            for own, acc in zip(r["advkit_reported"], r["robust_accuracy"], strict=True):
                assert (own["forward_passes"], own["backward_passes"]) == (11, 10)
                assert own["success_disagreements"] == 0
                assert acc <= 1 - own["success_rate"] + 1e-9
            assert len(r["times_s"]) == 2 and all(t > 0 for t in r["times_s"])
            assert "vs_reference" not in r  # no reference rows to compare with
        worst = g["worst_case_all_rows"]
        assert worst <= min(r["robust_accuracy_min"] for r in rows.values())
    assert not [m for m in record["messages"] if "advkit" in m]
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("<!-- apgd.py:cpu:begin -->")
    assert readme.rstrip().endswith("<!-- apgd.py:cpu:end -->")
    assert "| digits-at | linf | 0.1 | APGD-T | 11 / 10 (11 / 10), " in readme
    clean = 100 * record["models"]["digits-at"]["clean_accuracy"]
    assert f"| digits-at | {clean:.1f}% | l1 | 1.5 | APGD-DLR | " in readme


def test_apgd_quick_without_apgd_in_advkit(
    bench: Any,
    tmp_path: Path,
    cache: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An advkit without APGD: its rows are skipped with a message, the PGD baseline stays."""
    monkeypatch.delattr(advkit, "APGD", raising=False)
    monkeypatch.delattr(advkit, "MultiTargeted", raising=False)
    record, out = _apgd(bench, tmp_path, cache, capsys, "--models", "digits", "--norms", "linf")
    assert "has no APGD" in out
    assert any("has no APGD" in m for m in record["messages"])
    (g,) = record["configs"]
    assert [r["method"] for r in g["rows"]] == ["advkit PGD"]
    assert g["rows"][0]["feasible"]
    assert "Skipped: advkit" in (tmp_path / "README.md").read_text()


# run.py seeds the global RNG (for the peers that draw from it): a fresh interpreter, with
# stand-ins for advkit.APGD and advkit.MultiTargeted installed as above.
DRIVER = """
import sys
sys.path.insert(0, {tests!r})
sys.path.insert(0, {bench!r})
import advkit
import test_benchmark_apgd as t
advkit.APGD, advkit.MultiTargeted = t.StandInAPGD, t.StandInMultiTargeted
import run
run.main(sys.argv[1:])
"""


def test_run_py_apgd_rows(tmp_path: Path) -> None:
    """run.py --attacks apgd: the bare loop, advkit's row and each installed peer's APGD-CE."""
    args = ["--device", "cpu", "--threads", "1", "--attacks", "apgd", "--steps", "5"]
    args += ["--models", "smallcnn", "--batch", "8", "--no-train", "--tag", "quick"]
    args += ["--warmup", "0", "--repeats", "1", "--min-repeats", "1"]
    args += ["--results-dir", str(tmp_path), "--readme", str(tmp_path / "README.md")]
    driver = DRIVER.format(tests=str(ROOT / "tests"), bench=str(ROOT / "benchmarks"))
    proc = subprocess.run(
        [sys.executable, "-c", driver, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    (path,) = tmp_path.glob("cpu-quick-*.json")
    (group,) = json.loads(path.read_text())["groups"]
    assert group["attack"] == "apgd" and group["steps"] == 5
    rows = {r["method"]: r for r in group["rows"]}
    assert {"bare loop", "advkit", "one no-grad forward"} <= set(rows)
    assert (rows["bare loop"]["forward_per_sample"], rows["bare loop"]["backward_per_sample"]) == (
        5,
        5,
    )
    assert rows["advkit"]["forward_per_sample"] == rows["advkit"]["advkit_forward_passes"] == 6
    assert (
        "| smallcnn | 8 | fp32 | contiguous | APGD-5 | advkit |"
        in (tmp_path / "README.md").read_text()
    )
    libraries = {"torchattacks": "torchattacks", "adv-lib": "adv-lib", "autoattack": "AutoAttack"}
    for peer, method in libraries.items():
        if f"{peer}: skipped" in out:
            assert method not in rows
            continue
        r = rows[method]
        # Each library evaluates the gradient at the random start and after each of the 5
        # steps (random weights, labels = predictions: every sample is attacked); the reference
        # code and torchattacks run a clean forward pass first.
        assert group["clean_accuracy"] == 1.0
        assert r["backward_per_sample"] == 6, method
        assert r["forward_per_sample"] == (6 if peer == "adv-lib" else 7), method
        assert r["feasible"], method
