"""``jaxinv.invertible``: JAX's own transformations, with the reversible backward.

Two primitives:

* ``invertible_call`` evaluates the function. Its JVP rule binds the call again
  (now also returning the plan's residuals) and a *linear* primitive;
* ``invertible_lin(known, residuals, outputs, tangents)`` is linear in its
  tangents. Its transpose runs the reversible backward pass, rebuilding the
  inputs from the outputs; its evaluation (forward mode) rebuilds the inputs
  and runs a JVP.

Under ``jax.grad``, partial evaluation keeps only ``invertible_lin``'s
non-linear operands as residuals: the closure values, what the plan saves and
the outputs. ``jax.jvp``, ``jax.linearize`` and ``jax.hessian`` work too,
because the linear primitive can evaluate and differentiate itself (unlike a
``jax.custom_vjp``). Batching binds the call again with a batched body.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jax.tree_util import tree_flatten, tree_unflatten

from jaxinv._src.flatten import register_inline
from jaxinv.disable import is_enabled
from jaxinv._src.dtypes import is_float, zero_cotangent
from jaxinv._src.reversible import Batched, Reversible
from jaxinv._src.tracing import trace

invertible_call_p = Primitive("invertible_call")
invertible_call_p.multiple_results = True
invertible_lin_p = Primitive("invertible_lin")
invertible_lin_p.multiple_results = True


def invertible(f: Callable) -> Callable:
    """Make ``jax.grad``/``jax.vjp`` of ``f`` use the reversible backward pass.

    The result composes with ``jit``, ``vmap``, ``jax.jvp``, ``jax.linearize``
    and ``jax.hessian``; gradients reach values ``f`` closes over. Under
    ``jax.vjp`` its residuals are the outputs plus what the plan saves.

    Example:
        ```python
        net = jaxinv.invertible(revnet)
        g = jax.grad(lambda p, x: jnp.sum(net(p, x) ** 2))(params, x)
        ```
    """

    @functools.wraps(f)
    def wrapped(*args):
        if not is_enabled():  # jaxinv.disabled(): plain AD
            return f(*args)
        t = trace(f, args)
        if t.aux_tree is not None:
            raise TypeError("invertible functions cannot return aux values")
        rev = Reversible(t.plan, t.num_consts)
        outs = invertible_call_p.bind(*t.consts, *tree_flatten(args)[0], rev=rev, emit_residuals=False)
        return tree_unflatten(t.out_tree, outs)

    return wrapped


# ---- invertible_call


def _call_impl(*args, rev, emit_residuals):
    outs, res = rev.forward(*args)
    return [*outs, *res] if emit_residuals else outs


def _call_abstract_eval(*avals, rev, emit_residuals):
    return [*rev.out_avals, *rev.res_avals] if emit_residuals else list(rev.out_avals)


def _tangent_or_zero_like(t, aval):
    return zero_cotangent(aval) if type(t) is ad.Zero else t


def _call_jvp(primals, tangents, *, rev, emit_residuals):
    if emit_residuals:  # forward mode of the residual-emitting call: differentiate it plainly
        fn = lambda *a: _call_impl(*a, rev=rev, emit_residuals=True)
        tangents = [_tangent_or_zero_like(t, a) for t, a in zip(tangents, rev.in_avals)]
        return jax.jvp(fn, list(primals), tangents)
    both = invertible_call_p.bind(*primals, rev=rev, emit_residuals=True)
    n_out = len(rev.out_avals)
    outs, res = both[:n_out], both[n_out:]
    float_in = [i for i, a in enumerate(rev.in_avals) if is_float(a)]
    if all(type(tangents[i]) is ad.Zero for i in float_in):
        return outs, [ad.Zero(a.to_tangent_aval()) for a in rev.out_avals]
    known = list(primals[:rev.num_known])
    lin_tangents = [ad.instantiate_zeros(tangents[i]) for i in float_in]
    t_float = invertible_lin_p.bind(*known, *res, *outs, *lin_tangents, rev=rev)
    t_iter = iter(t_float)
    t_out = [next(t_iter) if is_float(a) else ad.Zero(a.to_tangent_aval()) for a in rev.out_avals]
    return outs, t_out


invertible_call_p.def_impl(_call_impl)
invertible_call_p.def_abstract_eval(_call_abstract_eval)
ad.primitive_jvps[invertible_call_p] = _call_jvp
mlir.register_lowering(invertible_call_p, mlir.lower_fun(_call_impl, multiple_results=True))


def _call_batch(args, dims, *, rev, emit_residuals):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    args = [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    in_axes = [None if d is None else 0 for d in dims]
    brev = Batched(rev, in_axes, size)
    outs = invertible_call_p.bind(*args, rev=brev, emit_residuals=emit_residuals)
    out_dims = [0] * len(rev.out_avals)
    if emit_residuals:
        out_dims += [None if ax is None else 0 for ax in brev.res_axes]
    return outs, out_dims


batching.primitive_batchers[invertible_call_p] = _call_batch
register_inline(invertible_call_p, lambda params: params["rev"].body())


# ---- invertible_lin


def _split_lin(args, rev):
    nk, nr, no = rev.num_known, len(rev.res_avals), len(rev.out_avals)
    return args[:nk], args[nk:nk + nr], args[nk + nr:nk + nr + no], args[nk + nr + no:]


def _full_tangents(float_tangents, rev):
    it = iter(float_tangents)
    return [next(it) if is_float(a) else zero_cotangent(a) for a in rev.in_avals]


def _lin_impl(*args, rev):
    known, res, outs, tangents = _split_lin(args, rev)
    t_out = rev.jvp(known, res, outs, _full_tangents(tangents, rev))
    return [t for t, a in zip(t_out, rev.out_avals) if is_float(a)]


def _lin_abstract_eval(*avals, rev):
    return [a for a in rev.out_avals if is_float(a)]


def _lin_transpose(cts, *args, rev):
    known, res, outs, tangents = _split_lin(args, rev)
    cts_it = iter(cts)
    full_cts = []
    for a in rev.out_avals:
        c = next(cts_it) if is_float(a) else None
        full_cts.append(None if c is None or type(c) is ad.Zero else c)
    if all(c is None for c in full_cts):
        in_cts = [None] * len(rev.in_avals)
    else:
        in_cts = rev.backward(known, res, outs, full_cts)
    float_cts = [c if c is not None else ad.Zero(a.to_tangent_aval())
                 for c, a in zip(in_cts, rev.in_avals) if is_float(a)]
    return [None] * (len(args) - len(tangents)) + float_cts


def _lin_jvp(primals, tangents, *, rev):
    fn = lambda *a: _lin_impl(*a, rev=rev)
    avals = [*rev.in_avals[:rev.num_known], *rev.res_avals, *rev.out_avals,
             *[a for a in rev.in_avals if is_float(a)]]
    tangents = [_tangent_or_zero_like(t, a) for t, a in zip(tangents, avals)]
    return jax.jvp(fn, list(primals), tangents)


def _lin_batch(args, dims, *, rev):
    in_axes = [None if d is None else d for d in dims]
    out = jax.vmap(lambda *a: _lin_impl(*a, rev=rev), in_axes=in_axes)(*args)
    return out, [0] * len(out)


invertible_lin_p.def_impl(_lin_impl)
invertible_lin_p.def_abstract_eval(_lin_abstract_eval)
ad.primitive_jvps[invertible_lin_p] = _lin_jvp
ad.primitive_transposes[invertible_lin_p] = _lin_transpose
batching.primitive_batchers[invertible_lin_p] = _lin_batch
mlir.register_lowering(invertible_lin_p, mlir.lower_fun(_lin_impl, multiple_results=True))
