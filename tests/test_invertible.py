"""jaxinv.invertible composes with every JAX transformation."""

import jax
import jax.numpy as jnp
import pytest

import jaxinv
from helpers import assert_trees_close, nbytes, revnet, revnet_input, revnet_loss, revnet_params

KEY = jax.random.key(1)
PARAMS = revnet_params(KEY, 3, 8)
X = revnet_input(KEY, 4, 8)
NET = jaxinv.invertible(revnet)


def test_grad_uses_the_reversible_backward():
    """jax.grad over an invertible net equals jax.grad over the plain net."""
    loss, ref = revnet_loss(NET), revnet_loss(revnet)
    assert_trees_close(jax.grad(loss, (0, 1))(PARAMS, X), jax.grad(ref, (0, 1))(PARAMS, X), rtol=1e-4)


def test_vjp_residuals_are_outputs_plus_saved():
    """Under jax.vjp the residuals are the outputs plus what the plan saves
    (here: the parameters), far fewer than the plain net's."""
    y, f_vjp = jax.vjp(NET, PARAMS, X)
    _, f_vjp_ref = jax.vjp(revnet, PARAMS, X)
    assert nbytes(f_vjp) <= nbytes(PARAMS) + nbytes(y)
    assert nbytes(f_vjp) < nbytes(f_vjp_ref)


@pytest.mark.parametrize("transform", ["jit(grad)", "vmap", "vmap(grad)", "grad(vmap)"])
def test_jit_and_vmap(transform):
    """jit and vmap in either order with grad."""
    loss, ref = revnet_loss(NET), revnet_loss(revnet)
    xs = jax.tree_util.tree_map(lambda a: jnp.stack([a, 0.5 * a, -a]), X)
    cases = {
        "jit(grad)": lambda l: jax.jit(jax.grad(l, (0, 1)))(PARAMS, X),
        "vmap": lambda l: jax.vmap(l, (None, 0))(PARAMS, xs),
        "vmap(grad)": lambda l: jax.vmap(jax.grad(l, (0, 1)), (None, 0))(PARAMS, xs),
        "grad(vmap)": lambda l: jax.grad(lambda p, x: jnp.sum(jax.vmap(l, (None, 0))(p, x)))(PARAMS, xs),
    }
    assert_trees_close(cases[transform](loss), cases[transform](ref), rtol=1e-4)


def test_forward_mode():
    """jax.jvp, jax.linearize and jax.hessian work (a plain custom_vjp refuses them)."""
    t = jax.tree_util.tree_map(jnp.ones_like, (PARAMS, X))
    assert_trees_close(jax.jvp(NET, (PARAMS, X), t), jax.jvp(revnet, (PARAMS, X), t), rtol=1e-4)
    assert_trees_close(jax.linearize(NET, PARAMS, X)[1](*t), jax.linearize(revnet, PARAMS, X)[1](*t), rtol=1e-4)
    small = lambda net: lambda x1: jnp.sum(net(PARAMS, (x1, X[1][:1]))[0] ** 2)
    assert_trees_close(jax.hessian(small(NET))(X[0][:1]), jax.hessian(small(revnet))(X[0][:1]), rtol=1e-4)


def test_gradient_reaches_closed_over_values():
    """A value the invertible function closes over gets its gradient."""
    def loss(s, net_of):
        f = net_of(lambda x: revnet(PARAMS, (x[0] * s, x[1])))
        return jnp.sum(f(X)[0] ** 2)
    assert_trees_close(jax.grad(loss)(0.7, jaxinv.invertible), jax.grad(loss)(0.7, lambda f: f), rtol=1e-4)


def test_nested_invertible_is_one_region():
    """Invertible blocks inside an invertible net form one region: the nested
    version saves exactly what the flat one saves."""
    block = jaxinv.invertible(lambda p, x: revnet([p], x))
    nested = lambda params, x: [x := block(p, x) for p in params][-1]
    assert jaxinv.explain(nested, PARAMS, X).saved_bytes == jaxinv.explain(revnet, PARAMS, X).saved_bytes
    _, vjp_nested = jax.vjp(jaxinv.invertible(nested), PARAMS, X)
    _, vjp_flat = jax.vjp(NET, PARAMS, X)
    assert nbytes(vjp_nested) == nbytes(vjp_flat)
    assert_trees_close(jax.grad(revnet_loss(jaxinv.invertible(nested)))(PARAMS, X),
                       jax.grad(revnet_loss(revnet))(PARAMS, X), rtol=1e-4)


def test_jaxinv_grad_over_invertible():
    """jaxinv.grad of a function using invertible pieces inlines them."""
    assert_trees_close(jaxinv.grad(revnet_loss(NET))(PARAMS, X), jax.grad(revnet_loss(revnet))(PARAMS, X),
                       rtol=1e-4)
