"""Mistakes get clear errors that say what was wrong and how to fix it.

* A ``jaxinv.custom_ivjp`` rule is checked like ``jax.custom_vjp`` checks its
  ``bwd``: every input and cotangent it returns must have the structure, shape
  and dtype of the function's arguments. Otherwise :class:`jaxinv.RuleError`
  (a ``TypeError``) names the rule and its ``file:line``; jaxinv never works
  around a broken rule by saving the inputs instead.
* ``jaxinv.inverse`` checks the outputs it is given against ``f``'s.
* ``jaxinv.grad`` refuses integer inputs as ``jax.grad`` does, and the
  ``vjp_fn`` of ``jaxinv.vjp`` refuses cotangents of the wrong type as
  ``jax.vjp``'s does.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinv
from helpers import assert_trees_close

X43 = jnp.arange(12.0).reshape(4, 3) / 10.0
W33 = jnp.eye(3) + 0.1 * jnp.arange(9.0).reshape(3, 3) / 9.0


def names_rule(message: str, rule) -> bool:
    """Errors name a rule as "`name` (file:line)", the line of its ``def``
    (or of its first decorator)."""
    code = rule.__code__
    return f"`{rule.__name__}` ({code.co_filename}:{code.co_firstlineno})" in message


def linear_with_ivjp(ivjp):
    """``y = x @ W``, with ``ivjp`` as its rule (the correct one is ``linear_ivjp``)."""
    @jaxinv.custom_ivjp
    def linear(x, W):
        return x @ W

    linear.defivjp(ivjp)
    return linear


def linear_ivjp(xs, ys, cts):
    """The correct rule. jaxinv may ask it to rebuild W too: it says it cannot."""
    _, W = xs
    if W is None:
        raise jaxinv.NotInvertibleError("W is not rebuilt from y")
    x = jnp.linalg.solve(W.T, ys.T).T
    return (x, W), (cts @ W.T, x.T @ cts)


# ---------------------------------------------------------------- custom_ivjp rules are checked


def test_ivjp_cotangent_of_the_wrong_shape():
    """A (4, 1) cotangent for a (4, 3) input used to become a (4, 1) gradient."""
    def my_ivjp(xs, ys, cts):
        (x, W), (ct_x, ct_W) = linear_ivjp(xs, ys, cts)
        return (x, W), (ct_x[:, :1], ct_W)

    f = linear_with_ivjp(my_ivjp)
    with pytest.raises(jaxinv.RuleError) as e:
        jaxinv.grad(lambda x: jnp.sum(f(x, W33) ** 2))(X43)
    assert "ivjp" in str(e.value) and names_rule(str(e.value), my_ivjp)
    assert "returned a cotangent of shape (4, 1) for input 0 (`x`) of shape (4, 3)" in str(e.value)


def test_ivjp_cotangent_of_the_wrong_dtype():
    """Cotangents have their input's dtype exactly (as the tangent type in jax.custom_vjp)."""
    def half_precision_ivjp(xs, ys, cts):
        (x, W), (ct_x, ct_W) = linear_ivjp(xs, ys, cts)
        return (x, W), (ct_x.astype(jnp.float16), ct_W)

    f = linear_with_ivjp(half_precision_ivjp)
    with pytest.raises(jaxinv.RuleError, match="cotangent of dtype float16 for input 0 .* of dtype float32") as e:
        jaxinv.vjp(f, X43, W33)[1](jnp.ones((4, 3)))
    assert names_rule(str(e.value), half_precision_ivjp)


def test_ivjp_returning_too_few_inputs():
    """xs must hold every argument: a missing one is an error as soon as jaxinv plans
    (it used to be dropped silently and the inputs saved instead)."""
    def forgetful_ivjp(xs, ys, cts):
        (x, W), (ct_x, ct_W) = linear_ivjp(xs, ys, cts)
        return (x,), (ct_x, ct_W)

    f = linear_with_ivjp(forgetful_ivjp)
    with pytest.raises(jaxinv.RuleError, match=r"returned xs structured as PyTreeDef\(\(\*,\)\); "
                                               r"they must be structured like the arguments") as e:
        jaxinv.vjp(f, X43, W33)   # the forward pass plans, and already refuses
    assert names_rule(str(e.value), forgetful_ivjp)


