"""Tracing a function to one flat jaxpr: call-like primitives are inlined.

``jit``, ``closed_call``, ``remat`` and a nested ``jaxinv.invertible`` or
rule-less ``custom_ivjp`` carry a body that is part of the same reversible
region: inlining them lets the planner see (and invert) across their borders.
Units with rules of their own (``scan``, ``custom_jvp_call``, ...) are kept whole.

Every re-bound equation keeps the user's source line (``user_context``), so
errors and ``explain`` can point at it. Identical effect-free equations on the
same values are traced once (common-subexpression elimination): a network
called twice on the same input is one network with all its outputs used.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
from jax.extend import source_info_util
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal, Primitive
from jax.extend.core import primitives as P
from jax.tree_util import PyTreeDef, tree_structure, tree_unflatten

from jaxinv._src.compat import aval_spec, bind_equation, jit_p, literal_value, remat_p


# prim -> fn(params) -> ClosedJaxpr | None: the body to inline, or None to keep
# the equation whole.
inline_rules: dict[Primitive, Callable[[dict], ClosedJaxpr | None]] = {}


def register_inline(prim: Primitive, body: Callable[[dict], ClosedJaxpr | None]) -> None:
    """Declare ``prim`` call-like: ``body(params)`` gives the jaxpr to inline.

    Example:
        ```python
        register_inline(jax.extend.core.primitives.closed_call_p, lambda p: p["call_jaxpr"])
        ```
    """
    inline_rules[prim] = body


def as_closed(j: Jaxpr | ClosedJaxpr) -> ClosedJaxpr:
    """A body from an equation's params as a ``ClosedJaxpr`` (some primitives
    hold an open ``Jaxpr``, others a closed one, and releases differ)."""
    return j if isinstance(j, ClosedJaxpr) else ClosedJaxpr(j, ())


register_inline(jit_p, lambda p: as_closed(p["jaxpr"]))
register_inline(P.closed_call_p, lambda p: as_closed(p["call_jaxpr"]))
register_inline(remat_p, lambda p: as_closed(p["jaxpr"]))
register_inline(P.call_p, lambda p: as_closed(p["call_jaxpr"]))


def hashable_params(params: dict):
    """Equation params as a hashable key, or None if some param is unhashable."""
    try:
        key = tuple(sorted(params.items()))
        hash(key)
        return key
    except TypeError:
        return None


def trace_flat(f: Callable, flat_args: Sequence[Any], in_tree: PyTreeDef) -> tuple[ClosedJaxpr, PyTreeDef]:
    """``f`` traced on the leaves of its arguments (``in_tree``): the jaxpr,
    whose inputs and outputs are the leaves, and the output's tree.

    Example:
        ```python
        flat_args, in_tree = tree_flatten(args)
        closed, out_tree = trace_flat(f, flat_args, in_tree)
        ```
    """
    closed, out_shape = jax.make_jaxpr(lambda *leaves: f(*tree_unflatten(in_tree, leaves)),
                                       return_shape=True)(*flat_args)
    return closed, tree_structure(out_shape)


def atom_value(env: dict, v) -> Any:
    """A jaxpr atom's value: a literal's own, else the variable's in ``env``.

    Example:
        ```python
        read = functools.partial(atom_value, env)
        env.update(zip(eqn.outvars, eval_eqn(eqn, [read(v) for v in eqn.invars])))
        ```
    """
    return literal_value(v) if isinstance(v, Literal) else env[v]


def eval_eqn(eqn, invals, traceback=None) -> list:
    """Bind ``eqn``'s primitive on ``invals``, under the equation's source line
    (or ``traceback``, given for equations inlined from a library's jit)."""
    with source_info_util.user_context(traceback or eqn.source_info.traceback):
        out = bind_equation(eqn.primitive, invals, eqn.params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _user_traceback(eqn, outer):
    """The equation's own traceback if it names a user frame, else ``outer``'s:
    equations of a library's jitted function (``jax.random``, ``jnp.where``)
    are attributed to the user's line that called it."""
    if outer is not None and not source_info_util.summarize(eqn.source_info):
        return outer
    return eqn.source_info.traceback


def _cse_key(eqn, invals):
    """Equal for two effect-free equations computing the same thing from the
    same values (so ``f(x)[0] ... f(x)[1]`` traces ``f`` once), else None."""
    params = hashable_params(eqn.params)
    if eqn.effects or params is None:
        return None
    try:
        ins = tuple(id(x) if isinstance(x, jax.core.Tracer) else ("lit", float(x), str(jax.numpy.result_type(x)))
                    for x in invals)
    except (TypeError, ValueError):  # a non-scalar literal
        return None
    return (eqn.primitive, ins, params)


def _inline_eval(jaxpr: Jaxpr, consts, args, outer_traceback=None, seen=None) -> list:
    env: dict[Any, Any] = {}
    seen = {} if seen is None else seen   # CSE: key -> (outputs, inputs kept alive)
    read = functools.partial(atom_value, env)
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        key = _cse_key(eqn, invals)
        if key is not None and key in seen:
            env.update(zip(eqn.outvars, seen[key][0]))
            continue
        rule = inline_rules.get(eqn.primitive)
        body = rule(eqn.params) if rule is not None else None
        tb = _user_traceback(eqn, outer_traceback)
        if body is not None:
            outs = _inline_eval(body.jaxpr, body.consts, invals, tb, seen)
        else:
            outs = eval_eqn(eqn, invals, tb)
        if key is not None:
            seen[key] = (outs, invals)
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def flatten(closed: ClosedJaxpr, *, lift_consts: bool = True) -> ClosedJaxpr:
    """Inline every call-like equation. With ``lift_consts`` the result's invars
    are ``closed``'s constvars followed by its invars (closure values become
    explicit inputs); without, the invars are unchanged (loop bodies).

    Example:
        ```python
        flat = flatten(jax.make_jaxpr(f)(x))
        ```
    """
    jaxpr = closed.jaxpr
    spec = aval_spec
    if not lift_consts:
        fn = lambda *a: _inline_eval(jaxpr, closed.consts, a)
        return jax.make_jaxpr(fn)(*[spec(v.aval) for v in jaxpr.invars])
    n = len(jaxpr.constvars)
    fn = lambda *a: _inline_eval(jaxpr, a[:n], a[n:])
    return jax.make_jaxpr(fn)(*[spec(v.aval) for v in (*jaxpr.constvars, *jaxpr.invars)])


def has_calls(closed: ClosedJaxpr) -> bool:
    """Whether ``closed`` has an equation ``flatten`` may inline."""
    return any(e.primitive in inline_rules for e in closed.jaxpr.eqns)
