"""The rule tables, and the one-line helpers that fill them.

Three tables map a ``jax.extend.core.Primitive`` to a rule, in the spirit of
``jax.interpreters.ad.primitive_jvps``:

* ``inverse_rules[prim](invals, outvals, **params) -> invals``: ``invals`` lists
  the equation's inputs, with the known ones as arrays and ``None`` for the ones
  to solve for; ``outvals`` lists its (known) outputs. Return every input. Raise
  ``NotInvertibleError`` when this pattern of unknowns cannot be solved.
* ``ivjp_rules[prim](invals, outvals, out_cts, **params) -> (invals, in_cts)``:
  the same, plus the input cotangents, in one (cheaper or more accurate) step.
  Optional: without one, the interpreter uses the inverse rule and then the
  primitive's own VJP.
* ``principal_inverse_rules``: inverses of non-injective primitives on a
  documented principal branch (``sin`` -> ``asin``). Only ``jaxinv.inverse`` uses
  them; the gradient path never does.
* ``ildj_rules[prim](invals, outvals, **params) -> scalar``: the log of the
  absolute Jacobian determinant of the inverse, ``log|det d(unknown inputs) /
  d(outputs)|``, summed over elements, for the same pattern of unknowns (for
  ``jaxinv.ildj``). Elementwise primitives (``elementwise_primitives``) need
  none: it is derived from their inverse rule by forward mode.

The tables are filled by rule packs (``jaxinv.packs``): never write to them
directly; ``jaxinv.register_inverse`` and friends, or a ``RulePack``, do it and
keep precedence and caches right.

Rules see concrete arrays or tracers, never jaxpr variables, and may be called
while jaxinv plans (with abstract tracers) to find out whether a pattern of
unknowns is solvable, so they must not depend on values to decide that; the
exceptions are ``require_nonzero`` and ``require_nonsingular``, which
consult what the planner proved.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Sequence

import jax
from jax.extend.core import Primitive

from jaxinv._src.facts import NONSINGULAR, NONZERO, Fact, as_fact, nonsingular_over

InverseRule = Callable[..., Sequence[Any]]
IvjpRule = Callable[..., tuple[Sequence[Any], Sequence[Any]]]

inverse_rules: dict[Primitive, InverseRule] = {}
ivjp_rules: dict[Primitive, IvjpRule] = {}
principal_inverse_rules: dict[Primitive, InverseRule] = {}
ildj_rules: dict[Primitive, Callable[..., Any]] = {}
# Elementwise primitives: each unknown element depends on one output element,
# so the log-det is the sum of log|dx/dy|, derived from the inverse rule.
elementwise_primitives: set[Primitive] = set()
# prim -> fn(nonzero_in: list[bool], **params) -> bool: is the output provably
# nonzero, given which inputs are?  Drives the zero-divisor policy (design.md).
nonzero_rules: dict[Primitive, Callable[..., bool]] = {}
# Primitives whose output is a matrix the user asserted nonsingular (the marker).
nonsingular_primitives: set[Primitive] = set()
# Primitives documented as not invertible, with the reason (reduce_precision).
not_invertible_reasons: dict[Primitive, str] = {}
# Primitives whose inverse is ill-conditioned where the output saturates
# (atanh(tanh(20.0)) = atanh(1.0) = inf in float32), with where that happens.
# The gradient path saves their input instead of inverting them (the
# conditioning policy, docs/design.md); loop bodies and jaxinv.inverse do invert.
saturating: dict[Primitive, str] = {}


class NotInvertibleError(ValueError):
    """An equation's inputs cannot be recovered from its outputs.

    Carries the primitive's name, the reason and the user's source line, e.g.
    ``sin at model.py:12 (block): sin is not injective``.

    Raised by ``jaxinv.inverse`` when an input cannot be rebuilt; raised by a
    rule to say "this pattern of unknowns cannot be solved" (the planner then
    saves instead).

    Example:
        ```python
        try:
            jaxinv.inverse(jnp.sin)(y)
        except jaxinv.NotInvertibleError as e:
            print(e.primitive, e.source, e.reason)
        ```
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
    "cannot invert" while planning: it reaches the user.

    Example:
        ```python
        def rule(invals, outvals):
            if len(invals) != 2:
                raise jaxinv.RuleError(f"expected two inputs, got {len(invals)}")
            ...
        ```
    """


# --------------------------------------------------------------------------
# what a rule may ask of the equation it is solving

_input_avals: contextvars.ContextVar[Sequence[jax.ShapeDtypeStruct] | None] = contextvars.ContextVar(
    "jaxinv_input_avals", default=None)


def input_avals() -> Sequence[jax.ShapeDtypeStruct]:
    """Inside a rule: the shapes and dtypes of the equation's inputs, known or not.

    Rules see ``None`` for an unknown input; this tells them its shape (needed
    by ``reshape``'s inverse, say). The interpreter and ``jaxinv.testing``
    set it around every rule call.

    Example:
        ```python
        register_inverse(lax.reshape_p,
            lambda invals, outvals, **p: [outvals[0].reshape(input_avals()[0].shape)])
        ```
    """
    avals = _input_avals.get()
    if avals is None:
        raise RuntimeError("jaxinv.registry.input_avals() is only available inside a rule called by jaxinv")
    return avals


@contextlib.contextmanager
def _setting(var: contextvars.ContextVar, value):
    """``var`` set to ``value`` for the ``with`` block."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


@contextlib.contextmanager
def solving(in_avals: Sequence[Any]):
    """Set what ``input_avals`` returns while a rule runs."""
    with _setting(_input_avals, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in in_avals]):
        yield


