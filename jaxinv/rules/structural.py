"""Rules for structural primitives: permutations, broadcasts, joins, splits,
windows, selections, sorts and scans; and documented refusals for the ones
that drop or combine elements (slices, gathers, reductions).

Each rule is registered right after its definition (see CONTRIBUTING.md, "The
conventions"). Pure permutations are one ``defpermutation`` line each. The
other rules find an unknown input's shape with ``input_avals()``. Log-dets
(``jaxinv.ildj``): permutations, selections, copies and unit-triangular maps
(``cumsum``, scatter-add of known updates) change no volume, so their
``register_ildj`` takes no rule (log-det 0).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from jaxinv import registry
from jaxinv._src import facts
from jaxinv._src.compat import SUPPORTED_JAX, available, scatter_sub_p, split_p, stack_p, tile_p, unstack_p
from jaxinv._src.dtypes import is_float
from jaxinv._version import __version__
from jaxinv.domains import Example, fixed, integers, nonzero, reals
from jaxinv.packs import RulePack, nonzero_if_all, nonzero_if_first
from jaxinv.registry import NotInvertibleError, input_avals, require_nonzero

pack = RulePack("jaxinv.structural", __version__, jax_versions=SUPPORTED_JAX, builtin=True,
                description="permutations, broadcasts, joins and splits, padding, windows and scatters, "
                            "selections, sorts, cumulative ops; refusals for slices and reductions")

# --------------------------------------------------------------------------
# shared helpers


def _all_known(outvals, prim: str):
    """``outvals``, after checking none is unknown (the planner may ask a
    multiple-result rule to solve with only some outputs known)."""
    if any(y is None for y in outvals):
        raise NotInvertibleError(f"every output of `{prim}` is needed to recover its input")
    return list(outvals)


def _fill(known, solved):
    """``known`` with its ``None`` entries replaced by ``solved``'s."""
    return [s if k is None else k for k, s in zip(known, solved)]


