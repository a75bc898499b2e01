"""jaxinv: reversible automatic differentiation for JAX.

Backward passes that rebuild activations from outputs instead of storing them,
so training memory stays flat in the depth of invertible networks.

Example:
    ```python
    import jaxinv
    g = jaxinv.grad(loss)(params, x)               # like jax.grad
    net = jaxinv.invertible(revnet)                 # jax.grad(net) is reversible too
    ```
"""

import os as _os

from jax.extend import source_info_util as _source_info_util

# Errors and `explain` name the user's source line: skip jaxinv's own frames.
_source_info_util.register_exclusion(_os.path.dirname(__file__))

from jaxinv._version import __version__  # noqa: E402
from jaxinv.registry import NotInvertibleError, RuleError, require_nonsingular, require_nonzero  # noqa: E402
from jaxinv.domains import Example  # noqa: E402
from jaxinv.packs import (  # noqa: E402
    RulePack,
    RulePackConflictWarning,
    RulePackWarning,
    defbinary,
    defpermutation,
    defunary,
    install_rule_pack,
    register_inverse,
    register_ildj,
    register_ivjp,
    register_not_invertible,
    register_nonzero,
    rule_packs,
    uninstall_rule_pack,
)
from jaxinv.markers import anchor, keep_input, nonzero  # noqa: E402
from jaxinv.api import grad, ildj, inverse, inverse_and_ildj, value_and_grad, vjp  # noqa: E402
from jaxinv.invertible import invertible  # noqa: E402
from jaxinv.custom_ivjp import custom_ivjp  # noqa: E402
from jaxinv.explain import explain  # noqa: E402
from jaxinv.check import check_reconstruction  # noqa: E402
from jaxinv.disable import disabled, is_enabled  # noqa: E402
from jaxinv import rules as _rules  # noqa: E402,F401  (installs the built-in rule packs)



def __getattr__(name: str):
    """``jaxinv.nn`` on first use (PEP 562): ``import jaxinv`` stays as cheap as
    before, and neither imports Flax nor Equinox (their wrappers,
    ``jaxinv.nn.flax`` / ``jaxinv.nn.equinox``, are imported on demand).

    Example:
        ```python
        import jaxinv
        layer = jaxinv.nn.AffineCoupling()     # imports jaxinv.nn here
        ```
    """
    if name == "nn":
        import importlib
        return importlib.import_module("jaxinv.nn")  # also binds jaxinv.nn, so this runs once
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), "nn"})


__all__ = [
    "Example", "NotInvertibleError", "RuleError", "RulePack", "RulePackConflictWarning", "RulePackWarning",
    "anchor", "check_reconstruction", "custom_ivjp", "defbinary", "defpermutation", "defunary", "disabled", "explain", "grad",
    "ildj", "install_rule_pack", "inverse", "inverse_and_ildj", "invertible", "is_enabled", "keep_input", "nonzero", "register_ildj", "register_inverse", "register_ivjp",
    "register_nonzero", "register_not_invertible", "require_nonsingular", "require_nonzero", "rule_packs",
    "uninstall_rule_pack", "value_and_grad", "vjp",
]