# --------------------------------------------------------------------------
# the zero-divisor policy

_proven: contextvars.ContextVar[dict[int, frozenset] | None] = contextvars.ContextVar(
    "jaxinv_proven_facts", default=None)


def _require(x: Any, facts_needed: tuple[Fact, ...], what: str, hint: str) -> Any:
    facts = _proven.get()
    if facts is not None and not (set(facts_needed) & facts.get(id(x), frozenset())):
        raise NotInvertibleError(f"{what} is not provably {facts_needed[0].name} ({hint})")
    return x


def require_fact(x: Any, fact: Fact | str, reason: str) -> Any:
    """Inside a rule: unless the planner proved ``fact`` about ``x`` (one of
    the rule's arguments), refuse with ``reason`` while jaxinv plans; free at
    run time. Facts the planner proves (``jaxinv._src.facts``): ``NONZERO``,
    ``nonsingular_over(ndim, axes)`` (see ``require_nonsingular``),
    ``iota_along(d)``, ``selects(k)`` (a constant predicate equal to ``k``
    everywhere); their text form (``"selects:1"``) is accepted too.

    Example:
        ```python
        require_fact(pred, facts.selects(1), "the predicate must select the unknown case everywhere")
        ```
    """
    facts = _proven.get()
    if facts is not None and as_fact(fact) not in facts.get(id(x), frozenset()):
        raise NotInvertibleError(reason)
    return x


def nonsingular_fact(ndim: int, axes: tuple[int, int]) -> Fact:
    """The fact "nonsingular as a matrix over these two axes" (axes normalised)."""
    return nonsingular_over(ndim, axes)


def require_nonzero(x: Any, what: str = "the known operand") -> Any:
    """Assert, inside an inverse rule, that ``x`` (an input the rule divides by)
    is provably nonzero; returns ``x``.

    While jaxinv plans, this raises ``NotInvertibleError`` unless the planner
    proved ``x`` nonzero (a literal without zeros, an output of ``exp`` or
    ``logistic``, a value marked with ``jaxinv.nonzero``, ...), so the
    equation's inputs are saved instead of divided by a possible zero. At run
    time it is free. Call it on the rule's *argument*, not on a value derived
    from it.

    Example:
        ```python
        defbinary(lax.mul_p, lambda y, b: y / require_nonzero(b),
                             lambda y, a: y / require_nonzero(a))
        ```
    """
    return _require(x, (NONZERO,), what, "mark it with jaxinv.nonzero to assert it is")


def require_nonsingular(x: Any, what: str = "the known matrix", axes: tuple[int, int] = (-2, -1)) -> Any:
    """Like ``require_nonzero``, for an array a rule solves with as a matrix
    over ``axes`` (batched over the others): it must be a well-conditioned
    concrete constant over those axes, or marked with ``jaxinv.nonzero``.

    Example:
        ```python
        w = require_nonsingular(invals[1])                  # a (..., n, n) matrix
        k = require_nonsingular(kernel, axes=(0, 1))        # an OIHW 1x1 kernel
        ```
    """
    needed = (NONSINGULAR,)
    if hasattr(x, "ndim") and x.ndim >= 2:
        needed += (nonsingular_over(x.ndim, axes),)
    return _require(x, needed, what, "mark it with jaxinv.nonzero to assert it is")


