"""Elementwise invertible layers: Glow's ActNorm and an invertible leaky ReLU.

* ``ActNorm`` is an affine map per channel, ``y = (x + b) * exp(log_s)``:
  jaxinv inverts the ``add`` (``b`` known) and the ``mul`` (its factor is an
  ``exp`` output, so provably nonzero) equation by equation.
* ``LeakyReLU`` is a bijection for ``negative_slope > 0``, but written as
  ``jnp.where(x >= 0, x, a * x)`` its branch depends on the unknown ``x``, which
  no per-equation rule can invert. Its core is a ``jaxinv.custom_ivjp``
  whose rule reads the branch off the output (``y >= 0`` exactly when
  ``x >= 0``): ``x = where(y >= 0, y, y / a)``, ``ct_x = where(y >= 0, ct, a * ct)``,
  and whose log-det (for ``jaxinv.ildj``) is ``-log(a)`` per negative output.

Example:
    ```python
    layers = [ActNorm(), LeakyReLU(0.1)]
    params = [layer.init(key, x) for layer in layers]       # ActNorm: from x's statistics
    y = layers[1].apply(params[1], layers[0].apply(params[0], x))
    ```
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

import jaxinv
from jaxinv.nn.base import Layer, Params

__all__ = ["ActNorm", "LeakyReLU"]


def _per_example_sum(a: jax.Array) -> jax.Array:
    return jnp.sum(a.reshape(a.shape[0], -1), axis=1)


# ---------------------------------------------------------------- ActNorm


@dataclasses.dataclass(frozen=True)
class ActNorm(Layer):
    """Glow's activation normalisation (Kingma & Dhariwal 2018): a per-channel
    (last axis) affine map with data-dependent initialisation,

        y = (x + b) * exp(log_s),    log|det| = sum(log_s) * positions,

    where ``positions`` is the number of entries per channel in one example
    (1 for ``(batch, features)``, ``H * W`` for NHWC images).

    ``init(key, x)`` sets ``b = -mean(x)`` and ``log_s = -log(std(x) + eps)``
    over every axis but the last, so the output on that first batch has zero
    mean and unit variance per channel; afterwards ``b`` and ``log_s`` are
    ordinary trainable parameters (``{"bias", "log_scale"}``, shape
    ``(channels,)``). All state is in the params: ``init`` is the only place
    data statistics are read, and nothing is ever updated behind your back
    (no "initialised" flag, no second data-dependent step).

    Example:
        ```python
        layer = ActNorm()
        params = layer.init(jax.random.PRNGKey(0), x)        # x: (batch, h, w, c)
        y, log_det = layer.forward_and_log_det(params, x)    # y: per-channel mean 0, std 1
        x_again = layer.inverse(params, y)
        ```
    """
    eps: float = 1e-6

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        if x.ndim < 2:
            raise ValueError(f"ActNorm: expected (batch, ..., channels), got shape {x.shape}")
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axis=axes)
        std = jnp.std(x, axis=axes)
        return {"bias": -mean, "log_scale": -jnp.log(std + self.eps)}

    def _log_det(self, params: Params, x: jax.Array) -> jax.Array:
        positions = math.prod(x.shape[1:-1])
        ld = (jnp.sum(params["log_scale"]) * positions).astype(jnp.result_type(x))
        return jnp.broadcast_to(ld, x.shape[:1])

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        dtype = jnp.result_type(x)
        # exp(log_s) is provably nonzero, so jaxinv divides by it to rebuild x + b.
        return ((x + params["bias"].astype(dtype)) * jnp.exp(params["log_scale"].astype(dtype)))

    def forward_and_log_det(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.apply(params, x), self._log_det(params, x)

    def inverse(self, params: Params, y: jax.Array) -> jax.Array:
        dtype = jnp.result_type(y)
        return y * jnp.exp(-params["log_scale"].astype(dtype)) - params["bias"].astype(dtype)

    def inverse_and_log_det(self, params: Params, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.inverse(params, y), -self._log_det(params, y)


# ---------------------------------------------------------------- LeakyReLU


@functools.lru_cache(maxsize=None)
def _leaky_relu(slope: float) -> jaxinv.custom_ivjp:
    """The leaky ReLU with this slope as a ``custom_ivjp`` (one per slope, cached;
    the slope is a Python float, never a traced value, so the rules may close
    over it)."""

    def leaky_relu(x):
        return jnp.where(x >= 0, x, slope * x)

    f = jaxinv.custom_ivjp(leaky_relu)

    def leaky_relu_ildj(y):
        # log|dx/dy| is -log(slope) where y < 0 (x = y / slope) and 0 elsewhere,
        # summed over all elements: the count of negative outputs times -log(slope)
        # (counted on y, as the layer's own log-det is).
        dtype = jnp.result_type(y)
        return jnp.sum(y < 0).astype(dtype) * jnp.asarray(-math.log(slope), dtype)

    @f.definverse(ildj=leaky_relu_ildj)
    def leaky_relu_inverse(y):
        # slope > 0 keeps the sign: y >= 0 exactly where x >= 0, so each branch
        # inverts on its own half-line.
        return jnp.where(y >= 0, y, y / slope)

    @f.defivjp
    def leaky_relu_ivjp(xs, ys, cts):
        (x,) = xs
        if x is None:
            x = leaky_relu_inverse(ys)
        return (x,), (jnp.where(ys >= 0, cts, slope * cts),)

    return f


@dataclasses.dataclass(frozen=True)
class LeakyReLU(Layer):
    """An invertible leaky ReLU: ``y = x`` where ``x >= 0``, else
    ``negative_slope * x``; a bijection of the reals for ``negative_slope > 0``.

    ``log|det| = log(negative_slope) * #(x < 0)`` per example; no params
    (``init`` returns ``{}``). The inverse is ``x = y`` where ``y >= 0``, else
    ``y / negative_slope``. The core is a ``jaxinv.custom_ivjp`` with that
    inverse, its log-det and a fused ivjp (``ct_x = where(y >= 0, ct, slope * ct)``),
    so jaxinv's backward pass rebuilds ``x`` from ``y`` (a plain ``jnp.where`` on
    ``x`` would force it to save ``x``: the branch taken depends on the unknown)
    and ``jaxinv.inverse_and_ildj`` / ``jaxinv.ildj`` invert it too.

    Example:
        ```python
        layer = LeakyReLU(negative_slope=0.1)
        params = layer.init(jax.random.PRNGKey(0), x)       # {}
        y, log_det = layer.forward_and_log_det(params, x)   # log_det = log(0.1) * #(x < 0)
        x_again = layer.inverse(params, y)
        ```
    """
    negative_slope: float = 0.01

    def __post_init__(self):
        slope = self.negative_slope
        if not (isinstance(slope, (int, float)) and math.isfinite(slope) and slope > 0):
            raise ValueError(f"LeakyReLU: negative_slope must be a finite number > 0 to be invertible, got {slope!r}")

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        return {}

    def _log_det(self, negative: jax.Array, dtype) -> jax.Array:
        return _per_example_sum(jnp.where(negative, jnp.asarray(math.log(self.negative_slope), dtype),
                                          jnp.zeros((), dtype)))

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        return _leaky_relu(float(self.negative_slope))(x)

    def forward_and_log_det(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        y = self.apply(params, x)
        # Counted on y (y < 0 exactly where x < 0): when a loss needs the output
        # anyway, the log-det is recomputed from it and x is never kept for it.
        return y, self._log_det(y < 0, jnp.result_type(x))

    def inverse(self, params: Params, y: jax.Array) -> jax.Array:
        # The inverse is itself a leaky ReLU (slope 1 / a), so jaxinv can run
        # the flow backwards reversibly too (e.g. sampling).
        return _leaky_relu(1.0 / float(self.negative_slope))(y)

    def inverse_and_log_det(self, params: Params, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.inverse(params, y), -self._log_det(y < 0, jnp.result_type(y))
