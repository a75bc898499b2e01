"""``jaxinv.keep_input``: a block the reversible backward pass does not invert.

Its input is stored, JAX differentiates it (plain AD, recomputing it from that
input), and the blocks before it are rebuilt starting from the stored value:
MemCNN's ``keep_input``, and the way to turn reversibility off for one block.
``jaxinv.nn.KeepInput`` is the same for a layer; ``momentum_net`` and
``reversible_blocks`` take ``keep_input=`` indices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinv
from jaxinv import nn

from helpers import assert_grads_match_jax, assert_trees_close, coupling_block, nbytes

WIDTH, BATCH, DEPTH = 4, 3, 8
TOL = dict(rtol=100 * float(jnp.finfo(jnp.float32).eps), atol=100 * float(jnp.finfo(jnp.float32).eps))
W = 0.4 * jax.random.normal(jax.random.key(0), (DEPTH, 2, WIDTH, WIDTH))
X1, X2 = jax.random.normal(jax.random.key(1), (2, BATCH, WIDTH))


def revnet(keep=()):
    """A RevNet of DEPTH coupling blocks; the blocks in ``keep`` through ``jaxinv.keep_input``."""
    def net(x1, x2, w):
        for i in range(DEPTH):
            block = lambda x1, x2, i=i: coupling_block(x1, x2, w[i, 0], w[i, 1])
            x1, x2 = (jaxinv.keep_input(block) if i in keep else block)(x1, x2)
        return x1, x2
    return net


def residual_bytes(net):
    _, vjp_fn = jaxinv.vjp(lambda x1, x2: net(x1, x2, W), X1, X2)
    return nbytes(vjp_fn)


@pytest.mark.parametrize("keep", [(0,), (3,), (DEPTH - 1,), (1, 4, 6)])
def test_gradients_equal_jax_grads(keep):
    assert_grads_match_jax(revnet(keep), X1, X2, W, **TOL)


@pytest.mark.parametrize("keep", [(3,), (1, 4, 6)])
def test_each_kept_block_stores_its_input_and_nothing_else(keep):
    block_input = X1.nbytes + X2.nbytes
    assert residual_bytes(revnet(keep)) == residual_bytes(revnet()) + len(keep) * block_input


def test_explain_names_the_stored_input():
    plan = jaxinv.explain(lambda x1, x2: revnet((3,))(x1, x2, W), X1, X2)
    kept = [r for r in plan.rows if "jaxinv.keep_input" in r.detail]
    assert len(kept) == 2 and all(r.fate == "saved" for r in kept)   # the block's two inputs


def test_a_kept_block_need_not_be_invertible():
    def net(x1, x2, w):
        for i in range(DEPTH):
            if i == 4:   # not invertible: relu forgets the sign of x1 @ w
                x1, x2 = jaxinv.keep_input(lambda x1, x2: (jax.nn.relu(x1 @ w[i, 0]), x2 + x1))(x1, x2)
            else:
                x1, x2 = coupling_block(x1, x2, w[i, 0], w[i, 1])
        return x1, x2

    assert_grads_match_jax(net, X1, X2, W, **TOL)
    plan = jaxinv.explain(lambda x1, x2: net(x1, x2, W), X1, X2)
    assert [r.fate for r in plan.rows if "jaxinv.keep_input" in r.detail] == ["saved", "saved"]
    assert [r.fate for r in plan.rows if r.fate == "saved"] == ["saved", "saved"]   # nothing else


def test_the_blocks_before_a_kept_block_are_rebuilt_not_recomputed_from_the_network_input():
    # Without the rule that a kept input is never pruned, the planner could save
    # the network's input and rerun every block before the kept one forward.
    plan = jaxinv.explain(lambda x1, x2: revnet((5,))(x1, x2, W), X1, X2)
    inputs = [r.fate for r in plan.rows if r.index is None]
    assert inputs == ["reconstructed", "reconstructed"]


def test_jaxinv_inverse_inverts_a_kept_block_as_usual():
    net = lambda x1, x2: revnet((2, 5))(x1, x2, W)
    y = net(X1, X2)
    assert_trees_close(jaxinv.inverse(net, X1, X2)(*y), (X1, X2), **TOL)


def test_under_jit_vmap_and_with_pytrees():
    def net(x, w):
        for i in range(DEPTH):
            block = lambda x, i=i: dict(zip("ab", coupling_block(x["a"], x["b"], w[i, 0], w[i, 1])))
            x = jaxinv.keep_input(block)(x) if i % 3 == 1 else block(x)
        return x

    def loss(net):
        return lambda w, x: (lambda y: jnp.sum(jnp.cos(y["a"]) * y["b"]))(net(x, w))

    xs = {"a": X1[:, None], "b": X2[:, None]}               # a batch of 3 examples of shape (1, WIDTH)
    batched = lambda loss: jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, 0)))
    assert_trees_close(batched(loss(jaxinv.invertible(net)))(W, xs), batched(loss(net))(W, xs), **TOL)


def test_plain_jax_and_disabled_see_the_function_itself():
    f = lambda x: jnp.sin(x) * x
    for grad in (jax.grad, lambda g: jax.jit(jax.grad(g))):
        assert_trees_close(grad(lambda x: jnp.sum(jaxinv.keep_input(f)(x)))(X1), grad(lambda x: jnp.sum(f(x)))(X1))
    with jaxinv.disabled():
        assert_trees_close(jaxinv.grad(lambda x: jnp.sum(revnet((3,))(x, X2, W)[0]))(X1),
                           jax.grad(lambda x: jnp.sum(revnet()(x, X2, W)[0]))(X1), **TOL)


def test_keywords_are_refused_with_a_way_out():
    with pytest.raises(TypeError, match=r"takes positional arguments only, got keywords \['w'\]"):
        jaxinv.keep_input(lambda x, w: x @ w)(X1, w=W[0, 0])


def test_closed_over_arrays_get_their_gradients():
    scale = jnp.float32(1.5)

    def net(x, w):
        return jaxinv.keep_input(lambda x: x * scale + jnp.tanh(x @ w))(x)

    loss = lambda scale_and_w, x: jnp.sum(jaxinv.invertible(net)(x, scale_and_w[1]) ** 2 * scale_and_w[0])
    want = lambda scale_and_w, x: jnp.sum(net(x, scale_and_w[1]) ** 2 * scale_and_w[0])
    assert_trees_close(jax.grad(loss)((scale, W[0, 0]), X1), jax.grad(want)((scale, W[0, 0]), X1), **TOL)


# ---------------------------------------------------------------- KeepInput, a layer


def test_keep_input_layer_in_a_stack():
    x = jnp.concatenate([X1, X2], axis=1)
    layers = [nn.AdditiveCoupling(hidden=(8,), split=WIDTH - i % 2) for i in range(4)]
    plain, kept = nn.Sequential(tuple(layers)), nn.Sequential((*layers[:2], nn.KeepInput(layers[2]), layers[3]))
    params = plain.init(jax.random.key(2), x)
    assert_trees_close(kept.init(jax.random.key(2), x), params)
    assert_trees_close(kept.apply(params, x), plain.apply(params, x))
    assert_trees_close(kept.inverse(params, plain.apply(params, x)), x, **TOL)
    assert_trees_close(kept.forward_and_log_det(params, x), plain.forward_and_log_det(params, x))

    loss = lambda flow: (lambda p, x: jnp.sum(jnp.sin(flow.apply(p, x))))
    assert_trees_close(jaxinv.grad(loss(kept), argnums=(0, 1))(params, x),
                       jax.grad(loss(plain), argnums=(0, 1))(params, x), **TOL)
    stored = lambda flow: nbytes(jaxinv.vjp(lambda x: flow.apply(params, x), x)[1])
    assert stored(kept) == stored(plain) + x.nbytes


# ---------------------------------------------------------------- residual networks


def residuals(n):
    return [lambda x, w=w: jnp.tanh(x @ w) for w in W[:n, 0]]


def kept_bytes(net, x):
    """The bytes the plan stores as inputs of kept blocks, and all it stores."""
    rows = [r for r in jaxinv.explain(net, x).rows if r.fate == "saved"]
    return sum(r.saved_bytes for r in rows if "jaxinv.keep_input" in r.detail), sum(r.saved_bytes for r in rows)


def test_momentum_net_keep_input():
    net = lambda keep, reversible=True: nn.momentum_net(residuals(DEPTH), 0.9, keep_input=keep, reversible=reversible)
    loss = lambda net: (lambda x: jnp.sum(jnp.sin(net(x))))
    assert_trees_close(jax.grad(loss(net((2, -1))))(X1), jax.grad(loss(net((), False)))(X1), **TOL)
    kept, saved = kept_bytes(net((2, 5), reversible=False), X1)
    assert kept == 2 * 2 * X1.nbytes                              # two kept states (x, v)
    stored = lambda keep: nbytes(jax.vjp(loss(net(keep)), X1)[1])
    assert stored(()) < stored((2, 5)) <= stored(()) + kept      # (a kept state may replace another save)


@pytest.mark.parametrize("form", ["revnet", "momentum"])
def test_reversible_blocks_keep_input(form):
    pairs = list(zip(residuals(DEPTH)[::2], residuals(DEPTH)[1::2]))
    body = lambda keep, reversible=True: nn.reversible_blocks(pairs, lambda pair: pair, form=form,
                                                              keep_input=keep, reversible=reversible)
    loss = lambda net: (lambda x: jnp.sum(jnp.sin(net(x))))
    assert_trees_close(jax.grad(loss(body((1,))))(X1), jax.grad(loss(body((), False)))(X1), **TOL)
    kept, _ = kept_bytes(body((1,), reversible=False), X1)
    assert kept == 2 * X1.nbytes                                  # (x1, x2), or (x, v)
    stored = lambda keep: nbytes(jax.vjp(loss(body(keep)), X1)[1])
    assert stored(()) < stored((1,)) <= stored(()) + kept


def test_keep_input_indices_are_checked():
    with pytest.raises(ValueError, match=r"keep_input indices \[8\] are out of range for 8 blocks"):
        nn.momentum_net(residuals(DEPTH), 0.9, keep_input=(8,))
    with pytest.raises(TypeError, match="keep_input must be a collection of int indices"):
        nn.momentum_net(residuals(DEPTH), 0.9, keep_input=3)
