"""Rules for elementwise primitives: arithmetic, exp/log, hyperbolic, powers, casts.

Only registrations live here (see ``jaxinv/registry.py`` for the conventions).
Unary injective primitives are one ``defunary`` line each; ``defunary`` also
declares them "nonzero-preserving", so primitives whose output can be zero for
a nonzero input (``log(1) = 0``, ``acos(1) = 0``) declare ``never`` first.

Zero-divisor policy: a solver that divides by a known operand calls
``require_nonzero`` on that operand (see ``registry.require_nonzero``).

Integer arithmetic: ``add``/``sub``/``neg`` are bijections even when they wrap
around, so they are solved for integers too; ``mul``, ``div``, ``pow`` and
``integer_pow`` lose information on integers (overflow, truncation) and refuse.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P

from jaxinv._version import __version__
from jaxinv.domains import Example, integers, booleans, nonzero, positive, reals
from jaxinv.packs import RulePack
from jaxinv.registry import NotInvertibleError, input_avals, require_nonzero

pack = RulePack("jaxinv.elementwise", __version__, jax_versions=">=0.10", builtin=True,
                description="arithmetic, exp/log, hyperbolic and inverse trigonometric functions, powers, casts")

# --------------------------------------------------------------------------
# private helpers for the non-trivial rules


def _never(nonzero_in, **_):
    return False


def _all(nonzero_in, **_):
    return all(nonzero_in)


def _first(nonzero_in, **_):
    return nonzero_in[0]


def _inexact(x, what: str):
    """``x``, after checking that its dtype is floating or complex."""
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise NotInvertibleError(f"{what} loses information on integers (overflow or truncation)")
    return x


def _as_input(x, i: int):
    """A solved operand, cut down to input ``i``'s shape.

    lax's binary ops let a rank-0 operand broadcast against the other one; every
    element of the solution then holds the same value, so take the first.
    """
    shape = tuple(input_avals()[i].shape)
    if tuple(x.shape) != shape and math.prod(shape) == 1:
        return jnp.reshape(x, (-1,))[0].reshape(shape)
    return x


def _odd_root(z, n: int):
    """The real ``n``-th root of ``z`` for an odd integer ``n`` (negative allowed)."""
    if n == 1:
        return z
    if n == -1:
        return 1 / z
    if n == 3:
        return lax.cbrt(z)
    return jnp.sign(z) * jnp.abs(z) ** (1 / n)


def _integer_pow_inverse(invals, outvals, *, y, **_):
    # x -> x**y is injective on the reals exactly when y is odd.
    if y % 2 == 0:
        raise NotInvertibleError(
            f"integer_pow with even exponent y={y} is not injective (x and -x give the same output)")
    return [_odd_root(_inexact(outvals[0], "integer_pow"), y)]


def _integer_pow_principal(invals, outvals, *, y, **_):
    # Even y: the nonnegative root (odd y has a true inverse, used unchanged).
    if y == 0:
        raise NotInvertibleError("integer_pow with y=0 is constant")
    z = _inexact(outvals[0], "integer_pow")
    if y % 2:
        return [_odd_root(z, y)]
    return [jnp.sqrt(z) if y == 2 else jnp.abs(z) ** (1 / y)]


def _integer_pow_nonzero(nonzero_in, *, y, **_):
    # x**0 == 1 and x**-n (never 0 for finite x) are nonzero whatever x is.
    return y <= 0 or nonzero_in[0]


def _pow_base(y, b):
    # y = a ** b, solved for the base a given the exponent b.
    #
    # Real pow is defined for a negative base only when b is integer-valued, so
    # on the reals a -> a**b is injective for a >= 0 (any b != 0) and for every
    # a when b is an odd integer.  a = sign(y) * |y| ** (1/b) is the exact
    # inverse on both of those domains.  A negative base with an even integer
    # exponent is not recoverable (its sign is lost): this returns |a|, the
    # principal branch.  b == 0 gives y == 1 for every a, hence require_nonzero.
    _inexact(y, "pow")
    b = require_nonzero(b, "the known exponent of `pow`")
    return _as_input(jnp.sign(y) * jnp.abs(y) ** (1 / lax.convert_element_type(b, y.dtype)), 0)


def _pow_exponent(y, a):
    # y = a ** b, solved for the exponent b given the base a:
    # b = log|y| / log|a| (|.| covers a negative base, which real pow allows only
    # with integer exponents).  Mathematically this needs log|a| != 0, i.e.
    # a not in {0, 1, -1}.  The planner can only prove "nonzero", so we require
    # a != 0 (a = 0 gives y in {0, 1, inf}, not injective); a = +-1 is not ruled
    # out at plan time and gives 0/0 = NaN at run time, visibly rather than a
    # wrong finite value.  An integer exponent is recovered exactly by rounding.
    _inexact(y, "pow")
    a = require_nonzero(a, "the known base of `pow` (it must also not be +-1)")
    b = jnp.log(jnp.abs(y)) / jnp.log(jnp.abs(a))
    dtype = input_avals()[1].dtype
    if not jnp.issubdtype(dtype, jnp.inexact):
        b = jnp.round(b)
    return _as_input(b.astype(dtype), 1)


def _logit(y):
    return jnp.log(y) - jnp.log1p(-y)


def _lossless(src, dst) -> bool:
    """Does every value of dtype ``src`` survive a round trip through ``dst``?"""
    src, dst = np.dtype(src), np.dtype(dst)
    if src == dst or src == np.bool_:
        return True
    if dst == np.bool_:
        return False
    s_complex = jnp.issubdtype(src, jnp.complexfloating)
    d_complex = jnp.issubdtype(dst, jnp.complexfloating)
    if s_complex and not d_complex:
        return False
    if jnp.issubdtype(src, jnp.inexact):
        if not jnp.issubdtype(dst, jnp.inexact):
            return False
        s, d = jnp.finfo(src), jnp.finfo(dst)
        return d.nmant >= s.nmant and d.maxexp >= s.maxexp and d.minexp <= s.minexp
    # integer source
    s = jnp.iinfo(src)
    if jnp.issubdtype(dst, jnp.integer):
        d = jnp.iinfo(dst)
        return d.min <= s.min and d.max >= s.max
    # integer -> float: every integer of src must be exactly representable
    magnitude_bits = s.bits - (1 if s.min < 0 else 0)
    return magnitude_bits <= jnp.finfo(dst).nmant + 1


def _convert_inverse(invals, outvals, *, new_dtype, **_):
    src = input_avals()[0].dtype
    if not _lossless(src, new_dtype):
        raise NotInvertibleError(
            f"convert_element_type from {np.dtype(src).name} to {np.dtype(new_dtype).name} loses information")
    return [lax.convert_element_type(outvals[0], src)]


def _convert_nonzero(nonzero_in, *, new_dtype, **_):
    # Narrowing can round a nonzero to zero (0.3 -> int 0, 1e-30 -> float16 0).
    if not nonzero_in[0]:
        return False
    dst = np.dtype(new_dtype)
    if dst == np.bool_:
        return True
    try:
        src = np.dtype(input_avals()[0].dtype)
    except RuntimeError:  # nonzero rules are not promised the input avals
        return dst in (np.dtype(np.float64), np.dtype(np.complex128))
    if not jnp.issubdtype(src, jnp.inexact) and jnp.issubdtype(dst, jnp.inexact):
        return True  # |integer| >= 1 never rounds to zero
    return _lossless(src, dst)


# --------------------------------------------------------------------------
# arithmetic (examples: where each rule must work; see jaxinv.domains)

BOTH = [(0,), (1,)]

pack.defbinary(P.add_p, lambda y, b: _as_input(y - b, 0), lambda y, a: _as_input(y - a, 1), examples=[
    Example(jnp.add, reals(-10, 10), reals(-10, 10), solve=BOTH),
    Example(lax.add, reals(shape=(3, 4)), reals(shape=()), solve=BOTH, label="rank-0 operand broadcast"),
    Example(jnp.add, integers(), integers(), solve=BOTH, label="integers wrap around bijectively"),
])
pack.defbinary(P.sub_p, lambda y, b: _as_input(y + b, 0), lambda y, a: _as_input(a - y, 1), examples=[
    Example(jnp.subtract, reals(-10, 10), reals(-10, 10), solve=BOTH),
    Example(lax.sub, reals(shape=()), reals(shape=(3, 4)), solve=BOTH, label="rank-0 operand broadcast"),
    Example(lambda a, b: a - b, integers(), integers(), solve=BOTH, label="integers wrap around bijectively"),
])
pack.defbinary(P.mul_p,
               lambda y, b: _as_input(_inexact(y, "mul") / require_nonzero(b, "the known factor of `mul`"), 0),
               lambda y, a: _as_input(_inexact(y, "mul") / require_nonzero(a, "the known factor of `mul`"), 1),
               examples=[
                   Example(jnp.multiply, nonzero(0.25, 4), nonzero(0.25, 4), solve=BOTH),
                   Example(lambda x: x * 2.0, reals(), solve=[(0,)], label="by a literal"),
                   Example(lax.mul, nonzero(), nonzero(shape=()), solve=BOTH, label="rank-0 operand broadcast"),
               ],
               notes="divides by the known factor: it must be provably nonzero")
# y = a / b: a = y * b divides by nothing; b = a / y divides by y, nonzero iff a is.
pack.defbinary(P.div_p,
               lambda y, b: _as_input(_inexact(y, "div") * b, 0),
               lambda y, a: _as_input(require_nonzero(a, "the known numerator of `div`") / _inexact(y, "div"), 1),
               examples=Example(jnp.divide, nonzero(0.25, 4), nonzero(0.25, 4), solve=BOTH),
               notes="solving the divisor divides by the output: the numerator must be provably nonzero")
pack.defbinary(P.pow_p, _pow_base, _pow_exponent, examples=[
    Example(lax.pow, positive(0.2, 3), nonzero(0.25, 2), solve=[(0,)], label="positive base"),
    Example(lax.pow, positive(1.5, 3), reals(-2, 2), solve=[(1,)], label="exponent, base away from 1"),
    Example(lax.pow, reals(-3, 3), integers((-3, -1, 1, 3)), solve=[(0,)], label="any base, odd integer exponent"),
    Example(lax.pow, positive(1.5, 3), integers(), solve=[(1,)], label="integer exponent, recovered exactly"),
], notes="base: |a| = |y|^(1/b) (a >= 0, or b an odd integer); exponent: log|y| / log|a| (a not 0, +-1)")
pack.defunary(P.neg_p, lax.neg, examples=[Example(lax.neg, reals(-3, 3)),
                                          Example(lax.neg, integers(), label="integers")])

pack.register_nonzero(P.mul_p, _all)
pack.register_nonzero(P.div_p, _first)  # a / b with a nonzero (and b finite)
pack.register_nonzero(P.pow_p, _first)  # a ** b with a nonzero (0 ** 0 == 1, but we need not know)

pack.register_inverse(P.integer_pow_p, _integer_pow_inverse, examples=[
    Example(lambda x: lax.integer_pow(x, 3), reals(-3, 3), label="y=3"),
    Example(lambda x: lax.integer_pow(x, 5), reals(), label="y=5"),
    Example(lambda x: lax.integer_pow(x, -3), nonzero(), label="y=-3"),
    Example(lambda x: lax.integer_pow(x, -1), nonzero(), label="y=-1"),
    Example(lambda x: lax.integer_pow(x, 1), reals(), label="y=1"),
], notes="odd exponents only (even ones: principal branch)")
pack.register_nonzero(P.integer_pow_p, _integer_pow_nonzero)

pack.defunary(P.sqrt_p, jnp.square, examples=Example(jnp.sqrt, positive(1e-3, 100)))
pack.defunary(P.rsqrt_p, lambda y: jnp.reciprocal(jnp.square(y)), examples=Example(lax.rsqrt, positive(0.01, 100)))
pack.defunary(P.cbrt_p, lambda y: y * y * y, examples=Example(jnp.cbrt, reals(-100, 100)))

# --------------------------------------------------------------------------
# exponentials and logarithms (outputs of exp, exp2 and logistic are never zero)

pack.register_nonzero(P.exp_p)
pack.register_nonzero(P.exp2_p)
pack.register_nonzero(P.logistic_p)
pack.register_nonzero(P.log_p, _never)  # log(1) == 0

pack.defunary(P.exp_p, jnp.log, ct=lambda x, y, ct: ct * y, examples=Example(jnp.exp, reals(-10, 10)))
pack.defunary(P.exp2_p, jnp.log2, ct=lambda x, y, ct: ct * y * math.log(2), examples=Example(jnp.exp2, reals(-10, 10)))
pack.defunary(P.log_p, jnp.exp, ct=lambda x, y, ct: ct / x, examples=Example(jnp.log, positive(1e-3, 1e3)))
pack.defunary(P.log1p_p, jnp.expm1, examples=Example(jnp.log1p, reals(-0.9, 10)))
pack.defunary(P.expm1_p, jnp.log1p, ct=lambda x, y, ct: ct * (y + 1), examples=Example(jnp.expm1, reals(-3, 3)))
pack.defunary(P.logistic_p, _logit, ct=lambda x, y, ct: ct * y * (1 - y), examples=Example(jax.nn.sigmoid, reals(-4, 4)))

# --------------------------------------------------------------------------
# hyperbolic, trigonometric (on their injective domains), erf

pack.register_nonzero(P.acos_p, _never)  # acos(1) == 0
pack.register_nonzero(P.acosh_p, _never)  # acosh(1) == 0

pack.defunary(P.tanh_p, jnp.arctanh, ct=lambda x, y, ct: ct * (1 - y * y), examples=Example(jnp.tanh, reals(-2.5, 2.5)))
pack.defunary(P.atanh_p, jnp.tanh, examples=Example(jnp.arctanh, reals(-0.95, 0.95)))
pack.defunary(P.sinh_p, jnp.arcsinh, examples=Example(jnp.sinh, reals(-5, 5)))
pack.defunary(P.asinh_p, jnp.sinh, examples=Example(lax.asinh, reals(-100, 100)))
pack.defunary(P.acosh_p, jnp.cosh, examples=Example(lax.acosh, positive(1.01, 100)))
pack.defunary(P.asin_p, jnp.sin, examples=Example(jnp.arcsin, reals(-0.99, 0.99)))
pack.defunary(P.acos_p, jnp.cos, examples=Example(jnp.arccos, reals(-0.99, 0.99)))
pack.defunary(P.atan_p, jnp.tan, examples=Example(jnp.arctan, reals(-10, 10)))
pack.defunary(P.erf_p, lax.erf_inv, examples=Example(lax.erf, reals(-1.5, 1.5)))
pack.defunary(P.erf_inv_p, lax.erf, examples=Example(lax.erf_inv, reals(-0.95, 0.95)))

# --------------------------------------------------------------------------
# casts and copies

pack.register_nonzero(P.convert_element_type_p, _convert_nonzero)
pack.register_inverse(P.convert_element_type_p, _convert_inverse, examples=[
    Example(lambda x: x.astype(jnp.float32), reals(dtype=np.float16), label="f16->f32"),
    Example(lambda x: x.astype(jnp.float32), reals(dtype=jnp.bfloat16), label="bf16->f32"),
    Example(lambda x: x.astype(jnp.float32), integers(dtype=np.int16), label="i16->f32"),
    Example(lambda x: x.astype(jnp.float32), booleans(), label="bool->f32"),
    Example(lambda x: x.astype(jnp.int32), integers(dtype=np.int8), label="i8->i32"),
    Example(lambda x: x.astype(jnp.int16), integers((0, 7, 255), dtype=np.uint8), label="u8->i16"),
], notes="lossless conversions only (every source value survives the round trip)")
pack.defunary(P.copy_p, lambda y: y, ct=lambda x, y, ct: ct if jnp.issubdtype(y.dtype, jnp.inexact) else None,
              examples=[Example(jnp.copy, reals()), Example(jnp.copy, integers(), label="integers")])

# --------------------------------------------------------------------------
# principal branches of non-injective primitives: jaxinv.inverse only
# (examples lie on the branch)

pack.defunary(P.sin_p, jnp.arcsin, principal_branch=True, examples=Example(jnp.sin, reals(-1.5, 1.5)),
              notes="x in [-pi/2, pi/2]")
pack.defunary(P.cos_p, jnp.arccos, principal_branch=True, examples=Example(jnp.cos, reals(0.05, 3.1)),
              notes="x in [0, pi]")
pack.defunary(P.tan_p, jnp.arctan, principal_branch=True, examples=Example(jnp.tan, reals(-1.4, 1.4)),
              notes="x in (-pi/2, pi/2)")
pack.defunary(P.cosh_p, jnp.arccosh, principal_branch=True, examples=Example(jnp.cosh, reals(0, 3)),
              notes="x >= 0")
pack.defunary(P.abs_p, lambda y: y, principal_branch=True, examples=Example(jnp.abs, reals(0, 5)),
              notes="x >= 0")
pack.defunary(P.square_p, jnp.sqrt, principal_branch=True, examples=Example(jnp.square, reals(0, 5)),
              notes="x >= 0")
pack.register_inverse(P.integer_pow_p, _integer_pow_principal, principal_branch=True, examples=[
    Example(lambda x: x ** 2, reals(0, 3), label="y=2"),
    Example(lambda x: lax.integer_pow(x, 4), reals(0.1, 3), label="y=4"),
    Example(lambda x: lax.integer_pow(x, -2), reals(0.5, 3), label="y=-2"),
], notes="x >= 0 for even y")

pack.register_nonzero(P.cosh_p)  # cosh >= 1
pack.register_nonzero(P.abs_p, _first)
pack.register_nonzero(P.square_p, _first)
