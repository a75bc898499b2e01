"""The generated docs stay in step with the registry."""

import runpy
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_rules_md_is_current():
    make_rules = runpy.run_path(str(ROOT / "docs" / "make_rules.py"))
    assert (ROOT / "docs" / "rules.md").read_text() == make_rules["render"](), (
        "docs/rules.md is stale: run `python docs/make_rules.py`")


def test_rules_md_lists_every_builtin_rule():
    text = (ROOT / "docs" / "rules.md").read_text()
    from jaxinv.rules import BUILTIN_PACKS
    for pack in BUILTIN_PACKS:
        for prim in pack.primitives:
            assert f"| `{prim.name}` | {pack.name} |" in text, prim.name
