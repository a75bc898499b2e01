"""Small shared pieces for the tests: a plainly written RevNet, comparisons."""

import jax
import jax.numpy as jnp
import numpy as np


def assert_trees_close(a, b, rtol=1e-5, atol=1e-5, relative_atol=False):
    """Every leaf of ``a`` is close to the matching leaf of ``b``. With
    ``relative_atol``, atol scales with the leaf's largest magnitude (rounding in
    a reconstruction is relative to the values involved, not to each element)."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b), \
        (jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        scale = max(1.0, float(np.max(np.abs(y)))) if relative_atol and np.size(y) else 1.0
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol * scale)


def tree_bytes(tree) -> int:
    return sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(tree))


def coupling(p, x1, x2):
    """A RevNet block written plainly: y1 = x1 + F(x2); y2 = x2 + G(y1)."""
    (w1, b1), (w2, b2) = p
    y1 = x1 + jnp.tanh(x2 @ w1 + b1)
    y2 = x2 + jnp.tanh(y1 @ w2 + b2)
    return y1, y2


def revnet(params, x):
    """A stack of coupling blocks on a pair of activations."""
    x1, x2 = x
    for p in params:
        x1, x2 = coupling(p, x1, x2)
    return x1, x2


def revnet_params(key, depth, width, scale=0.3):
    keys = jax.random.split(key, 4 * depth)
    mk = lambda k, shape: scale * jax.random.normal(k, shape)
    return [((mk(keys[4 * i], (width, width)), mk(keys[4 * i + 1], (width,))),
             (mk(keys[4 * i + 2], (width, width)), mk(keys[4 * i + 3], (width,))))
            for i in range(depth)]


def revnet_input(key, batch, width):
    k1, k2 = jax.random.split(key)
    return jax.random.normal(k1, (batch, width)), jax.random.normal(k2, (batch, width))


def revnet_loss(net):
    """A loss on a network's output pair (not invertible itself)."""
    def loss(params, x):
        y1, y2 = net(params, x)
        return jnp.sum(jnp.sin(y1) * y2)
    return loss