def _concrete(x):
    """``x`` as a numpy array if the rule can read its value (a literal, a
    constant called eagerly), else None (a tracer)."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except Exception:  # keys and other opaque values
        return None


def _require_fact(x, fact: facts.Fact, reason: str):
    """Like ``require_nonzero``, for another fact the planner may prove about a
    known input: while jaxinv plans, raise NotInvertibleError(reason) unless
    ``fact`` is proven for ``x``; free when a plan runs (it was checked)."""
    return registry.require_fact(x, fact, reason)


# --------------------------------------------------------------------------
# permutations (each also declares "nonzero iff its input is")

pack.defpermutation(P.reshape_p, examples=Example(lambda x: x.reshape(3, 4), reals(shape=(4, 3))))
pack.defpermutation(P.transpose_p, examples=Example(lambda x: jnp.transpose(x, (2, 0, 1)), reals(shape=(2, 3, 4))))
pack.defpermutation(P.rev_p, examples=Example(lambda x: lax.rev(x, (0, 2)), reals(shape=(2, 3, 4))))
pack.defpermutation(P.squeeze_p, examples=Example(lambda x: lax.squeeze(x, (1,)), reals(shape=(3, 1, 4))))

# --------------------------------------------------------------------------
# copies, joins and splits (expand_dims is broadcast_in_dim in jaxprs)


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


def _broadcast_in_dim_ivjp(invals, outvals, out_cts, *, shape, broadcast_dimensions, **params):
    # Each operand element is copied to every position of the new dims and of
    # its expanded size-1 dims; the transpose sums the cotangent over those dims.
    solved = _broadcast_in_dim_inverse(invals, outvals, shape=shape, broadcast_dimensions=broadcast_dimensions,
                                       **params)
    x_aval, ct = input_avals()[0], out_cts[0]
    if not is_float(x_aval):
        return solved, [None] * len(invals)
    if ct is None:
        return solved, [jnp.zeros(x_aval.shape, x_aval.dtype)] + [None] * (len(invals) - 1)
    kept = {d for i, d in enumerate(broadcast_dimensions) if x_aval.shape[i] == shape[d]}
    summed = tuple(d for d in range(len(shape)) if d not in kept)
    ct_x = lax.reshape(jnp.sum(ct, axis=summed) if summed else ct, tuple(x_aval.shape))
    return solved, [ct_x] + [None] * (len(invals) - 1)


def _broadcast_in_dim_ildj(invals, outvals, **_):
    # Adding size-1 axes (v[None]) copies each element once: a reshape, no
    # volume. A true broadcast repeats elements: not a bijection, no log-det.
    (y,) = outvals
    if input_avals()[0].size != np.size(y):
        raise NotInvertibleError("a broadcast repeats elements: not a bijection, so it has no log-det")
    return 0.0


pack.register_inverse(P.broadcast_in_dim_p, _broadcast_in_dim_inverse, examples=[
    Example(lambda x: jnp.expand_dims(x, 1), reals(shape=(3, 4)), label="expand_dims"),
    Example(lambda x: jnp.broadcast_to(x, (5, 3, 4)), reals(shape=(3, 4)), label="new leading dim"),
    Example(lambda x: jnp.broadcast_to(x, (2, 3, 4)), reals(shape=(3, 1)), label="size-1 dim expanded"),
    Example(lambda x: jnp.broadcast_to(x, (2, 3)), reals(shape=()), label="scalar"),
], notes="keeps one copy of each broadcast element")
pack.register_ivjp(P.broadcast_in_dim_p, _broadcast_in_dim_ivjp)
pack.register_nonzero(P.broadcast_in_dim_p, nonzero_if_first)
pack.register_ildj(P.broadcast_in_dim_p, _broadcast_in_dim_ildj)


def _tile_inverse(invals, outvals, *, reps, **_):
    x_shape = tuple(input_avals()[0].shape)
    return [lax.slice(outvals[0], [0] * len(x_shape), x_shape)]


if available(tile_p):
    pack.register_inverse(tile_p, _tile_inverse, examples=Example(lambda x: jnp.tile(x, (2, 3)), reals(shape=(3, 4))))
    pack.register_nonzero(tile_p, nonzero_if_first)


def _concatenate_inverse(invals, outvals, *, dimension, **_):
    solved, start = [], 0
    for aval in input_avals():
        size = aval.shape[dimension]
        solved.append(lax.slice_in_dim(outvals[0], start, start + size, axis=dimension))
        start += size
    return _fill(invals, solved)


def _concatenate_ivjp(invals, outvals, out_cts, *, dimension, **_):
    # concatenate is linear; its transpose cuts the cotangent into the operands' pieces.
    solved, ct = _concatenate_inverse(invals, outvals, dimension=dimension), out_cts[0]
    cts, start = [], 0
    for aval in input_avals():
        size = aval.shape[dimension]
        cts.append(lax.slice_in_dim(ct, start, start + size, axis=dimension)
                   if ct is not None and is_float(aval) else None)
        start += size
    return solved, cts


pack.register_inverse(P.concatenate_p, _concatenate_inverse, examples=Example(
    lambda a, b, c: jnp.concatenate([a, b, c], axis=1), reals(shape=(3, 1)), reals(shape=(3, 4)),
    reals(shape=(3, 2)), solve=[(0,), (1, 2), (0, 1, 2)]))
pack.register_ivjp(P.concatenate_p, _concatenate_ivjp)
pack.register_nonzero(P.concatenate_p, nonzero_if_all)
pack.register_ildj(P.concatenate_p)


def _split_inverse(invals, outvals, *, axis, **_):
    return [lax.concatenate(_all_known(outvals, "split"), axis)]


def _split_ivjp(invals, outvals, out_cts, *, axis, **_):
    cts = [jnp.zeros_like(y) if ct is None else ct for y, ct in zip(outvals, out_cts)]
    x = lax.concatenate(_all_known(outvals, "split"), axis)
    if not is_float(input_avals()[0]):
        return [x], [None]
    return [x], [lax.concatenate(cts, axis)]


pack.register_inverse(split_p, _split_inverse, examples=[
    Example(lambda x: jnp.split(x, [1, 3], axis=1), reals(shape=(3, 6))),
    Example(lambda x: jnp.split(x, [2], axis=0), integers(shape=(4, 3)), label="integers"),
], notes="needs every piece")
pack.register_ivjp(split_p, _split_ivjp)
pack.register_nonzero(split_p, nonzero_if_first)
pack.register_ildj(split_p)


def _stack_inverse(invals, outvals, *, axis, **_):
    return _fill(invals, [lax.index_in_dim(outvals[0], i, axis, keepdims=False) for i in range(len(invals))])


if available(stack_p):
    pack.register_inverse(stack_p, _stack_inverse, examples=Example(
        lambda a, b, c: jnp.stack([a, b, c], axis=1), reals(shape=(3, 4)), reals(shape=(3, 4)), reals(shape=(3, 4)),
        solve=[(1,), (0, 2), (0, 1, 2)]))
    pack.register_nonzero(stack_p, nonzero_if_all)
    pack.register_ildj(stack_p)


def _unstack_inverse(invals, outvals, *, axis, **_):
    return [jnp.stack(_all_known(outvals, "unstack"), axis)]


if available(unstack_p):
    pack.register_inverse(unstack_p, _unstack_inverse,
                          examples=Example(lambda x: jnp.unstack(x, axis=1), reals(shape=(3, 4))),
                          notes="needs every piece")
    pack.register_nonzero(unstack_p, nonzero_if_first)
    pack.register_ildj(unstack_p)


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


pack.register_inverse(P.pad_p, _pad_inverse, examples=[
    Example(lambda x, v: lax.pad(x, v, ((1, 2, 1), (0, 1, 0))), reals(shape=(3, 4)), reals(shape=()),
            solve=[(0,), (1,), (0, 1)]),
    Example(lambda x, v: lax.pad(x, v, ((0, 0, 2), (0, 0, 0))), reals(shape=(3, 4)), reals(shape=()),
            solve=[(0, 1)], label="interior padding only"),
], notes="no negative padding; the padding value is read back when some output element holds it")
pack.register_nonzero(P.pad_p, nonzero_if_all)


def _device_put_inverse(invals, outvals, **_):
    # Input i is output i, moved: solving it needs that output only.
    if any(x is None and y is None for x, y in zip(invals, outvals)):
        raise NotInvertibleError("an unknown input of `device_put` needs its own output known")
    return _fill(invals, outvals)


pack.register_inverse(P.device_put_p, _device_put_inverse, examples=Example(jax.device_put, reals()))
pack.register_nonzero(P.device_put_p, nonzero_if_all)
pack.register_ildj(P.device_put_p)

# --------------------------------------------------------------------------
# scans


def _neighbour(y, axis: int, reverse: bool, fill):
    """What each step of a scan along ``axis`` combined with: ``y`` shifted one
    place forward (``reverse``: backward), ``fill`` entering at the start (end)."""
    n = y.shape[axis]
    config = [(0, 0, 0)] * y.ndim
    config[axis] = (0, 1, 0) if reverse else (1, 0, 0)
    start, stop = (1, n) if reverse else (0, n - 1)
    return lax.pad(lax.slice_in_dim(y, start, stop, axis=axis), jnp.asarray(fill, y.dtype), config)


def _cumsum_inverse(invals, outvals, *, axis, reverse, **_):
    # Forward y[i] = x[0] + ... + x[i]; backward (reverse) y[i] = x[i] + ... + x[n-1].
    # So x[i] = y[i] - y[i-1] (resp. y[i] - y[i+1]), the missing neighbour being 0.
    y = outvals[0]
    if y.shape[axis] == 0:
        return [y]
    return [y - _neighbour(y, axis, reverse, 0)]


def _cumsum_ivjp(invals, outvals, out_cts, *, axis, reverse, **_):
    # cumsum is linear; its transpose is the cumsum running the other way.
    (x,) = _cumsum_inverse(invals, outvals, axis=axis, reverse=reverse)
    if not is_float(input_avals()[0]):
        return [x], [None]
    return [x], [lax.cumsum(out_cts[0], axis, reverse=not reverse)]


pack.register_inverse(P.cumsum_p, _cumsum_inverse, examples=[
    Example(lambda x: lax.cumsum(x, axis=1), reals(shape=(3, 5)), label="forward"),
    Example(lambda x: lax.cumsum(x, axis=0, reverse=True), reals(shape=(3, 5)), label="reverse"),
    Example(lambda x: lax.cumsum(x, axis=0), reals(shape=(1, 5)), label="length 1"),
    Example(lambda x: lax.cumsum(x, axis=1), integers(shape=(3, 5)), label="integers wrap around bijectively"),
])
pack.register_ivjp(P.cumsum_p, _cumsum_ivjp)
pack.register_ildj(P.cumsum_p)


def _cumprod_inverse(invals, outvals, *, axis, reverse, **_):
    # y[i] = x[0] * ... * x[i] (reverse: x[i] * ... * x[n-1]), so x[i] = y[i] / y[i-1]
    # (resp. y[i] / y[i+1]), the missing neighbour being 1. It divides by the
    # outputs: they must be provably nonzero (iff the input is; see below).
    if not is_float(input_avals()[0]):
        raise NotInvertibleError("integer `cumprod` wraps around and divides inexactly: not invertible")
    y = require_nonzero(outvals[0], "the cumulative product")
    if y.shape[axis] == 0:
        return [y]
    return [y / _neighbour(y, axis, reverse, 1)]


def _cumprod_ildj(invals, outvals, *, axis, reverse, **_):
    # dx[i]/dy[j] is triangular with diagonal 1 / y[i-1] (reverse: 1 / y[i+1]),
    # the missing neighbour being 1: log|det| = -sum log|neighbour|.
    y = outvals[0]
    return -jnp.sum(jnp.log(jnp.abs(_neighbour(y, axis, reverse, 1))))


def _cumprod_ivjp(invals, outvals, out_cts, *, axis, reverse, **_):
    # dy[j]/dx[i] = y[j] / x[i] for each j the scan carries x[i] into (j >= i;
    # reverse: j <= i), so ct_x = (cumsum of ct * y, running the other way) / x.
    # One cumsum, where JAX's own VJP transposes an associative scan.
    (x,) = _cumprod_inverse(invals, outvals, axis=axis, reverse=reverse)
    y, ct = outvals[0], out_cts[0]
    if ct is None or y.shape[axis] == 0:
        return [x], [jnp.zeros_like(x)]
    return [x], [lax.cumsum(ct * y, axis, reverse=not reverse) / x]


pack.register_inverse(P.cumprod_p, _cumprod_inverse, examples=[
    Example(lambda x: jnp.cumprod(x, axis=1), nonzero(shape=(3, 5)), label="forward"),
    Example(lambda x: lax.cumprod(x, axis=0, reverse=True), nonzero(shape=(3, 5)), label="reverse"),
    Example(lambda x: lax.cumprod(x, axis=0), nonzero(shape=(1, 4)), label="length 1"),
], notes="floats; divides by the running product: the input must be provably nonzero (and not underflow)")
pack.register_ivjp(P.cumprod_p, _cumprod_ivjp)
pack.register_ildj(P.cumprod_p, _cumprod_ildj)
pack.register_nonzero(P.cumprod_p, nonzero_if_first)  # a product of nonzero factors is nonzero


def _cumlogsumexp_inverse(invals, outvals, *, axis, reverse, **_):
    # exp(y[i]) = exp(y[i-1]) + exp(x[i]) (reverse: y[i+1]), so
    # x[i] = y[i] + log(1 - exp(y[i-1] - y[i])) = y[i] + log(-expm1(y[i-1] - y[i])),
    # and x[i] = y[i] where nothing came before (y[i-1] = -inf, the fill).
    # Ill-conditioned where x[i] is far below the running total (inherently).
    y = outvals[0]
    if y.shape[axis] == 0:
        return [y]
    prev = _neighbour(y, axis, reverse, -jnp.inf)
    return [jnp.where(prev == -jnp.inf, y, y + jnp.log(-jnp.expm1(prev - y)))]


pack.register_inverse(P.cumlogsumexp_p, _cumlogsumexp_inverse, examples=[
    Example(lambda x: lax.cumlogsumexp(x, axis=1), reals(-2, 2, shape=(3, 4)), label="forward"),
    Example(lambda x: lax.cumlogsumexp(x, axis=0, reverse=True), reals(-2, 2, shape=(3, 4)), label="reverse"),
], notes="ill-conditioned where an element is far below the running log-sum-exp")
pack.register_not_invertible(P.cummax_p, "a running maximum hides every element below it")
pack.register_nonzero(P.cummax_p, nonzero_if_first)  # each output is one of the inputs
pack.register_not_invertible(P.cummin_p, "a running minimum hides every element above it")
pack.register_nonzero(P.cummin_p, nonzero_if_first)

# --------------------------------------------------------------------------
# windows, scatters and selections: what is not overwritten comes back


def _dynamic_update_slice_inverse(invals, outvals, **_):
    # y is the operand with the window at the start indices replaced by the
    # update. XLA clamps the start of dynamic_update_slice and dynamic_slice
    # alike (start = clip(start, 0, dim - size)), so the update is the window
    # dynamic_slice(y, starts) reads back. The operand's window is overwritten:
    # lost (unless the update is empty), so an unknown operand is refused.
    x, u, *starts = invals
    y = outvals[0]
    avals = input_avals()
    if any(s is None for s in starts):
        raise NotInvertibleError("the start indices of `dynamic_update_slice` cannot be recovered")
    if x is None:
        if 0 not in avals[1].shape:
            raise NotInvertibleError("the update overwrites a window of the operand, which is lost; only the update "
                                     "can be recovered (keep that window, e.g. with jnp.split, or save the operand)")
        x = y
    if u is None:
        # bind the primitive: lax.dynamic_slice would normalise negative starts a second time
        starts = [jnp.asarray(s, a.dtype) for s, a in zip(starts, avals[2:])]
        u = P.dynamic_slice_p.bind(y, *starts, slice_sizes=tuple(avals[1].shape))
    return [x, u, *starts]


pack.register_inverse(P.dynamic_update_slice_p, _dynamic_update_slice_inverse, examples=[
    Example(lambda x, u: lax.dynamic_update_slice(x, u, (1, 2)), reals(shape=(3, 4)), reals(shape=(2, 2)),
            solve=[(1,)]),
    Example(lambda x, u: lax.dynamic_update_slice(x, u, (5, -1)), reals(shape=(3, 4)), reals(shape=(2, 2)),
            solve=[(1,)], label="clamped start indices"),
    Example(lambda x, u, i: lax.dynamic_update_slice(x, u, (i, i)), reals(shape=(3, 4)), reals(shape=(1, 2)),
            integers((-4, -1, 0, 2, 7), shape=()), solve=[(1,)], label="traced start indices"),
], notes="recovers the update; the operand's overwritten window is lost")
pack.register_nonzero(P.dynamic_update_slice_p, lambda nz, **_: nz[0] and nz[1])
pack.register_ildj(P.dynamic_update_slice_p)


def _scatter_add_inverse(invals, outvals, *, prim, **params):
    # y = x with each update added (scatter-sub: subtracted) at its index; updates
    # at out-of-range indices are dropped (mode FILL_OR_DROP) both ways. So with
    # the indices and updates known, x = the same scatter of -u into y. The
    # updates themselves are lost where indices repeat or fall out of range.
    x, idx, u = invals
    if idx is None or u is None:
        raise NotInvertibleError(f"only the operand of `{prim.name}` can be recovered, from known indices and "
                                 "updates (repeated or out-of-range indices lose updates)")
    if x is None:
        if not jnp.issubdtype(input_avals()[0].dtype, jnp.number):
            raise NotInvertibleError(f"`{prim.name}` on booleans is a logical or: not invertible")
        x = prim.bind(outvals[0], idx, -u, **params)
    return [x, idx, u]


pack.register_inverse(P.scatter_add_p, functools.partial(_scatter_add_inverse, prim=P.scatter_add_p), examples=[
    Example(lambda x, u: x.at[:, 1:].add(u), reals(shape=(2, 3)), reals(shape=(2, 2)), solve=[(0,)]),
    Example(lambda x, u, i: x.at[i].add(u), reals(shape=(3, 2)), reals(shape=(4, 2)), fixed(np.array([0, 0, 2, 5])),
            solve=[(0,)], label="repeated and out-of-range indices"),
    Example(lambda x, u: x.at[1].add(u), integers(shape=(2, 3)), integers(shape=(3,)), solve=[(0,)],
            label="integers wrap around bijectively"),
], notes="recovers the operand from known indices and updates")
pack.register_inverse(scatter_sub_p, functools.partial(_scatter_add_inverse, prim=scatter_sub_p), examples=[
    Example(lambda x, u, i: x.at[i].subtract(u), reals(shape=(3, 2)), reals(shape=(2, 2)), fixed(np.array([1, 1])),
            solve=[(0,)]),
], notes="recovers the operand from known indices and updates")
pack.register_ildj(P.scatter_add_p)
pack.register_ildj(scatter_sub_p)


def _scatter_mul_inverse(invals, outvals, **params):
    # y = x times the product of the updates scattered to each position (the
    # dropped ones count as 1 both ways), so x = y / scatter_mul(1, idx, u),
    # with every update nonzero.
    x, idx, u = invals
    if idx is None or u is None:
        raise NotInvertibleError("only the operand of `scatter-mul` can be recovered, from known indices and updates")
    if x is None:
        if not is_float(input_avals()[0]):
            raise NotInvertibleError("integer `scatter-mul` wraps around: not invertible")
        require_nonzero(u, "the updates")
        y = outvals[0]
        x = y / P.scatter_mul_p.bind(jnp.ones_like(y), idx, u, **params)
    return [x, idx, u]


pack.register_inverse(P.scatter_mul_p, _scatter_mul_inverse, examples=Example(
    lambda x, u: x.at[0].multiply(u), reals(shape=(2, 3)), nonzero(shape=(3,)), solve=[(0,)]),
    notes="recovers the operand from known indices and provably nonzero updates")
pack.register_not_invertible(P.scatter_p, "it overwrites the operand at the indices (and drops updates at "
                                          "repeated or out-of-range indices)")
pack.register_not_invertible(P.scatter_min_p, "it keeps the smaller of each element and its updates")
pack.register_not_invertible(P.scatter_max_p, "it keeps the larger of each element and its updates")


def _select_n_inverse(invals, outvals, **_):
    # y = cases[which] elementwise: a case equals y where `which` selects it and
    # is lost elsewhere. Returning y where a case was not selected would be a
    # silently wrong value, and a rule cannot read a traced predicate while
    # jaxinv plans. So the one safe solve: a predicate known to select the
    # unknown case everywhere, i.e. a constant (a literal, as jnp.where(flag, a, b)
    # with a Python bool gives), checked by value, or a traced predicate the
    # planner proved to (the fact facts.selects(k)).
    which, *cases = invals
    unknown = [k for k, c in enumerate(cases) if c is None]
    if which is None:
        raise NotInvertibleError("the predicate of `select_n` cannot be recovered")
    if len(unknown) != 1:
        raise NotInvertibleError("at most one case of `select_n` can be recovered (the others are lost where the "
                                 "predicate does not select them), and the others must be known")
    (k,) = unknown
    reason = "the predicate must be a constant that selects the unknown operand everywhere (elsewhere it is lost)"
    w = _concrete(which)
    if w is None:
        _require_fact(which, facts.selects(k), reason)
    elif not np.all(w.astype(np.int64) == k):
        raise NotInvertibleError(reason)
    cases[k] = outvals[0]
    return [which, *cases]


pack.register_inverse(P.select_n_p, _select_n_inverse, examples=[
    Example(lambda a, b: lax.select_n(True, a, b), reals(), reals(), solve=[(2,)], label="literal predicate"),
    Example(lambda a, b: jnp.where(False, a, b), reals(), reals(), solve=[(1,)], label="jnp.where, Python bool"),
    Example(lambda a, b, c: lax.select_n(np.int32(2), a, b, c), reals(), reals(), reals(), solve=[(3,)],
            label="integer case index"),
], notes="only a case that a constant predicate selects everywhere")
pack.register_nonzero(P.select_n_p, lambda nz, **_: all(nz[1:]))
pack.register_ildj(P.select_n_p)

# --------------------------------------------------------------------------
# sorts: invertible when the permutation comes out too


def _require_iota(x, dimension: int, what: str):
    """Check that ``x`` is ``lax.broadcasted_iota(..., dimension)``: by value
    when it is concrete (a constant), else by the planner's fact."""
    reason = f"{what} is not provably lax.iota along dimension {dimension}"
    c = _concrete(x)
    if c is None:
        return _require_fact(x, facts.iota_along(dimension), reason)
    expected = np.arange(c.shape[dimension]).reshape([-1 if d == dimension else 1 for d in range(c.ndim)])
    if not np.array_equal(c, np.broadcast_to(expected, c.shape)):
        raise NotInvertibleError(reason)
    return x


