"""``jaxinv.ildj`` / ``jaxinv.inverse_and_ildj``: the inverse log-det Jacobian,
summed over all elements, checked against ``-slogdet(jacfwd(f))``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxinv
from jaxinv.domains import Example, reals
from jaxinv.testing import RuleCheckError, check_rule
from jaxinv._src.compat import enable_x64


def reference_ildj(f, x):
    """-log|det df/dx| from the dense Jacobian (f maps x to an array of x's size)."""
    flat = lambda v: jnp.ravel(f(v.reshape(x.shape)))
    return -jnp.linalg.slogdet(jax.jacfwd(flat)(jnp.ravel(x)))[1]


def coupling(x):
    x1, x2 = jnp.split(x, 2, axis=-1)
    scale = jax.nn.sigmoid(jnp.tanh(x1) + 2.0)          # Glow's stabilised scale
    return jnp.concatenate([x1, x2 * scale + jnp.sin(x1)], axis=-1)


W = jnp.asarray(np.eye(4) * 1.5 + np.random.default_rng(0).uniform(-0.4, 0.4, (4, 4)), jnp.float32)

FLOWS = {
    "exp-affine": lambda x: jnp.exp(x) * 2.0 + 1.0,
    "divide by a negative constant": lambda x: x / -2.0,      # Oryx returns NaN here
    "coupling": coupling,
    "two couplings with a flip": lambda x: coupling(jnp.flip(coupling(x), -1)),
    "reshape and transpose": lambda x: jnp.tanh(x.reshape(4, 2).T.reshape(2, 4)) * 3.0,
    "dense layer": lambda x: jnp.tanh(x) @ W,
    "softplus then log": lambda x: jnp.log(jax.nn.softplus(x)),
    "cumsum and cumprod": lambda x: jnp.cumprod(jnp.exp(jnp.cumsum(x, axis=-1)), axis=-1),
    "scan of couplings": lambda x: lax.scan(lambda c, _: (jnp.flip(coupling(c), -1), None), x, None, length=4)[0],
    "fori_loop": lambda x: lax.fori_loop(0, 3, lambda i, c: jnp.flip(coupling(c), -1) + i, x),
    "while_loop (traced bound)": lambda x: lax.fori_loop(0, jnp.int32(x.size // 4), lambda i, c: coupling(c) * 1.5, x),
    "switch": lambda x: lax.switch(jnp.int32(x.shape[0] - 1), [jnp.tanh, coupling, lambda c: -jnp.exp(c)], x),
}


@pytest.mark.parametrize("name", list(FLOWS))
def test_ildj_matches_the_dense_jacobian(name):
    f = FLOWS[name]
    x = jnp.linspace(-1.2, 0.9, 8, dtype=jnp.float32).reshape(2, 4)
    y = f(x)
    x_rec, log_det = jaxinv.inverse_and_ildj(f, x)(y)
    np.testing.assert_allclose(x_rec, x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(log_det, reference_ildj(f, x), rtol=1e-4, atol=1e-4)
    assert log_det.shape == () and log_det.dtype == jnp.float32
    np.testing.assert_allclose(jaxinv.ildj(f, x)(y), log_det, rtol=1e-6)


def test_ildj_is_minus_the_forward_log_det_through_dtype_conversions():
    with enable_x64(True):
        f = lambda x: jnp.exp(x.astype(jnp.float64)) * 3.0       # f32 -> f64, then scale
        x = jnp.linspace(-1, 1, 5, dtype=jnp.float32)
        x_rec, log_det = jaxinv.inverse_and_ildj(f, x)(f(x))
        assert x_rec.dtype == jnp.float32 and log_det.dtype == jnp.float64
        np.testing.assert_allclose(log_det, -jnp.sum(x.astype(jnp.float64)) - 5 * np.log(3.0), rtol=1e-6)


def test_ildj_under_jit_and_vmap():
    y = coupling(jnp.linspace(-1, 1, 12).reshape(3, 4))
    per_row = jax.jit(jax.vmap(jaxinv.ildj(coupling)))(y)
    whole = jaxinv.ildj(coupling)(y)
    assert per_row.shape == (3,)
    np.testing.assert_allclose(jnp.sum(per_row), whole, rtol=1e-5)


def test_a_broadcast_has_no_log_det():
    f = lambda x: jnp.broadcast_to(x, (3, 2)) * 2.0
    with pytest.raises(jaxinv.NotInvertibleError, match="log-det"):
        jaxinv.ildj(f, jnp.ones(2))(f(jnp.ones(2)))


def test_custom_ivjp_log_det_given_or_derived():
    @jaxinv.custom_ivjp
    def scale_by_three(x):
        return 3.0 * x

    x = jnp.ones(4)
    derived = jaxinv.ildj(scale_by_three)(scale_by_three(x))     # through the body
    np.testing.assert_allclose(derived, -4 * np.log(3.0), rtol=1e-6)
    scale_by_three.definverse(lambda y: y / 3.0, ildj=lambda y: -y.size * jnp.log(3.0))
    np.testing.assert_allclose(jaxinv.ildj(scale_by_three)(scale_by_three(x)), -4 * np.log(3.0), rtol=1e-6)

    @jaxinv.custom_ivjp
    def opaque(x):
        return jnp.where(x > 0, x, 0.5 * x)   # no per-equation inverse, no ildj given

    opaque.definverse(lambda y: jnp.where(y > 0, y, 2.0 * y))
    with pytest.raises(jaxinv.NotInvertibleError, match="ildj="):
        jaxinv.ildj(opaque)(opaque(x))


def test_register_ildj_for_a_new_primitive():
    halve_p = jax.extend.core.Primitive("halve")
    halve_p.def_impl(lambda x: x / 2)
    halve_p.def_abstract_eval(lambda a: a)
    jaxinv.register_inverse(halve_p, lambda invals, outvals: [outvals[0] * 2])
    jaxinv.register_ildj(halve_p, lambda invals, outvals: outvals[0].size * jnp.log(2.0))
    np.testing.assert_allclose(jaxinv.ildj(halve_p.bind)(jnp.ones(3)), 3 * np.log(2.0), rtol=1e-6)


def test_the_harness_catches_a_wrong_log_det():
    wrong = lambda invals, outvals, **_: 0.0   # exp's inverse is not volume-preserving
    with pytest.raises(RuleCheckError, match="slogdet"):
        check_rule(lax.exp_p, Example(jnp.exp, reals(0.5, 1)), logdet=(wrong, False), max_examples=1,
                   dtypes=["float64"])


def test_adding_an_axis_changes_no_volume_and_a_broadcast_has_no_log_det():
    x = jnp.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(jaxinv.ildj(lambda v: v[None] * 2.0, x)(x[None] * 2.0), -3 * np.log(2.0), rtol=1e-6)
    with pytest.raises(jaxinv.NotInvertibleError, match="not a bijection"):
        jaxinv.ildj(lambda v: jnp.broadcast_to(v, (2, 3)), x)(jnp.broadcast_to(x, (2, 3)))
