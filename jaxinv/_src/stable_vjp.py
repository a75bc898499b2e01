"""VJPs of the choosers (``max``, ``min``, ``reduce_max``, ``reduce_min``)
that do not depend on a rebuilt value having the same bits everywhere.

Why: JAX's VJP of ``reduce_max`` compares the operand with the maximum twice
(a mask of the chosen elements, and a count of ties to divide by); its VJP of
``max`` compares each operand with the answer. In the backward pass the
operand is usually a *rebuilt* value, and XLA may recompute it inside every
fusion that reads it. Two copies of a transcendental need not agree to the
last bit (XLA:CPU evaluates one vectorized and one not; ``optimization_barrier``
does not stop it: XLA:CPU expands barriers before fusion). The mask then
disagrees with the count, or with the answer, and a cotangent is silently
dropped even though no two elements are close (found by the fuzzer;
``tests/test_fuzz_findings.py``).

The rules here give JAX's answer (ties share the cotangent equally) but
decide the chosen element from one comparison or one reduction, so copies
that differ in the last bit can only matter at a near-tie, where the
gradient has a kink anyway:

* ``max(x, y)``: the weight of ``x`` is ``1``, ``0`` or ``1/2`` from ``x > y``
  and ``x < y``; ``y`` gets the rest.
* ``reduce_max(x)``: the first largest element (one ``argmax`` reduction) is
  always chosen, and so is any element equal to the maximum.

Example:
    ```python
    fn = stable_vjp.function_for(eqn)   # None for other primitives
    _, f_vjp = jax.vjp(lambda x: fn(x, **eqn.params), x)
    ```
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P


@jax.custom_jvp
def _max(x, y):
    return lax.max(x, y)


@jax.custom_jvp
def _min(x, y):
    return lax.min(x, y)


def _pairwise_jvp(fn, first_wins, primals, tangents):
    x, y = primals
    tx, ty = tangents
    w = jnp.where(first_wins(x, y), 1.0, jnp.where(first_wins(y, x), 0.0, 0.5)).astype(tx.dtype)
    return fn(x, y), tx * w + ty * (1 - w)


_max.defjvp(functools.partial(_pairwise_jvp, lax.max, lax.gt))
_min.defjvp(functools.partial(_pairwise_jvp, lax.min, lax.lt))


def _first_chosen(x, axes, arg):
    """A 0/1 array marking, over ``axes``, the first element ``arg`` (argmax
    or argmin) picks: one reduction, so one answer per row."""
    rest = [d for d in range(x.ndim) if d not in axes]
    moved = jnp.transpose(x, rest + list(axes))
    flat = moved.reshape(moved.shape[:len(rest)] + (math.prod(x.shape[d] for d in axes),))
    one_hot = jax.nn.one_hot(arg(flat, axis=-1), flat.shape[-1], dtype=bool)
    back = one_hot.reshape(moved.shape)
    return jnp.transpose(back, np.argsort(rest + list(axes)).tolist())


def _reducer(prim, arg):
    @functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
    def reduce(x, axes):
        return prim.bind(x, axes=axes)

    @reduce.defjvp
    def _(axes, primals, tangents):
        (x,), (t,) = primals, tangents
        ans = reduce(x, axes)
        kept = [1 if d in axes else n for d, n in enumerate(x.shape)]
        chosen = (x == ans.reshape(kept)) | _first_chosen(x, axes, arg)
        chosen = chosen.astype(t.dtype)
        return ans, jnp.sum(t * chosen, axis=axes) / jnp.sum(chosen, axis=axes)

    return lambda x, *, axes, **_: reduce(x, tuple(axes))


_STABLE = {
    P.max_p: lambda x, y, **_: _max(x, y),
    P.min_p: lambda x, y, **_: _min(x, y),
    P.reduce_max_p: _reducer(P.reduce_max_p, jnp.argmax),
    P.reduce_min_p: _reducer(P.reduce_min_p, jnp.argmin),
}


def function_for(eqn):
    """A function ``fn(*invals, **eqn.params)`` with the same value as
    ``eqn``'s primitive and a VJP robust to rebuilt inputs, or None when the
    primitive's own VJP is used (any other primitive, or non-float values)."""
    fn = _STABLE.get(eqn.primitive)
    if fn is None or not all(jnp.issubdtype(v.aval.dtype, jnp.floating) for v in eqn.invars):
        return None
    return fn
