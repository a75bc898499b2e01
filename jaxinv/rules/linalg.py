"""Rules for linear algebra: solves with known matrices, and decompositions.

Each rule is registered right after its definition (see CONTRIBUTING.md, "The
conventions"). Three kinds of rule:

* **Solves with a known matrix** (``dot_general``, the 1x1 ``conv_general_dilated``):
  the unknown operand is recovered by an LU solve, so the known matrix must be
  provably nonsingular (``require_nonsingular``).
* **Solves run forward** (``triangular_solve``, ``tridiagonal_solve``): ``x = A^-1 b``
  with ``A`` known gives ``b`` back as the product ``A x``: no division at all.
* **Decompositions** (``cholesky``, ``qr``, ``eigh``, ``svd``, ``lu``) and ``fft``:
  the input is reassembled from *all* the factors (``A = Q R``, ...) or by the
  opposite transform; the decompositions' cotangents come from JAX's own VJP,
  ``fft``'s from a fused ivjp (the transform's transpose).

Everything reconstructs up to roundoff (none is bit-exact): products and
transforms to a few ulps times the size, solves to ``cond(A)`` ulps.

``dot_general``: ``y = dot_general(lhs, rhs)`` is solvable for one unknown operand
``X`` when the known operand ``W`` is, per batch, a square matrix: besides its
batch dims it has exactly one contracting dim and one free dim, of equal size
``n``.  ``X`` may have any number of free dims (they are the columns of the
linear system).  Both layouts (``y = X @ W`` and ``y = W @ X``) reduce to one
form.  Arrange (transpose, then flatten ``X``'s free dims into ``F``)

    X' = X as (batch..., F, n)        A = W as (batch..., n_contract, n_free)
    y' = y as (batch..., F, n)

so that ``y' = X' @ A``.  Then ``X' = y' @ A^-1`` (an LU solve of
``A^T X'^T = y'^T``), and the cotangents are ``ct_X' = ct' @ A^T`` and
``ct_A = X'^T @ ct'``.  The known matrix must be nonsingular: the rule calls
``require_nonsingular`` on it, which the user satisfies by marking the matrix
with ``jaxinv.nonzero`` (read there as "nonsingular"), or the planner by
checking the condition number of a concrete constant.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import primitives as P

from jaxinv._version import __version__
from jaxinv._src.compat import SUPPORTED_JAX
from jaxinv.domains import Example, nonsingular, reals
from jaxinv.packs import RulePack
from jaxinv.registry import NotInvertibleError, input_avals, require_nonsingular
from jaxinv._src.dtypes import is_float

pack = RulePack("jaxinv.linalg", __version__, jax_versions=SUPPORTED_JAX, builtin=True,
                description="linear algebra: solves with known matrices, decompositions, FFTs")

# --------------------------------------------------------------------------
# shared helpers

_HIGHEST = lax.Precision.HIGHEST


def _mm(a, b):
    """``a @ b`` (batched) at full precision: a reassembly must not round to bf16 on accelerators."""
    return jnp.matmul(a, b, precision=_HIGHEST)


def _mT(x):
    return jnp.swapaxes(x, -1, -2)


def _mH(x):
    return jnp.conj(jnp.swapaxes(x, -1, -2))


def _as_input(x, i: int = 0):
    """``x`` in the dtype of input ``i`` (rules compute in the result type of their operands)."""
    dtype = input_avals()[i].dtype
    if not jnp.issubdtype(dtype, jnp.complexfloating):
        x = jnp.real(x)
    return x.astype(dtype)


def _solve_only(invals, solvable: dict[int, str], prim: str) -> int:
    """The index of the one unknown input, which must be a key of ``solvable``
    (index -> name); every other pattern is refused, naming what is needed."""
    unknown = [i for i, v in enumerate(invals) if v is None]
    names = " and ".join(solvable.values())
    if len(unknown) != 1 or unknown[0] not in solvable:
        raise NotInvertibleError(
            f"`{prim}` can only be solved for its {names}, with every other input known "
            f"(unknown inputs: {unknown})")
    return unknown[0]


def _all_outputs(outvals, names: Sequence[str], prim: str) -> list:
    """``outvals``, after checking each factor the reassembly needs is known
    (the planner passes ``None`` for an output nobody reads)."""
    missing = [n for n, y in zip(names, outvals) if y is None]
    if missing:
        raise NotInvertibleError(
            f"`{prim}`'s input is reassembled from all its factors, but its output"
            f"{'' if len(missing) == 1 else 's'} {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            f"not known (not read downstream)")
    return list(outvals)


def _full_subset(subset_by_index, n: int, prim: str) -> None:
    if subset_by_index is not None and tuple(subset_by_index) != (0, n):
        raise NotInvertibleError(
            f"`{prim}` with subset_by_index={tuple(subset_by_index)} keeps only part of the spectrum of a "
            f"{n} x {n} matrix; the input cannot be reassembled from it")


def _inverse_perm(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


# --------------------------------------------------------------------------
# dot_general: y = X @ W or W @ X with W known, square, nonsingular

_SINGULAR = "the known square matrix operand of `dot_general`"


class _Layout(NamedTuple):
    unknown: int  # 0: lhs unknown, 1: rhs unknown
    x_perm: tuple[int, ...]  # X dims -> (batch..., free..., contract)
    x_arranged_shape: tuple[int, ...]  # X transposed by x_perm, before flattening
    w_perm: tuple[int, ...]  # W dims -> (batch..., contract, free)
    y_perm: tuple[int, ...]  # y dims -> (batch..., X free..., W free)
    batch_shape: tuple[int, ...]
    f: int  # product of X's free dims
    n: int


def _layout(invals, dimension_numbers) -> _Layout:
    unknown = [i for i, v in enumerate(invals) if v is None]
    if len(unknown) != 1:
        raise NotInvertibleError("both operands of `dot_general` are unknown; one must be known")
    (u,) = unknown
    k = 1 - u
    (contract, batch) = dimension_numbers
    x_shape = tuple(input_avals()[u].shape)
    w_shape = tuple(input_avals()[k].shape)
    if not is_float(input_avals()[u]):
        raise NotInvertibleError("`dot_general` on integers cannot be solved exactly")
    x_contract, w_contract = tuple(contract[u]), tuple(contract[k])
    x_batch, w_batch = tuple(batch[u]), tuple(batch[k])
    w_free = [d for d in range(len(w_shape)) if d not in w_contract and d not in w_batch]
    if len(w_contract) != 1 or len(w_free) != 1:
        raise NotInvertibleError(
            f"the known operand of `dot_general` must be a square matrix per batch (one contracting and one "
            f"free dim); it has {len(w_contract)} contracting and {len(w_free)} free dims (shape {w_shape})")
    n = w_shape[w_contract[0]]
    if w_shape[w_free[0]] != n:
        raise NotInvertibleError(
            f"the known operand of `dot_general` is not square: its contracting dim has size {n} and its "
            f"free dim size {w_shape[w_free[0]]} (shape {w_shape})")
    x_free = [d for d in range(len(x_shape)) if d not in x_contract and d not in x_batch]
    x_perm = x_batch + tuple(x_free) + x_contract
    nb, nf = len(x_batch), len(x_free)
    # y's dims are (batch..., lhs free..., rhs free...).
    if u == 0:
        y_perm = tuple(range(nb + nf + 1))
    else:
        y_perm = tuple(range(nb)) + tuple(range(nb + 1, nb + 1 + nf)) + (nb,)
    return _Layout(
        unknown=u,
        x_perm=x_perm,
        x_arranged_shape=tuple(x_shape[d] for d in x_perm),
        w_perm=w_batch + w_contract + tuple(w_free),
        y_perm=y_perm,
        batch_shape=tuple(x_shape[d] for d in x_batch),
        f=math.prod(x_shape[d] for d in x_free),
        n=n,
    )


def _arrange_y(y, lay: _Layout):
    return jnp.reshape(jnp.transpose(y, lay.y_perm), lay.batch_shape + (lay.f, lay.n))


def _unarrange_x(x2, lay: _Layout, dtype):
    x = jnp.reshape(x2, lay.x_arranged_shape).astype(dtype)
    return jnp.transpose(x, _inverse_perm(lay.x_perm))


def _solve(w, y, lay: _Layout):
    """X' from y' = X' @ A, with A the known matrix arranged (batch..., n, n)."""
    a = jnp.transpose(w, lay.w_perm)
    y2 = _arrange_y(y, lay)
    dtype = jnp.result_type(a.dtype, y2.dtype)
    xt = jnp.linalg.solve(jnp.swapaxes(a, -1, -2).astype(dtype), jnp.swapaxes(y2, -1, -2).astype(dtype))
    return a, jnp.swapaxes(xt, -1, -2)


