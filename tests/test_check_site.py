"""docs/check_site.py finds what a reader of the built site would see wrong.

Runs the check on small hand-written sites: one that passes, and copies of it
with one defect each (the defects the broken site had: examples as
blockquotes, a stale attack table).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from advkit.attacks.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def load_check() -> ModuleType:
    path = ROOT / "docs" / "check_site.py"
    spec = importlib.util.spec_from_file_location("advkit_docs_check_site", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXAMPLE = (
    '<div class="highlight" data-copy="x = 1"><pre><code>'
    '<span class="gp">&gt;&gt;&gt; </span>x = 1</code></pre></div>'
)


def python_block(code: str) -> str:
    return f'<div class="language-python highlight"><pre><code>{code}\n</code></pre></div>'


def page(body: str) -> str:
    return f'<html><body><div class="md-content__inner">{body}</div></body></html>'


def write_site(tmp: Path, home_names: list[str], api_body: str = "", guide: str = "") -> Path:
    """A tiny built site under ``tmp / "site"``; returns ``tmp``."""
    root = tmp / "site"
    rows = "".join(f"<tr><td><a><code>{n}</code></a></td><td>x</td></tr>" for n in home_names)
    (root / "api" / "attacks").mkdir(parents=True)
    (root / "guide").mkdir()
    (root / "index.html").write_text(page(f"<table><tbody>{rows}</tbody></table>"))
    objects = "".join(
        f'<div class="doc doc-object"><h3 id="advkit.attacks.{e.name}">{e.name}</h3>'
        f'<div class="doc doc-contents"><p>An attack.</p>{EXAMPLE}</div></div>'
        for e in REGISTRY
    )
    (root / "api" / "attacks" / "index.html").write_text(page(objects + api_body))
    (root / "guide" / "index.html").write_text(page(guide or python_block("x = 1")))
    return tmp


ALL = [e.name for e in REGISTRY]


DOCTESTS = '''"""A module whose doctests the check looks for.

Examples:
    >>> net = make_net(width=4, depth=2)
    >>> describe(net)
    (4 features, 2 layers, 3 outputs)
"""
'''


def run(check: ModuleType, tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Check the site ``write_site`` wrote under ``tmp``, against the doctests of `DOCTESTS`."""
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    (src / "module.py").write_text(DOCTESTS)
    code = check.main([str(tmp / "site"), "--src", str(src)])
    return code, capsys.readouterr().out


def test_a_sound_site_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(load_check(), write_site(tmp_path, ALL), capsys)
    assert code == 0, out
    assert "0 problems" in out


@pytest.mark.parametrize(
    ("api_body", "guide", "expected"),
    [
        (
            '<div class="doc doc-contents"><details><blockquote><blockquote><blockquote>'
            "<p>net = torch.nn.Linear(4, 2)</p></blockquote></blockquote></blockquote>"
            "</details></div>",
            "",
            "docstring example rendered as a blockquote",
        ),
        ("", "<blockquote><blockquote><p>x</p></blockquote></blockquote>", "as a blockquote"),
        ("", "<p>&gt;&gt;&gt; x = 1</p>", "'>>>' outside a code block"),
        ("<p>(4 features, 2 layers, 3 outputs)</p>", "", "doctest output outside a code block"),
        ("<p>then net = make_net(width=4, depth=2) runs</p>", "", "doctest line outside"),
        (
            '<div class="highlight"><pre><code><span class="gp">&gt;&gt;&gt; </span>x = 1'
            "</code></pre></div>",
            "",
            "doctest block copies its prompts",
        ),
        (
            '<div class="highlight" data-copy="x = ("><pre><code>'
            '<span class="gp">&gt;&gt;&gt; </span>x = (</code></pre></div>',
            "",
            "copies invalid Python",
        ),
        ("", python_block("y" * 89), "code line of 89 > 88"),
    ],
)
def test_each_defect_fails_the_check(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    api_body: str,
    guide: str,
    expected: str,
) -> None:
    code, out = run(load_check(), write_site(tmp_path, ALL, api_body, guide), capsys)
    assert code == 1
    assert expected in out


def test_wide_code_in_the_api_reference_is_left_to_the_linters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = write_site(tmp_path, ALL, api_body=python_block("y" * 95))
    assert run(load_check(), site, capsys)[0] == 0


def test_wide_plain_text_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    diagram = f'<div class="language-text highlight"><pre><code>{"-" * 95}</code></pre></div>'
    site = write_site(tmp_path, ALL, guide=python_block("y" * 88) + diagram)
    assert run(load_check(), site, capsys)[0] == 0


def test_an_attack_missing_from_the_home_table_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(load_check(), write_site(tmp_path, ALL[:-1]), capsys)
    assert code == 1
    assert f"exported attack {ALL[-1]} missing from the attack table" in out


def test_an_attack_missing_from_the_api_reference_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = write_site(tmp_path, ALL)
    api = site / "site" / "api" / "attacks" / "index.html"
    api.write_text(api.read_text().replace(f'id="advkit.attacks.{ALL[0]}"', 'id="gone"'))
    code, out = run(load_check(), site, capsys)
    assert code == 1
    assert f"exported attack {ALL[0]} is not documented" in out


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    assert load_check().main([str(tmp_path)]) == 2


def test_a_site_without_language_classes_cannot_pass_unchecked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(load_check(), write_site(tmp_path, ALL, guide="<p>no code</p>"), capsys)
    assert code == 1
    assert "pygments_lang_class" in out
