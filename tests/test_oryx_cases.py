"""Oryx's inverse test cases, run against ``jaxinv.inverse``.

``jaxinv.inverse`` keeps Oryx's calling convention, ``inverse(f, *example_args)(*ys)``
with the example arguments optional, so switching is a change of import. The
cases below are those of Oryx's ``inverse_test.py`` and ``custom_inverse_test.py``
(``oryx.core.interpreters.inverse``), written against jaxinv's API; custom
inverses use ``jaxinv.custom_ivjp`` (``definverse`` / ``defivjp``) and refuse with
``jaxinv.NotInvertibleError``, a ``ValueError`` as in Oryx. Oryx's ILDJ checks
are not ported: ``jaxinv.ildj`` is checked against the dense Jacobian's
log-determinant in ``test_ildj.py``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxinv
from helpers import assert_trees_close

LOG2 = float(np.log(2.0))


# ---------------------------------------------------------------- the calling convention


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


# ---------------------------------------------------------------- inverse_test.py


def test_identity_is_its_own_inverse():
    np.testing.assert_allclose(jaxinv.inverse(lambda x: x)(1.0), 1.0)


def test_identity_of_two_arguments_returns_both():
    got = jaxinv.inverse(lambda x, y: (x, y))(1.0, 2.0)
    assert isinstance(got, tuple) and len(got) == 2
    np.testing.assert_allclose(got, (1.0, 2.0))


def test_mul_with_the_constant_on_the_right():
    np.testing.assert_allclose(jaxinv.inverse(lambda x: x * 2.0)(1.0), 0.5)


def test_mul_with_the_constant_on_the_left():
    np.testing.assert_allclose(jaxinv.inverse(lambda x: 2.0 * x)(1.0), 0.5)


def test_div_by_a_constant():
    np.testing.assert_allclose(jaxinv.inverse(lambda x: x / 2.0)(1.0), 2.0)


def test_constant_divided_by_x():
    np.testing.assert_allclose(jaxinv.inverse(lambda x: 2.0 / x)(1.0), 2.0)


def test_constant_function_is_not_invertible():
    with pytest.raises(ValueError, match=r"do not depend on the input\(s\) args\[0\]"):
        jaxinv.inverse(lambda x: 1.0)(1.0)


def test_constant_function_with_example_args_is_not_invertible():
    with pytest.raises(ValueError, match=r"do not depend on the input\(s\) args\[0\]"):
        jaxinv.inverse(lambda x: jnp.ones(3), jnp.zeros(2))(jnp.ones(3))


def test_ignored_second_argument_is_not_invertible():
    with pytest.raises(ValueError, match=r"do not depend on the input\(s\) args\[1\]"):
        jaxinv.inverse(lambda x, y: x * 3.0, 1.0, 1.0)(3.0)


def test_sum_returned_twice_is_not_invertible():
    with pytest.raises(ValueError, match="both operands of `add` are unknown"):
        jaxinv.inverse(lambda x, y: (x + y, x + y))(1.0, 2.0)


def test_exp_at_a_scalar_example():
    np.testing.assert_allclose(jaxinv.inverse(jnp.exp, 0.1)(1.0), 0.0)


def test_exp_at_a_vector_example():
    np.testing.assert_allclose(jaxinv.inverse(jnp.exp, jnp.zeros(2))(jnp.ones(2)), jnp.zeros(2))


def test_conditional_inverse():
    f = lambda x, y: (x + 1.0, jnp.exp(x + 1.0) + y)
    np.testing.assert_allclose(jaxinv.inverse(f, 0.0, 2.0)(0.0, 2.0), (-1.0, 1.0))


def test_two_argument_triangular_system():
    f = lambda x, y: (jnp.exp(x), x ** 2 + y)
    x, y = jaxinv.inverse(f, 0.1, 0.2)(2.0, 2.0)
    np.testing.assert_allclose((x, y), (LOG2, 2.0 - LOG2 ** 2), rtol=1e-6)
    np.testing.assert_allclose(f(x, y), (2.0, 2.0), rtol=1e-6)


def test_three_argument_triangular_system():
    f = lambda x, y, z: (jnp.exp(x), x ** 2 + y, jnp.exp(z + y))
    y_true = 2.0 - LOG2 ** 2
    got = jaxinv.inverse(f, 0.0, 0.0, 0.0)(2.0, 2.0, 2.0)
    np.testing.assert_allclose(got, (LOG2, y_true, LOG2 - y_true), rtol=1e-6)


def test_jitted_identity_inside():
    def f(x):
        return jax.jit(lambda x: x)(x) / 2.0

    np.testing.assert_allclose(jaxinv.inverse(f, 2.0)(2.0), 4.0)


def test_jitted_reciprocal_inside():
    np.testing.assert_allclose(jaxinv.inverse(lambda x: jax.jit(lambda x: 3.0 / x)(x), 2.0)(2.0), 1.5)


def test_split():
    x = jnp.arange(4.0)
    got = jaxinv.inverse(lambda x: jnp.split(x, 2), jnp.ones(4))([x[:2], x[2:]])
    np.testing.assert_allclose(got, x)


def test_concatenate():
    x, y = jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0])
    got_x, got_y = jaxinv.inverse(lambda x, y: jnp.concatenate([x, y]), jnp.ones(2), jnp.ones(2))(
        jnp.concatenate([x, y]))
    np.testing.assert_allclose(got_x, x)
    np.testing.assert_allclose(got_y, y)


def test_reshape():
    x = jnp.arange(4.0).reshape(2, 2)
    got = jaxinv.inverse(lambda x: jnp.reshape(x, (4,)), jnp.ones((2, 2)))(x.reshape(4))
    assert got.shape == (2, 2)
    np.testing.assert_allclose(got, x)


def test_softplus():
    x = jnp.array([-30.0, -5.0, -1.0, 0.0, 0.3, 2.0, 15.0, 50.0])
    np.testing.assert_allclose(jaxinv.inverse(jax.nn.softplus)(jax.nn.softplus(x)), x, rtol=1e-5, atol=1e-6)


def test_sigmoid_inverse_is_accurate_near_one():
    np.testing.assert_allclose(jaxinv.inverse(jax.nn.sigmoid)(0.9999), jax.scipy.special.logit(0.9999))


def test_logit_inverse_far_in_the_tail():
    got = jaxinv.inverse(jax.scipy.special.logit)(-100.0)
    assert np.isfinite(got) and got >= 0
    np.testing.assert_allclose(got, jax.scipy.special.expit(-100.0))


@pytest.mark.parametrize("y", [-80.0, -30.0, 0.0, 9.21, 30.0])
def test_logit_inverse_is_expit(y):
    np.testing.assert_allclose(jaxinv.inverse(jax.scipy.special.logit)(y), jax.scipy.special.expit(y), rtol=1e-6)


def test_naive_logit_is_not_invertible():
    with pytest.raises(ValueError, match="both operands of `div` are unknown"):
        jaxinv.inverse(lambda x: jnp.log(x / (1.0 - x)))(-100.0)


def test_integer_pow_2_uses_the_nonnegative_root():
    np.testing.assert_allclose(jaxinv.inverse(lambda x: lax.integer_pow(x, 2))(2.0), np.sqrt(2.0), rtol=1e-6)


def test_integer_pow_3():
    np.testing.assert_allclose(jaxinv.inverse(lambda x: lax.integer_pow(x, 3))(2.0), np.cbrt(2.0), rtol=1e-6)


def test_reciprocal():
    np.testing.assert_allclose(jaxinv.inverse(jnp.reciprocal)(2.0), 0.5)


def test_pow_solved_for_the_base():
    np.testing.assert_allclose(jaxinv.inverse(lambda x: lax.pow(x, 2.0))(2.0), np.sqrt(2.0), rtol=1e-6)


def test_pow_solved_for_the_exponent():
    np.testing.assert_allclose(jaxinv.inverse(lambda y: lax.pow(2.0, y))(3.0), np.log(3.0) / np.log(2.0), rtol=1e-6)


def test_sqrt():
    np.testing.assert_allclose(jaxinv.inverse(jnp.sqrt)(2.0), 4.0, rtol=1e-6)


# ---------------------------------------------------------------- custom_inverse_test.py


def make_add_one():
    @jaxinv.custom_ivjp
    def add_one(x):
        return x + 1.0

    return add_one


def make_add():
    @jaxinv.custom_ivjp
    def add(x, y):
        return x + y

    return add


def test_custom_function_without_a_rule_is_inverted_automatically():
    assert jaxinv.inverse(make_add_one())(1.0) == 0.0


def test_custom_function_uses_the_given_inverse():
    add_one = make_add_one()
    add_one.definverse(jnp.exp)  # deliberately not the true inverse: shows the rule is used
    np.testing.assert_allclose(jaxinv.inverse(add_one)(2.0), np.exp(2.0), rtol=1e-6)


def test_custom_inverse_that_refuses_raises():
    add_one = make_add_one()

    @add_one.definverse
    def refuse(y):
        raise jaxinv.NotInvertibleError("add_one refuses to be inverted")

    with pytest.raises(ValueError, match=r"custom_ivjp_call\[add_one\].*add_one refuses to be inverted"):
        jaxinv.inverse(add_one)(1.0)


def test_binary_custom_function_without_a_rule_is_inverted_automatically():
    add = make_add()
    assert jaxinv.inverse(functools.partial(add, 1.0))(2.0) == 1.0
    assert jaxinv.inverse(lambda x: add(x, 1.0))(2.0) == 1.0


def test_binary_custom_rule_sees_which_operand_is_known():
    add = make_add()

    @add.defivjp
    def odd_inverse(xs, z, ct):  # not add's inverse: its results show which branch ran
        x, y = xs
        if y is None:
            return (x, z ** 2), (ct, ct)
        return (z / 4.0, y), (ct, ct)

    assert jaxinv.inverse(functools.partial(add, 1.0))(2.0) == 4.0
    assert jaxinv.inverse(lambda x: add(x, 1.0))(2.0) == 0.5


def test_binary_custom_rule_that_refuses_one_side():
    add = make_add()

    @add.defivjp
    def needs_x(xs, z, ct):
        x, y = xs
        if x is None:
            raise jaxinv.NotInvertibleError("cannot solve for x")
        return (x, z - x), (ct, ct)

    assert jaxinv.inverse(lambda y: add(1.0, y))(2.0) == 1.0
    with pytest.raises(ValueError, match="cannot solve for x"):
        jaxinv.inverse(lambda x: add(x, 1.0))(2.0)


def test_custom_function_with_tuple_inputs():
    @jaxinv.custom_ivjp
    def dense(params, x):
        w, b = params
        return w * x + b

    dense_apply = functools.partial(dense, (2.0, 1.0))
    assert jaxinv.inverse(dense_apply)(5.0) == 2.0

    @dense.defivjp
    def dense_inverse(xs, out, ct):
        (w, b), _ = xs
        x = (out - b) / w
        return ((w, b), x), ((ct * x, ct), ct * w)

    assert jaxinv.inverse(dense_apply)(5.0) == 2.0

    @dense.defivjp
    def scaled_output(xs, out, ct):  # not dense's inverse: shows the new rule is used
        (w, b), _ = xs
        return ((w, b), w * out), ((ct * out, ct), ct * w)

    assert jaxinv.inverse(dense_apply)(5.0) == 10.0


# ---------------------------------------------------------------- what the fixes above rely on


@pytest.mark.parametrize("side", [0, 1])
def test_logaddexp_solved_for_either_operand(side):
    known = jnp.array([-4.0, 0.5, 3.0])
    x = jnp.array([-6.0, 0.7, 20.0])

    def f(x):
        return jnp.logaddexp(x, known) if side == 0 else jnp.logaddexp(known, x)

    np.testing.assert_allclose(jaxinv.inverse(f)(f(x)), x, rtol=1e-5)


def test_logaddexp2_solved_for_one_operand():
    f = lambda x: jnp.logaddexp2(x, 1.5)
    x = jnp.array([-3.0, 0.0, 1.5, 12.0])
    np.testing.assert_allclose(jaxinv.inverse(f)(f(x)), x, rtol=1e-5, atol=1e-5)


def test_log_sigmoid_under_vmap_and_jit():
    f = jax.jit(jax.vmap(jax.nn.log_sigmoid))
    x = jnp.array([-20.0, -1.0, 0.0, 4.0])
    np.testing.assert_allclose(jaxinv.inverse(f)(f(x)), x, rtol=1e-5)


def test_logaddexp_with_both_operands_unknown_is_not_invertible():
    with pytest.raises(ValueError, match="both operands of `logaddexp` are unknown"):
        jaxinv.inverse(jnp.logaddexp, 1.0, 1.0)(jnp.logaddexp(1.0, 1.0))


def test_own_custom_jvp_is_still_inverted_through_its_body():
    @jax.custom_jvp
    def logaddexp_like(a, b):  # same name and body as jnp.logaddexp, defined elsewhere
        return jnp.maximum(a, b) + jnp.log1p(jnp.exp(-jnp.abs(a - b)))

    logaddexp_like.defjvp(lambda p, t: (logaddexp_like(*p), t[0] + t[1]))
    with pytest.raises(ValueError, match="custom_jvp_call"):
        jaxinv.inverse(lambda x: logaddexp_like(x, 0.0))(1.0)


def test_softplus_layers_are_rebuilt_for_gradients():
    w = jnp.array([[1.5, 0.2], [-0.3, 0.8]])

    def net(x):
        for _ in range(3):
            x = jax.nn.softplus(x @ w)
        return x

    def loss(x):
        return jnp.sum(jnp.sin(net(x)))

    x = jnp.array([[0.3, -1.2], [2.0, 0.1]])
    np.testing.assert_allclose(jaxinv.grad(loss)(x), jax.grad(loss)(x), rtol=1e-4, atol=1e-5)
    out, vjp_fn = jaxinv.vjp(net, x)
    assert len(vjp_fn.residuals) == 0, "softplus layers should be inverted, not saved"
    np.testing.assert_allclose(vjp_fn(jnp.ones_like(out))[0], jax.vjp(net, x)[1](jnp.ones_like(out))[0],
                               rtol=1e-4, atol=1e-5)
