"""Rules for linear algebra: ``dot_general`` with a known square matrix.

Only registrations live here (see ``jaxinv/registry.py`` for the conventions).

``y = dot_general(lhs, rhs)`` is solvable for one unknown operand ``X`` when the
known operand ``W`` is, per batch, a square matrix: besides its batch dims it
has exactly one contracting dim and one free dim, of equal size ``n``.  ``X``
may have any number of free dims (they are the columns of the linear system).

Both layouts (``y = X @ W`` and ``y = W @ X``) reduce to one form.  Arrange
(transpose, then flatten ``X``'s free dims into ``F``)

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
from typing import NamedTuple

import jax.numpy as jnp
from jax.extend.core import primitives as P

from jax import lax

from jaxinv._version import __version__
from jaxinv.domains import Example, nonsingular, reals
from jaxinv.packs import RulePack
from jaxinv.registry import NotInvertibleError, input_avals, require_nonsingular

pack = RulePack("jaxinv.linalg", __version__, jax_versions=">=0.10", builtin=True,
                description="linear algebra: solves with known square matrices")

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
    if not jnp.issubdtype(input_avals()[u].dtype, jnp.inexact):
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


def _inverse_perm(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


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
    w = require_nonsingular(invals[1 - lay.unknown], _SINGULAR)
    _, x2 = _solve(w, outvals[0], lay)
    solved = list(invals)
    solved[lay.unknown] = _unarrange_x(x2, lay, input_avals()[lay.unknown].dtype)
    return solved


def _dot_general_ivjp(invals, outvals, out_cts, *, dimension_numbers, precision=None, **_):
    lay = _layout(invals, dimension_numbers)
    u, k = lay.unknown, 1 - lay.unknown
    a, x2 = _solve(require_nonsingular(invals[k], _SINGULAR), outvals[0], lay)
    ct2 = _arrange_y(out_cts[0], lay)
    ct_x2 = jnp.einsum("...fj,...kj->...fk", ct2, a, precision=precision)  # ct' @ A^T
    ct_a = jnp.einsum("...fk,...fj->...kj", x2, ct2, precision=precision)  # X'^T @ ct'
    w_dtype = input_avals()[k].dtype
    ct_w = jnp.transpose(ct_a, _inverse_perm(lay.w_perm)).astype(w_dtype)
    x_dtype = input_avals()[u].dtype
    solved, cts = list(invals), [None, None]
    solved[u] = _unarrange_x(x2, lay, x_dtype)
    cts[u] = _unarrange_x(ct_x2, lay, x_dtype)
    cts[k] = ct_w if jnp.issubdtype(w_dtype, jnp.inexact) else None
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
