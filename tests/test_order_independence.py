"""The plan does not depend on the order of a function's outputs or arguments.

Inversion by propagation is meant to be order-independent (the removed
``jax.invertible`` prototype was not). For every permutation of the outputs
and of the arguments, ``jaxinv.inverse``, ``inverse_and_ildj``, ``vjp`` and
``explain`` give the same answer.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinv
from helpers import assert_trees_close

W = jnp.asarray(np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))[0])   # a closed-over constant
A, B, C = jnp.arange(4.0), 0.5 * jnp.ones(4), jnp.linspace(-1.0, 1.0, 4)

FUNCTIONS = {
    # the repro: a closure matrix on one output, a sum on the other
    "b @ W and a + b": (lambda a, b: (b @ W, a + b), (A, B)),
    "coupling": (lambda a, b: (a + jnp.sinh(b @ W), b * 2.0), (A, B)),
    "three-way": (lambda a, b, c: (a + b, c - jnp.sinh(b), (c @ W) * 3.0), (A, B, C)),
    "split and scale": (lambda a, b: (jnp.concatenate([a, b])[::-1] * 2.0, b @ W.T), (A, B)),
}


def permuted(f, out_perm, arg_perm):
    """``f`` with its outputs and arguments reordered."""
    def g(*args):
        original = [None] * len(args)
        for position, a in zip(arg_perm, args):
            original[position] = a
        outs = f(*original)
        return tuple(outs[j] for j in out_perm)
    return g


def cases():
    for name, (f, args) in FUNCTIONS.items():
        n_out = len(f(*args))
        for out_perm in itertools.permutations(range(n_out)):
            for arg_perm in itertools.permutations(range(len(args))):
                yield pytest.param(name, out_perm, arg_perm, id=f"{name}-out{out_perm}-args{arg_perm}")


@pytest.mark.parametrize("name, out_perm, arg_perm", list(cases()))
def test_every_order_gives_the_same_answer(name, out_perm, arg_perm):
    f, args = FUNCTIONS[name]
    g = permuted(f, out_perm, arg_perm)
    g_args = tuple(args[j] for j in arg_perm)
    outs = g(*g_args)
    rebuilt, ildj = jaxinv.inverse_and_ildj(g, *g_args)(*outs)
    assert_trees_close(jaxinv.inverse(g, *g_args)(*outs), g_args, rtol=1e-5, atol=1e-6)
    assert_trees_close(rebuilt, g_args, rtol=1e-5, atol=1e-6)
    _, reference_ildj = jaxinv.inverse_and_ildj(f, *args)(*f(*args))
    np.testing.assert_allclose(ildj, reference_ildj, rtol=1e-5, atol=1e-6)
    assert jaxinv.explain(g, *g_args).saved_bytes == jaxinv.explain(f, *args).saved_bytes == 0
    cts = tuple(jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape) for y in outs)
    assert_trees_close(jaxinv.vjp(g, *g_args)[1](cts), jax.vjp(g, *g_args)[1](cts), rtol=1e-5, atol=1e-6)
