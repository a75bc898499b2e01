"""Planning: how every value of a jaxpr is recovered in the backward pass.

Starting from what is known (the outputs, closure constants, inputs the caller
declares known), knowledge *propagates*: an equation whose inputs are all known
is **recomputed** forward; an equation whose outputs are known, and whose rule
can solve for its unknown inputs, is **inverted**. When nothing moves, something
is **saved** in the forward pass, chosen so that the saved set stays small:

1. outputs of an equation that nobody reads (a loop counter), when knowing them
   would let the equation be inverted;
2. parameters: inputs of the function (and short chains computed only from
   them, such as a dropout mask from its key: the key is saved, never the mask)
   that an equation next to the known region needs;
3. otherwise, the unknown inputs of the last stuck equation.

A final pass drops every saved intermediate the rest of the plan can rebuild.
The plan is static: it is made once per jaxpr, at trace time.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections import defaultdict, deque
from typing import Any, Sequence

import jax
import numpy as np
from jax.extend import source_info_util
from jax.extend.core import ClosedJaxpr, DropVar, Literal, Var, jaxprs_in_params
from jax.extend.core import primitives as P

from jaxinv import partial, registry
from jaxinv.flatten import eval_eqn, hashable_params
from jaxinv.markers import anchor_p
from jaxinv.registry import NotInvertibleError

# How far back (in equations) a chain computed only from inputs may reach for
# its inputs to be saved in its place (a dropout mask: ~12 equations from its key).
PARAMETER_CHAIN_LIMIT = 32

# Constants up to this size are evaluated at plan time (masks, index arrays).
CONCRETE_BYTES = 1 << 24

# Primitives whose JAX VJP stores one value per iteration.
_LOOPS = (P.scan_p, P.while_p)


@dataclasses.dataclass(frozen=True)
class Source:
    """How a variable is known in the backward pass.

    ``kind``: "input" (given by the caller), "const", "output", "saved",
    "recompute" (evaluate equation ``eqn``), "invert" (solve equation ``eqn``
    with the inputs in ``known`` given) or "assemble" (replay the partial
    knowledge steps ``Plan.pieces[k]`` for ``k`` in ``pieces``, see
    :mod:`jaxinv.partial`).
    """
    kind: str
    eqn: int | None = None
    known: tuple[bool, ...] | None = None
    pieces: tuple[int, ...] | None = None


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
    # Equations with a body (a scan, a while loop) whose VJP should come from
    # their fused ivjp rule although the plan knows their inputs some other way
    # (a given x): equation -> the inputs treated as known. JAX's own VJP of a
    # loop would store every iteration's carry.
    fused: dict[int, tuple[bool, ...]] = dataclasses.field(default_factory=dict)
    # Steps that teach elements of a value (jaxinv.partial), replayed by "assemble" sources.
    pieces: list = dataclasses.field(default_factory=list)

    @property
    def jaxpr(self):
        return self.closed.jaxpr


def source_line(eqn) -> str:
    """The user's ``file:line (function)`` for an equation."""
    return source_info_util.summarize(eqn.source_info) or "<no user source line>"


def eqn_name(eqn) -> str:
    """The primitive's name, with the user's function name for calls:
    ``custom_jvp_call[relu]``, ``custom_ivjp_call[couple]``."""
    name = eqn.params.get("name")
    rule = eqn.params.get("rule")
    if name is None and rule is not None and hasattr(rule, "f"):
        name = getattr(rule.f, "__name__", None)
    return f"{eqn.primitive.name}[{name}]" if isinstance(name, str) else eqn.primitive.name


def nbytes(aval) -> int:
    """Bytes of one value of type ``aval`` (PRNG keys count their raw data)."""
    try:
        itemsize = np.dtype(aval.dtype).itemsize
    except TypeError:
        itemsize = getattr(aval.dtype, "itemsize", 8)
    return int(np.prod(aval.shape, dtype=np.int64)) * itemsize


def is_float(aval) -> bool:
    try:
        return jax.numpy.issubdtype(aval.dtype, jax.numpy.inexact)
    except TypeError:
        return False


def _concrete_facts(value) -> frozenset:
    """Facts a concrete value proves: 'nonzero' when no element is zero;
    'nonsingular:a,b' when it is a well-conditioned matrix over axes a, b
    (batched over the others); 'selects:k' for a constant integer or boolean
    array equal to k everywhere (a select_n predicate)."""
    try:
        arr = np.asarray(value)
    except Exception:  # tracers, keys
        return frozenset()
    if arr.dtype == object or arr.size == 0 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        return frozenset()
    facts = {"nonzero"} if bool(np.all(arr != 0)) else set()
    if (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)) and bool(np.all(arr == arr.flat[0])):
        facts.add(f"selects:{int(arr.flat[0])}")  # a constant select_n predicate
    if arr.ndim >= 2 and np.issubdtype(arr.dtype, np.inexact) and arr.size <= 1 << 16:
        # "nonsingular over axes (a, b)": a rule names the two axes it solves
        # with (a 1x1 conv kernel OIHW: 0 and 1, not the trailing 1x1 window).
        for a, b in itertools.combinations(range(arr.ndim), 2):
            if arr.shape[a] != arr.shape[b]:
                continue
            with np.errstate(all="ignore"):
                m = np.moveaxis(arr, (a, b), (-2, -1))
                cond = np.linalg.cond(m.astype(np.complex128 if np.iscomplexobj(m) else np.float64))
            if bool(np.all(cond < 1e6)):
                facts.add(registry.nonsingular_fact(arr.ndim, (a, b)))
    return frozenset(facts)


