"""Flax NNX modules for ``jaxinv.nn`` layers (``pip install jaxinv[flax]``).

``Invertible`` wraps any ``jaxinv.nn.Layer`` (one layer or a whole
reversible stack) as an ``nnx.Module`` whose parameters are ``nnx.Param``\\ s,
so it mixes with ordinary NNX layers, ``nnx.Optimizer``, ``nnx.jit`` and
``nnx.grad``. Calls go through ``jaxinv.invertible`` applied to the layer's
pure function, so ``nnx.grad``/``jax.grad`` of any loss use the reversible
backward pass for the wrapped part: its activations are rebuilt from its output
instead of being stored, and its memory stays flat in depth.

Example (an NNX classifier around a reversible stack):
```python
import optax
from flax import nnx
from jaxinv.nn.flax import Invertible

class Classifier(nnx.Module):
    def __init__(self, stack, x, *, rngs):
        self.embed = nnx.Linear(64, 32, rngs=rngs)
        self.body = Invertible(stack, self.embed(x), rngs=rngs)    # init from an example input
        self.head = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        return self.head(self.body(self.embed(x)))

model = Classifier(stack, x[:64], rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

@nnx.jit
def step(model, optimizer, x, labels):
    loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), labels).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)    # the body's backward is jaxinv's
    optimizer.update(model, grads)
    return loss
```

Parameters are created once, in the constructor, by the layer's
``init(key, x)`` (data-dependent layers such as ActNorm read ``x`` there).
Calling the module never re-initialises or mutates them; only the optimizer
does.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxinv._src.compat import variable_value
from jaxinv.nn.base import Layer, RunsLayer

__all__ = ["Invertible"]


def _variable(leaf) -> nnx.Variable:
    """Floating-point leaves are trainable ``nnx.Param``\\ s; integer leaves
    (a fixed permutation) are plain ``nnx.Variable``\\ s, which ``nnx.grad``
    and ``nnx.Optimizer(..., wrt=nnx.Param)`` leave alone."""
    leaf = jnp.asarray(leaf)
    return nnx.Param(leaf) if jnp.issubdtype(leaf.dtype, jnp.inexact) else nnx.Variable(leaf)


def _is_variable(v) -> bool:
    return isinstance(v, nnx.Variable)


class Invertible(RunsLayer, nnx.Module):
    """An ``nnx.Module`` running a ``jaxinv.nn.Layer`` with reversible gradients.

    Args:
      layer: any ``jaxinv.nn.Layer`` (a frozen dataclass of hyperparameters).
      x: an example input, batch first; ``layer.init(key, x)`` creates the
        parameters from its shape (and, for data-dependent layers, its values).
      rngs: an ``nnx.Rngs``; the key comes from its ``params`` stream.
      reversible: when ``False``, calls are plain JAX (``jax.grad`` stores every
        activation): handy for comparing memory and gradients.
      params: the layer's parameters, instead of ``x`` and ``rngs``
        (``Invertible(layer, params=params)``).

    The parameters live in ``self.params``, a pytree shaped like the layer's
    params whose leaves are ``nnx.Param`` (integer leaves: ``nnx.Variable``).

    Example:
        ```python
        stack = jaxinv.nn.rev_sequential(jaxinv.nn.AdditiveCoupling(hidden=(32,)), depth=8)
        body = Invertible(stack, jnp.ones((4, 16)), rngs=nnx.Rngs(0))
        grads = nnx.grad(lambda m, x: jnp.sum(m(x) ** 2))(body, x)   # reversible backward pass
        ```
    """

    def __init__(self, layer: Layer, x: jax.Array | None = None, *, rngs: nnx.Rngs | None = None,
                 reversible: bool = True, params: Any = None):
        if params is None:
            if x is None or rngs is None:
                raise TypeError("Invertible needs an example input `x` and `rngs`, or `params`")
            params = layer.init(rngs.params(), x)
        self.layer = layer
        self.reversible = reversible
        self.params = nnx.data(jax.tree.map(_variable, params))

    def param_values(self) -> Any:
        """The layer's params as a plain pytree of arrays (what ``layer.apply`` takes)."""
        return jax.tree.map(variable_value, self.params, is_leaf=_is_variable)
