"""Partial knowledge: which *elements* of an array the backward pass knows.

People write couplings with slices (``x[..., :d]``, ``x[:, ::2]``), unpack a
stacked axis (``x1, x2 = x``), roll, permute with a constant index array,
assemble with ``.at[...].set`` or mix with a constant 0/1 mask (RealNVP's
checkerboard). No single equation of such code is invertible, but together
they are: two slices that cover ``x`` tell all of it. The planner therefore
tracks, for a value it does not know whole, a boolean **mask** of the elements
it does know, and moves masks through two kinds of equations:

* **selections**: equations each of whose output elements is a copy of one
  input element (or a constant): ``slice``, ``squeeze``, ``reshape``,
  ``transpose``, ``rev``, ``broadcast_in_dim``, ``concatenate``, ``split``,
  ``pad``, ``dynamic_slice``/``gather`` with constant indices,
  ``dynamic_update_slice``/``scatter`` with constant indices, ``select_n``
  with a constant predicate, and ``mul`` by a constant 0/1 mask. Which input
  element each output element copies is found once, at plan time, by running
  the equation on integer *tags* (``selection``); knowledge then moves
  forward (outputs from inputs) and backward (inputs from outputs).
* **elementwise** equations: an output element is known where its inputs are;
  an input element is solved by the primitive's inverse rule where the output
  and the other inputs are known.

A value whose mask fills up is known: the planner records it with a
``Source`` of kind ``ASSEMBLE`` listing the ``Piece`` steps to replay.

At run time a partial value is a full-shaped array that is *zero* outside its
mask. A selection's backward step is the transpose of the (linear) selection,
applied to the known outputs with one representative per copied element, so
it needs no gather tables; other steps are the equation (or its inverse rule)
evaluated on the partial values, then masked. Masks are stored compressed:
axes along which a mask is constant (the batch axis) are reduced to size 1.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal, Var
from jax.extend.core import primitives as P

from jaxinv._src.compat import literal_value, split_p
from jaxinv._src.flatten import eval_eqn
from jaxinv._src.dtypes import is_float

# Beyond this many elements (inputs and outputs of one equation), masks and
# tags would cost more at plan time than they are worth: no partial knowledge.
MAX_ELEMENTS = 1 << 24

# Selections, with the inputs that must be concrete constants (indices, a
# predicate): "tail" means every input after the first (``dynamic_slice``).
_STATIC_INPUTS: dict[Any, tuple[int, ...] | str] = {
    P.slice_p: (), P.squeeze_p: (), P.reshape_p: "tail", P.transpose_p: (), P.rev_p: (),
    P.broadcast_in_dim_p: "tail", P.copy_p: (), split_p: (), P.concatenate_p: (), P.pad_p: (),
    P.dynamic_slice_p: "tail", P.gather_p: (1,), P.select_n_p: (0,),
}
_DUS_STATIC_FROM = 2   # dynamic_update_slice(operand, update, *indices)
_SCATTER_STATIC = (1,)  # scatter(operand, indices, updates)

# Elementwise primitives (outputs known where every input is), besides those
# the rule packs mark elementwise.
_ELEMENTWISE = {
    P.add_p, P.sub_p, P.mul_p, P.div_p, P.neg_p, P.exp_p, P.exp2_p, P.log_p, P.log1p_p, P.expm1_p,
    P.tanh_p, P.logistic_p, P.sin_p, P.cos_p, P.abs_p, P.sign_p, P.max_p, P.min_p, P.sqrt_p,
    P.rsqrt_p, P.integer_pow_p, P.pow_p, P.square_p, P.convert_element_type_p, P.erf_p,
    P.select_n_p, P.nextafter_p, P.floor_p, P.ceil_p, P.round_p,
}


SELECTION_PRIMITIVES = frozenset({*_STATIC_INPUTS, P.dynamic_update_slice_p, P.scatter_p, P.mul_p})


class PieceKind:
    """How a ``Piece`` learns elements of its value."""
    SELECT_FORWARD = "select_forward"      # the value is an output of a selection
    SELECT_BACKWARD = "select_backward"    # the value is a data input of a selection
    ELEMENTWISE_FORWARD = "elementwise_forward"
    ELEMENTWISE_BACKWARD = "elementwise_backward"


@dataclasses.dataclass(frozen=True, eq=False)
class Selection:
    """What a selection equation copies where (found by ``selection``).

    ``data``: the inputs whose elements are copied; ``statics``: the concrete
    values of the other inputs; ``tags[o]``: for each element of output
    ``o``, ``1 + offset`` of the copied element in the data inputs laid end to
    end (``offsets``), or 0 for a constant element (a masked-out zero).
    """
    data: tuple[int, ...]
    statics: dict
    tags: tuple[np.ndarray, ...]
    offsets: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]    # of the data inputs

    def forward_masks(self, in_masks) -> list[np.ndarray]:
        """Output masks from the data inputs' masks (``None``: nothing known)."""
        flat = np.concatenate([np.zeros(1, bool)] + [
            (np.zeros(int(np.prod(s)), bool) if m is None else np.broadcast_to(m, s).ravel())
            for m, s in zip(in_masks, self.shapes)])
        return [flat[t] | (t == 0) for t in self.tags]

    def backward_masks(self, out_masks) -> list[np.ndarray]:
        """Data inputs' masks from the outputs' masks (``None``: nothing known)."""
        marked = np.zeros(1 + self.offsets[-1], bool)
        for t, m in zip(self.tags, out_masks):
            if m is not None:
                marked[np.broadcast_to(t, t.shape)[np.broadcast_to(m, t.shape)]] = True
        return [marked[1 + a:1 + b].reshape(s) for a, b, s in zip(self.offsets, self.offsets[1:], self.shapes)]

    @functools.cached_property
    def copies_twice(self) -> bool:
        """Whether some input element is copied to more than one output element."""
        flat = np.concatenate([t.ravel() for t in self.tags])
        flat = flat[flat > 0]
        return np.unique(flat).size < flat.size

    def representatives(self, out_masks) -> list[np.ndarray | None]:
        """Per output, the known elements that stand for their source (one per
        copied input element), or None where every known element does."""
        if not self.copies_twice:
            return [None] * len(self.tags)
        flat_tags = np.concatenate([t.ravel() for t in self.tags])
        flat_known = np.concatenate([(np.zeros(t.size, bool) if m is None else np.broadcast_to(m, t.shape).ravel())
                                     for t, m in zip(self.tags, out_masks)])
        keep = flat_known & (flat_tags > 0)
        first = np.zeros_like(keep)
        _, idx = np.unique(np.where(keep, flat_tags, -1), return_index=True)
        first[idx] = True
        first &= keep
        out, start = [], 0
        for t in self.tags:
            w = first[start:start + t.size].reshape(t.shape)
            k = keep[start:start + t.size].reshape(t.shape)
            out.append(None if np.array_equal(w, k) else w)
            start += t.size
        return out


