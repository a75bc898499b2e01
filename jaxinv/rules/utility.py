"""Rules for primitives that only carry values through, and for jaxinv's own
primitives: the ``nonzero`` marker and ``custom_ivjp`` calls.

Only registrations live here (see ``jaxinv/registry.py`` for the conventions).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxinv.custom_ivjp import custom_ivjp, custom_ivjp_call_p, inverse_rule, ivjp_rule
from jaxinv._version import __version__
from jaxinv.domains import Example, reals
from jaxinv.markers import nonzero, nonzero_p
from jaxinv.packs import RulePack

pack = RulePack("jaxinv.utility", __version__, jax_versions=">=0.10", builtin=True,
                description="identity-like primitives, markers, and jaxinv's custom_ivjp calls")


@custom_ivjp
def _couple(x1, x2):  # conformance example
    return x1, x2 + jnp.tanh(x1)


_couple.definverse(lambda y1, y2: (y1, y2 - jnp.tanh(y1)))

pack.defunary(nonzero_p, lambda y: y, ct=lambda x, y, ct: ct, examples=Example(nonzero, reals()),
              notes="identity; asserts nonzero (for a matrix: nonsingular)")
pack.register_nonzero(nonzero_p)
pack.register_nonsingular(nonzero_p)

pack.register_inverse(custom_ivjp_call_p, inverse_rule,
                      examples=Example(_couple, reals(), reals(), solve=[(0, 1)]),
                      notes="the user's own rule (definverse / defivjp)")
pack.register_ivjp(custom_ivjp_call_p, ivjp_rule)
