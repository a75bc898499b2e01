"""Third-party rule packs, found through the ``jaxinv.rule_packs`` entry-point group.

They are loaded lazily: the first time jaxinv plans a function (the planner
asks ``jaxinv.registry.load_deferred``), or when ``rule_packs`` or the
conformance harness is called; never by ``import jaxinv``.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings

from jaxinv import registry
from jaxinv.packs.precedence import RulePackWarning, _known, direct, install_rule_pack
from jaxinv.packs.rule_pack import RulePack

ENTRY_POINT_GROUP = "jaxinv.rule_packs"

_plugins_loaded = False


def load_entry_point_packs(*, reload: bool = False) -> None:
    """Load the packs published under the ``jaxinv.rule_packs`` entry-point
    group (once; ``JAXINV_DISABLE_PLUGINS=1`` turns this off).

    An entry point names a ``RulePack`` or a function returning one. A
    pack that fails to import or build is recorded as ``failed`` with the
    error and a ``RulePackWarning``; jaxinv carries on without it.

    Example (in the pack's ``pyproject.toml``):
    ```toml
    [project.entry-points."jaxinv.rule_packs"]
    my_pack = "my_package.rules:PACK"
    ```
    """
    global _plugins_loaded
    if _plugins_loaded and not reload:
        return
    _plugins_loaded = True
    if os.environ.get("JAXINV_DISABLE_PLUGINS", "") not in ("", "0"):
        return
    try:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as e:  # a broken environment must not break jaxinv
        warnings.warn(f"could not list jaxinv rule packs: {e}", RulePackWarning, stacklevel=2)
        return
    for ep in sorted(entry_points, key=lambda e: e.name):
        dist = getattr(getattr(ep, "dist", None), "name", None)
        origin = f"entry point {ep.name} = {ep.value}" + (f" (distribution {dist})" if dist else "")
        if any(p.origin == origin for p in _known):
            continue
        try:
            obj = ep.load()
            pack = obj() if callable(obj) and not isinstance(obj, RulePack) else obj
            if not isinstance(pack, RulePack):
                raise TypeError(f"it gave {type(pack).__name__}, not a jaxinv.RulePack")
        except Exception as e:
            failed = RulePack(ep.name)
            failed.origin, failed.status = origin, "failed"
            failed.error = f"{type(e).__name__}: {e}"
            _known.append(failed)
            warnings.warn(f"jaxinv rule pack {ep.name!r} ({origin}) failed to load and is ignored: {failed.error}",
                          RulePackWarning, stacklevel=2)
            continue
        install_rule_pack(pack, origin=origin)


def rule_packs() -> list[RulePack]:
    """Every rule pack jaxinv knows, loaded or not, with the JAX releases it
    supports, its status on this JAX (``loaded``, ``failed``, ``skipped``, with
    the reason) and ``RulePack.coverage``.

    Example:
        ```python
        >>> for pack in jaxinv.rule_packs():
        ...     print(pack.name, pack.status, pack.coverage()["inverse"])
        jaxinv.elementwise loaded 40
        ...
        ```
    """
    load_entry_point_packs()
    return [p for p in _known if p is not direct or p.rules]


registry.defer_loading(load_entry_point_packs)