@contextlib.contextmanager
def proving(facts: dict[int, frozenset]):
    """Used by the planner: the facts it proved, by ``id`` of the rule's arguments."""
    with _setting(_proven, facts):
        yield


# --------------------------------------------------------------------------
# jaxinv.inverse's mode, for plans made inside rules (loop and cond bodies)

_principal: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxinv_principal_branch", default=False)


@contextlib.contextmanager
def principal_branches(allowed: bool):
    """Set the planning mode of bodies planned inside a rule: ``jaxinv.inverse``'s
    (principal branches, divisors assumed nonzero) or the gradient's. The
    planner sets it while it plans, the interpreter while it runs a plan.

    Example:
        ```python
        with principal_branches(plan.principal_branch):
            ...   # a scan rule plans its body in the same mode
        ```
    """
    with _setting(_principal, allowed):
        yield


def principal_branches_allowed() -> bool:
    """Inside a rule: whether bodies are planned in ``jaxinv.inverse``'s mode
    (non-injective primitives inverted on their principal branch). A rule that
    plans a body of its own (a loop's) passes it on.

    Example:
        ```python
        table = inverse_table(principal_branch=principal_branches_allowed())
        ```
    """
    return _principal.get()


_conditioned: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxinv_well_conditioned", default=False)


@contextlib.contextmanager
def well_conditioned(required: bool):
    """Set whether the plan being made may save instead of inverting (the
    gradient path outside loop bodies), so that a rule whose conditioning
    depends on its operands can refuse where it could lose precision. The
    planner sets it while it plans.

    Example:
        ```python
        with well_conditioned(True):
            ...   # logaddexp(x, c) with a nonzero c refuses: its input is saved
        ```
    """
    with _setting(_conditioned, required):
        yield


def well_conditioned_required() -> bool:
    """Inside a rule: whether the planner would rather save than invert
    where inverting could lose precision (see ``well_conditioned``).

    Example:
        ```python
        def logaddexp_inverse(invals, outvals):
            if well_conditioned_required():
                raise NotInvertibleError("log(exp(y) - exp(c)) loses precision where y is close to c")
            ...
        ```
    """
    return _conditioned.get()


_merged_tables: dict[Any, dict] = {}
# Caches derived from the tables elsewhere (the planner's probe results):
# cleared whenever a rule is (re)registered.
_derived_caches: list[dict] = [_merged_tables]


def derived_cache() -> dict:
    """A new cache of results derived from the tables, emptied whenever they change.

    Example:
        ```python
        _probe_results = registry.derived_cache()    # in the planner's probe module
        ```
    """
    cache: dict = {}
    _derived_caches.append(cache)
    return cache


def tables_changed() -> None:
    """Forget everything derived from the tables (called by ``jaxinv.packs``)."""
    for cache in _derived_caches:
        cache.clear()


_deferred_loaders: list[Callable[[], None]] = []


def defer_loading(loader: Callable[[], None]) -> None:
    """Have ``loader`` fill the tables the first time the planner needs them
    (``jaxinv.packs`` defers loading third-party packs this way, so that
    ``import jaxinv`` imports none of them).

    Example:
        ```python
        registry.defer_loading(load_entry_point_packs)
        ```
    """
    _deferred_loaders.append(loader)


def load_deferred() -> None:
    """Run the deferred loaders (each runs once); the planner calls this before
    it reads the tables.

    Example:
        ```python
        registry.load_deferred()     # in make_plan
        ```
    """
    while _deferred_loaders:
        _deferred_loaders.pop(0)()


def inverse_table(principal_branch: bool = False, well_conditioned: bool = False) -> dict:
    """The inverse rules the planner may use: with ``principal_branch=True``
    (``jaxinv.inverse`` only) the principal-branch rules are added; with
    ``well_conditioned=True`` (the gradient path) the saturating ones are left out.

    Example:
        ```python
        rule = inverse_table(principal_branch=True).get(lax.sin_p)   # asin: jaxinv.inverse only
        ```
    """
    if well_conditioned and not principal_branch:
        if "conditioned" not in _merged_tables:
            _merged_tables["conditioned"] = {p: r for p, r in inverse_rules.items() if p not in saturating}
        return _merged_tables["conditioned"]
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


# What a rule may call (the API reference documents each name); the tables are filled through jaxinv.packs.
__all__ = ["NotInvertibleError", "RuleError", "input_avals", "inverse_table", "principal_branches_allowed", "require_fact", "require_nonsingular", "require_nonzero", "well_conditioned_required"]