def test_ivjp_returning_none_for_an_input_it_must_rebuild():
    """None stands for an input the rule was *given*; for one it was asked to rebuild it is
    an error (a rule that cannot rebuild it raises jaxinv.NotInvertibleError)."""
    def lazy_ivjp(xs, ys, cts):
        _, (ct_x, ct_W) = linear_ivjp(xs, ys, cts)
        return xs, (ct_x, ct_W)      # x is None in xs

    f = linear_with_ivjp(lazy_ivjp)
    with pytest.raises(jaxinv.RuleError, match=r"returned None for input 0 \(`x`\), which jaxinv asked it to "
                                               r"rebuild: .*raise jaxinv.NotInvertibleError"):
        jaxinv.vjp(f, X43, W33)


def test_inverse_returning_the_wrong_shape():
    @jaxinv.custom_ivjp
    def double(x):
        return 2.0 * x

    @double.definverse
    def flat_half(y):
        return jnp.ravel(y) / 2.0

    with pytest.raises(jaxinv.RuleError, match=r"returned an input of shape \(12,\) for input 0 \(`x`\) "
                                               r"of shape \(4, 3\)") as e:
        jaxinv.inverse(double)(X43)
    assert "inverse" in str(e.value) and names_rule(str(e.value), flat_half)


def test_inverse_returning_the_wrong_dtype():
    @jaxinv.custom_ivjp
    def shift(n):
        return n + 3

    shift.definverse(lambda m: (m - 3) / 1)   # true division: a float for an integer input
    with pytest.raises(jaxinv.RuleError, match="input of dtype float32 for input 0 .* of dtype int32"):
        jaxinv.inverse(shift)(jnp.arange(4))


def test_ildj_returning_a_non_scalar():
    @jaxinv.custom_ivjp
    def double(x):
        return 2.0 * x

    double.definverse(lambda y: y / 2.0, ildj=lambda y: -jnp.log(2.0) * jnp.ones_like(y))
    with pytest.raises(jaxinv.RuleError, match=r"returned shape \(4, 3\); it must return a scalar"):
        jaxinv.ildj(double)(X43)


def test_rule_errors_are_type_errors():
    """As jax.custom_vjp's bwd checks raise TypeError/ValueError, RuleError is a TypeError."""
    assert issubclass(jaxinv.RuleError, TypeError)


# ---------------------------------------------------------------- ... and correct rules pass


def test_correct_ivjp_matches_jax():
    f = linear_with_ivjp(linear_ivjp)
    ct = jnp.cos(X43)
    assert_trees_close(jaxinv.vjp(f, X43, W33)[1](ct), jax.vjp(f, X43, W33)[1](ct), rtol=1e-4, atol=1e-4)


def test_cotangents_may_be_none_float0_or_python_scalars():
    """Like jax.custom_vjp's bwd, an ivjp may return None for a zero cotangent (here for a
    whole dict argument), float0 for an integer argument, and a Python scalar for a
    scalar one."""
    @jaxinv.custom_ivjp
    def scale(params, n, s, x):
        return x * jnp.exp(params["log_a"]) + n + s

    @scale.defivjp
    def scale_ivjp(xs, ys, cts):
        params, n, s, _ = xs
        a = jnp.exp(params["log_a"])
        x = (ys - n - s) / a
        return (params, n, s, x), (None, np.zeros((), jax.dtypes.float0), 0.0, cts * a)

    params, n, s = {"log_a": jnp.float32(0.5)}, jnp.int32(2), jnp.float32(1.0)
    loss = lambda x: jnp.sum(jnp.sin(scale(params, n, s, x)))
    assert_trees_close(jaxinv.grad(loss)(X43), jax.grad(loss)(X43))


# ---------------------------------------------------------------- jaxinv.inverse checks its outputs


def test_inverse_of_a_shape_changing_function_needs_example_arguments():
    """Without example arguments f is traced at the outputs' shapes: a transpose
    then returns other shapes, and the error says to pass example arguments."""
    f = lambda x: 2.0 * x.T
    y = f(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"f changes shapes: output 0 is float32\[3,2\], but f returns "
                                         r"float32\[2,3\]\. .*jaxinv\.inverse\(f, x\)"):
        jaxinv.inverse(f)(y)
    np.testing.assert_allclose(jaxinv.inverse(f, jnp.ones((2, 3)))(y), jnp.ones((2, 3)))


def test_inverse_when_f_cannot_even_be_called_at_the_outputs_shapes():
    """A split returns two pieces; f takes one argument, not two. The error from calling f
    is kept as the cause."""
    f = lambda x: tuple(jnp.split(2.0 * x, 2))
    x = jnp.arange(4.0)
    with pytest.raises(TypeError, match=r"calls f at the outputs' shapes \(float32\[2\], float32\[2\]\), "
                                        r"and that failed with TypeError.*jaxinv\.inverse\(f, x\)") as e:
        jaxinv.inverse(f)(*f(x))
    assert "takes 1 positional argument but 2 were given" in str(e.value.__cause__)
    np.testing.assert_allclose(jaxinv.inverse(f, x)(*f(x)), x)


