"""Every primitive that ordinary JAX code binds on this JAX has a rule.

JAX changes the primitives its functions bind from release to release
(``jnp.tile`` binds ``tile`` from 0.9, ``jnp.stack`` binds ``stack`` from 0.10;
before, reshapes, broadcasts and concatenations). A primitive no rule covers
would make an invertible network save its activations, silently: memory grows
with depth again. For each idiom below, traced on the JAX this test runs on,
every equation must be covered: an inverse rule, a selection the planner's
partial knowledge tracks, a call-like primitive it inlines, or a documented
refusal. The CI matrix runs this on the oldest, a middle and the newest
supported JAX, so a new release's new primitive fails here, not for users.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxinv import registry
from jaxinv._src.compat import jaxprs_in_params
from jaxinv._src.flatten import flatten
from jaxinv._src.partial import SELECTION_PRIMITIVES

X = jnp.linspace(0.1, 0.9, 24, dtype=jnp.float32).reshape(4, 6)

# name -> (function, arguments): how people write invertible steps
IDIOMS = {
    "jnp.split": (lambda x: jnp.split(x, 2, axis=1), (X,)),
    "jnp.array_split": (lambda x: jnp.array_split(x, 4, axis=1), (X,)),
    "jnp.stack": (lambda x: jnp.stack([x, 2 * x], axis=1), (X,)),
    "jnp.unstack": (lambda x: jnp.unstack(x, axis=0), (X,)),
    "jnp.tile": (lambda x: jnp.tile(x, (2, 1)), (X,)),
    "jnp.concatenate": (lambda x: jnp.concatenate([x, x + 1], axis=0), (X,)),
    "jnp.hstack": (lambda x: jnp.hstack([x, x]), (X,)),
    "reshape, transpose, flip": (lambda x: jnp.flip(x.reshape(6, 4).T, axis=0), (X,)),
    "jnp.roll": (lambda x: jnp.roll(x, 2, axis=1), (X,)),
    "expand_dims, squeeze": (lambda x: jnp.squeeze(jnp.expand_dims(x, 0), 0), (X,)),
    "strided slices": (lambda x: (x[:, ::2], x[:, 1::2]), (X,)),
    ".at[].set": (lambda x: x.at[:, :3].set(2 * x[:, :3]), (X,)),
    "jnp.where on a constant mask": (lambda x: jnp.where(jnp.arange(6) % 2 == 0, x, 2 * x), (X,)),
    "jnp.cumsum": (lambda x: jnp.cumsum(x, axis=1), (X,)),
    "jnp.sort": (lambda x: jnp.sort(x, axis=1), (X,)),
    "elementwise chain": (lambda x: jnp.log1p(jnp.exp(x) * 3.0 - 0.5) ** 3, (X,)),
    "jax.nn.sigmoid, jnp.tanh, jnp.arctanh": (lambda x: jnp.arctanh(jnp.tanh(jax.nn.sigmoid(x))), (X,)),
    "jax.nn.softplus": (jax.nn.softplus, (X,)),
    "jax.scipy.special.logit": (jax.scipy.special.logit, (X,)),
    "jnp.logaddexp with a constant": (lambda x: jnp.logaddexp(x, 0.5), (X,)),
    "x @ W": (lambda x, w: x @ w, (X, jnp.eye(6) + 0.1)),
    "jnp.einsum": (lambda x, w: jnp.einsum("bi,ij->bj", x, w), (X, jnp.eye(6) + 0.1)),
    "astype": (lambda x: x.astype(jnp.float16).astype(jnp.float32), (X,)),
    "lax.scan of a coupling": (lambda x: lax.scan(lambda c, _: (c + jnp.tanh(c), None), x, None, length=3)[0], (X,)),
    "lax.fori_loop": (lambda x: lax.fori_loop(0, 3, lambda i, c: c * 2.0 + 1.0, x), (X,)),
    "lax.cond": (lambda x: lax.cond(True, lambda v: v + 1.0, lambda v: v - 1.0, x), (X,)),
    "jax.jit inside": (lambda x: jax.jit(lambda v: v * 3.0)(x), (X,)),
    "jax.checkpoint inside": (lambda x: jax.checkpoint(lambda v: jnp.exp(v))(x), (X,)),
}


def _uncovered(jaxpr) -> set[str]:
    """Names of the primitives in ``jaxpr`` (loop and branch bodies included)
    that no rule, selection or refusal covers, among the equations that read an
    input (the others compute constants, such as a mask from ``iota``)."""
    out, live = set(), set(jaxpr.invars)
    for e in jaxpr.eqns:
        if not any(v in live for v in e.invars if not hasattr(v, "val")):
            continue
        live.update(e.outvars)
        covered = (e.primitive in registry.inverse_rules or e.primitive in registry.ivjp_rules
                   or e.primitive in registry.principal_inverse_rules or e.primitive in SELECTION_PRIMITIVES
                   or e.primitive in registry.not_invertible_reasons)
        if not covered:
            out.add(e.primitive.name)
        for sub in jaxprs_in_params(e.params):
            out |= _uncovered(sub)
    return out


@pytest.mark.parametrize("idiom", IDIOMS)
def test_every_primitive_an_idiom_binds_has_a_rule(idiom):
    fn, args = IDIOMS[idiom]
    flat = flatten(jax.make_jaxpr(fn)(*args))   # jit, checkpoint and other calls inlined, as the planner sees them
    assert not _uncovered(flat.jaxpr), (
        f"on JAX {jax.__version__}, {idiom} binds primitives no jaxinv rule covers: {sorted(_uncovered(flat.jaxpr))}")


def test_a_primitive_without_a_rule_is_reported():
    """The check above can fail: a fresh primitive is uncovered."""
    from jax.extend.core import Primitive
    new = Primitive("brand_new_in_the_next_jax")
    new.def_abstract_eval(lambda x: x)
    closed = jax.make_jaxpr(lambda x: new.bind(x) + 1.0)(X)
    assert _uncovered(closed.jaxpr) == {"brand_new_in_the_next_jax"}


def test_literals_read_as_numbers_rules_can_compute_with():
    # JAX 0.7 wraps a literal's array in a LiteralArray without `**` or
    # comparisons; rules read every literal through compat.literal_value
    from jax.extend.core import Literal

    from jaxinv._src.compat import literal_value
    jaxpr = jax.make_jaxpr(lambda x: x * 2.0 + 1)(jnp.ones(3)).jaxpr
    literals = [v for e in jaxpr.eqns for v in e.invars if isinstance(v, Literal)]
    assert len(literals) == 2
    for v in literals:
        val = literal_value(v)
        assert np.asarray(val ** 2 - val).item() == {2.0: 2.0, 1.0: 0.0}[float(np.asarray(val))]
        assert bool(val > 0)
