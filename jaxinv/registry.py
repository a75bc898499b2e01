"""The rule tables, and the one-line helpers that fill them.

Three tables map a ``jax.extend.core.Primitive`` to a rule, in the spirit of
``jax.interpreters.ad.primitive_jvps``:

* ``inverse_rules[prim](invals, outvals, **params) -> invals``: ``invals`` lists
  the equation's inputs, with the known ones as arrays and ``None`` for the ones
  to solve for; ``outvals`` lists its (known) outputs. Return every input. Raise
  :class:`NotInvertibleError` when this pattern of unknowns cannot be solved.
* ``ivjp_rules[prim](invals, outvals, out_cts, **params) -> (invals, in_cts)``:
  the same, plus the input cotangents, in one (cheaper or more accurate) step.
  Optional: without one, the interpreter uses the inverse rule and then the
  primitive's own VJP.
* ``principal_inverse_rules``: inverses of non-injective primitives on a
  documented principal branch (``sin`` -> ``asin``). Only ``jaxinv.inverse`` uses
  them; the gradient path never does.

Rules see concrete arrays or tracers, never jaxpr variables, and may be called
while jaxinv plans (with abstract tracers) to find out whether a pattern of
unknowns is solvable, so they must not depend on values to decide that; the
exceptions are :func:`require_nonzero` and :func:`require_nonsingular`, which
consult what the planner proved.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from typing import Any, Callable, Sequence

import jax
from jax.extend.core import Primitive

InverseRule = Callable[..., Sequence[Any]]
IvjpRule = Callable[..., tuple[Sequence[Any], Sequence[Any]]]

inverse_rules: dict[Primitive, InverseRule] = {}
ivjp_rules: dict[Primitive, IvjpRule] = {}
principal_inverse_rules: dict[Primitive, InverseRule] = {}
# prim -> fn(nonzero_in: list[bool], **params) -> bool: is the output provably
# nonzero, given which inputs are?  Drives the zero-divisor policy (design.md).
nonzero_rules: dict[Primitive, Callable[..., bool]] = {}
# Primitives whose output is a matrix the user asserted nonsingular (the marker).
nonsingular_primitives: set[Primitive] = set()


class NotInvertibleError(ValueError):
    """An equation's inputs cannot be recovered from its outputs.

    Carries the primitive's name, the reason and the user's source line, e.g.
    ``sin at model.py:12 (block): sin is not injective``.
    """

    def __init__(self, reason: str, primitive: str | None = None, source: str | None = None):
        self.reason = reason
        self.primitive = primitive
        self.source = source
        where = ""
        if primitive:
            where = f"cannot invert `{primitive}`"
            if source:
                where += f" at {source}"
            where += ": "
        super().__init__(where + reason)

    def at(self, primitive: str, source: str | None) -> "NotInvertibleError":
        """The same error, with the primitive and source line filled in."""
        if self.primitive is not None:
            return self
        err = NotInvertibleError(self.reason, primitive, source)
        err.__cause__ = self.__cause__
        return err


class RuleError(TypeError):
    """A rule is defined or used wrongly (e.g. a ``custom_ivjp`` rule closing over
    a traced value). Unlike other exceptions from a rule, it is not read as
    "cannot invert" while planning: it reaches the user."""


# --------------------------------------------------------------------------
# registration


def register_inverse(prim: Primitive, rule: InverseRule, *, principal_branch: bool = False) -> InverseRule:
    """Register ``rule(invals, outvals, **params) -> invals`` as ``prim``'s inverse.

    With ``principal_branch=True`` the rule inverts a non-injective primitive on
    a chosen branch; it is then used by ``jaxinv.inverse`` only, never to
    reconstruct values for a gradient.

    Example::

        double_p = jax.extend.core.Primitive("double")
        ...
        jaxinv.register_inverse(double_p, lambda invals, outvals: [outvals[0] / 2])
    """
    table = principal_inverse_rules if principal_branch else inverse_rules
    table[prim] = rule
    _probe_cache.clear()
    _merged_tables.clear()
    return rule


def register_ivjp(prim: Primitive, rule: IvjpRule) -> IvjpRule:
    """Register ``rule(invals, outvals, out_cts, **params) -> (invals, in_cts)``.

    Example::

        def exp_ivjp(invals, outvals, out_cts, **params):
            (y,), (ct,) = outvals, out_cts
            return [jnp.log(y)], [ct * y]

        jaxinv.register_ivjp(lax.exp_p, exp_ivjp)
    """
    ivjp_rules[prim] = rule
    return rule


def register_nonzero(prim: Primitive, rule: Callable[..., bool] | None = None) -> None:
    """Declare when ``prim``'s output is provably nonzero.

    ``rule(nonzero_in, **params) -> bool`` gets one bool per input; the default
    says "always" (as for ``exp``). Used only by :func:`require_nonzero`.
    """
    nonzero_rules[prim] = rule if rule is not None else (lambda nonzero_in, **_: True)


def _accepting(fn: Callable) -> Callable:
    """Wrap ``fn`` so that it receives only the keyword params it names."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins: pass nothing
        return lambda *args, **params: fn(*args)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return fn
    names = {n for n, p in sig.parameters.items() if p.kind is not p.VAR_POSITIONAL}
    return lambda *args, **params: fn(*args, **{k: v for k, v in params.items() if k in names})


