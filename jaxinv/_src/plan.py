"""Planning: how every value of a jaxpr is recovered in the backward pass.

Three parts, each in its own module:

* ``jaxinv._src.graph``: the jaxpr and what is static about it (producers,
  users, live equations, constants and their values, proven facts);
* ``jaxinv._src.knowledge``: what is known of each value and how knowledge
  spreads (recompute forward, invert from outputs, assemble from pieces);
* ``jaxinv._src.save_policy``: the ordered strategies choosing what to save
  when knowledge stops spreading.

``make_plan`` runs them: propagate, save, propagate, ... until every
needed value is known; then drops every saved intermediate the rest of the
plan rebuilds in one local step, and decides once, for each loop, whether its
gradient comes from its fused reversible rule (``Plan.by_ivjp``) or from JAX's
own VJP (``loop_differentiated_by_jax``): the backward pass and
``jaxinv.explain`` both read that decision. The plan is static: it is made
once per jaxpr, at trace time.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Literal, Var
from jax.extend.core import primitives as P

from jaxinv import registry
from jaxinv._src import facts as F
from jaxinv._src import partial
from jaxinv._src.compat import jaxprs_in_params
from jaxinv._src.graph import LOOPS, Graph, loop_carries, loop_consts
from jaxinv._src.knowledge import Knowledge, Source, SourceKind
from jaxinv._src.save_policy import choose_saves
from jaxinv._src.dtypes import is_float


@dataclasses.dataclass(eq=False)
class Plan:
    """The result of planning one flat jaxpr (see module docstring)."""
    closed: ClosedJaxpr
    known_inputs: tuple[bool, ...]
    sources: dict[Var, Source]
    saved: list[Var]
    reasons: dict[Var, str]       # why a saved variable could not be rebuilt
    table: dict                   # the inverse rules the plan relies on
    active: set[Var]              # variables that carry a cotangent
    live: list[int]               # equations that matter, in program order
    # Equations whose cotangents come from their fused ivjp rule (decided here,
    # once: the backward pass and explain read it): equation -> the inputs the
    # rule treats as known. Those that rebuild their own inputs (one step gives
    # both), and loops whose carry the plan knows some other way (a given x):
    # JAX's own VJP of a loop would store every iteration's carry.
    by_ivjp: dict[int, tuple[bool, ...]] = dataclasses.field(default_factory=dict)
    # Steps that teach elements of a value (jaxinv._src.partial), replayed by ASSEMBLE sources.
    pieces: list = dataclasses.field(default_factory=list)
    # jaxinv.inverse's plan: its loop and cond bodies are planned in the same mode.
    principal_branch: bool = False

    @property
    def jaxpr(self):
        return self.closed.jaxpr


def make_plan(closed: ClosedJaxpr, known_inputs: Sequence[bool], *, input_values=None,
              allow_saving: bool = True, principal_branch: bool = False) -> Plan:
    """Plan how to recover every value of ``closed`` from its outputs.

    ``known_inputs[i]``: input ``i`` is given (closure values, scan constants).
    ``input_values``: concrete values (or None) to prove facts about inputs.
    With ``allow_saving=False`` being stuck raises NotInvertibleError (for
    ``jaxinv.inverse`` and loop bodies). ``principal_branch=True`` is
    ``jaxinv.inverse``'s mode: principal-branch inverses of non-injective
    primitives are allowed, and divisors are not required to be provably
    nonzero (a zero there is a point outside f's invertible domain; no
    gradient is at stake).

    Example:
        ```python
        plan = make_plan(jax.make_jaxpr(f)(x), [False])
        plan.saved   # what the forward pass keeps
        ```
    """
    registry.load_deferred()  # third-party rule packs, the first time anything is planned
    with registry.principal_branches(principal_branch), \
            registry.well_conditioned(allow_saving and not principal_branch):  # bodies planned by rules: the same mode
        return _make_plan(closed, known_inputs, input_values, allow_saving, principal_branch)


def _make_plan(closed, known_inputs, input_values, allow_saving, principal_branch) -> Plan:
    # The gradient path outside loop bodies (where saving is allowed) never
    # inverts a saturating map: a NaN gradient is worse than one saved value.
    table = registry.inverse_table(principal_branch, well_conditioned=allow_saving)
    closed = _fold_loop_constants(closed, known_inputs, input_values)
    graph = Graph(closed, known_inputs, input_values, assume_nonzero=principal_branch)
    k = Knowledge(graph, table, allow_saving)
    k.start()
    k.propagate()
    while k.missing:  # kept up to date as values become known: no rescan of the graph per save
        if not choose_saves(k):
            for v in k.unknown():
                k.save(v, "not reachable from any rule")
        k.propagate()
    if k.saved:
        k = _pruned(k)
    for v in graph.free:  # a given input rebuilt by inversion: use the given one
        if v in k.sources and k.sources[v].kind == SourceKind.INVERT:
            k.sources[v] = Source(SourceKind.INPUT)
    active = _active(graph)
    return Plan(graph.closed, graph.known_inputs, k.sources, k.saved, {v: k.reasons[v] for v in k.saved},
                table, active, graph.live, _by_ivjp(k, active), k.pieces, principal_branch)


def _pruned(k: Knowledge) -> Knowledge:
    """Drop saved intermediates that the rest of the plan can rebuild."""
    graph = k.graph
    for v in list(k.saved):
        if v in graph.invars or graph.producer.get(v) is None or v in k.anchored:
            continue
        if _recomputed_from_held(k, v):  # what a trial would find, without one
            k.saved.remove(v)
            k.reasons.pop(v, None)
            k.sources[v] = Source(SourceKind.RECOMPUTE, graph.producer[v])
            continue
        if not _may_be_rebuilt_without(k, v):
            continue  # a trial (a propagation over the whole graph) could not succeed
        trial = k.trial([s for s in k.saved if s is not v])
        if not trial.unknown() and _locally_rebuilt(graph, trial.sources, v):
            k = trial
    return k


def _recomputed_from_held(k: Knowledge, v) -> bool:
    """Whether ``v``'s equation can recompute it from values the plan holds
    without ``v`` (given, saved, outputs, or rebuilt not through ``v``): a
    squared output of a saved value. Pruning ``v`` then needs no trial."""
    e = k.eqns[k.graph.producer[v]]
    if any(True for _ in jaxprs_in_params(e.params)):
        return False
    for u in e.invars:
        if isinstance(u, Literal):
            continue
        src = k.sources.get(u)
        if src is None or u is v or src.kind in (SourceKind.RECOMPUTE, SourceKind.ASSEMBLE) or _depends_on(k, u, v):
            return False
    return True


def _may_be_rebuilt_without(k: Knowledge, v) -> bool:
    """Whether a plan not saving ``v`` could rebuild it locally (see
    ``_locally_rebuilt``): no equation reading ``v`` can solve for it
    with what is known now (knowing less cannot help), and its producer's
    inputs are known only through ``v`` itself (a RevNet's last output,
    saved for a squared-error loss), then no trial is run: at depth 256
    each trial is a propagation over the whole network."""
    for i in k.users.get(v, ()):
        e = k.eqns[i]
        if i not in k.live_set or e.primitive in partial.SELECTION_PRIMITIVES or (
                e.primitive in registry.elementwise_primitives and any(u in k.partial for u in e.invars)):
            return True  # partial knowledge may build it: try
        if k.outputs_ready(e) and k.probe_now(e, tuple(k.known(u) and u is not v for u in e.invars)) is None:
            return True
    producer = k.eqns[k.graph.producer[v]]
    return not any(_depends_on(k, u, v) for u in producer.invars if isinstance(u, Var))


def _depends_on(k: Knowledge, u, v) -> bool:
    """Whether the plan's way of knowing ``u`` surely goes through ``v``
    (a value assembled from pieces is not followed: the trial is run)."""
    stack, seen = [u], set()
    while stack:
        w = stack.pop()
        if w is v:
            return True
        if not isinstance(w, Var) or w in seen:
            continue
        seen.add(w)
        src = k.sources.get(w)
        if src is None:
            continue
        if src.kind == SourceKind.RECOMPUTE:
            stack.extend(k.eqns[src.eqn].invars)
        elif src.kind == SourceKind.INVERT:
            e = k.eqns[src.eqn]
            stack.extend(e.outvars)
            stack.extend(x for x, known in zip(e.invars, src.known) if known)
    return False


def _locally_rebuilt(graph: Graph, sources, v) -> bool:
    # Accept only a rebuild that is one step away from values that are not
    # themselves recomputed: pruning must not turn a saved activation into
    # a recomputation of the whole network from its input.
    src = sources[v]
    if src.kind in (SourceKind.INVERT, SourceKind.ASSEMBLE):
        return True
    e = graph.eqns[src.eqn]
    if any(True for _ in jaxprs_in_params(e.params)):
        return False  # re-running a loop or call: a whole network's forward
    return all(isinstance(w, Literal) or sources[w].kind != SourceKind.RECOMPUTE for w in e.invars)


def _by_ivjp(k: Knowledge, active: set[Var]) -> dict[int, tuple[bool, ...]]:
    """The equations whose cotangents come from their fused ivjp rule, with
    the inputs it treats as known.

    An equation that rebuilds its own inputs and has an ivjp rule uses it
    (rebuilt inputs and cotangents in one step). So does a loop with
    differentiated inputs (its stacked weights) but a carry the plan knows
    otherwise (a given x, a value recomputed from one): it is still rebuilt
    from its outputs, iteration by iteration, because JAX's VJP of the loop
    would store every carry."""
    graph, fused = k.graph, {}
    for v, src in k.sources.items():
        if src.kind == SourceKind.INVERT and graph.eqns[src.eqn].primitive in registry.ivjp_rules:
            fused.setdefault(src.eqn, src.known)
    for i in graph.live:
        e = graph.eqns[i]
        if i in fused or e.primitive not in LOOPS or e.primitive not in registry.ivjp_rules:
            continue
        if not any(isinstance(v, Var) and v in active for v in e.invars):
            continue
        # The loop's constants and scanned-over weights (however transformed
        # before the loop: a cast, a normalisation) are given; its carry is
        # rebuilt, and the scanned-over values too if they must be.
        n_consts, n_carry = loop_consts(e), loop_carries(e)
        given = [not (j >= n_consts and isinstance(v, Var) and is_float(v.aval) and v not in graph.constant
                      and k.sources[v].kind in (SourceKind.INPUT, SourceKind.RECOMPUTE))
                 for j, v in enumerate(e.invars)]
        carry_only = tuple(g or j >= n_consts + n_carry for j, g in enumerate(given))
        for known in dict.fromkeys((carry_only, tuple(given))):
            if not all(known) and k.probe_now(e, known) is None:
                fused[i] = known
                break
    return fused


def _active(graph: Graph) -> set[Var]:
    """Variables that carry a cotangent: the float inputs (given ones too: a
    loop body's weights get theirs) and what float values depend on them."""
    active = {v for v in graph.jaxpr.invars if is_float(v.aval)}
    for i in graph.live:
        e = graph.eqns[i]
        if any(isinstance(v, Var) and v in active for v in e.invars):
            active.update(v for v in e.outvars if is_float(v.aval))
    return active


def loop_differentiated_by_jax(plan: Plan, i: int) -> bool:
    """Whether the backward pass differentiates loop equation ``i`` with JAX's
    own VJP (storing its per-iteration values) instead of its fused ivjp rule."""
    e = plan.jaxpr.eqns[i]
    active = any(isinstance(v, Var) and v in plan.active for v in e.invars)
    return e.primitive in LOOPS and active and i not in plan.by_ivjp


def _fold_loop_constants(closed: ClosedJaxpr, known_inputs, input_values) -> ClosedJaxpr:
    """Move a scan's constant operands (and a cond's) that are concrete masks or index arrays
    (a permutation or a 0/1 mask the body closes over), or floats whose value
    proves a fact (a nonzero scale, a nonsingular matrix), into the body as
    its own constants, so that the body's plan sees their values (partial
    knowledge needs them: ``x[:, perm]`` inverts only for a known ``perm``;
    ``W @ c`` only for a provably nonsingular ``W``)."""
    values: dict[Var, Any] = dict(zip(closed.jaxpr.constvars, closed.consts))
    if input_values is not None:
        values.update((v, c) for v, c, k in zip(closed.jaxpr.invars, input_values, known_inputs)
                      if k and c is not None)

    def steering(v):
        if isinstance(v, Literal):
            return None
        try:
            c = np.asarray(values[v])
        except Exception:  # absent, or a tracer
            return None
        # Integers, masks, and floats whose value proves a fact a rule may
        # need (nonzero, a nonsingular matrix): inside the body, only the
        # value shows it (a closed-over W in `scan(lambda c, _: (W @ c, None))`).
        if is_float(v.aval) and not (partial.is_mask(c) or F.of_value(c)):
            return None
        with jax.ensure_compile_time_eval():  # a concrete JAX array (a jaxpr's constants are never numpy's)
            return jnp.asarray(c, v.aval.dtype)

    eqns, changed = [], False
    for e in closed.jaxpr.eqns:
        if e.primitive is P.scan_p:
            fold = {j: c for j in range(e.params["num_consts"]) if (c := steering(e.invars[j])) is not None}
            if fold:
                e = _scan_with_constants(e, fold)
                changed = True
        elif e.primitive is P.cond_p:
            fold = {j: c for j, v in enumerate(e.invars[1:]) if (c := steering(v)) is not None}
            if fold:
                e = _cond_with_constants(e, fold)
                changed = True
        eqns.append(e)
    return ClosedJaxpr(closed.jaxpr.replace(eqns=eqns), closed.consts) if changed else closed


def _debug_info_keeping(jaxpr, keep):
    info = jaxpr.debug_info
    if info is None or getattr(info, "arg_names", None) is None or len(info.arg_names) != len(jaxpr.invars):
        return info
    return info._replace(arg_names=tuple(info.arg_names[j] for j in keep))


def _with_constants(body: ClosedJaxpr, fold: dict[int, Any]) -> ClosedJaxpr:
    """``body`` with its inputs ``fold`` (by position) turned into constants of these values."""
    inner = body.jaxpr
    keep = [j for j in range(len(inner.invars)) if j not in fold]
    return ClosedJaxpr(
        inner.replace(constvars=[*inner.constvars, *(inner.invars[j] for j in fold)],
                      invars=[inner.invars[j] for j in keep], debug_info=_debug_info_keeping(inner, keep)),
        [*body.consts, *fold.values()])


def _cond_with_constants(e, fold: dict[int, Any]):
    """A cond whose operands ``fold`` (by position after the index) are constants of every branch."""
    keep = [j for j in range(len(e.invars) - 1) if j not in fold]
    branches = tuple(_with_constants(b, fold) for b in e.params["branches"])
    return e.replace(invars=[e.invars[0], *(e.invars[1 + j] for j in keep)], params=dict(e.params, branches=branches))


def _scan_with_constants(e, fold: dict[int, Any]):
    keep = [j for j in range(len(e.params["jaxpr"].jaxpr.invars)) if j not in fold]
    new_body = _with_constants(e.params["jaxpr"], fold)
    params = dict(e.params, jaxpr=new_body, num_consts=e.params["num_consts"] - len(fold))
    if "linear" in params:
        params["linear"] = tuple(params["linear"][j] for j in keep)
    return e.replace(invars=[e.invars[j] for j in keep], params=params)
