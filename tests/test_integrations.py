"""jaxinv.nn layers inside Flax NNX and Equinox models.

``jaxinv.nn.flax.Invertible`` and ``jaxinv.nn.equinox.Invertible`` wrap any
``jaxinv.nn.Layer`` as a module of the framework. Their gradients must equal
plain ``jax.grad``'s, optimizers must train through them, the wrapped part's
residual memory must stay flat in depth, parameters (also data-dependent ones)
are set once at construction, and ``import jaxinv`` never imports either
framework.
"""

import dataclasses
import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinv
from jaxinv.nn import ActNorm, AdditiveCoupling, InvertibleDense, Layer, Sequential

from helpers import assert_trees_close, nbytes, nnx_train_step

nnx = pytest.importorskip("flax.nnx")
eqx = pytest.importorskip("equinox")
optax = pytest.importorskip("optax")

from jaxinv.nn.equinox import Invertible as EqxInvertible  # noqa: E402
from jaxinv.nn.flax import Invertible as NnxInvertible  # noqa: E402


WIDTH, BATCH = 8, 32
DEPTH = 4                     # 4 couplings + 4 dense layers + ActNorm: a stack of 9 layers
X = jax.random.normal(jax.random.key(0), (BATCH, 6))
LABELS = jax.random.randint(jax.random.key(1), (BATCH,), 0, 3)


# ---- the stack under test: jaxinv.nn layers, with ActNorm's init counted


INIT_CALLS = []


@dataclasses.dataclass(frozen=True)
class CountingActNorm(ActNorm):
    """Glow's ActNorm (data-dependent init: zero mean, unit variance on the
    example batch), counting how often its init runs."""

    def init(self, key, x):
        INIT_CALLS.append(1)
        return super().init(key, x)


def stack(depth):
    """ActNorm, then ``depth`` RevNet couplings, each followed by an LU-parametrised dense layer."""
    layers = [CountingActNorm()]
    for i in range(depth):
        layers += [AdditiveCoupling(hidden=(WIDTH,)), InvertibleDense(WIDTH, seed=i)]
    return Sequential(tuple(layers))


def output_loss(y):
    """A loss on the stack's output that is not invertible itself."""
    return jnp.sum(jnp.sin(y) * y)


# ---- Flax NNX


class NnxClassifier(nnx.Module):
    """Ordinary NNX layers around a reversible stack."""

    def __init__(self, depth, x, *, rngs, reversible=True):
        self.embed = nnx.Linear(x.shape[-1], WIDTH, rngs=rngs)
        self.body = NnxInvertible(stack(depth), self.embed(x), rngs=rngs, reversible=reversible)
        self.head = nnx.Linear(WIDTH, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.tanh(self.body(self.embed(x))))


def nnx_loss(model, x, labels):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()


def test_nnx_params_are_nnx_params_shaped_like_the_layers():
    layer = stack(2)
    x = jax.random.normal(jax.random.key(2), (BATCH, WIDTH))
    m = NnxInvertible(layer, x, rngs=nnx.Rngs(0))
    expected = layer.init(jax.random.key(0), x)
    assert jax.tree.structure(m.param_values()) == jax.tree.structure(expected)
    params = nnx.state(m, nnx.Param)
    assert len(jax.tree.leaves(params)) == len(jax.tree.leaves(expected))


def test_nnx_methods_match_the_layer_and_invert():
    x = jax.random.normal(jax.random.key(2), (BATCH, WIDTH))
    m = NnxInvertible(stack(3), x, rngs=nnx.Rngs(0))
    p = m.param_values()
    y, log_det = m.forward_and_log_det(x)
    y_ref, log_det_ref = m.layer.forward_and_log_det(p, x)
    assert_trees_close((y, log_det), (y_ref, log_det_ref))
    assert_trees_close(m(x), y_ref)
    assert_trees_close(m.inverse(y), x, atol=1e-5)
    x_back, ildj = m.inverse_and_log_det(y)
    assert_trees_close((x_back, ildj), (x, -log_det), atol=1e-5)


def test_nnx_grad_equals_plain_jax_grad():
    """nnx.grad through the wrapper (reversible) equals jax.grad of the same model
    with the body called as plain JAX (every activation stored)."""
    model = NnxClassifier(DEPTH, X, rngs=nnx.Rngs(0))
    g = nnx.jit(nnx.grad(nnx_loss))(model, X, LABELS)

    plain = nnx.clone(model)
    plain.body.reversible = False           # the same parameters, plain JAX calls
    graphdef, params, rest = nnx.split(plain, nnx.Param, ...)
    pure = lambda params, x: nnx_loss(nnx.merge(graphdef, params, rest), x, LABELS)
    g_plain = jax.jit(jax.grad(pure))(params, X)
    assert_trees_close(g, g_plain, rtol=1e-4, atol=1e-6)