def _static_inputs(e) -> tuple[int, ...] | None:
    prim = e.primitive
    n = len(e.invars)
    if prim is P.dynamic_update_slice_p:
        return tuple(range(_DUS_STATIC_FROM, n))
    if prim is P.scatter_p:
        return _SCATTER_STATIC
    spec = _STATIC_INPUTS.get(prim)
    if spec is None:
        return None
    return tuple(range(1, n)) if spec == "tail" else spec


def is_mask(value) -> bool:
    """Every element is 0 or 1 (a constant that selects by multiplication)."""
    arr = np.asarray(value)
    return arr.size > 0 and bool(np.all((arr == 0) | (arr == 1)))


def selection(e, concrete: Callable[[Any], Any]) -> Selection | None:
    """The ``Selection`` of equation ``e``, or None if it is not one
    (``concrete(v)`` gives an input's value at plan time, or None).

    Example:
        ```python
        sel = selection(eqn_of_x_slice, lambda v: None)
        sel.tags[0]     # 1 + the flat index into x of each element of x[:, :8]
        ```
    """
    prim = e.primitive
    if prim is P.mul_p:
        static = [j for j, v in enumerate(e.invars)
                  if (c := concrete(v)) is not None and is_mask(c)]
        if len(static) != 1:
            return None
        static_idx = tuple(static)
    else:
        static_idx = _static_inputs(e)
        if static_idx is None:
            return None
    data = tuple(j for j in range(len(e.invars)) if j not in static_idx)
    if not data or not all(is_float(e.invars[j].aval) for j in data):
        return None
    sizes = [int(np.prod(e.invars[j].aval.shape, dtype=np.int64)) for j in data]
    total = sum(sizes) + sum(int(np.prod(v.aval.shape, dtype=np.int64)) for v in e.outvars)
    if total > MAX_ELEMENTS:
        return None
    statics = {}
    for j in static_idx:
        c = concrete(e.invars[j])
        if c is None:
            return None
        statics[j] = np.asarray(c)
    offsets = tuple(int(x) for x in np.cumsum([0] + sizes))
    try:
        with jax.ensure_compile_time_eval():
            if prim is P.mul_p:
                (j,) = data
                (s,) = static_idx
                tag = np.arange(1, sizes[0] + 1, dtype=np.int64).reshape(e.invars[j].aval.shape)
                tags = [np.asarray(tag * (np.broadcast_to(statics[s], e.outvars[0].aval.shape) != 0))]
            else:
                invals = []
                for j, v in enumerate(e.invars):
                    if j in statics:
                        invals.append(statics[j])
                    else:
                        k = data.index(j)
                        invals.append(np.arange(1 + offsets[k], 1 + offsets[k + 1], dtype=np.int32)
                                      .reshape(v.aval.shape))
                tags = [np.asarray(t).astype(np.int64) for t in eval_eqn(e, invals)]
    except Exception:  # params that do not accept integers: not treated as a selection
        return None
    tags = [np.where(t > 0, t, 0) for t in tags]  # an out-of-bounds fill is a constant
    if any(t.shape != tuple(v.aval.shape) for t, v in zip(tags, e.outvars)):
        return None
    return Selection(data, statics, tuple(tags), offsets, tuple(tuple(e.invars[j].aval.shape) for j in data))


