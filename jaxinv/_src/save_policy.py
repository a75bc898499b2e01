"""The save policy: what to keep when knowledge stops spreading.

When propagation (``jaxinv._src.knowledge``) can go no further, something must
be saved in the forward pass. ``STRATEGIES`` is the ordered list of ways
to choose it; each is tried in turn on the equations next to the known region,
and the first that finds something wins (the values it names are saved, and
propagation resumes). Each strategy is documented once, in its docstring:

1. ``stored_by_anchor``
2. ``inputs_of_kept_blocks``
3. ``unread_outputs``
4. ``parameters_next_to_known``
5. ``parameters_unlocking_an_inversion``
6. ``cheapest_unlocking_subset``
7. ``loop_weights``
8. ``inputs_of_the_last_stuck_equation``

Throughout, a *parameter* is a function input (or a short chain computed from
one input alone, given values aside: ``W / |W|``, a dropout mask from its
key) as opposed to *data*, a join of several inputs (``x @ W``) or a value
being rebuilt from the outputs. Saving a parameter costs nothing per block
that the caller does not hold already; saving data is an activation.

Example:
    ```python
    while k.missing:
        if not choose_saves(k):
            ...          # nothing left to try
        k.propagate()
    ```
"""

from __future__ import annotations

import itertools
from typing import Callable

from jax.extend.core import Var
from jax.extend.core import primitives as P

from jaxinv._src.graph import LOOPS, eqn_name, kept_inputs, loop_carries, loop_consts, nbytes, source_line
from jaxinv._src.knowledge import Knowledge, SourceKind
from jaxinv.markers import anchor_p
from jaxinv._src.probe import probe
from jaxinv._src.dtypes import is_float

# How far back (in equations) a chain computed only from inputs may reach for
# its inputs to be saved in its place (a dropout mask: ~12 equations from its key).
PARAMETER_CHAIN_LIMIT = 32

# Past this many unknown inputs, cheapest_unlocking_subset tries "all but one"
# subsets only (n probes, not 2^n).
SUBSET_LIMIT = 6

UNREAD = "an unread output, needed to invert its equation"

Found = dict[Var, str]   # what to save, with the reason `explain` shows


def _parameter_of(e) -> str:
    return f"a parameter of `{eqn_name(e)}` at {source_line(e)}"


# ---------------------------------------------------------------- strategies

def stored_by_anchor(k: Knowledge, pending: list[int]) -> Found:
    """``jaxinv.anchor(x)``: store ``x`` (the backward pass restarts from an
    exact value there), as soon as the anchor's output is known; never pruned."""
    for i in pending:
        e = k.eqns[i]
        if e.primitive is anchor_p and k.outputs_ready(e) and not all(map(k.known, e.invars)):
            found = {v: "stored by jaxinv.anchor (the backward pass restarts from it)"
                     for v in e.invars if isinstance(v, Var) and not k.known(v)}
            k.anchored.update(found)
            return found
    return {}


def inputs_of_kept_blocks(k: Knowledge, pending: list[int]) -> Found:
    """``jaxinv.keep_input(f)(x)``: store ``x`` once the block's outputs are
    known; the block is differentiated by JAX from it, never inverted, and
    the blocks before it are rebuilt from it. Never pruned: without it the
    planner could recompute every block before this one forward instead."""
    for i in pending:
        e = k.eqns[i]
        if k.outputs_ready(e):
            found = {v: "the input of a jaxinv.keep_input block (differentiated by JAX from it)"
                     for v in (e.invars[j] for j in kept_inputs(e)) if isinstance(v, Var) and not k.known(v)}
            if found:
                k.anchored.update(found)
                return found
    return {}


def unread_outputs(k: Knowledge, pending: list[int]) -> Found:
    """Outputs nobody reads (a loop's counter), when knowing them lets their
    equation be inverted."""
    for i in pending:
        e = k.eqns[i]
        dead = [v for v in e.outvars if not k.known(v) and k.dead(v)]
        if dead and k.outputs_ready(e) and _solvable(k, e, tuple(map(k.known, e.invars))):
            return {v: UNREAD for v in dead}
    return {}


