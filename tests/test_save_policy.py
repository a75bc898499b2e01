"""The save policy, strategy by strategy: when knowledge stops spreading, each
strategy names what it would save (and why), on a program built so that it
applies; ``choose_saves`` takes the first that finds something."""

import re

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import jaxinv
from jaxinv import registry
from jaxinv._src import save_policy
from jaxinv._src.flatten import flatten
from jaxinv._src.graph import Graph
from jaxinv._src.knowledge import Knowledge

X = jnp.linspace(0.1, 1.0, 4)


def stuck(f, *args, allow_saving=True, given=()):
    """The planner's state on ``f`` once propagation from the outputs stops,
    and the equations next to what is known (what a strategy looks at)."""
    closed = flatten(jax.make_jaxpr(f)(*args))
    n = len(closed.jaxpr.invars)
    graph = Graph(closed, [i in given for i in range(n)], [None] * n)
    k = Knowledge(graph, registry.inverse_table(well_conditioned=allow_saving), allow_saving)
    k.start()
    k.propagate()
    return k, sorted(k.touched)


def named(k, found):
    """``{name: reason}``: ``arg<i>`` for the function's inputs, ``<primitive>`` for an equation's output."""
    names = {v: f"arg{i}" for i, v in enumerate(k.graph.jaxpr.invars)}
    return {names.get(v) or k.eqns[k.graph.producer[v]].primitive.name: why for v, why in found.items()}


CASES = [
    # strategy, function, arguments, {what it saves: the reason explain shows}
    ("stored_by_anchor", lambda x: jaxinv.anchor(x * 2.0) * 3.0, (X,),
     {"mul": "stored by jaxinv.anchor"}),
    ("unread_outputs", lambda x: jnp.split(x, 2)[0] * 2.0, (X,),
     {"split": "an unread output, needed to invert its equation"}),
    ("parameters_next_to_known", lambda x, b: (x * 2.0, jnp.sin(x + b)), (X, X),
     {"arg1": "a parameter of `add`"}),
    ("parameters_unlocking_an_inversion", lambda a, c, s: ((a + c) * jnp.exp(s), a - c), (X, X, X),
     {"arg2": "a parameter of `mul`"}),
    ("cheapest_unlocking_subset", lambda a, b: a + b, (X, jnp.float32(2.0)),
     {"arg1": "a parameter of `add`"}),   # the scalar: 4 bytes, not 16
    ("loop_weights", lambda c, w: lax.scan(lambda c, wt: (c * jnp.exp(wt), None), c, w)[0], (X, jnp.ones((3, 4))),
     {"arg1": "a constant or scanned-over value of the loop `scan`"}),
    ("inputs_of_the_last_stuck_equation", jnp.sin, (X,),
     {"arg0": "`sin` at .* cannot be inverted: `sin` is not injective"}),
]


@pytest.mark.parametrize("strategy, f, args, expected", CASES, ids=[c[0] for c in CASES])
def test_each_strategy_names_what_to_save_and_why(strategy, f, args, expected):
    k, pending = stuck(f, *args)
    found = named(k, getattr(save_policy, strategy)(k, pending))
    assert set(found) == set(expected), found
    for name, why in expected.items():
        assert re.match(why, found[name]), found[name]


@pytest.mark.parametrize("strategy, f, args, expected", CASES[:-1], ids=[c[0] for c in CASES[:-1]])
def test_the_last_resort_alone_would_decide_otherwise(strategy, f, args, expected):
    """Each case needs its strategy: the last resort would save other values,
    or the same for another reason (so a strategy that did nothing would be seen)."""
    k, pending = stuck(f, *args)
    wanted = named(k, getattr(save_policy, strategy)(k, pending))
    assert named(k, save_policy.inputs_of_the_last_stuck_equation(k, pending)) != wanted


def test_the_first_strategy_that_finds_something_decides():
    # parameters_unlocking_an_inversion (4th) saves s; cheapest_unlocking_subset (5th) would save a
    k, pending = stuck(lambda a, c, s: ((a + c) * jnp.exp(s), a - c), X, X, X)
    assert "arg0" in named(k, save_policy.cheapest_unlocking_subset(k, pending))
    assert save_policy.choose_saves(k)
    assert [named(k, {v: ""}) for v in k.saved] == [{"arg2": ""}]
    assert k.reasons[k.saved[0]].startswith("a parameter of `mul`")


def test_without_saving_only_closure_values_are_made_known():
    """jaxinv.inverse cannot save: a strategy naming no given input gives way to
    one that names one (``(x2, (x1 + x2) / c)`` frees ``c``)."""
    k, _ = stuck(lambda x1, x2, c: (x2, (x1 + x2) / c), X, X, X + 1.0, allow_saving=False, given=(2,))
    assert save_policy.choose_saves(k)
    assert [named(k, {v: ""}) for v in k.freed or k.saved] == [{"arg2": ""}]


def test_the_module_docstring_lists_the_strategies_in_order():
    listed = re.findall(r"^\d\. ``(\w+)``$", save_policy.__doc__, flags=re.M)
    assert listed == [s.__name__ for s in save_policy.STRATEGIES]
