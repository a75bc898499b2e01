"""Probing: can an equation's rule solve this pattern of unknowns?

Rules stay in one convention (``rule(invals, outvals, **params)`` with None
for the unknowns) and need no separate "can you?" function: the planner runs
the rule under ``jax.eval_shape`` on abstract values, with the facts it proved
(``jaxinv._src.facts``) attached; a ``NotInvertibleError`` (or any exception, or
a result of the wrong shape: a broadcast operand) means "cannot". Results are
cached by primitive, shapes, pattern, facts and params.

Example:
    ```python
    probe(eqn, known=(False, True), facts=[frozenset(), frozenset({NONZERO})], table=registry.inverse_rules)
    # None: `x * c` is solvable for x when c is proven nonzero
    ```
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.extend.core import Literal

from jaxinv._src.compat import aval_spec, literal_value
from jaxinv import registry
from jaxinv._src.flatten import hashable_params
from jaxinv.registry import NotInvertibleError


def _literal_key(v):
    if not isinstance(v, Literal):
        return None
    val = np.asarray(literal_value(v))
    return None if val.ndim != 0 else (float(val.real), str(val.dtype))


# (reason,) by equation pattern; emptied whenever a rule is (re)registered.
_results: dict = registry.derived_cache()


def probe(eqn, known: Sequence[bool], facts: Sequence[frozenset], table,
          out_known: Sequence[bool] | None = None, out_facts: Sequence[frozenset] | None = None) -> str | None:
    """Can ``eqn``'s rule solve its unknown inputs given the ``known`` ones?

    ``out_known`` marks the outputs given (an unread output may be passed as
    None); ``facts``/``out_facts`` are what the planner proved about the
    inputs/outputs (a rule dividing by an output, like cumprod's, needs them). Returns ``None`` if so, else the reason. Runs the rule on abstract
    values (cached by primitive, shapes, pattern, facts and params).
    """
    out_known = tuple(out_known) if out_known is not None else (True,) * len(eqn.outvars)
    out_facts = tuple(out_facts) if out_facts is not None else (frozenset(),) * len(eqn.outvars)
    prim = eqn.primitive
    rule = table.get(prim)
    if rule is None:
        if prim in registry.saturating and prim in registry.inverse_rules:
            return (f"`{prim.name}` is not inverted on the gradient path: its inverse loses precision where "
                    f"the output saturates ({registry.saturating[prim]}), so its input is saved")
        if prim in registry.not_invertible_reasons:
            return f"`{prim.name}` is not invertible: {registry.not_invertible_reasons[prim]}"
        if prim in registry.principal_inverse_rules:
            return (f"`{prim.name}` is not injective (its principal-branch inverse "
                    "serves jaxinv.inverse only, never gradients)")
        return f"no inverse rule is registered for `{prim.name}`"
    in_avals = [v.aval for v in eqn.invars]
    out_avals = [v.aval for v in eqn.outvars]
    params_key = hashable_params(eqn.params)
    key = None
    if params_key is not None:
        key = (id(table), prim, tuple(known), out_known, tuple(map(str, in_avals)), tuple(map(str, out_avals)),
               tuple(f if k else None for f, k in zip(facts, known)),
               tuple(f if k else None for f, k in zip(out_facts, out_known)),
               tuple(_literal_key(v) for v in eqn.invars),
               params_key)
        hit = _results.get(key)
        if hit is not None:
            return hit[0]
    reason = _run_probe(eqn, rule, known, facts, in_avals, out_avals, out_known, out_facts)
    if key is not None:
        _results[key] = (reason,)
    return reason


def solve_abstractly(rule, params: dict, in_avals, out_avals, known: Sequence[bool], out_known: Sequence[bool],
                     concrete: dict[int, Any], facts: Sequence[frozenset], out_facts: Sequence[frozenset]) -> list:
    """Run ``rule`` under ``jax.eval_shape``, as the planner does: the known
    inputs are abstract values of ``in_avals`` (or, for the indices in
    ``concrete``, those values: a literal), the known outputs abstract values
    of ``out_avals``; the rule sees ``facts``/``out_facts`` as proven. Returns
    the shapes it gives the unknown inputs; raises whatever the rule raises.

    Example:
        ```python
        shapes = solve_abstractly(rule, eqn.params, in_avals, out_avals, (False, True), (True,), {}, facts, out_facts)
        ```
    """
    traced_idx = [i for i, k in enumerate(known) if k and i not in concrete]

    def solve(traced_vals, traced_outs):
        outs = iter(traced_outs)
        outvals = [next(outs) if k else None for k in out_known]
        invals: list[Any] = [None] * len(in_avals)
        for i, val in concrete.items():
            invals[i] = val
        for i, val in zip(traced_idx, traced_vals):
            invals[i] = val
        proven = {id(invals[i]): facts[i] for i in range(len(invals)) if known[i]}
        proven.update({id(y): f for y, f in zip(outvals, out_facts) if y is not None})
        with registry.proving(proven), registry.solving(in_avals):
            res = rule(invals, list(outvals), **params)
        return [res[i] for i, k in enumerate(known) if not k]

    return jax.eval_shape(solve, [aval_spec(in_avals[i]) for i in traced_idx],
                          [aval_spec(a) for a, k in zip(out_avals, out_known) if k])


def _run_probe(eqn, rule, known, facts, in_avals, out_avals, out_known, out_facts) -> str | None:
    literal = {i: literal_value(v) for i, v in enumerate(eqn.invars) if isinstance(v, Literal)}
    try:
        shapes = solve_abstractly(rule, eqn.params, in_avals, out_avals, known, out_known, literal, facts, out_facts)
    except NotInvertibleError as e:
        return e.reason
    except registry.RuleError:
        raise
    except Exception as e:
        # A rule that fails on this pattern of unknowns (a user's ivjp reading an
        # argument it was given as None, say) cannot solve it: its inputs are
        # saved instead, and `explain` shows why. jaxinv.testing catches rule bugs.
        return f"its rule raised {type(e).__name__}: {e}"
    unknown_avals = [a for a, k in zip(in_avals, known) if not k]
    if len(shapes) != len(unknown_avals):
        return f"its rule returned {len(shapes)} values for {len(unknown_avals)} unknown inputs"
    for got, want in zip(shapes, unknown_avals):
        if got is None:
            return "its rule left an input unsolved"
        if tuple(got.shape) != tuple(want.shape):
            return (f"the unknown input has shape {tuple(want.shape)} but was broadcast "
                    f"to {tuple(got.shape)}; it cannot be recovered uniquely")
    return None
