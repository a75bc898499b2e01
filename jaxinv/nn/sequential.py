"""Stacks of invertible layers: ``Sequential`` (any layers, unrolled) and
``RevSequential`` (one layer repeated, run with ``lax.scan``).

Both are ``jaxinv.nn.base.Layer``\\ s: a stack's log-det is the sum of its
layers', its inverse runs the layers' inverses in reverse order.

``Sequential`` unrolls: its jaxpr, and so tracing and compile time, grow with
depth (memory under ``jaxinv.grad`` stays flat). ``RevSequential`` stacks the
parameters of ``depth`` copies of one layer along a leading axis and scans
over them; jaxinv inverts the scan by a reverse scan of the inverted body, so
memory *and* compile time stay flat in depth.

Example:
    ```python
    flow = Sequential((AffineCoupling(), AffineCoupling(swap=True), AdditiveCoupling()))
    params = flow.init(jax.random.PRNGKey(0), x)                # a tuple, one entry per layer
    y, log_det = flow.forward_and_log_det(params, x)

    deep = rev_sequential(ReversibleTransformerBlock(32, 4, 64), depth=48)
    params = deep.init(jax.random.PRNGKey(0), x)                # leaves with a leading axis of 48
    grads = jaxinv.grad(lambda p, x: jnp.sum(deep.apply(p, x) ** 2))(params, x)
    ```
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from jaxinv.nn.base import Layer, Params

__all__ = ["Sequential", "RevSequential", "rev_sequential"]


def _zero_log_det(x: jax.Array) -> jax.Array:
    return jnp.zeros(x.shape[:1], jnp.result_type(x))


@dataclasses.dataclass(frozen=True)
class Sequential(Layer):
    """A stack of (possibly different) layers, applied in order.

    Params are a tuple with one entry per layer; the log-det is the sum of the
    layers' log-dets; the inverse applies the layers' inverses in reverse.
    ``init`` initialises each layer on the previous layer's output at
    initialisation, so data-dependent inits (ActNorm) see their real inputs.

    Example:
        ```python
        flow = Sequential((AffineCoupling(hidden=(32,)), AffineCoupling(hidden=(32,), swap=True)))
        params = flow.init(jax.random.PRNGKey(0), x)
        y, log_det = flow.forward_and_log_det(params, x)
        x_again = flow.inverse(params, y)
        ```
    """
    layers: tuple[Layer, ...]

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))

    def _check(self, params):
        if len(params) != len(self.layers):
            raise ValueError(f"Sequential of {len(self.layers)} layers got {len(params)} parameter entries")

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        params = []
        for layer, k in zip(self.layers, jax.random.split(key, len(self.layers))):
            p = layer.init(k, x)
            x = layer.apply(p, x)
            params.append(p)
        return tuple(params)

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        self._check(params)
        for layer, p in zip(self.layers, params):
            x = layer.apply(p, x)
        return x

    def inverse(self, params: Params, y: jax.Array) -> jax.Array:
        self._check(params)
        for layer, p in zip(reversed(self.layers), reversed(tuple(params))):
            y = layer.inverse(p, y)
        return y

    def forward_and_log_det(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        self._check(params)
        total = _zero_log_det(x)
        for layer, p in zip(self.layers, params):
            x, ld = layer.forward_and_log_det(p, x)
            total = total + ld
        return x, total

    def inverse_and_log_det(self, params: Params, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        self._check(params)
        total = _zero_log_det(y)
        for layer, p in zip(reversed(self.layers), reversed(tuple(params))):
            y, ld = layer.inverse_and_log_det(p, y)
            total = total + ld
        return y, total


@dataclasses.dataclass(frozen=True)
class RevSequential(Layer):
    """``depth`` copies of one layer with their own parameters, run with
    ``lax.scan``: memory and compile time flat in depth under ``jaxinv.grad``.

    Params are the layer's params with every leaf stacked along a new leading
    axis of size ``depth`` (slice ``jax.tree.map(lambda a: a[i], params)`` for
    layer ``i``). ``init`` scans too: layer ``i`` is initialised on layer
    ``i - 1``'s output at initialisation (data-dependent inits see their real
    inputs), with key ``i`` of ``jax.random.split(key, depth)``. The log-det
    is summed in the scan's carry, which jaxinv rebuilds by subtraction.
    Inside the scan the layer sees each slice of the params, so the layer's
    code must work on traced values (no Python control flow on them).

    ``unroll`` is passed to ``lax.scan`` (speed vs compile time).

    Example:
        ```python
        stack = RevSequential(AffineCoupling(hidden=(32,), swap=True), depth=16)
        params = stack.init(jax.random.PRNGKey(0), x)
        y, log_det = stack.forward_and_log_det(params, x)
        g = jaxinv.grad(lambda p, x: jnp.sum(stack.apply(p, x) ** 2))(params, x)
        ```
    """
    layer: Layer
    depth: int
    unroll: int = 1

    def __post_init__(self):
        if not (isinstance(self.depth, int) and self.depth >= 1):
            raise ValueError(f"RevSequential.depth must be a positive int, got {self.depth!r}")

    def _check(self, params):
        sizes = {jnp.shape(a)[0] if jnp.ndim(a) else None for a in jax.tree_util.tree_leaves(params)}
        if sizes and sizes != {self.depth}:
            raise ValueError(f"RevSequential(depth={self.depth}) expects params stacked along a leading "
                             f"axis of size {self.depth}, got leading sizes {sorted(sizes, key=str)}")

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        def step(x, k):
            p = self.layer.init(k, x)
            return self.layer.apply(p, x), p

        _, params = lax.scan(step, x, jax.random.split(key, self.depth))
        return params

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        self._check(params)
        y, _ = lax.scan(lambda x, p: (self.layer.apply(p, x), None), x, params,
                        length=self.depth, unroll=self.unroll)
        return y

    def inverse(self, params: Params, y: jax.Array) -> jax.Array:
        self._check(params)
        x, _ = lax.scan(lambda y, p: (self.layer.inverse(p, y), None), y, params,
                        reverse=True, length=self.depth, unroll=self.unroll)
        return x

    def forward_and_log_det(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        self._check(params)
        return self._scan_with_log_det(self.layer.forward_and_log_det, params, x, reverse=False)

    def inverse_and_log_det(self, params: Params, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        self._check(params)
        return self._scan_with_log_det(self.layer.inverse_and_log_det, params, y, reverse=True)

    def _scan_with_log_det(self, step_and_log_det, params, z, reverse):
        def step(carry, p):
            z, total = carry
            z, ld = step_and_log_det(p, z)
            return (z, total + ld), None

        (z, total), _ = lax.scan(step, (z, _zero_log_det(z)), params, reverse=reverse,
                                 length=self.depth, unroll=self.unroll)
        return z, total


def rev_sequential(layer: Layer, depth: int, unroll: int = 1) -> RevSequential:
    """``depth`` scanned copies of ``layer``: shorthand for
    ``RevSequential(layer, depth, unroll)``.

    Example:
        ```python
        net = rev_sequential(AdditiveCoupling(hidden=(64,)), depth=32)
        params = net.init(jax.random.PRNGKey(0), x)
        y = net.apply(params, x)
        ```
    """
    return RevSequential(layer, depth, unroll)
