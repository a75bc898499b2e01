"""Memory flat in depth for a plainly written RevNet (the network of jaxinv.demo).

(a) the residuals the vjps keep, minus the parameters, do not grow with depth
    (``jax.vjp``'s do);
(b) XLA's temporary memory for ``jit(grad)`` over ``jaxinv.invertible(net)``
    barely grows with depth, and is below plain ``jax.grad``'s;
(c) the gradients are ``jax.grad``'s.
"""

import functools

import jax
import pytest

import jaxinv
from helpers import assert_trees_close
from jaxinv.demo import LOSSES, compile_grad, invertible_net, make_inputs, nbytes, net, temp_bytes

WIDTH, BATCH = 64, 256  # activations (64 KiB each) dominate the parameters (16 KiB per matrix)

VJPS = {
    "jaxinv.vjp": lambda *args: jaxinv.vjp(net, *args),
    "jax.vjp(invertible)": lambda *args: jax.vjp(invertible_net, *args),
}


@functools.lru_cache(maxsize=None)
def inputs(depth):
    return make_inputs(depth, WIDTH, BATCH)


def activation_residual_bytes(vjp, depth):
    params, x1, x2 = inputs(depth)
    _, vjp_fn = vjp(params, x1, x2)
    return nbytes(vjp_fn) - nbytes(params)


@pytest.mark.parametrize("kind", VJPS)
def test_residuals_flat_in_depth(kind):
    depths = (2, 4, 8)
    sizes = [activation_residual_bytes(VJPS[kind], d) for d in depths]
    assert len(set(sizes)) == 1, f"{kind}: activation residual bytes {dict(zip(depths, sizes))}"
    output_bytes = 2 * BATCH * WIDTH * 4  # a fully invertible network keeps only its outputs
    assert sizes[0] == output_bytes, f"{kind}: {sizes[0]} residual bytes besides the parameters"


def test_jax_vjp_residuals_grow_with_depth():
    sizes = [activation_residual_bytes(lambda *a: jax.vjp(net, *a), d) for d in (2, 4, 8)]
    assert sizes[0] < sizes[1] < sizes[2], sizes


@functools.lru_cache(maxsize=None)
def compiled_grad(kind, depth):
    return compile_grad(LOSSES[kind], *inputs(depth))


def test_temp_memory_flat_in_depth():
    temp = {(k, d): temp_bytes(compiled_grad(k, d)) for k in ("jax.grad", "invertible") for d in (4, 16)}
    plain_growth = temp["jax.grad", 16] - temp["jax.grad", 4]
    inv_growth = temp["invertible", 16] - temp["invertible", 4]
    assert plain_growth > 0, temp
    assert inv_growth < 0.1 * plain_growth, temp
    assert temp["invertible", 16] < temp["jax.grad", 16], temp


GRADS = {
    "jaxinv.grad": lambda *args: jaxinv.grad(LOSSES["jax.grad"])(*args),
    "jax.grad(invertible)": lambda *args: jax.grad(LOSSES["invertible"])(*args),
    "jit(jax.grad(invertible))": lambda *args: compiled_grad("invertible", len(args[0]))(*args),
}


@pytest.mark.parametrize("depth", [2, 4, 8, 16])
@pytest.mark.parametrize("kind", GRADS)
def test_gradients_match_jax(kind, depth):
    args = inputs(depth)
    want = compiled_grad("jax.grad", depth)(*args)
    got = GRADS[kind](*args)
    assert_trees_close(got, want, rtol=1e-4, atol=1e-5)
