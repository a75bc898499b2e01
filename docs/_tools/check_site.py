"""Build the documentation site and read it as a user would, in headless Chromium.

    python docs/_tools/check_site.py            # build/site, screenshots in build/site-check

Steps: ``mkdocs build --strict`` into ``build/site``; serve it on 127.0.0.1;
open the home page, a tutorial, the API reference and the performance page in
headless Chromium (Debian's ``chromium``, driven by Playwright); on each, check
the title, that code blocks rendered, that every image loaded, that nothing
logged an error to the console or failed to load; save a full-page screenshot
of each. Exits 1 with every problem listed if anything is wrong.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import pathlib
import shutil
import subprocess
import sys
import threading

ROOT = pathlib.Path(__file__).resolve().parents[2]

# (path under the site, words the title must contain, what the page must show)
PAGES = [
    ("", "jaxinv", {"code": 1}),
    ("tutorials/first-reversible-network/", "first reversible network", {"code": 3}),
    ("api/jaxinv/", "jaxinv", {"code": 10, "api_entries": 30}),
    ("guides/performance/", "Performance", {"images": 2}),
    ("design/", "design", {"images": 1}),
]

# Chromium as root in a sandboxed machine with no network: no sandbox, no GPU,
# no background connections to Google's services (refused here, and noisy).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def build(site: pathlib.Path) -> None:
    """``mkdocs build --strict`` into ``site``: a broken link or reference fails here."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                   cwd=ROOT, env=env, check=True)


def serve(site: pathlib.Path) -> http.server.ThreadingHTTPServer:
    """The built site on 127.0.0.1, on a free port, from a background thread."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def check_page(browser, base: str, path: str, title_words: str, expect: dict, shots: pathlib.Path) -> list[str]:
    """Problems seen on one page (an empty list when it reads well)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"uncaught exception: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed to load {r.url}: {r.failure}"))
    response = page.goto(base + path, wait_until="networkidle")
    if response is None or response.status != 200:
        problems.append(f"HTTP {response.status if response else 'no response'}")
    title = page.title()
    if title_words.lower() not in title.lower():
        problems.append(f"title {title!r} lacks {title_words!r}")
    counts = page.evaluate("""() => ({
        code: document.querySelectorAll('article pre code').length,
        api_entries: document.querySelectorAll('article .doc-heading').length,
        images: document.querySelectorAll('article img').length,
        broken_images: [...document.querySelectorAll('img')]
            .filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    })""")
    for what, least in expect.items():
        if counts[what] < least:
            problems.append(f"{counts[what]} {what.replace('_', ' ')}, expected at least {least}")
    for src in counts["broken_images"]:
        problems.append(f"image did not load: {src}")
    name = path.strip("/").replace("/", "-") or "home"
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    page.close()
    return [f"/{path}: {p}" for p in problems]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "build",
                        help="site in OUT/site, screenshots in OUT/site-check")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    site, shots = args.out / "site", args.out / "site-check"
    build(site)
    shots.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    server = serve(site)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    problems = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
            for path, title, expect in PAGES:
                problems += check_page(browser, base, path, title, expect, shots)
            browser.close()
    finally:
        server.shutdown()
    if problems:
        print("The site does not read well:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"site checked: {len(PAGES)} pages read well in headless Chromium; screenshots in {shots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