def is_elementwise(prim, marked: set) -> bool:
    """Each output element depends on the same element of every input."""
    return prim in _ELEMENTWISE or prim in marked


def compress(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every axis along which it is constant reduced to size 1
    (a constant to embed in the program: the batch axis costs nothing)."""
    for ax in range(mask.ndim):
        if mask.shape[ax] > 1 and np.array_equal(mask, np.broadcast_to(mask.take([0], ax), mask.shape)):
            mask = mask.take([0], ax)
    return np.ascontiguousarray(mask)


@dataclasses.dataclass(frozen=True, eq=False)
class Piece:
    """One step that teaches the backward pass some elements of ``var``.

    Equation ``eqn`` is evaluated in direction ``kind`` (a ``PieceKind``)
    on its other values: those in ``full`` whole, those in ``partial`` as the
    partial values built by the earlier pieces. The result is valid on
    ``mask`` (elements of ``var``) and zero elsewhere; ``new`` are the
    elements no earlier piece taught (a log-det counts only those). Masks are
    kept compressed (``compress``): a plan holds many pieces.
    """
    var: Var
    eqn: int
    kind: str
    mask: np.ndarray
    new: np.ndarray
    full: frozenset
    partial: frozenset
    position: int = 0                               # which input/output of ``eqn`` is ``var``
    weights: tuple = ()                             # SELECT_BACKWARD: representatives per output
    data: tuple[int, ...] = ()                      # a selection's data inputs
    statics: dict = dataclasses.field(default_factory=dict)   # ... and its constant ones

    @classmethod
    def make(cls, var, eqn: int, kind: str, mask, new, full, partial, *, position: int = 0,
             weights=(), selection: Selection | None = None) -> "Piece":
        """A piece with its masks compressed, keeping of ``selection`` only
        what running it needs (not its tags)."""
        return cls(var, eqn, kind, compress(np.asarray(mask)), compress(np.asarray(new)), full, partial, position,
                   tuple(None if w is None else compress(w) for w in weights),
                   selection.data if selection else (), selection.statics if selection else {})


def masked(value, mask: np.ndarray):
    """``value`` where ``mask`` holds, 0 elsewhere (mask compressed)."""
    if mask.all():
        return value
    return jnp.where(compress(mask), value, jnp.zeros((), jnp.result_type(value)))


def evaluate(piece: Piece, eqn, get, inverse_rule=None):
    """The piece's value: ``get(v)`` gives every other value of ``eqn`` (whole,
    partial, or None where nothing is known yet)."""
    if piece.kind == PieceKind.SELECT_FORWARD:
        invals = [piece.statics[j] if j in piece.statics else _zeros_if_none(get(v), v)
                  for j, v in enumerate(eqn.invars)]
        return masked(eval_eqn(eqn, invals)[piece.position], piece.mask)
    if piece.kind == PieceKind.SELECT_BACKWARD:
        outs = []
        for v, w in zip(eqn.outvars, piece.weights):
            y = _zeros_if_none(get(v), v)
            outs.append(y if w is None else jnp.where(w, y, jnp.zeros((), y.dtype)))
        data_specs = [jax.ShapeDtypeStruct(eqn.invars[j].aval.shape, eqn.invars[j].aval.dtype) for j in piece.data]

        def linear(*data):
            it = iter(data)
            invals = [piece.statics[j] if j in piece.statics else next(it) for j in range(len(eqn.invars))]
            return eval_eqn(eqn, invals)

        cts = jax.linear_transpose(linear, *data_specs)(outs)
        return masked(cts[piece.data.index(piece.position)], piece.mask)
    if piece.kind == PieceKind.ELEMENTWISE_FORWARD:
        invals = [literal_value(v) if isinstance(v, Literal) else get(v) for v in eqn.invars]
        return masked(eval_eqn(eqn, invals)[piece.position], piece.mask)
    # ELEMENTWISE_BACKWARD
    invals = [None if j == piece.position else (literal_value(v) if isinstance(v, Literal) else get(v))
              for j, v in enumerate(eqn.invars)]
    outvals = [get(v) for v in eqn.outvars]
    return masked(inverse_rule(invals, outvals)[piece.position], piece.mask)


def _zeros_if_none(x, v):
    if x is None:
        return jnp.zeros(v.aval.shape, v.aval.dtype)
    return x


def merge(old, new, mask: np.ndarray):
    """A partial value that is ``new`` on ``mask`` and ``old`` elsewhere."""
    if old is None:
        return new
    return jnp.where(compress(mask), new, old)
