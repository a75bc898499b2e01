"""The graph a plan is made on: one flat jaxpr and what is static about it.

Everything here is decided by the jaxpr and the caller's given values alone,
before any planning: who produces and who reads each variable, which equations
matter, which values are constants (and their values, evaluated at plan time
when a rule needs them: an index array, a mask), and the facts proven about
each value (``jaxinv._src.facts``). ``jaxinv._src.knowledge.Knowledge`` plans on
it; nothing here changes while it does.

Example:
    ```python
    graph = Graph(jax.make_jaxpr(f)(x), known_inputs=[False])
    graph.live          # the equations the outputs depend on, in program order
    ```
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import Any, Sequence

import jax
import numpy as np
from jax.extend import source_info_util
from jax.extend.core import ClosedJaxpr, Literal, Var
from jax.extend.core import primitives as P

from jaxinv._src import facts as F
from jaxinv import registry
from jaxinv._src.compat import DropVar, jaxprs_in_params, literal_value
from jaxinv._src.flatten import eval_eqn
from jaxinv._src.dtypes import is_float  # noqa: F401  (graph's users ask it of avals)
from jaxinv.markers import keep_input_p

# Constants up to this size are evaluated at plan time (masks, index arrays).
CONCRETE_BYTES = 1 << 24

# Primitives whose JAX VJP stores one value per iteration.
LOOPS = (P.scan_p, P.while_p)


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


def loop_consts(e) -> int:
    """How many leading inputs of a loop equation are its constants."""
    if e.primitive is P.scan_p:
        return e.params["num_consts"]
    return e.params.get("cond_nconsts", 0) + e.params.get("body_nconsts", 0)


def loop_carries(e) -> int:
    """How many inputs of a loop equation, after its constants, are its carry
    (a scan's scanned-over values follow them)."""
    if e.primitive is P.scan_p:
        return e.params["num_carry"]
    return len(e.invars) - loop_consts(e)


def kept_inputs(e) -> list[int]:
    """The positions of the inputs a ``jaxinv.keep_input`` call stores (its
    body marks them); empty for any other equation."""
    if e.primitive is not P.custom_jvp_call_p:
        return []
    body = e.params["call_jaxpr"]
    body = body.jaxpr if isinstance(body, ClosedJaxpr) else body
    marked = {b.invars[0] for b in body.eqns if b.primitive is keep_input_p}
    return [j for j, v in enumerate(body.invars) if v in marked]


def without_dropvars(closed: ClosedJaxpr) -> ClosedJaxpr:
    """Give every dropped output a name, so the planner can save it if needed."""
    if not any(isinstance(v, DropVar) for e in closed.jaxpr.eqns for v in e.outvars):
        return closed
    eqns = [e.replace(outvars=[Var(v.aval) if isinstance(v, DropVar) else v for v in e.outvars])
            for e in closed.jaxpr.eqns]
    return ClosedJaxpr(closed.jaxpr.replace(eqns=eqns), closed.consts)


class Graph:
    """One flat jaxpr, analysed once (see module docstring).

    ``known_inputs[i]``: input ``i`` is given (closure values, loop constants);
    ``input_values``: their concrete values where known (to prove facts);
    ``assume_nonzero``: ``jaxinv.inverse``'s mode, where a divisor not proven
    nonzero is assumed so (a zero there is outside f's invertible domain).
    """

    def __init__(self, closed: ClosedJaxpr, known_inputs: Sequence[bool], input_values=None,
                 assume_nonzero: bool = False):
        self.closed = without_dropvars(closed)
        self.jaxpr = self.closed.jaxpr
        self.eqns = self.jaxpr.eqns
        self.known_inputs = tuple(known_inputs)
        self.input_values = input_values
        self.assume_nonzero = assume_nonzero
        self.invars = set(self.jaxpr.invars)
        self.outvars = {v for v in self.jaxpr.outvars if isinstance(v, Var)}
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
        self.facts = self._facts()
        # Given inputs (closure values, loop constants) are not seeds of the
        # propagation: recomputing forward from them could rebuild a whole
        # network from its input instead of inverting it from its outputs.
        # They are "saved" for free when the planner needs them. Concrete
        # integer and boolean arrays (index arrays, masks) are the exception:
        # never the data, they steer partial knowledge from the start.
        self.free = {v for v, k in zip(self.jaxpr.invars, self.known_inputs) if k}
        self.seeded = {v for v in self.free if v in self.concrete_inputs and not is_float(v.aval)}
        self.constant = self._constant_vars()
        self._concrete: dict[Var, Any] = {}
        self._concrete_facts: dict[Var, frozenset | None] = {}

    # ---- structure
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

    def dead(self, v) -> bool:
        """An output nobody reads: it may be passed to rules as None."""
        return not self.users.get(v) and v not in self.outvars

    # ---- constants and facts
    @functools.cached_property
    def concrete_inputs(self) -> dict[Var, Any]:
        """Constants and given inputs with concrete values (not tracers)."""
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

    def concrete(self, v):
        """``v``'s value at plan time if it is a constant (a literal, a
        concrete closure value, or computed from those alone), else None."""
        if isinstance(v, Literal):
            return literal_value(v)
        if v in self._concrete:
            return self._concrete[v]
        self._concrete[v] = None  # (no cycles in a jaxpr; guards re-entry)
        if v in self.concrete_inputs:
            self._concrete[v] = self.concrete_inputs[v]
        elif v in self.producer:
            e = self.eqns[self.producer[v]]
            if (not e.effects and not any(True for _ in jaxprs_in_params(e.params))
                    and sum(nbytes(u.aval) for u in e.outvars) <= CONCRETE_BYTES):
                ins = [self.concrete(u) for u in e.invars]
                if all(x is not None for x in ins):
                    try:
                        with jax.ensure_compile_time_eval():
                            outs = eval_eqn(e, ins)
                        self._concrete.update((u, np.asarray(x)) for u, x in zip(e.outvars, outs))
                    except Exception:  # not evaluable here (a key, an effect): not a constant
                        pass
        return self._concrete[v]

    def _facts(self) -> dict[Var, frozenset]:
        facts: dict[Var, frozenset] = defaultdict(frozenset)
        for v, c in zip(self.jaxpr.constvars, self.closed.consts):
            facts[v] = F.of_value(c)
        if self.input_values is not None:
            for v, c in zip(self.jaxpr.invars, self.input_values):
                if c is not None:
                    facts[v] = F.of_value(c)
        for e in self.eqns:
            if e.primitive in registry.nonsingular_primitives:
                for v in e.outvars:
                    facts[v] = facts[v] | {F.NONSINGULAR}
            if e.primitive is P.iota_p:  # a permutation carried through sort
                facts[e.outvars[0]] = facts[e.outvars[0]] | {F.iota_along(e.params["dimension"])}
            rule = registry.nonzero_rules.get(e.primitive)
            if rule is None:
                continue
            nz = [(F.NONZERO in F.of_value(literal_value(v))) if isinstance(v, Literal) else (F.NONZERO in facts[v])
                  for v in e.invars]
            with registry.solving([v.aval for v in e.invars]):
                proven = rule(nz, **e.params)
            if proven:
                for v in e.outvars:
                    facts[v] = facts[v] | {F.NONZERO}
        return facts

    def fact_of(self, v) -> frozenset:
        """What is proven about ``v`` (with ``assume_nonzero``, every value that
        is not a constant counts as nonzero and nonsingular)."""
        if isinstance(v, Literal):
            return F.of_value(literal_value(v))
        if v not in self._concrete_facts:
            value = self.concrete(v) if v in self.producer else None
            # A constant's facts are what its value shows (a 0/1 mask is not
            # nonzero, even for jaxinv.inverse, which assumes the rest is). Its
            # value decides "nonzero" even against a rule: exp(-200) is 0 in float32.
            self._concrete_facts[v] = None if value is None else (self.facts[v] - {F.NONZERO}) | F.of_value(value)
        if self._concrete_facts[v] is not None:
            return self._concrete_facts[v]
        if self.assume_nonzero and v not in self.concrete_inputs:
            return self.facts[v] | {F.NONZERO, F.NONSINGULAR}
        return self.facts[v]