def _dot_general_inverse(invals, outvals, *, dimension_numbers, **_):
    lay = _layout(invals, dimension_numbers)
    w = require_nonsingular(invals[1 - lay.unknown], _SINGULAR, axes=lay.w_perm[-2:])
    _, x2 = _solve(w, outvals[0], lay)
    solved = list(invals)
    solved[lay.unknown] = _unarrange_x(x2, lay, input_avals()[lay.unknown].dtype)
    return solved


def _dot_general_ildj(invals, outvals, *, dimension_numbers, **_):
    # X' = y' A^-1, each of the f rows of every batch: log|det| = -f * log|det A|.
    lay = _layout(invals, dimension_numbers)
    a = jnp.transpose(invals[1 - lay.unknown], lay.w_perm)
    return -lay.f * jnp.sum(jnp.linalg.slogdet(a)[1])


def _dot_general_ivjp(invals, outvals, out_cts, *, dimension_numbers, precision=None, **_):
    lay = _layout(invals, dimension_numbers)
    u, k = lay.unknown, 1 - lay.unknown
    a, x2 = _solve(require_nonsingular(invals[k], _SINGULAR, axes=lay.w_perm[-2:]), outvals[0], lay)
    ct2 = _arrange_y(out_cts[0], lay)
    ct_x2 = jnp.einsum("...fj,...kj->...fk", ct2, a, precision=precision)  # ct' @ A^T
    ct_a = jnp.einsum("...fk,...fj->...kj", x2, ct2, precision=precision)  # X'^T @ ct'
    w_dtype = input_avals()[k].dtype
    ct_w = jnp.transpose(ct_a, _inverse_perm(lay.w_perm)).astype(w_dtype)
    x_dtype = input_avals()[u].dtype
    solved, cts = list(invals), [None, None]
    solved[u] = _unarrange_x(x2, lay, x_dtype)
    cts[u] = _unarrange_x(ct_x2, lay, x_dtype)
    cts[k] = ct_w if is_float(w_dtype) else None
    return solved, cts


