"""Screenshots of a few pages of the built site, for a reviewer to look at.

Usage::

    mkdocs build --site-dir SITE
    python docs/screenshots.py SITE OUT [PAGE ...]

Serves ``SITE`` on a local port and saves one PNG per page under ``OUT`` with
headless Chromium (``chromium``, ``chromium-browser`` or ``google-chrome`` on
the PATH, or ``$CHROMIUM``; Debian and Ubuntu: ``apt-get install chromium``).
A PAGE is a path inside the site, with an optional ``#anchor``: the shot then
shows that part of the page alone (the documented object the anchor names, or
the page from the anchor on), since headless Chromium does not capture a page
scrolled to an anchor. Without pages, a default set is taken (the home page,
its attack table, the FGSM and l1_box_project docstrings, the user guide).
Not part of CI: it needs a browser.
Offline, the maths shows as TeX source (MathJax comes from a CDN; see
docs/README.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

DEFAULT_PAGES = [
    "",
    "#what-is-in-the-box",
    "api/attacks/#advkit.attacks.FGSM",
    "api/functional/#advkit.functional.l1_box_project",
    "guide/",
]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
    "--virtual-time-budget=4000",
]


def find_browser() -> str:
    names = [os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"]
    for name in names:
        if name and shutil.which(name):
            return str(shutil.which(name))
    raise SystemExit("screenshots: no Chromium found (apt-get install chromium, or set CHROMIUM)")


FOCUS = """<script>
window.addEventListener("load", () => {
  const target = document.getElementById(%s);
  const inner = document.querySelector(".md-content__inner");
  if (!target || !inner) return;
  const object = target.closest(".doc-object");
  if (object) { inner.replaceChildren(object); return; }
  let top = target;
  while (top.parentElement && top.parentElement !== inner) top = top.parentElement;
  while (top.previousSibling) top.previousSibling.remove();
});
</script>"""
"""Shows one part of a page: what the id names (a documented object), or all from it on."""


class Handler(SimpleHTTPRequestHandler):
    """Serves the site; ``?focus=ID`` on a page adds the `FOCUS` script for that id."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        focus = parse_qs(url.query).get("focus")
        page = Path(self.translate_path(url.path))
        page = page / "index.html" if page.is_dir() else page
        if not focus or page.suffix != ".html" or not page.is_file():
            super().do_GET()
            return
        script = FOCUS % json.dumps(focus[0])
        body = page.read_text(encoding="utf-8").replace("</body>", script + "</body>", 1)
        data = body.encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def file_name(page: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", page.strip("/")).strip("_")
    return (name or "index") + ".png"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", type=Path, help="the built site (mkdocs build --site-dir)")
    ap.add_argument("out", type=Path, help="where to save the PNG files")
    ap.add_argument("pages", nargs="*", default=DEFAULT_PAGES, help="paths inside the site")
    ap.add_argument("--width", type=int, default=1280, help="window width in pixels")
    ap.add_argument("--height", type=int, default=1600, help="window height in pixels")
    args = ap.parse_args(argv)
    browser = find_browser()
    args.out.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(Handler, directory=str(args.site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for page in args.pages:
            path, _, anchor = page.partition("#")
            url = f"http://127.0.0.1:{server.server_address[1]}/{path}"
            url += f"?focus={anchor}" if anchor else ""
            png = args.out / file_name(page)
            subprocess.run(
                [
                    browser,
                    *FLAGS,
                    f"--window-size={args.width},{args.height}",
                    f"--screenshot={png.resolve()}",
                    url,
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            print(f"{url} -> {png}")
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
