"""The documentation's pages run, top to bottom.

Every ``.md`` page under ``docs/`` with python code (the home page, the
tutorials, the how-to guides, numerics.md) is a program:
its fenced blocks whose info string is exactly ``python`` run in order, in one
namespace, in a fresh interpreter (a temporary working directory, 4 forced host
devices so pages can show sharding). Blocks in other languages (``bash``,
``toml``, ``text``, ``pycon``) are shown, not run. A snippet line
``--8<-- "path"`` (pymdownx.snippets, paths from the repository's root) is
replaced by that file, as the site shows it, so a page that includes a file
runs the file as it is.

Code is compiled under the page's file name with the page's own line numbers:
a traceback, or ``jaxinv.explain``'s source column, points at the markdown line.
An included file keeps its own name and lines.

Run one page by hand (what each test does)::

    python tests/test_tutorials.py docs/tutorials/first-reversible-network.md
"""

from __future__ import annotations

import ast
import dataclasses
import linecache
import os
import pathlib
import re
import subprocess
import sys
import traceback
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = ROOT / "docs" / "tutorials"
RUNNABLE = "python"           # the one info string that runs
PAGE_TIMEOUT = 600            # seconds, far above any page's budget: a hung page fails, never blocks

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
SNIPPET = re.compile(r"""^(?P<indent>[ \t]*)--8<--[ \t]+(?P<quote>["'])(?P<target>[^"']+)(?P=quote)[ \t]*$""")


# ---------------------------------------------------------------- reading pages