pack.register_inverse(P.dot_general_p, _dot_general_inverse, examples=[
    Example(jnp.matmul, reals(shape=(5, 4)), nonsingular(4), solve=[(0,)], label="x @ W"),
    Example(jnp.matmul, nonsingular(4), reals(shape=(4, 3)), solve=[(1,)], label="W @ x"),
    Example(jnp.matmul, nonsingular(4), nonsingular(4), solve=[(0,), (1,)], label="square @ square"),
    Example(jnp.matmul, nonsingular(4), reals(shape=(4,)), solve=[(1,)], label="W @ vector"),
    Example(jnp.matmul, reals(shape=(2, 5, 4)), nonsingular(4), solve=[(0,)], label="x with two free dims"),
    Example(lambda x, w: lax.dot_general(x, w, (((1,), (1,)), ((), ()))), reals(shape=(5, 4)), nonsingular(4),
            solve=[(0,)], label="x @ W.T"),
    Example(lambda x, w: jnp.einsum("bij,bjk->bik", x, w), reals(shape=(3, 5, 4)), nonsingular(4, batch=(3,)),
            solve=[(0,)], label="batched x @ W"),
    Example(lambda w, x: jnp.einsum("bij,bjk->bik", w, x), nonsingular(4, batch=(3,)), reals(shape=(3, 4, 2)),
            solve=[(1,)], label="batched W @ x"),
    Example(lambda x, w: lax.dot_general(x, w, (((0,), (1,)), ((2,), (0,)))), reals(shape=(4, 5, 3)),
            nonsingular(4, batch=(3,)), solve=[(0,)], label="batch and contracting dims not in front"),
], notes="the known operand must be a square (batch of) matrix, provably nonsingular; LU solve")
pack.register_ivjp(P.dot_general_p, _dot_general_ivjp)
pack.register_ildj(P.dot_general_p, _dot_general_ildj)

# --------------------------------------------------------------------------
# conv_general_dilated with a known, square 1x1 kernel (Glow's invertible 1x1 convolution)

_CONV_SINGULAR = "the known 1x1 kernel of `conv_general_dilated` (as a C x C matrix)"


class _Conv(NamedTuple):
    x_perm: tuple[int, ...]  # x dims -> (batch, spatial..., feature)
    y_perm: tuple[int, ...]  # y dims -> (batch, spatial..., feature), the same order
    w_perm: tuple[int, ...]  # kernel dims -> (out feature, in feature, spatial...)
    c: int


def _conv_layout(invals, *, dimension_numbers, window_strides, padding, lhs_dilation, feature_group_count,
                 batch_group_count, **_) -> _Conv:
    _solve_only(invals, {0: "input (lhs; the kernel must be known)"}, "conv_general_dilated")
    x_aval, w_aval = input_avals()
    if not is_float(x_aval):
        raise NotInvertibleError("`conv_general_dilated` on integers cannot be solved exactly")
    nd = len(x_aval.shape)
    if dimension_numbers is None:
        dimension_numbers = lax.ConvDimensionNumbers(*(tuple(range(nd)),) * 3)
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    w_shape = tuple(w_aval.shape)
    window = tuple(w_shape[d] for d in rhs_spec[2:])
    c_out, c_in = w_shape[rhs_spec[0]], w_shape[rhs_spec[1]]
    # Only a pointwise map of the feature vectors is invertible; rhs_dilation is a no-op on a 1x1 window.
    problems = []
    if any(s != 1 for s in window):
        problems.append(f"its kernel window is {window}, not all ones")
    if any(s != 1 for s in window_strides):
        problems.append(f"window_strides={tuple(window_strides)} drop positions")
    if any(tuple(p) != (0, 0) for p in padding):
        problems.append(f"padding={tuple(map(tuple, padding))} adds positions")
    if any(s != 1 for s in lhs_dilation):
        problems.append(f"lhs_dilation={tuple(lhs_dilation)} inserts zeros")
    if feature_group_count != 1 or batch_group_count != 1:
        problems.append(f"feature_group_count={feature_group_count}, batch_group_count={batch_group_count} (need 1)")
    if c_out != c_in:
        problems.append(f"its kernel maps {c_in} features to {c_out}, not square")
    if problems:
        raise NotInvertibleError("`conv_general_dilated` is only solved as an invertible 1x1 convolution (a square "
                                 "kernel with a 1x1 window, stride 1, no padding or input dilation, one group); "
                                 "here " + "; ".join(problems))
    arrange = lambda spec: (spec[0],) + tuple(spec[2:]) + (spec[1],)
    return _Conv(arrange(lhs_spec), arrange(out_spec), tuple(rhs_spec[:2]) + tuple(rhs_spec[2:]), c_in)