def _inverse_permutation(perm, axis: int):
    """``inv`` with ``take_along_axis(y, inv, axis)`` undoing ``y = take_along_axis(x, perm, axis)``."""
    iota = lax.broadcasted_iota(perm.dtype, perm.shape, axis)
    return jnp.put_along_axis(jnp.zeros_like(perm), perm, iota, axis, inplace=False)


def _sort_solve(invals, outvals, dimension):
    """The unknown operands of a sort, and the inverse permutation.

    A sort applies one permutation ``perm`` to every operand along
    ``dimension``: ``out[j] = take_along_axis(in[j], perm)``. An operand
    carrying ``lax.iota`` (``lax.sort((x, iota), num_keys=1)``, ``argsort``,
    ``sort_key_val(x, arange)``) comes out as ``perm`` itself; then
    ``in[j] = take_along_axis(out[j], perm^-1)`` for every other operand."""
    reasons = []
    for k, (x, y) in enumerate(zip(invals, outvals)):
        if x is None or y is None or not jnp.issubdtype(input_avals()[k].dtype, jnp.integer):
            continue
        try:
            _require_iota(x, dimension, f"sort operand {k}")
        except NotInvertibleError as e:
            reasons.append(e.reason)
            continue
        inv = _inverse_permutation(y, dimension)
        solved = list(invals)
        for j, (x_j, y_j) in enumerate(zip(invals, outvals)):
            if x_j is None:
                if y_j is None:
                    raise NotInvertibleError(f"output {j} of `sort` is needed to recover operand {j}")
                solved[j] = jnp.take_along_axis(y_j, inv, dimension)
        return solved, inv
    raise NotInvertibleError("`sort` loses the permutation unless an operand carries lax.iota along the sort "
                             "dimension (lax.sort((x, iota), num_keys=1), sort_key_val(x, arange)) and its sorted "
                             "output is known" + (f" ({'; '.join(reasons)})" if reasons else ""))


