"""Check the built documentation site as a reader sees it.

Usage::

    mkdocs build --strict --site-dir SITE && python docs/check_site.py SITE

Reads every HTML page of the built site (standard library only) and fails,
printing one line per problem, on:

- a docstring example rendered as a blockquote (Markdown reads a doctest's
  ``>>>`` as three nested quotes when the example is not parsed as code);
- a raw ``>>>``, or a doctest's source or output, outside a code block;
- a doctest block whose copy button would not copy runnable Python;
- an exported attack (`advkit.attacks.registry.REGISTRY`, and any attack class
  that `advkit` exports) missing from the home page's attack table or from the
  API reference of `advkit.attacks`;
- a line of code (a block in a language: ``python``, ``bash``, ...) wider than
  88 characters in the pages written under ``docs/``; plain text blocks
  (diagrams, program output) and the API reference's signatures and
  docstrings are left alone.

``mkdocs build --strict`` checks links and references; this checks what the
pages show.
"""

from __future__ import annotations

import argparse
import ast
import doctest
import functools
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

CODE_WIDTH = 88
"""Widest code line (characters) that fits the text column of a normal window."""

VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}
NOT_PROSE = {"pre", "code", "script", "style", "textarea", "svg"}
BLOCKS = {"p", "li", "td", "th", "dt", "dd", "summary", "h1", "h2", "h3", "h4", "h5", "h6"}
SRC = Path(__file__).resolve().parents[1] / "src" / "advkit"


class Node:
    """An element of a parsed page: tag, attributes, children (nodes and text)."""

    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.children: list[Node | str] = []

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def iter(self, tag: str | None = None) -> Iterator[Node]:
        """This node and its descendants, in document order (only ``tag`` if given)."""
        if tag is None or self.tag == tag:
            yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter(tag)

    def ancestors(self) -> Iterator[Node]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def text(self, skip: set[str] | frozenset[str] = frozenset()) -> str:
        """The text content, leaving out the subtrees of the tags in ``skip``."""
        parts: list[str] = []
        for child in self.children:
            if isinstance(child, str):
                parts.append(child)
            elif child.tag not in skip:
                parts.append(child.text(skip))
        return "".join(parts)


class TreeBuilder(HTMLParser):
    """Builds a `Node` tree; tolerant of unclosed elements, as browsers are."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.stack[-1])
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}, self.stack[-1]))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(path: Path) -> Node:
    builder = TreeBuilder()
    builder.feed(path.read_text(encoding="utf-8"))
    builder.close()
    return builder.root


def squash(text: str) -> str:
    return " ".join(text.split())


def short(text: str, width: int = 70) -> str:
    text = squash(text)
    return text if len(text) <= width else text[: width - 3] + "..."


@functools.cache
def doctest_snippets(src: Path) -> tuple[set[str], set[str]]:
    """Every doctest line of the package's docstrings: (lines, whole outputs), squashed."""
    parser = doctest.DocTestParser()
    lines: set[str] = set()
    outputs: set[str] = set()
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(
                node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
            ):
                continue
            for example in parser.get_examples(ast.get_docstring(node) or ""):
                for line in (*example.source.splitlines(), *example.want.splitlines()):
                    if len(squash(line)) >= 16:
                        lines.add(squash(line))
                if squash(example.want):
                    outputs.add(squash(example.want))
    return lines, outputs


def is_code(pre: Node) -> bool:
    """Whether a ``<pre>`` holds code in a language (not plain text, not a signature).

    pymdownx.highlight marks each block ``language-NAME`` (``pygments_lang_class``);
    a block written without a language is ``language-text``, like ``text``.
    """
    holder = pre.parent
    if holder is None or "doc-signature" in holder.classes:
        return False
    languages = {c for c in holder.classes if c.startswith("language-")}
    return bool(languages) and languages != {"language-text"}


def in_docstring(node: Node) -> bool:
    """Whether ``node`` is inside mkdocstrings' rendering of a Python object."""
    return any("doc-contents" in a.classes or "doc" in a.classes for a in node.ancestors())


