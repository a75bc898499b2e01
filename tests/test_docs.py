"""The generated docs stay in step with the registry."""

import runpy
import pathlib

from jaxinv._src import compat
from jaxinv._src.compat import PRIMITIVES_SINCE, available

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_rules_md_is_current():
    """docs/rules.md is rendered on the newest JAX. On an older one, the page
    lists the same rules but for the primitives that JAX lacks (its counts, and
    the examples that need a newer JAX, differ)."""
    make_rules = runpy.run_path(str(ROOT / "docs" / "make_rules.py"))
    committed, here = (ROOT / "docs" / "rules.md").read_text(), make_rules["render"]()
    missing = [name for name in PRIMITIVES_SINCE if not available(getattr(compat, f"{name}_p"))]
    if not missing:
        assert committed == here, "docs/rules.md is stale: run `python docs/make_rules.py`"
        return
    rules = lambda text: {tuple(line.split(" | ")[:2]) for line in text.splitlines() if line.startswith("| `")}
    assert rules(here) <= rules(committed), sorted(rules(here) - rules(committed))
    assert {name.strip("| `") for name, _ in rules(committed) - rules(here)} == set(missing)


def test_rules_md_lists_every_builtin_rule():
    text = (ROOT / "docs" / "rules.md").read_text()
    from jaxinv.rules import BUILTIN_PACKS
    for pack in BUILTIN_PACKS:
        for prim in pack.primitives:
            assert f"| `{prim.name}` | {pack.name} |" in text, prim.name


def test_docs_stand_alone():
    """The project's docs name no file outside the repository (the design is
    recorded in docs/design.md, not in a file of the project's first plans),
    and every relative link in them leads to a file that exists."""
    import re
    files = sorted({ROOT / "README.md", ROOT / "CONTRIBUTING.md", *ROOT.glob("examples/*/README.md"),
                    *(ROOT / "docs").rglob("*.md")})
    generated = (ROOT / "docs" / "_tools" / "hooks.py").read_text()  # figures the site's build adds
    problems = []
    for f in files:
        text = f.read_text()
        if re.search(r"shared/|ARCHITECTURE\.md", text):
            problems.append(f"{f.relative_to(ROOT)} names a file of the project's first plans")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:|#", target):
                continue
            path = (f.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(ROOT):
                problems.append(f"{f.relative_to(ROOT)} links outside the repository: {target}")
            elif not path.exists() and not (path.parent == ROOT / "docs" / "images" and path.name in generated):
                problems.append(f"{f.relative_to(ROOT)} links to a missing file: {target}")
    assert not problems, "\n".join(problems)
