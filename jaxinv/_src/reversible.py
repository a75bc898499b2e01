"""A planned function packaged for JAX's transformations.

``Reversible`` bundles a plan with the four plain-JAX functions the
``invertible`` primitives need: ``call``, ``forward`` (outputs and residuals),
``backward`` (cotangents by reconstruction) and ``jvp``. ``Batched`` is the
same for a ``vmap``-ed call: its functions are the parent's under ``jax.vmap``.
None of these functions binds the ``invertible`` primitives themselves, so
``vmap`` of them never recurses into our own batching rules.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr

from jaxinv._src import interpreter
from jaxinv._src.compat import aval_spec
from jaxinv._src.plan import Plan


class Reversible:
    """One planned flat jaxpr; inputs are ``consts + args`` (``num_known`` of them
    known in the backward pass). Hashed by identity, as a primitive parameter."""

    def __init__(self, plan: Plan, num_known: int):
        self.plan = plan
        self.num_known = num_known
        jaxpr = plan.jaxpr
        self.in_avals = [v.aval for v in jaxpr.invars]
        self.out_avals = [v.aval for v in jaxpr.outvars]
        self.res_avals = [v.aval for v in plan.saved]

    # ---- plain-JAX functions
    def call(self, *args):
        return interpreter.forward(self.plan, args)[0]

    def forward(self, *args):
        outs, res = interpreter.forward(self.plan, args)
        return list(outs), list(res)

    def backward(self, known, res, outs, cts):
        inputs = list(known) + [None] * (len(self.in_avals) - self.num_known)
        return interpreter.backward(self.plan, inputs, list(res), list(outs), list(cts))

    def reconstruct(self, known, res, outs):
        inputs = list(known) + [None] * (len(self.in_avals) - self.num_known)
        return interpreter.reconstruct(self.plan, inputs, list(res), list(outs))

    def jvp(self, known, res, outs, tangents):
        """Output tangents at the inputs rebuilt from ``outs``; ``tangents`` has
        an entry per input (float0 zeros for integer inputs)."""
        xs = self.reconstruct(known, res, outs)
        return jax.jvp(lambda *a: self.call(*a), xs, list(tangents))[1]

    def body(self) -> ClosedJaxpr:
        """The jaxpr to inline when this call sits inside another region."""
        return self.plan.closed


class Batched(Reversible):
    """``parent`` under ``vmap``: args batched along axis 0 where ``in_axes`` is 0."""

    def __init__(self, parent: Reversible, in_axes: Sequence[int | None], size: int):
        self.parent = parent
        self.in_axes = tuple(in_axes)
        self.size = size
        self.num_known = parent.num_known
        batch = lambda a, ax: jax.core.ShapedArray((size, *a.shape), a.dtype) if ax == 0 else a
        self.in_avals = [batch(a, ax) for a, ax in zip(parent.in_avals, self.in_axes)]
        self.out_avals = [batch(a, 0) for a in parent.out_avals]
        self.res_axes = self._residual_axes()
        self.res_avals = [batch(a, ax) for a, ax in zip(parent.res_avals, self.res_axes)]

    def _residual_axes(self):
        """A residual is batched iff it depends on a batched input."""
        closed = jax.make_jaxpr(self.parent.forward)(*[aval_spec(a) for a in self.parent.in_avals])
        batched = {v for v, ax in zip(closed.jaxpr.invars, self.in_axes) if ax is not None}
        for e in closed.jaxpr.eqns:
            if any(v in batched for v in e.invars if not hasattr(v, "val")):
                batched.update(e.outvars)
        n_out = len(self.parent.out_avals)
        res_vars = closed.jaxpr.outvars[n_out:]
        return tuple(0 if (not hasattr(v, "val") and v in batched) else None for v in res_vars)

    @property
    def plan(self):  # the planned jaxpr is the parent's
        return self.parent.plan

    def call(self, *args):
        return jax.vmap(self.parent.call, in_axes=self.in_axes)(*args)

    def forward(self, *args):
        outs, res = jax.vmap(self.parent.forward, in_axes=self.in_axes,
                             out_axes=(0, list(self.res_axes)))(*args)
        return list(outs), list(res)

    def backward(self, known, res, outs, cts):
        k_axes = list(self.in_axes[:self.num_known])
        got = jax.vmap(self.parent.backward, in_axes=(k_axes, list(self.res_axes), 0, 0))(
            list(known), list(res), list(outs), list(cts))
        return [None if c is None else (c if ax == 0 else jnp.sum(c, axis=0))
                for c, ax in zip(got, self.in_axes)]

    def reconstruct(self, known, res, outs):
        k_axes = list(self.in_axes[:self.num_known])
        xs = jax.vmap(self.parent.reconstruct, in_axes=(k_axes, list(self.res_axes), 0))(
            list(known), list(res), list(outs))
        return [x if ax == 0 else x[0] for x, ax in zip(xs, self.in_axes)]

    def body(self) -> ClosedJaxpr:
        return jax.make_jaxpr(self.call)(*[aval_spec(a) for a in self.in_avals])
