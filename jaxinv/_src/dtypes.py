"""Two dtype questions asked all over jaxinv, answered once: does a value
carry a cotangent, and what is a zero cotangent for it.

Both take whatever the caller holds: an array, a tracer, a Python or NumPy
scalar, an aval, a ``jax.ShapeDtypeStruct`` or a dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _dtype_and_shape(x: Any) -> tuple[Any, tuple[int, ...]]:
    if hasattr(x, "dtype") and hasattr(x, "shape"):   # arrays, tracers, avals, ShapeDtypeStruct
        return x.dtype, tuple(x.shape)
    try:
        return np.dtype(x), ()                          # a dtype
    except TypeError:
        return jnp.result_type(x), np.shape(x)          # a Python or NumPy scalar


def is_float(x: Any) -> bool:
    """Whether ``x`` carries cotangents: a real or complex floating-point value.

    Example:
        ```python
        is_float(jnp.ones(3)), is_float(jnp.int32), is_float(jax.ShapeDtypeStruct((2,), jnp.bool_))
        # (True, False, False)
        ```
    """
    try:
        return bool(jnp.issubdtype(_dtype_and_shape(x)[0], jnp.inexact))
    except TypeError:   # an extended dtype (a PRNG key)
        return False


def zero_cotangent(x: Any):
    """The zero cotangent of a value like ``x``: zeros of its shape and dtype
    for a float, JAX's ``float0`` zeros for anything else (an integer input's
    gradient, as ``jax.grad(..., allow_int=True)`` gives it).

    Example:
        ```python
        zero_cotangent(jax.ShapeDtypeStruct((2,), jnp.int32)).dtype   # float0
        ```
    """
    dtype, shape = _dtype_and_shape(x)
    if is_float(dtype):
        return jnp.zeros(shape, dtype)
    return np.zeros(shape, jax.dtypes.float0)