def _sort_inverse(invals, outvals, *, dimension, **_):
    return _sort_solve(invals, outvals, dimension)[0]


def _sort_ivjp(invals, outvals, out_cts, *, dimension, **_):
    # The sort is a permutation of each operand; its transpose is the inverse
    # permutation applied to the cotangents (no second sort).
    solved, inv = _sort_solve(invals, outvals, dimension)
    cts = [jnp.take_along_axis(ct if ct is not None else jnp.zeros(a.shape, a.dtype), inv, dimension)
           if is_float(a) else None for ct, a in zip(out_cts, input_avals())]
    return solved, cts


pack.register_inverse(P.sort_p, _sort_inverse, examples=[
    Example(lambda x: lax.sort((x, lax.broadcasted_iota(jnp.int32, x.shape, 1)), dimension=1, num_keys=1),
            reals(shape=(3, 4)), solve=[(0,)], label="values and indices"),
    Example(lambda x: lax.sort_key_val(x, jnp.arange(5)), integers(shape=(5,)), solve=[(0,)],
            label="sort_key_val with arange, ties"),
    Example(lambda x, v: lax.sort((x, v, lax.broadcasted_iota(jnp.int32, x.shape, 0)), dimension=0, num_keys=1),
            reals(shape=(4, 2)), reals(shape=(4, 2)), solve=[(0,), (1,), (0, 1)], label="carried payload"),
], notes="needs an operand carrying lax.iota along the sort dimension (the permutation) and its output")
pack.register_ivjp(P.sort_p, _sort_ivjp)
pack.register_nonzero(P.sort_p, nonzero_if_all)  # each output is a permutation of its operand
pack.register_ildj(P.sort_p)


