"""No NaN or inf where ``jax.grad`` is finite: saturating maps are not inverted.

``atanh(tanh(20.0))`` is ``atanh(1.0) = inf`` in float32. Rules declare where
their inverse loses precision (``saturates=``); on the gradient path the
planner then keeps the map's *input* (the value its gradient needs) instead of
inverting its output. Loss heads squash a reversible network's output: the
gradient must stay finite and equal ``jax.grad``'s however saturated they are.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinv
from helpers import revnet, revnet_params

WIDTH = 8
PARAMS = revnet_params(jax.random.PRNGKey(0), 4, WIDTH)
HEAD_W = 0.5 * jax.random.normal(jax.random.PRNGKey(1), (WIDTH, WIDTH))

HEADS = {
    "tanh": jnp.tanh,
    "logistic": jax.nn.sigmoid,
    "erf": jax.scipy.special.erf,
    "tanh(y @ W)": lambda y: jnp.tanh(y @ HEAD_W.astype(y.dtype)),
    "exp underflowing": lambda y: jnp.exp(-10.0 * y),
    "expm1 at -1": lambda y: jnp.expm1(-y),
}


def saturated_input(dtype):
    """Activations around 20: every head above rounds to its limit."""
    x = 20.0 + jax.random.normal(jax.random.PRNGKey(2), (2, 4, WIDTH))
    return tuple(x.astype(dtype))


def loss_with(head):
    def loss(params, x):
        y1, y2 = revnet(params, x)
        return jnp.sum(head(y1)) + jnp.sum(head(y2))
    return loss


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("head", HEADS)
def test_saturated_heads_give_jax_grads_finite_gradient(head, dtype):
    params = jax.tree_util.tree_map(lambda w: w.astype(dtype), PARAMS)
    x = saturated_input(dtype)
    loss = loss_with(HEADS[head])
    want = jax.grad(loss, argnums=(0, 1))(params, x)
    got = jaxinv.grad(loss, argnums=(0, 1))(params, x)
    assert all(bool(jnp.all(jnp.isfinite(w))) for w in jax.tree_util.tree_leaves(want))
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert bool(jnp.all(jnp.isfinite(g))), head
        eps = float(jnp.finfo(dtype).eps)
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                                   atol=16 * eps * (1 + float(jnp.max(jnp.abs(w.astype(jnp.float32))))))


def test_the_head_keeps_its_input_and_the_network_is_still_rebuilt():
    x = saturated_input(jnp.float32)
    loss = lambda x1, x2: loss_with(jnp.tanh)(PARAMS, (x1, x2))
    report = jaxinv.explain(loss, *x)
    # the heads' inputs (the network's two outputs) are kept; every block is inverted
    assert report.saved_bytes == x[0].nbytes + x[1].nbytes
    assert "reconstructed" in str(report)


def test_explain_says_why_a_saturating_map_is_not_inverted():
    x = saturated_input(jnp.float32)
    report = str(jaxinv.explain(lambda x: jnp.tanh(x * 2.0), x[0]))
    assert "saturates" in report and "atanh(1) = inf" in report


def test_jaxinv_inverse_still_inverts_saturating_maps():
    x = jnp.linspace(-2.0, 2.0, 5)
    np.testing.assert_allclose(jaxinv.inverse(jnp.tanh)(jnp.tanh(x)), x, rtol=1e-5, atol=1e-6)


def test_a_loop_body_inverts_them_where_that_is_the_only_way_to_keep_memory_flat():
    def step(c, w):
        return jnp.tanh(c) * 0.5 + w, None

    def net(ws, x):
        return jax.lax.scan(step, x, ws)[0]

    ws = 0.1 * jnp.ones((6, 3))
    x = jnp.linspace(-1.0, 1.0, 3)
    loss = lambda ws, x: jnp.sum(net(ws, x) ** 2)
    np.testing.assert_allclose(jaxinv.grad(loss, argnums=(0, 1))(ws, x)[1],
                               jax.grad(loss, argnums=(0, 1))(ws, x)[1], rtol=1e-4, atol=1e-6)
    assert jaxinv.explain(loss, ws, x).loops_differentiated_by_jax == 0
