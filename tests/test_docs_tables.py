"""The attack tables agree with the attack registry.

The README's table is plain Markdown (GitHub shows it as written), so it is
checked here; the docs site's tables are generated from the registry by
docs/hooks.py, whose generators are tested here without mkdocs.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import advkit
import advkit.attacks
from advkit.attacks.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
NORMS = {"Linf": "linf", "L2": "l2", "L1": "l1"}


def load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("advkit_docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_after(markdown: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table after ``heading``, header row excluded."""
    lines = markdown[markdown.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def readme_attacks(readme: str | None = None) -> list[tuple[str, list[str]]]:
    """(name, row) per attack of the README's table, in the table's order."""
    readme = (ROOT / "README.md").read_text() if readme is None else readme
    rows = table_after(readme, "## Attacks and threat models")
    return [(name, row) for row in rows for name in re.findall(r"`(\w+)`", row[0])]


def test_readme_table_lists_every_registry_attack_once_in_order() -> None:
    names = [name for name, _ in readme_attacks()]
    assert names == [e.name for e in REGISTRY]


def test_readme_table_norms_and_papers_match_the_registry() -> None:
    entries = {e.name: e for e in REGISTRY}
    for name, row in readme_attacks():
        entry = entries[name]
        norms = {NORMS[n.strip()] for n in row[2].split(",")}
        assert norms == set(entry.norms), f"README: norms of {name}"
        paper = row[4]
        if entry.reference:
            first_author = entry.reference.split()[0]
            assert first_author in paper, f"README: paper of {name} is not {entry.reference}"
        else:
            assert paper == "—", f"README: {name} has no paper in the registry"


def test_readme_parser_sees_a_stale_table() -> None:
    stale = (
        "## Attacks and threat models\n\n| Attack | Kind | Norms |\n|---|---|---|\n"
        "| `FGSM` | step | Linf |\n| `UniformNoise`, `GaussianNoise` | noise | L2 |\n\nafter\n"
    )
    assert [name for name, _ in readme_attacks(stale)] == ["FGSM", "UniformNoise", "GaussianNoise"]


def test_home_table_has_one_row_per_attack_in_registry_order() -> None:
    table = load_hooks().attack_table()
    rows = [line for line in table.splitlines() if line.startswith("| [")]
    assert [re.findall(r"^\| \[`(\w+)`\]", r) for r in rows] == [[e.name] for e in REGISTRY]
    for entry, row in zip(REGISTRY, rows, strict=True):
        assert f"][advkit.attacks.{entry.name}]" in row
        assert " ".join(entry.summary.split()) in row


def test_cli_table_gives_each_attack_its_command_line_name() -> None:
    table = load_hooks().attack_cli_table()
    for entry in REGISTRY:
        row = next(line for line in table.splitlines() if f"[`{entry.name}`]" in line)
        assert (f"`{entry.cli}`" in row) if entry.cli else ("built in Python" in row)


def test_api_reference_documents_the_attacks_then_the_rest_of_all() -> None:
    block = load_hooks().attack_reference()
    members = re.findall(r"^ {8}- (\w+)$", block, flags=re.M)
    names = [e.name for e in REGISTRY]
    assert block.startswith("::: advkit.attacks\n")
    assert members[: len(names)] == names
    assert sorted(members) == sorted(advkit.attacks.__all__)


def test_exports_page_mentions_every_name_of_advkit_all() -> None:
    hooks = load_hooks()
    page = hooks.expand((ROOT / "docs" / "api" / "advkit.md").read_text())
    assert "<!-- advkit:" not in page
    assert hooks.missing_exports(page) == []
    assert hooks.missing_exports(page, [*advkit.__all__, "NotExported"]) == ["NotExported"]


def test_home_page_and_attacks_page_ask_for_the_generated_tables() -> None:
    assert "<!-- advkit:attack-table -->" in (ROOT / "docs" / "index.md").read_text()
    attacks = (ROOT / "docs" / "api" / "attacks.md").read_text()
    assert "<!-- advkit:attack-reference -->" in attacks
    assert "::: advkit.attacks\n" not in attacks  # the member list is generated, not written


def test_doctest_blocks_copy_their_statements_alone() -> None:
    hooks = load_hooks()
    block = (
        '<div class="highlight"><pre><span></span><code>'
        '<span class="gp">&gt;&gt;&gt; </span><span class="n">x</span> = <span class="mi">1</span>\n'
        '<span class="gp">&gt;&gt;&gt; </span><span class="k">if</span> x &lt; 2:\n'
        '<span class="gp">... </span>    print(&quot;a&quot;)\n'
        '<span class="go">a</span>\n'
        "</code></pre></div>"
    )
    out = hooks.add_copy_text(f"<p>text</p>{block}")
    copy = re.search(r'data-copy="([^"]*)"', out)
    assert copy is not None
    assert copy[1] == "x = 1&#10;if x &lt; 2:&#10;    print(&quot;a&quot;)"
    plain = '<div class="language-python highlight"><pre><code>x = 1\n</code></pre></div>'
    assert hooks.add_copy_text(plain) == plain


def test_docstring_examples_are_in_examples_sections() -> None:
    # griffe (the API reference) parses "Examples:" as code; "Example:" becomes an
    # admonition whose ">>>" lines Markdown renders as nested blockquotes.
    singular = re.compile(r"^\s*Example:\s*$", re.M)
    found = [
        f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}"
        for path in sorted((ROOT / "src" / "advkit").rglob("*.py"))
        for text in [path.read_text()]
        for m in singular.finditer(text)
    ]
    assert found == [], "rename these section headers to 'Examples:'"
