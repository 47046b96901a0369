"""The throughput benchmark (benchmarks/run.py) runs end to end in quick mode.

Functional checks only: the rows, pass counts, success rates and the README
table exist and make sense. No timing is asserted (the machine's load decides
those). The peers are optional: one run hides them, as on a machine without
them, and must still succeed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
PEERS = {"torchattacks": "torchattacks", "foolbox": "foolbox", "adv-lib": "adv_lib"}

# Runs run.main in a fresh interpreter; the first argument says which peers to hide
# (a None entry in sys.modules makes `import` raise ImportError) and whether to replace
# advkit.PGD by one without the speed options (an older advkit) to exercise the skip path.
DRIVER = """
import json, sys
hide, old = json.loads(sys.argv[1])
for name in hide:
    sys.modules[name] = None
sys.path.insert(0, {bench!r})
import advkit
if old:
    class PGD(advkit.PGD):
        def __init__(self, norm="linf", eps=None, steps=10, step_size=None, random_init=True):
            super().__init__(norm=norm, eps=eps, steps=steps, step_size=step_size,
                             random_init=random_init)
    advkit.PGD = PGD
import run
run.main(sys.argv[2:])
"""


def _run(tmp_path: Path, hide: list[str], old: bool, *args: str) -> tuple[dict[str, Any], str]:
    driver = DRIVER.format(bench=str(ROOT / "benchmarks"))
    cmd = [
        sys.executable,
        "-c",
        driver,
        json.dumps([hide, old]),
        "--quick",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--results-dir",
        str(tmp_path),
        "--readme",
        str(tmp_path / "README.md"),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = tmp_path.glob("cpu-quick-*.json")
    return json.loads(path.read_text()), proc.stdout


def _rows(record: dict[str, Any], attack: str, dtype: str = "fp32") -> dict[str, dict[str, Any]]:
    (group,) = [g for g in record["groups"] if g["attack"] == attack and g["dtype"] == dtype]
    return {r["method"]: r for r in group["rows"]}


def test_quick_run_without_peers(tmp_path: Path) -> None:
    hidden = ["torchattacks", "foolbox", "eagerpy", "adv_lib"]
    args = ("--dtype", "fp32,bf16", "--variants", "early_stop")
    record, out = _run(tmp_path, hidden, False, *args)
    for peer in PEERS:
        assert f"{peer}: skipped" in out, out
        assert record["peers"][peer].startswith("not available")
    for attack, fwd, bwd in (("pgd", 11, 10), ("fgsm", 2, 1)):
        rows = _rows(record, attack)
        assert {"bare loop", "advkit", "one no-grad forward"} <= set(rows)
        bare, adv = rows["bare loop"], rows["advkit"]
        assert (
            rows["one no-grad forward"]["forward_per_sample"],
            rows["one no-grad forward"]["backward_per_sample"],
        ) == (1, 0)
        assert "success_rate" not in rows["one no-grad forward"]
        assert adv["floor_from_extra_forwards"] > 1
        k = 10 if attack == "pgd" else 1
        assert (bare["forward_per_sample"], bare["backward_per_sample"]) == (k, k)
        # The counting wrapper sees what advkit reports about itself.
        assert adv["forward_per_sample"] == adv["advkit_forward_passes"] == fwd
        assert adv["backward_per_sample"] == adv["advkit_backward_passes"] == bwd
        assert adv["feasible"]
        assert adv["max_linf"] <= 8 / 255 + 1e-6
        assert adv["success_rate"] == pytest.approx(adv["advkit_success_rate"])
        assert 0.0 <= adv["success_rate"] <= 1.0
        assert len(adv["times_ms"]) == len(bare["times_ms"]) == 3
        assert all(t > 0 for t in adv["times_ms"] + bare["times_ms"])
        assert adv["ratio_to_bare"] == pytest.approx(adv["median_ms"] / bare["median_ms"])
        assert adv["ratio_to_peers"] == {}
        assert adv["peak_memory_mib"] is None  # no GPU: reported as n/a, not made up
    # The speed options get their rows, each against the matching bare loop.
    assert _rows(record, "pgd")["advkit, early_stop"]["baseline"] == "bare loop"
    assert {"bare loop", "advkit", "advkit, early_stop"} <= set(_rows(record, "pgd", "bf16"))
    assert "advkit" in _rows(record, "fgsm", "bf16")
    assert "has no FGSM(early_stop=True)" in out  # FGSM has no early stop: skipped, said so
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("<!-- run.py:cpu:begin -->")
    assert readme.rstrip().endswith("<!-- run.py:cpu:end -->")
    assert "| smallcnn | 16 | fp32 | contiguous | PGD-10 | advkit |" in readme
    assert "| smallcnn | 16 | bf16 | contiguous | FGSM | bare loop |" in readme


def test_quick_run_with_installed_peers(tmp_path: Path) -> None:
    """Every peer either has its rows, with counts and strength, or is skipped with a message."""
    record, out = _run(tmp_path, [], False, "--attacks", "pgd")
    rows = _rows(record, "pgd")
    for peer in PEERS:
        if f"{peer}: skipped" in out:
            assert not [r for r in rows.values() if r["library"] == peer]
            continue
        mine = [r for r in rows.values() if r["library"] == peer]
        assert mine, peer
        for r in mine:
            assert r["backward_per_sample"] == 10, r["method"]
            assert r["forward_per_sample"] >= 10, r["method"]
            assert r["feasible"], r["method"]
            assert r["advkit_over_this"] == pytest.approx(
                rows["advkit"]["median_ms"] / r["median_ms"]
            )
            assert rows["advkit"]["ratio_to_peers"][r["method"]] == pytest.approx(
                r["advkit_over_this"]
            )


def test_options_missing_from_advkit_are_skipped(tmp_path: Path) -> None:
    """An advkit without early_stop / precision: those rows are skipped with a message."""
    args = ("--attacks", "pgd", "--peers", "none", "--dtype", "fp32,bf16", "--steps", "3")
    record, out = _run(tmp_path, [], True, *args, "--variants", "early_stop")
    assert "has no PGD(early_stop=True)" in out
    assert "has no PGD(precision='bf16')" in out
    assert set(_rows(record, "pgd")) == {"bare loop", "advkit", "one no-grad forward"}
    assert set(_rows(record, "pgd", "bf16")) == {"bare loop", "one no-grad forward"}
    assert _rows(record, "pgd")["bare loop"]["forward_per_sample"] == 3


def test_readme_block_replaced_between_markers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_run", run)  # dataclasses look their module up
    monkeypatch.setattr(sys, "path", list(sys.path))  # run.py puts benchmarks/ on it
    for helper in ("_models", "_peers"):  # run.py imports these; leave no trace
        if helper in sys.modules:
            monkeypatch.setitem(sys.modules, helper, sys.modules[helper])
        else:
            monkeypatch.setitem(sys.modules, helper, None)
            monkeypatch.delitem(sys.modules, helper)
    spec.loader.exec_module(run)
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Title\n\nintro\n\n<!-- run.py:cpu:begin -->\nold table\n<!-- run.py:cpu:end -->\n\ntail\n"
    )
    run.update_readme(readme, "cpu", "new table")
    assert readme.read_text() == (
        "# Title\n\nintro\n\n<!-- run.py:cpu:begin -->\nnew table\n<!-- run.py:cpu:end -->\n\ntail\n"
    )
    run.update_readme(readme, "cuda", "gpu table")  # no markers yet: appended
    text = readme.read_text()
    assert text.endswith("<!-- run.py:cuda:begin -->\ngpu table\n<!-- run.py:cuda:end -->\n")
    assert "new table" in text and "tail" in text
