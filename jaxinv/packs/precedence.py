"""Which installed pack's rule enters the tables of ``jaxinv.registry``.

Per primitive and per kind of rule (inverse, ivjp, ...):

1. a direct registration (``jaxinv.register_inverse`` and friends) wins;
2. then the pack with the highest ``priority`` (default 0);
3. then a third-party pack over a built-in one (a pack exists to add or
   improve rules);
4. then the pack whose name sorts first.

When two packs provide the same kind of rule for a primitive, a
``RulePackConflictWarning`` names both and the winner.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import jax
from jax.extend.core import Primitive

from jaxinv import registry
from jaxinv.domains import Example
from jaxinv.packs.rule_pack import KINDS, RulePack


class RulePackWarning(UserWarning):
    """A rule pack could not be loaded, or does not support this JAX.

    Example:
        ```python
        import warnings
        warnings.simplefilter("error", jaxinv.RulePackWarning)   # a broken pack fails loudly
        ```
    """


class RulePackConflictWarning(UserWarning):
    """Two rule packs register the same kind of rule for one primitive.

    The warning names both packs and the winner (the higher ``priority``,
    then a third-party pack over a built-in one, then the name that sorts
    first); ``jaxinv.rule_packs()`` shows which provides what.

    Example:
        ```python
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jaxinv.RulePackConflictWarning)
            jaxinv.install_rule_pack(my_faster_exp_pack)    # third-party: wins over the built-in exp
        ```
    """


_installed: list[RulePack] = []
_known: list[RulePack] = []  # every pack seen, installed or not (for rule_packs())
_warned: set = set()

#: Direct registrations (``jaxinv.register_inverse`` ...): they always win.
direct = RulePack("direct registrations", version="-", priority=math.inf,
                  description="rules registered with jaxinv.register_* rather than through a pack")


def _precedence(pack: RulePack):
    return (-pack.priority, pack.builtin, pack.name)


def _table_set(kind: str, prim: Primitive, value: Any) -> None:
    if kind in ("nonsingular", "elementwise"):
        members = registry.nonsingular_primitives if kind == "nonsingular" else registry.elementwise_primitives
        (members.add if value else members.discard)(prim)
        return
    table = {"inverse": registry.inverse_rules, "ivjp": registry.ivjp_rules,
             "principal": registry.principal_inverse_rules, "ildj": registry.ildj_rules,
             "nonzero": registry.nonzero_rules, "not_invertible": registry.not_invertible_reasons,
             "saturates": registry.saturating}[kind]
    if value is None:
        table.pop(prim, None)
    else:
        table[prim] = value


def _candidates(prim: Primitive, kind: str) -> list[RulePack]:
    """The installed packs with a ``kind`` rule for ``prim``, the winner first."""
    return sorted((p for p in _installed if prim in p.rules and p.rules[prim].provides(kind)), key=_precedence)


def _resolve(prim: Primitive) -> None:
    """Write the winning rule of each kind for ``prim`` into the tables."""
    for kind in KINDS:
        candidates = _candidates(prim, kind)
        winner = candidates[0] if candidates else None
        _table_set(kind, prim, getattr(winner.rules[prim], kind) if winner else None)
        rivals = [p for p in candidates if p is not direct]
        if len(rivals) > 1 and winner is not direct:
            key = (prim, kind, tuple(p.name for p in rivals))
            if key not in _warned:
                _warned.add(key)
                warnings.warn(
                    f"rule packs {', '.join(repr(p.name) for p in rivals)} all register a{'n' if kind[0] in 'aeiou' else ''} "
                    f"{kind} rule for `{prim.name}`; using {winner.name!r} (highest priority, then third-party over "
                    f"built-in, then name; see jaxinv.packs)", RulePackConflictWarning, stacklevel=3)
    registry.tables_changed()


def install_rule_pack(pack: RulePack, *, origin: str | None = None) -> RulePack:
    """Install ``pack``: its rules enter the tables, subject to precedence.

    A pack that does not support the installed JAX is skipped with a
    ``RulePackWarning``. Installing twice is a no-op.

    Example:
        ```python
        jaxinv.install_rule_pack(my_pack)
        ```
    """
    if not isinstance(pack, RulePack):
        raise TypeError(f"install_rule_pack expects a jaxinv.RulePack, got {type(pack).__name__}")
    if origin is not None:
        pack.origin = origin
    if pack not in _known:
        _known.append(pack)
    if pack in _installed:
        return pack
    if not pack.supports():
        pack.status = "skipped"
        pack.error = f"supports JAX {pack.jax_versions}, not {jax.__version__}"
        warnings.warn(f"rule pack {pack.name!r} skipped: it {pack.error}", RulePackWarning, stacklevel=2)
        return pack
    _installed.append(pack)
    pack.status = "loaded"
    pack.error = None
    pack._on_change = _resolve
    for prim in pack.rules:
        _resolve(prim)
    return pack


def uninstall_rule_pack(pack: RulePack) -> None:
    """Take ``pack``'s rules out of the tables (the others' come back).

    Example:
        ```python
        jaxinv.uninstall_rule_pack(my_pack)
        ```
    """
    if pack in _installed:
        _installed.remove(pack)
        pack.status = "not installed"
        pack._on_change = None
        for prim in pack.rules:
            _resolve(prim)


def provider(prim: Primitive, kind: str = "inverse") -> RulePack | None:
    """The installed pack whose ``kind`` rule for ``prim`` is in the tables.

    Example:
        ```python
        provider(lax.exp_p).name    # 'jaxinv.elementwise'
        ```
    """
    candidates = _candidates(prim, kind)
    return candidates[0] if candidates else None


def declared_examples(prim: Primitive, kind: str = "inverse") -> list[Example]:
    """The examples the winning pack declares for ``prim``'s ``kind`` rule.

    Example:
        ```python
        declared_examples(lax.exp_p)[0].args       # (reals(-10, 10),)
        ```
    """
    owner = provider(prim, kind) or provider(prim, "ivjp")
    if owner is None:
        return []
    entry = owner.rules[prim]
    return list(entry.principal_examples if kind == "principal" else entry.examples)


install_rule_pack(direct)
