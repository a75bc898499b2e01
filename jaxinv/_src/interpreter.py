"""Running a plan: the forward pass, reconstruction, and the reverse sweep.

* ``forward`` evaluates the jaxpr and keeps only its outputs and the values
  the plan saves.
* ``backward`` walks the equations in reverse, accumulating cotangents.
  Each equation's inputs are rebuilt on demand, following the plan: solved
  from outputs by the equation's inverse rule (or fused ivjp rule), recomputed
  forward, or read from the saved values. A value is computed once, reused by
  every later step (a RevNet block's ``G(y1)`` serves both the inversion of the
  ``add`` and ``G``'s own VJP), and dropped as soon as the sweep has passed the
  equation that defines it.
* Without a fused ivjp rule, an equation's input cotangents come from the
  primitive's own VJP at the reconstructed inputs (for ``max`` and its kin,
  a VJP that tolerates rebuilt inputs: ``jaxinv._src.stable_vjp``).
"""

from __future__ import annotations

import functools
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal, Var

from jaxinv import registry
from jaxinv._src import partial, stable_vjp
from jaxinv._src.compat import (aval_spec, literal_value, trace_context, vary_like, varying_axes, with_sharding_of,
                                without_dead_code)
from jaxinv._src.flatten import atom_value, eval_eqn, hashable_params
from jaxinv._src.graph import eqn_name, source_line
from jaxinv._src.knowledge import REBUILT, Source, SourceKind
from jaxinv._src.plan import Plan
from jaxinv._src.dtypes import is_float, zero_cotangent
from jaxinv.registry import NotInvertibleError


def forward(plan: Plan, inputs: Sequence[Any]) -> tuple[list, list]:
    """Evaluate the plan's jaxpr on ``inputs``: returns ``(outputs, residuals)``.

    Example:
        ```python
        outs, res = forward(plan, [x])
        ```
    """
    jaxpr = plan.jaxpr
    env: dict[Var, Any] = dict(zip(jaxpr.constvars, plan.closed.consts))
    env.update(zip(jaxpr.invars, inputs))
    read = functools.partial(atom_value, env)
    last_use = _last_use(plan)
    for i in plan.live:
        e = jaxpr.eqns[i]
        env.update(zip(e.outvars, eval_eqn(e, [read(v) for v in e.invars])))
        for v in last_use.get(i, ()):
            env.pop(v, None)
    return [read(v) for v in jaxpr.outvars], [env[v] for v in plan.saved]


def _last_use(plan: Plan) -> dict[int, list[Var]]:
    """eqn index -> vars no longer needed after it (for eager memory)."""
    keep = set(plan.saved) | {v for v in plan.jaxpr.outvars if isinstance(v, Var)}
    last: dict[Var, int] = {}
    for i in plan.live:
        for v in plan.jaxpr.eqns[i].invars:
            if isinstance(v, Var):
                last[v] = i
    out: dict[int, list[Var]] = {}
    for v, i in last.items():
        if v not in keep:
            out.setdefault(i, []).append(v)
    return out


_HELD = Source(SourceKind.SAVED)  # a value the sweep holds from the start


class SweepObserver(Protocol):
    """What a sweep shows whoever watches it (``jaxinv.check_reconstruction``
    measures drift this way): every value it comes to hold, and the cotangents
    reaching each equation's outputs."""

    def value(self, v: Var, x: Any) -> None: ...

    def cotangents(self, i: int, outvars: Sequence[Var], cts: Sequence[Any]) -> None: ...


