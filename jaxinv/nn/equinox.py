"""Equinox modules for ``jaxinv.nn`` layers (``pip install jaxinv[equinox]``).

``Invertible`` wraps any ``jaxinv.nn.Layer`` (one layer or a whole
reversible stack) as an ``eqx.Module`` whose ``params`` field holds the layer's
parameter pytree, so ``eqx.filter_grad``/``eqx.filter_value_and_grad``,
``eqx.filter_jit`` and optax see ordinary array leaves. Calls go through
``jaxinv.invertible`` applied to the layer's pure function, so gradients
use the reversible backward pass for the wrapped part: its activations are
rebuilt from its output instead of being stored.

Example (an Equinox classifier around a reversible stack):
```python
import equinox as eqx, optax
from jaxinv.nn.equinox import Invertible

class Classifier(eqx.Module):
    embed: eqx.nn.Linear
    body: Invertible
    head: eqx.nn.Linear

    def __init__(self, stack, x, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.embed = eqx.nn.Linear(64, 32, key=k1)
        self.body = Invertible(stack, jax.vmap(self.embed)(x), key=k2)
        self.head = eqx.nn.Linear(32, 10, key=k3)

    def __call__(self, x):                       # x: (batch, 64)
        return jax.vmap(self.head)(self.body(jax.vmap(self.embed)(x)))

model = Classifier(stack, x[:64], key=jax.random.key(0))
optim = optax.adam(1e-3)
opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))

@eqx.filter_jit
def step(model, opt_state, x, labels):
    loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), labels).mean()
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model)    # the body's backward is jaxinv's
    updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), opt_state, loss
```

Parameters are created once, in the constructor, by the layer's
``init(key, x)`` (data-dependent layers such as ActNorm read ``x`` there).
Equinox modules are immutable: calling one never changes its parameters.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax

from jaxinv.nn.base import Layer, RunsLayer

__all__ = ["Invertible"]


class Invertible(RunsLayer, eqx.Module):
    """An ``eqx.Module`` running a ``jaxinv.nn.Layer`` with reversible gradients.

    Args:
      layer: any ``jaxinv.nn.Layer`` (a frozen dataclass of hyperparameters;
        a static field of the module).
      x: an example input, batch first; ``layer.init(key, x)`` creates the
        parameters from its shape (and, for data-dependent layers, its values).
      key: a PRNG key for ``layer.init``.
      reversible: when ``False``, calls are plain JAX (``jax.grad`` stores every
        activation): handy for comparing memory and gradients.
      params: the layer's parameters, instead of ``x`` and ``key``
        (``Invertible(layer, params=params)``).

    Example:
        ```python
        stack = jaxinv.nn.rev_sequential(jaxinv.nn.AdditiveCoupling(hidden=(32,)), depth=8)
        body = Invertible(stack, jnp.ones((4, 16)), key=jax.random.key(0))
        grads = eqx.filter_grad(lambda m, x: jnp.sum(m(x) ** 2))(body, x)   # reversible backward pass
        ```
    """

    layer: Layer = eqx.field(static=True)
    params: Any
    reversible: bool = eqx.field(static=True)

    def __init__(self, layer: Layer, x: jax.Array | None = None, *, key: jax.Array | None = None,
                 reversible: bool = True, params: Any = None):
        if params is None:
            if x is None or key is None:
                raise TypeError("Invertible needs an example input `x` and a `key`, or `params`")
            params = layer.init(key, x)
        self.layer = layer
        self.params = params
        self.reversible = reversible

    def param_values(self) -> Any:
        """The layer's params (what ``layer.apply`` takes)."""
        return self.params
