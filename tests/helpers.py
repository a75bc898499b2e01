"""What several test files share: comparing pytrees, counting their bytes, and
the small reversible networks many tests differentiate.

* ``assert_trees_close``: leafwise ``allclose`` with one structure check.
* ``nbytes``: the bytes of a pytree's leaves (a ``vjp`` function's residuals,
  the parameters), and ``input_fates``: ``explain``'s word on each input, for
  checks of what a plan keeps.
* ``coupling`` / ``revnet``: a RevNet written plainly (blocks with biases, the
  parameters first), with ``revnet_params``, ``revnet_input``, ``revnet_loss``.
* ``coupling_block``: the same block without biases and the activations first,
  ``coupling_block(x1, x2, W1, W2)``, the shape a ``scan`` body
  (``coupling_block(*carry, *layer)``) or a wrapper (``jit``, ``custom_ivjp``)
  takes; ``head`` is a non-invertible loss on a tuple of outputs, and
  ``assert_grads_match_jax`` compares jaxinv's gradients of it with JAX's.
* ``nnx_train_step``: a jitted Flax NNX training step (Flax imported on call).
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxinv


def assert_trees_close(got, want, *, rtol=1e-5, atol=1e-5, relative_atol=False):
    """Every leaf of ``got`` is close to the matching leaf of ``want``, and
    both have one tree structure. With ``relative_atol``, atol scales with the
    largest magnitude in ``want``'s leaf, when above 1 (rounding in a
    reconstruction is relative to the values involved, not to each element)."""
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want), \
        (jax.tree_util.tree_structure(got), jax.tree_util.tree_structure(want))
    for x, y in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        scale = max(1.0, float(np.max(np.abs(y)))) if relative_atol and np.size(y) else 1.0
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol * scale)


def input_fates(f, *args) -> list:
    """What ``explain`` says the plan does with each input of ``f``:
    "saved", "reconstructed", ..."""
    return [r.fate for r in jaxinv.explain(f, *args).rows if r.index is None]


def nbytes(tree) -> int:
    """The bytes of every leaf of ``tree``: ``nbytes(vjp_fn)`` is what a
    ``vjp`` function keeps for the backward pass."""
    return sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(tree))


# ---------------------------------------------------------------- a RevNet written plainly


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


# ---------------------------------------------------------------- one block, activations first


def coupling_block(x1, x2, W1, W2, act=jnp.tanh):
    """A RevNet block without biases: y1 = x1 + act(x2 W1); y2 = x2 + act(y1 W2)."""
    y1 = x1 + act(x2 @ W1)
    return y1, x2 + act(y1 @ W2)


def head(outs):
    """A non-invertible loss on a tuple of outputs."""
    return sum(jnp.sum(jnp.sin(o) * o) for o in outs)


def assert_grads_match_jax(net, *args, argnums=(0, 1, 2), **tolerance):
    """The gradients of ``head(net(*args))`` by ``jaxinv.grad`` and by
    ``jax.grad`` of ``jaxinv.invertible(net)`` both equal ``jax.grad``'s
    (``tolerance``: ``assert_trees_close``'s keywords)."""
    loss = lambda *a: head(net(*a))
    want = jax.grad(loss, argnums=argnums)(*args)
    assert_trees_close(jaxinv.grad(loss, argnums=argnums)(*args), want, **tolerance)
    invertible = jaxinv.invertible(net)
    assert_trees_close(jax.grad(lambda *a: head(invertible(*a)), argnums=argnums)(*args), want, **tolerance)


# ---------------------------------------------------------------- Flax NNX training


def nnx_train_step(loss_fn):
    """``step(model, optimizer, *batch) -> loss``: one jitted optimizer step on
    ``loss_fn(model, *batch)``, updating the model and optimizer in place."""
    from flax import nnx

    @nnx.jit
    def step(model, optimizer, *batch):
        loss, grads = nnx.value_and_grad(loss_fn)(model, *batch)
        optimizer.update(model, grads)
        return loss

    return step
