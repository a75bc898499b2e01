"""What users call: ``vjp``, ``grad``, ``value_and_grad``, ``inverse``."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.tree_util import register_pytree_node_class, tree_flatten, tree_leaves, tree_structure, tree_unflatten

from jaxinv._src import interpreter
from jaxinv.disable import is_enabled
from jaxinv.registry import NotInvertibleError, RuleError
from jaxinv._src.tracing import Traced, plan_traced, trace, trace_only
from jaxinv._src.dtypes import is_float, zero_cotangent


@register_pytree_node_class
class VJPFunction:
    """The ``vjp_fn`` returned by ``jaxinv.vjp``.

    A pytree whose leaves are exactly what the backward pass keeps: the closure
    values, the values the plan saved, and the outputs. Summing their bytes
    measures the residual memory, as for ``jax.vjp``'s ``vjp_fn``.
    """

    def __init__(self, traced: Traced, consts, residuals, outs, arg_avals):
        self.traced = traced
        self.consts = list(consts)
        self.residuals = list(residuals)
        self.outs = list(outs)
        self.arg_avals = arg_avals

    def tree_flatten(self):
        return (self.consts, self.residuals, self.outs), (self.traced, self.arg_avals)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], *children, aux[1])

    def __call__(self, ct):
        t = self.traced
        flat_ct, ct_tree = tree_flatten(ct)
        if ct_tree != t.out_tree:
            raise TypeError(f"the cotangent's structure {ct_tree} differs from the output's {t.out_tree}")
        flat_ct = [_cotangent_like(c, y, name) for c, y, name in zip(flat_ct, self.outs, _leaf_names(ct, "output"))]
        n_aux = len(self.outs) - t.num_out
        inputs = self.consts + [None] * len(self.arg_avals)
        cts = interpreter.backward(t.plan, inputs, self.residuals, self.outs, flat_ct + [None] * n_aux)
        arg_cts = cts[t.num_consts:]
        arg_cts = [c if c is not None else zero_cotangent(a) for c, a in zip(arg_cts, self.arg_avals)]
        arg_cts = [c.astype(a.dtype) if c.dtype != a.dtype and is_float(a) else c
                   for c, a in zip(arg_cts, self.arg_avals)]
        return tree_unflatten(t.in_tree, arg_cts)


def _cotangent_like(ct, y, name: str):
    """``ct`` checked against the output ``y`` it is the cotangent of, as
    ``jax.vjp``'s ``vjp_fn`` does: the same shape, and the same dtype (a Python
    scalar is converted; an integer output takes any dtype, float0 included)."""
    got, want = jax.typeof(ct), jax.typeof(y)
    fix = "pass a cotangent of the output's shape and dtype (jnp.ones_like(output), say)"
    if got.shape != want.shape:
        raise ValueError(f"the cotangent for {name} has shape {got.shape}, but the output has shape "
                         f"{want.shape}: {fix}")
    if got.dtype == want.dtype or not is_float(want):
        return ct
    if got.weak_type and jnp.result_type(ct, want.dtype) == want.dtype:
        return jnp.asarray(ct, want.dtype)
    raise ValueError(f"the cotangent for {name} has dtype {got.dtype}, but the output has dtype "
                     f"{want.dtype}: {fix}")


def vjp(f: Callable, *primals, has_aux: bool = False):
    """Like ``jax.vjp``, with a backward pass that rebuilds values from outputs.

    Returns ``(out, vjp_fn)`` (and ``aux`` with ``has_aux=True``); ``vjp_fn(ct)``
    returns a tuple of cotangents, one per primal. Values that cannot be rebuilt
    are saved in the forward pass, so the result always equals ``jax.vjp``'s.

    Example:
        ```python
        y, f_vjp = jaxinv.vjp(lambda x: jnp.exp(x) * 2.0, x)
        (ct_x,) = f_vjp(jnp.ones_like(y))
        ```
    """
    if not is_enabled():  # jaxinv.disabled(): plain AD
        return jax.vjp(f, *primals, has_aux=has_aux)
    t = trace(f, primals, has_aux=has_aux)
    flat_args = tree_leaves(primals)
    outs, residuals = interpreter.forward(t.plan, [*t.consts, *flat_args])
    out = tree_unflatten(t.out_tree, outs[:t.num_out])
    fn = VJPFunction(t, t.consts, residuals, outs, [jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))
                                                   for a in flat_args])
    if has_aux:
        return out, fn, tree_unflatten(t.aux_tree, outs[t.num_out:])
    return out, fn


def _check_argnums(argnums, n):
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for a in nums:
        if not -n <= a < n:
            raise ValueError(f"argnums {argnums} out of range for a function called with {n} positional arguments")
    return nums


def differentiating(f: Callable, args: tuple, argnums, kwargs=None) -> tuple[Callable, tuple]:
    """``f`` as a function of ``args[argnums]`` alone, closing over the other
    arguments (given values, as ``jax.grad`` treats them); and those arguments.

    Example:
        ```python
        g, (params,) = differentiating(loss, (params, x), 0)   # g(params) == loss(params, x)
        ```
    """
    nums = _check_argnums(argnums, len(args))
    kwargs = kwargs or {}

    def g(*diff):
        full = list(args)
        for i, d in zip(nums, diff):
            full[i] = d
        return f(*full, **kwargs)

    return g, tuple(args[i] for i in nums)


def _check_differentiable(args, nums, allow_int: bool) -> None:
    """As ``jax.grad``: refuse integer and boolean inputs unless ``allow_int``."""
    names = _leaf_names(tuple(args[i] for i in nums), "argument", [i % len(args) for i in nums])
    for x, name in zip(tree_leaves([args[i] for i in nums]), names):
        dtype = jnp.result_type(x)
        if not is_float(dtype) and not allow_int:
            raise TypeError(f"grad requires real- or complex-valued inputs (input dtype that is a sub-dtype "
                            f"of np.inexact), but got {dtype.name} for {name}. If you want to use Boolean- "
                            "or integer-valued inputs, use vjp or set allow_int to True.")


def value_and_grad(f: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False,
                   allow_int: bool = False):
    """Like ``jax.value_and_grad``, with the reversible backward pass. As there,
    integer or boolean inputs raise TypeError unless ``allow_int=True`` (their
    gradient is then float0 zeros).

    Example:
        ```python
        loss, g = jaxinv.value_and_grad(loss_fn)(params, x)
        ```
    """

    def wrapped(*args, **kwargs):
        nums = _check_argnums(argnums, len(args))
        _check_differentiable(args, nums, allow_int)
        g, diff_args = differentiating(f, args, nums, kwargs)
        res = vjp(g, *diff_args, has_aux=has_aux)
        out, fn = res[0], res[1]
        leaves = tree_leaves(out)
        if len(leaves) != 1 or jnp.shape(leaves[0]) != ():
            raise TypeError("grad requires a function with a scalar output, got shape "
                            f"{[jnp.shape(l) for l in leaves]}")
        if not is_float(leaves[0]):
            raise TypeError(f"grad requires a real- or complex-valued output, got {jnp.result_type(leaves[0])}")
        grads = fn(jax.tree_util.tree_map(jnp.ones_like, out))
        grads = grads[0] if isinstance(argnums, int) else tuple(grads)
        return ((out, res[2]), grads) if has_aux else (out, grads)

    return wrapped


def grad(f: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False, allow_int: bool = False):
    """Like ``jax.grad``, with the reversible backward pass (and, as there,
    ``allow_int`` to differentiate with respect to integer inputs: float0 zeros).

    Example:
        ```python
        g = jaxinv.grad(lambda x: jnp.sum(jnp.tanh(x) * 3.0))(x)
        ```
    """
    vg = value_and_grad(f, argnums, has_aux, allow_int)

    def wrapped(*args, **kwargs):
        (out, g) = vg(*args, **kwargs)
        return (g, out[1]) if has_aux else g

    return wrapped


def _check_all_recovered(t: Traced, args) -> None:
    """The plan recovers only the inputs the outputs depend on: any other input
    (``f = lambda x: 1.0``) cannot be inverted."""
    arg_vars = t.plan.jaxpr.invars[t.num_consts:]
    lost = [path for path, v in zip(_leaf_paths(args), arg_vars) if v not in t.plan.sources]
    if lost:
        raise NotInvertibleError(f"the outputs do not depend on the input(s) {', '.join(lost)}, "
                                 "so they cannot be recovered")


def _leaf_paths(args) -> list[str]:
    """``args[0]``, ``args[1]['w']``, ...: one name per flat leaf of ``args``."""
    paths, _ = jax.tree_util.tree_flatten_with_path(tuple(args))
    return [f"args{jax.tree_util.keystr(p)}" for p, _ in paths]


def _leaf_names(tree, what: str, positions: Sequence[int] | None = None) -> list[str]:
    """``output 0``, ``argument 1['w']``, ...: one name per flat leaf of the
    sequence ``tree`` (a tuple of outputs or arguments), numbered by
    ``positions`` (default 0, 1, ...); a non-sequence is ``the output``."""
    if type(tree) not in (tuple, list):
        paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
        return [f"the {what}{jax.tree_util.keystr(p)}" for p in paths]
    positions = list(positions) if positions is not None else list(range(len(tree)))
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tuple(tree))[0]]
    return [f"{what} {positions[p[0].idx]}{jax.tree_util.keystr(p[1:])}" for p in paths]


def inverse(f: Callable, *example_args):
    """The inverse of ``f``, with Oryx's calling convention.

    ``inverse(f, *example_args)(*outputs)`` returns ``f``'s inputs (one value
    when ``f`` takes one argument, else a tuple); the outputs must have the
    structure, shapes and dtypes ``f`` returns (a Python scalar converts).
    Without example arguments, ``f`` is traced at the outputs' shapes, which
    only a shape-preserving ``f`` allows: give example arguments otherwise.
    Non-injective primitives are inverted on their principal branch (``sin``
    -> ``asin``); anything else that cannot be inverted raises
    ``NotInvertibleError`` naming the primitive and the source line.

    Example:
        ```python
        f_inv = jaxinv.inverse(lambda x: jnp.exp(x) * 2.0 + 1.0)
        f_inv(jnp.array(3.0))   # log(1.0) = 0.0
        ```
    """

    def f_inv(*outputs):
        return _invert(f, example_args, outputs, with_ildj=False)

    return f_inv


def inverse_and_ildj(f: Callable, *example_args):
    """The inverse of ``f`` and its inverse log-det Jacobian, with Oryx's
    calling convention: ``inverse_and_ildj(f, *example_args)(*outputs)``
    returns ``(inputs, ildj)`` where ``ildj = log|det d(inputs)/d(outputs)|``,
    summed over all elements (``= -log|det df/dx|`` at those inputs).

    Each inverted equation contributes its term (elementwise primitives
    ``sum(log|dx/dy|)``, permutations and casts 0, a solve with a known matrix
    ``-log|det W|`` per column, ...); the sum is the log-det of the whole
    inverse when ``f`` is a bijection built of such steps (couplings, flows).

    Example:
        ```python
        x, ildj = jaxinv.inverse_and_ildj(lambda x: jnp.exp(x) * 2.0)(y)
        # x = log(y / 2), ildj = -sum(log(y))
        ```
    """

    def f_inv(*outputs):
        return _invert(f, example_args, outputs, with_ildj=True)

    return f_inv


def ildj(f: Callable, *example_args):
    """``ildj(f, *example_args)(*outputs)``: the inverse log-det Jacobian of
    ``f`` at ``outputs``, summed over all elements (Oryx's ``ildj``); see
    ``inverse_and_ildj``.

    Example:
        ```python
        jaxinv.ildj(jnp.exp)(jnp.array([1.0, 2.0]))    # -log(1) - log(2)
        ```
    """

    def f_ildj(*outputs):
        return _invert(f, example_args, outputs, with_ildj=True)[1]

    return f_ildj


def _invert(f, example_args, outputs, *, with_ildj: bool):
    t, flat_out = _trace_for_inverse(f, example_args, outputs)
    _check_all_recovered(t, example_args if example_args else outputs)
    n_args = len(t.plan.jaxpr.invars) - t.num_consts
    inputs = [*t.consts, *[None] * n_args]
    if with_ildj:
        flat_in, log_det = interpreter.reconstruct_and_ildj(t.plan, inputs, [], flat_out)
    else:
        flat_in = interpreter.reconstruct(t.plan, inputs, [], flat_out)
    args = tree_unflatten(t.in_tree, flat_in[t.num_consts:])
    args = args[0] if len(args) == 1 else tuple(args)
    return (args, log_det) if with_ildj else args


_PASS_EXAMPLES = "pass example arguments shaped like f's inputs: jaxinv.inverse(f, x)"


def _trace_for_inverse(f, example_args, outputs) -> tuple[Traced, list]:
    """``f`` traced at ``example_args`` (without them, at the outputs' shapes)
    and planned for inversion; and the flat outputs, checked to be of the
    structure, shapes and dtypes ``f`` returns there (a Python scalar is
    converted to the dtype)."""
    if example_args:
        t = trace_only(f, example_args)
    else:
        try:
            t = trace_only(f, outputs)
        except (NotInvertibleError, RuleError):
            raise
        except Exception as e:
            first_line = (str(e).strip().splitlines() or [""])[0].rstrip(".")
            shapes = ", ".join(_type_name(jax.typeof(y)) for y in tree_leaves(outputs))
            raise TypeError(f"without example arguments, jaxinv.inverse calls f at the outputs' shapes "
                            f"({shapes}), and that failed with "
                            f"{type(e).__name__}: {first_line}. If f changes shapes, {_PASS_EXAMPLES}") from e
    out = outputs[0] if len(outputs) == 1 else tuple(outputs)
    if len(outputs) == 1 and tree_structure(out) != t.out_tree and tree_structure(tuple(outputs)) == t.out_tree:
        out = tuple(outputs)  # f returns a 1-tuple: inverse(f, x)(*f(x)) passes its element
    flat_out, out_tree = tree_flatten(out)
    flat_out = [jnp.asarray(y) for y in flat_out]
    if out_tree != t.out_tree:
        problem = f"the outputs are structured as {out_tree}, but f returns {t.out_tree}"
    else:
        problem = next((f"{name} is {_type_name(jax.typeof(y))}, but f returns {_type_name(want)}"
                        for y, want, name in zip(flat_out, t.out_avals, _leaf_names(outputs, "output"))
                        if not _fits(y, want)), None)
    if problem and example_args:
        raise ValueError(f"the outputs given to the inverse do not match f's outputs at the example "
                         f"arguments: {problem}")
    if problem:
        raise ValueError(f"without example arguments, jaxinv.inverse traces f at the outputs' shapes, but f "
                         f"changes shapes: {problem}. To invert it, {_PASS_EXAMPLES}")
    flat_out = [y if y.dtype == want.dtype else y.astype(want.dtype) for y, want in zip(flat_out, t.out_avals)]
    return plan_traced(t, for_inverse=True), flat_out


def _fits(y, want) -> bool:
    """Can ``y`` stand for a value of type ``want``: the same shape and dtype,
    or a Python scalar that converts to the dtype."""
    got = jax.typeof(y)
    return got.shape == want.shape and (got.dtype == want.dtype or (
        got.weak_type and jnp.result_type(y, want.dtype) == want.dtype))


def _type_name(aval) -> str:
    """``float32[2,3]``, as JAX writes types."""
    return f"{aval.dtype}[{','.join(map(str, aval.shape))}]"
