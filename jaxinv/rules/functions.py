"""Inverses of well-known JAX functions, recognised by identity.

Some injective JAX functions are ``jax.custom_jvp`` functions whose body no
per-primitive rule can invert:

* ``jnp.logaddexp`` (hence ``jax.nn.softplus`` = ``logaddexp(x, 0)`` and
  ``jax.nn.log_sigmoid``) and ``jnp.logaddexp2`` pick a branch with
  ``max``/``abs``/``select_n``, none of them injective;
* ``jax.scipy.special.logit`` is ``log(x / (1 - x))``: its input on both sides
  of a division.

A ``custom_jvp_call`` equation records where its function and its JVP rule were
defined, in its jaxprs' debug info (``logaddexp at .../jax/_src/lax/other.py:261``).
That pair, read off the equation the public function itself binds, identifies
the function: a call carrying the same pair is that function, whatever its
shapes, batching or enclosing ``jit``. A user's own ``custom_jvp`` never matches
(it is defined elsewhere), and if a JAX release reimplements one of these
functions, it simply stops matching and its body is inverted as before.

``custom_jvp_call``'s inverse rule (:mod:`jaxinv.rules.control_flow`) asks
:func:`known_inverse` first and inverts the body otherwise. The rules here are
true inverses (these functions are injective), so they serve gradients too;
their cotangents still come from the function's own custom JVP.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import ClosedJaxpr, Jaxpr
from jax.extend.core import primitives as P

from jaxinv import registry
from jaxinv.registry import NotInvertibleError, input_avals

FunctionInverse = Callable[[Sequence[Any], Sequence[Any]], Sequence[Any]]

# (public function, example arguments, rule): resolved to signatures lazily.
_registered: list[tuple[Callable, tuple, FunctionInverse]] = []
_by_signature: dict[tuple[str, str], FunctionInverse] | None = None


def register_function_inverse(fn: Callable, example_args: tuple, rule: FunctionInverse) -> FunctionInverse:
    """Invert the ``custom_jvp`` function that ``fn(*example_args)`` binds with
    ``rule(invals, outvals) -> invals`` (the call's inputs, ``None`` for the
    unknown ones; raise :class:`NotInvertibleError` for a pattern it cannot solve).

    Example::

        register_function_inverse(jax.scipy.special.logit, (0.5,),
                                  lambda invals, outvals: [lax.logistic(outvals[0])])
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
    JAX did not record it)."""
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
    except Exception:  # a JAX without this function's old form: nothing to recognise
        return None
    sigs = {signature(e.params.get("call_jaxpr"), e.params.get("jvp_jaxpr_fun"))
            for e in _custom_jvp_calls(closed.jaxpr)}
    sigs.discard(None)
    return sigs.pop() if len(sigs) == 1 else None


def _table() -> dict[tuple[str, str], FunctionInverse]:
    global _by_signature
    if _by_signature is None:
        table = {}
        for fn, args, rule in _registered:
            sig = _bound_signature(fn, args)
            if sig is not None:
                table[sig] = rule
        _by_signature = table
    return _by_signature


def known_inverse(call_jaxpr, jvp_fun) -> FunctionInverse | None:
    """The rule for a ``custom_jvp_call`` of a function registered here, else None."""
    sig = signature(call_jaxpr, jvp_fun)
    return None if sig is None else _table().get(sig)


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
