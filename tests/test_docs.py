"""The generated docs stay in step with the registry."""

import runpy
import pathlib

from jaxinv import compat
from jaxinv.compat import PRIMITIVES_SINCE, available

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
