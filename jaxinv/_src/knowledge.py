"""Knowledge: what the backward pass knows of each value, and how it spreads.

A ``Knowledge`` plans on a ``jaxinv._src.graph.Graph``. Starting from
what is known (the outputs, constants, integer closure values), knowledge
*propagates* along a worklist: an equation whose inputs are all known is
**recomputed**; an equation whose outputs are known, and whose rule can solve
its unknown inputs (``jaxinv._src.probe.probe``), is **inverted**; and partial
knowledge (which *elements* of an array are known, ``jaxinv._src.partial``)
moves through selections and elementwise equations until an array's pieces
cover it. Each known value gets a ``Source`` saying how the backward pass
recovers it. When nothing moves, ``jaxinv._src.save_policy`` chooses what to
save, and ``Knowledge.save`` makes it known.

Example:
    ```python
    k = Knowledge(graph, registry.inverse_rules, allow_saving=True)
    k.start(); k.propagate()
    k.unknown()          # what is still missing
    ```
"""

from __future__ import annotations

import dataclasses
import enum
from collections import defaultdict, deque

import numpy as np
from jax.extend.core import Literal, Var
from jax.extend.core import primitives as P

from jaxinv import registry
from jaxinv._src import partial
from jaxinv._src.graph import Graph, eqn_name, source_line
from jaxinv._src.probe import probe
from jaxinv._src.dtypes import is_float
from jaxinv.registry import NotInvertibleError


class SourceKind(str, enum.Enum):
    """How a value is known in the backward pass."""
    INPUT = "input"            # given by the caller (a closure value, a loop constant)
    CONST = "const"            # a constant of the jaxpr
    OUTPUT = "output"          # an output of the function
    SAVED = "saved"            # kept by the forward pass
    RECOMPUTE = "recompute"    # evaluate equation ``eqn`` forward
    INVERT = "invert"          # solve equation ``eqn`` for its inputs, those in ``known`` given
    ASSEMBLE = "assemble"      # replay the partial-knowledge pieces ``pieces`` (jaxinv._src.partial)

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class Source:
    """How a variable is known in the backward pass (see ``SourceKind``)."""
    kind: SourceKind
    eqn: int | None = None
    known: tuple[bool, ...] | None = None
    pieces: tuple[int, ...] | None = None


# Sources the backward pass computes (and may drop once past their equation).
REBUILT = (SourceKind.INVERT, SourceKind.RECOMPUTE, SourceKind.ASSEMBLE)