def _conv_matrix(w, lay: _Conv):
    """The kernel as the C_out x C_in matrix M with y[..., o] = sum_i M[o, i] x[..., i]."""
    return jnp.reshape(jnp.transpose(w, lay.w_perm), (lay.c, lay.c))


def _conv_solve(w, y, lay: _Conv):
    """x' (positions x C) from y' = x' @ M^T: x'^T = M^-1 y'^T, one LU solve for every position."""
    m = _conv_matrix(require_nonsingular(w, _CONV_SINGULAR, axes=lay.w_perm[:2]), lay)
    ya = jnp.transpose(y, lay.y_perm)
    dtype = jnp.result_type(m.dtype, ya.dtype)
    y2 = jnp.reshape(ya, (-1, lay.c)).astype(dtype)
    x2 = _mT(jnp.linalg.solve(m.astype(dtype), _mT(y2)))
    return m, ya.shape, x2


def _conv_unarrange(v2, shape, perm, i):
    return _as_input(jnp.transpose(jnp.reshape(v2, shape), _inverse_perm(perm)), i)


def _conv_inverse(invals, outvals, **params):
    # y[b, o, s] = sum_i M[o, i] x[b, i, s] at every position s: x = M^-1 y per position (M nonsingular).
    lay = _conv_layout(invals, **params)
    _, shape, x2 = _conv_solve(invals[1], outvals[0], lay)
    return [_conv_unarrange(x2, shape, lay.x_perm, 0), invals[1]]


def _conv_ildj(invals, outvals, **params):
    # x = M^-1 y at every position: log|det dx/dy| = -positions * log|det M|.
    lay = _conv_layout(invals, **params)
    positions = outvals[0].size // lay.c
    return -positions * jnp.linalg.slogdet(_conv_matrix(invals[1], lay))[1]


def _conv_ivjp(invals, outvals, out_cts, **params):
    lay = _conv_layout(invals, **params)
    w = invals[1]
    m, shape, x2 = _conv_solve(w, outvals[0], lay)
    ct = jnp.zeros_like(outvals[0]) if out_cts[0] is None else out_cts[0]
    ct2 = jnp.reshape(jnp.transpose(ct, lay.y_perm), (-1, lay.c)).astype(x2.dtype)
    # y' = x' M^T: ct_x' = ct' M and ct_M = ct'^T x' (summed over positions).
    ct_x2 = jnp.matmul(ct2, m.astype(x2.dtype), precision=_HIGHEST)
    ct_m = jnp.matmul(_mT(ct2), x2, precision=_HIGHEST)
    w_arranged = tuple(w.shape[d] for d in lay.w_perm)
    ct_w = jnp.transpose(jnp.reshape(ct_m, w_arranged), _inverse_perm(lay.w_perm))
    return ([_conv_unarrange(x2, shape, lay.x_perm, 0), w],
            [_conv_unarrange(ct_x2, shape, lay.x_perm, 0), _as_input(ct_w, 1)])


def _conv1x1(layout: str, kernel: str):
    """An invertible 1x1 convolution with the C x C matrix ``w`` as its kernel (Glow)."""
    def conv(x, w):
        k = w[:, :, None, None] if kernel == "OIHW" else w[None, None]
        return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=(layout, kernel, layout))
    return conv


pack.register_inverse(P.conv_general_dilated_p, _conv_inverse, examples=[
    Example(_conv1x1("NCHW", "OIHW"), reals(shape=(2, 3, 2, 2)), nonsingular(3), solve=[(0,)], label="NCHW/OIHW"),
    Example(_conv1x1("NHWC", "HWIO"), reals(shape=(2, 2, 2, 3)), nonsingular(3), solve=[(0,)], label="NHWC/HWIO"),
    Example(lambda x, w: lax.conv(x, w[:, :, None], (1,), "VALID"), reals(shape=(2, 3, 4)), nonsingular(3),
            solve=[(0,)], label="1-d"),
    Example(lambda x, w: lax.conv_general_dilated(x, w[:, :, None, None], (1, 1), "VALID", rhs_dilation=(2, 2)),
            reals(shape=(1, 4, 2, 3)), nonsingular(4), solve=[(0,)], label="rhs_dilation (a no-op on 1x1)"),
], notes="invertible 1x1 convolution: square kernel with a 1x1 window, provably nonsingular; stride 1, no padding, "
         "one group, any layout; the input is recovered, not the kernel")
pack.register_ivjp(P.conv_general_dilated_p, _conv_ivjp)
pack.register_ildj(P.conv_general_dilated_p, _conv_ildj)

# --------------------------------------------------------------------------
# triangular_solve: x = op(A)^-1 b (left_side) or b op(A)^-1, with A known