def parameters_next_to_known(k: Knowledge, pending: list[int]) -> Found:
    """Parameters of an equation that has a known input rebuilt by the plan
    (not a given or constant one): knowing them lets it be recomputed (a bias
    through ``broadcast_in_dim``, a dropout key). A ``concatenate`` or ``pad``
    joining a known piece to an unknown one assembles data, and consumes no
    parameter, so such selections are passed over."""
    found: Found = {}
    for i in pending:
        e = k.eqns[i]
        if e.primitive is not P.mul_p and k.selection(i) is not None:
            continue
        ins = [v for v in e.invars if isinstance(v, Var)]
        if not any(k.known(v) and k.sources[v].kind not in (SourceKind.INPUT, SourceKind.CONST)
                   and v not in k.graph.constant for v in ins) or all(map(k.known, e.outvars)):
            continue
        roots = [parameter_roots(k, v) for v in ins if not k.known(v)]
        if roots and all(r is not None for r in roots):
            for r in roots:
                for v in r:
                    found.setdefault(v, _parameter_of(e))
    return found


def parameters_unlocking_an_inversion(k: Knowledge, pending: list[int]) -> Found:
    """Parameters among the unknown inputs of an equation with known outputs,
    when knowing them lets the data inputs be solved (``y = x @ W``: save
    ``W``'s parameter, invert for ``x``)."""
    found: Found = {}
    for i in pending:
        e = k.eqns[i]
        if not k.outputs_ready(e):
            continue
        roots = {j: parameter_roots(k, v) for j, v in enumerate(e.invars) if not k.known(v)}
        short = {j for j, r in roots.items() if r is not None}
        if not short or len(short) == len(roots):
            continue
        dead = unlocks(k, e, tuple(k.known(v) or j in short for j, v in enumerate(e.invars)))
        if dead is not None:
            for j in short:
                for v in roots[j]:
                    found.setdefault(v, _parameter_of(e))
            found.update((v, UNREAD) for v in dead if v not in found)
    return found


def cheapest_unlocking_subset(k: Knowledge, pending: list[int]) -> Found:
    """At the border of a region, where data and weights look alike (a scan
    fed by ``x`` and its weights, all inputs of the function): the cheapest
    subset of an equation's unknown inputs (by bytes; closure values cost
    nothing and are tried given first) whose knowledge lets the rest be solved.
    Every subset when there are few, else only "all but one" and "all". The
    cheapest over all the equations next to the known region, not the first
    one's: the plan must not depend on the order of the function's outputs
    (``(a + b, b @ W)`` frees the closure value ``W``, as ``(b @ W, a + b)``
    does, rather than saving ``a``)."""
    best = None
    for i in pending:
        e = k.eqns[i]
        if not k.outputs_ready(e):
            continue
        chosen = _cheapest_subset(k, e)
        if chosen and (best is None or chosen[0] < best[0]):
            best = (*chosen, e)
    if best is None:
        return {}
    _, subset, dead, e = best
    found: Found = {}
    for j in subset:
        for v in parameter_roots(k, e.invars[j]):
            found.setdefault(v, _parameter_of(e))
    found.update((v, UNREAD) for v in dead if v not in found)
    return found


def loop_weights(k: Knowledge, pending: list[int]) -> Found:
    """A loop whose constants or scanned-over values (its weights, however
    computed before the loop: ``W0 * scale``) are unknown, when knowing them
    lets its carry be rebuilt: one value per loop, never more than the last
    strategy would save (it would save them with the carry)."""
    for i in pending:
        e = k.eqns[i]
        if e.primitive not in LOOPS or not k.outputs_ready(e):
            continue
        n_consts, n_carry = loop_consts(e), loop_carries(e)
        weights = [j for j, v in enumerate(e.invars) if not (n_consts <= j < n_consts + n_carry) and not k.known(v)]
        if not weights:
            continue
        dead = unlocks(k, e, tuple(k.known(v) or j in weights for j, v in enumerate(e.invars)))
        if dead is None:
            continue
        why = f"a constant or scanned-over value of the loop `{eqn_name(e)}` at {source_line(e)}"
        found: Found = {}
        for j in weights:
            for v in (parameter_roots(k, e.invars[j], given_join=True) or [e.invars[j]]):
                found.setdefault(v, why)
        found.update((v, UNREAD) for v in dead if v not in found)
        return found
    return {}


