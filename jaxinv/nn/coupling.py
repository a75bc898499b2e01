"""Coupling layers: RevNet's additive coupling and RealNVP/Glow's affine coupling.

Both split ``x`` in two halves along the last axis (``jnp.split``, which
jaxinv inverts, never a slice), transform one half with a function of the
other, and join them again (``jnp.concatenate``). The functions of the other
half (residual functions, conditioners) may be anything (ReLU networks,
attention): jaxinv only ever *recomputes* them forward from a half it has
already rebuilt, so a deep stack of couplings keeps nothing but its
parameters and outputs for the backward pass.

A residual function or conditioner is given as a *module*: any object with
``init(key, x) -> params`` and ``apply(params, x) -> y`` (``MLP``, a
``jaxinv.nn.base.Layer``, a ``flax.linen`` module), or a pair of
functions ``(init_fn, apply_fn)``.

Example:
    ```python
    layer = AffineCoupling()                                  # default MLP conditioner
    params = layer.init(jax.random.PRNGKey(0), x)             # starts as the identity
    y, log_det = layer.forward_and_log_det(params, x)
    x_again = layer.inverse(params, y)
    ```
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxinv.nn.base import Layer, Params
from jaxinv.nn.exact import check_exact_stream, to_grid

__all__ = ["MLP", "AdditiveCoupling", "AffineCoupling"]


@dataclasses.dataclass(frozen=True)
class MLP:
    """A small multilayer perceptron on the last axis, the couplings' default
    residual function / conditioner.

    ``hidden`` are the hidden widths (one int for one hidden layer); ``out`` the output width (``None``: the
    input's). Weights are initialised ``normal / sqrt(fan_in)``, biases zero;
    ``last_scale`` multiplies the last layer's weights: ``0.0`` makes the MLP
    output zero at initialisation (a coupling then starts as the identity, as
    in Glow), small values keep a deep stack of residual couplings near the
    identity. Params are a tuple of ``(w, b)`` pairs, in the input's dtype.

    Example:
        ```python
        mlp = MLP(hidden=(32,), out=6)
        p = mlp.init(jax.random.PRNGKey(0), jnp.ones((4, 3)))
        mlp.apply(p, jnp.ones((4, 3))).shape        # (4, 6)
        ```
    """
    hidden: tuple[int, ...] = (64,)
    out: int | None = None
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu
    last_scale: float = 1.0

    def __post_init__(self):
        if isinstance(self.hidden, int):
            object.__setattr__(self, "hidden", (self.hidden,))

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        """``((w, b), ...)`` per layer, for inputs shaped like ``x``."""
        dtype = jnp.result_type(x)
        sizes = [x.shape[-1], *self.hidden, self.out if self.out is not None else x.shape[-1]]
        keys = jax.random.split(key, len(sizes) - 1)
        params = []
        for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
            w = jax.random.normal(k, (n_in, n_out), dtype) / math.sqrt(n_in)
            if i == len(sizes) - 2:
                w = w * jnp.asarray(self.last_scale, dtype)
            params.append((w, jnp.zeros((n_out,), dtype)))
        return tuple(params)

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        """The perceptron's output on the last axis of ``x``."""
        for i, (w, b) in enumerate(params):
            x = x @ w + b
            if i < len(params) - 1:
                x = self.activation(x)
        return x

    def __call__(self, params: Params, x: jax.Array) -> jax.Array:
        return self.apply(params, x)


def _module(m: Any, what: str) -> tuple[Callable, Callable]:
    """``(init, apply)`` of a module: an object with ``init``/``apply`` or a pair of functions."""
    if isinstance(m, tuple) and len(m) == 2 and all(callable(f) for f in m):
        return m
    if hasattr(m, "init") and hasattr(m, "apply"):
        return m.init, m.apply
    raise TypeError(f"{what} must have init(key, x) and apply(params, x), or be a pair "
                    f"(init_fn, apply_fn); got {m!r}")


def _split_size(split: int | None, d: int, name: str) -> int:
    k = d // 2 if split is None else split
    if not 0 < k < d:
        raise ValueError(f"{name}: cannot split a last axis of size {d} at {k}")
    return k


def _halves(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    # jnp.split (the `split` primitive) is inverted by concatenation; slices are not.
    x1, x2 = jnp.split(x, [k], axis=-1)
    return x1, x2


def _per_example_sum(a: jax.Array) -> jax.Array:
    return jnp.sum(a.reshape(a.shape[0], -1), axis=1)


@dataclasses.dataclass(frozen=True)
class AdditiveCoupling(Layer):
    """RevNet's additive coupling (Gomez et al. 2017): with ``x = (x1, x2)``
    split on the last axis,

        y1 = x1 + F(x2),    y2 = x2 + G(y1),    log|det| = 0.

    The inverse is ``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``. ``f`` and ``g``
    are modules (see the module docstring) called as ``F(params_f, x2)`` and
    ``G(params_g, y1)``, initialised on the half they read (``f.init(key, x2)``,
    ``g.init(key, x1)``); ``F`` must map ``x2``'s shape to ``x1``'s and ``G``
    the reverse. ``exact_bits=b`` turns on exact mode (``jaxinv.nn.exact``):
    ``F`` and ``G``'s outputs are rounded to multiples of ``2 ** -b``, so that
    a stream on that grid (``jaxinv.nn.to_grid``) is rebuilt bit for bit. ``None`` (default) uses an ``MLP`` with ``hidden``
    widths, its last layer scaled by ``init_scale`` (so that a deep stack starts
    near the identity and stays well conditioned). ``split`` is the size of ``x1`` (default: half the last axis,
    rounded down). Params: ``{"f": params_f, "g": params_g}``.

    jaxinv inverts the plainly written block: ``G(y1)`` is recomputed from the
    known ``y1`` before ``add`` is inverted, then ``F(x2)`` from the rebuilt ``x2``.

    Example:
        ```python
        layer = AdditiveCoupling(hidden=(32,))
        params = layer.init(jax.random.PRNGKey(0), x)         # x: (batch, 8)
        y = layer.apply(params, x)
        x_again = layer.inverse(params, y)

        # your own residual functions, as (init_fn, apply_fn) pairs
        dense = (lambda key, h: jax.random.normal(key, (h.shape[-1], h.shape[-1])) * 0.1,
                 lambda w, h: jnp.tanh(h @ w))
        layer = AdditiveCoupling(f=dense, g=dense)
        ```
    """
    f: Any = None
    g: Any = None
    hidden: tuple[int, ...] = (64,)
    split: int | None = None
    init_scale: float = 0.1
    exact_bits: int | None = None

    def _fg(self, d1: int, d2: int):
        default = lambda d: MLP(self.hidden, d, last_scale=self.init_scale)
        f = _module(self.f, "AdditiveCoupling.f") if self.f is not None else _module(default(d1), "")
        g = _module(self.g, "AdditiveCoupling.g") if self.g is not None else _module(default(d2), "")
        return f, g

    def _residuals(self, x1, x2):
        """``F(params, x2)`` and ``G(params, y1)``, rounded onto the grid in exact mode, in the stream's dtype."""
        (_, f), (_, g) = self._fg(x1.shape[-1], x2.shape[-1])
        if self.exact_bits is None:
            return f, g
        check_exact_stream(x1, self.exact_bits, "AdditiveCoupling")   # both halves of one array: one dtype
        on_grid = lambda fn: lambda p, h: to_grid(fn(p, h).astype(x1.dtype), self.exact_bits)
        return on_grid(f), on_grid(g)

    def _k(self, x):
        return _split_size(self.split, x.shape[-1], "AdditiveCoupling")

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        x1, x2 = _halves(x, self._k(x))
        (f_init, _), (g_init, _) = self._fg(x1.shape[-1], x2.shape[-1])
        kf, kg = jax.random.split(key)
        return {"f": f_init(kf, x2), "g": g_init(kg, x1)}

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        x1, x2 = _halves(x, self._k(x))
        f, g = self._residuals(x1, x2)
        y1 = x1 + f(params["f"], x2)
        y2 = x2 + g(params["g"], y1)
        return jnp.concatenate([y1, y2], axis=-1)

    def inverse(self, params: Params, y: jax.Array) -> jax.Array:
        y1, y2 = _halves(y, self._k(y))
        f, g = self._residuals(y1, y2)
        x2 = y2 - g(params["g"], y1)
        x1 = y1 - f(params["f"], x2)
        return jnp.concatenate([x1, x2], axis=-1)

    def forward_and_log_det(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.apply(params, x), jnp.zeros(x.shape[:1], jnp.result_type(x))

    def inverse_and_log_det(self, params: Params, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.inverse(params, y), jnp.zeros(y.shape[:1], jnp.result_type(y))


_SCALES = ("sigmoid", "exp")


@dataclasses.dataclass(frozen=True)
class AffineCoupling(Layer):
    """RealNVP / Glow's affine coupling (Dinh et al. 2017, Kingma & Dhariwal
    2018): with ``x = (x1, x2)`` split on the last axis and
    ``(shift, raw) = split(conditioner(x1))``,

        y1 = x1,    y2 = x2 * scale(raw) + shift,    log|det| = sum(log scale(raw)).

    ``scale="sigmoid"`` (default, Glow): ``scale = sigmoid(raw + 2)``, in (0, 1),
    near 0.88 at initialisation. ``scale="exp"`` (FrEIA's soft clamp):
    ``scale = exp(clamp * tanh(raw / clamp))``, in ``[e^-clamp, e^clamp]``.
    Both are provably nonzero (outputs of ``logistic``/``exp``), so jaxinv
    inverts the layer equation by equation: ``x1 = y1``, the conditioner is
    recomputed from it, and ``x2 = (y2 - shift) / scale``.

    ``swap=True`` exchanges the roles of the halves (``x2`` conditions ``x1``),
    so alternating ``swap`` in a stack transforms both halves. ``split`` is the
    size of the first half (default: half the last axis, rounded down).

    ``conditioner`` is a module (see the module docstring) mapping the
    conditioning half (``..., d_c``) to ``(..., 2 * d_t)`` for a transformed
    half of width ``d_t``: shift first, raw scale second. ``None`` (default)
    uses an ``MLP`` with ``hidden`` widths and a zero last layer, so the
    layer starts as ``y2 = sigmoid(2) * x2`` (Glow) or the identity
    (``scale="exp"``). Params: ``{"conditioner": params}``.

    Example:
        ```python
        layer = AffineCoupling(hidden=(32,), swap=True, scale="exp", clamp=2.0)
        params = layer.init(jax.random.PRNGKey(0), x)          # x: (batch, 8)
        y, log_det = layer.forward_and_log_det(params, x)      # log_det: (batch,)
        x_again, ildj = layer.inverse_and_log_det(params, y)   # ildj == -log_det
        ```
    """
    conditioner: Any = None
    hidden: tuple[int, ...] = (64,)
    scale: str = "sigmoid"
    clamp: float = 2.0
    swap: bool = False
    split: int | None = None

    def __post_init__(self):
        if self.scale not in _SCALES:
            raise ValueError(f"AffineCoupling.scale must be one of {_SCALES}, got {self.scale!r}")
        if not self.clamp > 0:
            raise ValueError(f"AffineCoupling.clamp must be positive, got {self.clamp}")

    def _k(self, x):
        return _split_size(self.split, x.shape[-1], "AffineCoupling")

    def _parts(self, x):
        """(conditioning half, transformed half, join) for ``x``."""
        a, b = _halves(x, self._k(x))
        if self.swap:
            return b, a, lambda c, t: jnp.concatenate([t, c], axis=-1)
        return a, b, lambda c, t: jnp.concatenate([c, t], axis=-1)

    def _cond(self, d_t: int):
        if self.conditioner is not None:
            return _module(self.conditioner, "AffineCoupling.conditioner")
        return _module(MLP(self.hidden, 2 * d_t, last_scale=0.0), "")

    def _scale_and_log(self, params, c, d_t):
        h = self._cond(d_t)[1](params["conditioner"], c)
        if h.shape[-1] != 2 * d_t:
            raise ValueError(f"AffineCoupling: the conditioner must output 2 * {d_t} features "
                             f"(shift, raw scale), got shape {h.shape}")
        shift, raw = jnp.split(h, 2, axis=-1)
        if self.scale == "sigmoid":
            s = jax.nn.sigmoid(raw + 2.0)
            log_s = jax.nn.log_sigmoid(raw + 2.0)
        else:
            log_s = self.clamp * jnp.tanh(raw / self.clamp)
            s = jnp.exp(log_s)
        return s, shift, log_s

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        c, t, _ = self._parts(x)
        return {"conditioner": self._cond(t.shape[-1])[0](key, c)}

    def forward_and_log_det(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        c, t, join = self._parts(x)
        s, shift, log_s = self._scale_and_log(params, c, t.shape[-1])
        return join(c, t * s + shift), _per_example_sum(log_s)

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        c, t, join = self._parts(x)
        s, shift, _ = self._scale_and_log(params, c, t.shape[-1])
        return join(c, t * s + shift)

    def inverse_and_log_det(self, params: Params, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        c, t, join = self._parts(y)
        s, shift, log_s = self._scale_and_log(params, c, t.shape[-1])
        return join(c, (t - shift) / s), -_per_example_sum(log_s)
