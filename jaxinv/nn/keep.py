"""``KeepInput``: a layer whose input the reversible backward pass stores.

MemCNN's ``keep_input`` switch, for any ``jaxinv.nn`` layer: the wrapped
layer is differentiated by JAX from its stored input instead of being
inverted (``jaxinv.keep_input``), and the layers before it are rebuilt
starting from that exact value. Its inverse is the layer's own.

Example:
    ```python
    flow = Sequential((AdditiveCoupling(), KeepInput(AdditiveCoupling()), AdditiveCoupling()))
    params = flow.init(key, x)
    grads = jaxinv.grad(lambda p, x: jnp.sum(flow.apply(p, x) ** 2))(params, x)
    ```
"""

from __future__ import annotations

import dataclasses

import jax

import jaxinv
from jaxinv.nn.base import Layer, Params

__all__ = ["KeepInput"]


@dataclasses.dataclass(frozen=True)
class KeepInput(Layer):
    """``layer``, with its input stored by the backward pass and its gradient
    taken by JAX (plain AD for this layer; one stored input per call).

    Use it where drift should restart from an exact value, or to turn
    reversibility off for one layer while debugging against plain AD.
    ``init``, ``inverse`` and ``inverse_and_log_det`` are the layer's own.

    Example:
        ```python
        layer = KeepInput(AffineCoupling(hidden=(32,)))
        params = layer.init(key, x)
        y, log_det = layer.forward_and_log_det(params, x)
        ```
    """
    layer: Layer

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        return self.layer.init(key, x)

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        return jaxinv.keep_input(lambda x: self.layer.apply(params, x))(x)

    def forward_and_log_det(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jaxinv.keep_input(lambda x: self.layer.forward_and_log_det(params, x))(x)

    def inverse(self, params: Params, y: jax.Array) -> jax.Array:
        return self.layer.inverse(params, y)

    def inverse_and_log_det(self, params: Params, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.layer.inverse_and_log_det(params, y)
