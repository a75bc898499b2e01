"""The built-in rule packs: importing this package registers every rule.

One module per family; each module only registers rules into the tables of
:mod:`jaxinv.registry`.
"""

from jaxinv.rules import elementwise, linalg, structural  # noqa: F401  (registration side effects)
