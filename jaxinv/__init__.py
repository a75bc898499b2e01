"""jaxinv: reversible automatic differentiation for JAX.

Backward passes that rebuild activations from outputs instead of storing them,
so training memory stays flat in the depth of invertible networks.

Example::

    import jaxinv
    g = jaxinv.grad(loss)(params, x)               # like jax.grad
    net = jaxinv.invertible(revnet)                 # jax.grad(net) is reversible too
"""

import os as _os

from jax.extend import source_info_util as _source_info_util

# Errors and `explain` name the user's source line: skip jaxinv's own frames.
_source_info_util.register_exclusion(_os.path.dirname(__file__))

from jaxinv.registry import (  # noqa: E402
    NotInvertibleError,
    RuleError,
    defbinary,
    defpermutation,
    defunary,
    register_inverse,
    register_ivjp,
    require_nonsingular,
    require_nonzero,
)
from jaxinv.markers import nonzero  # noqa: E402
from jaxinv.api import grad, inverse, value_and_grad, vjp  # noqa: E402
from jaxinv.invertible import invertible  # noqa: E402
from jaxinv.custom_ivjp import custom_ivjp  # noqa: E402
from jaxinv.explain import explain  # noqa: E402
from jaxinv import rules as _rules  # noqa: E402,F401  (registers the built-in rules)
from jaxinv.rules import control_flow as _control_flow, utility as _utility  # noqa: E402,F401

__version__ = "0.1.0"

__all__ = [
    "NotInvertibleError", "RuleError", "custom_ivjp", "defbinary", "defpermutation", "defunary", "explain",
    "grad", "inverse", "invertible", "nonzero", "register_inverse", "register_ivjp",
    "require_nonsingular", "require_nonzero", "value_and_grad", "vjp",
]