def check_page(page: str, root: Node, lines: set[str], outputs: set[str]) -> list[str]:
    problems: list[str] = []

    for quote in root.iter("blockquote"):
        if any(a.tag == "blockquote" for a in quote.ancestors()):
            continue
        nested = any(q is not quote for q in quote.iter("blockquote"))
        if in_docstring(quote) or nested:
            what = "docstring example" if in_docstring(quote) else "doctest"
            problems.append(f"{page}: {what} rendered as a blockquote: {short(quote.text())!r}")

    for node in root.iter():
        if node.tag in NOT_PROSE or any(a.tag in NOT_PROSE for a in node.ancestors()):
            continue
        for child in node.children:
            if isinstance(child, str) and ">>>" in child:
                problems.append(f"{page}: '>>>' outside a code block: {short(child)!r}")

    for block in root.iter():
        if block.tag not in BLOCKS or any(a.tag in NOT_PROSE for a in block.ancestors()):
            continue
        text = squash(block.text(skip=NOT_PROSE | BLOCKS))
        if not text:
            continue
        if block.tag == "p" and text in outputs:
            problems.append(f"{page}: doctest output outside a code block: {short(text)!r}")
            continue
        found = next((line for line in sorted(lines) if line in text), None)
        if found is not None:
            problems.append(
                f"{page}: doctest line outside a code block: {short(found)!r} in {short(text)!r}"
            )

    for block in root.iter("div"):
        if "highlight" not in block.classes or not any(
            "gp" in span.classes for span in block.iter("span")
        ):
            continue
        holder = next((n for n in (block, *block.ancestors()) if "data-copy" in n.attrs), None)
        first = short(block.text(), 50)
        if holder is None:
            problems.append(f"{page}: doctest block copies its prompts: {first!r}")
            continue
        try:
            ast.parse(holder.attrs["data-copy"])
        except SyntaxError as err:
            problems.append(f"{page}: doctest block copies invalid Python ({err.msg}): {first!r}")

    if not page.startswith("api/"):
        for pre in root.iter("pre"):
            if in_docstring(pre) or not is_code(pre):
                continue
            for line in pre.text().splitlines():
                if len(line.rstrip()) > CODE_WIDTH:
                    problems.append(
                        f"{page}: code line of {len(line.rstrip())} > {CODE_WIDTH} characters: "
                        f"{short(line)!r}"
                    )
    return problems


def exported_attacks() -> list[str]:
    """The attacks a reader must find: the registry, and any attack class advkit exports."""
    import advkit
    from advkit.attacks import Attack
    from advkit.attacks.registry import REGISTRY

    names = [entry.name for entry in REGISTRY]
    for name in advkit.__all__:
        obj = getattr(advkit, name)
        if not (isinstance(obj, type) and issubclass(obj, Attack)) or name in names:
            continue
        if not any(e.cls is not obj and issubclass(e.cls, obj) for e in REGISTRY):
            names.append(name)
    return names


def check_attacks(site: Path, pages: dict[str, Node]) -> list[str]:
    problems: list[str] = []
    home = pages.get("index.html")
    api = pages.get("api/attacks/index.html")
    if home is None or api is None:
        return [f"{site}: no index.html or api/attacks/index.html: is this a built advkit site?"]
    in_tables: set[str] = set()
    for row in home.iter("tr"):
        cells = [c for c in row.children if isinstance(c, Node) and c.tag in ("td", "th")]
        if cells:
            in_tables.update(squash(code.text()) for code in cells[0].iter("code"))
    ids = {node.attrs["id"] for node in api.iter() if "id" in node.attrs}
    for name in exported_attacks():
        if name not in in_tables:
            problems.append(f"index.html: exported attack {name} missing from the attack table")
        if f"advkit.attacks.{name}" not in ids:
            problems.append(f"api/attacks/index.html: exported attack {name} is not documented")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", type=Path, help="the directory mkdocs built (--site-dir)")
    ap.add_argument("--src", type=Path, default=SRC, help="the package whose doctests to look for")
    args = ap.parse_args(argv)
    site: Path = args.site
    paths = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    if not paths:
        print(f"check_site: no HTML pages under {site}", file=sys.stderr)
        return 2
    lines, outputs = doctest_snippets(args.src.resolve())
    pages = {p.relative_to(site).as_posix(): parse(p) for p in paths}
    problems: list[str] = []
    for page, root in pages.items():
        problems += check_page(page, root, lines, outputs)
    problems += check_attacks(site, pages)
    if not any(
        c.startswith("language-") for root in pages.values() for n in root.iter() for c in n.classes
    ):
        problems.append(
            f"{site}: no code block names its language, so code widths cannot be checked "
            "(pymdownx.highlight: pygments_lang_class: true)"
        )
    for problem in problems:
        print(problem)
    bad = len({p.split(":", 1)[0] for p in problems})
    print(f"check_site: {len(pages)} pages, {len(problems)} problems in {bad} pages")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
