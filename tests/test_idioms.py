"""Couplings written the way people write them keep memory flat in depth.

Each idiom below splits the activation with ordinary JAX indexing (slices,
strided slices, unpacking a stacked axis, ``jnp.array_split``, ``jnp.roll``, a
constant permutation, ``.at[...].set``, constant 0/1 masks). No single
equation of such code is invertible; the planner's partial knowledge (which
elements of an array it knows) rebuilds the input from the pieces. For every
idiom, unrolled and in ``lax.scan``:

* the backward pass keeps no activation: the residual bytes are the
  parameters only, at depth 4 and at depth 16;
* the gradient equals ``jax.grad``'s, to within the error plain float32 AD
  itself makes against float64 (plus a few ulps per block).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxinv
from helpers import assert_trees_close, nbytes
from jaxinv._src.compat import enable_x64

WIDTH = 8          # features per half
BATCH = 4


def mlp(x, w):
    return jnp.tanh(x @ w)


def conv(x, w):
    """F of a convolutional coupling (NHWC, 3x3, same padding)."""
    return jnp.tanh(lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))


def couple(x1, x2, p, f=mlp):
    w1, w2 = p
    y1 = x1 + f(x2, w1)
    y2 = x2 + f(y1, w2)
    return y1, y2


def halves(p, x):
    y1, y2 = couple(x[..., :WIDTH], x[..., WIDTH:], p)
    return jnp.concatenate([y1, y2], axis=-1)


def channels(p, x):                               # NHWC images, couplings over channels (i-RevNet, Glow)
    c = x.shape[-1] // 2
    y1, y2 = couple(x[..., :c], x[..., c:], p, conv)
    return jnp.concatenate([y1, y2], axis=-1)


def interleaved(p, x):
    y1, y2 = couple(x[:, ::2], x[:, 1::2], p)
    return jnp.stack([y1, y2], axis=-1).reshape(x.shape)


def unpacked(p, x):                               # a stacked leading axis: x1, x2 = x
    x1, x2 = x
    return jnp.stack(couple(x1, x2, p))


def array_split(p, x):
    x1, x2 = jnp.array_split(x, 2, axis=-1)
    return jnp.concatenate(couple(x1, x2, p), axis=-1)


def rolled(p, x):
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.roll(jnp.concatenate(couple(x1, x2, p), axis=-1), 3, axis=-1)


PERM = np.random.default_rng(0).permutation(2 * WIDTH)


def permuted(p, x):
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate(couple(x1, x2, p), axis=-1)[:, PERM]


def at_set(p, x):
    y1, y2 = couple(x[:, :WIDTH], x[:, WIDTH:], p)
    return jnp.zeros_like(x).at[:, :WIDTH].set(y1).at[:, WIDTH:].set(y2)


INTERLEAVED_MASK = (np.arange(2 * WIDTH) % 2).astype(np.float32)
CHECKERBOARD = (np.indices((4, 4, 2)).sum(0) % 2).astype(np.float32)  # H, W, C of the image


def masked_affine(p, x, mask, f):
    """RealNVP's masked coupling, twice (mask, then its complement)."""
    for m, w in ((mask, p[0]), (1 - mask, p[1])):
        h = f(m * x, w)
        x = m * x + (1 - m) * (x * jnp.exp(0.5 * jnp.tanh(h)) + h)
    return x


def interleaved_mask(p, x):
    tile = lambda w: jnp.tile(w, (2, 2))
    return masked_affine((tile(p[0]), tile(p[1])), x, INTERLEAVED_MASK, mlp)


def checkerboard(p, x):
    return masked_affine(p, x, CHECKERBOARD, conv)


def dense_params(key):
    k1, k2 = jax.random.split(key)
    return (0.3 * jax.random.normal(k1, (WIDTH, WIDTH)), 0.3 * jax.random.normal(k2, (WIDTH, WIDTH)))


def conv_params(cin, cout):
    def make(key):
        k1, k2 = jax.random.split(key)
        return (0.2 * jax.random.normal(k1, (3, 3, cin, cout)), 0.2 * jax.random.normal(k2, (3, 3, cin, cout)))
    return make


# name: (block, parameter maker, input shape)
IDIOMS = {
    "feature halves": (halves, dense_params, (BATCH, 2 * WIDTH)),
    "NHWC channels": (channels, conv_params(2, 2), (2, 4, 4, 4)),
    "strided interleave": (interleaved, dense_params, (BATCH, 2 * WIDTH)),
    "tuple unpack": (unpacked, dense_params, (2, BATCH, WIDTH)),
    "array_split": (array_split, dense_params, (BATCH, 2 * WIDTH)),
    "roll": (rolled, dense_params, (BATCH, 2 * WIDTH)),
    "constant permutation": (permuted, dense_params, (BATCH, 2 * WIDTH)),
    ".at[].set": (at_set, dense_params, (BATCH, 2 * WIDTH)),
    "interleaved mask": (interleaved_mask, dense_params, (BATCH, 2 * WIDTH)),
    "checkerboard mask": (checkerboard, conv_params(2, 2), (2, 4, 4, 2)),
}


