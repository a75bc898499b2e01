"""``jaxinv.explain``: what the plan does with each value, and what it costs."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from jax.extend.core import Var

from jaxinv.api import differentiating
from jaxinv._src.graph import eqn_name, nbytes, source_line
from jaxinv._src.knowledge import SourceKind
from jaxinv._src.plan import loop_differentiated_by_jax
from jaxinv._src.tracing import trace


@dataclasses.dataclass
class Row:
    """One equation (or the function's inputs) and the fate of its values.

    ``index`` is the equation's number in the flat jaxpr (``None`` for the
    function's inputs), ``source`` the user's line, ``fate`` what the backward
    pass does with its values (``"reconstructed"``, ``"recomputed"``,
    ``"saved"``, ``"output"``, ...), ``detail`` how or why, and
    ``saved_bytes`` what saving them costs.

    Example:
        ```python
        saved = [row for row in jaxinv.explain(f, x).rows if row.fate == "saved"]
        print(saved[0].primitive, saved[0].source, saved[0].detail)
        ```
    """
    index: int | None          # equation number; None for the function's inputs
    primitive: str
    source: str
    fate: str                  # "reconstructed", "recomputed", "saved", "output", ...
    saved_bytes: int
    detail: str = ""


@dataclasses.dataclass
class Explanation:
    """The plan for one function, equation by equation.

    ``saved_bytes`` is what the forward pass keeps for the backward pass
    besides the outputs and closure values; ``saved_input_bytes`` the part of
    it that is the function's own inputs (referenced, not copied);
    ``loops_differentiated_by_jax`` counts loops whose body is not invertible
    (JAX's scan VJP stores one value per iteration while the backward pass
    runs, memory ``saved_bytes`` does not count). ``str()`` is the table.

    Example:
        ```python
        explanation = jaxinv.explain(revnet, params, x1, x2)
        print(explanation)                                  # the table
        assert explanation.saved_activation_bytes == 0      # flat in depth
        ```
    """
    rows: list[Row]
    saved_bytes: int
    output_bytes: int
    closure_bytes: int
    # Loops whose gradient comes from JAX's own VJP (their body is not
    # invertible): it stores one value per iteration while the backward pass
    # runs, temporary memory that ``saved_bytes`` does not count.
    loops_differentiated_by_jax: int = 0
    # The part of ``saved_bytes`` that is the function's own inputs (its
    # parameters): referenced, not copied, so no new memory.
    saved_input_bytes: int = 0

    @property
    def saved_activation_bytes(self) -> int:
        """Bytes of intermediate values the forward pass keeps: what grows
        with depth when a network is not rebuilt from its outputs."""
        return self.saved_bytes - self.saved_input_bytes

    def __str__(self) -> str:
        head = ("#", "primitive", "source line", "values in the backward pass", "saved bytes")
        body = [(("in" if r.index is None else str(r.index)), r.primitive, r.source,
                 r.fate + (f" ({r.detail})" if r.detail else ""), str(r.saved_bytes) if r.saved_bytes else "")
                for r in self.rows]
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(5)]
        line = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
        out = [line(head), "-+-".join("-" * w for w in widths)]
        out += [line(b) for b in body]
        out.append(f"saved: {self.saved_bytes} bytes; outputs: {self.output_bytes} bytes; "
                   f"closure values: {self.closure_bytes} bytes")
        if self.loops_differentiated_by_jax:
            out.append(f"{self.loops_differentiated_by_jax} loop(s) differentiated by JAX's own VJP: "
                       "the backward pass stores their per-iteration values while it runs")
        return "\n".join(out)

    __repr__ = __str__


def _fate(plan, v) -> tuple[str, str]:
    src = plan.sources.get(v)
    if src is None:
        return "unused", ""
    if src.kind == SourceKind.INVERT:
        e = plan.jaxpr.eqns[src.eqn]
        return "reconstructed", f"by inverting `{eqn_name(e)}` at {source_line(e)}"
    if src.kind == SourceKind.RECOMPUTE:
        return "recomputed", ""
    if src.kind == SourceKind.ASSEMBLE:
        steps = dict.fromkeys(plan.pieces[k].eqn for k in src.pieces)
        names = ", ".join(f"`{eqn_name(plan.jaxpr.eqns[i])}` at {source_line(plan.jaxpr.eqns[i])}" for i in steps)
        return "reconstructed", f"assembled from its pieces, known through {names}"
    if src.kind == SourceKind.SAVED:
        return "saved", plan.reasons.get(v, "")
    return {SourceKind.INPUT: "closure value", SourceKind.CONST: "constant"}.get(src.kind, str(src.kind)), ""


def explain(f: Callable, *args, argnums: int | Sequence[int] | None = None) -> Explanation:
    """Report, equation by equation with the user's source line, which values
    the backward pass reconstructs, recomputes or saves, and the bytes saved.

    By default every argument is differentiated (the plan of
    ``jaxinv.vjp(f, *args)``); ``argnums`` explains ``jaxinv.grad(f,
    argnums)`` instead, where the other arguments are given values.

    Example:
        ```python
        report = jaxinv.explain(revnet, params, x)
        print(report)            # a table
        report.saved_bytes       # e.g. 0 for a fully invertible network
        jaxinv.explain(loss, params, x, argnums=0)   # what jaxinv.grad(loss) does
        ```
    """
    if argnums is not None:
        f, args = differentiating(f, args, argnums)
    t = trace(f, args)
    plan = t.plan
    rows = []
    saved = set(plan.saved)
    for v in plan.jaxpr.invars[t.num_consts:]:
        fate, detail = _fate(plan, v)
        rows.append(Row(None, "input", "", fate, nbytes(v.aval) if v in saved else 0, detail))
    by_jax = 0
    for i in plan.live:
        e = plan.jaxpr.eqns[i]
        fates = [_fate(plan, v) for v in e.outvars]
        fate = ", ".join(sorted({f for f, _ in fates}))
        detail = "; ".join(d for _, d in fates if d)
        if loop_differentiated_by_jax(plan, i):
            by_jax += 1
            detail = "; ".join(filter(None, [detail, "gradient by JAX's own VJP of the loop (stores every "
                                                      "iteration's values during the backward pass)"]))
        rows.append(Row(i, eqn_name(e), source_line(e), fate,
                        sum(nbytes(v.aval) for v in e.outvars if v in saved), detail))
    outs = {v for v in plan.jaxpr.outvars if isinstance(v, Var)}
    return Explanation(rows, sum(nbytes(v.aval) for v in plan.saved),
                       sum(nbytes(v.aval) for v in outs),
                       sum(nbytes(v.aval) for v in plan.jaxpr.invars[:t.num_consts]), by_jax,
                       sum(r.saved_bytes for r in rows if r.index is None))

