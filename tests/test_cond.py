"""``lax.cond`` / ``lax.switch`` inside jaxinv (the cond rule of
jaxinv/rules/control_flow.py): jaxinv's gradients against JAX's, for each
branch and under jit and vmap; ``jaxinv.inverse`` against the true inputs; and
what the plan keeps for the branch index (via ``explain`` and the residuals of
``jaxinv.vjp``). Loops and other higher-order primitives: ``test_control_flow.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxinv
from helpers import assert_grads_match_jax, assert_trees_close, coupling_block, head, nbytes

_keys = jax.random.split(jax.random.key(0), 8)
W = [0.3 * jax.random.normal(_keys[i], (4, 4)) for i in range(6)]
X1, X2 = jax.random.normal(_keys[6], (3, 4)), jax.random.normal(_keys[7], (3, 4))


def switch_net(W, x1, x2, i):
    """A switch between three invertible branches, between two coupling blocks."""
    a, b = coupling_block(x1, x2, W[0], W[1])
    a, b = lax.switch(i, [lambda a, b: (a * 2.0, b + 1.0),
                          lambda a, b: (b, a),
                          lambda a, b: coupling_block(a, b, W[2], W[3])], a, b)
    return coupling_block(a, b, W[4], W[5])


@pytest.mark.parametrize("i", [0, 1, 2])
def test_switch_grad_matches_jax(i):
    """jaxinv.grad and jax.grad(jaxinv.invertible) equal jax.grad through lax.switch, for each branch."""
    assert_grads_match_jax(switch_net, W, X1, X2, i)


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
    a, b = coupling_block(x1, x2, W[0], W[1])
    i = (jnp.sum(a * b) > 0).astype(jnp.int32)
    a, b = lax.cond(i, lambda a, b: coupling_block(a, b, W[2], W[3]), lambda a, b: (b, a * 2.0), a, b)
    return coupling_block(a, b, W[4], W[5])


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
    assert_grads_match_jax(cond_from_data, W, X1, X2, rtol=1e-4, atol=1e-4)


def test_cond_in_scan_is_inverted():
    """A scan over layers whose body switches on a per-layer flag (a known xs): the cond is
    inverted inside the reverse scan, only the params and flags are saved."""
    params = (jnp.stack(W[:3]), jnp.stack(W[3:]))
    flags = jnp.array([1, 0, 1], jnp.int32)

    def net(params, x1, x2):
        body = lambda c, q: (lax.cond(q[2], lambda c: coupling_block(*c, q[0], q[1]), lambda c: (c[1], -c[0]), c), None)
        return lax.scan(body, (x1, x2), (*params, flags))[0]

    report = jaxinv.explain(net, params, X1, X2)
    assert report.saved_bytes == nbytes(params), report
    assert_grads_match_jax(net, params, X1, X2)


def test_cond_inverse():
    """jaxinv.inverse runs the inverted branch the (known) index selects."""
    for i in range(3):
        f = lambda a, b: switch_net(W, a, b, i)
        assert_trees_close(jaxinv.inverse(f)(*f(X1, X2)), (X1, X2), rtol=1e-4, atol=1e-4)


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
