"""Rules for structural primitives: permutations, broadcasts, joins, splits, scans.

Only registrations live here (see ``jaxinv/registry.py`` for the conventions).
Pure permutations are one ``defpermutation`` line each.  The other rules find
an unknown input's shape with ``input_avals()``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.extend.core import primitives as P

import jax

from jaxinv._jax_internals import split_p, stack_p, tile_p, unstack_p
from jaxinv._version import __version__
from jaxinv.domains import Example, integers, reals
from jaxinv.packs import RulePack
from jaxinv.registry import NotInvertibleError, input_avals

pack = RulePack("jaxinv.structural", __version__, jax_versions=">=0.10", builtin=True,
                description="permutations, broadcasts, joins and splits, padding, cumulative ops")

# --------------------------------------------------------------------------
# private helpers for the non-trivial rules


def _all(nonzero_in, **_):
    return all(nonzero_in)


def _first(nonzero_in, **_):
    return nonzero_in[0]


def _all_known(outvals, prim: str):
    """``outvals``, after checking none is unknown (the planner may ask a
    multiple-result rule to solve with only some outputs known)."""
    if any(y is None for y in outvals):
        raise NotInvertibleError(f"every output of `{prim}` is needed to recover its input")
    return list(outvals)


def _fill(known, solved):
    """``known`` with its ``None`` entries replaced by ``solved``'s."""
    return [s if k is None else k for k, s in zip(known, solved)]


def _broadcast_in_dim_inverse(invals, outvals, *, shape, broadcast_dimensions, **_):
    # Operand dim i lands on output dim broadcast_dimensions[i] (increasing);
    # every other output dim, and every operand dim of size 1 that was
    # expanded, holds copies: keep index 0 there and drop those dims.
    x_shape = tuple(input_avals()[0].shape)
    limit = [1] * len(shape)
    for i, d in enumerate(broadcast_dimensions):
        limit[d] = x_shape[i]
    if any(limit[d] > shape[d] for d in range(len(shape))):
        raise NotInvertibleError("the broadcast output is empty; its operand is not")
    x = lax.slice(outvals[0], [0] * len(shape), limit)
    return [lax.reshape(x, x_shape)] + list(invals[1:])


def _concatenate_inverse(invals, outvals, *, dimension, **_):
    solved, start = [], 0
    for aval in input_avals():
        size = aval.shape[dimension]
        solved.append(lax.slice_in_dim(outvals[0], start, start + size, axis=dimension))
        start += size
    return _fill(invals, solved)


def _split_inverse(invals, outvals, *, axis, **_):
    return [lax.concatenate(_all_known(outvals, "split"), axis)]


def _split_ivjp(invals, outvals, out_cts, *, axis, **_):
    cts = [jnp.zeros_like(y) if ct is None else ct for y, ct in zip(outvals, out_cts)]
    x = lax.concatenate(_all_known(outvals, "split"), axis)
    if not jnp.issubdtype(input_avals()[0].dtype, jnp.inexact):
        return [x], [None]
    return [x], [lax.concatenate(cts, axis)]


def _stack_inverse(invals, outvals, *, axis, **_):
    return _fill(invals, [lax.index_in_dim(outvals[0], i, axis, keepdims=False) for i in range(len(invals))])


def _unstack_inverse(invals, outvals, *, axis, **_):
    return [jnp.stack(_all_known(outvals, "unstack"), axis)]


def _tile_inverse(invals, outvals, *, reps, **_):
    x_shape = tuple(input_avals()[0].shape)
    return [lax.slice(outvals[0], [0] * len(x_shape), x_shape)]


def _cumsum_inverse(invals, outvals, *, axis, reverse, **_):
    # Forward y[i] = x[0] + ... + x[i]; backward (reverse) y[i] = x[i] + ... + x[n-1].
    # So x[i] = y[i] - y[i-1] (resp. y[i] - y[i+1]), the missing neighbour being 0.
    y = outvals[0]
    n = y.shape[axis]
    if n <= 1:
        return [y]
    config = [(0, 0, 0)] * y.ndim
    if reverse:
        neighbour = lax.slice_in_dim(y, 1, n, axis=axis)
        config[axis] = (0, 1, 0)
    else:
        neighbour = lax.slice_in_dim(y, 0, n - 1, axis=axis)
        config[axis] = (1, 0, 0)
    return [y - lax.pad(neighbour, jnp.zeros((), y.dtype), config)]


def _cumsum_ivjp(invals, outvals, out_cts, *, axis, reverse, **_):
    # cumsum is linear; its transpose is the cumsum running the other way.
    (x,) = _cumsum_inverse(invals, outvals, axis=axis, reverse=reverse)
    if not jnp.issubdtype(input_avals()[0].dtype, jnp.inexact):
        return [x], [None]
    return [x], [lax.cumsum(out_cts[0], axis, reverse=not reverse)]


def _pad_value_index(x_shape, config):
    """The index of one output element holding the padding value, or None."""
    for d, (lo, hi, interior) in enumerate(config):
        if lo > 0:
            return d, 0
        if hi > 0:
            return d, -1
        if lo == 0 and interior > 0 and x_shape[d] > 1:
            return d, 1
    return None