def _literal_key(v):
    if not isinstance(v, Literal) or np.ndim(v.val) != 0:
        return None
    return (float(np.asarray(v.val).real), str(np.asarray(v.val).dtype))


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
        hit = registry._probe_cache.get(key)
        if hit is not None:
            return hit[0]
    reason = _run_probe(eqn, rule, known, facts, in_avals, out_avals, out_known, out_facts)
    if key is not None:
        registry._probe_cache[key] = (reason,)
    return reason


def spec(aval):
    """``aval`` as a ShapeDtypeStruct (for eval_shape / make_jaxpr)."""
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype)


def _run_probe(eqn, rule, known, facts, in_avals, out_avals, out_known, out_facts) -> str | None:
    literal = {i: v.val for i, v in enumerate(eqn.invars) if isinstance(v, Literal)}
    traced_idx = [i for i, k in enumerate(known) if k and i not in literal]

    def solve(traced_vals, traced_outs):
        outs = iter(traced_outs)
        outvals = [next(outs) if k else None for k in out_known]
        invals: list[Any] = [None] * len(in_avals)
        for i, val in literal.items():
            invals[i] = val
        for i, val in zip(traced_idx, traced_vals):
            invals[i] = val
        proven = {id(invals[i]): facts[i] for i in range(len(invals)) if known[i]}
        proven.update({id(y): f for y, f in zip(outvals, out_facts) if y is not None})
        with registry.proving(proven), registry.solving(in_avals):
            res = rule(invals, list(outvals), **eqn.params)
        return [res[i] for i, k in enumerate(known) if not k]

    try:
        shapes = jax.eval_shape(solve, [spec(in_avals[i]) for i in traced_idx],
                                [spec(a) for a, k in zip(out_avals, out_known) if k])
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


