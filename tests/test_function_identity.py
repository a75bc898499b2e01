"""Recognised JAX functions are told apart by their body, not by where they live.

``jnp.logaddexp`` (hence ``jax.nn.softplus`` and ``jax.nn.log_sigmoid``),
``jnp.logaddexp2`` and ``jax.scipy.special.logit`` are ``custom_jvp`` functions
whose bodies no per-primitive rule inverts; jaxinv recognises their calls and
applies their known inverses (:mod:`jaxinv.rules.functions`). Where a function
and its JVP rule were defined (its *signature*) is only a first filter: on JAX
0.5.3 ``logaddexp`` and ``logaddexp2`` shared one, and softplus came back
inverted with the wrong formula. A call is recognised only if its body is the
one the real function binds at the call's input types.

The tests build *look-alikes*: ``custom_jvp`` functions compiled under the real
function's file name and line numbers, with its name and JVP rule site, so
their signature is the real one, but with another body. None is recognised,
and ``jaxinv.inverse`` of each inverts its own body or refuses: never the
recognised function's inverse.
"""

import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinv
from jaxinv.rules.functions import known_inverse, signature, structurally_equal
from jaxinv._src.compat import enable_x64, jaxprs_in_params

LN2 = float(np.log(2.0))


# ---------------------------------------------------------------- helpers


def custom_jvp_calls(f, *args):
    """The ``custom_jvp_call`` equations of ``f``'s jaxpr, inside ``jit``s too."""

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "custom_jvp_call":
                yield eqn
            for sub in jaxprs_in_params(eqn.params):
                yield from walk(sub)

    return list(walk(jax.make_jaxpr(f)(*args).jaxpr))


def signature_of(f, *args):
    """The signature of the one ``custom_jvp`` function ``f`` calls."""
    (eqn,) = custom_jvp_calls(f, *args)
    return signature(eqn.params["call_jaxpr"], eqn.params["jvp_jaxpr_fun"])


def recognised(f, *args) -> bool:
    """Whether every ``custom_jvp`` call in ``f`` is a recognised function."""
    calls = custom_jvp_calls(f, *args)
    assert calls
    return all(known_inverse(e.params["call_jaxpr"], e.params["jvp_jaxpr_fun"]) is not None for e in calls)


def _site(src_info):
    """``"logaddexp at /x/other.py:261"`` -> ``("logaddexp", "/x/other.py", 261)``."""
    name, file, line = re.fullmatch(r"(\S+) at (.+):(\d+)", src_info).groups()
    return name, file, int(line)


def _compile_at(src_info, template, namespace):
    """The function ``template`` defines, compiled so that it appears to be
    defined where ``src_info`` says: its name, file and first line."""
    name, file, line = _site(src_info)
    source = "\n" * (line - 1) + template.format(name=name)
    exec(compile(source, file, "exec"), namespace)
    return namespace[name]


def look_alike(real, example_args, body):
    """A ``custom_jvp`` function computing ``body``, whose signature is ``real``'s:
    same name, and it and its JVP rule compiled at the real ones' file and line."""
    fun_src, jvp_src = signature_of(real, *example_args)
    namespace = {"jax": jax, "body": body}
    fn = _compile_at(fun_src, "@jax.custom_jvp\ndef {name}(*args):\n    return body(*args)\n", namespace)
    rule = _compile_at(jvp_src, "def {name}(primals, tangents):\n    return jax.jvp(body, primals, tangents)\n",
                       namespace)
    fn.defjvp(rule)
    return fn


def real_body(real, example_args):
    """The undecorated body of the ``custom_jvp`` function ``real`` calls."""
    name, file, _ = _site(signature_of(real, *example_args)[0])
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == file and hasattr(getattr(module, name, None), "fun"):
            return getattr(module, name).fun
    pytest.skip(f"{name} is not a module attribute in this JAX")


