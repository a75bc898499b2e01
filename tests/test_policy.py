"""No silent wrong gradients: what jaxinv refuses to invert, and how it says so.

End to end, through ``explain``, ``jaxinv.grad`` / ``jaxinv.vjp`` and
``jaxinv.inverse``:

* a non-injective map is never inverted on the gradient path (its principal
  branch serves ``jaxinv.inverse`` only);
* a value is divided by only where it is proven nonzero (a matrix, nonsingular);
* a refusal names the primitive, the reason and the user's source line.

Saturating maps (inverses that lose precision): ``test_conditioning.py``. Each
rule on its own, one equation at a time (what it refuses, the nonzero facts it
states): ``test_rules.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxinv
from helpers import assert_trees_close, input_fates

X = jnp.array([0.5, -1.0, 2.0, 0.25], dtype=jnp.float32)


# ---------------------------------------------------------------- non-injective maps


@pytest.mark.parametrize("name,f", [
    ("sin", jnp.sin), ("cos", jnp.cos), ("square", jnp.square), ("even power", lambda x: x ** 4),
    ("abs", jnp.abs), ("cosh", jnp.cosh),
])
def test_non_injective_ops_are_saved_not_inverted(name, f):
    """A non-injective op is never inverted on the gradient path: its input is saved,
    and the gradient is JAX's (a principal-branch inverse would flip signs)."""
    g = lambda x: f(x) * 2.0 + 1.0
    assert input_fates(g, X) == ["saved"]
    (ct,) = jaxinv.vjp(g, X)[1](jnp.ones_like(X))
    (ct_ref,) = jax.vjp(g, X)[1](jnp.ones_like(X))
    np.testing.assert_allclose(ct, ct_ref, rtol=1e-5)


def test_principal_branch_serves_inverse_only():
    """jaxinv.inverse may use the documented principal branch (sin -> asin)."""
    np.testing.assert_allclose(jaxinv.inverse(jnp.sin)(jnp.float32(0.5)), np.arcsin(0.5), rtol=1e-6)
    assert jax.lax.sin_p not in jaxinv.registry.inverse_rules


# ---------------------------------------------------------------- zero divisors


def test_multiplying_by_a_value_that_may_be_zero_is_not_inverted():
    """x * s with s containing zeros: dividing by s would give NaN where jax.grad
    is finite, so x is saved instead."""
    s = jnp.array([0.0, 1.0, 2.0, 0.0])
    f = lambda x, s: jnp.sum(jnp.tanh(x * s) * 3.0)
    g = jaxinv.grad(f, (0, 1))(X, s)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in g)
    assert_trees_close(g, jax.grad(f, (0, 1))(X, s))
    assert input_fates(lambda x, s: jnp.tanh(x * s), X, s)[0] == "saved"


@pytest.mark.parametrize("scale", [
    lambda s: jnp.exp(s), lambda s: jax.nn.sigmoid(s), lambda s: jaxinv.nonzero(s),
    lambda s: 2.5,
])
def test_provably_nonzero_factors_are_inverted(scale):
    """Outputs of exp/logistic, literals without zeros, and values marked with
    jaxinv.nonzero are divided by: x is reconstructed, not saved."""
    s = jnp.array([0.3, 1.0, -2.0, 0.5])
    f = lambda x, s: jnp.sinh(x * scale(s))
    assert input_fates(f, X, s)[0] == "reconstructed"
    assert_trees_close(jaxinv.grad(lambda x, s: jnp.sum(f(x, s) ** 2), (0, 1))(X, s),
                       jax.grad(lambda x, s: jnp.sum(f(x, s) ** 2), (0, 1))(X, s), rtol=1e-4)


def test_zero_constant_closed_over_is_not_a_divisor():
    """A closed-over constant with a zero in it is not divided by."""
    c = np.array([1.0, 0.0, 2.0, 3.0], dtype=np.float32)
    f = lambda x: jnp.sinh(x * c)
    assert input_fates(f, X) == ["saved"]
    nonzero_c = np.array([1.0, 4.0, 2.0, 3.0], dtype=np.float32)
    assert input_fates(lambda x: jnp.sinh(x * nonzero_c), X) == ["reconstructed"]


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


def test_a_singular_1x1_conv_kernel_is_never_divided_by():
    """OIHW kernel (3, 3, 1, 1): every trailing 1x1 block is nonzero, but the
    3x3 matrix over (O, I) is singular; the planner must save, not solve."""
    x = jnp.linspace(-1, 1, 96).reshape(2, 3, 4, 4)
    conv = lambda w: (lambda x: lax.conv_general_dilated(jnp.sinh(x), w, (1, 1), "SAME"))
    singular, regular = jnp.ones((3, 3, 1, 1)), jnp.asarray(2 * np.eye(3)[:, :, None, None] + 0.1)
    for w, saved in [(singular, x.nbytes), (regular, 0)]:
        f = conv(w)
        assert jaxinv.explain(f, x).saved_bytes == saved
        loss = lambda x: jnp.sum(f(x) ** 2)
        np.testing.assert_allclose(jaxinv.grad(loss)(x), jax.grad(loss)(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- refusals say why


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