class Sweep:
    """State of one backward / reconstruction pass over a plan."""

    def __init__(self, plan: Plan, inputs, residuals, outvals, *, track_ildj: bool = False,
                 observer: SweepObserver | None = None):
        self.plan = plan
        self.observer = observer
        self.ildj = [] if track_ildj else None  # log-det terms of the inversions, for jaxinv.ildj
        self.ildj_pieces: set[int] = set()      # partial pieces already counted in it
        jaxpr = plan.jaxpr
        self.eqns = jaxpr.eqns
        self.env: dict[Var, Any] = {}
        self.keep(zip(jaxpr.constvars, plan.closed.consts))
        self.keep((v, x) for v, x, k in zip(jaxpr.invars, inputs, plan.known_inputs) if k)
        self.keep(zip(plan.saved, residuals))
        self.keep(((v, y) for v, y in zip(jaxpr.outvars, outvals) if isinstance(v, Var)), first=True)

    def keep(self, pairs, *, first: bool = False) -> None:
        """Hold these ``(var, value)`` pairs (with ``first``, only the vars not
        held yet), and show each to the observer."""
        for v, x in pairs:
            if first and v in self.env:
                continue
            self.env[v] = x
            if self.observer is not None:
                self.observer.value(v, x)

    def value(self, v):
        if isinstance(v, Literal):
            return literal_value(v)
        if v in self.env:
            return self.env[v]
        src = self.plan.sources.get(v)
        if src is None or src.kind not in REBUILT:
            raise AssertionError(f"jaxinv internal error: no way to recover {v} ({src})")
        if src.kind == SourceKind.ASSEMBLE:
            self.keep([(v, self.assemble(src.pieces)[v])])
            return self.env[v]
        e = self.eqns[src.eqn]
        if src.kind == SourceKind.RECOMPUTE:
            self.keep(zip(e.outvars, eval_eqn(e, [self.value(u) for u in e.invars])))
        else:
            self.invert(src.eqn, src.known)
        return self.env[v]

    def outvals(self, e) -> list:
        """An equation's outputs for its own rule. An unread output is None when
        the plan never recovers it, or recovers it only by re-running this very
        equation (a loop's discarded counter, once the loop's inputs are known)."""
        def get(u):
            src = self.plan.sources.get(u)
            if u in self.env:
                return self.env[u]
            if src is None or (src.kind == SourceKind.RECOMPUTE and self.eqns[src.eqn] is e):
                return None
            return self.value(u)
        return [get(u) for u in e.outvars]

    def assemble(self, pieces: Sequence[int]) -> dict:
        """Replay partial-knowledge pieces in order: the partial values they build."""
        partial_env: dict[Var, Any] = {}
        for k in pieces:
            piece = self.plan.pieces[k]
            e = self.eqns[piece.eqn]

            def get(u, piece=piece):
                if isinstance(u, Literal):
                    return literal_value(u)
                if u in piece.full:
                    return self.value(u)
                return partial_env.get(u) if u in piece.partial else None

            rule = lambda invals, outvals, e=e: call_rule(self.plan.table, e, invals, outvals)
            x = partial.evaluate(piece, e, get, rule)
            if self.ildj is not None and k not in self.ildj_pieces:
                self.ildj_pieces.add(k)
                if piece.kind == partial.PieceKind.ELEMENTWISE_BACKWARD:
                    invals = [None if j == piece.position else get(u) for j, u in enumerate(e.invars)]
                    self.ildj.append(eqn_ildj(self.plan.table, e, invals, [get(u) for u in e.outvars],
                                              mask=piece.new))
            partial_env[piece.var] = partial.merge(partial_env.get(piece.var), x, piece.mask)
        return partial_env

    def invert(self, i: int, known: tuple[bool, ...]):
        self.solve(i, known, self.plan.table)

    def solve(self, i: int, known: tuple[bool, ...], table, *cts):
        """Run equation ``i``'s rule from ``table`` (an inverse rule, or an ivjp
        rule when ``cts`` are given) and keep the inputs it rebuilt."""
        e = self.eqns[i]
        invals = [self.value(u) if k else None for u, k in zip(e.invars, known)]
        outvals = self.outvals(e)
        result = call_rule(table, e, invals, outvals, *cts)
        solved = result[0] if cts else result
        if self.ildj is not None and not cts:
            self.ildj.append(eqn_ildj(table, e, invals, outvals))
        self.keep(((u, x) for u, k, x in zip(e.invars, known, solved) if not k), first=True)
        return result

    def run(self, out_cts) -> list:
        plan, jaxpr = self.plan, self.plan.jaxpr
        cts: dict[Var, Any] = {}
        for v, ct in zip(jaxpr.outvars, out_cts):
            if isinstance(v, Var) and v in plan.active and ct is not None:
                _accumulate(cts, v, ct)
        for i in reversed(plan.live):
            e = self.eqns[i]
            out_ct = [cts.pop(v, None) for v in e.outvars]
            active_in = [isinstance(v, Var) and v in plan.active for v in e.invars]
            if any(active_in) and any(c is not None for c in out_ct):
                for v, ct in zip(e.invars, self.eqn_vjp(i, out_ct, active_in)):
                    if ct is not None:
                        _accumulate(cts, v, ct)
            for v in e.outvars:  # the sweep has passed their definition
                if plan.sources.get(v, _HELD).kind in REBUILT:
                    self.env.pop(v, None)
        return [cts.get(v) if v in plan.active else None for v in jaxpr.invars]

    def eqn_vjp(self, i: int, out_ct, active_in) -> list:
        e = self.eqns[i]
        if self.observer is not None:
            self.observer.cotangents(i, e.outvars, out_ct)
        out_ct = [ct if ct is not None else zero_cotangent(v.aval) for v, ct in zip(e.outvars, out_ct)]
        known = self.plan.by_ivjp.get(i)   # the plan chose this equation's fused ivjp rule
        if known is not None:
            _, in_cts = self.solve(i, known, registry.ivjp_rules, out_ct)
            return [ct if a else None for ct, a in zip(in_cts, active_in)]
        invals = [self.value(u) for u in e.invars]
        return primitive_vjp(e, invals, out_ct, active_in, self.recomputed_outputs(i))

    def recomputed_outputs(self, i: int) -> list | None:
        """Equation ``i``'s outputs if the sweep has computed them by re-running
        it on the inputs it has now (its VJP may read them), else None."""
        e = self.eqns[i]
        if all(v in self.env and self.plan.sources.get(v, _HELD).kind == SourceKind.RECOMPUTE
               and self.plan.sources[v].eqn == i for v in e.outvars):
            return [self.env[v] for v in e.outvars]
        return None


