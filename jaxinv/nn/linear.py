"""Invertible linear layers on the last (channel) axis: Glow's LU-parametrised
dense layer and 1x1 convolution, and a product of Householder reflections.

All three act on every position of ``x`` (``(batch, ..., channels)``) with one
square matrix ``W``: ``y = x @ W``. Their log-determinant is
``log|det W|`` times the number of positions (1 for ``(batch, features)``,
``H * W`` for NHWC images).

How jaxinv inverts them in a reversible backward pass:

* ``InvertibleDense`` / ``InvertibleConv1x1`` build ``W`` from their
  parameters and mark it with ``jaxinv.nonzero`` (read as "nonsingular":
  its LU factors have a unit and an ``exp``-diagonal, so it is by
  construction). jaxinv's ``dot_general`` / ``conv_general_dilated`` rules then
  solve ``x = y W^-1`` instead of saving ``x``; ``W`` is recomputed from the
  parameters.
* ``Householder`` is a ``jaxinv.custom_ivjp`` whose rule applies the
  reflections in reverse order (each is its own inverse): no solve at all; its
  log-det (for ``jaxinv.ildj``) is 0, the map being orthogonal.

Example:
    ```python
    layer = InvertibleConv1x1()
    params = layer.init(jax.random.PRNGKey(0), x)       # x: (batch, h, w, c)
    y, log_det = layer.forward_and_log_det(params, x)
    x_again = layer.inverse(params, y)
    ```
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxinv
from jaxinv.nn.base import Layer, Params

__all__ = ["InvertibleDense", "InvertibleConv1x1", "Householder"]


def _positions(x: jax.Array) -> int:
    """How many times the channel map is applied per example (all axes but
    the batch and the last)."""
    return math.prod(x.shape[1:-1])


def _per_example(value: jax.Array, x: jax.Array) -> jax.Array:
    """A log-det that is the same for every example, shaped ``(batch,)``."""
    return jnp.broadcast_to(value.astype(jnp.result_type(x)), x.shape[:1])


def _random_orthogonal(key: jax.Array, n: int, dtype) -> jax.Array:
    """A Haar-random orthogonal matrix (QR of a Gaussian with R's signs fixed)."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (n, n), dtype))
    return q * jnp.sign(jnp.diag(r))


@functools.partial(jax.jit, static_argnums=(1, 2))  # one XLA program, not a dozen eager ops
def _orthogonal_lu(key: jax.Array, n: int, dtype) -> jax.Array:
    """The packed ``lu`` parameter of a random rotation: ``Q[perm_q] = L U``."""
    # Partial pivoting (|L| <= 1); LAPACK packs L and U as we do.
    packed, _, _ = lax.linalg.lu(_random_orthogonal(key, n, dtype))
    diag = jnp.diagonal(packed)
    # U D with D = diag(sign(diag U)) (scales U's columns): a positive diagonal
    # exp(log_s), and P L U D stays orthogonal.
    upper = jnp.triu(packed, 1) * jnp.sign(diag)
    return jnp.tril(packed, -1) + upper + jnp.diag(jnp.log(jnp.abs(diag)))


@functools.lru_cache(maxsize=None)
def _row_order(n: int, seed: int) -> np.ndarray:
    """The fixed permutation ``P`` as row indices, ``P @ A == A[perm]``: a NumPy
    constant recomputed from the layer's ``seed``, never a parameter. int32:
    int64 indices trip JAX's index normalisation when x64 is switched on and off."""
    perm = np.random.default_rng(seed).permutation(n).astype(np.int32)
    perm.flags.writeable = False
    return perm


@functools.lru_cache(maxsize=None)
def _permutation(n: int, seed: int) -> np.ndarray:
    """``P`` as a matrix, for the data side of the inverse: a product by a
    constant, which jaxinv solves (it never inverts a gather). On the parameter
    side ``W = A[perm]`` is a gather on purpose: a gather is not invertible, so
    jaxinv's planner treats ``W`` as a parameter to recompute (with ``P @ A``
    it solved its way back into the parameters and kept the last ``W``)."""
    p = np.eye(n)[_row_order(n, seed)]
    p.flags.writeable = False
    return p


def _check_channels(name: str, expected: int | None, x: jax.Array) -> int:
    if x.ndim < 2:
        raise ValueError(f"{name}: expected (batch, ..., channels), got shape {x.shape}")
    c = x.shape[-1]
    if expected is not None and c != expected:
        raise ValueError(f"{name}: built for {expected} features, got inputs of shape {x.shape}")
    return c


class _LU(Layer):
    """Shared by the LU-parametrised layers:

        W = P @ L @ (U + diag(exp(log_s))),    log|det W| = sum(log_s),

    ``P`` a fixed permutation, ``L`` unit lower-triangular, ``U`` strictly
    upper-triangular. The three trainable factors are packed in one square
    parameter ``params["lu"]``, as LAPACK packs an LU factorisation: its
    strictly lower triangle is ``L``'s, its strictly upper triangle ``U``'s,
    its diagonal ``log_s``. One leaf, not three, matters to jaxinv: ``W`` is
    then a function of a single parameter, which the planner recognises as a
    parameter and recomputes; built from three leaves, the planner's
    parameter/data heuristic classified ``W``'s intermediates (and, in a
    stack, even activations) as values to save.

    Why no ``sign_s`` and where ``P`` lives. Glow keeps two non-trainable
    buffers, ``P`` and ``sign(s)``. Parameters here are plain pytrees handed to
    ``jax.grad`` and optax, where an integer leaf breaks ``jax.grad`` and a
    float "constant" leaf would still be moved by weight decay. So:

    * ``P`` is recomputed from the ``seed`` hyperparameter (a NumPy permutation,
      a constant in the jaxpr, applied to ``W``'s rows on the parameter path);
    * ``init`` takes a Haar-random orthogonal ``Q``, its pivoted LU
      ``Q = P_q L U``, and keeps ``L``, ``U`` and ``log|diag U|``: then
      ``W_0 = P P_q^T Q D`` (``D = diag(sign(diag U))``) is itself orthogonal,
      a signed permutation of ``Q``, hence as well conditioned. The signs of
      ``diag U`` are absorbed into ``W_0``'s columns instead of being stored
      (``det W`` keeps ``det P``'s sign during training, as with Glow's fixed
      ``sign_s``).

    Subclasses are frozen dataclasses with a ``seed`` field.
    """

    seed: int
    _name = "LU layer"

    def _features(self) -> int | None:
        return None

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        n = _check_channels(self._name, self._features(), x)
        dtype = jnp.result_type(x)
        if not jnp.issubdtype(dtype, jnp.floating):
            dtype = jnp.result_type(float)
        # QR / LU run in at least float32 (none for bfloat16), the result in x's dtype
        work = np.dtype(jnp.promote_types(dtype, jnp.float32))
        return {"lu": _orthogonal_lu(key, n, work).astype(dtype)}

    @staticmethod
    def factors(params: Params) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(L, U + diag(exp(log_s)), log_s)`` unpacked from ``params["lu"]``."""
        lu = params["lu"]
        log_s = jnp.diagonal(lu)
        lower = jnp.tril(lu, -1) + jnp.eye(lu.shape[-1], dtype=lu.dtype)
        upper = jnp.triu(lu, 1) + jnp.diag(jnp.exp(log_s))
        return lower, upper, log_s

    def weight(self, params: Params, dtype=None) -> jax.Array:
        """``W = P @ L @ (U + diag(exp(log_s)))``, in ``dtype`` (default: the params')."""
        lower, upper, _ = self.factors(params)
        w = (lower @ upper)[_row_order(lower.shape[-1], self.seed)]  # P @ A
        return w if dtype is None else w.astype(dtype)

    def _log_det(self, params: Params, x: jax.Array) -> jax.Array:
        return _per_example(jnp.sum(jnp.diagonal(params["lu"])) * _positions(x), x)

    def _solve(self, params: Params, y: jax.Array) -> jax.Array:
        """``x = y @ W^-1``: ``x P L U' = y`` by two triangular solves and a permutation."""
        lower, upper, _ = self.factors(params)
        shape, dtype = y.shape, jnp.result_type(y)
        work = jnp.promote_types(dtype, upper.dtype)
        lower, upper = lower.astype(work), upper.astype(work)
        z = y.reshape(-1, shape[-1]).astype(work)
        z = lax.linalg.triangular_solve(upper, z, left_side=False, lower=False)  # w U' = y
        z = lax.linalg.triangular_solve(lower, z, left_side=False, lower=True, unit_diagonal=True)  # v L = w
        # x = v P^T (a product by a constant, so jaxinv inverts this direction
        # too: sampling a flow is reversible as well)
        perm = jnp.asarray(_permutation(shape[-1], self.seed).T, z.dtype)
        z = jnp.matmul(z, perm, precision=lax.Precision.HIGHEST)
        return z.astype(dtype).reshape(shape)

    def inverse_and_log_det(self, params: Params, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        _check_channels(self._name, self._features(), y)
        return self._solve(params, y), -self._log_det(params, y)

    def inverse(self, params: Params, y: jax.Array) -> jax.Array:
        _check_channels(self._name, self._features(), y)
        return self._solve(params, y)


@dataclasses.dataclass(frozen=True)
class InvertibleDense(_LU):
    """An invertible dense layer on the last axis, ``y = x @ W``, with Glow's
    LU parametrisation ``W = P @ L @ (U + diag(exp(log_s)))``.

    ``features`` is the size of the last axis. ``P`` is a fixed permutation
    recomputed from ``seed`` (not a parameter, see below); params are
    ``{"lu": (features, features)}``, the three factors packed as LAPACK does
    (strictly lower triangle: ``L``; strictly upper: ``U``; diagonal:
    ``log_s``; ``factors`` unpacks them). ``init`` starts from a random
    orthogonal matrix, so the layer is well conditioned (``log_det == 0``).
    ``log|det| = sum(log_s)`` per position (one for ``(batch, features)``;
    ``x`` may have more axes between the batch and the features).

    jaxinv rebuilds ``x`` from ``y`` by solving with ``W`` (``W`` is marked
    with ``jaxinv.nonzero``, nonsingular by construction); ``inverse``
    itself uses two triangular solves.

    Why ``P`` is recomputed, not stored: params are plain pytrees for
    ``jax.grad`` and optax, where an integer leaf breaks ``jax.grad`` and a
    float "constant" leaf would still be moved by weight decay. Glow's other
    buffer, ``sign(diag U)``, is not needed either: ``init`` absorbs those
    signs into the columns of its random orthogonal start (still orthogonal).

    Example:
        ```python
        layer = InvertibleDense(8)
        params = layer.init(jax.random.PRNGKey(0), x)       # x: (batch, 8)
        y, log_det = layer.forward_and_log_det(params, x)   # log_det: (batch,)
        x_again = layer.inverse(params, y)
        ```
    """
    features: int = None  # type: ignore[assignment]
    seed: int = 0

    _name = "InvertibleDense"

    def __post_init__(self):
        if not isinstance(self.features, int) or self.features < 1:
            raise ValueError(f"InvertibleDense: features must be a positive int, got {self.features!r}")

    def _features(self) -> int | None:
        return self.features

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        _check_channels(self._name, self.features, x)
        # W is nonsingular by construction: the marker lets jaxinv solve x = y W^-1.
        return x @ jaxinv.nonzero(self.weight(params, jnp.result_type(x)))

    def forward_and_log_det(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.apply(params, x), self._log_det(params, x)


@dataclasses.dataclass(frozen=True)
class InvertibleConv1x1(_LU):
    """Glow's invertible 1x1 convolution on NHWC images (Kingma & Dhariwal
    2018): at every pixel ``y[b, i, j] = x[b, i, j] @ W``, with the LU
    parametrisation ``W = P @ L @ (U + diag(exp(log_s)))`` of
    ``InvertibleDense`` (same params, same fixed ``P`` from ``seed``).

    ``log|det| = H * W * sum(log_s)`` per example. The forward is a
    ``lax.conv_general_dilated`` with a 1x1 ``HWIO`` kernel marked with
    ``jaxinv.nonzero``, which jaxinv's convolution rule inverts by solving
    with ``W`` at every pixel. ``init`` starts from a random rotation.

    Example:
        ```python
        layer = InvertibleConv1x1()
        params = layer.init(jax.random.PRNGKey(0), x)       # x: (batch, h, w, c)
        y, log_det = layer.forward_and_log_det(params, x)   # log_det = h * w * sum(log_s)
        x_again = layer.inverse(params, y)
        ```
    """
    seed: int = 0

    _name = "InvertibleConv1x1"

    def _check(self, x):
        if x.ndim != 4:
            raise ValueError(f"InvertibleConv1x1: expected NHWC images (batch, h, w, c), got shape {x.shape}")

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        self._check(x)
        return super().init(key, x)

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        self._check(x)
        c = x.shape[-1]
        kernel = self.weight(params, jnp.result_type(x)).reshape(1, 1, c, c)
        kernel = jaxinv.nonzero(kernel)  # nonsingular over (I, O): jaxinv solves with it at every pixel
        return lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def forward_and_log_det(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.apply(params, x), self._log_det(params, x)

    def inverse_and_log_det(self, params: Params, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        self._check(y)
        return super().inverse_and_log_det(params, y)

    def inverse(self, params: Params, y: jax.Array) -> jax.Array:
        self._check(y)
        return super().inverse(params, y)


# ---------------------------------------------------------------- Householder


def _reflect(x: jax.Array, vs: jax.Array, reverse: bool) -> jax.Array:
    """``x @ H_1 @ ... @ H_k`` (or ``x @ H_k @ ... @ H_1`` with ``reverse``),
    ``H_i = I - 2 v_i v_i^T / |v_i|^2``, one reflection at a time: O(k n) per row."""
    order = range(vs.shape[0] - 1, -1, -1) if reverse else range(vs.shape[0])
    for i in order:
        v = vs[i]
        x = x - (2.0 * (x @ v) / jnp.sum(v * v))[..., None] * v
    return x


def _reflections(reverse: bool) -> jaxinv.custom_ivjp:
    """``x @ H_1 ... H_k`` (or, ``reverse``, ``x @ H_k ... H_1 = x @ W^T``) as a
    ``custom_ivjp`` whose rule applies the reflections in the other order."""

    def reflect(x, vs):
        return _reflect(x, vs.astype(jnp.result_type(x)), reverse)

    f = jaxinv.custom_ivjp(reflect)

    # The map is orthogonal: log|det dx/dy| = 0 whatever the vectors (jaxinv
    # cannot derive it through the body: each reflection reads x twice).
    @f.defivjp(ildj=_zero_ildj)
    def reflect_ivjp(xs, ys, cts):
        # W = H_1 ... H_k is orthogonal and each H_i symmetric and its own
        # inverse: x = y @ W^T = y @ H_k ... H_1, i.e. the reflections in reverse.
        x, vs = xs
        if vs is None:
            raise jaxinv.NotInvertibleError("Householder: the reflection vectors must be known")
        if x is None:
            x = _reflect(ys, vs.astype(jnp.result_type(ys)), not reverse)
        # ct_x = ct @ (the map's matrix)^T: the opposite order again; ct_vs from the
        # VJP of the map in vs at the rebuilt x (a replay of k rank-one updates).
        _, vjp = jax.vjp(lambda v: reflect(x, v), vs)
        (ct_vs,) = vjp(cts)
        return (x, vs), (_reflect(cts, vs.astype(jnp.result_type(cts)), not reverse), ct_vs)

    return f


def _zero_ildj(y: jax.Array) -> jax.Array:
    """The log-det of an orthogonal map's inverse: 0, in ``y``'s dtype."""
    return jnp.zeros((), jnp.result_type(y))


_householder = _reflections(reverse=False)
_householder_inverse = _reflections(reverse=True)


@dataclasses.dataclass(frozen=True)
class Householder(Layer):
    """An orthogonal map on the last axis, ``y = x @ H_1 @ ... @ H_k`` with
    ``H_i = I - 2 v_i v_i^T / |v_i|^2`` (Tomczak & Welling 2016): ``log|det| = 0``.

    ``features`` is the size of the last axis, ``n_reflections`` the number
    ``k`` of reflections; params are ``{"vectors": (k, features)}`` (random
    normal at init; a zero vector is not a reflection). Applied one reflection
    at a time (``O(k n)`` per row, never forming ``W``). The inverse applies
    the reflections in reverse order, each being its own inverse; the core is
    a ``jaxinv.custom_ivjp`` with that rule and a log-det of 0, so
    jaxinv's backward pass rebuilds ``x`` the same way (and
    ``ct_x = ct_y @ W^T`` likewise) and ``jaxinv.inverse_and_ildj`` inverts
    it; so is the inverse, so a flow runs backwards reversibly too.

    Example:
        ```python
        layer = Householder(features=8, n_reflections=4)
        params = layer.init(jax.random.PRNGKey(0), x)        # x: (batch, 8)
        y = layer.apply(params, x)                            # |y| == |x| per row
        x_again = layer.inverse(params, y)
        ```
    """
    features: int = None  # type: ignore[assignment]
    n_reflections: int = 2

    def __post_init__(self):
        if not isinstance(self.features, int) or self.features < 1:
            raise ValueError(f"Householder: features must be a positive int, got {self.features!r}")
        if not isinstance(self.n_reflections, int) or self.n_reflections < 1:
            raise ValueError(f"Householder: n_reflections must be a positive int, got {self.n_reflections!r}")

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        _check_channels("Householder", self.features, x)
        dtype = jnp.result_type(x)
        if not jnp.issubdtype(dtype, jnp.floating):
            dtype = jnp.result_type(float)
        return {"vectors": jax.random.normal(key, (self.n_reflections, self.features), dtype)}

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        _check_channels("Householder", self.features, x)
        return _householder(x, params["vectors"])

    def forward_and_log_det(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.apply(params, x), jnp.zeros(x.shape[:1], jnp.result_type(x))

    def inverse(self, params: Params, y: jax.Array) -> jax.Array:
        _check_channels("Householder", self.features, y)
        return _householder_inverse(y, params["vectors"])

    def inverse_and_log_det(self, params: Params, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.inverse(params, y), jnp.zeros(y.shape[:1], jnp.result_type(y))