class Knowledge:
    """The planning state over one ``Graph`` (see module docstring).

    ``table``: the inverse rules the plan may use; ``allow_saving=False``
    (``jaxinv.inverse``, loop bodies): any save but a given input's raises
    ``NotInvertibleError``.
    """

    def __init__(self, graph: Graph, table: dict, allow_saving: bool):
        self.graph = graph
        self.table = table
        self.allow_saving = allow_saving
        # the graph's structure, by its usual names
        self.eqns, self.users, self.producer = graph.eqns, graph.users, graph.producer
        self.live, self.live_set, self.free = graph.live, graph.live_set, graph.free
        self.reset()

    def reset(self) -> None:
        """Forget everything learned (a trial plan starts from here)."""
        self.sources: dict[Var, Source] = {}
        self.reasons: dict[Var, str] = {}
        self.missing = set(self.graph.needed)  # needed and not yet known (kept by learn)
        self.freed: list[Var] = []
        self.saved: list[Var] = []
        self.anchored: set[Var] = set()  # inputs of jaxinv.anchor: kept, never pruned
        self.queue: deque = deque()
        self.touched: set[int] = set()  # live equations with something known
        self.partial: dict[Var, np.ndarray] = {}   # masks of values known in part
        self.pieces: list[partial.Piece] = []
        self.var_pieces: dict[Var, list[int]] = defaultdict(list)
        # partial values with elements learned from the outputs (not only a
        # mask's constant zeros): data being rebuilt, never parameters
        self.rebuilding: set[Var] = set()
        self._selections: dict[int, object] = {}

    def trial(self, saved: list[Var]) -> "Knowledge":
        """A fresh state with the same given inputs, saving ``saved`` (to see
        whether a save can be dropped)."""
        trial = Knowledge(self.graph, self.table, self.allow_saving)
        trial.freed, trial.anchored = list(self.freed), set(self.anchored)
        trial._selections = self._selections
        trial.start()
        for s in saved:
            trial.saved.append(s)
            trial.reasons[s] = self.reasons.get(s, "")
            trial.sources.setdefault(s, Source(SourceKind.SAVED))
            trial.missing.discard(s)
            trial.queue.append(s)
        trial.propagate()
        return trial

    def fact_of(self, v) -> frozenset:
        """What is proven about ``v`` (see ``Graph.fact_of``)."""
        return self.graph.fact_of(v)

    def dead(self, v) -> bool:
        """An output nobody reads: it may be passed to rules as None."""
        return self.graph.dead(v)

    def known(self, v) -> bool:
        """Whether the backward pass knows ``v`` whole (literals always)."""
        return isinstance(v, Literal) or v in self.sources

    def learn(self, v, source: Source) -> None:
        """Record how ``v`` is known, and queue it to spread (first source wins)."""
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
        """Equation ``i`` with every input known: its outputs are recomputed."""
        e = self.eqns[i]
        if i in self.live_set and all(map(self.known, e.invars)) and not all(map(self.known, e.outvars)):
            for v in e.outvars:
                self.learn(v, Source(SourceKind.RECOMPUTE, i))

    def outputs_ready(self, e) -> bool:
        """Every output of ``e`` is known, or unread."""
        return all(self.known(v) or self.dead(v) for v in e.outvars)

    def probe_now(self, e, known=None) -> str | None:
        """Can ``e``'s rule solve its inputs given ``known`` (default: what is
        known now)? None if so, else the reason (``jaxinv._src.probe.probe``)."""
        known = tuple(map(self.known, e.invars)) if known is None else known
        return probe(e, known, [self.fact_of(v) for v in e.invars], self.table,
                     tuple(map(self.known, e.outvars)), [self.fact_of(v) for v in e.outvars])

    def try_invert(self, i: int) -> str | None:
        """Equation ``i`` with its outputs known: invert it for its unknown
        inputs if its rule can (returns the reason it cannot, or None)."""
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
                    self.learn(v, Source(SourceKind.INVERT, i, known))
        return reason

    def propagate(self) -> None:
        """Spread knowledge until nothing moves: recompute, invert, and move
        partial knowledge through every equation next to a newly known value."""
        while self.queue:
            v = self.queue.popleft()
            for i in self.users.get(v, ()):
                self.try_recompute(i)
                self.try_invert(i)
                self.spread(i)
            if v in self.producer:
                self.try_invert(self.producer[v])
                self.spread(self.producer[v])

    def start(self) -> None:
        """Seed the known values: constants, given index arrays and freed
        inputs, outputs; and the constant zeros of masked products."""
        for v in self.graph.jaxpr.constvars:
            self.learn(v, Source(SourceKind.CONST))
        for v in (*self.graph.seeded, *self.freed):
            self.learn(v, Source(SourceKind.INPUT))
        for v in self.graph.jaxpr.outvars:
            self.learn(v, Source(SourceKind.OUTPUT))
        for i in self.live:
            self.try_recompute(i)
            if self.eqns[i].primitive is P.mul_p:  # by a constant 0/1 mask: its zeros are known
                self.spread(i)

    def unknown(self) -> list[Var]:
        """The needed values still unknown, in program order."""
        return [v for v in self.graph.needed if v not in self.sources]

    def mask_of(self, v):
        """What is known of ``v``: ``np.True_`` (all), a mask, or None (nothing)."""
        if self.known(v):
            return np.True_
        return self.partial.get(v)

    def selection(self, i: int):
        """Equation ``i``'s ``jaxinv._src.partial.Selection``, or None (cached)."""
        if i not in self._selections:
            self._selections[i] = partial.selection(self.eqns[i], self.graph.concrete)
        return self._selections[i]

    def spread(self, i: int) -> None:
        """Move partial knowledge through equation ``i`` (see jaxinv._src.partial)."""
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
        self.pieces.append(partial.Piece.make(v, i, kind, mask, new,
                                              frozenset(u for u in others if self.known(u)),
                                              frozenset(u for u in others if u in self.partial), **fields))
        if kind in (partial.PieceKind.SELECT_BACKWARD, partial.PieceKind.ELEMENTWISE_BACKWARD) or (
                not self.rebuilding.isdisjoint(self.pieces[-1].partial)):
            self.rebuilding.add(v)
        union = mask if old is None else (old | mask)
        if union.all():
            self.learn(v, Source(SourceKind.ASSEMBLE, pieces=self.pieces_needed(v)))
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

    def save(self, v: Var, reason: str) -> None:
        """Make ``v`` known by keeping it in the forward pass (a given input:
        for free). Without ``allow_saving``, anything else raises
        ``NotInvertibleError`` naming the stuck equation."""
        if v in self.sources:
            return
        if v in self.free:  # a known input: using it costs nothing
            self.freed.append(v)
            self.learn(v, Source(SourceKind.INPUT))
            return
        if not self.allow_saving:
            raise self.inverse_error()
        self.saved.append(v)
        self.reasons[v] = reason
        self.learn(v, Source(SourceKind.SAVED))

    def stuck_reason(self, i: int) -> str:
        """Why equation ``i`` cannot be inverted now."""
        return self.probe_now(self.eqns[i]) or "an input is unknown"

    def inverse_error(self) -> NotInvertibleError:
        """The error for a plan that must invert everything but is stuck:
        it names the last stuck equation, its reason and source line."""
        pending = [i for i in self.live if self.outputs_ready(self.eqns[i])
                   and not all(map(self.known, self.eqns[i].invars))]
        if not pending:
            unknown = self.unknown()
            return NotInvertibleError(f"{len(unknown)} values could not be recovered from the outputs")
        i = pending[-1]
        e = self.eqns[i]
        return NotInvertibleError(self.stuck_reason(i), eqn_name(e), source_line(e))