def _top_k_solve(outvals, k, axis):
    # With k equal to the axis length, top_k sorts: values = take_along_axis(x,
    # indices), indices a permutation, so x = take_along_axis(values, indices^-1).
    # (top_k has no axis param before JAX 0.7: the last axis.)
    axis %= len(input_avals()[0].shape)
    n = input_avals()[0].shape[axis]
    if k != n:
        raise NotInvertibleError(f"`top_k` keeps only k={k} of {n} elements")
    values, indices = _all_known(outvals, "top_k")
    inv = _inverse_permutation(indices, axis)
    return jnp.take_along_axis(values, inv, axis), inv


def _top_k_inverse(invals, outvals, *, k, axis=-1, **_):
    return [_top_k_solve(outvals, k, axis)[0]]


def _top_k_ivjp(invals, outvals, out_cts, *, k, axis=-1, **_):
    x, inv = _top_k_solve(outvals, k, axis)
    ct = out_cts[0]
    if not is_float(input_avals()[0]):
        return [x], [None]
    return [x], [jnp.zeros_like(x) if ct is None else jnp.take_along_axis(ct, inv, axis)]


pack.register_inverse(P.top_k_p, _top_k_inverse, examples=Example(lambda x: lax.top_k(x, 4), reals(shape=(3, 4)),
                                                                  solve=[(0,)]),
                      notes="only with k equal to the axis length (a sort that returns its permutation)")
