"""Tracing to one flat jaxpr (jaxinv._src.flatten) and the nonzero marker (jaxinv.markers)."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxinv
from jaxinv._src.flatten import flatten
from jaxinv.markers import nonzero_p
from jaxinv._src.graph import source_line
from jaxinv._src.tracing import trace

X = jnp.linspace(0.1, 1.0, 4)


def _prims(closed):
    return [e.primitive.name for e in closed.jaxpr.eqns]


def test_calls_are_inlined_with_the_users_source_line():
    """jit, checkpoint and nested invertible bodies are inlined; every equation
    keeps the line of the user's code that produced it."""
    inner = jax.jit(lambda x: jnp.exp(x) * 2.0)
    f = lambda x: jax.checkpoint(lambda y: jnp.tanh(inner(y)))(x)  # line under test
    flat = flatten(jax.make_jaxpr(f)(X))
    assert _prims(flat) == ["exp", "mul", "tanh"]
    assert all("test_flatten.py" in source_line(e) for e in flat.jaxpr.eqns)


def test_library_helpers_take_the_callers_line():
    """Equations from a jitted library helper (jnp.where) name the user's call."""
    flat = flatten(jax.make_jaxpr(lambda x: jnp.where(x > 0.5, x, 0.0))(X))
    assert all("test_flatten.py" in source_line(e) for e in flat.jaxpr.eqns)


def test_duplicate_computations_are_traced_once():
    """A network called twice on the same input is one network (CSE), so both
    of its outputs are used and it inverts."""
    net = lambda x: jnp.split(jnp.sinh(x) * 3.0, 2)
    f = lambda x: jnp.concatenate([net(x)[0], net(x)[1] + 1.0])
    flat = flatten(jax.make_jaxpr(f)(X))
    assert _prims(flat).count("sinh") == 1
    assert trace(f, (X,)).plan.saved == []


def test_closure_values_become_known_inputs():
    """Values a function closes over become leading inputs, known in the backward pass."""
    w = jnp.arange(1.0, 5.0)
    t = trace(lambda x: jnp.sinh(x * w), (X,))
    assert t.num_consts == 1 and t.plan.known_inputs == (True, False)
    assert t.plan.saved == []   # w is given and has no zero: x = asinh(y) / w


def test_nonzero_marker_is_the_identity_under_transformations():
    """jaxinv.nonzero changes no value or derivative, under jit, vmap, grad and jvp."""
    f = lambda x: jnp.sum(jaxinv.nonzero(x) ** 2)
    np.testing.assert_allclose(jax.jit(jaxinv.nonzero)(X), X)
    np.testing.assert_allclose(jax.vmap(jaxinv.nonzero)(X), X)
    np.testing.assert_allclose(jax.grad(f)(X), 2 * X, rtol=1e-6)
    np.testing.assert_allclose(jax.jvp(jaxinv.nonzero, (X,), (X,))[1], X)
    assert nonzero_p in {e.primitive for e in jax.make_jaxpr(jaxinv.nonzero)(X).jaxpr.eqns}