def _triangular_operand(a, *, lower, transpose_a, conjugate_a, unit_diagonal, **_):
    """``op(A)`` as the solve reads ``a``: only its ``lower`` (else upper)
    triangle, with ones on the diagonal when ``unit_diagonal``, then transposed
    and/or conjugated (``conjugate_a`` alone means ``conj(A)``)."""
    if unit_diagonal:
        t = jnp.tril(a, -1) if lower else jnp.triu(a, 1)
        t = t + jnp.eye(a.shape[-1], dtype=a.dtype)
    else:
        t = jnp.tril(a) if lower else jnp.triu(a)
    if transpose_a:
        t = _mT(t)
    return jnp.conj(t) if conjugate_a else t


def _triangular_solve_inverse(invals, outvals, *, left_side, **params):
    # op(A) x = b (or x op(A) = b): with A known, b is the product op(A) @ x (x @ op(A)) run forward,
    # a multiplication, so A need not be proven nonsingular (a singular A gave no finite x to start from).
    # A itself is not determined by x and b (n(n+1)/2 unknowns, not identifiable in general): refused.
    _solve_only(invals, {1: "right-hand side b (the triangular matrix a must be known)"}, "triangular_solve")
    a, x = invals[0], outvals[0]
    t = _triangular_operand(a, **params)
    b = _mm(t, x) if left_side else _mm(x, t)
    return [a, _as_input(b, 1)]


def _triangular_solve_ildj(invals, outvals, *, left_side, lower, transpose_a, conjugate_a, unit_diagonal):
    # b = op(A) x column by column (x op(A) row by row): log|det db/dx| is
    # log|det A| = sum log|diag A| once per column (row) of x, per batch.
    if unit_diagonal:
        return 0.0
    a, x = invals[0], outvals[0]
    per_matrix = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(a, axis1=-2, axis2=-1))), axis=-1)
    count = x.shape[-1] if left_side else x.shape[-2]
    return count * jnp.sum(per_matrix)


def _triangular_solve_ivjp(invals, outvals, out_cts, *, left_side, lower, transpose_a, conjugate_a, unit_diagonal):
    params = dict(lower=lower, transpose_a=transpose_a, conjugate_a=conjugate_a, unit_diagonal=unit_diagonal)
    a, b = _triangular_solve_inverse(invals, outvals, left_side=left_side, **params)
    x = outvals[0]
    ct = jnp.zeros_like(x) if out_cts[0] is None else out_cts[0]
    # x is linear in b: ct_b = op(A)^-T ct, a solve with transpose_a flipped (JAX's transpose rule).
    ct_b = lax.linalg.triangular_solve(a, ct, left_side=left_side, **{**params, "transpose_a": not transpose_a})
    # dx = -op(A)^-1 op(dA) x (left) or -x op(dA) op(A)^-1 (right), so ct_op(A) = -ct_b x^T (or -x^T ct_b),
    # pulled back through op and restricted to the entries of a the solve reads.
    g = -(_mm(ct_b, _mT(x)) if left_side else _mm(_mT(x), ct_b))
    if conjugate_a:
        g = jnp.conj(g)
    if transpose_a:
        g = _mT(g)
    k = (-1 if lower else 1) if unit_diagonal else 0
    g = jnp.tril(g, k) if lower else jnp.triu(g, k)
    return [a, b], [_as_input(g, 0), _as_input(ct_b, 1)]


pack.register_inverse(P.triangular_solve_p, _triangular_solve_inverse, examples=[
    Example(lambda a, b: lax.linalg.triangular_solve(a, b, left_side=True, lower=True), nonsingular(4, lower=True),
            reals(shape=(4, 3)), solve=[(1,)], label="lower, left"),
    Example(lambda a, b: lax.linalg.triangular_solve(a, b, left_side=False, lower=False, transpose_a=True),
            nonsingular(4, lower=False), reals(shape=(3, 4)), solve=[(1,)], label="upper, right, transposed"),
    Example(lambda a, b: lax.linalg.triangular_solve(a, b, left_side=True, lower=False, transpose_a=True,
                                                     conjugate_a=True, unit_diagonal=True),
            nonsingular(4), reals(shape=(4, 2)), solve=[(1,)], label="full a, upper unit triangle read, adjoint"),
    Example(lambda a, b: jax.scipy.linalg.solve_triangular(a, b, lower=True, trans=1), nonsingular(3, batch=(2,)),
            reals(shape=(2, 3, 2)), solve=[(1,)], label="batched solve_triangular"),
], notes="recovers b = op(a) @ x (or x @ op(a)) from the known triangular a; a itself is not recoverable")
pack.register_ivjp(P.triangular_solve_p, _triangular_solve_ivjp)
pack.register_ildj(P.triangular_solve_p, _triangular_solve_ildj)

# --------------------------------------------------------------------------
# tridiagonal_solve: x = T^-1 b, T = tridiag(dl, d, du) known


