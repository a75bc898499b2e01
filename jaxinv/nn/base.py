"""The contract every invertible layer of ``jaxinv.nn`` keeps.

Layers are small frozen dataclasses holding hyperparameters only; parameters
are pytrees passed explicitly, so a layer works in plain JAX, Flax NNX and
Equinox alike. The first axis of ``x`` is the batch; log-determinants are per
example (shape ``(batch,)``), like distrax's bijectors.

Example:
    ```python
    layer = AffineCoupling(hidden=64)
    params = layer.init(key, x)
    y = layer.apply(params, x)
    x_again = layer.inverse(params, y)
    y, log_det = layer.forward_and_log_det(params, x)     # log|det dy/dx| per example
    x, ildj = layer.inverse_and_log_det(params, y)        # log|det dx/dy| = -log_det
    ```
"""

from __future__ import annotations

from typing import Any

import jax

import jaxinv

Params = Any


class Layer:
    """Base class: subclasses define ``init``, ``forward_and_log_det`` and
    ``inverse_and_log_det``; ``apply``/``inverse`` drop the log-det (override
    them when the log-det costs extra work).

    A layer is a frozen dataclass of hyperparameters; its parameters are a
    pytree ``init`` returns and every other method takes. Written this way, a
    layer works functionally and inside ``jaxinv.nn.flax.Invertible`` or
    ``jaxinv.nn.equinox.Invertible`` alike.

    Example:
        ```python
        @dataclasses.dataclass(frozen=True)
        class Scale(jaxinv.nn.Layer):
            def init(self, key, x):
                return {"log_s": jnp.zeros(x.shape[-1:])}

            def forward_and_log_det(self, params, x):
                log_s = params["log_s"]
                return x * jnp.exp(log_s), jnp.broadcast_to(jnp.sum(log_s), x.shape[:1])

            def inverse_and_log_det(self, params, y):
                log_s = params["log_s"]
                return y * jnp.exp(-log_s), jnp.broadcast_to(-jnp.sum(log_s), y.shape[:1])
        ```
    """

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        """Parameters for inputs shaped like ``x`` (data-dependent layers, such
        as ActNorm, use ``x``'s values too)."""
        raise NotImplementedError

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        """``y = f(x)``."""
        return self.forward_and_log_det(params, x)[0]

    def __call__(self, params: Params, x: jax.Array) -> jax.Array:
        return self.apply(params, x)

    def inverse(self, params: Params, y: jax.Array) -> jax.Array:
        """``x = f^-1(y)``."""
        return self.inverse_and_log_det(params, y)[0]

    def forward_and_log_det(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(f(x), log|det df/dx|)``, the log-det per example."""
        raise NotImplementedError

    def inverse_and_log_det(self, params: Params, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(f^-1(y), log|det df^-1/dy|)``, the log-det per example."""
        raise NotImplementedError


class RunsLayer:
    """Mixin for framework wrappers (``jaxinv.nn.flax``, ``jaxinv.nn.equinox``)
    that hold a ``layer`` and its params: the four calls, each through
    ``jaxinv.invertible`` unless ``reversible`` is false. Subclasses define
    ``layer``, ``reversible`` and ``param_values()``."""

    def _run(self, method: str, x: jax.Array):
        fn, params = getattr(self.layer, method), self.param_values()
        if not self.reversible:
            return fn(params, x)
        # The params are closed over, not passed: jaxinv then treats them as known in
        # the backward pass (gradients still reach them) and plans to rebuild only x.
        return jaxinv.invertible(lambda x: fn(params, x))(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``y = f(x)``."""
        return self._run("apply", x)

    def inverse(self, y: jax.Array) -> jax.Array:
        """``x = f^-1(y)``."""
        return self._run("inverse", y)

    def forward_and_log_det(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(f(x), log|det df/dx|)``, the log-det per example."""
        return self._run("forward_and_log_det", x)

    def inverse_and_log_det(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(f^-1(y), log|det df^-1/dy|)``, the log-det per example."""
        return self._run("inverse_and_log_det", y)
