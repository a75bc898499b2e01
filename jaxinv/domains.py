"""Declared domains: where a rule is meant to work, as data.

A rule pack declares, next to every rule, one or more ``Example``: a small
function that contains the primitive (so its params are exactly what JAX puts
in jaxprs) and, for each argument, the set it is drawn from. The conformance
harness (``jaxinv.testing``) draws random arguments from these sets
(with hypothesis), finds the primitive's equation and checks the rule on it;
``docs/rules.md`` prints them as each rule's domain.

This module only describes sets; it imports neither hypothesis nor the
registry, so declaring a domain costs nothing at ``import jaxinv``.

Example:
    ```python
    Example(jnp.exp, reals(-10, 10))              # exp on [-10, 10], any float dtype
    Example(jnp.multiply, reals(), nonzero())     # solve either factor
    Example(jnp.dot, reals(shape=(3, 4)), nonsingular(4), solve=[(0,)])
    ```
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

Shape = tuple[int, ...]
DEFAULT_SHAPE: Shape = (2, 3)


def _shape(shape: Sequence[int] | None) -> Shape:
    return DEFAULT_SHAPE if shape is None else tuple(int(d) for d in shape)


@dataclasses.dataclass(frozen=True)
class Reals:
    """Floats in ``[lo, hi]`` (with ``|x| >= away_from_zero``), in the float
    dtype under test unless ``dtype`` is given."""

    lo: float = -2.0
    hi: float = 2.0
    shape: Shape = DEFAULT_SHAPE
    away_from_zero: float = 0.0
    dtype: Any = None

    def describe(self) -> str:
        where = f"[{self.lo:g}, {self.hi:g}]"
        if self.away_from_zero:
            where += f", |x| >= {self.away_from_zero:g}"
        return where


@dataclasses.dataclass(frozen=True)
class Integers:
    """Integers drawn from ``values``, of integer (or bool) ``dtype``."""

    values: tuple = (-3, -1, 0, 1, 3, 5)
    shape: Shape = DEFAULT_SHAPE
    dtype: Any = np.int32

    def describe(self) -> str:
        return f"{np.dtype(self.dtype).name} in {{{', '.join(map(str, sorted(set(self.values))))}}}"


@dataclasses.dataclass(frozen=True)
class Booleans:
    """Booleans (``p_true`` of them True on average)."""

    shape: Shape = DEFAULT_SHAPE
    p_true: float = 0.5

    def describe(self) -> str:
        return "bool"


@dataclasses.dataclass(frozen=True)
class Nonsingular:
    """Well-conditioned ``n x n`` matrices (``(n + 1) * I`` plus entries in
    ``[-1, 1]``: strictly diagonally dominant, since ``n * I`` plus ``-1``
    everywhere is singular), with leading ``batch`` dims."""

    n: int = 4
    batch: Shape = ()
    lower: bool | None = None  # keep only the lower (True) / upper (False) triangle
    symmetric_positive: bool = False  # A A^T + n I instead
    dtype: Any = None

    @property
    def shape(self) -> Shape:
        return self.batch + (self.n, self.n)

    def from_entries(self, a: np.ndarray) -> np.ndarray:
        """A member of this set made from entries ``a`` in ``[-1, 1]`` of its shape."""
        n = self.n
        if self.symmetric_positive:
            a = a @ np.swapaxes(a, -1, -2) + n * np.eye(n)
        else:
            a = a + (n + 1) * np.eye(n)  # strictly dominant: |a_ii| >= n > sum of the others
        if self.lower is True:
            a = np.tril(a)
        elif self.lower is False:
            a = np.triu(a)
        return a

    def describe(self) -> str:
        kind = "SPD" if self.symmetric_positive else "nonsingular"
        if self.lower is not None:
            kind = ("lower" if self.lower else "upper") + "-triangular " + kind
        return f"{kind} {self.n}x{self.n}"


@dataclasses.dataclass(frozen=True)
class Fixed:
    """Always this value (a permutation, a mask, a key)."""

    value: Any

    @property
    def shape(self) -> Shape:
        return tuple(np.shape(self.value))

    def describe(self) -> str:
        return "fixed"


Domain = Reals | Integers | Booleans | Nonsingular | Fixed


def reals(lo: float = -2.0, hi: float = 2.0, *, shape: Sequence[int] | None = None, dtype: Any = None) -> Reals:
    """Floats in ``[lo, hi]``.

    Example:
        ```python
        reals(-10, 10)                  # shape (2, 3), in [-10, 10]
        reals(0.1, 2.0, shape=(3, 4))
        ```
    """
    return Reals(float(lo), float(hi), _shape(shape), dtype=dtype)


def nonzero(lo: float = 0.5, hi: float = 2.0, *, shape: Sequence[int] | None = None, dtype: Any = None) -> Reals:
    """Floats with ``lo <= |x| <= hi``, of either sign.

    Example:
        ```python
        nonzero()                       # a divisor
        ```
    """
    return Reals(-float(hi), float(hi), _shape(shape), away_from_zero=float(lo), dtype=dtype)


def positive(lo: float = 0.1, hi: float = 10.0, *, shape: Sequence[int] | None = None, dtype: Any = None) -> Reals:
    """Floats in ``[lo, hi]`` with ``lo > 0``.

    Example:
        ```python
        positive(1e-3, 1e3)             # log's domain
        ```
    """
    if lo <= 0:
        raise ValueError(f"positive() needs lo > 0, got {lo}")
    return Reals(float(lo), float(hi), _shape(shape), dtype=dtype)


def integers(values: Sequence[int] = (-3, -1, 0, 1, 3, 5), *, shape: Sequence[int] | None = None,
             dtype: Any = np.int32) -> Integers:
    """Integers drawn from ``values``.

    Example:
        ```python
        integers((0, 1, 2), dtype=np.uint8)
        ```
    """
    return Integers(tuple(values), _shape(shape), dtype)


def booleans(*, shape: Sequence[int] | None = None, p_true: float = 0.5) -> Booleans:
    """Booleans.

    Example:
        ```python
        booleans(shape=(4,))
        ```
    """
    return Booleans(_shape(shape), p_true)


def nonsingular(n: int = 4, *, batch: Sequence[int] = (), lower: bool | None = None, spd: bool = False,
                dtype: Any = None) -> Nonsingular:
    """Well-conditioned square matrices.

    Example:
        ```python
        nonsingular(4)                          # 4 x 4
        nonsingular(3, batch=(2,), lower=True)  # two lower-triangular 3 x 3
        ```
    """
    return Nonsingular(int(n), tuple(batch), lower, spd, dtype)


def fixed(value: Any) -> Fixed:
    """A constant argument.

    Example:
        ```python
        fixed(np.array([2, 0, 1]))      # a permutation
        ```
    """
    return Fixed(value)


@dataclasses.dataclass(frozen=True)
class Example:
    """Where a rule must work: ``fn(*args)`` contains the primitive, each
    ``args[i]`` is a domain (or a plain value), and ``solve`` lists the
    patterns of unknown inputs *of the primitive's equation* the rule must
    solve (by input index). ``solve=None`` means: each input alone and all
    together are tried, and at least one must be solved. ``tolerance`` scales
    the harness's tolerances (a few thousand ulps) for ill-conditioned rules.

    Example:
        ```python
        Example(jnp.exp, reals(-10, 10))
        Example(lambda a, b: a * b, reals(), nonzero(), solve=[(0,), (1,)])
        ```
    """

    fn: Callable
    args: tuple
    solve: tuple[tuple[int, ...], ...] | None = None
    label: str = ""
    tolerance: float = 1.0

    def __init__(self, fn: Callable, *args: Any, solve: Sequence[Sequence[int]] | None = None, label: str = "",
                 tolerance: float = 1.0):
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "args", tuple(args))
        object.__setattr__(self, "solve", None if solve is None else tuple(tuple(p) for p in solve))
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "tolerance", float(tolerance))

    def describe(self) -> str:
        """The domain in words, as docs/rules.md prints it (``float in [-2, 2]; fixed``)."""
        parts = [a.describe() if hasattr(a, "describe") else "fixed" for a in self.args]
        return "; ".join(parts)


def as_domain(arg: Any) -> Domain:
    """A plain value declared as an argument means ``fixed``."""
    if isinstance(arg, (Reals, Integers, Booleans, Nonsingular, Fixed)):
        return arg
    return Fixed(arg)


# The public surface (the API reference documents each name).
__all__ = ["Example", "booleans", "fixed", "integers", "nonsingular", "nonzero", "positive", "reals"]
