"""The built-in rule packs: one module per family, each defining its rules and
registering them into its ``pack`` (a ``jaxinv.RulePack``), never into the
registry's tables directly; importing this package installs them all.
"""

from jaxinv.packs import install_rule_pack
from jaxinv.rules import control_flow, elementwise, linalg, structural, utility

BUILTIN_PACKS = (elementwise.pack, structural.pack, linalg.pack, control_flow.pack, utility.pack)

for _pack in BUILTIN_PACKS:
    install_rule_pack(_pack, origin="built-in")
