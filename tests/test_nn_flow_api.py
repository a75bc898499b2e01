"""Every ``jaxinv.nn`` layer through jaxinv's own inversion API.

``jaxinv.inverse``, ``jaxinv.inverse_and_ildj`` and ``jaxinv.ildj`` invert a
traced ``layer.apply`` equation by equation (or by a layer's custom_ivjp rule);
their results must equal the layer's hand-written ``inverse`` /
``inverse_and_log_det``, alone and stacked in ``nn.Sequential`` /
``nn.RevSequential``. Conventions: jaxinv's ildj is ``log|det dx/dy|`` summed
over *all* elements, a layer's ``inverse_and_log_det`` returns the same
quantity per example, so ``ildj == sum(layer ildj)``.

Tolerances are rounding bounds in float32, not tuned numbers: see
:func:`rounding_bound`.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinv
from jaxinv import nn

DTYPE = jnp.float32
EPS = float(jnp.finfo(DTYPE).eps)

IMAGE = (2, 2, 2, 8)          # (batch, h, w, channels): most layers share it, so XLA compiles each op once
SEQUENCE = (2, 4, 8)          # (batch, seq, 2 * d_model) for the transformer block
WIDTH = 8                     # the channels every layer below acts on: its inverse's longest dot product


def mixed_image_flow():
    """Every image layer once, Glow-style: (2, 4, 4, 2) -> squeeze -> ... -> Haar -> (2, 1, 1, 32)."""
    return nn.Sequential((nn.Squeeze(), nn.ActNorm(), nn.InvertibleConv1x1(), nn.LeakyReLU(0.3),
                          nn.AffineCoupling(hidden=(16,)), nn.Householder(8, 3), nn.InvertibleDense(8, seed=1),
                          nn.AffineCoupling(hidden=(16,), scale="exp", swap=True),
                          nn.AdditiveCoupling(hidden=(16,)), nn.HaarDownsampling()))


# name -> (layer, input shape, number of layers in it: the stacks' errors add up layer by layer)
LAYERS = {
    "additive_coupling": (nn.AdditiveCoupling(hidden=(16,)), IMAGE, 1),
    "affine_coupling_sigmoid": (nn.AffineCoupling(hidden=(16,)), IMAGE, 1),
    "affine_coupling_exp": (nn.AffineCoupling(hidden=(16,), scale="exp", clamp=1.5, swap=True), IMAGE, 1),
    "invertible_dense": (nn.InvertibleDense(8), IMAGE, 1),
    "invertible_conv1x1": (nn.InvertibleConv1x1(), IMAGE, 1),
    "householder": (nn.Householder(8, n_reflections=3), IMAGE, 1),
    "actnorm": (nn.ActNorm(), IMAGE, 1),
    "leaky_relu": (nn.LeakyReLU(0.2), IMAGE, 1),
    "squeeze": (nn.Squeeze(), (2, 4, 4, 2), 1),
    "haar": (nn.HaarDownsampling(), IMAGE, 1),
    "transformer": (nn.ReversibleTransformerBlock(d_model=4, n_heads=2, d_ff=16), SEQUENCE, 1),
    "keep_input": (nn.KeepInput(nn.AffineCoupling(hidden=(16,))), IMAGE, 1),
    "sequential_image": (mixed_image_flow(), (2, 4, 4, 2), 10),
    "sequential_sequence": (nn.Sequential((nn.ReversibleTransformerBlock(4, 2, 16), nn.ActNorm(),
                                           nn.LeakyReLU(0.3), nn.Householder(8, 2), nn.InvertibleDense(8))),
                            SEQUENCE, 5),
    "rev_sequential": (nn.rev_sequential(nn.Sequential((nn.ActNorm(), nn.Householder(8, 2), nn.LeakyReLU(0.3),
                                                        nn.AffineCoupling(hidden=(16,), scale="exp"))), depth=3),
                       IMAGE, 12),
}


def test_every_layer_of_jaxinv_nn_is_covered():
    """A layer added to jaxinv.nn without a case here fails this test."""
    covered = set()
    for layer, _, _ in LAYERS.values():
        stack = [layer]
        while stack:
            layer = stack.pop()
            covered.add(type(layer).__name__)
            stack.extend(getattr(layer, "layers", ()))
            if isinstance(layer, nn.RevSequential):
                stack.append(layer.layer)
    layer_classes = {name for name in nn.__all__
                     if isinstance(getattr(nn, name), type) and issubclass(getattr(nn, name), nn.Layer)
                     and getattr(nn, name) is not nn.Layer}
    assert layer_classes <= covered, layer_classes - covered


def rounding_bound(reference, steps: int, floor: float = 0.0) -> float:
    """An absolute tolerance for comparing two float32 computations of ``reference``.

    Each of the two (jaxinv's and the layer's) rounds its result by at most
    about ``steps * eps`` relative to the scale of the values involved (a dot
    product or a sum of ``n`` terms: ``n * eps``, Higham's gamma_n), so they
    differ by at most twice that. The scale is the reference's largest
    magnitude, or ``floor`` when that is smaller (a log-det near 0 is a sum of
    terms that are not)."""
    scale = max(float(np.max(np.abs(np.asarray(reference)))), floor)
    return 2.0 * steps * EPS * scale


def _perturbed(params, seed, scale=0.2):
    """Move every parameter off its initial value (an LU layer starts orthogonal,
    a coupling as the identity: a wrong log-det would hide there)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    return tree.unflatten([a + (scale * rng.normal(size=a.shape)).astype(a.dtype) for a in leaves])


def setup(name):
    """(layer, params, x, y, number of layers) in float32; x has a nonzero mean and
    both signs (LeakyReLU takes both branches)."""
    layer, shape, n_layers = LAYERS[name]
    x = jnp.asarray(1.5 * np.random.default_rng(0).normal(size=shape) + 0.5, DTYPE)
    params = _perturbed(layer.init(jax.random.PRNGKey(1), x), 2)
    return layer, params, x, layer.apply(params, x), n_layers


@pytest.mark.parametrize("name", LAYERS)
def test_jaxinv_inverse_and_ildj_equal_the_layers_own(name):
    layer, params, x, y, n_layers = setup(name)
    f = lambda v: layer.apply(params, v)
    want_x, want_ildj = layer.inverse_and_log_det(params, y)
    want_ildj = jnp.sum(want_ildj)                      # per example -> all elements, jaxinv's convention
    x_tol = rounding_bound(want_x, n_layers * WIDTH)
    # jaxinv sums one log-det term per inverted element (at most y.size per layer)
    ildj_tol = rounding_bound(want_ildj, n_layers * y.size, floor=1.0)

    got_x = jaxinv.inverse(f, x)(y)
    assert got_x.dtype == DTYPE and got_x.shape == x.shape
    np.testing.assert_allclose(got_x, want_x, rtol=0, atol=x_tol)

    got_x2, got_ildj = jaxinv.inverse_and_ildj(f, x)(y)
    np.testing.assert_allclose(got_x2, want_x, rtol=0, atol=x_tol)
    assert got_ildj.shape == () and got_ildj.dtype == DTYPE
    np.testing.assert_allclose(got_ildj, want_ildj, rtol=0, atol=ildj_tol)

    only_ildj = jaxinv.ildj(f, x)(y)
    assert only_ildj.shape == () and only_ildj.dtype == DTYPE
    np.testing.assert_allclose(only_ildj, want_ildj, rtol=0, atol=ildj_tol)


@pytest.mark.parametrize("name", ["leaky_relu", "householder", "sequential_image", "rev_sequential"])
def test_the_layers_inverse_is_inverted_too(name):
    """The other direction (sampling a flow): jaxinv inverts ``layer.inverse``
    back to ``forward_and_log_det`` (LeakyReLU's and Householder's inverses are
    custom_ivjp calls with log-dets of their own)."""
    layer, params, x, y, n_layers = setup(name)
    g = lambda v: layer.inverse(params, v)
    want_y, want_log_det = layer.forward_and_log_det(params, x)
    want_log_det = jnp.sum(want_log_det)
    got_y, got_log_det = jaxinv.inverse_and_ildj(g, y)(x)
    np.testing.assert_allclose(got_y, want_y, rtol=0, atol=rounding_bound(want_y, n_layers * WIDTH))
    np.testing.assert_allclose(got_log_det, want_log_det, rtol=0,
                               atol=rounding_bound(want_log_det, n_layers * x.size, floor=1.0))


def test_leaky_relu_ildj_counts_the_negative_outputs():
    """The custom_ivjp's ildj: -log(slope) for each negative output, 0 elsewhere
    (y == 0 is the identity branch)."""
    layer = nn.LeakyReLU(0.25)
    y = jnp.array([[-2.0, 0.0, 3.0], [-1.0, -0.5, 1e-30]], DTYPE)
    x, ildj = jaxinv.inverse_and_ildj(lambda v: layer.apply({}, v), y)(y)
    np.testing.assert_array_equal(x, layer.inverse({}, y))
    want = 3 * -np.log(0.25)
    np.testing.assert_allclose(ildj, want, rtol=0, atol=rounding_bound(want, 3))
    np.testing.assert_allclose(ildj, jnp.sum(layer.inverse_and_log_det({}, y)[1]), rtol=0,
                               atol=rounding_bound(want, 3))
    # a vmapped call inside jaxinv: the rule's ildj runs per row and is summed
    x_rows, ildj_rows = jaxinv.inverse_and_ildj(jax.vmap(lambda v: layer.apply({}, v)), y)(y)
    np.testing.assert_array_equal(x_rows, x)
    np.testing.assert_allclose(ildj_rows, want, rtol=0, atol=rounding_bound(want, 3))


def test_householder_ildj_is_zero_under_vmap_and_jit():
    """An orthogonal map: ildj 0, under jit and vmap of jaxinv.ildj, and for a
    vmapped layer inside jaxinv (the custom_ivjp's batched rule)."""
    layer, params, x, y, _ = setup("householder")
    f = lambda v: layer.apply(params, v)
    per_example = jax.jit(jax.vmap(lambda v: jaxinv.ildj(f, x[:1])(v[None])))(y)
    np.testing.assert_array_equal(per_example, np.zeros(x.shape[0], np.float32))
    x_rows, ildj_rows = jaxinv.inverse_and_ildj(jax.vmap(f), x)(y)
    np.testing.assert_allclose(x_rows, jax.vmap(lambda v: layer.inverse(params, v))(y), rtol=0,
                               atol=rounding_bound(x, WIDTH))
    assert ildj_rows == 0.0


def test_jaxinv_nn_is_an_attribute_without_importing_flax_or_equinox():
    """``import jaxinv`` does not import ``jaxinv.nn`` (nor Flax / Equinox);
    ``jaxinv.nn`` then imports it on first use. In a fresh interpreter, so
    nothing this test session imported counts."""
    code = ("import sys, jaxinv\n"
            "assert 'jaxinv.nn' not in sys.modules\n"
            "nn = jaxinv.nn\n"
            "import jaxinv.nn as direct\n"
            "assert nn is direct and nn.AffineCoupling is direct.AffineCoupling\n"
            "assert 'nn' in dir(jaxinv)\n"
            "assert 'flax' not in sys.modules and 'equinox' not in sys.modules, "
            "[m for m in sys.modules if m.split('.')[0] in ('flax', 'equinox')]\n"
            "try:\n"
            "    jaxinv.no_such_attribute\n"
            "except AttributeError as e:\n"
            "    assert 'no_such_attribute' in str(e)\n"
            "else:\n"
            "    raise AssertionError('jaxinv.no_such_attribute did not raise')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(jaxinv.__file__)))  # the jaxinv under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code + f"assert jaxinv.__file__ == {jaxinv.__file__!r}\n"],
                            capture_output=True, text=True, timeout=300, cwd=root, env=env)
    assert result.returncode == 0, result.stderr
