"""The README's demo runs end to end (quick mode) and writes its image grid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Clean accuracy" in proc.stdout
    for row in ("FGSM", "BIM", "PGD", "UniformNoise", "targeted"):
        assert row in proc.stdout, row
    assert out.exists()
    assert out.stat().st_size > 1000
