"""No silent wrong gradients: what jaxinv refuses to invert, and how it says so."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

import jaxinv
from helpers import assert_trees_close

X = jnp.array([0.5, -1.0, 2.0, 0.25], dtype=jnp.float32)


def _fate_of_inputs(f, *args):
    return [r.fate for r in jaxinv.explain(f, *args).rows if r.index is None]


@pytest.mark.parametrize("name,f", [
    ("sin", jnp.sin), ("cos", jnp.cos), ("square", jnp.square), ("even power", lambda x: x ** 4),
    ("abs", jnp.abs), ("cosh", jnp.cosh),
])
def test_non_injective_ops_are_saved_not_inverted(name, f):
    """A non-injective op is never inverted on the gradient path: its input is saved,
    and the gradient is JAX's (a principal-branch inverse would flip signs)."""
    g = lambda x: f(x) * 2.0 + 1.0
    assert _fate_of_inputs(g, X) == ["saved"]
    (ct,) = jaxinv.vjp(g, X)[1](jnp.ones_like(X))
    (ct_ref,) = jax.vjp(g, X)[1](jnp.ones_like(X))
    np.testing.assert_allclose(ct, ct_ref, rtol=1e-5)


def test_principal_branch_serves_inverse_only():
    """jaxinv.inverse may use the documented principal branch (sin -> asin)."""
    np.testing.assert_allclose(jaxinv.inverse(jnp.sin)(jnp.float32(0.5)), np.arcsin(0.5), rtol=1e-6)
    assert jax.lax.sin_p not in jaxinv.registry.inverse_rules


def test_multiplying_by_a_value_that_may_be_zero_is_not_inverted():
    """x * s with s containing zeros: dividing by s would give NaN where jax.grad
    is finite, so x is saved instead."""
    s = jnp.array([0.0, 1.0, 2.0, 0.0])
    f = lambda x, s: jnp.sum(jnp.tanh(x * s) * 3.0)
    g = jaxinv.grad(f, (0, 1))(X, s)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in g)
    assert_trees_close(g, jax.grad(f, (0, 1))(X, s))
    assert _fate_of_inputs(lambda x, s: jnp.tanh(x * s), X, s)[0] == "saved"


@pytest.mark.parametrize("scale", [
    lambda s: jnp.exp(s), lambda s: jax.nn.sigmoid(s), lambda s: jaxinv.nonzero(s),
    lambda s: 2.5,
])
def test_provably_nonzero_factors_are_inverted(scale):
    """Outputs of exp/logistic, literals without zeros, and values marked with
    jaxinv.nonzero are divided by: x is reconstructed, not saved."""
    s = jnp.array([0.3, 1.0, -2.0, 0.5])
    f = lambda x, s: jnp.sinh(x * scale(s))
    assert _fate_of_inputs(f, X, s)[0] == "reconstructed"
    assert_trees_close(jaxinv.grad(lambda x, s: jnp.sum(f(x, s) ** 2), (0, 1))(X, s),
                       jax.grad(lambda x, s: jnp.sum(f(x, s) ** 2), (0, 1))(X, s), rtol=1e-4)


def test_zero_constant_closed_over_is_not_a_divisor():
    """A closed-over constant with a zero in it is not divided by."""
    c = np.array([1.0, 0.0, 2.0, 3.0], dtype=np.float32)
    f = lambda x: jnp.sinh(x * c)
    assert _fate_of_inputs(f, X) == ["saved"]
    nonzero_c = np.array([1.0, 4.0, 2.0, 3.0], dtype=np.float32)
    assert _fate_of_inputs(lambda x: jnp.sinh(x * nonzero_c), X) == ["reconstructed"]


def test_a_given_factor_that_underflowed_to_zero_is_not_a_divisor():
    """exp(c) is nonzero by its rule, but exp(-200) is 0 in float32: where c is
    a given value, its value decides, and x is saved, not rebuilt as 0 / 0."""
    c = jnp.array([-200.0, 0.5, 1.0, -1.0])
    h = lambda x, c: (x * jnp.exp(c), jnp.sin(x))   # sin needs x in the backward pass
    loss = lambda x, c: sum(jnp.sum(y) for y in h(x, c))
    g = jaxinv.grad(loss)(X, c)
    assert bool(jnp.all(jnp.isfinite(g)))
    assert_trees_close(g, jax.grad(loss)(X, c))
    assert jaxinv.explain(h, X, c, argnums=0).rows[0].fate == "saved"


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
    assert _fate_of_inputs(block, x1, x2, key)[:2] == ["reconstructed", "reconstructed"]
    loss = lambda a, b: jnp.sum(jnp.sin(block(a, b, key)[0]) * block(a, b, key)[1])
    assert_trees_close(jaxinv.grad(loss, (0, 1))(x1, x2), jax.grad(loss, (0, 1))(x1, x2), rtol=1e-4)


