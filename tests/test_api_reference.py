"""The API reference (docs/api/*.md) documents every public name, and every
public name has a docstring with an example.

A public name is one listed in the ``__all__`` of a public module. A name may be
documented under any public path (``jaxinv.Example`` documents
``jaxinv.domains.Example``): the reference entry and the name must be the same
object.
"""

import importlib
import inspect
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
API_PAGES = ROOT / "docs" / "api"
PUBLIC_MODULES = ["jaxinv", "jaxinv.nn", "jaxinv.nn.flax", "jaxinv.nn.equinox", "jaxinv.testing",
                  "jaxinv.registry", "jaxinv.domains"]


def _resolve(path: str):
    """The object a mkdocstrings identifier (``jaxinv.nn.Layer``) names. As in
    ``jaxinv.explain.explain``, a package attribute may shadow a module of the
    same name: the module is imported where the attribute has no such name."""
    parts = path.split(".")
    obj = importlib.import_module(parts[0])
    for i, attr in enumerate(parts[1:], start=1):
        if not hasattr(obj, attr):  # a submodule not imported yet, or one its package shadows
            module = importlib.import_module(".".join(parts[:i]))
            obj = module if hasattr(module, attr) else importlib.import_module(".".join(parts[:i + 1]))
            if obj is module:
                obj = getattr(module, attr)
            continue
        obj = getattr(obj, attr)
    return obj


def _documented() -> dict[int, str]:
    """``id`` of every object the reference pages document, with its identifier."""
    found = {}
    for page in sorted(API_PAGES.glob("*.md")):
        for ident in re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), flags=re.M):
            found[id(_resolve(ident))] = ident
    return found


def _public_names():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            yield f"{module_name}.{name}", getattr(module, name)


PUBLIC = dict(_public_names())


def test_every_public_module_declares_its_surface():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        assert module.__all__, module_name
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, f"{module_name}.__all__ names what it lacks: {missing}"


def test_every_reference_entry_names_a_real_object():
    # _documented resolves each `::: identifier`; a typo raises here, before mkdocs does.
    assert len(_documented()) >= 40


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_name_is_in_the_api_reference(name):
    documented = _documented()
    assert id(PUBLIC[name]) in documented, (
        f"{name} is public but no page under docs/api documents it: add `::: {name}` to the page of its module")


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_name_has_a_docstring_with_an_example(name):
    doc = inspect.getdoc(PUBLIC[name]) or ""
    assert re.search(r"^Example[^\n]*:\n\s*```", doc, flags=re.M), (
        f"{name}'s docstring has no example: add an `Example:` section with a ```python block")


@pytest.mark.parametrize("name", sorted(n for n, o in PUBLIC.items() if inspect.isclass(o)))
def test_public_methods_have_docstrings(name):
    cls = PUBLIC[name]
    undocumented = [m for m, v in inspect.getmembers(cls)
                    if not m.startswith("_") and (inspect.isfunction(v) or isinstance(v, property))
                    and not inspect.getdoc(getattr(cls, m))]
    assert not undocumented, f"{name} has public methods without a docstring: {undocumented}"