class _Planner:
    def __init__(self, closed: ClosedJaxpr, known_inputs, input_values, table, allow_saving,
                 assume_nonzero=False):
        self.closed = _without_dropvars(closed)
        self.jaxpr = self.closed.jaxpr
        self.eqns = self.jaxpr.eqns
        self.known_inputs = tuple(known_inputs)
        self.table = table
        self.allow_saving = allow_saving
        self.assume_nonzero = assume_nonzero  # jaxinv.inverse: dividing by zero is the user's domain error
        jaxpr = self.jaxpr
        self.invars = set(jaxpr.invars)
        self.outvars = {v for v in jaxpr.outvars if isinstance(v, Var)}
        self.producer: dict[Var, int] = {}
        self.users: dict[Var, list[int]] = defaultdict(list)
        for i, e in enumerate(self.eqns):
            for v in e.outvars:
                self.producer[v] = i
            for v in e.invars:
                if isinstance(v, Var):
                    self.users[v].append(i)
        self.live = self._live_eqns()
        self.live_set = set(self.live)
        self.needed = self._needed_vars()
        self.missing = set(self.needed)  # needed and not yet known (kept by learn)
        self.facts = self._facts(input_values)
        self.input_values = input_values
        # Known inputs (closure values, loop constants) are not seeded as known:
        # recomputing forward from them could rebuild a whole network from its
        # input instead of inverting from the outputs. They are "saved" for free
        # when the planner needs them, like parameters. Concrete index arrays
        # and boolean masks are the exception: they are never the data, and
        # they steer partial knowledge (jaxinv.partial) from the start.
        self.free = {v for v, k in zip(self.jaxpr.invars, self.known_inputs) if k}
        self.seeded = {v for v in self.free if v in self._concrete_inputs and not is_float(v.aval)}
        self.constant = self._constant_vars()
        self.sources: dict[Var, Source] = {}
        self.reasons: dict[Var, str] = {}
        self.freed: list[Var] = []
        self.saved: list[Var] = []
        self.anchored: set[Var] = set()  # inputs of jaxinv.anchor: kept, never pruned
        self.queue: deque = deque()
        self.touched: set[int] = set()  # live equations with something known
        self._reset_partial()
        self._selections: dict[int, Any] = {}
        self._concrete: dict[Var, Any] = {}
        self._concrete_facts: dict[Var, frozenset | None] = {}

    def _reset_partial(self) -> None:
        self.partial: dict[Var, np.ndarray] = {}   # masks of values known in part
        self.pieces: list[partial.Piece] = []
        self.var_pieces: dict[Var, list[int]] = defaultdict(list)
        # partial values with elements learned from the outputs (not only a
        # mask's constant zeros): data being rebuilt, never parameters
        self.rebuilding: set[Var] = set()

    # ---- static analyses
    def _live_eqns(self) -> list[int]:
        live_vars = {v for v in self.jaxpr.outvars if isinstance(v, Var)}
        live = []
        for i in reversed(range(len(self.eqns))):
            e = self.eqns[i]
            if any(v in live_vars for v in e.outvars) or e.effects:
                live.append(i)
                live_vars.update(v for v in e.invars if isinstance(v, Var))
        return live[::-1]

    def _needed_vars(self) -> list[Var]:
        seen, out = set(), []
        for v in self.jaxpr.outvars:
            if isinstance(v, Var) and v not in seen:
                seen.add(v), out.append(v)
        for i in self.live:
            for v in (*self.eqns[i].invars, *self.eqns[i].outvars):
                if isinstance(v, Var) and v not in seen and (self.users.get(v) or v in self.outvars):
                    seen.add(v), out.append(v)
        return out

    def _constant_vars(self) -> set[Var]:
        """Values computed from literals and constants alone (a broadcast zero)."""
        const = set(self.jaxpr.constvars) | self.seeded
        for e in self.eqns:
            if all(isinstance(v, Literal) or v in const for v in e.invars):
                const.update(e.outvars)
        return const

    def _facts(self, input_values) -> dict[Var, frozenset]:
        facts: dict[Var, frozenset] = defaultdict(frozenset)
        for v, c in zip(self.jaxpr.constvars, self.closed.consts):
            facts[v] = _concrete_facts(c)
        if input_values is not None:
            for v, c in zip(self.jaxpr.invars, input_values):
                if c is not None:
                    facts[v] = _concrete_facts(c)
        for e in self.eqns:
            if e.primitive in registry.nonsingular_primitives:
                for v in e.outvars:
                    facts[v] = facts[v] | {"nonsingular"}
            if e.primitive is P.iota_p:  # a permutation carried through sort
                facts[e.outvars[0]] = facts[e.outvars[0]] | {f"iota:{e.params['dimension']}"}
            rule = registry.nonzero_rules.get(e.primitive)
            if rule is None:
                continue
            nz = [("nonzero" in _concrete_facts(v.val)) if isinstance(v, Literal) else ("nonzero" in facts[v])
                  for v in e.invars]
            with registry.solving([v.aval for v in e.invars]):
                proven = rule(nz, **e.params)
            if proven:
                for v in e.outvars:
                    facts[v] = facts[v] | {"nonzero"}
        return facts

    def fact_of(self, v) -> frozenset:
        if isinstance(v, Literal):
            return _concrete_facts(v.val)
        if v not in self._concrete_facts:
            value = self.concrete(v) if v in self.producer else None
            # A constant's facts are what its value shows (a 0/1 mask is not
            # nonzero, even for jaxinv.inverse, which assumes the rest is).
            self._concrete_facts[v] = None if value is None else self.facts[v] | _concrete_facts(value)
        if self._concrete_facts[v] is not None:
            return self._concrete_facts[v]
        if self.assume_nonzero and v not in self._concrete_inputs:
            return self.facts[v] | {"nonzero", "nonsingular"}
        return self.facts[v]

    # ---- propagation
    def known(self, v) -> bool:
        return isinstance(v, Literal) or v in self.sources

    def learn(self, v, source: Source) -> None:
        if isinstance(v, Literal) or v in self.sources:
            return
        self.sources[v] = source
        self.partial.pop(v, None)
        self.missing.discard(v)
        self.queue.append(v)
        self.touched.update(i for i in self.users.get(v, ()) if i in self.live_set)
        if v in self.producer and self.producer[v] in self.live_set:
            self.touched.add(self.producer[v])

    def try_recompute(self, i: int) -> None:
        e = self.eqns[i]
        if i in self.live_set and all(map(self.known, e.invars)) and not all(map(self.known, e.outvars)):
            for v in e.outvars:
                self.learn(v, Source("recompute", i))

    def dead(self, v) -> bool:
        """An output nobody reads: it may be passed to rules as None."""
        return not self.users.get(v) and v not in self.outvars

    def outputs_ready(self, e) -> bool:
        return all(self.known(v) or self.dead(v) for v in e.outvars)

    def probe_now(self, e, known=None) -> str | None:
        known = tuple(map(self.known, e.invars)) if known is None else known
        return probe(e, known, [self.fact_of(v) for v in e.invars], self.table,
                     tuple(map(self.known, e.outvars)), [self.fact_of(v) for v in e.outvars])

    def try_invert(self, i: int) -> str | None:
        e = self.eqns[i]
        if i not in self.live_set or not self.outputs_ready(e):
            return None
        known = tuple(map(self.known, e.invars))
        if all(known):
            return None
        reason = self.probe_now(e, known)
        if reason is None:
            for v, k in zip(e.invars, known):
                if not k:
                    self.learn(v, Source("invert", i, known))
        return reason

    def propagate(self) -> None:
        while self.queue:
            v = self.queue.popleft()
            for i in self.users.get(v, ()):
                self.try_recompute(i)
                self.try_invert(i)
                self.spread(i)
            if v in self.producer:
                self.try_invert(self.producer[v])
                self.spread(self.producer[v])

    # ---- partial knowledge (jaxinv.partial)
    def concrete(self, v):
        """``v``'s value at plan time if it is a constant (a literal, a
        concrete closure value, or computed from those alone), else None."""
        if isinstance(v, Literal):
            return v.val
        if v in self._concrete:
            return self._concrete[v]
        self._concrete[v] = None  # (no cycles in a jaxpr; guards re-entry)
        value = None
        if v in self._concrete_inputs:
            value = self._concrete_inputs[v]
        elif v in self.producer:
            e = self.eqns[self.producer[v]]
            if (not e.effects and not any(True for _ in jaxprs_in_params(e.params))
                    and sum(nbytes(u.aval) for u in e.outvars) <= CONCRETE_BYTES):
                ins = [self.concrete(u) for u in e.invars]
                if all(x is not None for x in ins):
                    try:
                        with jax.ensure_compile_time_eval():
                            outs = eval_eqn(e, ins)
                        for u, x in zip(e.outvars, outs):
                            self._concrete[u] = np.asarray(x)
                        return self._concrete[v]
                    except Exception:
                        value = None
        self._concrete[v] = value
        return value

    @functools.cached_property
    def _concrete_inputs(self) -> dict[Var, Any]:
        values = dict(zip(self.jaxpr.constvars, self.closed.consts))
        if self.input_values is not None:
            values.update((v, c) for v, c, k in zip(self.jaxpr.invars, self.input_values, self.known_inputs)
                          if k and c is not None)
        out = {}
        for v, c in values.items():
            try:
                out[v] = np.asarray(c)
            except Exception:  # a tracer: not a constant
                continue
        return out

    def mask_of(self, v):
        """What is known of ``v``: ``np.True_`` (all), a mask, or None (nothing)."""
        if self.known(v):
            return np.True_
        return self.partial.get(v)

    def selection(self, i: int):
        if i not in self._selections:
            self._selections[i] = partial.selection(self.eqns[i], self.concrete)
        return self._selections[i]

    def spread(self, i: int) -> None:
        """Move partial knowledge through equation ``i`` (see jaxinv.partial)."""
        if i not in self.live_set:
            return
        e = self.eqns[i]
        values = [v for v in (*e.invars, *e.outvars) if isinstance(v, Var)]
        if all(map(self.known, values)):
            return
        if e.primitive in partial.SELECTION_PRIMITIVES:
            sel = self.selection(i)
            if sel is not None:
                self._spread_selection(i, e, sel)
                return
        if (len(e.outvars) == 1 and partial.is_elementwise(e.primitive, registry.elementwise_primitives)
                and any(v in self.partial for v in values)):
            self._spread_elementwise(i, e)

    def _spread_selection(self, i, e, sel) -> None:
        if not all(map(self.known, e.outvars)):
            outs = sel.forward_masks([self.mask_of(e.invars[j]) for j in sel.data])
            for pos, (v, m) in enumerate(zip(e.outvars, outs)):
                self.add_piece(v, i, partial.PieceKind.SELECT_FORWARD, m, position=pos, selection=sel)
        out_masks = [self.mask_of(v) for v in e.outvars]
        if any(m is not None for m in out_masks) and not all(self.known(e.invars[j]) for j in sel.data):
            weights = tuple(sel.representatives(out_masks))
            for j, m in zip(sel.data, sel.backward_masks(out_masks)):
                self.add_piece(e.invars[j], i, partial.PieceKind.SELECT_BACKWARD, m, position=j,
                               weights=weights, selection=sel)

    def _spread_elementwise(self, i, e) -> None:
        (y,) = e.outvars
        shape = tuple(y.aval.shape)
        full = lambda m: np.broadcast_to(m, shape)
        in_masks = [np.True_ if isinstance(v, Literal) else self.mask_of(v) for v in e.invars]
        if not self.known(y) and all(m is not None for m in in_masks):
            self.add_piece(y, i, partial.PieceKind.ELEMENTWISE_FORWARD,
                           np.logical_and.reduce([full(m) for m in in_masks]), position=0)
        out_mask = self.mask_of(y)
        if out_mask is None or e.primitive not in self.table or e.primitive not in registry.elementwise_primitives:
            return
        for j, u in enumerate(e.invars):
            if isinstance(u, Literal) or self.known(u) or tuple(u.aval.shape) != shape:
                continue
            others = [m for k, m in enumerate(in_masks) if k != j]
            if any(m is None for m in others):
                continue
            known = tuple(k != j for k in range(len(e.invars)))
            if probe(e, known, [self.fact_of(v) for v in e.invars], self.table,
                     out_facts=[self.fact_of(v) for v in e.outvars]) is not None:
                continue
            self.add_piece(u, i, partial.PieceKind.ELEMENTWISE_BACKWARD,
                           np.logical_and.reduce([full(m) for m in (out_mask, *others)]), position=j)

    def add_piece(self, v, i: int, kind: str, mask, **fields) -> None:
        """Record that equation ``i`` teaches the elements ``mask`` of ``v``."""
        if isinstance(v, Literal) or self.known(v) or not is_float(v.aval) or not mask.any():
            return
        old = self.partial.get(v)
        new = mask if old is None else (mask & ~old)
        if not new.any():
            return
        e = self.eqns[i]
        others = {u for u in (*e.invars, *e.outvars) if isinstance(u, Var) and u is not v}
        self.var_pieces[v].append(len(self.pieces))
        self.pieces.append(partial.Piece(v, i, kind, np.asarray(mask), new,
                                         frozenset(u for u in others if self.known(u)),
                                         frozenset(u for u in others if u in self.partial), **fields))
        if kind in (partial.PieceKind.SELECT_BACKWARD, partial.PieceKind.ELEMENTWISE_BACKWARD) or (
                not self.rebuilding.isdisjoint(self.pieces[-1].partial)):
            self.rebuilding.add(v)
        union = mask if old is None else (old | mask)
        if union.all():
            self.learn(v, Source("assemble", pieces=self.pieces_needed(v)))
        else:
            self.partial[v] = union
            self.queue.append(v)
            self.touched.update(k for k in self.users.get(v, ()) if k in self.live_set)

    def pieces_needed(self, v) -> tuple[int, ...]:
        """The pieces to replay, in order, to build ``v``: its own, and those
        of the partial values they read (each as it was when read)."""
        need: set[int] = set()
        stack = [(v, len(self.pieces))]
        while stack:
            w, before = stack.pop()
            for k in self.var_pieces[w]:
                if k < before and k not in need:
                    need.add(k)
                    stack.extend((u, k) for u in self.pieces[k].partial)
        return tuple(sorted(need))

    def start(self) -> None:
        for v in self.jaxpr.constvars:
            self.learn(v, Source("const"))
        for v in (*self.seeded, *self.freed):
            self.learn(v, Source("input"))
        for v in self.jaxpr.outvars:
            self.learn(v, Source("output"))
        for i in self.live:
            self.try_recompute(i)
            if self.eqns[i].primitive is P.mul_p:  # by a constant 0/1 mask: its zeros are known
                self.spread(i)

    def unknown(self) -> list[Var]:
        return [v for v in self.needed if v not in self.sources]

    # ---- choosing what to save
    def save(self, v: Var, reason: str) -> None:
        if v in self.sources:
            return
        if v in self.free:  # a known input: using it costs nothing
            self.freed.append(v)
            self.learn(v, Source("input"))
            return
        if not self.allow_saving:
            raise self.inverse_error()
        self.saved.append(v)
        self.reasons[v] = reason
        self.learn(v, Source("saved"))

    def save_found(self, found: dict[Var, str]) -> None:
        """Save the parameters found; closure values alone first when there
        are any (they cost nothing, and knowing them may make the others
        reachable: a weight freed lets the next block be inverted)."""
        free = {v: why for v, why in found.items() if v in self.free}
        for v, why in (free or found).items():
            self.save(v, why)

    def parameter_roots(self, v: Var, given_join: bool = False) -> set[Var] | None:
        """The unknown function inputs ``v`` is computed from, if it is a
        *parameter*: computed (within PARAMETER_CHAIN_LIMIT equations, plus known
        values and given integer arrays, see ``_index_roots``) from one input
        alone, or from given inputs only.
        ``W / |W|``, ``2b + b`` and ``P @ L @ U`` with a constant permutation
        ``P`` are parameters; ``x @ W`` joins two inputs: data. With
        ``given_join`` (for a value already known to be a loop's weight), a
        join of one input with given values (``W0 * scale``) is a parameter."""
        roots, seen, stack, steps = set(), set(), [v], 0
        while stack:
            u = stack.pop()
            if u in seen or self.known(u):
                continue
            if u in self.rebuilding:  # being rebuilt piece by piece from the outputs: data
                return None
            seen.add(u)
            if u in self.invars:
                roots.add(u)
                ignored = self._index_roots | self.free if given_join else self._index_roots
                if len(roots - ignored) > 1 and not roots <= self.free:
                    return None
                continue
            steps += 1
            if steps > PARAMETER_CHAIN_LIMIT or u not in self.producer:
                return None
            stack.extend(w for w in self.eqns[self.producer[u]].invars if isinstance(w, Var) and not self.known(w))
        return roots

    @functools.cached_property
    def _index_roots(self) -> set[Var]:
        """Given integer and boolean inputs (a closure's permutation or mask:
        ``W = L @ U`` permuted by a constant is still a parameter). Only where
        saving is allowed: in a loop body ``x * w + i`` joins the data ``x``
        with the counter ``i``, and calling ``x`` a parameter would save it."""
        if not self.allow_saving:
            return set()
        return {v for v in self.free if not is_float(v.aval)}

    def cheapest_unlocking_subset(self, e, limit: int = 6):
        unknown = [j for j, v in enumerate(e.invars) if not self.known(v)]
        roots = {j: self.parameter_roots(e.invars[j]) for j in unknown}
        if len(unknown) < 2 or any(r is None for r in roots.values()):
            return None
        cost = {j: sum(nbytes(v.aval) for v in roots[j] if v not in self.free) for j in unknown}
        # Closure values cost nothing: tried given first. Among the rest, every
        # subset when there are few; else only "all but one" and "all" (a scan
        # fed by x and many parameter arrays: n probes, not 2^n). All the rest
        # without the closure values: a loop whose carry is a given x and whose
        # stacked weights are differentiated is inverted for its carry.
        free = tuple(j for j in unknown if cost[j] == 0)
        rest = [j for j in unknown if cost[j] > 0]
        if len(rest) <= limit:
            subsets = [c for n in range(len(rest) + 1) for c in itertools.combinations(rest, n)]
        else:
            subsets = [tuple(k for k in rest if k != j) for j in rest] + [tuple(rest)]
        subsets = [s for c in subsets for s in (free + c, c) if s and len(s) < len(unknown)]
        subsets = list(dict.fromkeys(subsets))
        for subset in sorted(subsets, key=lambda c: (sum(cost[j] for j in c), -len(c))):
            known = tuple(self.known(v) or j in subset for j, v in enumerate(e.invars))
            dead = self.unlocks(e, known)
            if dead is not None:
                return subset, dead
        return None

    def unlocks(self, e, known) -> list[Var] | None:
        """If ``e`` is solvable with the inputs in ``known`` given: the unread
        outputs that must be saved too ([] for none); else None."""
        if self.probe_now(e, known) is None:
            return []
        dead = [v for v in e.outvars if not self.known(v) and self.dead(v)]
        if dead and probe(e, known, [self.fact_of(v) for v in e.invars], self.table,
                          out_facts=[self.fact_of(v) for v in e.outvars]) is None:
            return dead
        return None

    def stuck_reason(self, i: int) -> str:
        return self.probe_now(self.eqns[i]) or "an input is unknown"

    def choose_saves(self) -> bool:
        # Only equations next to something known can be unblocked by a save.
        done = {i for i in self.touched if all(map(self.known, (*self.eqns[i].invars, *self.eqns[i].outvars)))}
        self.touched -= done
        pending = sorted(self.touched)
        # 0. jaxinv.anchor: store its input (rebuilding restarts from an exact value)
        for i in pending:
            e = self.eqns[i]
            if e.primitive is anchor_p and self.outputs_ready(e) and not all(map(self.known, e.invars)):
                for v in e.invars:
                    if isinstance(v, Var) and not self.known(v):
                        self.save(v, "stored by jaxinv.anchor (the backward pass restarts from it)")
                        self.anchored.add(v)
                return True
        # 1. unread outputs whose knowledge would let an equation be inverted
        for i in pending:
            e = self.eqns[i]
            dead = [v for v in e.outvars if not self.known(v) and self.dead(v)]
            if dead and self.outputs_ready(e):
                known = tuple(map(self.known, e.invars))
                if probe(e, known, [self.fact_of(v) for v in e.invars], self.table,
                         out_facts=[self.fact_of(v) for v in e.outvars]) is None:
                    for v in dead:
                        self.save(v, "an unread output, needed to invert its equation")
                    return True
        # 2a. parameters next to the known region (recompute unblocking); a
        # concatenate or a pad joining a known piece to an unknown one
        # assembles data (its other pieces), it does not consume a parameter
        found = {}
        for i in pending:
            e = self.eqns[i]
            if e.primitive is not P.mul_p and self.selection(i) is not None:
                continue
            ins = [v for v in e.invars if isinstance(v, Var)]
            if not any(self.known(v) and self.sources[v].kind not in ("input", "const")
                       and v not in self.constant for v in ins) or all(map(self.known, e.outvars)):
                continue
            roots = [self.parameter_roots(v) for v in ins if not self.known(v)]
            if roots and all(r is not None for r in roots):
                for r in roots:
                    for v in r:
                        found.setdefault(v, f"a parameter of `{eqn_name(e)}` at {source_line(e)}")
        if found:
            self.save_found(found)
            return True
        # 2b. parameters whose knowledge lets an equation be inverted
        for i in pending:
            e = self.eqns[i]
            if not self.outputs_ready(e):
                continue
            roots = {j: self.parameter_roots(v) for j, v in enumerate(e.invars) if not self.known(v)}
            short = {j for j, r in roots.items() if r is not None}
            if not short or len(short) == len(roots):
                continue
            known = tuple(self.known(v) or j in short for j, v in enumerate(e.invars))
            dead = self.unlocks(e, known)
            if dead is not None:
                for j in short:
                    for v in roots[j]:
                        found.setdefault(v, f"a parameter of `{eqn_name(e)}` at {source_line(e)}")
                for v in dead:
                    found.setdefault(v, "an unread output, needed to invert its equation")
        # 2c. an equation whose unknown inputs are all parameter-like (at the
        # border of the region, data and weights look alike): make known the
        # cheapest subset that lets the rest be solved.
        if not found:
            for i in pending:
                e = self.eqns[i]
                if not self.outputs_ready(e):
                    continue
                chosen = self.cheapest_unlocking_subset(e)
                if chosen:
                    subset, dead = chosen
                    for j in subset:
                        for v in self.parameter_roots(e.invars[j]):
                            found.setdefault(v, f"a parameter of `{eqn_name(e)}` at {source_line(e)}")
                    for v in dead:
                        found.setdefault(v, "an unread output, needed to invert its equation")
                    break
        # 2d. a loop whose constants or scanned-over values (its weights,
        # however computed) are unknown: knowing them rebuilds the carry, and
        # costs no more than stage 3, which would save them with the carry.
        if not found:
            for i in pending:
                e = self.eqns[i]
                if e.primitive not in _LOOPS or not self.outputs_ready(e):
                    continue
                n_consts = _loop_consts(e)
                n_carry = e.params["num_carry"] if e.primitive is P.scan_p else len(e.invars) - n_consts
                weights = [j for j, v in enumerate(e.invars)
                           if not (n_consts <= j < n_consts + n_carry) and not self.known(v)]
                if not weights:
                    continue
                dead = self.unlocks(e, tuple(self.known(v) or j in weights for j, v in enumerate(e.invars)))
                if dead is None:
                    continue
                why = f"a constant or scanned-over value of the loop `{eqn_name(e)}` at {source_line(e)}"
                for j in weights:
                    for v in (self.parameter_roots(e.invars[j], given_join=True) or [e.invars[j]]):
                        found.setdefault(v, why)
                for v in dead:
                    found.setdefault(v, "an unread output, needed to invert its equation")
                break
        if found:
            self.save_found(found)
            return True
        # 3. the last stuck equation's unknown inputs
        frontier = [i for i in pending if self.outputs_ready(self.eqns[i])]
        if not frontier:
            return False
        i = frontier[-1]
        e = self.eqns[i]
        why = f"`{eqn_name(e)}` at {source_line(e)} cannot be inverted: {self.stuck_reason(i)}"
        for v in e.invars:
            if self.known(v):
                continue
            roots = self.parameter_roots(v)
            for r in (roots if roots else [v]):
                self.save(r, why)
        return True

    def inverse_error(self) -> NotInvertibleError:
        pending = [i for i in self.live if self.outputs_ready(self.eqns[i])
                   and not all(map(self.known, self.eqns[i].invars))]
        if not pending:
            unknown = self.unknown()
            return NotInvertibleError(f"{len(unknown)} values could not be recovered from the outputs")
        i = pending[-1]
        e = self.eqns[i]
        return NotInvertibleError(self.stuck_reason(i), eqn_name(e), source_line(e))

    def prune(self) -> None:
        """Drop saved intermediates that the rest of the plan can rebuild."""
        for v in list(self.saved):
            if v in self.invars or self.producer.get(v) is None or v in self.anchored:
                continue
            trial = _Planner.__new__(_Planner)
            trial.__dict__.update(self.__dict__)
            trial.sources, trial.queue, trial.touched = {}, deque(), set()
            trial._reset_partial()
            trial.missing = set(self.needed)
            trial.saved = [s for s in self.saved if s is not v]
            trial.start()
            for s in trial.saved:
                trial.sources.setdefault(s, Source("saved"))
                trial.queue.append(s)
            trial.propagate()
            if not trial.unknown() and self._locally_rebuilt(trial.sources, v):
                self.saved = trial.saved
                self.sources = trial.sources
                self.partial, self.pieces, self.var_pieces = trial.partial, trial.pieces, trial.var_pieces
                self.rebuilding = trial.rebuilding
                self.reasons.pop(v, None)

    def _locally_rebuilt(self, sources, v) -> bool:
        # Accept only a rebuild that is one step away from values that are not
        # themselves recomputed: pruning must not turn a saved activation into
        # a recomputation of the whole network from its input.
        src = sources[v]
        if src.kind in ("invert", "assemble"):
            return True
        e = self.eqns[src.eqn]
        if any(True for _ in jaxprs_in_params(e.params)):
            return False  # re-running a loop or call: a whole network's forward
        return all(isinstance(w, Literal) or sources[w].kind != "recompute" for w in e.invars)

    def run(self) -> Plan:
        self.start()
        self.propagate()
        while self.missing:  # (not self.unknown(): a scan per round made planning quadratic in depth)
            if not self.choose_saves():
                for v in self.unknown():
                    self.save(v, "not reachable from any rule")
            self.propagate()
        if self.saved:
            self.prune()
        for v in self.free:  # a known input rebuilt by inversion: use the given one
            if v in self.sources and self.sources[v].kind == "invert":
                self.sources[v] = Source("input")
        active = self._active()
        return Plan(self.closed, self.known_inputs, self.sources, self.saved,
                    {v: self.reasons[v] for v in self.saved}, self.table, active, self.live,
                    self._fused_loops(active), self.pieces)

    def _fused_loops(self, active: set[Var]) -> dict[int, tuple[bool, ...]]:
        """Loops whose gradient must not come from JAX's own VJP.

        A loop with differentiated inputs (its stacked weights) but a carry
        the plan knows otherwise (a given x, a value recomputed from one) is
        still rebuilt from its outputs, iteration by iteration, by its fused
        ivjp rule: JAX's VJP of the loop would store every carry."""
        fused = {}
        for i in self.live:
            e = self.eqns[i]
            if e.primitive not in _LOOPS or e.primitive not in registry.ivjp_rules:
                continue
            if not any(isinstance(v, Var) and v in active for v in e.invars):
                continue
            # The loop's constants and scanned-over weights (however transformed
            # before the loop: a cast, a normalisation) are given; its carry is
            # rebuilt, and the scanned-over values too if they must be.
            n_consts = _loop_consts(e)
            n_carry = e.params["num_carry"] if e.primitive is P.scan_p else len(e.invars) - n_consts
            given = [not (j >= n_consts and isinstance(v, Var) and is_float(v.aval) and v not in self.constant
                          and self.sources[v].kind in ("input", "recompute")) for j, v in enumerate(e.invars)]
            carry_only = tuple(g or j >= n_consts + n_carry for j, g in enumerate(given))
            for known in dict.fromkeys((carry_only, tuple(given))):
                if not all(known) and self.probe_now(e, known) is None:
                    fused[i] = known
                    break
        return fused

    def _active(self) -> set[Var]:
        active = {v for v, k in zip(self.jaxpr.invars, self.known_inputs) if is_float(v.aval)}
        for i in self.live:
            e = self.eqns[i]
            if any(isinstance(v, Var) and v in active for v in e.invars):
                active.update(v for v in e.outvars if is_float(v.aval))
        return active


