"""The built-in rule packs (``jaxinv.rules``), checked directly against JAX.

Every rule is called the way the interpreter calls it: on the inputs and outputs
of one real equation, traced from an ordinary ``jnp``/``lax`` call (so its params
are exactly what JAX 0.10 puts in jaxprs), inside ``registry.solving(avals)``,
with ``None`` for the inputs to recover. A rule is right when

* its inverse returns the true inputs (same shape, dtype and values), and
* its ivjp also returns, for every input, the cotangent ``jax.vjp`` gives.

The example tables below are keyed by primitive. ``test_every_rule_has_examples``
fails when a pack registers a rule that no table exercises.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from typing import Any, Callable
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax
from jax.extend.core import Literal
from jax.extend.core import primitives as P

import jaxinv.rules  # noqa: F401  (registers the built-in packs)
from jaxinv import registry
from jaxinv._jax_internals import split_p, stack_p, tile_p, unstack_p
from jaxinv.registry import NotInvertibleError

PACKS = ("jaxinv.rules.elementwise", "jaxinv.rules.structural", "jaxinv.rules.linalg")
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
    return jax.enable_x64(np.dtype(dtype) == F64)


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


def booleans(*shape):
    return lambda rng, dt: jnp.asarray(rng.uniform(size=shape) > 0.5)


@dataclasses.dataclass(frozen=True)
class Example:
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


def build(prim, example: Example, dtype, seed=0) -> Equation:
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


def reference_cotangents(eqn: Equation, out_cts) -> list:
    """``jax.vjp`` of the primitive at the true inputs; ``None`` for integer inputs."""
    floats = [i for i, a in enumerate(eqn.avals) if jnp.issubdtype(a.dtype, jnp.inexact)]

    def f(*xs):
        args = list(eqn.invals)
        for i, x in zip(floats, xs):
            args[i] = x
        out = eqn.prim.bind(*args, **eqn.params)
        return list(out) if eqn.prim.multiple_results else [out]

    cts = [None] * len(eqn.invals)
    if not floats:
        return cts
    _, vjp = jax.vjp(f, *[eqn.invals[i] for i in floats])
    for i, ct in zip(floats, vjp(list(out_cts))):
        cts[i] = ct
    return cts


# ==========================================================================
# Example tables


# Unary elementwise primitives: (jnp/lax function, lo, hi), a domain on which
# the primitive is injective and reasonably conditioned in float32.
UNARY = {
    P.neg_p: (lax.neg, -3, 3),
    P.exp_p: (jnp.exp, -10, 10),
    P.exp2_p: (jnp.exp2, -10, 10),
    P.log_p: (jnp.log, 1e-3, 1e3),
    P.log1p_p: (jnp.log1p, -0.9, 10),
    P.expm1_p: (jnp.expm1, -3, 3),
    P.tanh_p: (jnp.tanh, -2.5, 2.5),
    P.atanh_p: (jnp.arctanh, -0.95, 0.95),
    P.logistic_p: (jax.nn.sigmoid, -4, 4),
    P.sinh_p: (jnp.sinh, -5, 5),
    P.asinh_p: (lax.asinh, -100, 100),
    P.acosh_p: (lax.acosh, 1.01, 100),
    P.asin_p: (jnp.arcsin, -0.99, 0.99),
    P.acos_p: (jnp.arccos, -0.99, 0.99),
    P.atan_p: (jnp.arctan, -10, 10),
    P.erf_p: (lax.erf, -1.5, 1.5),
    P.erf_inv_p: (lax.erf_inv, -0.95, 0.95),
    P.sqrt_p: (jnp.sqrt, 0, 100),
    P.rsqrt_p: (lax.rsqrt, 0.01, 100),
    P.cbrt_p: (jnp.cbrt, -100, 100),
    P.copy_p: (jnp.copy, -3, 3),
}

# Binary arithmetic, for the property tests: (function, (lo, hi) magnitude of a,
# of b, whether the sign is random).  Operands that some solve divides by stay
# away from zero; pow's base stays positive and away from 1 (see its rule).
BINARY = {
    P.add_p: (jnp.add, (0, 10), (0, 10)),
    P.sub_p: (jnp.subtract, (0, 10), (0, 10)),
    P.mul_p: (jnp.multiply, (0.25, 4), (0.25, 4)),
    P.div_p: (jnp.divide, (0.25, 4), (0.25, 4)),
    P.pow_p: (lax.pow, (1.5, 4), (0.25, 2)),
}

both = ((0,), (1,))

EXAMPLES: dict[Any, list[Example]] = {
    **{prim: [Example(fn, (uniform(4, 5, lo=lo, hi=hi),))] for prim, (fn, lo, hi) in UNARY.items()},
    P.neg_p: [
        Example(lax.neg, (uniform(4, 5),)),
        Example(lax.neg, (integers(4, 5),), label="integers"),
    ],
    P.copy_p: [
        Example(jnp.copy, (uniform(4, 5),)),
        Example(jnp.copy, (integers(4, 5),), label="integers"),
    ],
    # -- arithmetic --------------------------------------------------------
    P.add_p: [
        Example(jnp.add, (uniform(3, 4), uniform(3, 4)), both),
        Example(lax.add, (uniform(3, 4), uniform()), both, "rank-0 operand broadcast"),
    ],
    P.sub_p: [
        Example(jnp.subtract, (uniform(3, 4), uniform(3, 4)), both),
        Example(lax.sub, (uniform(), uniform(3, 4)), both, "rank-0 operand broadcast"),
        Example(lambda a, b: a - b, (integers(5), integers(5)), both, "integers wrap around bijectively"),
    ],
    P.mul_p: [
        Example(jnp.multiply, (away_from_zero(3, 4), away_from_zero(3, 4)), both),
        Example(lambda x: x * 2.0, (uniform(3, 4),), ((0,),), "by a literal"),
        Example(lax.mul, (away_from_zero(3, 4), away_from_zero()), both, "rank-0 operand broadcast"),
    ],
    P.div_p: [Example(jnp.divide, (away_from_zero(3, 4), away_from_zero(3, 4)), both)],
    P.pow_p: [
        Example(lax.pow, (uniform(3, 4, lo=0.2, hi=3), away_from_zero(3, 4, lo=0.25, hi=2)), ((0,),),
                "positive base"),
        Example(lax.pow, (uniform(3, 4, lo=1.5, hi=3), uniform(3, 4, lo=-2, hi=2)), ((1,),),
                "exponent, base away from 1"),
        Example(lax.pow, (uniform(3, 4, lo=-3, hi=3), integers(3, 4, values=(-3, -1, 1, 3))), ((0,),),
                "any base, odd integer exponent"),
        Example(lax.pow, (uniform(3, 4, lo=1.5, hi=3), integers(3, 4)), ((1,),),
                "integer exponent, recovered exactly"),
    ],
    P.integer_pow_p: [
        Example(lambda x: lax.integer_pow(x, 3), (uniform(3, 4, lo=-3, hi=3),), label="y=3"),
        Example(lambda x: lax.integer_pow(x, 5), (uniform(3, 4),), label="y=5"),
        Example(lambda x: lax.integer_pow(x, -3), (away_from_zero(3, 4),), label="y=-3"),
        Example(lambda x: lax.integer_pow(x, -1), (away_from_zero(3, 4),), label="y=-1"),
        Example(lambda x: lax.integer_pow(x, 1), (uniform(3, 4),), label="y=1"),
    ],
    P.convert_element_type_p: [
        Example(lambda x: x.astype(jnp.float32), (uniform(3, 4, dtype=np.float16),), label="f16->f32"),
        Example(lambda x: x.astype(jnp.float32), (uniform(3, 4, dtype=jnp.bfloat16),), label="bf16->f32"),
        Example(lambda x: x.astype(jnp.float32), (integers(3, 4, dtype=np.int16),), label="i16->f32"),
        Example(lambda x: x.astype(jnp.float32), (booleans(3, 4),), label="bool->f32"),
        Example(lambda x: x.astype(jnp.int32), (integers(3, 4, dtype=np.int8),), label="i8->i32"),
        Example(lambda x: x.astype(jnp.int16), (integers(3, 4, values=(0, 7, 255), dtype=np.uint8),),
                label="u8->i16"),
    ],
    # -- structural --------------------------------------------------------
    P.reshape_p: [Example(lambda x: x.reshape(3, 4), (uniform(4, 3),))],
    P.transpose_p: [Example(lambda x: jnp.transpose(x, (2, 0, 1)), (uniform(2, 3, 4),))],
    P.rev_p: [Example(lambda x: lax.rev(x, (0, 2)), (uniform(2, 3, 4),))],
    P.squeeze_p: [Example(lambda x: lax.squeeze(x, (1,)), (uniform(3, 1, 4),))],
    P.broadcast_in_dim_p: [
        Example(lambda x: jnp.expand_dims(x, 1), (uniform(3, 4),), label="expand_dims"),
        Example(lambda x: jnp.broadcast_to(x, (5, 3, 4)), (uniform(3, 4),), label="new leading dim"),
        Example(lambda x: jnp.broadcast_to(x, (2, 3, 4)), (uniform(3, 1),), label="size-1 dim expanded"),
        Example(lambda x: jnp.broadcast_to(x, (2, 3)), (uniform(),), label="scalar"),
    ],
    tile_p: [Example(lambda x: jnp.tile(x, (2, 3)), (uniform(3, 4),))],
    P.concatenate_p: [
        Example(lambda a, b, c: jnp.concatenate([a, b, c], axis=1), (uniform(3, 1), uniform(3, 4), uniform(3, 2)),
                ((0,), (1, 2), (0, 1, 2))),
    ],
    split_p: [
        Example(lambda x: jnp.split(x, [1, 3], axis=1), (uniform(3, 6),)),
        Example(lambda x: jnp.split(x, [2], axis=0), (integers(4, 3),), label="integers"),
    ],
    stack_p: [
        Example(lambda a, b, c: jnp.stack([a, b, c], axis=1), (uniform(3, 4), uniform(3, 4), uniform(3, 4)),
                ((1,), (0, 2), (0, 1, 2))),
    ],
    unstack_p: [Example(lambda x: jnp.unstack(x, axis=1), (uniform(3, 4),))],
    P.pad_p: [
        Example(lambda x, v: lax.pad(x, v, ((1, 2, 1), (0, 1, 0))), (uniform(3, 4), uniform()),
                ((0,), (1,), (0, 1))),
        Example(lambda x, v: lax.pad(x, v, ((0, 0, 2), (0, 0, 0))), (uniform(3, 4), uniform()),
                ((0, 1),), "interior padding only"),
    ],
    P.device_put_p: [Example(jax.device_put, (uniform(3, 4),))],
    P.cumsum_p: [
        Example(lambda x: lax.cumsum(x, axis=1), (uniform(3, 5),), label="forward"),
        Example(lambda x: lax.cumsum(x, axis=0, reverse=True), (uniform(3, 5),), label="reverse"),
        Example(lambda x: lax.cumsum(x, axis=0), (uniform(1, 5),), label="length 1"),
        Example(lambda x: lax.cumsum(x, axis=1), (integers(3, 5),), label="integers wrap around bijectively"),
    ],
    # -- linear algebra ----------------------------------------------------
    P.dot_general_p: [
        Example(jnp.matmul, (uniform(5, 4), nonsingular()), ((0,),), "x @ W"),
        Example(jnp.matmul, (nonsingular(), uniform(4, 3)), ((1,),), "W @ x"),
        Example(jnp.matmul, (nonsingular(), nonsingular()), both, "square @ square"),
        Example(jnp.matmul, (nonsingular(), uniform(4)), ((1,),), "W @ vector"),
        Example(jnp.matmul, (uniform(2, 5, 4), nonsingular()), ((0,),), "x with two free dims"),
        Example(lambda x, w: lax.dot_general(x, w, (((1,), (1,)), ((), ()))), (uniform(5, 4), nonsingular()),
                ((0,),), "x @ W.T"),
        Example(lambda x, w: jnp.einsum("bij,bjk->bik", x, w), (uniform(3, 5, 4), nonsingular(3)), ((0,),),
                "batched x @ W"),
        Example(lambda w, x: jnp.einsum("bij,bjk->bik", w, x), (nonsingular(3), uniform(3, 4, 2)), ((1,),),
                "batched W @ x"),
        Example(lambda x, w: lax.dot_general(x, w, (((0,), (1,)), ((2,), (0,)))), (uniform(4, 5, 3), nonsingular(3)),
                ((0,),), "batch and contracting dims not in front"),
    ],
}

# Non-injective primitives with a documented principal branch (jaxinv.inverse
# only): (example on the branch, example anywhere in the primitive's domain).
PRINCIPAL: dict[Any, list[tuple[Example, Example]]] = {
    P.sin_p: [(Example(jnp.sin, (uniform(12, lo=-1.5, hi=1.5),)), Example(jnp.sin, (uniform(12, lo=-6, hi=6),)))],
    P.cos_p: [(Example(jnp.cos, (uniform(12, lo=0.05, hi=3.1),)), Example(jnp.cos, (uniform(12, lo=-6, hi=6),)))],
    P.tan_p: [(Example(jnp.tan, (uniform(12, lo=-1.4, hi=1.4),)), Example(jnp.tan, (uniform(12, lo=1.8, hi=4.5),)))],
    P.cosh_p: [(Example(jnp.cosh, (uniform(12, lo=0, hi=3),)), Example(jnp.cosh, (uniform(12, lo=-3, hi=3),)))],
    P.abs_p: [(Example(jnp.abs, (uniform(12, lo=0, hi=5),)), Example(jnp.abs, (uniform(12, lo=-5, hi=5),)))],
    P.square_p: [(Example(jnp.square, (uniform(12, lo=0, hi=5),)),
                  Example(jnp.square, (uniform(12, lo=-5, hi=5),)))],
    P.integer_pow_p: [
        (Example(lambda x: x ** 2, (uniform(12, lo=0, hi=3),)), Example(lambda x: x ** 2, (uniform(12, lo=-3, hi=3),))),
        (Example(lambda x: lax.integer_pow(x, 4), (uniform(12, lo=0.1, hi=3),)),
         Example(lambda x: lax.integer_pow(x, 4), (uniform(12, lo=-3, hi=3),))),
        (Example(lambda x: lax.integer_pow(x, -2), (uniform(12, lo=0.5, hi=3),)),
         Example(lambda x: lax.integer_pow(x, -2), (away_from_zero(12, lo=0.5, hi=3),))),
        (Example(lambda x: lax.integer_pow(x, 3), (uniform(12, lo=-3, hi=3),)),  # odd: the true inverse
         Example(lambda x: lax.integer_pow(x, 3), (uniform(12, lo=-3, hi=3),))),
    ],
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
        P.rev_p, P.squeeze_p, P.broadcast_in_dim_p, tile_p, split_p, unstack_p]},
    P.mul_p: [([True, True], {}, True), ([True, False], {}, False), ([False, True], {}, False)],
    P.div_p: [([True, False], {}, True), ([False, True], {}, False)],  # a / b is zero iff a is
    P.pow_p: [([True, False], {}, True), ([False, True], {}, False)],
    P.integer_pow_p: [([False], {"y": 0}, True), ([False], {"y": -2}, True), ([False], {"y": 3}, False),
                      ([True], {"y": 2}, True)],
    P.concatenate_p: ALL_OF, stack_p: ALL_OF, P.device_put_p: ALL_OF,
    P.pad_p: [([True, True], {}, True), ([True, False], {}, False)],
}
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
    """pytest params (prim, example, unknown inputs) for every pattern in ``table``."""
    return [pytest.param(prim, ex, u, id=f"{prim.name}[{ex.label or k}]-solve{list(u)}")
            for prim, examples in table.items() for k, ex in enumerate(examples) for u in ex.solve]


# ==========================================================================
# The tables cover every registered rule


def registered_by_our_packs() -> dict[str, dict]:
    """The rules ``PACKS`` register, found by running the packs afresh into
    empty tables (the real tables, which other packs share, are restored)."""
    tables = {name: {} for name in ("inverse_rules", "ivjp_rules", "principal_inverse_rules", "nonzero_rules")}
    with mock.patch.multiple(registry, **tables):
        for name in PACKS:
            spec = importlib.util.spec_from_file_location(f"_fresh_{name}", importlib.import_module(name).__file__)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return tables


def test_every_rule_has_examples():
    ours = registered_by_our_packs()
    names = lambda prims: sorted(p.name for p in prims)
    assert names(set(ours["inverse_rules"]) - set(EXAMPLES)) == []
    assert names(set(ours["ivjp_rules"]) - set(EXAMPLES)) == []
    assert names(set(ours["principal_inverse_rules"]) - set(PRINCIPAL)) == []
    assert names(set(ours["nonzero_rules"]) - set(NONZERO_FACTS) - {P.convert_element_type_p}) == []
    # ... and every example exercises a rule that really is registered.
    assert names(set(EXAMPLES) - set(ours["inverse_rules"])) == []
    assert names(set(PRINCIPAL) - set(ours["principal_inverse_rules"])) == []


def test_importing_jaxinv_rules_registers_the_packs():
    ours = registered_by_our_packs()
    for name, table in ours.items():
        assert set(table) <= set(getattr(registry, name)), name


# ==========================================================================
# Inverse and ivjp rules against JAX


@DTYPES
@pytest.mark.parametrize("prim, example, unknown", cases(EXAMPLES))
def test_inverse_rule_recovers_the_inputs(prim, example, unknown, dtype):
    with x64(dtype):
        eqn = build(prim, example, dtype)
        assert_same_arrays(invert(eqn, unknown), eqn.invals)


@DTYPES
@pytest.mark.parametrize("prim, example, unknown",
                         [c for c in cases(EXAMPLES) if c.values[0] in registry.ivjp_rules])
def test_ivjp_rule_matches_jax_vjp(prim, example, unknown, dtype):
    with x64(dtype):
        eqn = build(prim, example, dtype)
        outvals = eqn.outvals()
        rng = np.random.default_rng(1)
        out_cts = [jnp.asarray(rng.normal(size=y.shape), y.dtype) if jnp.issubdtype(y.dtype, jnp.inexact)
                   else np.zeros(y.shape, jax.dtypes.float0) for y in outvals]  # as JAX gives integers
        with registry.solving(eqn.avals):
            invals, in_cts = registry.ivjp_rules[prim](eqn.unknown(unknown), outvals, out_cts, **eqn.params)
        assert_same_arrays(list(invals), eqn.invals)
        want = reference_cotangents(eqn, out_cts)
        assert [c is None for c in in_cts] == [c is None for c in want]
        assert_same_arrays([c for c in in_cts if c is not None], [c for c in want if c is not None])


def test_split_ivjp_takes_a_missing_cotangent_as_zero():
    eqn = build(split_p, EXAMPLES[split_p][0], F32)
    outvals = eqn.outvals()
    out_cts = [jnp.ones_like(outvals[0]), None, jnp.ones_like(outvals[2])]
    with registry.solving(eqn.avals):
        _, (ct,) = registry.ivjp_rules[split_p]([None], outvals, out_cts, **eqn.params)
    np.testing.assert_array_equal(ct, jnp.array([[1, 0, 0, 1, 1, 1]] * 3, jnp.float32))


@pytest.mark.parametrize("prim, fn, args", [
    (split_p, lambda x: jnp.split(x, [1, 3], axis=1), (jnp.ones((3, 6)),)),
    (unstack_p, lambda x: jnp.unstack(x, axis=1), (jnp.ones((3, 4)),)),
    (P.device_put_p, lambda a, b: jax.device_put((a, b)), (jnp.ones(3), jnp.zeros(2))),
], ids=lambda p: getattr(p, "name", ""))
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
    with jax.enable_x64(True):
        eqn = trace(P.convert_element_type_p, lambda x: x.astype(jnp.float64), jnp.linspace(-3, 3, 7, dtype=np.float32))
        assert_same_arrays(invert(eqn, (0,)), eqn.invals)


# -- property tests over each elementwise rule's whole domain ---------------


def values_in(lo, hi, n=6, *, signed=False):
    """n floats with magnitude in [lo, hi] (random sign if ``signed``)."""
    magnitude = st.lists(st.floats(lo, hi), min_size=n, max_size=n)
    if not signed:
        return magnitude
    signs = st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n)
    return st.tuples(magnitude, signs).map(lambda ms: [m * s for m, s in zip(*ms)])


@DTYPES
@pytest.mark.parametrize("prim", list(UNARY), ids=lambda p: p.name)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_unary_rules_invert_anywhere_in_their_domain(prim, dtype, data):
    fn, lo, hi = UNARY[prim]
    with x64(dtype):
        x = jnp.asarray(data.draw(values_in(lo, hi)), dtype)
        eqn = trace(prim, fn, x)
        assert_same_arrays(invert(eqn, (0,)), [x])


@DTYPES
@pytest.mark.parametrize("prim", list(BINARY), ids=lambda p: p.name)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_binary_rules_solve_either_operand_anywhere_in_their_domain(prim, dtype, data):
    fn, (a_lo, a_hi), (b_lo, b_hi) = BINARY[prim]
    with x64(dtype):
        a = jnp.asarray(data.draw(values_in(a_lo, a_hi, signed=prim is not P.pow_p)), dtype)
        b = jnp.asarray(data.draw(values_in(b_lo, b_hi, signed=True)), dtype)
        eqn = trace(prim, fn, a, b)
        for unknown in both:
            assert_same_arrays(invert(eqn, unknown), [a, b])


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
    eqn = build(prim, Example(fn, args), F32)
    with pytest.raises(NotInvertibleError, match=reason):
        invert(eqn, unknown)


# ==========================================================================
# The zero-divisor policy


@pytest.mark.parametrize("prim, example, unknown", cases(EXAMPLES))
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
                with registry.proving({id(invals[divisor]): frozenset({"nonzero", "nonsingular"})}):
                    rule(invals, outvals, **eqn.params)


def test_the_policy_table_names_real_examples():
    solved = {(prim, tuple(u)) for prim, exs in EXAMPLES.items() for ex in exs for u in ex.solve}
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
@pytest.mark.parametrize("prim, on_branch, anywhere",
                         [pytest.param(p, a, b, id=f"{p.name}[{k}]") for p, exs in PRINCIPAL.items()
                          for k, (a, b) in enumerate(exs)])
def test_principal_branch_inverse(prim, on_branch, anywhere, dtype):
    with x64(dtype):
        # On the branch it recovers the input ...
        eqn = build(prim, on_branch, dtype)
        assert_same_arrays(invert(eqn, (0,), registry.principal_inverse_rules), eqn.invals)
        # ... elsewhere it finds *an* input with the same output.
        eqn = build(prim, anywhere, dtype)
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
    eqn = build(P.integer_pow_p, PRINCIPAL[P.integer_pow_p][0][0], F32)
    with pytest.raises(NotInvertibleError, match="not injective"):
        invert(eqn, (0,))
    assert_same_arrays(invert(eqn, (0,), registry.principal_inverse_rules), eqn.invals)
