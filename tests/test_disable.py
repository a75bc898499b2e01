"""``jaxinv.disabled``: the same model with plain AD, its code unchanged: every
entry point falls back to JAX's own, and memory grows with depth again."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import jaxinv

from helpers import assert_trees_close, nbytes, revnet, revnet_input, revnet_params

X = revnet_input(jax.random.key(0), 8, 16)


def loss(params, x):
    y1, y2 = jaxinv.invertible(revnet)(params, x)   # the model's code: reversible
    return jnp.sum(y1 * y2)


def kept_beyond_params(params):
    _, vjp_fn = jax.vjp(loss, params, X)
    return nbytes(vjp_fn) - nbytes(params)


def test_the_same_model_keeps_every_activation_inside_disabled():
    reversible = {d: kept_beyond_params(revnet_params(jax.random.key(1), d, 16)) for d in (2, 8)}
    with jaxinv.disabled():
        plain = {d: kept_beyond_params(revnet_params(jax.random.key(1), d, 16)) for d in (2, 8)}
    assert reversible[2] == reversible[8]
    assert plain[8] - plain[2] >= 6 * 2 * X[0].nbytes    # at least one activation pair per block
    assert kept_beyond_params(revnet_params(jax.random.key(1), 8, 16)) == reversible[8]   # on again after


def test_gradients_are_jaxs_and_no_jaxinv_primitive_is_traced():
    params = revnet_params(jax.random.key(1), 3, 16)
    want = jax.grad(lambda p, x: jnp.sum(revnet(p, x)[0] * revnet(p, x)[1]))(params, X)
    with jaxinv.disabled():
        assert "invertible_call" not in str(jax.make_jaxpr(jax.grad(loss))(params, X))
        assert_trees_close(jax.jit(jax.grad(loss))(params, X), want)
        assert_trees_close(jaxinv.grad(loss)(params, X), want)
        out, vjp_fn = jaxinv.vjp(loss, params, X)
        assert not isinstance(vjp_fn, jaxinv.api.VJPFunction)      # JAX's own vjp
        (value, aux), g = jaxinv.value_and_grad(lambda p: (loss(p, X), 7), has_aux=True)(params)
        assert aux == 7 and value == out
    assert "invertible_call" in str(jax.make_jaxpr(jax.grad(loss))(params, X))


def test_the_framework_wrappers_and_residual_networks_follow():
    nnx = pytest.importorskip("flax.nnx")
    from jaxinv.nn.flax import Invertible
    layer = jaxinv.nn.rev_sequential(jaxinv.nn.AdditiveCoupling(hidden=(16,)), depth=4)
    body = Invertible(layer, jnp.ones((8, 16)), rngs=nnx.Rngs(0))
    f = lambda m, x: jnp.sum(m(x) ** 2)
    with jaxinv.disabled():
        assert "invertible_call" not in str(jax.make_jaxpr(lambda x: f(body, x))(jnp.ones((8, 16))))
        net = jaxinv.nn.momentum_net([jnp.tanh] * 3, 0.9)
        assert "invertible_call" not in str(jax.make_jaxpr(net)(jnp.ones((8, 16))))
    assert "invertible_call" in str(jax.make_jaxpr(lambda x: f(body, x))(jnp.ones((8, 16))))


def test_the_environment_variable_disables_a_whole_process_and_the_context_manager_wins():
    code = ("import jaxinv\n"
            "print(jaxinv.is_enabled())\n"
            "with jaxinv.disabled(False):\n"
            "    print(jaxinv.is_enabled())\n")
    env = {**os.environ, "JAXINV_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["False", "True"]


def test_disabled_blocks_nest_and_restore():
    assert jaxinv.is_enabled()
    with jaxinv.disabled():
        with jaxinv.disabled(False):
            assert jaxinv.is_enabled()
        assert not jaxinv.is_enabled()
    assert jaxinv.is_enabled()
