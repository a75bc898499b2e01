"""From a Python function on pytrees to a planned, flat jaxpr."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jax.extend.core import ClosedJaxpr
from jax.tree_util import tree_flatten

from jaxinv._src.flatten import flatten, trace_flat
from jaxinv._src.plan import Plan, make_plan


@dataclasses.dataclass(eq=False)
class Traced:
    """A function traced at some arguments and planned.

    The plan's inputs are ``consts + flat_args``: ``consts`` are the values the
    function closes over (known in the backward pass, never reconstructed).
    ``plan`` is None after ``trace_only``, until ``plan_traced``.
    """
    plan: Plan | None
    consts: list
    in_tree: Any
    out_tree: Any
    num_out: int          # flat outputs that are the function's result (the rest is aux)
    aux_tree: Any = None
    closed: ClosedJaxpr | None = None   # the traced jaxpr, before flattening

    @property
    def num_consts(self) -> int:
        return len(self.consts)

    @property
    def out_avals(self) -> list:
        """The types of the function's flat result (aux excluded)."""
        return list(self.closed.out_avals[:self.num_out])


def trace(f: Callable, args: tuple, *, has_aux: bool = False, for_inverse: bool = False) -> Traced:
    """Trace ``f(*args)`` to a flat jaxpr and plan it.

    Example:
        ```python
        t = trace(lambda x: jnp.exp(x) * 2, (x,))
        t.plan.saved   # []
        ```
    """
    return plan_traced(trace_only(f, args, has_aux=has_aux), for_inverse=for_inverse)


def trace_only(f: Callable, args: tuple, *, has_aux: bool = False) -> Traced:
    """Trace ``f(*args)``, without planning (to check its outputs first).

    Example:
        ```python
        t = trace_only(f, (x,))
        t.out_avals        # [ShapedArray(float32[3])]
        t = plan_traced(t, for_inverse=True)
        ```
    """
    flat_args, in_tree = tree_flatten(args)

    def pair(*a):  # (output, aux), the output's leaves first
        out = f(*a)
        if has_aux and not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError("with has_aux=True the function must return a pair (output, aux)")
        return out if has_aux else (out, None)

    closed, pair_tree = trace_flat(pair, flat_args, in_tree)
    out_tree, aux_tree = pair_tree.children()
    return Traced(None, list(closed.consts), in_tree, out_tree, out_tree.num_leaves, aux_tree if has_aux else None,
                  closed)


def plan_traced(t: Traced, *, for_inverse: bool = False) -> Traced:
    """Plan a function traced by ``trace_only`` (for ``jaxinv.inverse`` with
    ``for_inverse``: nothing saved, principal branches allowed).

    Example:
        ```python
        t = plan_traced(trace_only(f, (x,)), for_inverse=True)
        ```
    """
    n_args = len(t.closed.in_avals)
    known = [True] * t.num_consts + [False] * n_args
    plan = make_plan(flatten(t.closed), known, input_values=t.consts + [None] * n_args,
                     allow_saving=not for_inverse, principal_branch=for_inverse)
    return dataclasses.replace(t, plan=plan)