def defunary(prim: Primitive, inverse: Callable, ct: Callable | None = None, *,
             principal_branch: bool = False) -> None:
    """One-line rules for an injective unary elementwise primitive ``y = prim(x)``.

    ``inverse(y, **params) -> x``; the optional fused ``ct(x, y, ct_y, **params)
    -> ct_x`` registers an ivjp too. ``inverse``/``ct`` receive only the params
    they name.

    Example::

        defunary(lax.exp_p, jnp.log, ct=lambda x, y, ct: ct * y)
    """
    inv = _accepting(inverse)

    def inverse_rule(invals, outvals, **params):
        return [inv(outvals[0], **params)]

    register_inverse(prim, inverse_rule, principal_branch=principal_branch)
    if principal_branch:
        return
    if prim not in nonzero_rules:  # an injective map of a nonzero value is nonzero, unless declared otherwise
        register_nonzero(prim, lambda nonzero_in, **_: nonzero_in[0])
    if ct is not None:
        cot = _accepting(ct)

        def ivjp_rule(invals, outvals, out_cts, **params):
            x = inv(outvals[0], **params)
            return [x], [cot(x, outvals[0], out_cts[0], **params)]

        register_ivjp(prim, ivjp_rule)


def defbinary(prim: Primitive, solve_lhs: Callable | None, solve_rhs: Callable | None) -> None:
    """One-line inverse for a binary primitive ``y = prim(a, b)``.

    ``solve_lhs(y, b, **params) -> a`` recovers the first operand when the
    second is known, ``solve_rhs(y, a, **params) -> b`` the second; pass
    ``None`` for a side that cannot be solved. A solver that divides by its known
    operand calls :func:`require_nonzero` on it. (An unknown operand that was
    broadcast against the other cannot be recovered: the planner rejects the
    wrongly shaped result.)

    Example::

        defbinary(lax.add_p, lambda y, b: y - b, lambda y, a: y - a)
    """
    solvers = [_accepting(s) if s is not None else None for s in (solve_lhs, solve_rhs)]

    def inverse_rule(invals, outvals, **params):
        unknown = [i for i, v in enumerate(invals) if v is None]
        if len(unknown) != 1:
            raise NotInvertibleError(f"both operands of `{prim.name}` are unknown; one must be known")
        (i,) = unknown
        if solvers[i] is None:
            raise NotInvertibleError(f"`{prim.name}` cannot be solved for its {('first', 'second')[i]} operand")
        out = list(invals)
        out[i] = solvers[i](outvals[0], invals[1 - i], **params)
        return out

    register_inverse(prim, inverse_rule)


def defpermutation(prim: Primitive) -> None:
    """One-line rules for a structural primitive that only moves elements
    (``reshape``, ``transpose``, ``rev``, ``squeeze``, ...).

    Its inverse is its own linear transpose, applied to the outputs; the fused
    ivjp applies the same transpose to the cotangents.

    Example::

        defpermutation(lax.rev_p)
    """

    def undo(y, params):
        f = lambda x: prim.bind(x, **params)
        (x,) = jax.linear_transpose(f, input_avals()[0])(y)
        return x

    def inverse_rule(invals, outvals, **params):
        return [undo(outvals[0], params)]

    def ivjp_rule(invals, outvals, out_cts, **params):
        return [undo(outvals[0], params)], [undo(out_cts[0], params)]

    register_inverse(prim, inverse_rule)
    register_ivjp(prim, ivjp_rule)
    register_nonzero(prim, lambda nonzero_in, **_: nonzero_in[0])


