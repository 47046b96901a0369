"""The naming rules of the source (issue: "names that explain themselves"): ``F`` is always
``advkit.functional``, the work dtype comes from one function and is never spelled ``wd``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SOURCES = sorted((Path(__file__).resolve().parents[1] / "src" / "advkit").rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_one_name_for_each_thing(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"import torch\.nn\.functional as F\b", text), "F is advkit.functional"
    assert not re.search(r"\bwd\b", text), "spell the work dtype out (work = F.work_dtype(...))"
    assert not re.search(r"promote_types\([^)]*float32\)", text), "use F.work_dtype"


def test_the_rules_are_read() -> None:
    assert len(SOURCES) > 20
