"""Inverses of well-known JAX functions, recognised by identity.

Some injective JAX functions are ``jax.custom_jvp`` functions whose body no
per-primitive rule can invert:

* ``jnp.logaddexp`` (hence ``jax.nn.softplus`` = ``logaddexp(x, 0)`` and
  ``jax.nn.log_sigmoid``) and ``jnp.logaddexp2`` pick a branch with
  ``max``/``abs``/``select_n``, none of them injective;
* ``jax.scipy.special.logit`` is ``log(x / (1 - x))``: its input on both sides
  of a division.

A call is recognised in two steps:

1. *signature*, a fast filter: a ``custom_jvp_call`` equation records where its
   function and its JVP rule were defined, in its jaxprs' debug info
   (``logaddexp at .../jax/_src/lax/other.py:261``). A call whose pair differs
   from every registered function's (a user's own ``custom_jvp``, a JAX release
   that moved the function) is not one of them.
2. *structure*, the proof: the registered public function is traced again at
   the call's own input types, and the body of the ``custom_jvp_call`` it binds
   must equal the call's body, equation by equation (``structurally_equal``);
   under ``vmap`` the body is compared with the function's own, batched alike.
   A signature alone is not enough: it names only where a function and its
   JVP rule are defined, which two functions made by one helper share (and
   the JVP half may be JAX's generic wrapper, as ``logit``'s is). Two
   functions that pass both steps compute the same thing the same way. The
   retrace is cached per function and input types, so a deep network traces
   each function once.

A call that fails either step (a look-alike, a body batched other than over
leading axes, a retrace that fails) is not recognised: its body is inverted by
the per-primitive rules, which invert it correctly or refuse.

``custom_jvp_call``'s inverse rule (``jaxinv.rules.control_flow``) asks
``known_inverse`` first and inverts the body otherwise. The rules here are
true inverses (these functions are injective), so they serve gradients too;
their cotangents still come from the function's own custom JVP.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal
from jax.extend.core import primitives as P

from jaxinv import registry
from jaxinv._src.compat import aval_spec, literal_value, trace_context
from jaxinv.registry import NotInvertibleError, input_avals

FunctionInverse = Callable[[Sequence[Any], Sequence[Any]], Sequence[Any]]

# (public function, example arguments, rule): resolved to signatures lazily.
_registered: list[tuple[Callable, tuple, FunctionInverse]] = []
_by_signature: dict[tuple[str, str], list[tuple[Callable, FunctionInverse]]] | None = None
# (public function, input avals, batched inputs, trace context) -> the custom_jvp_call body it binds
_reference_bodies: dict[tuple, ClosedJaxpr | None] = {}


def register_function_inverse(fn: Callable, example_args: tuple, rule: FunctionInverse) -> FunctionInverse:
    """Invert the ``custom_jvp`` function that ``fn(*example_args)`` binds with
    ``rule(invals, outvals) -> invals`` (the call's inputs, ``None`` for the
    unknown ones; raise ``NotInvertibleError`` for a pattern it cannot solve).

    Example:
        ```python
        register_function_inverse(jax.scipy.special.logit, (0.5,),
                                  lambda invals, outvals: [lax.logistic(outvals[0])])
        ```
    """
    global _by_signature
    _registered.append((fn, tuple(example_args), rule))
    _by_signature = None
    return rule


def _src(obj) -> str | None:
    info = getattr(obj, "debug_info", None)
    return getattr(info, "func_src_info", None)


def signature(call_jaxpr, jvp_fun) -> tuple[str, str] | None:
    """Where a ``custom_jvp_call``'s function and JVP rule were defined (None if
    JAX did not record it): a fast filter, not a proof of identity.

    Example:
        ```python
        eqn = jax.make_jaxpr(jnp.logaddexp)(1.0, 2.0).eqns[0]
        signature(eqn.params["call_jaxpr"], eqn.params["jvp_jaxpr_fun"])
        # ('logaddexp at .../jax/_src/lax/other.py:261', '_logaddexp_jvp at .../jax/_src/lax/other.py:282')
        ```
    """
    fun_src = _src(getattr(call_jaxpr, "jaxpr", call_jaxpr))
    jvp_src = _src(jvp_fun)
    if fun_src is None or jvp_src is None:
        return None
    return fun_src, jvp_src


def _custom_jvp_calls(jaxpr: Jaxpr):
    for e in jaxpr.eqns:
        if e.primitive is P.custom_jvp_call_p:
            yield e
            continue
        for p in e.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                if isinstance(sub, ClosedJaxpr):
                    yield from _custom_jvp_calls(sub.jaxpr)
                elif isinstance(sub, Jaxpr):
                    yield from _custom_jvp_calls(sub)


def _bound_signature(fn: Callable, example_args: tuple) -> tuple[str, str] | None:
    """The signature of the one ``custom_jvp_call`` that ``fn`` binds, if exactly one."""
    try:
        closed = jax.make_jaxpr(fn)(*example_args)
    except Exception:  # fn does not trace on this JAX: nothing to recognise
        return None
    sigs = {signature(e.params.get("call_jaxpr"), e.params.get("jvp_jaxpr_fun"))
            for e in _custom_jvp_calls(closed.jaxpr)}
    sigs.discard(None)
    return sigs.pop() if len(sigs) == 1 else None


def _table() -> dict[tuple[str, str], list[tuple[Callable, FunctionInverse]]]:
    global _by_signature
    if _by_signature is None:
        table: dict = {}
        for fn, args, rule in _registered:
            sig = _bound_signature(fn, args)
            if sig is not None:  # several functions may share one: structure tells them apart
                table.setdefault(sig, []).append((fn, rule))
        _by_signature = table
    return _by_signature


def _batchings(avals: tuple):
    """Which inputs ``vmap`` may have batched at their leading axis: none first
    (the call as traced), then those sharing one leading dimension."""
    for batched in itertools.product((False, True), repeat=len(avals)):
        sizes = {a.shape[0] if a.shape else None for a, b in zip(avals, batched) if b}
        if not any(batched) or (len(sizes) == 1 and None not in sizes):
            yield batched


def _reference_body(fn: Callable, avals: tuple, batched: tuple) -> ClosedJaxpr | None:
    """The body of the one ``custom_jvp_call`` that ``fn`` binds at input types
    ``avals``, under ``vmap`` over the leading axis of the ``batched`` inputs
    (None if it binds none or several, or does not trace there)."""
    key = (fn, avals, batched, trace_context())
    if key not in _reference_bodies:
        try:
            if any(batched):  # vmap batches the body itself (unbatched operands broadcast inside)
                fn = jax.vmap(fn, in_axes=tuple(0 if b else None for b in batched))
            closed = jax.make_jaxpr(fn)(*[aval_spec(a) for a in avals])
            bodies = [e.params["call_jaxpr"] for e in _custom_jvp_calls(closed.jaxpr)]
        except Exception:  # wrong arity, types fn refuses, ...: not this function
            bodies = []
        _reference_bodies[key] = bodies[0] if len(bodies) == 1 else None
    return _reference_bodies[key]


def known_inverse(call_jaxpr, jvp_fun) -> FunctionInverse | None:
    """The rule for a ``custom_jvp_call`` of a function registered here, else None:
    its signature must match, and its body must equal the one the function
    binds at the call's input types (directly, or under ``vmap``).

    Example:
        ```python
        eqn = jax.make_jaxpr(jax.nn.softplus)(1.0).eqns[0].params["jaxpr"].eqns[0]
        known_inverse(eqn.params["call_jaxpr"], eqn.params["jvp_jaxpr_fun"])  # logaddexp's rule
        ```
    """
    sig = signature(call_jaxpr, jvp_fun)
    candidates = _table().get(sig, ()) if sig is not None else ()
    if not candidates:
        return None
    avals = tuple(v.aval for v in getattr(call_jaxpr, "jaxpr", call_jaxpr).invars)
    for fn, rule in candidates:
        for batched in _batchings(avals):
            reference = _reference_body(fn, avals, batched)
            if reference is not None and structurally_equal(reference, call_jaxpr):
                return rule
    return None


# --------------------------------------------------------------------------
# structural equality


def structurally_equal(a, b) -> bool:
    """Whether two jaxprs (or closed jaxprs) are the same program up to variable
    names: as many consts (equal values), inputs and outputs of the same types,
    and the same equations in order: primitive, params (nested jaxprs compared
    the same way), operands (variables by position of definition, literals by
    value and type) and output types.

    Example:
        ```python
        f = lambda x: jnp.sin(x) * 2.0
        structurally_equal(jax.make_jaxpr(f)(1.0), jax.make_jaxpr(f)(3.0))         # True
        structurally_equal(jax.make_jaxpr(f)(1.0), jax.make_jaxpr(jnp.cos)(1.0))   # False
        ```
    """
    if isinstance(a, ClosedJaxpr) != isinstance(b, ClosedJaxpr):
        return False
    if isinstance(a, ClosedJaxpr):
        if len(a.consts) != len(b.consts) or not all(map(_same_value, a.consts, b.consts)):
            return False
        a, b = a.jaxpr, b.jaxpr
    if (len(a.constvars), len(a.invars), len(a.outvars), len(a.eqns)) != \
            (len(b.constvars), len(b.invars), len(b.outvars), len(b.eqns)) or a.effects != b.effects:
        return False
    pos_a: dict = {}  # variable -> position of definition
    pos_b: dict = {}

    def define(vs_a, vs_b) -> bool:
        for va, vb in zip(vs_a, vs_b):
            if va.aval != vb.aval:
                return False
            pos_a[va] = pos_b[vb] = len(pos_a)
        return True

    def same_atoms(xs, ys) -> bool:
        return len(xs) == len(ys) and all(_same_atom(x, y, pos_a, pos_b) for x, y in zip(xs, ys))

    if not define(a.constvars + a.invars, b.constvars + b.invars):
        return False
    for ea, eb in zip(a.eqns, b.eqns):
        if (ea.primitive is not eb.primitive or len(ea.outvars) != len(eb.outvars)
                or not same_atoms(ea.invars, eb.invars) or not _same_param(ea.params, eb.params)
                or not define(ea.outvars, eb.outvars)):
            return False
    return same_atoms(a.outvars, b.outvars)


def _same_atom(x, y, pos_x: dict, pos_y: dict) -> bool:
    if isinstance(x, Literal) or isinstance(y, Literal):
        return (isinstance(x, Literal) and isinstance(y, Literal) and x.aval == y.aval
                and _same_value(literal_value(x), literal_value(y)))
    return x in pos_x and y in pos_y and pos_x[x] == pos_y[y]


def _same_value(x, y) -> bool:
    """Bit for bit, with dtype and shape (NaN equals itself, 0.0 is not -0.0)."""
    try:
        x, y = np.asarray(x), np.asarray(y)
    except Exception:  # a tracer: no value to compare
        return False
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def _same_param(p, q) -> bool:
    if isinstance(p, (ClosedJaxpr, Jaxpr)):
        return isinstance(q, (ClosedJaxpr, Jaxpr)) and structurally_equal(p, q)
    if isinstance(p, dict):
        return isinstance(q, dict) and p.keys() == q.keys() and all(_same_param(p[k], q[k]) for k in p)
    if isinstance(p, (tuple, list)):
        return type(p) is type(q) and len(p) == len(q) and all(map(_same_param, p, q))
    if isinstance(p, (np.ndarray, jax.Array)):
        return _same_value(p, q)
    try:
        return type(p) is type(q) and bool(p == q)
    except Exception:  # no meaningful ==
        return False


# --------------------------------------------------------------------------
# the rules


def _fit(x, i: int):
    """A solved operand, cut to input ``i``'s shape and dtype. An operand of one
    element broadcast against the other: every element of the solution holds
    its value, take the first (as for ``add``). Any other mismatch is left for
    the planner to reject (the operand cannot be recovered uniquely)."""
    aval = input_avals()[i]
    shape = tuple(aval.shape)
    if tuple(x.shape) != shape and math.prod(shape) == 1:
        x = jnp.reshape(x, (-1,))[0].reshape(shape)
    return x.astype(aval.dtype)


def _log1mexp(d):
    """``log(1 - exp(d))`` for ``d <= 0``, accurate for ``d`` near 0 and far below."""
    return jnp.where(d > -math.log(2), jnp.log(-jnp.expm1(d)), jnp.log1p(-jnp.exp(d)))


def _is_zero(x) -> bool:
    """Whether ``x`` is a concrete array of zeros (not a traced value)."""
    try:
        return not np.any(np.asarray(x))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
        return False


def _solve_logaddexp(name: str, log_base: float):
    """``y = log_b(b**x1 + b**x2)`` solved for the unknown operand given the other:
    ``x = y + log_b(1 - b**(known - y))``. Defined for ``y > known`` (the image)."""

    def rule(invals, outvals):
        unknown = [i for i, v in enumerate(invals) if v is None]
        if len(unknown) != 1:
            raise NotInvertibleError(f"both operands of `{name}` are unknown; one must be known")
        (i,) = unknown
        (y,) = outvals
        if not jnp.issubdtype(jnp.result_type(y), jnp.floating):
            raise NotInvertibleError(f"`{name}` is inverted for real floating values only")
        if registry.well_conditioned_required() and not _is_zero(invals[1 - i]):
            # y = c + log(1 + exp(x - c)) rounds to c where x << c: x is lost
            # (softplus, c = 0, keeps full relative precision near 0)
            raise NotInvertibleError(f"`{name}` with a known operand other than 0 saturates where the unknown one is "
                                     f"far below it; on the gradient path its input is saved")
        d = (jnp.asarray(invals[1 - i], y.dtype) - y) * log_base
        out = list(invals)
        out[i] = _fit(y + _log1mexp(d) / log_base, i)
        return out

    return rule


def _logit_inverse(invals, outvals):
    return [_fit(lax.logistic(outvals[0]), 0)]


register_function_inverse(jnp.logaddexp, (0.5, 0.5), _solve_logaddexp("logaddexp", 1.0))
register_function_inverse(jnp.logaddexp2, (0.5, 0.5), _solve_logaddexp("logaddexp2", math.log(2)))
register_function_inverse(jax.scipy.special.logit, (0.5,), _logit_inverse)
