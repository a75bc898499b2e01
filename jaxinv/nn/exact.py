"""Exact reversibility: couplings whose rebuild is bit-exact at any depth.

Floating-point couplings rebuild their inputs with rounding at every block,
so a deep network drifts (``docs/numerics.md``). In exact mode, the stream
stays on a fixed-point grid, multiples of ``2 ** -bits``, and each residual
function's output is rounded onto that grid (``to_grid``). Adding two grid
values is exact in floating point as long as they are below
``2 ** (mantissa bits - bits)`` (float32, ``bits=12``: ``|x| < 4096``), and so
is subtracting them again. jaxinv's rebuild ``x1 = y1 - to_grid(F(x2))``
then returns ``x1`` bit for bit, whatever the depth. This is the
fixed-point idea of MacKay et al. (2018), kept in floating point.

The stream must be float32 (or float64); the residual functions may compute
in bfloat16. The gradient treats the rounding as the identity (a
straight-through estimator), so ``jax.grad`` of the same function is the
reference jaxinv matches.

Example:
    ```python
    layer = jaxinv.nn.AdditiveCoupling(hidden=(32,), exact_bits=12)
    x = jaxinv.nn.to_grid(x, 12)                 # the stream starts on the grid
    # (inside a function jaxinv differentiates, enter it with onto_grid)
    y = layer.apply(params, x)
    assert (jaxinv.inverse(lambda x: layer.apply(params, x), x)(y) == x).all()
    ```
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import jaxinv

__all__ = ["to_grid", "onto_grid", "check_exact_stream", "shift_out", "BUFFER_BITS"]

# The lost bits of exact momentum steps are kept in one uint32 per element.
BUFFER_BITS = 32


def _snap(rounding):
    """``x`` rounded by ``rounding`` to a multiple of ``2 ** -bits`` (same
    dtype), with the derivative taken as 1 (straight through)."""
    @functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
    def snap(x, bits):
        scale = 2.0 ** bits                # a power of two: scaling is exact
        return rounding(x * scale) / scale

    snap.defjvp(lambda bits, primals, tangents: (snap(primals[0], bits), tangents[0]))
    return snap


_round_to_grid, _floor_to_grid = _snap(jnp.round), _snap(jnp.floor)


def to_grid(x: jax.Array, bits: int) -> jax.Array:
    """``x`` rounded to the nearest multiple of ``2 ** -bits`` (same dtype);
    its derivative is taken as 1 (straight through).

    Example:
        ```python
        to_grid(jnp.array([0.3, -1.26]), 2)      # [0.25, -1.25]
        ```
    """
    return _round_to_grid(x, bits)


def onto_grid(x: jax.Array, bits: int) -> jax.Array:
    """``to_grid(x, bits)`` where a stream *enters* the grid (a network's input,
    inside the function jaxinv differentiates).

    ``to_grid`` cannot be inverted, so jaxinv would keep ``x`` there and may
    recompute the whole network forward from it (memory growing with depth
    again). ``onto_grid`` also returns, unread, the remainder ``x - to_grid(x)``:
    jaxinv saves that one array and rebuilds ``x`` as the sum. Same value and
    straight-through gradient as ``to_grid``.

    Example:
        ```python
        def net(params, x):
            x = jaxinv.nn.onto_grid(x, 12)           # the stream enters the grid
            return stack.apply(params, x)              # exact couplings
        ```
    """
    return _split_onto_grid(bits)(x)[0]


@functools.lru_cache(maxsize=None)
def _split_onto_grid(bits: int) -> jaxinv.custom_ivjp:
    """``x -> (to_grid(x, bits), remainder)``, inverted as their sum (exact)."""
    @jaxinv.custom_ivjp
    def round_onto_grid(x):
        grid = to_grid(x, bits)
        return grid, x - grid

    round_onto_grid.definverse(lambda grid, remainder: grid + remainder)
    return round_onto_grid


@functools.lru_cache(maxsize=None)
def shift_out(bits: int, shift: int) -> jaxinv.custom_ivjp:
    """``(g, buffer) -> (kept, buffer')``: ``g`` (a multiple of ``2 ** -(bits + shift)``)
    rounded down to the grid of ``bits``, the ``shift`` bits it loses pushed
    into the uint32 ``buffer``; inverted exactly by popping them back.

    This is the information buffer of MacKay et al. (2018): multiplying a grid
    value by ``2 ** -shift`` (a momentum step's ``gamma * v``) leaves the grid,
    and rounding back loses ``shift`` bits, which the buffer keeps (32 of them
    per element). The derivative of ``kept`` is taken as 1 (straight through).

    Example:
        ```python
        kept, buffer = shift_out(12, 1)(0.5 * v, buffer)        # v on the grid of 12 bits
        ```
    """
    fine, mask = 2.0 ** (bits + shift), np.uint32(2 ** shift - 1)

    @jaxinv.custom_ivjp
    def push_lost_bits(g, buffer):
        kept = _floor_to_grid(g, bits)
        lost = ((g - kept) * fine).astype(jnp.uint32)    # exact: an integer below 2 ** shift
        return kept, jnp.left_shift(buffer, np.uint32(shift)) | lost

    @push_lost_bits.definverse
    def pop_lost_bits(kept, buffer):
        lost = (buffer & mask).astype(kept.dtype)
        return kept + lost / fine, jnp.right_shift(buffer, np.uint32(shift))

    return push_lost_bits


def check_exact_stream(x: jax.Array, bits: int, where: str) -> None:
    """Refuse a stream dtype in which grid values of ``bits`` fractional bits
    leave fewer than 8 integer bits (exact addition needs both).

    Example:
        ```python
        check_exact_stream(jnp.zeros(3, jnp.bfloat16), 12, "AdditiveCoupling")   # TypeError
        ```
    """
    if not isinstance(bits, int) or bits < 0:
        raise ValueError(f"{where}: exact_bits must be a non-negative int, got {bits!r}")
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating) or jnp.finfo(dtype).nmant + 1 - bits < 8:
        raise TypeError(f"{where}: exact mode with exact_bits={bits} needs a stream with at least {bits + 8} "
                        f"mantissa bits, got {dtype}: keep the stream in float32 (the residual functions "
                        "may still compute in bfloat16)")