def test_not_invertible_error_names_primitive_reason_and_line():
    """NotInvertibleError is a ValueError naming the primitive, the reason and
    the user's source line."""
    def f(x):
        return jnp.sum(x)  # reduce_sum loses information
    with pytest.raises(jaxinv.NotInvertibleError) as info:
        jaxinv.inverse(f, X)(jnp.float32(1.0))
    err = info.value
    assert isinstance(err, ValueError)
    assert err.primitive == "reduce_sum"
    assert "test_policy.py" in str(err) and "reduce_sum" in str(err) and err.reason in str(err)


def test_inverse_of_two_unknown_operands_is_refused():
    """x * y with both unknown cannot be inverted: a clear error."""
    with pytest.raises(jaxinv.NotInvertibleError, match="mul"):
        jaxinv.inverse(lambda x, y: x * y, X, X)(X)


def test_a_new_primitive_needs_only_a_registered_rule():
    """Registering an inverse rule for a brand-new Primitive is all it takes."""
    triple_p = Primitive("test_triple")
    triple_p.def_impl(lambda x: 3.0 * x)
    triple_p.def_abstract_eval(lambda a: a)
    ad.deflinear2(triple_p, lambda ct, x: [3.0 * ct])
    batching.primitive_batchers[triple_p] = lambda args, dims: (triple_p.bind(*args), dims[0])
    mlir.register_lowering(triple_p, mlir.lower_fun(lambda x: 3.0 * x, multiple_results=False))
    f = lambda x: jnp.sinh(triple_p.bind(x))
    assert _fate_of_inputs(f, X) == ["saved"]          # before: unknown primitive, saved
    jaxinv.register_inverse(triple_p, lambda invals, outvals: [outvals[0] / 3.0])
    assert _fate_of_inputs(f, X) == ["reconstructed"]  # after: inverted
    g = lambda x: jnp.sum(jnp.sin(f(x)))
    assert_trees_close(jaxinv.grad(g)(X), jax.grad(g)(X))
    x = X * 0.2  # away from tanh's flat tails, where atanh amplifies rounding
    np.testing.assert_allclose(jaxinv.inverse(f)(f(x)), x, rtol=1e-5)


def test_explain_reports_lines_fates_and_bytes():
    """explain: a table with source lines, and saved_bytes matching what is kept."""
    def f(x, w):
        h = jnp.sin(x)          # not invertible: x is saved
        return jnp.tanh(h * 2.0) + w
    report = jaxinv.explain(f, X, X)
    text = str(report)
    assert "test_policy.py" in text and "sin" in text and "saved" in text
    assert report.saved_bytes == X.nbytes
    y, f_vjp = jaxinv.vjp(f, X, X)
    assert sum(np.asarray(l).nbytes for l in f_vjp.residuals) == report.saved_bytes


def test_inverse_follows_oryx_conventions():
    """inverse(f, *example_args)(*outputs): one value for one argument, a tuple
    for several; works under jit and vmap; duplicated subexpressions are merged."""
    f = lambda x: jnp.concatenate([jnp.split(x, 2)[0] * 3.0, jnp.exp(jnp.split(x, 2)[1])])
    x = jnp.arange(4.0)
    np.testing.assert_allclose(jaxinv.inverse(f)(f(x)), x, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jaxinv.inverse(f))(f(x)), x, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(jaxinv.inverse(f))(jnp.stack([f(x), f(2 * x)])),
                               jnp.stack([x, 2 * x]), rtol=1e-6)
    g = lambda x, z: (x + 1.0, jnp.exp(x + 1.0) + z)   # conditional: x first, then z
    assert_trees_close(jaxinv.inverse(g, 1.0, 2.0)(*g(1.0, 2.0)), (1.0, 2.0))
    np.testing.assert_allclose(jaxinv.inverse(lambda x: x ** 2)(jnp.float32(9.0)), 3.0)
