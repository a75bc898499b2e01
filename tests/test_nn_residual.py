"""Residual networks made reversible without rewriting them (``jaxinv.nn.momentum_net``,
``jaxinv.nn.reversible_blocks``): functional blocks, Equinox modules and Flax NNX
modules; gradients equal plain AD's on the same network, and the memory the
backward pass keeps does not grow with depth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinv
from jaxinv.nn import momentum_net, reversible_blocks

from helpers import assert_trees_close, nbytes

WIDTH, BATCH = 8, 16
X = jax.random.normal(jax.random.key(0), (BATCH, WIDTH))


def weights(depth, seed=1):
    return [0.5 * w for w in jax.random.normal(jax.random.key(seed), (depth, WIDTH, WIDTH)) / np.sqrt(WIDTH)]


def functional_blocks(ws):
    return [lambda x, w=w: jnp.tanh(x @ w) for w in ws]


def loss_of(make_net):
    return lambda ws, x: jnp.sum(jnp.sin(make_net(ws)(x)) ** 2)


def residual_bytes_beyond_params(loss, ws, x):
    """What jax.vjp of ``loss`` keeps for its backward pass, less the parameters themselves."""
    _, vjp_fn = jax.vjp(loss, ws, x)
    return nbytes(vjp_fn) - nbytes(ws)


# ---------------------------------------------------------------- momentum_net


@pytest.mark.parametrize("gamma", [0.5, 0.9])
def test_momentum_net_gradients_equal_plain_ad(gamma):
    ws = weights(6)
    reversible = loss_of(lambda ws: momentum_net(functional_blocks(ws), gamma))
    plain = loss_of(lambda ws: momentum_net(functional_blocks(ws), gamma, reversible=False))
    assert_trees_close(jax.grad(reversible, argnums=(0, 1))(ws, X), jax.grad(plain, argnums=(0, 1))(ws, X))
    assert_trees_close(jaxinv.grad(plain, argnums=(0, 1))(ws, X), jax.grad(plain, argnums=(0, 1))(ws, X))


def test_momentum_net_is_the_residual_network_it_is_built_from_as_gamma_goes_to_0():
    ws = weights(3)
    resnet = X
    for w in ws:
        resnet = resnet + jnp.tanh(resnet @ w)
    np.testing.assert_allclose(momentum_net(functional_blocks(ws), 1e-6)(X), resnet, rtol=1e-4, atol=1e-5)


def test_momentum_net_memory_is_flat_in_depth():
    kept = {}
    for depth in (4, 16):
        net = loss_of(lambda ws: momentum_net(functional_blocks(ws), 0.9))
        plain = loss_of(lambda ws: momentum_net(functional_blocks(ws), 0.9, reversible=False))
        kept[depth] = residual_bytes_beyond_params(net, weights(depth), X)
        assert residual_bytes_beyond_params(plain, weights(depth), X) > depth * X.nbytes  # plain AD: per step
    assert kept[4] == kept[16] <= 4 * X.nbytes


def test_momentum_net_with_a_given_velocity_and_returning_it():
    ws, v0 = weights(3), 0.1 * X[::-1]
    net = momentum_net(functional_blocks(ws), 0.8, return_velocity=True)
    x, v = net(X, v0)
    x_want, v_want = X, v0
    for w in ws:
        v_want = 0.8 * v_want + 0.2 * jnp.tanh(x_want @ w)
        x_want = x_want + v_want
    assert_trees_close((x, v), (x_want, v_want))
    loss = lambda ws, v0: jnp.sum(momentum_net(functional_blocks(ws), 0.8)(X, v0) ** 2)
    plain = lambda ws, v0: jnp.sum(momentum_net(functional_blocks(ws), 0.8, reversible=False)(X, v0) ** 2)
    assert_trees_close(jax.grad(loss, argnums=(0, 1))(ws, v0), jax.grad(plain, argnums=(0, 1))(ws, v0))


@pytest.mark.parametrize("gamma, error", [(0.0, ValueError), (1.0, ValueError), (jnp.float32(0.9), TypeError)])
def test_a_gamma_jaxinv_cannot_divide_by_is_refused(gamma, error):
    with pytest.raises(error, match="gamma"):
        momentum_net(functional_blocks(weights(2)), gamma)


def test_a_residual_function_must_keep_its_input_shape():
    net = momentum_net([lambda x: x[:, :2]], 0.9)
    with pytest.raises(ValueError, match="keep its input's shape"):
        net(X)


# ---------------------------------------------------------------- framework modules


@pytest.mark.parametrize("keep", [(), (1,)])
def test_equinox_modules_as_residual_functions(keep):
    eqx = pytest.importorskip("equinox")
    blocks = [eqx.nn.MLP(WIDTH, WIDTH, 16, 1, activation=jnp.tanh, key=k) for k in jax.random.split(jax.random.key(2), 4)]
    batched = lambda block: jax.vmap(block)       # an eqx MLP takes one example

    def loss(blocks, x, reversible):
        net = momentum_net([batched(b) for b in blocks], 0.9, reversible=reversible, keep_input=keep)
        return jnp.sum(jnp.sin(net(x)) ** 2)

    got = eqx.filter_grad(lambda b, x: loss(b, x, True))(blocks, X)
    want = eqx.filter_grad(lambda b, x: loss(b, x, False))(blocks, X)
    assert_trees_close(eqx.filter(got, eqx.is_inexact_array), eqx.filter(want, eqx.is_inexact_array))


@pytest.mark.parametrize("keep", [(), (1,)])
def test_flax_nnx_modules_as_residual_functions(keep):
    nnx = pytest.importorskip("flax.nnx")

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(WIDTH, WIDTH, rngs=rngs)

        def __call__(self, x):
            return jnp.tanh(self.dense(x))

    class Net(nnx.Module):
        def __init__(self, depth, reversible, rngs):
            self.blocks = getattr(nnx, "List", list)([Block(rngs) for _ in range(depth)])  # nnx.List: flax >= 0.12
            self.reversible = reversible

        def __call__(self, x):
            return momentum_net(list(self.blocks), 0.9, reversible=self.reversible, keep_input=keep)(x)

    loss = lambda model, x: jnp.sum(jnp.sin(model(x)) ** 2)
    got = nnx.grad(loss)(Net(4, True, nnx.Rngs(0)), X)
    want = nnx.grad(loss)(Net(4, False, nnx.Rngs(0)), X)
    assert_trees_close(jax.tree.leaves(got), jax.tree.leaves(want))


# ---------------------------------------------------------------- reversible_blocks


def two_branch_blocks(ws):
    """Functional two-branch blocks: (f, g) per block, each closing over its weight."""
    return [(lambda x, w=w: jnp.tanh(x @ w), lambda x, w=w: jnp.sin(x @ w.T)) for w in ws]


@pytest.mark.parametrize("form", ["revnet", "momentum"])
def test_reversible_blocks_gradients_equal_plain_ad_and_memory_is_flat(form):
    make = lambda reversible: loss_of(lambda ws: reversible_blocks(two_branch_blocks(ws), lambda b: b, form=form,
                                                                     reversible=reversible))
    ws = weights(4)
    assert_trees_close(jax.grad(make(True), argnums=(0, 1))(ws, X), jax.grad(make(False), argnums=(0, 1))(ws, X))
    kept = {depth: residual_bytes_beyond_params(make(True), weights(depth), X) for depth in (2, 8)}
    assert kept[2] == kept[8] <= 4 * X.nbytes


def test_reversible_blocks_of_equinox_transformer_blocks():
    eqx = pytest.importorskip("equinox")

    class Block(eqx.Module):
        attn: eqx.nn.MultiheadAttention
        mlp: eqx.nn.MLP

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.attn = eqx.nn.MultiheadAttention(2, WIDTH, key=k1)
            self.mlp = eqx.nn.MLP(WIDTH, WIDTH, 16, 1, activation=jax.nn.gelu, key=k2)

        def attention(self, x):          # x: (batch, seq, width)
            return jax.vmap(lambda s: self.attn(s, s, s))(x)

        def feed_forward(self, x):
            return jax.vmap(jax.vmap(self.mlp))(x)

    blocks = [Block(k) for k in jax.random.split(jax.random.key(3), 3)]
    x = X.reshape(4, 4, WIDTH)

    def loss(blocks, x, reversible):
        net = reversible_blocks(blocks, lambda b: (b.attention, b.feed_forward), reversible=reversible)
        return jnp.sum(jnp.sin(net(x)) ** 2)

    got = eqx.filter_grad(lambda b, x: loss(b, x, True))(blocks, x)
    want = eqx.filter_grad(lambda b, x: loss(b, x, False))(blocks, x)
    assert_trees_close(eqx.filter(got, eqx.is_inexact_array), eqx.filter(want, eqx.is_inexact_array))


def test_branches_must_give_two_residual_functions():
    with pytest.raises(ValueError, match="two residual functions"):
        reversible_blocks([object()], lambda b: (jnp.tanh,))
    with pytest.raises(ValueError, match="form"):
        reversible_blocks([object()], lambda b: (jnp.tanh, jnp.sin), form="reformer")


def test_anchors_bound_the_drift_of_a_deep_momentum_net_for_one_stored_state_each():
    """gamma = 0.5 doubles rounding errors at every rebuilt step: over 48 steps a rebuild
    would return garbage (error 2e+01 measured). Storing (x, v) every k steps (jaxinv.anchor,
    MemCNN's keep_input) restarts the rebuild from exact values; the default places them."""
    ws = weights(48)
    assert jaxinv.nn.steps_between_anchors(0.5, jnp.float32) == 11
    plain = loss_of(lambda ws: momentum_net(functional_blocks(ws), 0.5, reversible=False))
    want = jax.grad(plain)(ws, X)
    kept = {}
    for every in ("auto", 8, 1000):
        loss = loss_of(lambda ws: momentum_net(functional_blocks(ws), 0.5, anchor_every=every))
        if every == 1000:
            with pytest.raises(ValueError, match=r"gamma\*\*-48 = 2.8e\+14.*anchor_every <= 11"):
                jax.grad(loss)(ws, X)
            continue
        got = jax.grad(loss)(ws, X)
        assert max(float(jnp.max(jnp.abs(g - w)) / jnp.max(jnp.abs(w))) for g, w in zip(got, want)) < 1e-4
        kept[every] = residual_bytes_beyond_params(loss, ws, X)
    # one (x, v) per anchor, less the velocity saved at the end (recomputed from the last anchor),
    # beyond what the same depth keeps without anchors (gamma = 0.9 needs none)
    base = residual_bytes_beyond_params(loss_of(lambda ws: momentum_net(functional_blocks(ws), 0.9)), ws, X)
    assert kept[8] - base == (2 * (48 // 8 - 1) - 1) * X.nbytes       # anchors after steps 8, 16, ..., 40
    assert kept["auto"] - base == (2 * (48 // 11) - 1) * X.nbytes     # after steps 11, 22, 33, 44


def test_no_anchors_are_placed_where_none_are_needed():
    ws = weights(32)
    loss = loss_of(lambda ws: momentum_net(functional_blocks(ws), 0.9))   # 32 < 75 steps
    assert "jaxinv_anchor" not in str(jax.make_jaxpr(lambda x: momentum_net(functional_blocks(ws), 0.9,
                                                                            reversible=False)(x))(X))
    assert residual_bytes_beyond_params(loss, ws, X) == residual_bytes_beyond_params(loss, ws[:4], X)


@pytest.mark.parametrize("form", ["revnet", "momentum"])
def test_reversible_blocks_anchors_store_the_state_every_k_blocks(form):
    ws = weights(6)
    make = lambda every, reversible=True: loss_of(lambda ws: reversible_blocks(
        two_branch_blocks(ws), lambda b: b, form=form, reversible=reversible, anchor_every=every))
    assert_trees_close(jax.grad(make(2))(ws, X), jax.grad(make(None, reversible=False))(ws, X))
    assert residual_bytes_beyond_params(make(2), ws, X) - residual_bytes_beyond_params(make(None), ws, X) \
        == (2 * 2 - 1) * X.nbytes   # both streams after blocks 2 and 4, less the end's save (now recomputed)


def test_anchor_every_must_be_a_positive_int():
    with pytest.raises(ValueError, match="anchor_every"):
        momentum_net(functional_blocks(weights(2)), 0.9, anchor_every=0)
    with pytest.raises(ValueError, match="anchor_every"):
        momentum_net(functional_blocks(weights(2)), 0.9, anchor_every="sometimes")


def test_pytree_states_low_precision_jit_and_vmap():
    """A state that is a dict of a bfloat16 and a float32 array, under jit and vmap:
    dtypes and structure kept, gradients as plain AD's (the bfloat16 leaf sets the anchor budget)."""
    ws = weights(30)
    state = {"h": X.astype(jnp.bfloat16), "c": X[:, :4]}
    blocks = [lambda s, w=w: {"h": jnp.tanh(s["h"] @ w.astype(jnp.bfloat16)), "c": jnp.sin(s["c"]) * 0.5}
              for w in ws]
    out = jax.jit(momentum_net(blocks, 0.9))(state)
    assert jax.tree.map(lambda a: a.dtype, out) == {"h": jnp.bfloat16, "c": jnp.float32}
    assert jaxinv.nn.steps_between_anchors(0.9, jnp.bfloat16) < 30 < jaxinv.nn.steps_between_anchors(0.9, jnp.float32)
    loss = lambda reversible: lambda s: sum(jnp.sum(jnp.sin(a.astype(jnp.float32)))
                                            for a in jax.tree.leaves(momentum_net(blocks, 0.9, reversible=reversible)(s)))
    got = jax.jit(jax.vmap(jax.grad(loss(True))))(jax.tree.map(lambda a: a[None].repeat(2, 0), state))
    want = jax.vmap(jax.grad(loss(False)))(jax.tree.map(lambda a: a[None].repeat(2, 0), state))
    assert jax.tree.map(lambda a: a.dtype, got) == {"h": jnp.bfloat16, "c": jnp.float32}
    assert_trees_close(got["c"], want["c"])
    # the anchors keep rounding growth within 1/sqrt(eps): the rebuilt bfloat16 values keep half their digits
    got_h, want_h = (np.asarray(a, np.float32) for a in (got["h"], want["h"]))
    assert np.max(np.abs(got_h - want_h)) <= np.sqrt(float(jnp.finfo(jnp.bfloat16).eps)) * np.max(np.abs(want_h))


def test_check_reconstruction_sees_the_anchors_of_the_checked_dtype():
    # Its float64 reference would place fewer automatic anchors (26 steps fit
    # between two at gamma=0.5, 11 in float32): the reference keeps the run's.
    report = jaxinv.check_reconstruction(momentum_net(functional_blocks(weights(24)), 0.5), X)
    assert [row.name for row in report.rows if row.kind == "anchor"] == ["anchor#0", "anchor#1"]
    assert report.ok