def primitive_vjp(e, invals, out_ct, active_in, outvals=None) -> list:
    """Input cotangents of one equation from its own VJP (for active inputs).

    The VJP of an equation is traced once per primitive, params, shapes and
    pattern of active inputs, then replayed with ``eval_jaxpr``: a deep network
    of identical blocks pays for ``jax.vjp``'s tracing once, not per block.
    ``outvals``, when given, are the equation's outputs computed from these
    very ``invals``: a VJP that re-evaluates the equation (``tanh``'s reads its
    answer) reads them instead, as XLA's CSE would.
    """
    idx = tuple(j for j, a in enumerate(active_in) if a)
    # The values' own types, not the equation's: inside shard_map a cotangent
    # can vary over more mesh axes than the output it belongs to.
    groups = (invals, out_ct) if outvals is None else (invals, out_ct, outvals)
    avals = tuple(tuple(jax.typeof(x) for x in xs) for xs in groups)
    key = _vjp_key(e, idx, avals, outvals is not None)
    traced = _vjp_cache.get(key) if key is not None else None
    if traced is None:
        traced = _traced_vjp(e, idx, avals, reuse_outputs=outvals is not None)
        if key is not None:
            _vjp_cache[key] = traced
    closed, reads_outputs = traced
    args = [*invals, *outvals, *out_ct] if reads_outputs else [*invals, *out_ct]
    got = jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *args)
    in_cts: list = [None] * len(invals)
    for j, ct in zip(idx, got):
        in_cts[j] = ct
    return in_cts


def _traced_vjp(e, idx, avals, reuse_outputs: bool):
    """``(closed jaxpr, reads_outputs)``: the VJP of equation ``e`` for the
    inputs ``idx``, from ``(invals, [outvals,] out_cts)`` of types ``avals``
    (inputs', cotangents' and, to reuse them, outputs') to their cotangents."""
    stable = stable_vjp.function_for(e)

    def vjp_of_eqn(xs, cts):
        def f(*active):
            full = list(xs)
            for j, x in zip(idx, active):
                full[j] = x
            return [stable(*full, **e.params)] if stable else eval_eqn(e, full)
        ys, f_vjp = jax.vjp(f, *[xs[j] for j in idx])
        # a loss's seed (1.0) is invariant while the per-device loss varies
        return f_vjp([vary_like(ct, y) for ct, y in zip(cts, ys)])
    in_specs, ct_specs = ([aval_spec(a) for a in group] for group in avals[:2])
    plain = without_dead_code(jax.make_jaxpr(vjp_of_eqn)(in_specs, ct_specs))
    reevaluations = _reevaluations(plain.jaxpr, e) if reuse_outputs else set()
    if not reevaluations:
        return plain, False

    def vjp_reading_outputs(xs, ys, cts):
        env = dict(zip(plain.jaxpr.constvars, plain.consts))
        env.update(zip(plain.jaxpr.invars, [*xs, *cts]))
        read = functools.partial(atom_value, env)
        for k, q in enumerate(plain.jaxpr.eqns):
            outs = ys if k in reevaluations else eval_eqn(q, [read(v) for v in q.invars])
            env.update(zip(q.outvars, outs))
        return [read(v) for v in plain.jaxpr.outvars]
    out_specs = [aval_spec(a) for a in avals[2]]
    return without_dead_code(jax.make_jaxpr(vjp_reading_outputs)(in_specs, out_specs, ct_specs)), True


