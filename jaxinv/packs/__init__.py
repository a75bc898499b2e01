"""Rule packs: named, versioned sets of rules, and how they fill the tables.

A ``RulePack`` records rules (inverse, fused ivjp, principal branch,
nonzero facts, documented refusals) together with the *examples* that declare
where each rule must work (``jaxinv.domains``). Installing a pack writes its
rules into the tables of ``jaxinv.registry``, subject to precedence
(``jaxinv.packs.precedence``: a direct registration, then priority, then a
third-party pack over a built-in one, then the name). The built-in packs
(``jaxinv/rules/*.py``) are installed by ``import jaxinv``; third-party packs
are found through the entry-point group ``jaxinv.rule_packs`` and loaded
lazily (``jaxinv.packs.entry_points``). A pack that fails to load, or that
does not support the installed JAX, is reported with a ``RulePackWarning``
and in ``rule_packs``, never breaks ``import jaxinv``.
"""

from jaxinv.packs.entry_points import ENTRY_POINT_GROUP, load_entry_point_packs, rule_packs
from jaxinv.packs.helpers import (defbinary, defpermutation, defunary, register_ildj, register_inverse,
                                  register_ivjp, register_nonzero, register_not_invertible)
from jaxinv.packs.precedence import (RulePackConflictWarning, RulePackWarning, declared_examples, direct,
                                     install_rule_pack, provider, uninstall_rule_pack)
from jaxinv.packs.rule_pack import (KINDS, PackRule, RulePack, always_nonzero, never_nonzero, nonzero_if_all,
                                    nonzero_if_first, zero_ildj)

__all__ = [
    "ENTRY_POINT_GROUP", "KINDS", "PackRule", "RulePack", "RulePackConflictWarning", "RulePackWarning",
    "always_nonzero", "declared_examples", "defbinary", "defpermutation", "defunary", "direct",
    "install_rule_pack", "load_entry_point_packs", "never_nonzero", "nonzero_if_all", "nonzero_if_first",
    "provider", "register_ildj", "register_inverse", "register_ivjp", "register_nonzero",
    "register_not_invertible", "rule_packs", "uninstall_rule_pack", "zero_ildj",
]
