"""Rules for elementwise primitives: arithmetic, exp/log, hyperbolic, powers, casts,
complex numbers, bitwise operations, and documented refusals.

Each rule is registered right after its definition (see CONTRIBUTING.md, "The
conventions"). Unary injective primitives are one ``defunary`` line each;
``defunary`` also declares them "nonzero-preserving", so primitives whose
output can be zero for a nonzero input (``log(1) = 0``, ``acos(1) = 0``)
register ``never_nonzero`` first.

Zero-divisor policy: a solver that divides by a known operand calls
``require_nonzero`` on that operand (see ``registry.require_nonzero``).

Integer arithmetic: ``add``/``sub``/``neg``/``xor``/``not`` are bijections even
when they wrap around, so they are solved for integers too; ``mul``, ``div``,
``pow`` and ``integer_pow`` lose information on integers (overflow,
truncation) and refuse.

Broadcasting: lax's binary ops let an operand broadcast along its size-1
dimensions (or entirely, when rank 0); solvers cut the solution back to the
operand's shape (``_as_input``), fused cotangents sum over those dimensions
(``_unbroadcast``), as ``jax.vjp`` does.

Fused ivjp rules give ``jax.vjp``'s own cotangents from the values the inverse
already has (often the output: ``d exp = y dx``), so the backward pass neither
traces the primitive's VJP nor recomputes its output.

Non-injective elementwise primitives either have a principal branch (``sin``,
``abs``, even ``integer_pow``, ...: ``jaxinv.inverse`` only) or a documented
refusal (``floor``, ``max``, comparisons, ...: the planner quotes the reason).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import primitives as P
from jax.scipy.special import ndtri

from jaxinv._version import __version__
from jaxinv._src.compat import MUL_HAS_OUT_DTYPE, SUPPORTED_JAX
from jaxinv._src.dtypes import is_float
from jaxinv.domains import Example, integers, booleans, nonzero, positive, reals
from jaxinv.packs import RulePack, never_nonzero, nonzero_if_all, nonzero_if_first
from jaxinv.registry import NotInvertibleError, input_avals, require_nonzero

pack = RulePack("jaxinv.elementwise", __version__, jax_versions=SUPPORTED_JAX, builtin=True,
                description="arithmetic, exp/log, hyperbolic and inverse trigonometric functions, powers, casts, "
                            "complex numbers, bitwise operations")

# --------------------------------------------------------------------------
# shared helpers


def _float_only(x, what: str):
    """``x``, after checking that it is a float (real or complex): ``what``'s
    inverse would be wrong on integers."""
    if not is_float(x):
        raise NotInvertibleError(f"{what} loses information on integers (overflow or truncation)")
    return x


def _as_input(x, i: int):
    """A solved operand, cut down to input ``i``'s shape and dtype.

    lax's binary ops let an operand broadcast against the other one along its
    size-1 dimensions (or entirely, when it is rank 0); every element of the
    solution along such a dimension then holds the same value, so take the
    first. A mixed-precision ``mul`` (``out_dtype``) solves in the output dtype:
    cast back (exact when the product was).
    """
    aval = input_avals()[i]
    shape = tuple(aval.shape)
    if tuple(x.shape) != shape:
        if not shape:
            x = jnp.reshape(x, (-1,))[0]
        else:
            x = x[tuple(slice(0, 1) if d == 1 and n != 1 else slice(None) for d, n in zip(shape, x.shape))]
    if x.dtype != aval.dtype:
        x = lax.convert_element_type(x, aval.dtype)
    return x


def _input_is_float(i: int) -> bool:
    return is_float(input_avals()[i])


def _unbroadcast(ct, i: int):
    """The cotangent of input ``i`` from ``ct`` (of the output's shape): summed over
    the dimensions along which input ``i`` was broadcast (what ``jax.vjp`` does),
    in input ``i``'s dtype; None for an integer or boolean input."""
    if ct is None or not _input_is_float(i):
        return None
    aval = input_avals()[i]
    shape = tuple(aval.shape)
    if tuple(ct.shape) != shape:
        if not shape:
            ct = jnp.sum(ct)
        else:
            dims = tuple(k for k, (d, n) in enumerate(zip(shape, ct.shape)) if d != n)
            ct = jnp.sum(ct, axis=dims, keepdims=True)
    if ct.dtype != aval.dtype:
        ct = lax.convert_element_type(ct, aval.dtype)
    return ct


def _binary_ivjp(prim, cotangents):
    """A fused ivjp for ``y = prim(a, b)``: the pack's inverse rule for ``prim``
    recovers the unknown operand, then ``cotangents(a, b, y, ct, **params) ->
    (ct_a, ct_b)`` (broadcast to the output's shape; summed back here) replaces
    a second trace of the primitive's VJP."""
    def ivjp_rule(invals, outvals, out_cts, **params):
        a, b = pack.rules[prim].inverse(invals, outvals, **params)
        y, ct = outvals[0], out_cts[0]
        if ct is None:
            ct = jnp.zeros_like(y)
        ct_a, ct_b = cotangents(a, b, y, ct, **params)
        return [a, b], [_unbroadcast(ct_a, 0), _unbroadcast(ct_b, 1)]
    return ivjp_rule


# --------------------------------------------------------------------------
# arithmetic (examples: where each rule must work; see jaxinv.domains)
#
# Fused cotangents: jax.vjp's, from the operands the inverse recovered, without tracing the VJP
# (which would also recompute the output); summed back over broadcast dimensions by _binary_ivjp.

BOTH = [(0,), (1,)]

# y = a + b: a = y - b, b = y - a (integers too: wrap-around addition is a bijection).
pack.defbinary(P.add_p, lambda y, b: _as_input(y - b, 0), lambda y, a: _as_input(y - a, 1), examples=[
    Example(jnp.add, reals(-10, 10), reals(-10, 10), solve=BOTH),
    Example(lax.add, reals(shape=(3, 4)), reals(shape=()), solve=BOTH, label="rank-0 operand broadcast"),
    Example(lax.add, reals(shape=(3, 4)), reals(shape=(3, 1)), solve=BOTH, label="size-1 dimension broadcast"),
    Example(jnp.add, integers(), integers(), solve=BOTH, label="integers wrap around bijectively"),
])
pack.register_ivjp(P.add_p, _binary_ivjp(P.add_p, lambda a, b, y, ct, **_: (ct, ct)))

# add_any (jax.extend's add_jaxvals_p) sums cotangents in the jaxprs of gradient code: the same as add.
pack.defbinary(P.add_jaxvals_p, lambda y, b: _as_input(y - b, 0), lambda y, a: _as_input(y - a, 1), examples=[
    Example(P.add_jaxvals_p.bind, reals(-10, 10), reals(-10, 10), solve=BOTH),
    Example(P.add_jaxvals_p.bind, integers(), integers(), solve=BOTH, label="integers wrap around bijectively"),
])
pack.register_ivjp(P.add_jaxvals_p, _binary_ivjp(P.add_jaxvals_p, lambda a, b, y, ct, **_: (ct, ct)))

# y = a - b: a = y + b, b = a - y.
pack.defbinary(P.sub_p, lambda y, b: _as_input(y + b, 0), lambda y, a: _as_input(a - y, 1), examples=[
    Example(jnp.subtract, reals(-10, 10), reals(-10, 10), solve=BOTH),
    Example(lax.sub, reals(shape=()), reals(shape=(3, 4)), solve=BOTH, label="rank-0 operand broadcast"),
    Example(lambda a, b: a - b, integers(), integers(), solve=BOTH, label="integers wrap around bijectively"),
])
pack.register_ivjp(P.sub_p, _binary_ivjp(P.sub_p, lambda a, b, y, ct, **_: (ct, -ct)))

# y = a * b: a = y / b, b = y / a (floats only: integer products overflow).
pack.defbinary(P.mul_p,
               lambda y, b: _as_input(_float_only(y, "mul") / require_nonzero(b, "the known factor of `mul`"), 0),
               lambda y, a: _as_input(_float_only(y, "mul") / require_nonzero(a, "the known factor of `mul`"), 1),
               examples=[
                   Example(jnp.multiply, nonzero(0.25, 4), nonzero(0.25, 4), solve=BOTH),
                   Example(lambda x: x * 2.0, reals(), solve=[(0,)], label="by a literal"),
                   Example(lax.mul, nonzero(), nonzero(shape=()), solve=BOTH, label="rank-0 operand broadcast"),
                   Example(lax.mul, nonzero(shape=(3, 4)), nonzero(shape=(1, 4)), solve=BOTH,
                           label="size-1 dimension broadcast"),
                   *([Example(lambda a, b: lax.mul(a, b, out_dtype=jnp.float32), reals(dtype=jnp.bfloat16),
                              nonzero(dtype=jnp.bfloat16), solve=[(0,)], label="bf16 * bf16 -> f32 (exact)")]
                     if MUL_HAS_OUT_DTYPE else []),
               ],
               notes="divides by the known factor: it must be provably nonzero")
pack.register_ivjp(P.mul_p, _binary_ivjp(P.mul_p, lambda a, b, y, ct, **_: (ct * b, ct * a)))
pack.register_nonzero(P.mul_p, nonzero_if_all)

# y = a / b: a = y * b divides by nothing; b = a / y divides by y, nonzero iff a is.
pack.defbinary(P.div_p,
               lambda y, b: _as_input(_float_only(y, "div") * b, 0),
               lambda y, a: _as_input(require_nonzero(a, "the known numerator of `div`") / _float_only(y, "div"), 1),
               examples=[
                   Example(jnp.divide, nonzero(0.25, 4), nonzero(0.25, 4), solve=BOTH),
                   Example(lax.div, nonzero(shape=()), nonzero(shape=(3, 4)), solve=BOTH,
                           label="rank-0 operand broadcast"),
               ],
               notes="solving the divisor divides by the output: the numerator must be provably nonzero")
# d(a / b) = da / b - a db / b^2
pack.register_ivjp(P.div_p, _binary_ivjp(P.div_p, lambda a, b, y, ct, **_: (ct / b, -ct * a * b ** -2)))
pack.register_nonzero(P.div_p, nonzero_if_first)  # a / b with a nonzero (and b finite)

# y = atan2(a, b), the angle of the point (b, a): tan(y) = a / b exactly, and
# for a fixed b != 0 (a != 0) the angle is strictly monotone in a (in b), so
# a = b tan(y), b = a / tan(y) (tan(+-pi/2) is huge but finite: b ~ 0, right).
# A zero known operand loses the other one's magnitude (atan2(a, 0) = +-pi/2).
pack.defbinary(P.atan2_p,
               lambda y, b: _as_input(require_nonzero(b, "the known second operand of `atan2`") * jnp.tan(y), 0),
               lambda y, a: _as_input(require_nonzero(a, "the known first operand of `atan2`") / jnp.tan(y), 1),
               examples=[
                   Example(jnp.arctan2, reals(-2, 2), nonzero(0.5, 2), solve=[(0,)], label="|a / b| <= 4"),
                   Example(jnp.arctan2, nonzero(0.5, 2), reals(-2, 2), solve=[(1,)], label="|b / a| <= 4"),
               ],
               notes="the known operand must be provably nonzero; ill-conditioned as |a / b| (solving a) grows")
# d atan2(a, b) = (b da - a db) / (a^2 + b^2)
pack.register_ivjp(P.atan2_p, _binary_ivjp(
    P.atan2_p, lambda a, b, y, ct, **_: (ct * (b / (a * a + b * b)), ct * (-a / (a * a + b * b)))))

# neg is its own inverse (integers too).
pack.defunary(P.neg_p, lax.neg, ct=lambda x, y, ct: -ct if is_float(y) else None,
              examples=[Example(lax.neg, reals(-3, 3)), Example(lax.neg, integers(), label="integers")])

# --------------------------------------------------------------------------
# powers and roots


def _pow_base(y, b):
    # y = a ** b, solved for the base a given the exponent b.
    #
    # Real pow is defined for a negative base only when b is integer-valued, so
    # on the reals a -> a**b is injective for a >= 0 (any b != 0) and for every
    # a when b is an odd integer.  a = sign(y) * |y| ** (1/b) is the exact
    # inverse on both of those domains.  A negative base with an even integer
    # exponent is not recoverable (its sign is lost): this returns |a|, the
    # principal branch.  b == 0 gives y == 1 for every a, hence require_nonzero.
    _float_only(y, "pow")
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
    _float_only(y, "pow")
    a = require_nonzero(a, "the known base of `pow` (it must also not be +-1)")
    b = jnp.log(jnp.abs(y)) / jnp.log(jnp.abs(a))
    dtype = input_avals()[1].dtype
    if not is_float(dtype):
        b = jnp.round(b)
    return _as_input(b.astype(dtype), 1)


def _pow_cotangents(a, b, y, ct, **_):
    # What jax.vjp gives for y = a ** b (lax's pow JVP), with the operand the
    # inverse recovered: ct_a = ct * b * a^(b-1) (0 where an integer b is 0);
    # ct_b = ct * log(a) * y (log(1) where a == 0), none for an integer b.
    bf = jnp.asarray(b).astype(y.dtype)
    a, bf = jnp.broadcast_arrays(jnp.asarray(a), bf)
    jac = bf * lax.pow(a, bf - 1)
    if not _input_is_float(1):
        return ct * jnp.where(bf == 0, 0, jac), None
    return ct * jac, ct * jnp.log(jnp.where(a == 0, 1, a)) * y


pack.defbinary(P.pow_p, _pow_base, _pow_exponent, examples=[
    Example(lax.pow, positive(0.2, 3), nonzero(0.25, 2), solve=[(0,)], label="positive base"),
    Example(lax.pow, positive(1.5, 3), reals(-2, 2), solve=[(1,)], label="exponent, base away from 1"),
    Example(lax.pow, reals(-3, 3), integers((-3, -1, 1, 3)), solve=[(0,)], label="any base, odd integer exponent"),
    Example(lax.pow, positive(1.5, 3), integers(), solve=[(1,)], label="integer exponent, recovered exactly"),
], notes="base: |a| = |y|^(1/b) (a >= 0, or b an odd integer); exponent: log|y| / log|a| (a not 0, +-1)")
pack.register_ivjp(P.pow_p, _binary_ivjp(P.pow_p, _pow_cotangents))
pack.register_nonzero(P.pow_p, nonzero_if_first)  # a ** b with a nonzero (0 ** 0 == 1, but we need not know)


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
    return [_odd_root(_float_only(outvals[0], "integer_pow"), y)]


def _integer_pow_principal(invals, outvals, *, y, **_):
    # Even y: the nonnegative root (odd y has a true inverse, used unchanged).
    if y == 0:
        raise NotInvertibleError("integer_pow with y=0 is constant")
    z = _float_only(outvals[0], "integer_pow")
    if y % 2:
        return [_odd_root(z, y)]
    return [jnp.sqrt(z) if y == 2 else jnp.abs(z) ** (1 / y)]


def _integer_pow_nonzero(nonzero_in, *, y, **_):
    # x**0 == 1 and x**-n (never 0 for finite x) are nonzero whatever x is.
    return y <= 0 or nonzero_in[0]


pack.register_inverse(P.integer_pow_p, _integer_pow_inverse, examples=[
    Example(lambda x: lax.integer_pow(x, 3), reals(-3, 3), label="y=3"),
    Example(lambda x: lax.integer_pow(x, 5), reals(), label="y=5"),
    Example(lambda x: lax.integer_pow(x, -3), nonzero(), label="y=-3"),
    Example(lambda x: lax.integer_pow(x, -1), nonzero(), label="y=-1"),
    Example(lambda x: lax.integer_pow(x, 1), reals(), label="y=1"),
], notes="odd exponents only (even ones: principal branch)")
pack.register_nonzero(P.integer_pow_p, _integer_pow_nonzero)
pack.register_elementwise(P.integer_pow_p)  # log-det: sum log|dx/dy|, derived from the inverse
# Even exponents: the principal branch (jaxinv.inverse only).
pack.register_inverse(P.integer_pow_p, _integer_pow_principal, principal_branch=True, examples=[
    Example(lambda x: x ** 2, reals(0, 3), label="y=2"),
    Example(lambda x: lax.integer_pow(x, 4), reals(0.1, 3), label="y=4"),
    Example(lambda x: lax.integer_pow(x, -2), reals(0.5, 3), label="y=-2"),
], notes="x >= 0 for even y")

# Roots: undo by powering. Fused cotangents from the output alone (jax's own
# formulas): d sqrt(x) = dx / (2 sqrt(x)), d rsqrt(x) = -rsqrt(x) dx / (2x),
# d cbrt(x) = dx / (3 cbrt(x)^2).
pack.defunary(P.sqrt_p, jnp.square, ct=lambda x, y, ct: ct * (0.5 / y),
              examples=Example(jnp.sqrt, positive(1e-3, 100)))
pack.defunary(P.rsqrt_p, lambda y: jnp.reciprocal(jnp.square(y)), ct=lambda x, y, ct: ct * (-0.5 * (y / x)),
              examples=Example(lax.rsqrt, positive(0.01, 100)))
pack.defunary(P.cbrt_p, lambda y: y * y * y, ct=lambda x, y, ct: ct * ((1 / 3) * lax.integer_pow(y, -2)),
              examples=Example(jnp.cbrt, reals(-100, 100)))

# --------------------------------------------------------------------------
# exponentials and logarithms (outputs of exp, exp2 and logistic are never zero)

# Each undone by its inverse function; the fused cotangents are jax's own,
# from the output (d exp = exp dx, d expm1 = (expm1 + 1) dx, d logistic =
# y (1 - y) dx) or from the recovered input (d log = dx / x, d log1p = dx / (1 + x)).
pack.register_nonzero(P.exp_p)
pack.defunary(P.exp_p, jnp.log, ct=lambda x, y, ct: ct * y, examples=Example(jnp.exp, reals(-10, 10)),
              saturates="exp(x) underflows to 0 below x = -87 in float32, and log(0) = -inf")
pack.register_nonzero(P.exp2_p)
pack.defunary(P.exp2_p, jnp.log2, ct=lambda x, y, ct: ct * y * math.log(2), examples=Example(jnp.exp2, reals(-10, 10)),
              saturates="exp2(x) underflows to 0 below x = -126 in float32, and log2(0) = -inf")
pack.register_nonzero(P.log_p, never_nonzero)  # log(1) == 0
pack.defunary(P.log_p, jnp.exp, ct=lambda x, y, ct: ct / x, examples=Example(jnp.log, positive(1e-3, 1e3)))
pack.defunary(P.log1p_p, jnp.expm1, ct=lambda x, y, ct: ct / (x + 1), examples=Example(jnp.log1p, reals(-0.9, 10)),
              saturates="near x = -1, expm1 of the output rounds back to -1: x + 1 loses every digit")
pack.defunary(P.expm1_p, jnp.log1p, ct=lambda x, y, ct: ct * (y + 1), examples=Example(jnp.expm1, reals(-3, 3)),
              saturates="expm1(x) rounds to -1 below x = -17 in float32, and log1p(-1) = -inf")


def _logit(y):
    # The inverse of the logistic function, y = 1 / (1 + exp(-x)):
    # x = log(y / (1 - y)) = log(y) - log1p(-y) = 2 atanh(2y - 1).
    # For y >= 1/4, 2y - 1 is exact (Sterbenz) and atanh is accurate near 0,
    # so x is within ~2 ulp even near y = 1/2, where log(y) - log1p(-y) cancels
    # (10^6 ulp in float32), and near y = 1 (sigmoid(x) = 0.9999: 1 - y is exact).
    # For y < 1/4 the two logs do not cancel (|log y| > 1.38 > |log1p(-y)|) and
    # stay exact for tiny y (logit of sigmoid(-100) in float64). Both branches
    # are finite on (0, 1), so the unused one never poisons a derivative.
    return jnp.where(y < 0.25, jnp.log(y) - jnp.log1p(-y), 2 * jnp.arctanh(2 * y - 1))


pack.register_nonzero(P.logistic_p)
pack.defunary(P.logistic_p, _logit, ct=lambda x, y, ct: ct * (y * (1 - y)), examples=[
    Example(jax.nn.sigmoid, reals(-4, 4)),
    Example(jax.nn.sigmoid, reals(-10, 10), label="into the tails: sigmoid(10) = 0.99995"),
], notes="x = log(y) - log1p(-y) for y < 1/4, else 2 atanh(2y - 1): a few ulp on all of (0, 1)",
   saturates="sigmoid(x) rounds to 1 above x = 17 in float32, and logit(1) = inf")

# --------------------------------------------------------------------------
# hyperbolic, trigonometric (on their injective domains), erf

# d tanh = (1 + y)(1 - y) dx, jax's form: 1 - y is exact for y near 1, where 1 - y*y loses digits.
pack.defunary(P.tanh_p, jnp.arctanh, ct=lambda x, y, ct: (ct + ct * y) * (1 - y),
              examples=Example(jnp.tanh, reals(-2.5, 2.5)),
              saturates="tanh(x) rounds to ±1 for |x| > 9 in float32, and atanh(1) = inf")
pack.defunary(P.atanh_p, jnp.tanh, examples=Example(jnp.arctanh, reals(-0.95, 0.95)))
pack.defunary(P.sinh_p, jnp.arcsinh, examples=Example(jnp.sinh, reals(-5, 5)))
pack.defunary(P.asinh_p, jnp.sinh, examples=Example(lax.asinh, reals(-100, 100)))
pack.register_nonzero(P.acosh_p, never_nonzero)  # acosh(1) == 0
pack.defunary(P.acosh_p, jnp.cosh, examples=Example(lax.acosh, positive(1.01, 100)))
pack.defunary(P.asin_p, jnp.sin, examples=Example(jnp.arcsin, reals(-0.99, 0.99)))
pack.register_nonzero(P.acos_p, never_nonzero)  # acos(1) == 0
pack.defunary(P.acos_p, jnp.cos, examples=Example(jnp.arccos, reals(-0.99, 0.99)))
pack.defunary(P.atan_p, jnp.tan, examples=Example(jnp.arctan, reals(-10, 10)),
              saturates="atan(x) rounds to ±pi/2 for |x| > 1e7 in float32, where tan is off by orders of magnitude")
pack.defunary(P.erf_p, lax.erf_inv, examples=Example(lax.erf, reals(-1.5, 1.5)),
              saturates="erf(x) rounds to ±1 for |x| > 4 in float32, and erf_inv(1) = inf")
# d erf_inv(x) = sqrt(pi)/2 exp(erf_inv(x)^2) dx: from the output alone.
pack.defunary(P.erf_inv_p, lax.erf, ct=lambda x, y, ct: (math.sqrt(math.pi) / 2) * (ct * jnp.exp(y * y)),
              examples=Example(lax.erf_inv, reals(-0.95, 0.95)))


def _erfc_inverse(y):
    # y = erfc(x) = 2 Phi(-x sqrt 2) (Phi the standard normal CDF), so
    # x = -ndtri(y / 2) / sqrt(2). erf_inv(1 - y) would be the same in exact
    # arithmetic, but 1 - y cancels for x > 0 (y small): at x = 3.9 in float32
    # it gives inf; ndtri is accurate in both tails (<= 5 ulp from the exact
    # inverse of the rounded y over x in [-3.5, 9]). For x << 0, y = 2 - tiny
    # and the tiny part is lost by erfc itself (ill-conditioned, not fixable).
    return -ndtri(y / 2) * np.asarray(1 / math.sqrt(2), y.dtype)


pack.register_nonzero(P.erfc_p, never_nonzero)  # erfc > 0, but underflows to 0 (x > 10 in float32)
pack.defunary(P.erfc_p, _erfc_inverse, examples=Example(lax.erfc, reals(-2, 8)),
              notes="x = -ndtri(y / 2) / sqrt(2): accurate in both tails; x << 0 is ill-conditioned",
              saturates="erfc(x) rounds to 2 below x = -4 and underflows to 0 above x = 10 in float32")

# --------------------------------------------------------------------------
# casts and copies


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
    if is_float(src):
        if not is_float(dst):
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
    if not is_float(src) and is_float(dst):
        return True  # |integer| >= 1 never rounds to zero
    return _lossless(src, dst)


pack.register_inverse(P.convert_element_type_p, _convert_inverse, examples=[
    Example(lambda x: x.astype(jnp.float32), reals(dtype=np.float16), label="f16->f32"),
    Example(lambda x: x.astype(jnp.float32), reals(dtype=jnp.bfloat16), label="bf16->f32"),
    Example(lambda x: x.astype(jnp.float32), integers(dtype=np.int16), label="i16->f32"),
    Example(lambda x: x.astype(jnp.float32), booleans(), label="bool->f32"),
    Example(lambda x: x.astype(jnp.int32), integers(dtype=np.int8), label="i8->i32"),
    Example(lambda x: x.astype(jnp.int16), integers((0, 7, 255), dtype=np.uint8), label="u8->i16"),
], notes="lossless conversions only (every source value survives the round trip)")
pack.register_nonzero(P.convert_element_type_p, _convert_nonzero)
pack.register_ildj(P.convert_element_type_p)  # lossless: the identity on values, log-det 0
pack.defunary(P.copy_p, lambda y: y, ct=lambda x, y, ct: ct if is_float(y) else None,
              examples=[Example(jnp.copy, reals()), Example(jnp.copy, integers(), label="integers")])


def _bitcast_inverse(invals, outvals, **_):
    # bitcast_convert_type reinterprets the bits, so bitcasting back restores
    # them exactly, for every value (NaN payloads included). With different
    # widths lax splits each element into a new trailing dimension (wide ->
    # narrow) or joins the trailing dimension (narrow -> wide); bitcasting back
    # undoes that too. (lax forbids bool and complex on either side.)
    return [lax.bitcast_convert_type(outvals[0], input_avals()[0].dtype)]


pack.register_inverse(P.bitcast_convert_type_p, _bitcast_inverse, examples=[
    Example(lambda x: lax.bitcast_convert_type(x, jnp.int32), reals(-1e3, 1e3),
            label="float -> int32 (f32: same width; f64: split in two)"),
    Example(lambda x: lax.bitcast_convert_type(x, jnp.float32), integers((-1, -3, 0, 1, 0x3F800000, 0x7FC00001)),
            label="int32 -> float32, NaN payloads kept"),
    Example(lambda x: lax.bitcast_convert_type(x, jnp.float32), integers((0, 7, 63, 128, 255), shape=(2, 4),
                                                                           dtype=np.uint8),
            label="uint8[..., 4] -> float32 (joins the last dimension)"),
    Example(lambda x: lax.bitcast_convert_type(x, jnp.bfloat16), reals(dtype=np.float16), label="f16 -> bf16"),
], notes="bitcasting back restores every bit (different widths too)")
pack.register_nonzero(P.bitcast_convert_type_p, never_nonzero)  # the int bits of -0.0 or of a flushed denormal
pack.register_ildj(P.bitcast_convert_type_p)  # a relabelling of bits, not a smooth map: log-det 0

# --------------------------------------------------------------------------
# complex numbers


def _conj_inverse(y, *, input_dtype):
    # conj is its own inverse on complex numbers; on a real input it binds
    # conj too (lax.conj of float32 gives complex64 with imaginary part 0), so
    # the input is the real part, in the input's dtype.
    if jnp.issubdtype(input_dtype, jnp.complexfloating):
        return lax.conj(y)
    return lax.convert_element_type(lax.real(y), input_dtype)


pack.defunary(P.conj_p, _conj_inverse, examples=[
    Example(lambda a, b: lax.conj(lax.complex(a, b)), reals(), reals(), label="complex"),
    Example(lax.conj, reals(), label="real input (lax.conj binds conj, giving a complex output)"),
])


def _complex_inverse(invals, outvals, **_):
    # y = re + i im holds both operands: re = real(y), im = imag(y), whether one
    # of them is known or neither (a broadcast operand takes its first element).
    y = outvals[0]
    parts = (lax.real(y), lax.imag(y))
    return [v if v is not None else _as_input(parts[i], i) for i, v in enumerate(invals)]


pack.register_inverse(P.complex_p, _complex_inverse, examples=[
    Example(lax.complex, reals(), reals(), solve=[(0,), (1,), (0, 1)]),
    Example(lax.complex, reals(shape=(3, 4)), reals(shape=()), solve=[(0,), (1,), (0, 1)],
            label="rank-0 operand broadcast"),
], notes="both parts from the output: re = real(y), im = imag(y)")
pack.register_nonzero(P.complex_p, lambda nz, **_: any(nz))  # re + i im != 0 if either part is
pack.register_elementwise(P.complex_p)
pack.register_not_invertible(P.real_p, "real(z) loses the imaginary part of z")
pack.register_not_invertible(P.imag_p, "imag(z) loses the real part of z")

# --------------------------------------------------------------------------
# bitwise

# y = a xor b: a = y xor b, b = y xor a (xor with a fixed value is an involution).
pack.defbinary(P.xor_p, lambda y, b: _as_input(lax.bitwise_xor(y, b), 0),
               lambda y, a: _as_input(lax.bitwise_xor(y, a), 1), examples=[
    Example(lax.bitwise_xor, integers(), integers(), solve=BOTH),
    Example(lax.bitwise_xor, booleans(), booleans(), solve=BOTH, label="booleans"),
    Example(lax.bitwise_xor, integers((0, 7, 255), dtype=np.uint8), integers((3,), shape=(), dtype=np.uint8),
            solve=BOTH, label="rank-0 operand broadcast"),
])
# not (bitwise complement; logical not on booleans) is an involution.
pack.register_nonzero(P.not_p, never_nonzero)  # not(-1) == 0, not(True) == False
pack.defunary(P.not_p, lax.bitwise_not, examples=[
    Example(lax.bitwise_not, integers(), label="integers"),
    Example(lax.bitwise_not, booleans(), label="booleans"),
    Example(lax.bitwise_not, integers((0, 1, 200, 255), dtype=np.uint8), label="uint8"),
])

# --------------------------------------------------------------------------
# documented refusals: elementwise primitives that are not injective (or
# have no inverse in lax); the planner quotes the reason and saves the inputs

_not = pack.register_not_invertible
_not(P.reduce_precision_p, "it rounds away mantissa and exponent bits, so many inputs give the same output")
_not(P.sign_p, "sign keeps only the sign (every positive x gives 1)")
_not(P.floor_p, "floor maps [n, n+1) to n")
_not(P.ceil_p, "ceil maps (n-1, n] to n")
_not(P.round_p, "round maps every x within 1/2 of an integer n to n")
_not(P.rem_p, "rem(a, b) loses the quotient: a and a + b give the same remainder")
_not(P.max_p, "max(a, b) loses the smaller operand")
_not(P.min_p, "min(a, b) loses the larger operand")
_not(P.clamp_p, "clamp(lo, x, hi) maps every x below lo to lo and every x above hi to hi")
_not(P.is_finite_p, "is_finite keeps one bit per element")
_not(P.nextafter_p, "nextafter(x, t) moves x one ulp toward t: x = t and x one ulp beyond t both give t, "
                    "and t only matters through its side of x")
_not(P.population_count_p, "population_count keeps only the number of set bits")
_not(P.clz_p, "clz keeps only the number of leading zero bits")
_not(P.and_p, "and loses the bits where the other operand is 0")
_not(P.or_p, "or loses the bits where the other operand is 1")
_not(P.shift_left_p, "shift_left drops the bits shifted out at the top")
_not(P.shift_right_logical_p, "shift_right_logical drops the bits shifted out at the bottom")
_not(P.shift_right_arithmetic_p, "shift_right_arithmetic drops the bits shifted out at the bottom")
for _cmp in (P.eq_p, P.ne_p, P.lt_p, P.le_p, P.gt_p, P.ge_p, P.eq_to_p, P.le_to_p, P.lt_to_p):
    _not(_cmp, "a comparison keeps one bit per element")
_not(P.lgamma_p, "lgamma is not injective (lgamma(1) == lgamma(2) == 0)")
_not(P.digamma_p, "digamma is not injective (each interval between its poles 0, -1, -2, ... covers every value), "
                  "and lax has no inverse of its monotone branch x > 0")
_not(P.polygamma_p, "polygamma is not injective (poles at 0, -1, -2, ...), and lax has no inverse")
_not(P.bessel_i0e_p, "bessel_i0e is even: x and -x give the same output")
_not(P.bessel_i1e_p, "bessel_i1e is not injective: it rises to a maximum near |x| = 1.55, then decays to 0")
_not(P.igamma_p, "lax has no inverse incomplete gamma function (igamma is monotone in x, but not solvable here)")
_not(P.igammac_p, "lax has no inverse incomplete gamma function (igammac is monotone in x, but not solvable here)")
_not(P.igamma_grad_a_p, "the derivative of igamma in a is not injective")
_not(P.regularized_incomplete_beta_p, "lax has no inverse incomplete beta function (it is monotone in x, but "
                                      "not solvable here)")
_not(P.zeta_p, "lax has no inverse of the Hurwitz zeta function")

# --------------------------------------------------------------------------
# principal branches of non-injective primitives: jaxinv.inverse only
# (examples lie on the branch)

pack.defunary(P.sin_p, jnp.arcsin, principal_branch=True, examples=Example(jnp.sin, reals(-1.5, 1.5)),
              notes="x in [-pi/2, pi/2]")
pack.defunary(P.cos_p, jnp.arccos, principal_branch=True, examples=Example(jnp.cos, reals(0.05, 3.1)),
              notes="x in [0, pi]")
pack.defunary(P.tan_p, jnp.arctan, principal_branch=True, examples=Example(jnp.tan, reals(-1.4, 1.4)),
              notes="x in (-pi/2, pi/2)")
pack.defunary(P.cosh_p, jnp.arccosh, principal_branch=True, examples=Example(jnp.cosh, reals(0.1, 3)),
              notes="x >= 0 (near 0, cosh(x) = 1 + x^2/2 rounds x away)")
pack.register_nonzero(P.cosh_p)  # cosh >= 1
pack.defunary(P.abs_p, lambda y: y, principal_branch=True, examples=Example(jnp.abs, reals(0, 5)),
              notes="x >= 0")
pack.register_nonzero(P.abs_p, nonzero_if_first)
pack.defunary(P.square_p, jnp.sqrt, principal_branch=True, examples=Example(jnp.square, reals(0, 5)),
              notes="x >= 0")
pack.register_nonzero(P.square_p, nonzero_if_first)
