"""Partial knowledge, primitive by primitive: pieces that cover an array rebuild it.

Each case splits ``x`` with one kind of selection (a strided slice, a
constant-index window or gather, a pad, a constant-predicate select, a
dynamic_update_slice) and puts the pieces back through an invertible step.
jaxinv must rebuild ``x`` from the output with nothing saved, give
``jax.vjp``'s cotangents, and do so under ``jit`` and ``vmap`` of
``jaxinv.invertible``. Pieces that do not cover ``x`` save it instead.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.extend.core import Literal

import jaxinv
from jaxinv._src import partial
from jaxinv._src.flatten import eval_eqn
from helpers import assert_trees_close

X = jnp.linspace(-1.0, 1.0, 24).reshape(4, 6)
EVEN = np.arange(6) % 2 == 0


def windows(x):                                    # dynamic_slice with constant starts
    a = lax.dynamic_slice_in_dim(x, 0, 2, axis=1)
    b = lax.dynamic_slice_in_dim(x, 2, 4, axis=1)
    return jnp.concatenate([b * 2.0, a + 1.0], axis=1)


def gathers(x):                                    # two constant-index gathers
    return jnp.concatenate([x[:, np.array([4, 0, 2])] * 3.0, jnp.sinh(x[:, np.array([5, 1, 3])])], axis=1)


def strided(x):                                    # slices with strides, rebuilt by a pad-transpose
    return jnp.stack([x[:, ::2] - 1.0, x[:, 1::2] * 0.5], axis=-1).reshape(x.shape)


def padded(x):                                     # a pad, then slices of the padded array
    p = jnp.pad(x, ((0, 0), (1, 1)))
    return p[:, 1:4] * 2.0, p[:, 4:7] + p[:, 1:4]


def selected(x):                                   # select_n with a constant predicate, twice
    return jnp.where(EVEN, x * 2.0, 0.0) + jnp.where(EVEN, 0.0, jnp.sinh(x))


def updated(x):                                    # dynamic_update_slice pieces
    y = jnp.zeros_like(x)
    y = lax.dynamic_update_slice_in_dim(y, x[:, 3:] * 2.0, 0, axis=1)
    return lax.dynamic_update_slice_in_dim(y, x[:, :3] + 1.0, 3, axis=1)


CASES = {"windows": windows, "gathers": gathers, "strided": strided, "padded": padded, "selected": selected,
         "updated": updated}


@pytest.mark.parametrize("name", CASES)
def test_the_pieces_rebuild_the_input_with_nothing_saved(name):
    f = CASES[name]
    assert jaxinv.explain(f, X).saved_bytes == 0
    x = jaxinv.inverse(f, X)(*jax.tree_util.tree_leaves(f(X)))
    np.testing.assert_allclose(x, X, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_cotangents_are_jax_vjps(name):
    f = CASES[name]
    y, f_vjp = jaxinv.vjp(f, X)
    y_ref, f_vjp_ref = jax.vjp(f, X)
    ct = jax.tree_util.tree_map(lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape), y_ref)
    assert_trees_close(y, y_ref)
    assert_trees_close(f_vjp(ct), f_vjp_ref(ct), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["strided", "gathers", "selected"])
def test_under_jit_and_vmap_of_invertible(name):
    f = CASES[name]
    loss = lambda x: jnp.sum(jnp.sin(f(x)))
    inv_loss = lambda x: jnp.sum(jnp.sin(jaxinv.invertible(f)(x)))
    xs = jnp.stack([X, 2.0 * X])
    want = jax.vmap(jax.grad(loss))(xs)
    assert_trees_close(jax.jit(jax.vmap(jax.grad(inv_loss)))(xs), want, rtol=1e-5, atol=1e-6)


def test_pieces_that_miss_an_element_save_the_input():
    f = lambda x: (x[:, :2] * 2.0, x[:, 3:] + 1.0)           # column 2 is dropped
    assert jaxinv.explain(f, X).saved_bytes == X.nbytes
    with pytest.raises(jaxinv.NotInvertibleError):
        jaxinv.inverse(f, X)(*f(X))


def test_a_mask_that_is_not_constant_is_not_a_selection():
    def f(x, m):
        return x * m
    m = (jnp.arange(6) % 2).astype(jnp.float32)
    # m is an argument (not a constant): x cannot be rebuilt where m is 0
    assert jaxinv.explain(f, X, m).saved_bytes > 0
    assert_trees_close(jaxinv.grad(lambda x, m: jnp.sum(f(x, m) ** 2), argnums=(0, 1))(X, m),
                       jax.grad(lambda x, m: jnp.sum(f(x, m) ** 2), argnums=(0, 1))(X, m))


def test_selection_tags_say_which_element_each_output_copies():
    # a strided slice: `slice` with strides (or, on JAX 0.6, a `gather` at
    # indices computed from iota: constants, found by evaluating the jaxpr)
    jaxpr = jax.make_jaxpr(lambda x: x[:, 1::2])(X).jaxpr
    env = dict(zip(jaxpr.invars, [X]))
    for e in jaxpr.eqns:
        env.update(zip(e.outvars, eval_eqn(e, [v.val if isinstance(v, Literal) else env[v] for v in e.invars])))
    eqn = jaxpr.eqns[-1]
    sel = partial.selection(eqn, lambda v: None if v is jaxpr.invars[0] else env.get(v))
    want = 1 + np.arange(24).reshape(4, 6)[:, 1::2]          # 1 + flat index into x
    np.testing.assert_array_equal(sel.tags[0], want)
    (back,) = sel.backward_masks([np.True_])
    np.testing.assert_array_equal(back, np.tile(~EVEN, (4, 1)))


def test_masks_are_embedded_compressed():
    mask = np.tile(EVEN, (1000, 1))                          # constant along the batch axis
    assert partial.compress(mask).shape == (1, 6)
