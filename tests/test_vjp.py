"""jaxinv.vjp / grad / value_and_grad behave like JAX's, with reconstruction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinv
from helpers import assert_trees_close, nbytes, revnet, revnet_input, revnet_loss, revnet_params
from jaxinv._src.compat import enable_x64

KEY = jax.random.key(0)
X = jnp.linspace(0.1, 1.0, 6, dtype=jnp.float32)

FUNCTIONS = {
    "exp(x)*4*x (the removed jax.invertible's case)": lambda x: jnp.exp(x) * 4.0 * x,
    "affine": lambda x: 3.0 * x + 2.0,
    "exp/tanh chain": lambda x: jnp.tanh(jnp.exp(x) * 0.5 - 1.0),
    "log1p/expm1": lambda x: jnp.expm1(jnp.log1p(x) * 2.0),
    "logistic": lambda x: jax.nn.sigmoid(x * 2.0),
    "sinh/asinh": lambda x: jnp.arcsinh(jnp.sinh(x) + 1.0),
    "odd power": lambda x: (x - 0.5) ** 3,
    "cumsum/rev": lambda x: jnp.cumsum(x)[::-1],
    "reshape/transpose": lambda x: (x.reshape(2, 3).T * 2.0).reshape(-1),
    "concatenate/split": lambda x: jnp.concatenate(jnp.split(x, 3)[::-1]) + 1.0,
    "sqrt/rsqrt": lambda x: jnp.sqrt(x) + jax.lax.rsqrt(x + 1.0),
    "not invertible (sin)": lambda x: jnp.sin(x) * 2.0,
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_vjp_matches_jax(name):
    """Outputs and cotangents equal jax.vjp's, whatever is reconstructed or saved."""
    f = FUNCTIONS[name]
    y, f_vjp = jaxinv.vjp(f, X)
    y_ref, f_vjp_ref = jax.vjp(f, X)
    ct = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
    assert_trees_close(y, y_ref)
    assert_trees_close(f_vjp(ct), f_vjp_ref(ct), rtol=1e-4)


def test_vjp_fn_leaves_are_the_residuals():
    """A fully invertible function keeps only its output: residuals = outputs."""
    f = lambda x: jnp.sinh(jnp.sinh(x) * 0.5 - 1.0)
    y, f_vjp = jaxinv.vjp(f, X)
    assert nbytes(f_vjp) == y.nbytes
    assert jaxinv.explain(f, X).saved_bytes == 0


def test_revnet_gradients_for_every_argnums():
    """A plainly written RevNet: jaxinv.grad equals jax.grad for params, input, both."""
    params, x = revnet_params(KEY, 4, 8), revnet_input(KEY, 5, 8)
    loss = revnet_loss(revnet)
    for argnums in (0, 1, (0, 1)):
        assert_trees_close(jaxinv.grad(loss, argnums)(params, x), jax.grad(loss, argnums)(params, x), rtol=1e-4)


def test_revnet_inverts_by_propagation():
    """y1 = x1 + F(x2); y2 = x2 + G(y1): G(y1) is recomputed forward, then the adds
    are inverted; only parameters are saved, never an activation."""
    params, x = revnet_params(KEY, 3, 8), revnet_input(KEY, 5, 8)
    report = jaxinv.explain(revnet, params, x)
    param_bytes = nbytes(params)
    assert report.saved_bytes == param_bytes
    inputs = [r for r in report.rows if r.index is None]
    assert [r.fate for r in inputs[-2:]] == ["reconstructed", "reconstructed"]


def test_the_backward_pass_evaluates_each_rebuilt_tanh_once():
    """Rebuilding a block evaluates its tanh once; tanh's VJP reads that answer
    instead of evaluating tanh again (4 blocks, 2 tanh each: 8 forward, 8 rebuilt)."""
    params, x = revnet_params(KEY, 4, 8), revnet_input(KEY, 5, 8)
    jaxpr = jax.make_jaxpr(jaxinv.grad(revnet_loss(revnet)))(params, x)
    assert sum(e.primitive.name == "tanh" for e in jaxpr.eqns) == 16
    assert_trees_close(jax.jit(jaxinv.grad(revnet_loss(revnet)))(params, x),
                       jax.grad(revnet_loss(revnet))(params, x), rtol=1e-4)


