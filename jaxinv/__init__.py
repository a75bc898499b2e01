"""jaxinv: reversible automatic differentiation for JAX.

Backward passes that rebuild activations from outputs instead of storing them,
so training memory stays flat in the depth of invertible networks.
"""

import os as _os

from jax.extend import source_info_util as _source_info_util

# Errors and `explain` name the user's source line: skip jaxinv's own frames.
_source_info_util.register_exclusion(_os.path.dirname(__file__))

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
from jaxinv.custom_ivjp import custom_ivjp
