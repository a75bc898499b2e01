"""From a Python function on pytrees to a planned, flat jaxpr."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from jax.tree_util import tree_flatten, tree_unflatten

from jaxinv.flatten import flatten
from jaxinv.plan import Plan, make_plan


@dataclasses.dataclass(eq=False)
class Traced:
    """A function traced at some arguments and planned.

    The plan's inputs are ``consts + flat_args``: ``consts`` are the values the
    function closes over (known in the backward pass, never reconstructed).
    """
    plan: Plan
    consts: list
    in_tree: Any
    out_tree: Any
    num_out: int          # flat outputs that are the function's result (the rest is aux)
    aux_tree: Any = None

    @property
    def num_consts(self) -> int:
        return len(self.consts)


def trace(f: Callable, args: tuple, *, has_aux: bool = False, for_inverse: bool = False) -> Traced:
    """Trace ``f(*args)`` to a flat jaxpr and plan it.

    Example::

        t = trace(lambda x: jnp.exp(x) * 2, (x,))
        t.plan.saved   # []
    """
    flat_args, in_tree = tree_flatten(args)
    store = {}

    def flat_f(*flat):
        out = f(*tree_unflatten(in_tree, flat))
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError("with has_aux=True the function must return a pair (output, aux)")
            out, aux = out
            flat_aux, store["aux"] = tree_flatten(aux)
        else:
            flat_aux = []
        flat_out, store["out"] = tree_flatten(out)
        store["n"] = len(flat_out)
        return [*flat_out, *flat_aux]

    closed = jax.make_jaxpr(flat_f)(*flat_args)
    consts = list(closed.consts)
    flat = flatten(closed)
    known = [True] * len(consts) + [False] * len(flat_args)
    plan = make_plan(flat, known, input_values=consts + [None] * len(flat_args),
                     allow_saving=not for_inverse, principal_branch=for_inverse)
    return Traced(plan, consts, in_tree, store["out"], store["n"], store.get("aux"))
