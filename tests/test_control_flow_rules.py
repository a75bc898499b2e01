"""End-to-end checks of the cond / identity-like / PRNG rules (jaxinv/rules/control_flow.py,
jaxinv/rules/utility.py): jaxinv's gradients against JAX's, jaxinv.inverse against the true
inputs, and what the plan saves (via explain and the residuals of jaxinv.vjp).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.tree_util import tree_leaves

import helpers
import jaxinv
from jaxinv._src.flatten import flatten


def assert_trees_close(got, want, tol=1e-5):
    helpers.assert_trees_close(got, want, rtol=tol, atol=tol, relative_atol=True)


def nbytes(tree):
    return sum(np.asarray(leaf).nbytes for leaf in tree_leaves(tree))


def coupling(x1, x2, W1, W2):
    """A RevNet block: y1 = x1 + F(x2); y2 = x2 + G(y1)."""
    y1 = x1 + jnp.tanh(x2 @ W1)
    return y1, x2 + jnp.tanh(y1 @ W2)


_keys = jax.random.split(jax.random.key(0), 8)
W = [0.3 * jax.random.normal(_keys[i], (4, 4)) for i in range(6)]
X1, X2 = jax.random.normal(_keys[6], (3, 4)), jax.random.normal(_keys[7], (3, 4))


def head(outs):
    """A non-invertible loss on a tuple of outputs."""
    return sum(jnp.sum(jnp.sin(o) * o) for o in outs)


def grads_agree(net, *args, argnums=(0, 1, 2), tol=1e-5):
    loss = lambda *a: head(net(*a))
    want = jax.grad(loss, argnums=argnums)(*args)
    assert_trees_close(jaxinv.grad(loss, argnums=argnums)(*args), want, tol)
    assert_trees_close(jax.grad(lambda *a: head(jaxinv.invertible(net)(*a)), argnums=argnums)(*args), want, tol)


# ---------------------------------------------------------------- cond / switch


def switch_net(W, x1, x2, i):
    """A switch between three invertible branches, between two coupling blocks."""
    a, b = coupling(x1, x2, W[0], W[1])
    a, b = lax.switch(i, [lambda a, b: (a * 2.0, b + 1.0),
                          lambda a, b: (b, a),
                          lambda a, b: coupling(a, b, W[2], W[3])], a, b)
    return coupling(a, b, W[4], W[5])


@pytest.mark.parametrize("i", [0, 1, 2])
def test_switch_grad_matches_jax(i):
    """jaxinv.grad and jax.grad(jaxinv.invertible) equal jax.grad through lax.switch, for each branch."""
    grads_agree(switch_net, W, X1, X2, i)


def test_switch_grad_under_jit_and_vmap():
    """The cond rules work under jit, and under vmap with a batched index (JAX turns the switch
    into a select of every branch)."""
    loss = lambda W, x1, x2, i: head(switch_net(W, x1, x2, i))
    want = jax.grad(loss, argnums=(1, 2))(W, X1, X2, 2)
    assert_trees_close(jax.jit(jaxinv.grad(loss, argnums=(1, 2)))(W, X1, X2, 2), want)
    xs1, xs2, idx = jnp.stack([X1, -X1, X2]), jnp.stack([X2, X1, -X2]), jnp.array([0, 1, 2])
    got = jax.vmap(jaxinv.grad(loss, argnums=(1, 2)), in_axes=(None, 0, 0, 0))(W, xs1, xs2, idx)
    want = jax.vmap(jax.grad(loss, argnums=(1, 2)), in_axes=(None, 0, 0, 0))(W, xs1, xs2, idx)
    assert_trees_close(got, want)


def cond_from_data(W, x1, x2):
    """The cond's predicate is computed from the activations: no rule can give it back."""
    a, b = coupling(x1, x2, W[0], W[1])
    i = (jnp.sum(a * b) > 0).astype(jnp.int32)
    a, b = lax.cond(i, lambda a, b: coupling(a, b, W[2], W[3]), lambda a, b: (b, a * 2.0), a, b)
    return coupling(a, b, W[4], W[5])


def test_cond_index_from_data_is_saved():
    """The planner saves the index (an int32 scalar), not the cond's operands, and rebuilds the
    inputs through the cond; gradients equal JAX's."""
    report = jaxinv.explain(cond_from_data, W, X1, X2)
    inputs = [r for r in report.rows if r.index is None]
    assert [r.fate for r in inputs] == ["saved"] * 6 + ["reconstructed", "reconstructed"], report
    assert report.saved_bytes == nbytes(W) + 4, report
    cond_row = next(r for r in report.rows if r.primitive == "cond")
    assert cond_row.fate == "reconstructed", report
    _, vjp_fn = jaxinv.vjp(cond_from_data, W, X1, X2)
    scalars = [r for r in vjp_fn.residuals if np.shape(r) == ()]
    assert len(scalars) == 1 and scalars[0].dtype == jnp.int32
    grads_agree(cond_from_data, W, X1, X2, tol=1e-4)


def test_cond_in_scan_is_inverted():
    """A scan over layers whose body switches on a per-layer flag (a known xs): the cond is
    inverted inside the reverse scan, only the params and flags are saved."""
    params = (jnp.stack(W[:3]), jnp.stack(W[3:]))
    flags = jnp.array([1, 0, 1], jnp.int32)

    def net(params, x1, x2):
        body = lambda c, q: (lax.cond(q[2], lambda c: coupling(*c, q[0], q[1]), lambda c: (c[1], -c[0]), c), None)
        return lax.scan(body, (x1, x2), (*params, flags))[0]

    report = jaxinv.explain(net, params, X1, X2)
    assert report.saved_bytes == nbytes(params), report
    grads_agree(net, params, X1, X2)


def test_cond_inverse():
    """jaxinv.inverse runs the inverted branch the (known) index selects."""
    for i in range(3):
        f = lambda a, b: switch_net(W, a, b, i)
        assert_trees_close(jaxinv.inverse(f)(*f(X1, X2)), (X1, X2), 1e-4)


def test_cond_non_invertible_branch_is_named():
    """A branch no rule inverts: jaxinv.inverse names it; gradients still equal JAX's (the
    cond's operands are saved). (``sin`` would invert: jaxinv.inverse plans branches in its
    own mode, principal branches included, as the code around them.)"""
    f = lambda i, x: lax.switch(i, [jnp.exp, lambda x: jnp.round(x) * 2.0], x)
    x = jnp.linspace(-1.0, 1.0, 6)
    with pytest.raises(jaxinv.NotInvertibleError, match=r"branch 1 \(of 2\).*round"):
        jaxinv.inverse(lambda x: f(1, x))(f(1, x))
    loss = lambda x, i: jnp.sum(jnp.cos(f(i, x)))
    assert_trees_close(jaxinv.grad(loss)(x, 1), jax.grad(loss)(x, 1))


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
    grads_agree(annotated, W, X1, X2)
    f = lambda a, b: annotated(W, a, b)
    assert_trees_close(jaxinv.inverse(f)(*f(X1, X2)), (X1, X2), 1e-4)


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
    grads_agree(dropout_block, W[:4], X1, X2, key)


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
