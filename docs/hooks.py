"""Build-time parts of the docs (declared under ``hooks:`` in mkdocs.yml).

- The attack tables and the member list of the API reference of
  `advkit.attacks` are generated from `advkit.attacks.registry.REGISTRY`, so
  they cannot fall behind the code. A page asks for one with a marker line:

  ``<!-- advkit:attack-table -->``
      the home page's table: every attack, its kind, norms, summary and paper.
  ``<!-- advkit:attack-cli-table -->``
      class, command-line name (``advkit eval --attack NAME``), kind, norms.
  ``<!-- advkit:attack-reference -->``
      the ``::: advkit.attacks`` block: the registry's attacks in its order,
      then the other names of ``advkit.attacks.__all__`` (the building blocks).
  ``<!-- advkit:attack-exports -->``
      rows of the exports table of ``api/advkit.md``, one per kind of attack.

  The page that holds the exports table must mention every name of
  ``advkit.__all__`` in backquotes; a missing one is a warning (an error under
  ``mkdocs build --strict``).
- Doctest blocks get a prompt-free copy text: the copy button of a block of
  ``>>>`` lines copies the statements alone (no prompts, no outputs), ready to
  paste into a file or a plain Python prompt.

Plain functions of strings, so that they are testable without mkdocs.
"""

from __future__ import annotations

import doctest
import html
import logging
import re
from typing import Any

log = logging.getLogger("mkdocs.hooks.advkit")

KINDS = {
    "gradient": ("gradient", "gradient attacks, any norm"),
    "minimal-norm": ("minimal norm", "minimal-norm attacks"),
    "score-based": ("score-based", "score-based attacks (forward passes only)"),
    "noise": ("baseline", "random-noise baselines"),
    "composite": ("composite", "attacks built from other attacks"),
}
"""Registry kind -> (table cell, row label of the exports table)."""

NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
EXPORTS_PAGE = "api/advkit.md"


def _registry() -> tuple[Any, ...]:
    from advkit.attacks.registry import REGISTRY

    return REGISTRY


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _ref(name: str) -> str:
    return f"[`{name}`][advkit.attacks.{name}]"


def attack_table(registry: tuple[Any, ...] | None = None) -> str:
    """The home page's attack table, in the registry's order."""
    rows = [
        "| Attack | Kind | Norms | What it does | Paper |",
        "|---|---|---|---|---|",
    ]
    for e in registry if registry is not None else _registry():
        norms = ", ".join(NORMS[n] for n in e.norms)
        paper = _cell(e.reference) or "—"
        rows.append(
            f"| {_ref(e.name)} | {KINDS[e.kind][0]} | {norms} | {_cell(e.summary)} | {paper} |"
        )
    return "\n".join(rows) + "\n"


def attack_cli_table(registry: tuple[Any, ...] | None = None) -> str:
    """Class, command-line name, kind and norms of every attack."""
    rows = [
        "| Attack | `advkit eval --attack` | Kind | Norms |",
        "|---|---|---|---|",
    ]
    for e in registry if registry is not None else _registry():
        cli = f"`{e.cli}`" if e.cli else "— (built in Python)"
        norms = ", ".join(NORMS[n] for n in e.norms)
        rows.append(f"| {_ref(e.name)} | {cli} | {KINDS[e.kind][0]} | {norms} |")
    return "\n".join(rows) + "\n"


def attack_reference(
    registry: tuple[Any, ...] | None = None, exported: list[str] | None = None
) -> str:
    """The ``::: advkit.attacks`` block: the attacks, then the building blocks."""
    registry = registry if registry is not None else _registry()
    if exported is None:
        import advkit.attacks

        exported = list(advkit.attacks.__all__)
    names = [e.name for e in registry]
    names += [n for n in exported if n not in names]
    members = "".join(f"        - {n}\n" for n in names)
    return f"::: advkit.attacks\n    options:\n      members:\n{members}"


def attack_exports(registry: tuple[Any, ...] | None = None) -> str:
    """Rows of the exports table: one per kind, in the registry's order."""
    by_kind: dict[str, list[str]] = {}
    for e in registry if registry is not None else _registry():
        by_kind.setdefault(e.kind, []).append(e.name)
    rows = []
    for kind, names in by_kind.items():
        listed = ", ".join(f"`{n}`" for n in names)
        links = ", ".join(f"[{n}][advkit.attacks.{n}]" for n in names)
        rows.append(f"| {listed} | {KINDS[kind][1]} | {links} |")
    return "\n".join(rows) + "\n"


MARKERS = {
    "<!-- advkit:attack-table -->": attack_table,
    "<!-- advkit:attack-cli-table -->": attack_cli_table,
    "<!-- advkit:attack-reference -->": attack_reference,
    "<!-- advkit:attack-exports -->": attack_exports,
}


def expand(markdown: str) -> str:
    """Replace every marker line of ``markdown`` with what it stands for."""
    out = []
    for line in markdown.splitlines(keepends=True):
        render = MARKERS.get(line.strip())
        out.append(render() if render is not None else line)
    return "".join(out)


def missing_exports(markdown: str, exported: list[str] | None = None) -> list[str]:
    """The names of ``advkit.__all__`` that ``markdown`` does not mention in backquotes."""
    if exported is None:
        import advkit

        exported = list(advkit.__all__)
    return [n for n in exported if f"`{n}`" not in markdown]


_HIGHLIGHT = re.compile(
    r'<div class="(?P<cls>[^"]*\bhighlight\b[^"]*)"(?P<rest>[^>]*)>(?P<pre>\s*<pre.*?</pre>)',
    re.S,
)


def doctest_copy_text(code_html: str) -> str | None:
    """The statements of a highlighted doctest block, without prompts and outputs.

    ``None`` where the block holds no ``>>>`` example.
    """
    text = html.unescape(re.sub(r"<[^>]+>", "", code_html))
    try:
        examples = doctest.DocTestParser().get_examples(text)
    except ValueError:  # not a well-formed doctest: leave the block alone
        return None
    return "".join(e.source for e in examples) or None


def add_copy_text(page_html: str) -> str:
    """Give each doctest block a ``data-copy`` text that the copy button uses."""

    def one(m: re.Match[str]) -> str:
        if "data-copy=" in m["rest"] or 'class="gp"' not in m["pre"]:
            return m[0]
        source = doctest_copy_text(m["pre"])
        if source is None:
            return m[0]
        attr = html.escape(source.rstrip("\n"), quote=True).replace("\n", "&#10;")
        return f'<div class="{m["cls"]}"{m["rest"]} data-copy="{attr}">{m["pre"]}'

    return _HIGHLIGHT.sub(one, page_html)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    markdown = expand(markdown)
    if page.file.src_uri == EXPORTS_PAGE:
        for name in missing_exports(markdown):
            log.warning(
                "%s: advkit exports %r but the exports table does not list it",
                EXPORTS_PAGE,
                name,
            )
    return markdown


def on_page_content(html_: str, page: Any, config: Any, files: Any) -> str:
    return add_copy_text(html_)