def _tridiagonal_product(dl, d, du, x):
    # (T x)[i] = dl[i] x[i-1] + d[i] x[i] + du[i] x[i+1]; dl[0] and du[m-1] lie outside T and are never read.
    zero = jnp.zeros_like(x[..., :1, :])
    below = jnp.concatenate([zero, dl[..., 1:, None] * x[..., :-1, :]], axis=-2)
    above = jnp.concatenate([du[..., :-1, None] * x[..., 1:, :], zero], axis=-2)
    return d[..., None] * x + below + above


def _tridiagonal_known(invals, perturb_singular):
    _solve_only(invals, {3: "right-hand side b (dl, d and du must be known)"}, "tridiagonal_solve")
    if perturb_singular:
        raise NotInvertibleError("`tridiagonal_solve` with perturb_singular=True solves a perturbed system when T "
                                 "is singular, so T @ x need not give back b")
    return invals[:3]


def _tridiagonal_solve_inverse(invals, outvals, *, perturb_singular=False, **_):
    # T x = b with T known: b is the product T @ x run forward (no division).
    dl, d, du = _tridiagonal_known(invals, perturb_singular)
    return [dl, d, du, _as_input(_tridiagonal_product(dl, d, du, outvals[0]), 3)]


def _tridiagonal_solve_ivjp(invals, outvals, out_cts, *, perturb_singular=False, **_):
    dl, d, du = _tridiagonal_known(invals, perturb_singular)
    x = outvals[0]
    b = _as_input(_tridiagonal_product(dl, d, du, x), 3)
    ct = jnp.zeros_like(x) if out_cts[0] is None else out_cts[0]
    # ct_b = T^-T ct: T^T is tridiagonal with sub-diagonal du[i-1] and super-diagonal dl[i+1].
    zero = jnp.zeros_like(d[..., :1])
    ct_b = lax.linalg.tridiagonal_solve(jnp.concatenate([zero, du[..., :-1]], -1), d,
                                        jnp.concatenate([dl[..., 1:], zero], -1), ct)
    # dx = -T^-1 dT x, so ct_T[i, j] = -(ct_b x^T)[i, j] on T's three diagonals (none for dl[0], du[m-1]).
    ct_d = -jnp.sum(ct_b * x, axis=-1)
    ct_dl = jnp.concatenate([zero, -jnp.sum(ct_b[..., 1:, :] * x[..., :-1, :], axis=-1)], -1)
    ct_du = jnp.concatenate([-jnp.sum(ct_b[..., :-1, :] * x[..., 1:, :], axis=-1), zero], -1)
    return [dl, d, du, b], [_as_input(ct_dl, 0), _as_input(ct_d, 1), _as_input(ct_du, 2), _as_input(ct_b, 3)]


def _tridiagonal(dl, d, du, b):
    """``T x = b`` with the (m,) vectors given; ``dl[0]``, ``du[-1]`` are outside T (any value)."""
    return lax.linalg.tridiagonal_solve(dl, d + 4.0, du, b)


pack.register_inverse(P.tridiagonal_solve_p, _tridiagonal_solve_inverse, examples=[
    Example(_tridiagonal, reals(-1, 1, shape=(5,)), reals(-1, 1, shape=(5,)), reals(-1, 1, shape=(5,)),
            reals(shape=(5, 2)), solve=[(3,)], label="diagonally dominant"),
    Example(_tridiagonal, reals(-1, 1, shape=(2, 4)), reals(-1, 1, shape=(2, 4)), reals(-1, 1, shape=(2, 4)),
            reals(shape=(2, 4, 3)), solve=[(3,)], label="batched"),
], notes="recovers b = T @ x from the known diagonals; the diagonals are not recoverable")
pack.register_ivjp(P.tridiagonal_solve_p, _tridiagonal_solve_ivjp)

# --------------------------------------------------------------------------
# fft: lax.fft is unnormalised forward and 1/n-normalised backward (numpy's "backward" convention:
# jnp.fft.ifft adds no scaling outside the primitive), so IFFT(FFT(x)) == x and IRFFT(RFFT(x), n) == x.

_FFT = lax.FftType
_FFT_UNDO = {_FFT.FFT: _FFT.IFFT, _FFT.IFFT: _FFT.FFT, _FFT.RFFT: _FFT.IRFFT}


def _fft_inverse(invals, outvals, *, fft_type, fft_lengths, **_):
    # FFT <-> IFFT undo each other; RFFT (real x) is undone by IRFFT with the same fft_lengths.
    kind = _FFT(fft_type)
    if kind == _FFT.IRFFT:
        raise NotInvertibleError(
            "IRFFT is not injective: it ignores the imaginary parts of the zero-frequency (and Nyquist) bins, "
            "so its input is saved; jaxinv.inverse recovers the Hermitian-consistent input (principal branch)")
    return [_as_input(lax.fft(outvals[0], _FFT_UNDO[kind], tuple(fft_lengths)))]


