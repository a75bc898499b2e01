"""Rules for primitives that only carry values through: jaxinv's own
``nonzero`` marker.

Only registrations live here.
"""

from __future__ import annotations

from jaxinv.markers import nonzero_p
from jaxinv import registry
from jaxinv.registry import defunary, register_nonzero

defunary(nonzero_p, lambda y: y, ct=lambda x, y, ct: ct)
register_nonzero(nonzero_p)
registry.nonsingular_primitives.add(nonzero_p)  # for a matrix, the marker asserts nonsingular
