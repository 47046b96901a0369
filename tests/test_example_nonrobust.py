"""The non-robust-features example runs end to end (quick mode), writes its dataset and grid."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from advkit import io as advio

ROOT = Path(__file__).resolve().parents[1]


def test_nonrobust_features_example_runs(tmp_path: Path) -> None:
    out, data = tmp_path / "grid.png", tmp_path / "adv"
    cmd = [sys.executable, str(ROOT / "examples" / "nonrobust_features.py"), "--quick"]
    cmd += ["--out", str(out), "--data", str(data)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"clean test accuracy \d+\.\d%", proc.stdout), proc.stdout
    assert out.stat().st_size > 1000
    ds = advio.AdversarialDataset(data, relabel="target")
    assert ds.targeted
    assert bool((ds.column("target") == (ds.column("label") + 1) % 10).all())