def inputs_of_the_last_stuck_equation(k: Knowledge, pending: list[int]) -> Found:
    """The last resort: the unknown inputs (or their parameters) of the last
    equation, in program order, whose outputs are known but which cannot be
    inverted; the reason `explain` shows is that equation's."""
    frontier = [i for i in pending if k.outputs_ready(k.eqns[i])]
    if not frontier:
        return {}
    i = frontier[-1]
    e = k.eqns[i]
    why = f"`{eqn_name(e)}` at {source_line(e)} cannot be inverted: {k.stuck_reason(i)}"
    found: Found = {}
    stuck_loop = e.primitive in LOOPS
    for v in e.invars:
        if not k.known(v):
            # A loop that cannot be inverted needs its inputs whole: rather
            # than its carry, the inputs of a short chain to it, even one
            # joining given values (``c * (x * a + b)``, ``c`` closed over).
            # Elsewhere such a join is data: saving its input would recompute
            # a whole network forward instead of rebuilding it backwards.
            roots = parameter_roots(k, v) or (parameter_roots(k, v, given_join=True) if stuck_loop else None)
            for r in (roots or [v]):
                found.setdefault(r, why)
    return found


Strategy = Callable[[Knowledge, list[int]], Found]

STRATEGIES: tuple[Strategy, ...] = (
    stored_by_anchor,
    inputs_of_kept_blocks,
    unread_outputs,
    parameters_next_to_known,
    parameters_unlocking_an_inversion,
    cheapest_unlocking_subset,
    loop_weights,
    inputs_of_the_last_stuck_equation,
)


def choose_saves(k: Knowledge) -> bool:
    """Save what the first strategy that finds something names; False when
    none does. Given inputs (closure values) found are made known first, alone:
    they cost nothing, and knowing them (a weight) often lets the next block be
    inverted with nothing else saved. Without saving, a strategy that names
    no closure value is passed over (``(x2, (x1 + x2) / c)`` must free ``c``,
    not stop at saving the parameter ``x1``)."""
    done = {i for i in k.touched if all(map(k.known, (*k.eqns[i].invars, *k.eqns[i].outvars)))}
    k.touched -= done
    pending = sorted(k.touched)  # only equations next to something known can be unblocked
    for strategy in STRATEGIES:
        found = strategy(k, pending)
        free = {v: why for v, why in found.items() if v in k.free}
        # Without saving (jaxinv.inverse) only closure values can be made
        # known: a strategy naming none gives way to the next one.
        if free or (found and k.allow_saving):
            for v, why in (free or found).items():
                k.save(v, why)
            return True
    return False


# ---------------------------------------------------------------- helpers

def parameter_roots(k: Knowledge, v: Var, given_join: bool = False) -> set[Var] | None:
    """The unknown function inputs ``v`` is computed from, if it is a
    *parameter*: computed (within PARAMETER_CHAIN_LIMIT equations, plus known
    values and given integer arrays, see ``_index_roots``) from one input
    alone, or from given inputs only.
    ``W / |W|``, ``2b + b`` and ``P @ L @ U`` with a constant permutation
    ``P`` are parameters; ``x @ W`` joins two inputs: data. With
    ``given_join`` (for a value already known to be a loop's weight), a
    join of one input with given values (``W0 * scale``) is a parameter."""
    given = _given_roots(k, v)
    if given:  # even where the outputs show part of ``v``: recomputing it is free
        return given
    graph = k.graph
    ignored = _index_roots(k) | k.free if given_join else _index_roots(k)
    roots, seen, stack, steps = set(), set(), [v], 0
    while stack:
        u = stack.pop()
        if u in seen or k.known(u):
            continue
        if u in k.rebuilding:  # being rebuilt piece by piece from the outputs: data
            return None
        seen.add(u)
        if u in graph.invars:
            roots.add(u)
            if len(roots - ignored) > 1 and not roots <= k.free:
                return None
            continue
        steps += 1
        if steps > PARAMETER_CHAIN_LIMIT or u not in graph.producer:
            return None
        stack.extend(w for w in graph.eqns[graph.producer[u]].invars if isinstance(w, Var) and not k.known(w))
    return roots