def _fft_principal(invals, outvals, *, fft_type, fft_lengths, **params):
    # IRFFT keeps only the Hermitian-consistent part of its input (DC and Nyquist bins real, ...);
    # RFFT of the output gives that part back: the minimum-norm input with this output.
    if _FFT(fft_type) != _FFT.IRFFT:
        return _fft_inverse(invals, outvals, fft_type=fft_type, fft_lengths=fft_lengths, **params)
    return [_as_input(lax.fft(outvals[0], _FFT.RFFT, tuple(fft_lengths)))]


def _fft_ivjp(invals, outvals, out_cts, *, fft_type, fft_lengths, **params):
    (x,) = _fft_inverse(invals, outvals, fft_type=fft_type, fft_lengths=fft_lengths, **params)
    ct = jnp.zeros_like(outvals[0]) if out_cts[0] is None else out_cts[0]
    kind, lengths = _FFT(fft_type), tuple(fft_lengths)
    if kind in (_FFT.FFT, _FFT.IFFT):
        # The DFT matrix is symmetric, so the (bilinear) transpose of each transform is itself.
        return [x], [lax.fft(ct, kind, lengths)]
    # RFFT: JAX's own transpose rule of the linear map.
    (ct_x,) = jax.linear_transpose(lambda v: lax.fft(v, kind, lengths), x)(ct)
    return [x], [ct_x]


def _complex_fft(fn):
    return lambda re, im: fn(lax.complex(re, im))


pack.register_inverse(P.fft_p, _fft_inverse, examples=[
    Example(_complex_fft(jnp.fft.fft), reals(shape=(2, 5)), reals(shape=(2, 5)), label="FFT"),
    Example(_complex_fft(jnp.fft.ifft), reals(shape=(2, 4)), reals(shape=(2, 4)), label="IFFT"),
    Example(_complex_fft(jnp.fft.fft2), reals(shape=(3, 4)), reals(shape=(3, 4)), label="2-d FFT"),
    Example(_complex_fft(lambda z: jnp.fft.ifftn(z, axes=(0, 2))), reals(shape=(2, 3, 4)), reals(shape=(2, 3, 4)),
            label="IFFT over axes 0 and 2"),
    Example(jnp.fft.rfft, reals(shape=(2, 6)), label="RFFT, even n"),
    Example(jnp.fft.rfft, reals(shape=(2, 5)), label="RFFT, odd n"),
    Example(jnp.fft.rfft2, reals(shape=(3, 4)), label="2-d RFFT"),
], notes="FFT <-> IFFT, RFFT -> IRFFT with the same fft_lengths; IRFFT is not injective (its input is saved)")
pack.register_ivjp(P.fft_p, _fft_ivjp)
pack.register_inverse(P.fft_p, _fft_principal, principal_branch=True, examples=[
    Example(jnp.fft.irfft, reals(shape=(2, 5)), label="IRFFT of a real spectrum, even n"),
    Example(lambda x: jnp.fft.irfft(x, n=7), reals(shape=(2, 4)), label="IRFFT of a real spectrum, odd n"),
    Example(lambda x: jnp.fft.irfft(jnp.fft.rfft(x)), reals(shape=(2, 6)), label="IRFFT of an RFFT"),
], notes="IRFFT -> RFFT: the Hermitian-consistent input (imaginary parts of the DC/Nyquist bins are lost)")

# --------------------------------------------------------------------------
# decompositions: the input reassembled from all the factors (cotangents: JAX's VJP)


def _cholesky_inverse(invals, outvals, **_):
    # A = L L^H. The primitive reads only A's lower triangle (jnp.linalg.cholesky symmetrises A first)
    # and may leave the strict upper triangle of its output unzeroed (LAPACK potrf): use tril(L).
    (l,) = _all_outputs(outvals, ["L"], "cholesky")
    l = jnp.tril(l)
    return [_as_input(_mm(l, _mH(l)))]


def _spd_cholesky(a):
    return lax.linalg.cholesky(a, symmetrize_input=False)


pack.register_inverse(P.cholesky_p, _cholesky_inverse, examples=[
    Example(jnp.linalg.cholesky, nonsingular(4, spd=True), label="jnp.linalg.cholesky"),
    Example(_spd_cholesky, nonsingular(3, batch=(2,), spd=True), label="batched, not symmetrised"),
], notes="A = L L^H; needs the factor; assumes a Hermitian input (only its lower triangle is read)")


def _eigh_inverse(invals, outvals, *, subset_by_index=None, **_):
    # A = V diag(w) V^H for Hermitian A (the outputs are (v, w); any eigenvalue order, as long as the
    # columns of V match w). Only one triangle of A is read, so A is assumed Hermitian, as jnp.linalg.eigh
    # and lax.linalg.eigh(symmetrize_input=True) make it.
    v, w = _all_outputs(outvals, ["v (eigenvectors)", "w (eigenvalues)"], "eigh")
    _full_subset(subset_by_index, input_avals()[0].shape[-1], "eigh")
    return [_as_input(_mm(v * w[..., None, :].astype(v.dtype), _mH(v)))]