def _reevaluations(jaxpr, e) -> set[int]:
    """Indices of ``jaxpr``'s equations that are ``e`` itself on ``jaxpr``'s
    first inputs (a traced VJP re-evaluating its primal)."""
    params = hashable_params(e.params)
    if params is None or e.effects:
        return set()
    xs = jaxpr.invars[:len(e.invars)]
    return {k for k, q in enumerate(jaxpr.eqns)
            if q.primitive is e.primitive and len(q.invars) == len(xs)
            and all(a is b for a, b in zip(q.invars, xs)) and hashable_params(q.params) == params}


_vjp_cache: dict = {}


def _vjp_key(e, idx, avals, reuse_outputs):
    params = hashable_params(e.params)
    if params is None:
        return None
    return (e.primitive, params, avals, idx, reuse_outputs, trace_context())


def call_rule(table, e, invals, outvals, *cts):
    """Call ``e``'s rule from ``table`` with the equation's params and input avals,
    attaching the primitive and source line to a NotInvertibleError."""
    rule = table[e.primitive]
    try:
        # proving(None): run time, even inside an outer rule's planning probe
        # (a scan's rule runs its body's rules while the scan is being probed).
        with registry.solving([v.aval for v in e.invars]), registry.proving(None):
            return rule(invals, outvals, *cts, **e.params)
    except NotInvertibleError as err:
        raise err.at(eqn_name(e), source_line(e)) from None


def _accumulate(cts: dict, v: Var, ct) -> None:
    if not is_float(v.aval):
        return
    prev = cts.get(v)
    cts[v] = ct if prev is None else prev + ct


def _opaque(inputs, residuals, outvals):
    """Hide where the backward pass's starting values came from.

    Defensive: when forward and backward share one XLA program, nothing may
    CSE-merge the backward's recomputations with the forward's, or simplify a
    reconstruction ``(x2 + g) - g`` back to the forward's ``x2`` (which would
    keep every activation alive). XLA:CPU's temp memory is the same with and
    without the barrier; the barrier makes such a merge impossible by
    construction, on any backend.
    """
    known = [x for x in inputs if x is not None]
    known, residuals, outvals = _barrier((known, list(residuals), list(outvals)))
    it = iter(known)
    return [next(it) if x is not None else None for x in inputs], residuals, outvals


