"""Primitives that carry values through, and PRNG keys, inside jaxinv (the
rules of jaxinv/rules/utility.py), end to end: jaxinv's gradients against
JAX's, ``jaxinv.inverse`` against the true inputs, and what the plan keeps
(via ``explain`` and the residuals of ``jaxinv.vjp``).

* Identity-like primitives (``optimization_barrier``, a sharding constraint,
  ``checkpoint_name``, ``stop_gradient``) are inverted; call primitives
  (``jit``, ``named_call``, ``remat``) are inlined and need no rule.
* Random bits (dropout masks) are recomputed from the saved key, never saved;
  key wrapping and threefry's counter are inverted.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.ad_checkpoint import checkpoint_name

import jaxinv
from helpers import assert_grads_match_jax, assert_trees_close, input_fates, nbytes
from jaxinv._src.flatten import flatten

_keys = jax.random.split(jax.random.key(0), 8)
W = [0.3 * jax.random.normal(_keys[i], (4, 4)) for i in range(6)]
X1, X2 = jax.random.normal(_keys[6], (3, 4)), jax.random.normal(_keys[7], (3, 4))


# ---------------------------------------------------------------- identity-like primitives


def annotated(W, x1, x2):
    """A coupling block whose values pass through optimization_barrier, a sharding
    constraint, checkpoint_name and stop_gradient."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    x1, x2 = lax.optimization_barrier((x1, x2))
    x2 = lax.with_sharding_constraint(checkpoint_name(x2, "x2"), sharding)
    y1 = x1 + jnp.tanh(x2 @ W[0]) + lax.stop_gradient(jnp.tanh(x2 @ W[2]))
    return lax.optimization_barrier((y1, x2 + jnp.tanh(y1 @ W[1])))


def test_identity_like_primitives_are_inverted():
    """Only the weights are saved; the inputs are rebuilt through every identity-like
    primitive, and the gradients equal JAX's (stop_gradient's branch gets none)."""
    report = jaxinv.explain(annotated, W, X1, X2)
    assert report.saved_bytes == nbytes(W[:3]), report
    assert_grads_match_jax(annotated, W, X1, X2)
    f = lambda a, b: annotated(W, a, b)
    assert_trees_close(jaxinv.inverse(f)(*f(X1, X2)), (X1, X2), rtol=1e-4, atol=1e-4)


def test_call_primitives_are_inlined():
    """jit (pjit), named_call, remat (checkpoint) and nested jit leave no call equation after
    flattening: they need no rule."""
    g = jax.jit(lambda x: jnp.tanh(x) * 2.0)

    def f(x):
        y = jax.checkpoint(lambda x: jnp.sinh(x) + 1.0)(x)
        y = jax.named_call(jnp.exp, name="named")(y)
        return jax.remat(g)(jax.jit(g)(y))

    flat = flatten(jax.make_jaxpr(f)(X1))
    names = {e.primitive.name for e in flat.jaxpr.eqns}
    assert names == {"sinh", "add", "exp", "tanh", "mul"}, names


# ---------------------------------------------------------------- PRNG


def dropout_block(W, x1, x2, key):
    """Two coupling blocks with dropout (jax.random.bernoulli) inside F."""
    def block(x1, x2, W1, W2, k):
        h = jnp.tanh(x2 @ W1)
        keep = jax.random.bernoulli(k, 0.8, h.shape)
        y1 = x1 + jnp.where(keep, h / 0.8, 0.0)
        return y1, x2 + jnp.tanh(y1 @ W2)
    k1, k2 = jax.random.split(key)
    a, b = block(x1, x2, W[0], W[1], k1)
    return block(a, b, W[2], W[3], k2)


@pytest.mark.parametrize("key", [jax.random.key(3), jax.random.PRNGKey(3)], ids=["typed-key", "raw-key"])
def test_dropout_key_is_saved_not_the_mask(key):
    """random_bits / random_split / random_wrap are recomputed forward from the key: the key is
    saved (8 bytes), never the mask, the inputs are rebuilt, and the gradients equal JAX's."""
    report = jaxinv.explain(dropout_block, W[:4], X1, X2, key)
    inputs = [r for r in report.rows if r.index is None]
    assert [r.fate for r in inputs] == ["saved"] * 4 + ["reconstructed", "reconstructed", "saved"], report
    assert report.saved_bytes == nbytes(W[:4]) + 8, report
    for r in report.rows:
        if r.index is not None and r.primitive in ("random_bits", "random_split", "random_wrap", "lt", "select_n"):
            assert r.fate == "recomputed", report
    _, vjp_fn = jaxinv.vjp(dropout_block, W[:4], X1, X2, key)
    assert not any(np.shape(r) == (3, 4) for r in vjp_fn.residuals)
    assert_grads_match_jax(dropout_block, W[:4], X1, X2, key)


def test_dropout_is_replayed_from_its_key():
    """Random ops are recomputed from the saved key: only the key is saved,
    the mask never is, and the activations are reconstructed."""
    key = jax.random.key(3)

    def block(x1, x2, key):
        k1, k2 = jax.random.split(key)
        drop = lambda z, k: jnp.where(jax.random.bernoulli(k, 0.7, z.shape), jnp.tanh(z) / 0.7, 0.0)
        y1 = x1 + drop(x2, k1)
        return y1, x2 + drop(y1, k2)

    x1, x2 = jnp.ones((4, 16)), jnp.linspace(-1, 1, 64).reshape(4, 16)
    report = jaxinv.explain(block, x1, x2, key)
    assert report.saved_bytes <= 16  # the key's bytes; a mask would be 64+
    assert input_fates(block, x1, x2, key)[:2] == ["reconstructed", "reconstructed"]
    loss = lambda a, b: jnp.sum(jnp.sin(block(a, b, key)[0]) * block(a, b, key)[1])
    assert_trees_close(jaxinv.grad(loss, (0, 1))(x1, x2), jax.grad(loss, (0, 1))(x1, x2), rtol=1e-4)


def test_key_data_inverse():
    """random_wrap and random_unwrap invert each other: jaxinv.inverse of jax.random.key_data
    gives back the key, and of wrap_key_data the data."""
    keys = jax.random.split(jax.random.key(7), 3)
    data = jax.random.key_data(keys)
    got = jaxinv.inverse(jax.random.key_data, keys)(data)
    assert got.dtype == keys.dtype
    np.testing.assert_array_equal(jax.random.key_data(got), data)
    got = jaxinv.inverse(jax.random.wrap_key_data, data)(keys)
    np.testing.assert_array_equal(got, data)


def test_threefry_counter_inverse():
    """threefry2x32 is a bijection of its counter for a known key: jaxinv.inverse recovers the
    counter exactly."""
    import jax.extend.random as jr
    keypair = jnp.array([5, 0x9E3779B9], jnp.uint32)
    count = (jnp.arange(10, dtype=jnp.uint32) * jnp.uint32(2654435761)) ^ jnp.uint32(0xFFFF)
    f = lambda c: jr.threefry_2x32(keypair, c)
    np.testing.assert_array_equal(jaxinv.inverse(f)(f(count)), count)
