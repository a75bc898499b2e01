"""Volume-preserving rearrangements of NHWC images: Glow's squeeze and the Haar
wavelet downsampling (FrEIA's ``HaarDownsampling``, Invertible Rescaling Networks).

Both map ``(b, h, w, c)`` to ``(b, h / f, w / f, f * f * c)`` with ``log|det| = 0``,
written with ``reshape``, ``transpose`` and (for Haar) a ``dot_general`` by a
constant orthogonal 4x4 matrix: jaxinv inverts each of these equations
structurally, so nothing is saved for the backward pass.

Example:
    ```python
    squeeze = Squeeze()                       # (8, 16, 16, 3) -> (8, 8, 8, 12)
    y = squeeze.apply({}, x)
    x_again = squeeze.inverse({}, y)
    ```
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxinv.nn.base import Layer, Params

__all__ = ["Squeeze", "HaarDownsampling"]


def _check_image(name: str, x: jax.Array, factor: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name}: expected NHWC images (batch, h, w, c), got shape {x.shape}")
    if x.shape[1] % factor or x.shape[2] % factor:
        raise ValueError(f"{name}: height and width must be multiples of {factor}, got shape {x.shape}")


def _space_to_depth(x: jax.Array, f: int) -> jax.Array:
    """``(b, h, w, c) -> (b, h/f, w/f, f*f*c)``; output channel ``(i*f + j)*c + k``
    holds pixel ``(f*y + i, f*x + j)``, channel ``k`` (``tf.nn.space_to_depth``'s order)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // f, f, w // f, f, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # (b, h/f, w/f, i, j, c)
    return x.reshape(b, h // f, w // f, f * f * c)


def _depth_to_space(y: jax.Array, f: int) -> jax.Array:
    b, h, w, cc = y.shape
    c = cc // (f * f)
    y = y.reshape(b, h, w, f, f, c)
    y = y.transpose(0, 1, 3, 2, 4, 5)  # (b, h, i, w, j, c)
    return y.reshape(b, h * f, w * f, c)


def _zeros(x: jax.Array) -> jax.Array:
    return jnp.zeros(x.shape[:1], jnp.result_type(x))


@dataclasses.dataclass(frozen=True)
class Squeeze(Layer):
    """Glow's squeeze (space-to-depth): ``(b, h, w, c) -> (b, h/f, w/f, f*f*c)``,
    each ``f x f`` block of pixels stacked into the channels; a permutation, so
    ``log|det| = 0``. No params (``init`` returns ``{}``).

    Channel order is ``tf.nn.space_to_depth``'s: output channel
    ``(i * f + j) * c + k`` is input channel ``k`` at offset ``(i, j)`` in the
    block. Written as reshape / transpose / reshape, which jaxinv inverts
    structurally (nothing saved).

    Example:
        ```python
        layer = Squeeze(factor=2)
        y = layer.apply({}, jnp.zeros((8, 16, 16, 3)))      # (8, 8, 8, 12)
        x = layer.inverse({}, y)                             # (8, 16, 16, 3)
        ```
    """
    factor: int = 2

    def __post_init__(self):
        if not isinstance(self.factor, int) or self.factor < 1:
            raise ValueError(f"Squeeze: factor must be a positive int, got {self.factor!r}")

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        _check_image("Squeeze", x, self.factor)
        return {}

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        _check_image("Squeeze", x, self.factor)
        return _space_to_depth(x, self.factor)

    def forward_and_log_det(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.apply(params, x), _zeros(x)

    def inverse(self, params: Params, y: jax.Array) -> jax.Array:
        f = self.factor
        if y.ndim != 4 or y.shape[-1] % (f * f):
            raise ValueError(f"Squeeze.inverse: expected (batch, h, w, {f * f} * c), got shape {y.shape}")
        return _depth_to_space(y, f)

    def inverse_and_log_det(self, params: Params, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.inverse(params, y), _zeros(y)


# Rows: LL, LH, HL, HH over the block (a, b, c, d) = pixels (0,0), (0,1), (1,0), (1,1).
# The first letter filters along the height, the second along the width (L: sum, H: difference).
# Symmetric, orthogonal (the 1/2 normalises it), so it is its own inverse and log|det| = 0.
_HAAR = 0.5 * np.array([[1, 1, 1, 1],
                        [1, -1, 1, -1],
                        [1, 1, -1, -1],
                        [1, -1, -1, 1]])


def _haar_mix(z: jax.Array) -> jax.Array:
    """Apply the 4x4 Haar matrix to the block axis of ``(b, h, w, 4 * c)``."""
    b, h, w, cc = z.shape
    z = z.reshape(b, h, w, 4, cc // 4)
    # a dot_general by a constant orthogonal matrix: jaxinv solves it (the constant
    # is provably well conditioned), no value is saved.
    z = jnp.einsum("kj,bhwjc->bhwkc", jnp.asarray(_HAAR, jnp.result_type(z)), z)
    return z.reshape(b, h, w, cc)


@dataclasses.dataclass(frozen=True)
class HaarDownsampling(Layer):
    """The orthonormal Haar wavelet transform on 2x2 blocks:
    ``(b, h, w, c) -> (b, h/2, w/2, 4c)`` with channels ``[LL, LH, HL, HH]``
    (each ``c`` wide), ``log|det| = 0``. No params.

    For a block ``[[a, b], [c, d]]`` (rows along the height):
    ``LL = (a + b + c + d) / 2`` (the average, times 2), ``LH = (a - b + c - d) / 2``
    (differences along the width), ``HL = (a + b - c - d) / 2`` (along the height),
    ``HH = (a - b - c + d) / 2``. The 1/2 makes the 4x4 matrix orthogonal, its
    own inverse. Written as a ``Squeeze`` and a ``dot_general`` by that
    constant matrix, both of which jaxinv inverts (nothing saved).

    Example:
        ```python
        layer = HaarDownsampling()
        y = layer.apply({}, x)                   # x: (8, 16, 16, 3) -> y: (8, 8, 8, 12)
        low_pass = y[..., :3]                    # 2 x the 2x2 average pooling of x
        x_again = layer.inverse({}, y)
        ```
    """

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        _check_image("HaarDownsampling", x, 2)
        return {}

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        _check_image("HaarDownsampling", x, 2)
        return _haar_mix(_space_to_depth(x, 2))

    def forward_and_log_det(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.apply(params, x), _zeros(x)

    def inverse(self, params: Params, y: jax.Array) -> jax.Array:
        if y.ndim != 4 or y.shape[-1] % 4:
            raise ValueError(f"HaarDownsampling.inverse: expected (batch, h, w, 4 * c), got shape {y.shape}")
        return _depth_to_space(_haar_mix(y), 2)

    def inverse_and_log_det(self, params: Params, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.inverse(params, y), _zeros(y)