def unrolled(block):
    def net(params, x):
        for p in params:
            x = block(p, x)
        return x
    return net


def scanned(block):
    def net(params, x):
        return lax.scan(lambda x, p: (block(p, x), None), x, params)[0]
    return net


NETS = {"unrolled": unrolled, "scan": scanned}


@functools.lru_cache(maxsize=None)
def inputs(idiom, kind, depth):
    _, make_params, shape = IDIOMS[idiom]
    keys = jax.random.split(jax.random.PRNGKey(depth), depth + 1)
    params = [make_params(k) for k in keys[:depth]]
    if kind == "scan":
        params = jax.tree_util.tree_map(lambda *ws: jnp.stack(ws), *params)
    x = jax.random.normal(keys[-1], shape)
    return params, x


def activation_bytes(idiom, kind, depth):
    """Bytes the backward pass keeps besides the parameters and the output."""
    net = NETS[kind](IDIOMS[idiom][0])
    params, x = inputs(idiom, kind, depth)
    _, vjp_fn = jaxinv.vjp(net, params, x)
    return nbytes(vjp_fn.residuals) - nbytes(params)


@pytest.mark.parametrize("kind", NETS)
@pytest.mark.parametrize("idiom", IDIOMS)
def test_no_activation_is_kept_at_any_depth(idiom, kind):
    sizes = {depth: activation_bytes(idiom, kind, depth) for depth in (4, 16)}
    assert sizes == {4: 0, 16: 0}, sizes


def loss_of(net):
    return lambda params, x: jnp.sum(jnp.sin(net(params, x)))


def max_error(got, want):
    return max(float(jnp.max(jnp.abs(jnp.asarray(g, jnp.float64) - w)))
               for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)))


@pytest.mark.parametrize("kind", NETS)
@pytest.mark.parametrize("idiom", IDIOMS)
def test_gradient_is_jax_grads(idiom, kind):
    depth = 16
    loss = loss_of(NETS[kind](IDIOMS[idiom][0]))
    params, x = inputs(idiom, kind, depth)
    got = jaxinv.grad(loss, argnums=(0, 1))(params, x)
    plain = jax.grad(loss, argnums=(0, 1))(params, x)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(plain)
    with enable_x64(True):
        p64, x64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), (params, x))
        exact = jax.grad(loss, argnums=(0, 1))(p64, x64)
        scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree_util.tree_leaves(exact))
        plain_error, our_error = max_error(plain, exact), max_error(got, exact)
    # Rebuilding costs a few roundings per block on top of plain float32 AD's own error.
    eps = float(jnp.finfo(jnp.float32).eps)
    assert our_error <= 8 * plain_error + 8 * depth * eps * scale, (our_error, plain_error, scale)


@pytest.mark.parametrize("idiom", ["feature halves", "interleaved mask", "checkerboard mask", ".at[].set"])
def test_inverse_and_log_det_of_the_idioms(idiom):
    block, make_params, shape = IDIOMS[idiom]
    params, x = inputs(idiom, "unrolled", 4)
    net = lambda x: unrolled(block)(params, x)
    y = net(x)
    x_rebuilt, ildj = jaxinv.inverse_and_ildj(net, x)(y)
    eps = float(jnp.finfo(jnp.float32).eps)
    np.testing.assert_allclose(x_rebuilt, x, atol=64 * eps * float(jnp.max(jnp.abs(x))))
    n = x.size
    with enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        net64 = lambda v: unrolled(block)(p64, v.reshape(shape)).ravel()
        jac = jax.jacfwd(net64)(jnp.asarray(x, jnp.float64).ravel())
        want = -jnp.linalg.slogdet(jac.reshape(n, n))[1]
    np.testing.assert_allclose(ildj, want, rtol=1e-4, atol=1e-4 * n)


def test_explain_says_a_sliced_input_is_assembled_from_its_pieces():
    params, x = inputs("feature halves", "unrolled", 4)
    report = jaxinv.explain(unrolled(halves), params, x)
    assert report.saved_bytes == nbytes(params)
    assert "assembled from its pieces" in str(report)


def test_slices_that_do_not_cover_the_input_save_it():
    def net(params, x):
        for p in params:                             # the last feature is dropped: x is not recoverable
            y1, y2 = couple(x[:, :WIDTH], x[:, WIDTH:2 * WIDTH], p)
            x = jnp.concatenate([y1, y2, x[:, :1]], axis=-1)
        return x
    params, _ = inputs("feature halves", "unrolled", 4)
    x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, 2 * WIDTH + 1))
    loss = loss_of(net)
    got = jaxinv.grad(loss, argnums=(0, 1))(params, x)
    want = jax.grad(loss, argnums=(0, 1))(params, x)
    assert_trees_close(got, want, rtol=1e-4, atol=1e-5)