INVERSES = {"inverse": jaxinv.inverse, "inverse_and_ildj": jaxinv.inverse_and_ildj, "ildj": jaxinv.ildj}


@pytest.mark.parametrize("inverse", INVERSES)
def test_outputs_must_match_f_at_the_example_arguments(inverse):
    """f maps (2, 3) to (2, 3): a (5,) output is refused (it used to give a (5,) "input")."""
    f_inv = INVERSES[inverse](lambda x: jnp.exp(x) * 2.0, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"do not match f's outputs at the example arguments: "
                                         r"output 0 is float32\[5\], but f returns float32\[2,3\]"):
        f_inv(jnp.ones(5))


def test_outputs_must_have_f_s_dtypes():
    """Outputs keep f's dtypes; a Python scalar converts to them."""
    f = lambda x, n: (2.0 * x, n + 1)
    f_inv = jaxinv.inverse(f, 0.0, 0)
    with pytest.raises(ValueError, match=r"output 1 is float32\[\], but f returns int32\[\]"):
        f_inv(jnp.float32(2.0), jnp.float32(3.0))
    x, n = f_inv(2.0, 3)
    assert (float(x), int(n)) == (1.0, 2) and n.dtype == jnp.int32


# ---------------------------------------------------------------- grad, vjp: as jax.grad, jax.vjp


@pytest.mark.parametrize("value", [jnp.arange(3), jnp.array([True, False, True])], ids=["int32", "bool"])
def test_grad_refuses_integer_inputs_like_jax(value):
    f = lambda w, x: jnp.sum(w * x)
    w = jnp.ones(3)
    with pytest.raises(TypeError, match=f"grad requires real- or complex-valued inputs .* but got "
                                        f"{value.dtype.name} for argument 1. .*set allow_int to True"):
        jaxinv.grad(f, argnums=(0, 1))(w, value)
    with pytest.raises(TypeError, match="grad requires real- or complex-valued inputs"):
        jax.grad(f, argnums=(0, 1))(w, value)
    with pytest.raises(TypeError, match=f"but got {value.dtype.name} for argument 1"):
        jaxinv.value_and_grad(f, argnums=1)(w, value)


def test_grad_with_allow_int_gives_float0_zeros_like_jax():
    f = lambda w, n: jnp.sum(w * n)
    args = (jnp.ones(3), jnp.arange(3))
    got = jaxinv.grad(f, argnums=(0, 1), allow_int=True)(*args)
    want = jax.grad(f, argnums=(0, 1), allow_int=True)(*args)
    assert got[1].dtype == want[1].dtype == jax.dtypes.float0
    np.testing.assert_allclose(got[0], want[0])


def test_vjp_of_an_integer_primal_is_float0_like_jax():
    (ct_n,) = jaxinv.vjp(lambda n: 2.0 * n, jnp.arange(3))[1](jnp.ones(3))
    assert ct_n.dtype == jax.dtypes.float0 and ct_n.shape == (3,)


def test_vjp_fn_refuses_a_cotangent_of_the_wrong_dtype_or_shape():
    """As jax.vjp's vjp_fn: the cotangent has the output's shape and dtype."""
    _, vjp_fn = jaxinv.vjp(lambda x: (2.0 * x, x + 1.0), jnp.ones(3))
    with pytest.raises(ValueError, match="the cotangent for output 1 has dtype int32, but the output has "
                                         r"dtype float32: .*jnp\.ones_like\(output\)"):
        vjp_fn((jnp.ones(3), jnp.ones(3, jnp.int32)))
    with pytest.raises(ValueError, match=r"the cotangent for output 0 has shape \(1,\), but the output has "
                                         r"shape \(3,\)"):
        vjp_fn((jnp.ones(1), jnp.ones(3)))


def test_vjp_fn_takes_any_cotangent_for_an_integer_output_like_jax():
    """An integer output has no cotangent: float0 (or anything of its shape) is accepted."""
    f = lambda x: (2.0 * x, jnp.arange(3))
    ct = (jnp.ones(3), np.zeros(3, jax.dtypes.float0))
    np.testing.assert_allclose(jaxinv.vjp(f, jnp.ones(3))[1](ct)[0], jax.vjp(f, jnp.ones(3))[1](ct)[0])
