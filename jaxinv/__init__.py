"""jaxinv: reversible automatic differentiation for JAX.

Backward passes that rebuild activations from outputs instead of storing them,
so training memory stays flat in the depth of invertible networks.
"""

from jaxinv.registry import (
    NotInvertibleError,
    defbinary,
    defpermutation,
    defunary,
    register_inverse,
    register_ivjp,
    require_nonzero,
)
from jaxinv.api import grad, value_and_grad, vjp

__version__ = "0.1.0"
from jaxinv.invertible import invertible
