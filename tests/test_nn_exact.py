"""Exact reversibility (``AdditiveCoupling(exact_bits=...)``, ``momentum_net(..., exact_bits=...)``,
``jaxinv.nn.to_grid``): a stream on a fixed-point grid is rebuilt bit for bit at
any depth, with residual functions computing in bfloat16, and the gradient is
plain AD's of the same network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax.ad_checkpoint import checkpoint_name

import jaxinv
from jaxinv.nn import MLP, AdditiveCoupling, momentum_net, rev_sequential, to_grid

from helpers import assert_trees_close

BITS = 12
X = jax.random.normal(jax.random.key(0), (8, 8))
_mlp = MLP(hidden=(16,), out=4, activation=jnp.tanh, last_scale=0.02)
# a residual function computing in bfloat16, as in mixed-precision training
BF16_MLP = (_mlp.init, lambda p, h: _mlp.apply(jax.tree.map(lambda a: a.astype(jnp.bfloat16), p),
                                                h.astype(jnp.bfloat16)))


def stack(depth, bits):
    layers = rev_sequential(AdditiveCoupling(f=BF16_MLP, g=BF16_MLP, exact_bits=bits), depth)
    return layers, layers.init(jax.random.key(1), X)


def rebuild_error(depth, bits):
    layers, params = stack(depth, bits)
    x = X if bits is None else to_grid(X, bits)
    f = lambda x: layers.apply(params, x)
    y = jax.jit(f)(x)
    return float(jnp.max(jnp.abs(jaxinv.inverse(f, x)(y) - x)))


def test_to_grid_rounds_to_multiples_and_passes_gradients_straight_through():
    x = jnp.array([0.3, -1.26, 5.0], jnp.float32)
    np.testing.assert_array_equal(to_grid(x, 2), [0.25, -1.25, 5.0])
    assert to_grid(x, 2).dtype == jnp.float32 and to_grid(x.astype(jnp.bfloat16), 2).dtype == jnp.bfloat16
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(to_grid(x, 2) * 3.0))(x), [3.0, 3.0, 3.0])


@pytest.mark.parametrize("depth", [1_000, 10_000])
def test_exact_mode_rebuilds_bit_for_bit_at_any_depth(depth):
    assert rebuild_error(depth, BITS) == 0.0
    assert rebuild_error(depth, None) > 0.0      # floating-point couplings drift


def test_exact_mode_gradient_is_plain_ads():
    layers, params = stack(64, BITS)
    x = to_grid(X, BITS)
    loss = lambda p, x: jnp.sum(jnp.sin(layers.apply(p, x)))
    assert_trees_close(jaxinv.grad(loss, argnums=(0, 1))(params, x), jax.grad(loss, argnums=(0, 1))(params, x),
                       rtol=1e-5, atol=1e-6)


def test_a_stream_too_narrow_for_the_grid_is_refused():
    layer = AdditiveCoupling(hidden=(8,), exact_bits=BITS)
    params = layer.init(jax.random.key(0), X)
    with pytest.raises(TypeError, match="at least 20 mantissa bits, got bfloat16"):
        layer.apply(params, X.astype(jnp.bfloat16))
    with pytest.raises(ValueError, match="exact_bits must be a non-negative int"):
        AdditiveCoupling(hidden=(8,), exact_bits=-1).apply(params, X)


# ---------------------------------------------------------------- exact MomentumNets (gamma a power of two)

def momentum_residuals(depth):
    """Residual functions in bfloat16; each names its input, the stream ``x`` at
    that step, so that ``check_reconstruction`` reports how well it is rebuilt."""
    ws = 0.5 * jax.random.normal(jax.random.key(2), (depth, 8, 8)) / np.sqrt(8)
    return [lambda x, w=w: jnp.tanh(checkpoint_name(x, "stream").astype(jnp.bfloat16) @ w.astype(jnp.bfloat16))
            for w in ws]


def stream_errors(depth, bits):
    report = jaxinv.check_reconstruction(momentum_net(momentum_residuals(depth), 0.5, exact_bits=bits), X)
    return [row.rel_error for row in report.rows if row.name.startswith("stream")]


def test_exact_momentum_net_rebuilds_every_step_bit_for_bit():
    exact = stream_errors(96, BITS)
    assert len(exact) == 96 and max(exact) == 0.0
    assert max(stream_errors(96, None)) > 0.0    # gamma = 0.5 in floating point: 11 steps between anchors


def test_exact_momentum_net_gradient_is_plain_ads():
    residuals = momentum_residuals(40)
    loss = lambda reversible: (lambda x: jnp.sum(jnp.sin(momentum_net(residuals, 0.25, exact_bits=BITS,
                                                                      reversible=reversible)(x))))
    assert_trees_close(jax.jit(jax.grad(loss(True)))(X), jax.jit(jax.grad(loss(False)))(X), rtol=1e-5, atol=1e-6)


def test_exact_momentum_net_keeps_the_lost_bits_in_one_uint32_per_element_per_32_bits():
    for gamma, depth in ((0.5, 96), (0.25, 40)):
        plan = jaxinv.explain(momentum_net(momentum_residuals(depth), gamma, exact_bits=BITS, reversible=False), X)
        buffers = [r for r in plan.rows if "saved" in r.fate and r.primitive == "custom_ivjp_call[push_lost_bits]"]
        per_buffer = 32 // int(np.log2(1 / gamma))                    # steps whose lost bits fill one buffer
        assert len(buffers) == -(-depth // per_buffer)
        assert all(r.saved_bytes == X.size * 4 for r in buffers)


def test_exact_momentum_net_refuses_what_it_cannot_make_exact():
    with pytest.raises(ValueError, match="exact mode needs gamma a power of two"):
        momentum_net(momentum_residuals(2), 0.9, exact_bits=BITS)
    with pytest.raises(TypeError, match="at least 20 mantissa bits, got bfloat16"):
        momentum_net(momentum_residuals(2), 0.5, exact_bits=BITS)(X.astype(jnp.bfloat16))
