"""Facts: what the planner proves about a value, and what rules ask for.

A rule that divides by a known operand, solves with a known matrix or reads a
constant predicate cannot check values while jaxinv plans (it sees abstract
tracers), so it asks for a ``Fact`` (``registry.require_nonzero``,
``require_nonsingular``, ``require_fact``). The planner proves facts from
concrete values (``of_value``), from the primitives that produce a value
(``exp`` is nonzero, ``iota`` is an iota) and from the user's markers
(``jaxinv.nonzero``).

Example:
    ```python
    of_value(2 * np.eye(3))                          # {Fact('nonsingular', (0, 1))}
    selects(1) in of_value(np.ones(4, np.int32))     # True
    ```
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

# A concrete matrix counts as nonsingular when its condition number is below this.
NONSINGULAR_CONDITION = 1e6
# Larger concrete arrays are not checked for nonsingularity (the SVDs cost time).
NONSINGULAR_MAX_ELEMENTS = 1 << 16


@dataclasses.dataclass(frozen=True)
class Fact:
    """A proven property: ``name`` with integer ``args``, printed ``name:a,b``.

    ``Fact("nonzero")``: no element is zero. ``Fact("nonsingular")``: asserted
    nonsingular by the user (over whatever axes a rule solves with).
    ``Fact("nonsingular", (a, b))``: a well-conditioned matrix over axes ``a <
    b``, batched over the others. ``Fact("iota", (d,))``: equal to an iota
    along ``d``. ``Fact("selects", (k,))``: a constant predicate equal to ``k``
    everywhere.
    """
    name: str
    args: tuple[int, ...] = ()

    def __str__(self) -> str:
        return self.name + (":" + ",".join(map(str, self.args)) if self.args else "")

    @classmethod
    def parse(cls, text: str) -> "Fact":
        """``Fact.parse("nonsingular:0,1") == nonsingular_over(2, (0, 1))``."""
        name, _, args = text.partition(":")
        return cls(name, tuple(int(a) for a in args.split(",")) if args else ())


NONZERO = Fact("nonzero")
NONSINGULAR = Fact("nonsingular")


def nonsingular_over(ndim: int, axes: tuple[int, int]) -> Fact:
    """The fact "nonsingular as a matrix over these two axes" (axes normalised)."""
    a, b = sorted(ax % ndim for ax in axes)
    return Fact("nonsingular", (a, b))


def iota_along(dimension: int) -> Fact:
    """The fact "equal to ``lax.broadcasted_iota(..., dimension)``"."""
    return Fact("iota", (dimension,))


def selects(k: int) -> Fact:
    """The fact "a constant ``select_n`` predicate equal to ``k`` everywhere"."""
    return Fact("selects", (k,))


def as_fact(fact: Fact | str) -> Fact:
    """A ``Fact`` from itself or its text (``"selects:1"``)."""
    return fact if isinstance(fact, Fact) else Fact.parse(fact)


def of_value(value) -> frozenset[Fact]:
    """The facts a concrete value proves (none for a tracer or a key).

    Example:
        ```python
        of_value(np.array([1.0, 2.0]))      # frozenset({Fact('nonzero')})
        ```
    """
    try:
        arr = np.asarray(value)
    except Exception:  # tracers, keys
        return frozenset()
    if arr.dtype == object or arr.size == 0 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        return frozenset()
    facts = {NONZERO} if bool(np.all(arr != 0)) else set()
    if (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)) and bool(np.all(arr == arr.flat[0])):
        facts.add(selects(int(arr.flat[0])))
    if arr.ndim >= 2 and np.issubdtype(arr.dtype, np.inexact) and arr.size <= NONSINGULAR_MAX_ELEMENTS:
        # A rule names the two axes it solves with (a 1x1 conv kernel OIHW: 0
        # and 1, not the trailing 1x1 window, which any nonzero kernel passes).
        for a, b in itertools.combinations(range(arr.ndim), 2):
            if arr.shape[a] != arr.shape[b]:
                continue
            with np.errstate(all="ignore"):
                m = np.moveaxis(arr, (a, b), (-2, -1))
                cond = np.linalg.cond(m.astype(np.complex128 if np.iscomplexobj(m) else np.float64))
            if bool(np.all(cond < NONSINGULAR_CONDITION)):
                facts.add(nonsingular_over(arr.ndim, (a, b)))
    return frozenset(facts)