def _given_roots(k: Knowledge, v: Var) -> set[Var] | None:
    """The given inputs (closure values) ``v`` is computed from, when it is
    computed from them, constants and known values alone (a closed-over array
    moved by ``jnp.asarray`` or ``device_put``); else None."""
    graph = k.graph
    roots, seen, stack, steps = set(), set(), [v], 0
    while stack:
        u = stack.pop()
        if u in seen or k.known(u):
            continue
        seen.add(u)
        if u in graph.invars:
            if u not in k.free:
                return None
            roots.add(u)
            continue
        steps += 1
        if steps > PARAMETER_CHAIN_LIMIT or u not in graph.producer:
            return None
        stack.extend(w for w in graph.eqns[graph.producer[u]].invars if isinstance(w, Var) and not k.known(w))
    return roots or None


def _index_roots(k: Knowledge) -> set[Var]:
    """Given integer and boolean inputs (a closure's permutation or mask:
    ``W = L @ U`` permuted by a constant is still a parameter). Only where
    saving is allowed: in a loop body ``x * w + i`` joins the data ``x``
    with the counter ``i``, and calling ``x`` a parameter would save it."""
    if not k.allow_saving:
        return set()
    return {v for v in k.free if not is_float(v.aval)}


def _solvable(k: Knowledge, e, known) -> bool:
    """``e`` is solvable with ``known`` given and its unread outputs given too."""
    return probe(e, known, [k.fact_of(v) for v in e.invars], k.table,
                 out_facts=[k.fact_of(v) for v in e.outvars]) is None


def unlocks(k: Knowledge, e, known) -> list[Var] | None:
    """If ``e`` is solvable with the inputs in ``known`` given: the unread
    outputs that must be saved too ([] for none); else None."""
    if k.probe_now(e, known) is None:
        return []
    dead = [v for v in e.outvars if not k.known(v) and k.dead(v)]
    if dead and _solvable(k, e, known):
        return dead
    return None


def _cheapest_subset(k: Knowledge, e):
    unknown = [j for j, v in enumerate(e.invars) if not k.known(v)]
    roots = {j: parameter_roots(k, e.invars[j]) for j in unknown}
    if len(unknown) < 2 or any(r is None for r in roots.values()):
        return None
    cost = {j: sum(nbytes(v.aval) for v in roots[j] if v not in k.free) for j in unknown}
    # All the rest without the closure values too: a loop whose carry is a
    # given x and whose stacked weights are differentiated is inverted for its carry.
    free = tuple(j for j in unknown if cost[j] == 0)
    rest = [j for j in unknown if cost[j] > 0]
    if len(rest) <= SUBSET_LIMIT:
        subsets = [c for n in range(len(rest) + 1) for c in itertools.combinations(rest, n)]
    else:
        subsets = [tuple(j for j in rest if j != skip) for skip in rest] + [tuple(rest)]
    subsets = [s for c in subsets for s in (free + c, c) if s and len(s) < len(unknown)]
    subsets = list(dict.fromkeys(subsets))
    price = lambda c: (sum(cost[j] for j in c), -len(c))  # bytes, then the larger subset first
    for subset in sorted(subsets, key=price):
        dead = unlocks(k, e, tuple(k.known(v) or j in subset for j, v in enumerate(e.invars)))
        if dead is not None:
            return price(subset), subset, dead
    return None
