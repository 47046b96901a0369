"""benchmarks/autoattack.py runs end to end in quick mode (functional checks, no timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_writes_feasible_rows_for_each_version(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "autoattack.py"), "--quick"]
    cmd += ["--models", "digits", "--norms", "linf", "--peers", "none", "--threads", "1"]
    cmd += ["--results-dir", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = tmp_path.glob("autoattack-*.json")
    record = json.loads(path.read_text())
    (config,) = record["configs"]
    rows = {r["method"]: r for r in config["rows"]}
    assert set(rows) == {"advkit standard", "advkit fast"}
    assert all(r["feasible"] and not r["changed_inputs"] for r in rows.values())
    passes = {k: r["forward_per_sample"] + r["backward_per_sample"] for k, r in rows.items()}
    assert 0 < passes["advkit fast"] < passes["advkit standard"]
    for r in rows.values():  # advkit's own verdict agrees with the script's on every sample
        assert r["advkit_reported"]["success_disagreements"] == 0


SETTINGS = {"steps": 1, "queries": 1, "precision": None, "seed": 0, "peer_seed": 0}


def _record(weights: str | None, clean: float, robust: float, **settings: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"label": "m linf eps=0.1", "n": 8, "clean_accuracy": clean}
    if weights is not None:
        config["weights"] = weights
    config["rows"] = [{"method": "advkit fast", "robust_accuracy": robust}]
    return {
        "command": "c",
        "elapsed_s": 1.0,
        "date": "d",
        "machine": {},
        "settings": {**SETTINGS, **settings},
        "configs": [config],
    }


def test_update_merges_rows_of_the_same_model_and_settings_only() -> None:
    """``--update`` puts rerun rows in place, and refuses rows of other weights (a model
    retrained on another CPU), another clean accuracy, a record without weights digests
    (older than them) or other settings (another seed is another table)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import autoattack as bench

    out = bench.merged(_record("aaa", 0.9, 0.5), _record("aaa", 0.9, 0.4))
    assert out["configs"][0]["rows"] == [{"method": "advkit fast", "robust_accuracy": 0.4}]
    assert len(out["updates"]) == 1 and "Rows rerun" in bench.markdown(_with_settings(out))
    refused = {
        "not the ones of the record's rows": [_record("bbb", 0.9, 0.4), _record("aaa", 0.95, 0.4)],
        "no digest of the model's weights": [_record("aaa", 0.9, 0.4)],
        "seed=0, this run with seed=1": [_record("aaa", 0.9, 0.4, seed=1)],
    }
    for why, news in refused.items():
        for new in news:
            old = _record(None if "digest" in why else "aaa", 0.9, 0.5)
            with pytest.raises(SystemExit, match=why):
                bench.merged(old, new)
    assert bench.update_refusal(_record("aaa", 0.9, 0.5), {**SETTINGS, "steps": 2}) is not None
    assert bench.update_refusal(_record("aaa", 0.9, 0.5), SETTINGS) is None


def _with_settings(record: dict[str, Any]) -> dict[str, Any]:
    mi = {"cpu": "cpu", "cpu_count": 2, "torch_threads": 1, "torch": "t", "advkit": "a"}
    record["machine"] = {**mi, "advkit_commit": "c0"}
    record["updates"][0]["machine"] = {**mi, "advkit_commit": "c1"}
    record["errors"] = []
    for g in record["configs"]:
        g.update(eps=0.1, clean_accuracy=0.9)
        for r in g["rows"]:
            r.update(forward_per_sample=1.0, backward_per_sample=1.0, seconds=1.0)
            r.update(feasible=True)
    return record


def test_members_record_lists_what_each_part_breaks(tmp_path: Path) -> None:
    """benchmarks/autoattack_members.py: standard's parts and the candidates run alone on
    the samples fast's first two members leave robust; what it lists is consistent."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "autoattack_members.py")]
    cmd += ["--models", "digits", "--n", "40", "--candidates", "apgd-t-ce-30,fab-t2"]
    cmd += ["--results-dir", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = tmp_path.glob("autoattack-members-l1-*.json")
    (config,) = json.loads(path.read_text())["configs"]
    broken_by_parts = {i for ids in config["parts"].values() for i in ids}
    assert len(broken_by_parts) == config["standard_breaks_beyond"]
    assert len(config["parts_breaking_each"]) == config["standard_breaks_beyond"]
    assert len(config["parts"]) == 5 + 5 + 9 + 1  # APGD-CE restarts, APGD-T, FAB-T, Square
    for row in config["candidates"].values():
        assert row["of_standard"] == len(broken_by_parts & set(row["broken"]))
        assert row["others"] == len(set(row["broken"]) - broken_by_parts)
        assert row["passes_per_sample"] > 0


def test_members_record_measures_fast_l1s_own_members() -> None:
    """The candidates the record counts as ``fast``'s L1 members are built as ``fast`` builds
    them (so ``fast_l1_rest`` follows the library), and its near ones are ``NEAR_MEMBERS``."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import autoattack_members as members

    import advkit
    from advkit.attacks.autoattack import NEAR_MEMBERS

    fast = dict(advkit.AutoAttack("l1", 2.0, version="fast").members)
    own = dict(zip(members.FAST_L1_REST, ("apgd-t-ce", "apgd-ce-restarts"), strict=True))
    own.update(zip(members.FAST_L1_NEAR, NEAR_MEMBERS, strict=True))
    for candidate, member in own.items():
        assert repr(members.CANDIDATES[candidate]("l1", 2.0)) == repr(fast[member]), candidate


def test_update_is_refused_before_the_run(tmp_path: Path) -> None:
    """A rerun that the record cannot take stops before it attacks anything."""
    path = tmp_path / "record.json"
    path.write_text(json.dumps(_record("aaa", 0.9, 0.5, steps=100, queries=5000)))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "autoattack.py"), "--models", "digits"]
    cmd += ["--norms", "linf", "--peers", "none", "--seed", "1", "--update", str(path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "--update refused: the record ran with seed=0, this run with seed=1" in done.stderr
    assert "==" not in done.stdout  # no configuration started
