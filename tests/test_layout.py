"""The package's layout is its architecture: the machinery is private and
layered, and every package folder says what belongs in it."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = ROOT / "jaxinv" / "_src"
LEAVES = {"jaxinv.registry", "jaxinv.markers"}   # public modules the machinery may build on


def _order() -> list[str]:
    """The machinery's modules in the order jaxinv/_src/README.md's table lists them."""
    return re.findall(r"^\|[^|]*\| `(\w+)\.py` \|", (SRC / "README.md").read_text(), flags=re.M)


def _imports(path: pathlib.Path) -> set[str]:
    """The jaxinv modules ``path`` imports (``from jaxinv._src import plan`` counts as jaxinv._src.plan)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxinv"):
            if node.module in ("jaxinv", "jaxinv._src"):
                found.update(f"{node.module}.{a.name}" for a in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("jaxinv"))
    return found


def test_the_readme_lists_every_module_of_the_machinery():
    assert sorted(_order()) == sorted(p.stem for p in SRC.glob("*.py") if p.stem != "__init__")


def test_the_machinery_imports_only_what_comes_before_it():
    order = _order()
    for i, name in enumerate(order):
        allowed = {f"jaxinv._src.{m}" for m in order[:i]} | LEAVES
        wrong = sorted(_imports(SRC / f"{name}.py") - allowed)
        assert not wrong, f"jaxinv/_src/{name}.py imports {wrong}: only modules above it in _src/README.md, and {LEAVES}"


def test_the_leaves_of_the_public_layer_build_on_the_support_modules_only():
    for leaf in LEAVES:
        path = ROOT / (leaf.replace(".", "/") + ".py")
        wrong = sorted(m for m in _imports(path) if m not in {"jaxinv._src.facts", "jaxinv._src.compat"})
        assert not wrong, f"{leaf} imports {wrong}"


def test_every_package_folder_says_what_belongs_in_it():
    folders = {p.parent for p in (ROOT / "jaxinv").rglob("__init__.py")}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "README.md").is_file())
    assert not missing, f"package folders without a README.md: {missing}"


def test_tests_import_public_names_or_the_machinery_never_a_private_helper_of_a_public_module():
    """Tests reach the machinery through jaxinv._src; a public module's private
    helpers (``jaxinv.testing._params_key``) are no test's business."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxinv") \
                    and not node.module.startswith("jaxinv._src"):
                offenders += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not offenders, offenders


def test_a_wheel_ships_every_package_folder():
    """pyproject.toml finds packages by their __init__.py: a folder without one
    would be missing from a non-editable install."""
    import setuptools
    shipped = set(setuptools.find_packages(str(ROOT), include=["jaxinv*"]))
    folders = {".".join(p.relative_to(ROOT).parts) for p in (ROOT / "jaxinv").rglob("*.py")
               for p in [p.parent] if "__pycache__" not in p.parts}
    assert folders <= shipped, sorted(folders - shipped)