def _barrier(tree):
    """``optimization_barrier`` over a tree's leaves, one barrier per set of
    ``shard_map`` axes the leaves vary over: one barrier for all would make an
    invariant value (a replicated weight) varying."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    groups: dict[frozenset, list[int]] = {}
    for i, x in enumerate(leaves):
        groups.setdefault(varying_axes(x), []).append(i)
    out = list(leaves)
    for idx in groups.values():
        for i, y in zip(idx, jax.lax.optimization_barrier([leaves[i] for i in idx])):
            out[i] = y
    return jax.tree_util.tree_unflatten(treedef, out)


def backward(plan: Plan, inputs, residuals, outvals, out_cts, *, return_inputs: bool = False):
    """The reverse sweep: returns the input cotangents, or ``(inputs, cotangents)``
    with ``return_inputs=True``.

    ``inputs`` holds the known inputs (None elsewhere); ``out_cts`` may hold None
    for a zero cotangent; an input cotangent is None when it is zero.

    Example:
        ```python
        cts = backward(plan, [None], res, outs, [jnp.ones_like(outs[0])])
        ```
    """
    inputs, residuals, outvals = _opaque(inputs, residuals, outvals)
    sweep = Sweep(plan, inputs, residuals, outvals)
    in_cts = [with_sharding_of(ct, v.aval) for ct, v in zip(sweep.run(out_cts), plan.jaxpr.invars)]
    if not return_inputs:
        return in_cts
    return [sweep.value(v) for v in plan.jaxpr.invars], in_cts


def reconstruct(plan: Plan, inputs, residuals, outvals) -> list:
    """Recover all of the plan's inputs from its outputs (and saved values).

    Example:
        ```python
        (x,) = reconstruct(plan, [None], res, outs)
        ```
    """
    with registry.principal_branches(plan.principal_branch):
        sweep = Sweep(plan, inputs, residuals, outvals)
        return [sweep.value(v) for v in plan.jaxpr.invars]


def reconstruct_and_ildj(plan: Plan, inputs, residuals, outvals) -> tuple[list, Any]:
    """``reconstruct``, plus the log-det of the inverse map, ``log|det
    d(inputs)/d(outputs)|``: the sum of each inverted equation's term (the
    inverse of a composition of triangular steps).

    Example:
        ```python
        (x,), ildj = reconstruct_and_ildj(plan, [None], [], [y])
        ```
    """
    with registry.principal_branches(plan.principal_branch):
        sweep = Sweep(plan, inputs, residuals, outvals, track_ildj=True)
        values = [sweep.value(v) for v in plan.jaxpr.invars]
    total = log_det_zero([*values, *outvals])
    for term in sweep.ildj:
        total = total + jnp.asarray(term).astype(total.dtype)
    return values, total


def log_det_zero(values):
    """A scalar zero in the widest real float dtype of ``values`` (None and
    non-float values ignored): the accumulator of a log-det."""
    floats = [jnp.result_type(v) for v in values if v is not None and is_float(v)]
    dtype = jnp.result_type(*floats) if floats else jnp.result_type(float)
    return jnp.zeros((), jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype)


def eqn_ildj(table, e, invals, outvals, mask=None):
    """One inverted equation's term of ``log|det d(inputs)/d(outputs)|``: its
    ildj rule, or for an elementwise primitive ``sum(log|dx/dy|)`` by forward
    mode through its inverse rule (over the elements in ``mask`` only, for a
    partial inversion)."""
    prim = e.primitive
    try:
        if mask is not None:
            with registry.solving([v.aval for v in e.invars]), registry.proving(None):
                return _elementwise_ildj(table.get(prim), e.params, [v.aval for v in e.invars], invals, outvals,
                                         mask)
        return ildj_term(prim, e.params, [v.aval for v in e.invars], table.get(prim),
                         registry.ildj_rules.get(prim), prim in registry.elementwise_primitives, invals, outvals)
    except NotInvertibleError as err:
        raise err.at(eqn_name(e), source_line(e)) from None


def ildj_term(prim, params, in_avals, inverse_rule, ildj_rule, elementwise: bool, invals, outvals):
    """``log|det d(unknown inputs)/d(outputs)|`` for one equation: its ildj
    rule, or for an elementwise primitive ``sum(log|dx/dy|)`` by forward mode
    through ``inverse_rule`` (also used by ``jaxinv.testing``)."""
    with registry.solving(in_avals), registry.proving(None):
        if ildj_rule is not None:
            return ildj_rule(invals, outvals, **params)
        if elementwise:
            return _elementwise_ildj(inverse_rule, params, in_avals, invals, outvals)
    raise NotInvertibleError(f"no log-det (ildj) rule is registered for `{prim.name}`")


def _elementwise_ildj(rule, params, in_avals, invals, outvals, mask=None):
    unknown = [j for j, x in enumerate(invals) if x is None]
    if len(unknown) != 1 or len(outvals) != 1:
        raise NotInvertibleError("an elementwise log-det needs one unknown input and one output")
    (u,) = unknown
    y = outvals[0]
    if tuple(in_avals[u].shape) != tuple(np.shape(y)):
        raise NotInvertibleError(f"its unknown input {tuple(in_avals[u].shape)} was broadcast to "
                                 f"{tuple(np.shape(y))}: not a bijection, no log-det")
    if not (is_float(y) and is_float(in_avals[u])):
        return 0.0  # a bijection of integers (xor, add): no volume to change

    def solve(y):
        return rule(invals, [y], **params)[u]

    _, dx = jax.jvp(solve, (y,), (jnp.ones_like(y),))
    if mask is not None:  # a partial inversion: only the elements it taught
        return jnp.sum(jnp.where(partial.compress(mask), jnp.log(jnp.abs(dx)), 0))
    return jnp.sum(jnp.log(jnp.abs(dx)))