def test_nnx_gradient_of_the_inverse_and_log_det():
    z = jax.random.normal(jax.random.key(3), (BATCH, WIDTH))
    model = NnxInvertible(stack(DEPTH), z, rngs=nnx.Rngs(0))
    plain = NnxInvertible(model.layer, params=model.param_values(), reversible=False)

    def loss(m):
        x, ildj = m.inverse_and_log_det(z)
        return output_loss(x) + jnp.sum(ildj)

    assert_trees_close(nnx.jit(nnx.grad(loss))(model), nnx.jit(nnx.grad(loss))(plain), rtol=1e-4, atol=1e-5)


def test_nnx_optimizer_steps_lower_the_loss():
    model = NnxClassifier(DEPTH, X, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    step = nnx_train_step(nnx_loss)
    losses = [float(step(model, optimizer, X, LABELS)) for _ in range(30)]
    assert losses[-1] < 0.7 * losses[0], losses


MEMORY_X = jax.random.normal(jax.random.key(4), (256, WIDTH))


@functools.lru_cache(maxsize=None)
def deep_stack(depth):
    """A stack and its params at MEMORY_X, initialised once per depth."""
    layer = stack(depth)
    return layer, layer.init(jax.random.key(0), MEMORY_X)


def test_nnx_residual_memory_is_flat_in_depth():
    """Under jax.vjp the reversible body keeps its parameters and output, not one
    activation per block; the plain body's residuals grow with depth."""

    def residual_bytes(depth, reversible):
        layer, params = deep_stack(depth)
        m = NnxInvertible(layer, params=params, reversible=reversible)
        graphdef, state = nnx.split(m)
        _, vjp_fn = jax.vjp(lambda s, x: output_loss(nnx.merge(graphdef, s)(x)), state, MEMORY_X)
        return nbytes(vjp_fn) - nbytes(state)

    # Besides the parameters, the reversible body may keep values computed from them
    # alone (parameter-sized); never one more activation per block.
    activation = MEMORY_X.size * MEMORY_X.dtype.itemsize
    assert residual_bytes(4, True) < 4 * activation      # the output and what the loss keeps of it
    assert residual_bytes(16, True) - residual_bytes(4, True) < activation / 4
    assert residual_bytes(16, False) > residual_bytes(4, False) + 12 * activation


def test_explain_saves_nothing_in_depth_for_the_wrapped_stack():
    def saved(depth):
        layer, params = deep_stack(depth)
        return jaxinv.explain(lambda x: layer.apply(params, x), MEMORY_X).saved_bytes

    assert saved(4) == saved(16) == 0


def test_nnx_data_dependent_params_are_set_once():
    """ActNorm-style parameters come from the example batch in the constructor;
    calls (eager, jit, grad) never re-initialise them, and an optimizer step
    changes them by exactly the optimizer's update, once."""
    x_first = 3.0 + 2.0 * jax.random.normal(jax.random.key(5), (BATCH, WIDTH))
    x_other = -1.0 + 0.5 * jax.random.normal(jax.random.key(6), (BATCH, WIDTH))
    INIT_CALLS.clear()
    m = NnxInvertible(Sequential((CountingActNorm(), AdditiveCoupling(hidden=(WIDTH,)))), x_first, rngs=nnx.Rngs(0))
    assert len(INIT_CALLS) == 1
    normalized = CountingActNorm().apply(m.param_values()[0], x_first)
    np.testing.assert_allclose(jnp.mean(normalized, axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(normalized, axis=0), 1.0, atol=1e-4)

    before = jax.tree.map(jnp.copy, nnx.state(m))
    m(x_other)
    nnx.jit(lambda m, x: m(x))(m, x_other)
    nnx.grad(lambda m: output_loss(m(x_other)))(m)
    assert len(INIT_CALLS) == 1
    assert_trees_close(nnx.state(m), before, rtol=0, atol=0)

    lr = 0.1
    optimizer = nnx.Optimizer(m, optax.sgd(lr), wrt=nnx.Param)

    @nnx.jit
    def step(m, optimizer, x):
        grads = nnx.grad(lambda m: output_loss(m(x)))(m)
        optimizer.update(m, grads)
        return grads

    grads = step(m, optimizer, x_other)
    assert len(INIT_CALLS) == 1
    expected = jax.tree.map(lambda p, g: p - lr * g, before, grads)
    assert_trees_close(nnx.state(m, nnx.Param), expected, rtol=1e-6, atol=1e-6)


def test_nnx_integer_params_are_variables_not_params():
    @dataclasses.dataclass(frozen=True)
    class Permute(Layer):
        def init(self, key, x):
            return {"perm": jax.random.permutation(key, x.shape[-1])}

        def forward_and_log_det(self, p, x):
            return x[:, p["perm"]], jnp.zeros(x.shape[0], x.dtype)

        def inverse_and_log_det(self, p, y):
            return y[:, jnp.argsort(p["perm"])], jnp.zeros(y.shape[0], y.dtype)

    x = jax.random.normal(jax.random.key(7), (4, WIDTH))
    m = NnxInvertible(Permute(), x, rngs=nnx.Rngs(0))
    assert not jax.tree.leaves(nnx.state(m, nnx.Param))
    assert_trees_close(m.inverse(m(x)), x)
    nnx.grad(lambda m, x: jnp.sum(m(x) ** 2), argnums=1)(m, x)


# ---- Equinox


class EqxClassifier(eqx.Module):
    """Ordinary Equinox layers around a reversible stack."""
    embed: eqx.nn.Linear
    body: EqxInvertible
    head: eqx.nn.Linear

    def __init__(self, depth, x, *, key, reversible=True):
        k1, k2, k3 = jax.random.split(key, 3)
        self.embed = eqx.nn.Linear(x.shape[-1], WIDTH, key=k1)
        self.body = EqxInvertible(stack(depth), jax.vmap(self.embed)(x), key=k2, reversible=reversible)
        self.head = eqx.nn.Linear(WIDTH, 3, key=k3)

    def __call__(self, x):
        return jax.vmap(self.head)(jnp.tanh(self.body(jax.vmap(self.embed)(x))))


def eqx_loss(model, x, labels):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()


def test_eqx_methods_match_the_layer_and_invert():
    x = jax.random.normal(jax.random.key(2), (BATCH, WIDTH))
    m = EqxInvertible(stack(3), x, key=jax.random.key(0))
    y, log_det = m.forward_and_log_det(x)
    assert_trees_close((y, log_det), m.layer.forward_and_log_det(m.params, x))
    assert_trees_close(m(x), y)
    x_back, ildj = m.inverse_and_log_det(y)
    assert_trees_close((x_back, ildj), (x, -log_det), atol=1e-5)
    assert_trees_close(m.inverse(y), x, atol=1e-5)
    same = EqxInvertible(m.layer, params=m.params)
    assert_trees_close(same(x), y)


def test_eqx_filter_grad_equals_plain_jax_grad():
    model = EqxClassifier(DEPTH, X, key=jax.random.key(0))
    g = eqx.filter_jit(eqx.filter_grad(eqx_loss))(model, X, LABELS)

    plain = eqx.tree_at(lambda m: m.body, model,
                        EqxInvertible(model.body.layer, params=model.body.params, reversible=False))
    params, static = eqx.partition(plain, eqx.is_inexact_array)
    pure = lambda params, x: eqx_loss(eqx.combine(params, static), x, LABELS)
    g_plain = jax.jit(jax.grad(pure))(params, X)
    assert_trees_close(jax.tree.leaves(g), jax.tree.leaves(g_plain), rtol=1e-4, atol=1e-6)


def test_eqx_optimizer_steps_lower_the_loss():
    model = EqxClassifier(DEPTH, X, key=jax.random.key(0))
    optim = optax.adam(1e-2)
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt_state, x, labels):
        loss, grads = eqx.filter_value_and_grad(eqx_loss)(model, x, labels)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    losses = []
    for _ in range(30):
        model, opt_state, loss = step(model, opt_state, X, LABELS)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses


def test_eqx_residual_memory_is_flat_in_depth():
    def residual_bytes(depth, reversible):
        layer, params = deep_stack(depth)
        m = EqxInvertible(layer, params=params, reversible=reversible)
        _, vjp_fn = jax.vjp(lambda m, x: output_loss(m(x)), m, MEMORY_X)
        return nbytes(vjp_fn) - nbytes(params)

    activation = MEMORY_X.size * MEMORY_X.dtype.itemsize
    assert residual_bytes(4, True) < 4 * activation
    assert residual_bytes(16, True) - residual_bytes(4, True) < activation / 4
    assert residual_bytes(16, False) > residual_bytes(4, False) + 12 * activation


def test_eqx_data_dependent_params_are_set_once():
    x_first = 3.0 + 2.0 * jax.random.normal(jax.random.key(5), (BATCH, WIDTH))
    x_other = -1.0 + 0.5 * jax.random.normal(jax.random.key(6), (BATCH, WIDTH))
    INIT_CALLS.clear()
    m = EqxInvertible(Sequential((CountingActNorm(), AdditiveCoupling(hidden=(WIDTH,)))), x_first, key=jax.random.key(0))
    before = m.params
    grads = eqx.filter_jit(eqx.filter_grad(lambda m, x: output_loss(m(x))))(m, x_other)
    assert len(INIT_CALLS) == 1
    assert_trees_close(m.params, before, rtol=0, atol=0)
    lr = 0.1
    optim = optax.sgd(lr)
    updates, _ = optim.update(grads, optim.init(eqx.filter(m, eqx.is_inexact_array)))
    m2 = eqx.apply_updates(m, updates)
    assert len(INIT_CALLS) == 1
    assert_trees_close(m2.params, jax.tree.map(lambda p, g: p - lr * g, before, grads.params), rtol=1e-6, atol=1e-6)


# ---- import hygiene


def test_import_jaxinv_does_not_import_flax_or_equinox():
    code = ("import sys, jaxinv, jaxinv.nn, jaxinv.nn.base; "
            "heavy = sorted(m for m in ('flax', 'equinox', 'optax') if m in sys.modules); "
            "assert not heavy, heavy; "
            "import jaxinv.nn.flax, jaxinv.nn.equinox; "
            "assert 'flax' in sys.modules and 'equinox' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