pack.register_inverse(P.eigh_p, _eigh_inverse, examples=[
    Example(jnp.linalg.eigh, nonsingular(4, spd=True), label="jnp.linalg.eigh"),
    Example(lambda a: lax.linalg.eigh(a, lower=False, sort_eigenvalues=False), nonsingular(3, batch=(2,), spd=True),
            label="upper, unsorted, batched"),
], notes="A = V diag(w) V^H; needs both outputs and the whole spectrum; assumes a Hermitian input")
# The VJPs of eigh and svd divide by the gaps between eigenvalues (singular
# values): rebuilt with rounding, a repeated value (a rank-1 matrix's zeros)
# becomes a tiny gap and the gradient NaN where jax.grad's is 0. The gradient
# path saves their input instead (tests/test_fuzz_findings.py: svd with close singular values).
pack.register_saturating(P.eigh_p, "its VJP divides by eigenvalue gaps, which a rebuilt input perturbs")


def _svd_inverse(invals, outvals, *, compute_uv=True, subset_by_index=None, **_):
    # A = U[:, :k] diag(s) Vh[:k, :] (outputs (s, u, vh); full_matrices only pads U, Vh with unused columns).
    if not compute_uv:
        raise NotInvertibleError("`svd` with compute_uv=False keeps only the singular values; "
                                 "the input cannot be reassembled without U and V")
    s, u, vh = _all_outputs(outvals, ["s", "u", "vh"], "svd")
    _full_subset(subset_by_index, min(input_avals()[0].shape[-2:]), "svd")
    k = s.shape[-1]
    return [_as_input(_mm(u[..., :, :k] * s[..., None, :].astype(u.dtype), vh[..., :k, :]))]


pack.register_inverse(P.svd_p, _svd_inverse, examples=[
    Example(jnp.linalg.svd, nonsingular(4), label="square, full_matrices"),
    Example(lambda a: jnp.linalg.svd(a, full_matrices=False), reals(shape=(4, 3)), label="tall, reduced"),
    Example(lambda a: jnp.linalg.svd(a, full_matrices=False), reals(shape=(2, 3, 4)), label="wide, batched"),
], notes="A = U diag(s) V^H; needs U, s and V (compute_uv) and the whole spectrum")
pack.register_saturating(P.svd_p, "its VJP divides by singular-value gaps, which a rebuilt input perturbs")


def _qr_inverse(invals, outvals, *, pivoting=False, **_):
    # A = Q R (either mode: reduced Q is m x k with R k x n, full Q is m x m with R m x n);
    # with pivoting, A[:, p] = Q R, so A = (Q R)[:, argsort(p)].
    names = ["q", "r", "p (column permutation)"] if pivoting else ["q", "r"]
    q, r, *p = _all_outputs(outvals, names, "qr")
    a = _mm(q, jnp.triu(r))
    if pivoting:
        undo = jnp.argsort(p[0], axis=-1)
        a = jnp.take_along_axis(a, jnp.broadcast_to(undo[..., None, :], a.shape), axis=-1)
    return [_as_input(a)]


pack.register_inverse(P.qr_p, _qr_inverse, examples=[
    Example(jnp.linalg.qr, nonsingular(4), label="square"),
    Example(jnp.linalg.qr, reals(shape=(2, 4, 3)), label="tall, reduced, batched"),
    Example(lambda a: jnp.linalg.qr(a, mode="complete"), reals(shape=(3, 4)), label="wide, complete"),
    Example(lambda a: jax.scipy.linalg.qr(a, pivoting=True), reals(shape=(4, 3)), label="column pivoting"),
], notes="A = Q R (A[:, p] = Q R with pivoting); needs every output")


def _lu_inverse(invals, outvals, **_):
    # A[perm] = L U, with L (unit lower, m x k) and U (upper, k x n) packed in `lu`: A = (L U)[argsort(perm)].
    # The permutation is the third output, or is rebuilt from the pivots (lu_factor reads only lu, pivots).
    lu, pivots, perm = outvals
    if lu is None or (pivots is None and perm is None):
        _all_outputs([lu, perm], ["lu", "permutation (or pivots)"], "lu")
    m, n = lu.shape[-2:]
    k = min(m, n)
    if perm is None:
        perm = lax.linalg.lu_pivots_to_permutation(pivots, m)
    l = jnp.tril(lu[..., :, :k], -1) + jnp.eye(m, k, dtype=lu.dtype)
    u = jnp.triu(lu[..., :k, :])
    undo = jnp.argsort(perm, axis=-1)
    a = jnp.take_along_axis(_mm(l, u), jnp.broadcast_to(undo[..., :, None], (*undo.shape, n)), axis=-2)
    return [_as_input(a)]


pack.register_inverse(P.lu_p, _lu_inverse, examples=[
    Example(lax.linalg.lu, nonsingular(4), label="square"),
    Example(lax.linalg.lu, reals(shape=(2, 4, 3)), label="tall, batched"),
    Example(lax.linalg.lu, reals(shape=(3, 5)), label="wide"),
    Example(lambda a: jax.scipy.linalg.lu_factor(a), nonsingular(4), label="lu_factor (lu and pivots only)"),
], notes="A = P L U from lu and the permutation (or the pivots)")