def test_value_and_grad_and_has_aux():
    """value_and_grad and has_aux follow JAX's conventions."""
    def loss(w, x):
        y = jnp.tanh(x * 2.0 + w)
        return jnp.sum(y ** 2), {"mean": jnp.mean(y)}
    w, x = jnp.float32(0.3), X
    (val, aux), g = jaxinv.value_and_grad(loss, has_aux=True)(w, x)
    (val_ref, aux_ref), g_ref = jax.value_and_grad(loss, has_aux=True)(w, x)
    assert_trees_close((val, aux, g), (val_ref, aux_ref, g_ref))
    g2, aux2 = jaxinv.grad(loss, argnums=(0, 1), has_aux=True)(w, x)
    assert_trees_close((g2, aux2), jax.grad(loss, argnums=(0, 1), has_aux=True)(w, x))


def test_pytree_inputs_and_outputs():
    """Dicts and tuples in and out, dtypes and shapes preserved."""
    f = lambda d: {"a": jnp.exp(d["x"]) * 2.0, "b": (d["y"] * 3.0, d["x"] + d["y"])}
    d = {"x": X, "y": X[::-1] * 2.0}
    out, f_vjp = jaxinv.vjp(f, d)
    out_ref, f_vjp_ref = jax.vjp(f, d)
    ct = jax.tree_util.tree_map(jnp.ones_like, out)
    assert_trees_close(out, out_ref)
    (got,) = f_vjp(ct)
    assert_trees_close(got, f_vjp_ref(ct)[0])
    assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), got) == \
        jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), d)


def test_float64_is_preserved():
    """In float64 mode, cotangents stay float64 and match JAX to 1e-12."""
    with enable_x64(True):
        x = jnp.linspace(0.1, 1.0, 6, dtype=jnp.float64)
        f = lambda x: jnp.sinh(jnp.sinh(x) * 0.5 - 1.0)
        (g,) = jaxinv.vjp(f, x)[1](jnp.ones_like(x))
        (g_ref,) = jax.vjp(f, x)[1](jnp.ones_like(x))
        assert g.dtype == jnp.float64
        np.testing.assert_allclose(g, g_ref, rtol=1e-12)


def test_integer_inputs_get_float0_cotangents():
    """Like jax.vjp: an integer argument's cotangent is a float0 zero."""
    f = lambda x, n: x * 2.0 + n
    n = jnp.arange(6, dtype=jnp.int32)
    (gx, gn) = jaxinv.vjp(f, X, n)[1](jnp.ones_like(X))
    (gx_ref, gn_ref) = jax.vjp(f, X, n)[1](jnp.ones_like(X))
    assert_trees_close(gx, gx_ref)
    assert gn.dtype == gn_ref.dtype == jax.dtypes.float0


def test_gradient_reaches_closed_over_values():
    """A value the function closes over, differentiated from outside, gets JAX's gradient."""
    def outer(s):
        f = lambda x: jnp.tanh(jnp.exp(x) * s)
        y, f_vjp = jaxinv.vjp(f, X)
        return jnp.sum(y) + jnp.sum(f_vjp(jnp.ones_like(y))[0])

    def outer_ref(s):
        f = lambda x: jnp.tanh(jnp.exp(x) * s)
        y, f_vjp = jax.vjp(f, X)
        return jnp.sum(y) + jnp.sum(f_vjp(jnp.ones_like(y))[0])

    assert_trees_close(jax.grad(outer)(0.7), jax.grad(outer_ref)(0.7), rtol=1e-4)


def test_works_under_jit_and_vmap():
    """jaxinv.grad is a plain JAX function: jit and vmap it."""
    params, x = revnet_params(KEY, 2, 8), revnet_input(KEY, 5, 8)
    loss = revnet_loss(revnet)
    ref = jax.grad(loss)(params, x)
    assert_trees_close(jax.jit(jaxinv.grad(loss))(params, x), ref, rtol=1e-4)
    xs = jax.tree_util.tree_map(lambda a: jnp.stack([a, 2 * a]), x)
    per_example = jax.vmap(jaxinv.grad(loss), in_axes=(None, 0))(params, xs)
    assert_trees_close(per_example, jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, xs), rtol=1e-4)


def test_grad_of_non_scalar_is_a_clear_error():
    """grad needs a scalar output, as in JAX."""
    with pytest.raises(TypeError, match="scalar"):
        jaxinv.grad(lambda x: x * 2.0)(X)