# --------------------------------------------------------------------------
# what a rule may ask of the equation it is solving

_input_avals: contextvars.ContextVar[Sequence[jax.ShapeDtypeStruct] | None] = contextvars.ContextVar(
    "jaxinv_input_avals", default=None)


def input_avals() -> Sequence[jax.ShapeDtypeStruct]:
    """Inside a rule: the shapes and dtypes of the equation's inputs, known or not.

    Rules see ``None`` for an unknown input; this tells them its shape (needed
    by ``reshape``'s inverse, say). The interpreter and :mod:`jaxinv.testing`
    set it around every rule call.

    Example::

        register_inverse(lax.reshape_p,
            lambda invals, outvals, **p: [outvals[0].reshape(input_avals()[0].shape)])
    """
    avals = _input_avals.get()
    if avals is None:
        raise RuntimeError("jaxinv.registry.input_avals() is only available inside a rule called by jaxinv")
    return avals


@contextlib.contextmanager
def solving(in_avals: Sequence[Any]):
    """Set what :func:`input_avals` returns while a rule runs."""
    token = _input_avals.set([jax.ShapeDtypeStruct(a.shape, a.dtype) for a in in_avals])
    try:
        yield
    finally:
        _input_avals.reset(token)


# --------------------------------------------------------------------------
# the zero-divisor policy

_proven: contextvars.ContextVar[dict[int, frozenset] | None] = contextvars.ContextVar(
    "jaxinv_proven_facts", default=None)


def _require(x: Any, fact: str, what: str, hint: str) -> Any:
    facts = _proven.get()
    if facts is not None and fact not in facts.get(id(x), frozenset()):
        raise NotInvertibleError(f"{what} is not provably {fact} ({hint})")
    return x


def require_nonzero(x: Any, what: str = "the known operand") -> Any:
    """Assert, inside an inverse rule, that ``x`` (an input the rule divides by)
    is provably nonzero; returns ``x``.

    While jaxinv plans, this raises :class:`NotInvertibleError` unless the planner
    proved ``x`` nonzero (a literal without zeros, an output of ``exp`` or
    ``logistic``, a value marked with :func:`jaxinv.nonzero`, ...), so the
    equation's inputs are saved instead of divided by a possible zero. At run
    time it is free. Call it on the rule's *argument*, not on a value derived
    from it.

    Example::

        defbinary(lax.mul_p, lambda y, b: y / require_nonzero(b),
                             lambda y, a: y / require_nonzero(a))
    """
    return _require(x, "nonzero", what, "mark it with jaxinv.nonzero to assert it is")


def require_nonsingular(x: Any, what: str = "the known matrix") -> Any:
    """Like :func:`require_nonzero`, for a matrix a rule solves with: it must be
    a well-conditioned concrete constant or marked with ``jaxinv.nonzero``.

    Example::

        w = require_nonsingular(invals[1])
        x = jnp.linalg.solve(w.T, y.T).T
    """
    return _require(x, "nonsingular", what, "mark it with jaxinv.nonzero to assert it is")


@contextlib.contextmanager
def proving(facts: dict[int, frozenset]):
    """Used by the planner: the facts it proved, by ``id`` of the rule's arguments."""
    token = _proven.set(facts)
    try:
        yield
    finally:
        _proven.reset(token)


# Planner's cache of probe results; cleared whenever a rule is (re)registered.
_probe_cache: dict[Any, Any] = {}
_merged_tables: dict[bool, dict] = {}


def inverse_table(principal_branch: bool = False) -> dict:
    """The inverse rules the planner may use: with ``principal_branch=True``
    (``jaxinv.inverse`` only) the principal-branch rules are added."""
    if not principal_branch:
        return inverse_rules
    if True not in _merged_tables:
        merged = {**principal_inverse_rules, **inverse_rules}
        for prim in principal_inverse_rules.keys() & inverse_rules.keys():
            merged[prim] = _or_principal(inverse_rules[prim], principal_inverse_rules[prim])
        _merged_tables[True] = merged
    return _merged_tables[True]


def _or_principal(rule: InverseRule, principal: InverseRule) -> InverseRule:
    """``rule``, falling back to the principal branch where it refuses
    (``integer_pow`` with an even exponent)."""
    def either(invals, outvals, **params):
        try:
            return rule(invals, outvals, **params)
        except NotInvertibleError:
            return principal(invals, outvals, **params)
    return either
