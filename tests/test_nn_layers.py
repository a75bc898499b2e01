"""jaxinv.nn's invertible layers: linear maps (LU dense / 1x1 conv, Householder),
elementwise maps (ActNorm, leaky ReLU) and rearrangements (squeeze, Haar).

Every layer is checked the same way (round trip, log-det against the Jacobian,
ildj == -log_det, jit, vmap, dtypes, nothing saved by jaxinv); then stacks of
them: jaxinv.grad equals jax.grad, and the memory jaxinv keeps does not grow
with depth.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinv
from jaxinv.nn.elementwise import ActNorm, LeakyReLU
from jaxinv.nn.linear import Householder, InvertibleConv1x1, InvertibleDense
from jaxinv.nn.reshape import HaarDownsampling, Squeeze

from helpers import assert_trees_close
from jaxinv._src.compat import enable_x64

# name -> (layer, input shape (batch first)). Mostly the shapes of the flow
# tested below (a squeezed (2, 4, 4, 2) image: (2, 2, 2, 8)), so XLA compiles
# each operation once for all tests: compilation, not arithmetic, is what
# these tests spend.
LAYERS = {
    "dense": (InvertibleDense(6), (3, 6)),
    "dense_with_positions": (InvertibleDense(8, seed=3), (2, 2, 2, 8)),
    "conv1x1": (InvertibleConv1x1(), (2, 2, 2, 8)),
    "householder": (Householder(8, n_reflections=3), (2, 2, 2, 8)),
    "actnorm": (ActNorm(), (2, 2, 2, 8)),
    "leaky_relu": (LeakyReLU(0.2), (2, 2, 2, 8)),
    "squeeze": (Squeeze(), (2, 4, 4, 2)),
    "haar": (HaarDownsampling(), (2, 2, 2, 8)),
}
NAMES = list(LAYERS)


def normal(shape, seed, dtype=np.float32):
    """Test data from NumPy: each new shape of jax.random.normal costs an XLA compilation."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(dtype))