pack.register_ivjp(P.top_k_p, _top_k_ivjp)
pack.register_ildj(P.top_k_p)
pack.register_not_invertible(P.approx_top_k_p, "it keeps only k elements, approximately the largest")

# --------------------------------------------------------------------------
# documented refusals: these drop or combine elements

# Alone, these lose elements; slices, windows or constant-index gathers that
# together cover an array rebuild it through partial knowledge (jaxinv._src.partial).
pack.register_not_invertible(P.slice_p, "it drops elements (slices that together cover an array do rebuild it)")
pack.register_nonzero(P.slice_p, nonzero_if_first)
pack.register_not_invertible(P.dynamic_slice_p, "it keeps only a window of its operand (constant-index windows "
                             "that together cover it do rebuild it)")
pack.register_nonzero(P.dynamic_slice_p, nonzero_if_first)
pack.register_not_invertible(P.gather_p, "it may drop or repeat elements, depending on the index values (a "
                             "constant permutation, or constant-index gathers that cover the operand, do rebuild it)")
for _prim in (P.reduce_sum_p, P.reduce_prod_p, P.reduce_max_p, P.reduce_min_p, P.reduce_and_p, P.reduce_or_p,
              P.reduce_xor_p, P.reduce_p):
    pack.register_not_invertible(_prim, "it reduces each axis it runs over to one value")
for _prim in (P.reduce_max_p, P.reduce_min_p, P.reduce_prod_p):
    pack.register_nonzero(_prim, nonzero_if_first)  # the max/min is one of the inputs; a product of nonzero factors
pack.register_not_invertible(P.argmax_p, "it keeps only the position of the largest element")
pack.register_not_invertible(P.argmin_p, "it keeps only the position of the smallest element")
for _prim in (P.reduce_window_sum_p, P.reduce_window_max_p, P.reduce_window_min_p, P.reduce_window_p):
    pack.register_not_invertible(_prim, "each pooling window combines several elements into one")
pack.register_not_invertible(P.select_and_scatter_add_p, "it sums window cotangents onto selected elements")
pack.register_not_invertible(P.select_and_gather_add_p, "it keeps one element per pooling window")
