"""Each built-in rule on its own, beyond conformance: what it refuses and why,
the zero-divisor policy as each rule applies it, the nonzero facts rules
state (and the facts about constants), principal branches off the branch,
partial outputs.

Each rule here is called the way the interpreter calls it: on one real
equation traced from an ordinary ``jnp``/``lax`` call, inside
``registry.solving(avals)``, with ``None`` for the inputs to recover. Every
rule's correctness on its declared domain is checked by the harness in
``tests/test_conformance.py``; the policy seen end to end, through
``explain``, ``jaxinv.grad`` and ``jaxinv.inverse``, in ``tests/test_policy.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.extend.core import Literal
from jax.extend.core import primitives as P

import jaxinv.rules  # noqa: F401  (registers the built-in packs)
from jaxinv import registry
from jaxinv._src import facts
from jaxinv._src.compat import available, split_p, stack_p, tile_p, unstack_p
from jaxinv.registry import NotInvertibleError
from jaxinv._src.compat import enable_x64

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
DTYPES = pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])


# ==========================================================================
# Harness: trace an example, call a rule on it, compare with JAX


def precision(dtype) -> dict:
    """Tolerances for a value of ``dtype`` recomputed through a rule: a few
    thousand ulps relative (rules add rounding and mild ill-conditioning),
    exact for integers and booleans."""
    dtype = np.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.inexact):
        return dict(rtol=0, atol=0)
    eps = float(jnp.finfo(dtype).eps)
    return dict(rtol=4000 * eps, atol=400 * eps)


def x64(dtype):
    """Run under 64-bit mode exactly when testing float64 (restored on exit)."""
    return enable_x64(np.dtype(dtype) == F64)


# -- argument specs: (rng, float dtype) -> array --------------------------


def uniform(*shape, lo=-2.0, hi=2.0, dtype=None):
    return lambda rng, dt: jnp.asarray(rng.uniform(lo, hi, shape), dtype or dt)


def away_from_zero(*shape, lo=0.5, hi=2.0):
    def make(rng, dt):
        return jnp.asarray(rng.choice([-1.0, 1.0], shape) * rng.uniform(lo, hi, shape), dt)
    return make


def nonsingular(*batch, n=4):
    """A well-conditioned (diagonally dominant) n x n matrix per batch."""
    return lambda rng, dt: jnp.asarray(n * np.eye(n) + rng.uniform(-1, 1, batch + (n, n)), dt)


def integers(*shape, values=(-3, -1, 1, 3, 5), dtype=np.int32):
    return lambda rng, dt: jnp.asarray(rng.choice(values, shape), dtype)


@dataclasses.dataclass(frozen=True)
class Case:
    """An equation of ``prim`` found in ``jax.make_jaxpr(fn)(*args)``, and the
    patterns of unknown inputs its rule must solve."""

    fn: Callable
    args: tuple
    solve: tuple[tuple[int, ...], ...] = ((0,),)
    label: str = ""


@dataclasses.dataclass
class Equation:
    prim: Any
    params: dict
    invals: list
    avals: list

    def outvals(self) -> list:
        out = self.prim.bind(*self.invals, **self.params)
        return list(out) if self.prim.multiple_results else [out]

    def unknown(self, indices) -> list:
        return [None if i in indices else v for i, v in enumerate(self.invals)]


def trace(prim, fn, *args) -> Equation:
    """The first top-level equation of ``prim`` in ``fn``'s jaxpr, with the
    values its inputs take when ``fn`` runs on ``args``."""
    closed = jax.make_jaxpr(fn)(*args)
    env = dict(zip(closed.jaxpr.invars, args))
    env.update(zip(closed.jaxpr.constvars, closed.consts))
    read = lambda v: v.val if isinstance(v, Literal) else env[v]
    for eqn in closed.jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if eqn.primitive is prim:
            return Equation(prim, dict(eqn.params), invals, [v.aval for v in eqn.invars])
        out = eqn.primitive.bind(*invals, **eqn.params)
        env.update(zip(eqn.outvars, out if eqn.primitive.multiple_results else [out]))
    raise AssertionError(f"no top-level `{prim}` equation in\n{closed}")


def build(prim, example: Case, dtype, seed=0) -> Equation:
    rng = np.random.default_rng(seed)
    return trace(prim, example.fn, *[spec(rng, dtype) for spec in example.args])


def invert(eqn: Equation, unknown, table=None) -> list:
    rule = (registry.inverse_rules if table is None else table)[eqn.prim]
    with registry.solving(eqn.avals):
        return list(rule(eqn.unknown(unknown), eqn.outvals(), **eqn.params))


def assert_same_arrays(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g is not None, "a rule returned None for an input"
        assert np.shape(g) == np.shape(w), (np.shape(g), np.shape(w))
        assert np.dtype(g.dtype) == np.dtype(w.dtype), (g.dtype, w.dtype)
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), **precision(w.dtype))


# ==========================================================================
# Example tables


# The zero-divisor policy: cases whose solve divides by a known input.
POLICY_CASES = [
    (P.mul_p, Case(jnp.multiply, (away_from_zero(3, 4), away_from_zero(3, 4)), ((0,), (1,)))),
    (P.div_p, Case(jnp.divide, (away_from_zero(3, 4), away_from_zero(3, 4)), ((0,), (1,)))),
    (P.pow_p, Case(lax.pow, (uniform(3, 4, lo=1.5, hi=3), away_from_zero(3, 4, lo=0.25, hi=2)), ((0,), (1,)))),
    (P.dot_general_p, Case(jnp.matmul, (nonsingular(), nonsingular()), ((0,), (1,)))),
    (P.add_p, Case(jnp.add, (uniform(3, 4), uniform(3, 4)), ((0,), (1,)))),
    (P.exp_p, Case(jnp.exp, (uniform(3, 4),))),
]

# Non-injective primitives with a principal branch (jaxinv.inverse only), on
# inputs anywhere in their domain: the rule finds *an* input with the same output.
PRINCIPAL_ANYWHERE = {
    P.sin_p: Case(jnp.sin, (uniform(12, lo=-6, hi=6),)),
    P.cos_p: Case(jnp.cos, (uniform(12, lo=-6, hi=6),)),
    P.tan_p: Case(jnp.tan, (uniform(12, lo=1.8, hi=4.5),)),
    P.cosh_p: Case(jnp.cosh, (uniform(12, lo=-3, hi=3),)),
    P.abs_p: Case(jnp.abs, (uniform(12, lo=-5, hi=5),)),
    P.square_p: Case(jnp.square, (uniform(12, lo=-5, hi=5),)),
    P.integer_pow_p: Case(lambda x: lax.integer_pow(x, 4), (uniform(12, lo=-3, hi=3),)),
}

# The zero-divisor policy: (primitive, unknown inputs) -> the known input the
# solve divides by, which must therefore pass `require_nonzero`.
DIVIDES_BY = {
    (P.mul_p, (0,)): 1,  # a = y / b
    (P.mul_p, (1,)): 0,  # b = y / a
    (P.div_p, (1,)): 0,  # y = a / b  =>  b = a / y, and y != 0 iff a != 0
    (P.pow_p, (0,)): 1,  # a = y ** (1 / b)
    (P.pow_p, (1,)): 0,  # b = log|y| / log|a|
    (P.dot_general_p, (0,)): 1,  # solve with the known square matrix
    (P.dot_general_p, (1,)): 0,
}

PRESERVES = [([True], {}, True), ([False], {}, False)]
ALWAYS = [([False], {}, True)]
ALL_OF = [([True, True, True], {}, True), ([True, False, True], {}, False)]
f32, i32 = jax.ShapeDtypeStruct((3,), np.float32), jax.ShapeDtypeStruct((3,), np.int32)

# What each nonzero rule claims: (inputs proven nonzero, params, is the output
# then proven nonzero?).
NONZERO_FACTS = {
    P.exp_p: ALWAYS, P.exp2_p: ALWAYS, P.logistic_p: ALWAYS, P.cosh_p: ALWAYS,
    P.log_p: [([True], {}, False)],  # log(1) == 0
    P.acos_p: [([True], {}, False)],  # acos(1) == 0
    P.acosh_p: [([True], {}, False)],  # acosh(1) == 0
    **{prim: PRESERVES for prim in [
        P.neg_p, P.log1p_p, P.expm1_p, P.tanh_p, P.atanh_p, P.sinh_p, P.asinh_p, P.asin_p, P.atan_p, P.erf_p,
        P.erf_inv_p, P.sqrt_p, P.rsqrt_p, P.cbrt_p, P.copy_p, P.abs_p, P.square_p, P.reshape_p, P.transpose_p,
        P.rev_p, P.squeeze_p, P.broadcast_in_dim_p, tile_p, split_p, unstack_p] if available(prim)},
    P.mul_p: [([True, True], {}, True), ([True, False], {}, False), ([False, True], {}, False)],
    P.div_p: [([True, False], {}, True), ([False, True], {}, False)],  # a / b is zero iff a is
    P.pow_p: [([True, False], {}, True), ([False, True], {}, False)],
    P.integer_pow_p: [([False], {"y": 0}, True), ([False], {"y": -2}, True), ([False], {"y": 3}, False),
                      ([True], {"y": 2}, True)],
    P.concatenate_p: ALL_OF, stack_p: ALL_OF, P.device_put_p: ALL_OF,
    P.pad_p: [([True, True], {}, True), ([True, False], {}, False)],
}
NONZERO_FACTS.pop(None, None)  # stack_p before JAX 0.9
CONVERT_NONZERO = [  # (source aval or None, new_dtype, nonzero stays nonzero?)
    (f32, np.float64, True),
    (f32, np.float16, False),  # 1e-30 underflows to 0
    (f32, np.int32, False),  # 0.3 truncates to 0
    (i32, np.float16, True),  # |n| >= 1 never rounds to 0
    (i32, np.int8, False),  # 256 wraps to 0
    (f32, np.bool_, True),
    (None, np.float64, True),  # without the source dtype: only casts that cannot narrow
    (None, np.float32, False),
]


def cases(table):
    """pytest params (prim, case, unknown inputs) for every pattern in ``table``."""
    return [pytest.param(prim, case, u, id=f"{prim.name}-solve{list(u)}")
            for prim, case in table for u in case.solve]


# ==========================================================================
# Partial outputs, widening casts


def test_split_ivjp_takes_a_missing_cotangent_as_zero():
    eqn = trace(split_p, lambda x: jnp.split(x, [1, 3], axis=1), jnp.ones((3, 6), jnp.float32))
    outvals = eqn.outvals()
    out_cts = [jnp.ones_like(outvals[0]), None, jnp.ones_like(outvals[2])]
    with registry.solving(eqn.avals):
        _, (ct,) = registry.ivjp_rules[split_p]([None], outvals, out_cts, **eqn.params)
    np.testing.assert_array_equal(ct, jnp.array([[1, 0, 0, 1, 1, 1]] * 3, jnp.float32))


@pytest.mark.parametrize("prim, fn, args", [case for case in [
    (split_p, lambda x: jnp.split(x, [1, 3], axis=1), (jnp.ones((3, 6)),)),
    (unstack_p, lambda x: jnp.unstack(x, axis=1), (jnp.ones((3, 4)),)),
    (P.device_put_p, lambda a, b: jax.device_put((a, b)), (jnp.ones(3), jnp.zeros(2))),
] if available(case[0])], ids=lambda p: getattr(p, "name", ""))
def test_multiple_result_rules_say_which_outputs_they_need(prim, fn, args):
    """The planner may know only some outputs of a multiple-result equation."""
    eqn = trace(prim, fn, *args)
    outvals = eqn.outvals()
    outvals[1] = None
    with registry.solving(eqn.avals), pytest.raises(NotInvertibleError, match="output"):
        registry.inverse_rules[prim](eqn.unknown(range(len(args))), outvals, **eqn.params)
    if prim is P.device_put_p:  # each input needs only its own output
        with registry.solving(eqn.avals):
            assert_same_arrays(registry.inverse_rules[prim](eqn.unknown((0,)), outvals, **eqn.params), eqn.invals)


def test_convert_widens_float32_to_float64_under_x64():
    with enable_x64(True):
        eqn = trace(P.convert_element_type_p, lambda x: x.astype(jnp.float64), jnp.linspace(-3, 3, 7, dtype=np.float32))
        assert_same_arrays(invert(eqn, (0,)), eqn.invals)


# ==========================================================================
# What the rules refuse


REFUSALS = [
    pytest.param(P.integer_pow_p, lambda x: x ** 2, (uniform(3),), (0,), "not injective", id="x**2"),
    pytest.param(P.integer_pow_p, lambda x: lax.integer_pow(x, 4), (uniform(3),), (0,), "not injective", id="x**4"),
    pytest.param(P.integer_pow_p, lambda x: lax.integer_pow(x, 0), (uniform(3),), (0,), "not injective", id="x**0"),
    pytest.param(P.integer_pow_p, lambda x: x ** 3, (integers(3),), (0,), "integers", id="int x**3"),
    pytest.param(P.convert_element_type_p, lambda x: x.astype(jnp.float16), (uniform(3),), (0,), "loses information",
                 id="f32->f16"),
    pytest.param(P.convert_element_type_p, lambda x: x.astype(jnp.int32), (uniform(3),), (0,), "loses information",
                 id="f32->i32"),
    pytest.param(P.convert_element_type_p, lambda x: x.astype(jnp.int8), (integers(3),), (0,), "loses information",
                 id="i32->i8"),
    pytest.param(P.convert_element_type_p, lambda x: x.astype(jnp.bfloat16), (uniform(3, dtype=np.float16),), (0,),
                 "loses information", id="f16->bf16"),
    pytest.param(P.convert_element_type_p, lambda x: x.astype(jnp.float32), (integers(3),), (0,), "loses information",
                 id="i32->f32"),
    pytest.param(P.convert_element_type_p, lambda x: x.astype(bool), (uniform(3),), (0,), "loses information",
                 id="f32->bool"),
    pytest.param(P.add_p, jnp.add, (uniform(3), uniform(3)), (0, 1), "both operands", id="add both unknown"),
    pytest.param(P.mul_p, jnp.multiply, (uniform(3), uniform(3)), (0, 1), "both operands", id="mul both unknown"),
    pytest.param(P.mul_p, jnp.multiply, (integers(3), integers(3)), (0,), "integers", id="int mul"),
    pytest.param(P.div_p, lax.div, (integers(3), integers(3)), (0,), "integers", id="int div"),
    pytest.param(P.dot_general_p, jnp.matmul, (uniform(5, 4), uniform(4, 3)), (0,), "not square", id="x @ W(4x3)"),
    pytest.param(P.dot_general_p, jnp.matmul, (uniform(5, 4), nonsingular()), (1,), "not square",
                 id="known x(5x4) @ W"),
    pytest.param(P.dot_general_p, jnp.matmul, (uniform(4), uniform(4, 3)), (1,), "0 free dims",
                 id="known vector @ x"),
    pytest.param(P.dot_general_p, lambda x, w: jnp.einsum("ijk,jkl->il", x, w), (uniform(5, 2, 2), uniform(2, 2, 4)),
                 (0,), "2 contracting", id="two contracting dims"),
    pytest.param(P.dot_general_p, jnp.matmul, (uniform(4, 4), uniform(4, 4)), (0, 1), "both operands",
                 id="dot both unknown"),
    pytest.param(P.dot_general_p, jnp.matmul, (integers(4, 4), integers(4, 4)), (0,), "integers", id="int dot"),
    pytest.param(P.pad_p, lambda x, v: lax.pad(x, v, ((-1, 0, 0),)), (uniform(3), uniform()), (0,), "negative padding",
                 id="negative padding"),
    pytest.param(P.pad_p, lambda x, v: lax.pad(x, v, ((0, 0, 0),)), (uniform(3), uniform()), (1,),
                 "holds the padding value", id="pad value nowhere"),
]


@pytest.mark.parametrize("prim, fn, args, unknown, reason", REFUSALS)
def test_rules_refuse_what_cannot_be_inverted(prim, fn, args, unknown, reason):
    eqn = build(prim, Case(fn, args), F32)
    with pytest.raises(NotInvertibleError, match=reason):
        invert(eqn, unknown)


# ==========================================================================
# The zero-divisor policy


@pytest.mark.parametrize("prim, example, unknown", cases(POLICY_CASES))
def test_solves_that_divide_require_the_divisor_proven_nonzero(prim, example, unknown):
    """While planning (``registry.proving`` active), a rule that divides by a
    known input refuses unless the planner proved that input nonzero; every
    other solve ignores the policy."""
    eqn = build(prim, example, F32)
    invals, outvals = eqn.unknown(unknown), eqn.outvals()
    rules = [registry.inverse_rules[prim]]
    if prim in registry.ivjp_rules:
        ivjp = registry.ivjp_rules[prim]
        rules.append(lambda i, o, **p: ivjp(i, o, outvals, **p)[0])
    divisor = DIVIDES_BY.get((prim, tuple(unknown)))
    for rule in rules:
        with registry.solving(eqn.avals):
            with registry.proving({}):  # nothing proven
                if divisor is None:
                    rule(invals, outvals, **eqn.params)
                else:
                    with pytest.raises(NotInvertibleError, match="not provably (nonzero|nonsingular)"):
                        rule(invals, outvals, **eqn.params)
            if divisor is not None:
                with registry.proving({id(invals[divisor]): frozenset({facts.NONZERO, facts.NONSINGULAR})}):
                    rule(invals, outvals, **eqn.params)


def test_the_policy_table_names_real_examples():
    solved = {(prim, tuple(u)) for prim, case in POLICY_CASES for u in case.solve}
    assert set(DIVIDES_BY) <= solved


@pytest.mark.parametrize("prim", list(NONZERO_FACTS), ids=lambda p: p.name)
def test_nonzero_rules(prim):
    for nonzero_in, params, expected in NONZERO_FACTS[prim]:
        assert registry.nonzero_rules[prim](nonzero_in, **params) is expected, (nonzero_in, params)


@pytest.mark.parametrize("prim, fn", [(P.log_p, jnp.log), (P.acos_p, jnp.arccos), (P.acosh_p, lax.acosh)],
                         ids=lambda p: getattr(p, "name", ""))
def test_why_some_outputs_are_never_proven_nonzero(prim, fn):
    assert registry.nonzero_rules[prim]([True]) is False
    assert fn(jnp.float32(1.0)) == 0  # a nonzero input, a zero output


@pytest.mark.parametrize("src, new_dtype, expected", CONVERT_NONZERO)
def test_convert_preserves_nonzero_only_when_it_cannot_round_to_zero(src, new_dtype, expected):
    rule = registry.nonzero_rules[P.convert_element_type_p]
    params = dict(new_dtype=np.dtype(new_dtype), weak_type=False, sharding=None)
    if src is None:
        assert rule([True], **params) is expected
    else:
        with registry.solving([src]):
            assert rule([True], **params) is expected
    assert rule([False], **params) is False


# ==========================================================================
# Principal branches: jaxinv.inverse only, never gradients


@DTYPES
@pytest.mark.parametrize("prim", list(PRINCIPAL_ANYWHERE), ids=lambda p: p.name)
def test_principal_branch_finds_an_input_anywhere(prim, dtype):
    # On the branch it recovers the input (tests/test_conformance.py); elsewhere
    # it finds *an* input with the same output.
    with x64(dtype):
        eqn = build(prim, PRINCIPAL_ANYWHERE[prim], dtype)
        (x,) = invert(eqn, (0,), registry.principal_inverse_rules)
        assert_same_arrays(Equation(prim, eqn.params, [x], eqn.avals).outvals(), eqn.outvals())


@pytest.mark.parametrize("prim", [P.sin_p, P.cos_p, P.tan_p, P.cosh_p, P.abs_p, P.square_p], ids=lambda p: p.name)
def test_principal_branch_rules_are_not_inverse_rules(prim):
    assert prim in registry.principal_inverse_rules
    assert prim not in registry.inverse_rules
    assert prim not in registry.ivjp_rules


def test_even_integer_pow_has_only_a_principal_branch():
    # integer_pow is in both tables: its real rule inverts odd exponents and
    # refuses even ones, which only the principal-branch rule inverts.
    eqn = build(P.integer_pow_p, Case(lambda x: x ** 2, (uniform(12, lo=0, hi=3),)), F32)
    with pytest.raises(NotInvertibleError, match="not injective"):
        invert(eqn, (0,))
    assert_same_arrays(invert(eqn, (0,), registry.principal_inverse_rules), eqn.invals)


# ==========================================================================
# Facts about constants name the axes a rule solves over


def test_constant_facts_are_per_axis_pair():
    from jaxinv._src.facts import nonsingular_over, of_value, selects
    w = np.ones((3, 3, 1, 1)) + 2 * np.eye(3)[:, :, None, None]
    assert nonsingular_over(4, (0, 1)) in of_value(w)
    assert nonsingular_over(4, (0, 1)) not in of_value(np.ones((3, 3, 1, 1)))
    assert nonsingular_over(4, (2, 3)) in of_value(np.ones((3, 3, 1, 1)))  # 1x1 blocks: a different claim
    assert selects(1) in of_value(np.ones((2, 3), bool))