def _perturbed(params, seed, scale=0.2):
    """Move every parameter off its initial value (an LU layer starts orthogonal,
    with log_det 0; a check at init would not see a wrong log-det)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    return tree.unflatten([a + (scale * rng.normal(size=a.shape)).astype(a.dtype) for a in leaves])


@functools.lru_cache(maxsize=None)
def setup(name, dtype=jnp.float32):
    """(layer, params, x) with trained-looking params and an input with a
    nonzero mean and scale (so ActNorm's data-dependent init is not trivial).
    Cached."""
    layer, shape = LAYERS[name]
    x = 1.5 * normal(shape, 0, dtype) + 0.5
    return layer, _perturbed(layer.init(jax.random.PRNGKey(1), x), 2), x


# ---------------------------------------------------------------- every layer


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name):
    layer, params, x = setup(name)
    y = layer.apply(params, x)
    assert y.dtype == x.dtype and y.size == x.size
    assert_trees_close(layer.inverse(params, y), x, rtol=1e-5, atol=1e-5)
    y_any = normal(y.shape, 3)  # and the other way round
    assert_trees_close(layer.apply(params, layer.inverse(params, y_any)), y_any, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_float64_log_det_is_log_abs_det_of_the_jacobian(name):
    with enable_x64(True):
        layer, params, x = setup(name, jnp.float64)
        for leaf in jax.tree_util.tree_leaves(params):  # init follows the input's dtype
            assert leaf.dtype == jnp.float64
        y, log_det = layer.forward_and_log_det(params, x)
        assert y.dtype == log_det.dtype == jnp.float64 and log_det.shape == x.shape[:1]
        x_again, ildj = layer.inverse_and_log_det(params, y)
        assert x_again.dtype == ildj.dtype == jnp.float64 and x_again.shape == x.shape
        one = lambda xi: layer.apply(params, xi[None])[0]  # one example
        jacs = jax.jit(jax.vmap(jax.jacfwd(one)))(x)
    size = x[0].size
    sign, want = np.linalg.slogdet(np.asarray(jacs).reshape(x.shape[0], size, size))  # flattened per example
    assert np.all(sign != 0)
    np.testing.assert_allclose(log_det, want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ildj, -want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(x_again, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_inverse_log_det_is_minus_the_forward_one(name):
    layer, params, x = setup(name)
    y, log_det = layer.forward_and_log_det(params, x)
    x_again, ildj = layer.inverse_and_log_det(params, y)
    assert ildj.shape == log_det.shape == x.shape[:1]
    np.testing.assert_allclose(ildj, -log_det, rtol=1e-5, atol=1e-5)
    assert_trees_close(x_again, x, rtol=1e-5, atol=1e-5)
    # apply / inverse agree with the log-det variants
    np.testing.assert_array_equal(layer.apply(params, x), y)
    np.testing.assert_array_equal(layer.inverse(params, y), x_again)


@pytest.mark.parametrize("name", NAMES)
def test_jit_and_vmap(name):
    layer, params, x = setup(name)
    y, log_det = layer.forward_and_log_det(params, x)
    assert_trees_close(jax.jit(layer.forward_and_log_det)(params, x), (y, log_det), rtol=1e-5, atol=1e-5)
    assert_trees_close(jax.jit(layer.inverse_and_log_det)(params, y), layer.inverse_and_log_det(params, y),
                       rtol=1e-5, atol=1e-5)
    # vmap over a leading extra axis (e.g. several batches) = the layer on each
    xs = jnp.stack([x, 2.0 * x - 1.0])
    ys, log_dets = jax.vmap(layer.forward_and_log_det, in_axes=(None, 0))(params, xs)
    for k in range(2):
        assert_trees_close((ys[k], log_dets[k]), layer.forward_and_log_det(params, xs[k]), rtol=1e-5, atol=1e-5)
    xs_again, ildjs = jax.jit(jax.vmap(layer.inverse_and_log_det, in_axes=(None, 0)))(params, ys)
    assert_trees_close(xs_again, xs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ildjs, -log_dets, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_jaxinv_rebuilds_the_input_and_saves_nothing(name):
    layer, params, x = setup(name)
    y = layer.apply(params, x)
    # both directions are inverted equation by equation (or by a custom_ivjp rule)
    assert jaxinv.explain(lambda v: layer.forward_and_log_det(params, v), x).saved_bytes == 0
    assert jaxinv.explain(lambda v: layer.inverse_and_log_det(params, v), y).saved_bytes == 0
    assert_trees_close(jaxinv.inverse(lambda v: layer.apply(params, v), x)(y), x, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- what each layer promises


def test_lu_layers_start_orthogonal_and_unpack_to_P_L_U():
    x = jnp.ones((2, 6))
    layer = InvertibleDense(6, seed=7)
    params = layer.init(jax.random.PRNGKey(0), x)
    w = layer.weight(params)
    np.testing.assert_allclose(w @ w.T, np.eye(6), atol=1e-5)  # a random rotation: well conditioned
    np.testing.assert_allclose(layer.forward_and_log_det(params, x)[1], 0.0, atol=1e-5)
    params = _perturbed(params, 1)
    lower, upper, log_s = layer.factors(params)
    np.testing.assert_array_equal(np.triu(lower), np.eye(6))  # unit lower-triangular
    np.testing.assert_array_equal(np.tril(upper, -1), 0.0)
    np.testing.assert_allclose(np.diag(upper), np.exp(log_s), rtol=1e-6)
    perm = np.eye(6)[np.random.default_rng(7).permutation(6)]  # the fixed P, from the seed
    np.testing.assert_allclose(w := layer.weight(params), perm @ lower @ upper, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.slogdet(np.asarray(w))[1], np.sum(log_s), rtol=1e-5)
    # P is not a parameter: params hold one float leaf, which jax.grad differentiates
    assert [a.dtype for a in jax.tree_util.tree_leaves(params)] == [jnp.float32]
    jax.grad(lambda p: jnp.sum(layer.apply(p, x)))(params)


def test_conv1x1_is_the_dense_layer_at_every_pixel():
    layer, params, x = setup("conv1x1")
    dense = InvertibleDense(x.shape[-1])  # same params, same seed: the same W
    y, log_det = layer.forward_and_log_det(params, x)
    y_dense, log_det_dense = dense.forward_and_log_det(params, x)
    np.testing.assert_allclose(y, y_dense, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_det, log_det_dense, rtol=1e-6)
    h, w = x.shape[1:3]
    np.testing.assert_allclose(log_det, h * w * np.sum(layer.factors(params)[2]), rtol=1e-6)


def test_householder_is_orthogonal():
    layer, params, x = setup("householder")
    y = layer.apply(params, x)
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    w = layer.apply(params, jnp.eye(8))  # rows of the identity: W itself
    np.testing.assert_allclose(w.T @ w, np.eye(8), atol=1e-5)
    vs = params["vectors"]
    want = np.eye(8)
    for v in np.asarray(vs):
        want = want @ (np.eye(8) - 2.0 * np.outer(v, v) / (v @ v))
    np.testing.assert_allclose(w, want, atol=1e-5)


def test_actnorm_initialises_from_the_first_batch_only():
    x = 3.0 * normal((8, 4, 4, 3), 0) + jnp.array([1.0, -2.0, 5.0])
    layer = ActNorm()
    params = layer.init(jax.random.PRNGKey(1), x)
    y = layer.apply(params, x)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2)), 1.0, rtol=1e-4)
    # afterwards it is a fixed affine map of its params: another batch is not renormalised
    x2 = 2.0 * x + 1.0
    shifted = (1.0 - params["bias"]) * jnp.exp(params["log_scale"])  # (2x + 1 + b) s = 2 (x + b) s + (1 - b) s
    np.testing.assert_allclose(layer.apply(params, x2), 2.0 * y + shifted, rtol=1e-4, atol=1e-4)
    assert set(params) == {"bias", "log_scale"} and params["bias"].shape == (3,)


def test_leaky_relu_needs_its_custom_rule_to_be_rebuilt():
    layer, params, x = setup("leaky_relu")
    y, log_det = layer.forward_and_log_det(params, x)
    np.testing.assert_allclose(y, jnp.where(x >= 0, x, 0.2 * x))
    np.testing.assert_allclose(log_det, math.log(0.2) * jnp.sum(x < 0, axis=(1, 2, 3)), rtol=1e-6)
    written_plainly = lambda v: jnp.where(v >= 0, v, 0.2 * v)  # the branch depends on the unknown v
    assert jaxinv.explain(written_plainly, x).saved_bytes == x.nbytes
    assert jaxinv.explain(lambda v: layer.apply(params, v), x).saved_bytes == 0
    for bad in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="negative_slope"):
            LeakyReLU(bad)


def test_squeeze_stacks_each_2x2_block_into_the_channels():
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    y = Squeeze().apply({}, x)
    assert y.shape == (2, 2, 3, 12)
    # tf.nn.space_to_depth's order: channel (i * 2 + j) * c + k holds pixel (2r + i, 2s + j), channel k
    np.testing.assert_array_equal(y[1, 1, 2], jnp.concatenate([x[1, 2, 4], x[1, 2, 5], x[1, 3, 4], x[1, 3, 5]]))
    assert Squeeze(factor=3).apply({}, jnp.zeros((1, 6, 3, 2))).shape == (1, 2, 1, 18)
    with pytest.raises(ValueError, match="multiples of 2"):
        Squeeze().apply({}, jnp.zeros((1, 3, 4, 1)))


def test_haar_channels_are_LL_LH_HL_HH():
    x = normal((2, 4, 4, 3), 0)
    y = HaarDownsampling().apply({}, x)
    blocks = x.reshape(2, 2, 2, 2, 2, 3)  # (b, r, i, s, j, c): pixel (2r + i, 2s + j)
    a, b, c, d = (blocks[:, :, i, :, j] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    ll, lh, hl, hh = jnp.split(y, 4, axis=-1)
    np.testing.assert_allclose(ll, (a + b + c + d) / 2, atol=1e-6)  # twice the 2x2 average
    np.testing.assert_allclose(lh, (a - b + c - d) / 2, atol=1e-6)  # differences along the width
    np.testing.assert_allclose(hl, (a + b - c - d) / 2, atol=1e-6)  # differences along the height
    np.testing.assert_allclose(hh, (a - b - c + d) / 2, atol=1e-6)
    np.testing.assert_allclose(jnp.sum(y ** 2), jnp.sum(x ** 2), rtol=1e-5)  # orthonormal


# ---------------------------------------------------------------- stacks


def _coupling_init(key, x):
    """A tiny additive coupling (y1 = x1, y2 = x2 + tanh(x1 @ w + b)), written
    inline: the stack needs a nonlinearity that mixes channels."""
    k = x.shape[-1] // 2
    seed = int(jax.random.randint(key, (), 0, 2 ** 30))
    return {"w": 0.5 * normal((k, x.shape[-1] - k), seed), "b": jnp.zeros(x.shape[-1] - k)}


def _coupling(p, x):
    x1, x2 = jnp.split(x, [p["w"].shape[0]], axis=-1)
    return jnp.concatenate([x1, x2 + jnp.tanh(x1 @ p["w"] + p["b"])], axis=-1), jnp.zeros(x.shape[:1], x.dtype)


class Coupling:
    init = staticmethod(_coupling_init)
    forward_and_log_det = staticmethod(_coupling)


def build(layers, key, x):
    """Params for a stack, each layer initialised on the previous one's output
    (ActNorm is data-dependent), then moved off their initial values."""
    params = []
    for i, layer in enumerate(layers):
        p = _perturbed(layer.init(jax.random.fold_in(key, i), x), 1000 + i, 0.03)
        x, _ = layer.forward_and_log_det(p, x)
        params.append(p)
    return params


def nll(layers):
    """A flow's negative log-likelihood under a standard normal base."""
    def loss(params, x):
        log_det = jnp.zeros(x.shape[:1], x.dtype)
        for layer, p in zip(layers, params):
            x, ld = layer.forward_and_log_det(p, x)
            log_det = log_det + ld
        z = x.reshape(x.shape[0], -1)
        return jnp.mean(0.5 * jnp.sum(z ** 2, axis=1) - log_det)
    return loss


def test_jaxinv_grad_through_a_flow_of_every_layer_equals_jax_grad():
    layers = [Squeeze(),                                                  # (2, 4, 4, 2) -> (2, 2, 2, 8)
              ActNorm(), InvertibleConv1x1(), LeakyReLU(0.5), Coupling(),
              Householder(8, 3), InvertibleDense(8, seed=1), Coupling(),
              HaarDownsampling()]                                         # -> (2, 1, 1, 32)
    x = normal((2, 4, 4, 2), 0)
    params = build(layers, jax.random.PRNGKey(1), x)
    loss = nll(layers)
    want = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    got = jax.jit(jaxinv.grad(loss, argnums=(0, 1)))(params, x)  # jaxinv.grad under jit, too
    assert_trees_close(got, want, rtol=1e-4, atol=1e-4, relative_atol=True)


def _glow_like(depth):
    return [layer for _ in range(depth) for layer in (ActNorm(), InvertibleConv1x1(), Coupling())]


def test_saved_memory_is_flat_in_depth():
    x = normal((2, 2, 2, 8), 0)
    saved, saved_beyond_params = {}, {}
    # (from depth 6 on: below it, with params closed over, one (batch,) log-det
    # vector less is kept, 264 bytes instead of 272; flat from there on)
    for depth in (8, 16):
        layers = _glow_like(depth)
        params = build(layers, jax.random.PRNGKey(1), x)  # eagerly: XLA compiles each op once for all depths
        loss = nll(layers)
        saved[depth] = jaxinv.explain(lambda v: loss(params, v), x).saved_bytes  # params closed over
        # with params as arguments, they are saved as themselves (no copies), nothing else grows
        param_bytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(params))
        saved_beyond_params[depth] = jaxinv.explain(loss, params, x).saved_bytes - param_bytes
    assert saved[8] == saved[16], saved
    assert saved_beyond_params[8] == saved_beyond_params[16] == saved[8], saved_beyond_params
    # the loss (sum of squares) cannot be inverted, so about one activation is kept, whatever the depth
    assert saved[16] <= 2 * x.nbytes


def test_dense_stack_with_params_as_arguments_saves_no_activation():
    """Each dense layer's weight is its LU params permuted by a constant: with the params
    passed as arguments it is still a parameter (saved as the params themselves) and
    every activation is rebuilt; only the loss's input is kept (the square is not
    injective)."""
    layers = [InvertibleDense(8, seed=s) for s in range(3)]
    x = normal((32, 8), 0)
    params = build(layers, jax.random.PRNGKey(1), x)

    def loss(params, x):
        for layer, p in zip(layers, params):
            x = layer.apply(p, x)
        return jnp.sum(x ** 2)

    param_bytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(params))
    report = jaxinv.explain(loss, params, x)
    assert report.saved_bytes == param_bytes + x.nbytes, report
    assert_trees_close(jaxinv.grad(loss, argnums=(0, 1))(params, x), jax.grad(loss, argnums=(0, 1))(params, x),
                       rtol=1e-4, atol=1e-4, relative_atol=True)