def _pad_inverse(invals, outvals, *, padding_config, **_):
    y = outvals[0]
    x_aval, _ = input_avals()
    config = [tuple(int(c) for c in dim) for dim in padding_config]
    x, value = invals
    if x is None:
        if any(lo < 0 or hi < 0 for lo, hi, _ in config):
            raise NotInvertibleError("negative padding drops elements of the operand")
        start = [lo for lo, _, _ in config]
        limit = [lo + (n - 1) * (interior + 1) + 1 if n else lo
                 for n, (lo, _, interior) in zip(x_aval.shape, config)]
        x = lax.slice(y, start, limit, [interior + 1 for _, _, interior in config])
    if value is None:
        where = _pad_value_index(x_aval.shape, config)
        if where is None or 0 in y.shape:
            raise NotInvertibleError("no output element holds the padding value")
        d, i = where
        index = [0] * y.ndim
        index[d] = i
        value = y[tuple(index)]
    return [x, value]


def _device_put_inverse(invals, outvals, **_):
    # Input i is output i, moved: solving it needs that output only.
    if any(x is None and y is None for x, y in zip(invals, outvals)):
        raise NotInvertibleError("an unknown input of `device_put` needs its own output known")
    return _fill(invals, outvals)


# --------------------------------------------------------------------------
# permutations (each also declares "nonzero iff its input is")

pack.defpermutation(P.reshape_p, examples=Example(lambda x: x.reshape(3, 4), reals(shape=(4, 3))))
pack.defpermutation(P.transpose_p, examples=Example(lambda x: jnp.transpose(x, (2, 0, 1)), reals(shape=(2, 3, 4))))
pack.defpermutation(P.rev_p, examples=Example(lambda x: lax.rev(x, (0, 2)), reals(shape=(2, 3, 4))))
pack.defpermutation(P.squeeze_p, examples=Example(lambda x: lax.squeeze(x, (1,)), reals(shape=(3, 1, 4))))

# --------------------------------------------------------------------------
# copies, joins and splits (expand_dims is broadcast_in_dim in jaxprs)

pack.register_inverse(P.broadcast_in_dim_p, _broadcast_in_dim_inverse, examples=[
    Example(lambda x: jnp.expand_dims(x, 1), reals(shape=(3, 4)), label="expand_dims"),
    Example(lambda x: jnp.broadcast_to(x, (5, 3, 4)), reals(shape=(3, 4)), label="new leading dim"),
    Example(lambda x: jnp.broadcast_to(x, (2, 3, 4)), reals(shape=(3, 1)), label="size-1 dim expanded"),
    Example(lambda x: jnp.broadcast_to(x, (2, 3)), reals(shape=()), label="scalar"),
], notes="keeps one copy of each broadcast element")
pack.register_nonzero(P.broadcast_in_dim_p, _first)
pack.register_inverse(tile_p, _tile_inverse, examples=Example(lambda x: jnp.tile(x, (2, 3)), reals(shape=(3, 4))))
pack.register_nonzero(tile_p, _first)
pack.register_inverse(P.concatenate_p, _concatenate_inverse, examples=Example(
    lambda a, b, c: jnp.concatenate([a, b, c], axis=1), reals(shape=(3, 1)), reals(shape=(3, 4)),
    reals(shape=(3, 2)), solve=[(0,), (1, 2), (0, 1, 2)]))
pack.register_nonzero(P.concatenate_p, _all)
pack.register_inverse(split_p, _split_inverse, examples=[
    Example(lambda x: jnp.split(x, [1, 3], axis=1), reals(shape=(3, 6))),
    Example(lambda x: jnp.split(x, [2], axis=0), integers(shape=(4, 3)), label="integers"),
], notes="needs every piece")
pack.register_ivjp(split_p, _split_ivjp)
pack.register_nonzero(split_p, _first)
pack.register_inverse(stack_p, _stack_inverse, examples=Example(
    lambda a, b, c: jnp.stack([a, b, c], axis=1), reals(shape=(3, 4)), reals(shape=(3, 4)), reals(shape=(3, 4)),
    solve=[(1,), (0, 2), (0, 1, 2)]))
pack.register_nonzero(stack_p, _all)
pack.register_inverse(unstack_p, _unstack_inverse, examples=Example(lambda x: jnp.unstack(x, axis=1),
                                                                     reals(shape=(3, 4))), notes="needs every piece")
pack.register_nonzero(unstack_p, _first)
pack.register_inverse(P.pad_p, _pad_inverse, examples=[
    Example(lambda x, v: lax.pad(x, v, ((1, 2, 1), (0, 1, 0))), reals(shape=(3, 4)), reals(shape=()),
            solve=[(0,), (1,), (0, 1)]),
    Example(lambda x, v: lax.pad(x, v, ((0, 0, 2), (0, 0, 0))), reals(shape=(3, 4)), reals(shape=()),
            solve=[(0, 1)], label="interior padding only"),
], notes="no negative padding; the padding value is read back when some output element holds it")
pack.register_nonzero(P.pad_p, _all)
pack.register_inverse(P.device_put_p, _device_put_inverse, examples=Example(jax.device_put, reals()))
pack.register_nonzero(P.device_put_p, _all)

# --------------------------------------------------------------------------
# scans

pack.register_inverse(P.cumsum_p, _cumsum_inverse, examples=[
    Example(lambda x: lax.cumsum(x, axis=1), reals(shape=(3, 5)), label="forward"),
    Example(lambda x: lax.cumsum(x, axis=0, reverse=True), reals(shape=(3, 5)), label="reverse"),
    Example(lambda x: lax.cumsum(x, axis=0), reals(shape=(1, 5)), label="length 1"),
    Example(lambda x: lax.cumsum(x, axis=1), integers(shape=(3, 5)), label="integers wrap around bijectively"),
])
pack.register_ivjp(P.cumsum_p, _cumsum_ivjp)