def assert_never_wrong(f, x, rtol=1e-5, atol=1e-5):
    """``jaxinv.inverse(f)`` either gives ``x`` back (``f`` is injective here) or
    refuses with jaxinv's error."""
    y = f(x)
    try:
        got = jaxinv.inverse(f)(y)
    except jaxinv.NotInvertibleError:
        return
    np.testing.assert_allclose(f(got), y, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got, x, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- look-alikes

X = jnp.linspace(-2.0, 3.0, 7)
P = jnp.linspace(0.05, 0.95, 7)
C = jnp.float32(0.5)
ZERO = jnp.float32(0.0)


def logaddexp2_math(a, b):
    """logaddexp2 written out: a body to put under logaddexp's name."""
    m = jnp.maximum(a, b)
    return m + jnp.log1p(jnp.exp2(-jnp.abs(a - b))) / LN2


def logaddexp_math(a, b):
    """logaddexp written out: a body to put under logaddexp2's name."""
    m = jnp.maximum(a, b)
    return m + jnp.log1p(jnp.exp(-jnp.abs(a - b)))


# bodies for the look-alikes: one the per-primitive rules refuse (for logaddexp
# and logaddexp2, the other's math), one they invert
LOGADDEXP_LOOK_ALIKES = {
    "logaddexp2's math (the JAX 0.5.3 collision)": logaddexp2_math,
    "a + softplus(b), invertible": lambda a, b: a + jnp.log1p(jnp.exp(b)),
}
LOGADDEXP2_LOOK_ALIKES = {
    "logaddexp's math": logaddexp_math,
    "a + exp2(b), invertible": lambda a, b: a + jnp.exp2(b),
}
LOGIT_LOOK_ALIKES = {
    "log(x / (2 - x))": lambda x: jnp.log(x / (2.0 - x)),
    "3 log(x), invertible": lambda x: 3.0 * jnp.log(x),
}
# how a logaddexp look-alike is used: as logaddexp, or in softplus / log_sigmoid's place
LOGADDEXP_USES = {
    "x, c": lambda la: lambda x: la(x, C),
    "c, x": lambda la: lambda x: la(C, x),
    "softplus": lambda la: lambda x: la(x, ZERO),
    "log_sigmoid": lambda la: lambda x: -la(-x, ZERO),
}


@pytest.mark.parametrize("use", LOGADDEXP_USES)
@pytest.mark.parametrize("body", LOGADDEXP_LOOK_ALIKES)
def test_a_logaddexp_look_alike_is_not_taken_for_logaddexp(body, use):
    fake = look_alike(jnp.logaddexp, (C, C), LOGADDEXP_LOOK_ALIKES[body])
    f = LOGADDEXP_USES[use](fake)
    assert signature_of(f, X) == signature_of(jax.nn.softplus, X)  # a signature alone cannot tell them apart
    assert not recognised(f, X)
    assert_never_wrong(f, X)


@pytest.mark.parametrize("side", ["x, c", "c, x"])
@pytest.mark.parametrize("body", LOGADDEXP2_LOOK_ALIKES)
def test_a_logaddexp2_look_alike_is_not_taken_for_logaddexp2(body, side):
    fake = look_alike(jnp.logaddexp2, (C, C), LOGADDEXP2_LOOK_ALIKES[body])
    f = LOGADDEXP_USES[side](fake)
    assert signature_of(f, X) == signature_of(lambda x: jnp.logaddexp2(x, C), X)
    assert not recognised(f, X)
    assert_never_wrong(f, X)


@pytest.mark.parametrize("body", LOGIT_LOOK_ALIKES)
def test_a_logit_look_alike_is_not_taken_for_logit(body):
    f = look_alike(jax.scipy.special.logit, (P,), LOGIT_LOOK_ALIKES[body])
    assert signature_of(f, P) == signature_of(jax.scipy.special.logit, P)
    assert not recognised(f, P)
    assert_never_wrong(f, P)


@pytest.mark.parametrize("real, args", [
    (jnp.logaddexp, (X, jnp.full_like(X, C))),
    (jnp.logaddexp2, (X, jnp.full_like(X, C))),
    (jax.scipy.special.logit, (P,)),
], ids=["logaddexp", "logaddexp2", "logit"])
def test_a_copy_with_the_real_body_is_recognised(real, args):
    # The control for the tests above: a function compiled the same way, with
    # the real function's own body, is recognised. It computes the same thing.
    copy = look_alike(real, args, real_body(real, args))
    assert recognised(copy, *args)
    f = (lambda x: copy(x, args[1])) if len(args) == 2 else copy
    np.testing.assert_allclose(jaxinv.inverse(f)(f(args[0])), args[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the real functions

REAL = {  # function of x, domain of x, known operand of x's shape or a scalar
    "softplus": (lambda c: jax.nn.softplus, X),
    "log_sigmoid": (lambda c: jax.nn.log_sigmoid, X),
    "logaddexp(x, c)": (lambda c: lambda x: jnp.logaddexp(x, c), X),
    "logaddexp(c, x)": (lambda c: lambda x: jnp.logaddexp(c, x), X),
    "logaddexp2(x, c)": (lambda c: lambda x: jnp.logaddexp2(x, c), X),
    "logit": (lambda c: jax.scipy.special.logit, P),
}
# (wrap f, shape of x): the known operand c has x's shape per example (a
# per-feature constant under vmap, which vmap broadcasts inside the body)
HOW = {
    "scalar": (lambda f: f, ()),
    "matrix": (lambda f: f, (2, 3)),
    "jit": (jax.jit, (5,)),
    "vmap": (jax.vmap, (4, 3)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", REAL)
def test_the_real_functions_are_recognised_at_any_type(name, how, dtype):
    make_f, domain = REAL[name]
    wrap, shape = HOW[how]
    with enable_x64(dtype == "float64"):
        x = jnp.resize(domain.astype(dtype), shape)
        per_example = x[0] if how == "vmap" else x
        c = (jnp.linspace(-0.5, 0.5, per_example.size, dtype=dtype).reshape(per_example.shape)
             if per_example.size > 1 else jnp.asarray(0.5, dtype))
        f = wrap(make_f(c))
        assert recognised(f, x)
        tol = 1e-5 if dtype == "float32" else 1e-10
        got = jaxinv.inverse(f)(f(x))
        assert got.dtype == x.dtype
        np.testing.assert_allclose(got, x, rtol=tol, atol=tol)


def test_a_deep_network_traces_each_function_once():
    from jaxinv.rules import functions

    def net(x):
        for _ in range(6):
            x = jax.nn.softplus(x) + 1.0
        return x

    x = jnp.linspace(-1.0, 1.0, 11)
    functions._reference_bodies.clear()
    np.testing.assert_allclose(jaxinv.inverse(net)(net(x)), x, rtol=1e-4, atol=1e-5)
    assert len(functions._reference_bodies) == 1  # logaddexp at (f32[11], f32[]), for all six layers


# ---------------------------------------------------------------- structural equality


def test_structural_equality_ignores_names_only():
    jaxpr = lambda f, *args: jax.make_jaxpr(f)(*args)
    same = structurally_equal
    assert same(jaxpr(lambda x, y: x * 2.0 - y, 1.0, 2.0), jaxpr(lambda a, b: a * 2.0 - b, 3.0, 4.0))
    assert not same(jaxpr(lambda x, y: x * 2.0 - y, 1.0, 2.0), jaxpr(lambda x, y: y * 2.0 - x, 1.0, 2.0))
    assert not same(jaxpr(lambda x: x * 2.0, 1.0), jaxpr(lambda x: x * 3.0, 1.0))      # literal values
    assert not same(jaxpr(lambda x: x * 2.0, 1.0), jaxpr(lambda x: x * 2.0, jnp.ones(2)))  # types
    assert not same(jaxpr(lambda x: jax.jit(jnp.sin)(x), 1.0), jaxpr(lambda x: jax.jit(jnp.cos)(x), 1.0))
    assert same(jaxpr(lambda x: jax.jit(jnp.sin)(x), 1.0), jaxpr(lambda x: jax.jit(jnp.sin)(x), 2.0))