@dataclasses.dataclass
class Block:
    """A fenced block: its info string, the markdown line of its first code
    line (1-based), and its code, dedented to the fence's indentation."""
    info: str
    line: int
    code: str


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced block of a markdown page, nested fences left inside theirs
    (a ```` ```` ```` block may show a ```` ``` ```` one)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or (m["fence"][0] == "`" and "`" in m["info"]):
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        body, j = [], i + 1
        while j < len(lines):
            close = FENCE.match(lines[j])
            if (close and close["fence"][0] == fence[0] and len(close["fence"]) >= len(fence)
                    and not close["info"].strip()):
                break
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        blocks.append(Block(info, i + 2, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def python_blocks(page: pathlib.Path) -> list[Block]:
    """The blocks of ``page`` that run: info string exactly ``python``."""
    return [b for b in fenced_blocks(page.read_text()) if b.info == RUNNABLE]


def pages() -> list[pathlib.Path]:
    """The pages whose code runs (every page with a python block), found when
    the tests are collected."""
    return sorted(p for p in DOCS.rglob("*.md") if python_blocks(p))


def shown(page: pathlib.Path) -> str:
    """A page's path from the repository's root (as given when it lies elsewhere)."""
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


def snippet_file(target: str) -> tuple[pathlib.Path, str, int]:
    """The file a snippet names (from the repository's root, as mkdocs.yml's
    ``base_path``), the text it includes, and the file's line of that text.
    ``path:start:end`` includes lines start..end, as pymdownx.snippets does."""
    path, start, end = target, None, None
    m = re.fullmatch(r"(.+?):(\d*)(?::(\d*))?", target)
    if m and not (ROOT / target).exists():
        path, start, end = m[1], int(m[2]) if m[2] else None, int(m[3]) if m[3] else None
    file = ROOT / path
    if not file.is_file():
        raise FileNotFoundError(f"snippet {target!r}: no file {file}")
    lines = file.read_text().splitlines()
    first = start or 1
    return file, "\n".join(lines[first - 1:end]) + "\n", first


@dataclasses.dataclass
class Segment:
    """Code compiled as one unit, under ``filename``, its first line at ``line``."""
    filename: str
    line: int
    code: str


def segments(page: pathlib.Path, block: Block) -> list[Segment]:
    """``block`` cut at its snippet lines: the page's own lines under the
    page's name, each included file under its own path and lines."""
    out, own, own_start = [], [], block.line
    for offset, text in enumerate(block.code.splitlines()):
        m = SNIPPET.match(text)
        if not m:
            own.append(text)
            continue
        if own:
            out.append(Segment(page.name, own_start, "\n".join(own) + "\n"))
        file, included, first = snippet_file(m["target"])
        out.append(Segment(str(file.relative_to(ROOT)), first,
                           "".join(m["indent"] + line for line in included.splitlines(True))))
        own, own_start = [], block.line + offset + 1
    if own:
        out.append(Segment(page.name, own_start, "\n".join(own) + "\n"))
    return out


# ---------------------------------------------------------------- running a page (in the subprocess)


def compiled(segment: Segment) -> types.CodeType:
    tree = ast.parse(segment.code, segment.filename)
    ast.increment_lineno(tree, segment.line - 1)
    # dont_inherit: this file's `from __future__` must not change the page's semantics
    return compile(tree, segment.filename, "exec", dont_inherit=True)


def run_page(page: pathlib.Path, progress: pathlib.Path | None = None) -> None:
    """Run ``page``'s python blocks in order in one namespace, a module named
    ``__main__`` as in a script. Before each block, its markdown line is
    written to ``progress`` (so a crash still names the block); an exception
    is re-raised after printing which block raised it."""
    page = page.resolve()
    text = page.read_text()
    # tracebacks show the page's lines (the code runs under the page's name)
    linecache.cache[page.name] = (len(text), None, text.splitlines(True), page.name)
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    for block in python_blocks(page):
        if progress is not None:
            progress.write_text(str(block.line))
        for segment in segments(page, block):
            if segment.filename != page.name:
                linecache.cache[segment.filename] = (len(segment.code), None, segment.code.splitlines(True),
                                                     segment.filename)
            try:
                exec(compiled(segment), module.__dict__)
            except BaseException as e:
                where = f"{shown(page)}: the python block at line {block.line} raised"
                tb = e.__traceback__.tb_next or e.__traceback__   # drop this function's frame
                print(where + ":\n" + "".join(traceback.format_exception(type(e), e, tb)), file=sys.stderr)
                raise SystemExit(1)


# ---------------------------------------------------------------- the tests


def page_env() -> dict:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=4".strip()
    return env


def tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


def page_failure(page: pathlib.Path, workdir: pathlib.Path) -> str | None:
    """Run ``page`` in a fresh interpreter in ``workdir``: None if every block
    ran, else a message naming the page, the markdown line of the block that
    failed, and what the interpreter printed (the traceback)."""
    progress = workdir / "block"
    try:
        proc = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), str(page), str(progress)],
                              cwd=workdir, env=page_env(), capture_output=True, text=True, timeout=PAGE_TIMEOUT)
        returncode, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        returncode, stdout, stderr = f"a timeout after {PAGE_TIMEOUT} s", e.stdout or "", e.stderr or ""
        stdout, stderr = [s.decode() if isinstance(s, bytes) else s for s in (stdout, stderr)]
    if returncode == 0:
        return None
    line = progress.read_text() if progress.exists() else "?"
    return (f"{shown(page)}: the python block at line {line} failed ({returncode}).\n\n"
            f"--- stderr ---\n{tail(stderr)}\n--- stdout ---\n{tail(stdout, 2000)}")


@pytest.mark.newest_jax_only
@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_runs_top_to_bottom(page, tmp_path):
    """Every python block of the page runs, in order, in one fresh interpreter."""
    failure = page_failure(page, tmp_path)
    if failure:
        pytest.fail(failure, pytrace=False)


def nav_pages(section: str) -> list[str]:
    """The files listed under ``section`` of mkdocs.yml's nav (read without a
    YAML library: the nav is a plain indented list of ``- Title: file``)."""
    lines = (ROOT / "mkdocs.yml").read_text().splitlines()
    start = lines.index("nav:")
    found, inside = [], None
    for line in lines[start + 1:]:
        if line.strip() and not line.startswith((" ", "-")):
            break   # the next top-level key
        m = re.match(r"^(\s*)-\s*([^:]+):\s*(.*)$", line)
        if not m:
            continue
        depth, title, target = len(m[1]), m[2].strip(), m[3].strip()
        if inside is not None and depth <= inside:
            inside = None
        if title == section and not target:
            inside = depth
        elif inside is not None and target:
            found.append(target)
    return found


def test_every_tutorial_in_the_nav_exists():
    listed = nav_pages("Tutorials")
    assert listed, "mkdocs.yml's nav has no Tutorials section"
    missing = [p for p in listed if not (ROOT / "docs" / p).is_file()]
    assert not missing, f"listed under Tutorials in mkdocs.yml but not in docs/: {missing}"


def test_every_tutorial_has_code_that_runs():
    tutorials = sorted(TUTORIALS.glob("*.md"))
    assert tutorials, "docs/tutorials/ has no pages"
    without = [p.name for p in tutorials if not python_blocks(p)]
    assert not without, f"tutorials without a ```python block (nothing of theirs is tested): {without}"


def test_blocks_are_read_with_their_lines_and_snippets(tmp_path):
    """The reader itself: info strings, lines, nesting, indentation, snippets."""
    page = tmp_path / "page.md"
    page.write_text('# t\n\n```python\nx = 1\n```\n\n````markdown\n```python\nnot run\n```\n````\n\n'
                    '!!! note\n    ```python\n    y = x + 1\n    ```\n\n```bash\nls\n```\n\n'
                    '```python\n--8<-- "pyproject.toml:1:2"\nz = 3\n```\n')
    blocks = python_blocks(page)
    assert [(b.line, b.code) for b in blocks] == [
        (4, "x = 1\n"), (15, "y = x + 1\n"), (23, '--8<-- "pyproject.toml:1:2"\nz = 3\n')]
    included = segments(page, blocks[2])
    assert [(s.filename, s.line) for s in included] == [("pyproject.toml", 1), ("page.md", 24)]
    assert included[0].code == "\n".join((ROOT / "pyproject.toml").read_text().splitlines()[:2]) + "\n"


def test_a_failing_block_is_named_by_page_and_line(tmp_path):
    page = tmp_path / "broken.md"
    page.write_text("# broken\n\n```python\nx = 1\n```\n\nText.\n\n```python\ny = x\n"
                    "assert y == 2, 'y is not 2'\n```\n\n```python\nnever = 'run'\n```\n")
    failure = page_failure(page, tmp_path)
    assert failure is not None and failure.startswith(f"{page}: the python block at line 10 failed")
    assert 'File "broken.md", line 11, in <module>' in failure       # the markdown line that raised
    assert "assert y == 2, 'y is not 2'" in failure and "AssertionError: y is not 2" in failure


if __name__ == "__main__":
    run_page(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else None)
