"""The choosers' VJPs (max, min, reduce_max, reduce_min) used on rebuilt
values: JAX's answer, ties shared equally, for every float dtype and axis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from helpers import assert_trees_close
from jaxinv._src import stable_vjp

TIES = jnp.asarray([[1.0, 3.0, 3.0, -2.0], [0.5, 0.5, 0.5, 0.5], [-1.0, 2.0, 0.0, 2.0]])


def _eqn(fn, *args):
    (eqn,) = jax.make_jaxpr(fn)(*args).jaxpr.eqns
    return eqn


@pytest.mark.parametrize("reduce", [lax.reduce_max_p, lax.reduce_min_p])
@pytest.mark.parametrize("axes", [(0,), (1,), (0, 1)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_reduce_vjp_equals_jax_with_ties(reduce, axes, dtype):
    x = TIES.astype(dtype)
    eqn = _eqn(lambda x: reduce.bind(x, axes=axes), x)
    fn = stable_vjp.function_for(eqn)
    out, f_vjp = jax.vjp(lambda x: fn(x, **eqn.params), x)
    want_out, want_vjp = jax.vjp(lambda x: reduce.bind(x, axes=axes), x)
    ct = jnp.arange(1.0, 1.0 + out.size).reshape(out.shape).astype(dtype)
    assert out.dtype == want_out.dtype and out.shape == want_out.shape
    assert_trees_close(out, want_out, rtol=0, atol=0)
    assert_trees_close(f_vjp(ct), want_vjp(ct), rtol=0, atol=0)


@pytest.mark.parametrize("prim", [lax.max_p, lax.min_p])
def test_pairwise_vjp_equals_jax_with_ties(prim):
    x, y = TIES, jnp.flip(TIES, axis=1)
    eqn = _eqn(lambda x, y: prim.bind(x, y), x, y)
    fn = stable_vjp.function_for(eqn)
    out, f_vjp = jax.vjp(fn, x, y)
    want_out, want_vjp = jax.vjp(lambda x, y: prim.bind(x, y), x, y)
    ct = jnp.arange(1.0, 1.0 + out.size).reshape(out.shape)
    assert_trees_close((out, f_vjp(ct)), (want_out, want_vjp(ct)), rtol=0, atol=0)
    assert np.any(np.asarray(x == y))  # the case where the cotangent is shared


def test_integer_choosers_keep_their_own_vjp():
    eqn = _eqn(lambda x: jnp.max(x), jnp.arange(4))
    assert stable_vjp.function_for(eqn) is None