def _loop_consts(e) -> int:
    """How many leading inputs of a loop equation are its constants."""
    if e.primitive is P.scan_p:
        return e.params["num_consts"]
    return e.params.get("cond_nconsts", 0) + e.params.get("body_nconsts", 0)


def loop_differentiated_by_jax(plan: Plan, i: int) -> bool:
    """Whether the backward pass differentiates loop equation ``i`` with JAX's
    own VJP (storing its per-iteration values) instead of its fused ivjp rule."""
    e = plan.jaxpr.eqns[i]
    if e.primitive not in _LOOPS or not any(isinstance(v, Var) and v in plan.active for v in e.invars):
        return False
    if e.primitive in registry.ivjp_rules and (i in plan.fused or any(
            plan.sources.get(v, Source("")).kind == "invert" and plan.sources[v].eqn == i
            for v in e.invars if isinstance(v, Var))):
        return False
    return True


def _without_dropvars(closed: ClosedJaxpr) -> ClosedJaxpr:
    """Give every dropped output a name, so the planner can save it if needed."""
    if not any(isinstance(v, DropVar) for e in closed.jaxpr.eqns for v in e.outvars):
        return closed
    eqns = [e.replace(outvars=[Var(v.aval) if isinstance(v, DropVar) else v for v in e.outvars])
            for e in closed.jaxpr.eqns]
    return ClosedJaxpr(closed.jaxpr.replace(eqns=eqns), closed.consts)


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

    Example::

        plan = make_plan(jax.make_jaxpr(f)(x), [False])
        plan.saved   # what the forward pass keeps
    """
    # The gradient path outside loop bodies (where saving is allowed) never
    # inverts a saturating map: a NaN gradient is worse than one saved value.
    table = registry.inverse_table(principal_branch, well_conditioned=allow_saving)
    closed = _fold_loop_constants(closed, known_inputs, input_values)
    return _Planner(closed, known_inputs, input_values, table, allow_saving,
                    assume_nonzero=principal_branch).run()


def _fold_loop_constants(closed: ClosedJaxpr, known_inputs, input_values) -> ClosedJaxpr:
    """Move a scan's constant operands that are concrete masks or index arrays
    (a permutation or a 0/1 mask the body closes over) into the body as its
    own constants, so that the body's plan sees their values (partial
    knowledge needs them: ``x[:, perm]`` inverts only for a known ``perm``)."""
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
        return c if (not is_float(v.aval) or partial.is_mask(c)) else None

    eqns, changed = [], False
    for e in closed.jaxpr.eqns:
        if e.primitive is P.scan_p:
            fold = {j: c for j in range(e.params["num_consts"]) if (c := steering(e.invars[j])) is not None}
            if fold:
                e = _scan_with_constants(e, fold)
                changed = True
        eqns.append(e)
    return ClosedJaxpr(closed.jaxpr.replace(eqns=eqns), closed.consts) if changed else closed


def _debug_info_keeping(jaxpr, keep):
    info = jaxpr.debug_info
    if info is None or getattr(info, "arg_names", None) is None or len(info.arg_names) != len(jaxpr.invars):
        return info
    return info._replace(arg_names=tuple(info.arg_names[j] for j in keep))


def _scan_with_constants(e, fold: dict[int, Any]):
    body = e.params["jaxpr"]
    inner = body.jaxpr
    keep = [j for j in range(len(inner.invars)) if j not in fold]
    new_body = ClosedJaxpr(
        inner.replace(constvars=[*inner.constvars, *(inner.invars[j] for j in fold)],
                      invars=[inner.invars[j] for j in keep], debug_info=_debug_info_keeping(inner, keep)),
        [*body.consts, *fold.values()])
    params = dict(e.params, jaxpr=new_body, num_consts=e.params["num_consts"] - len(fold))
    if "linear" in params:
        params["linear"] = tuple(params["linear"][j] for j in keep)
    return e.replace(invars=[e.invars[j] for j in keep], params=params)
