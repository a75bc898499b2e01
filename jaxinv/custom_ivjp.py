"""``jaxinv.custom_ivjp``: a function carrying its own inverse / ivjp rule.

Mirrors ``jax.custom_vjp``:
```python
@jaxinv.custom_ivjp
def couple(x1, x2):
    return x1, x2 + jnp.tanh(x1)

@couple.defivjp
def couple_ivjp(xs, ys, cts):
    y1, y2 = ys
    ct1, ct2 = cts
    x1 = y1
    x2 = y2 - jnp.tanh(x1)
    return (x1, x2), (ct1 + ct2 * (1 - jnp.tanh(x1) ** 2), ct2)
```

Calling it binds the ``custom_ivjp_call`` primitive. Outside jaxinv it is the
plain function under ``jit`` (it lowers), ``vmap``, ``grad`` and ``jvp``. Inside
a jaxinv region its rule inverts it (the primitive's rules, which call the
user's, are in ``jaxinv/rules/utility.py``); without a rule its body is inlined
and inverted automatically.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Callable

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Primitive
from jax.interpreters import ad, batching, mlir
from jax.tree_util import tree_flatten, tree_unflatten

from jaxinv._src.flatten import register_inline, trace_flat
from jaxinv.registry import NotInvertibleError, RuleError
from jaxinv._src.dtypes import is_float

custom_ivjp_call_p = Primitive("custom_ivjp_call")
custom_ivjp_call_p.multiple_results = True


class custom_ivjp:
    """Decorate a function to give it an inverse and/or ivjp rule.

    ``f.defivjp(ivjp)`` with ``ivjp(xs, ys, cts) -> (xs, cts_xs)``: ``xs`` is the
    tuple of positional arguments, with ``None`` for those to reconstruct;
    ``ys``/``cts`` are shaped like the output. Unlike ``jax.custom_vjp``, the
    rule does not redefine the derivative: it must return ``f``'s true VJP
    (jaxinv uses it where it rebuilds the call's inputs, and ``f``'s own VJP
    where the plan saves them). Rules must not close over values of the
    function being differentiated: pass them as arguments. ``f.definverse(inv)`` with
    ``inv(*ys)`` returning the inputs (one value when ``f`` takes one argument,
    else a tuple) gives the inverse alone. Both return the rule, so the
    decorated name stays bound.

    What a rule returns is checked as ``jax.custom_vjp`` checks its ``bwd``:
    every input and cotangent has its argument's structure, shape and dtype (a
    cotangent may be ``None`` for zero, or ``float0`` for an integer argument).
    A mistake raises ``jaxinv.RuleError`` naming the rule and its
    ``file:line``. A rule that cannot rebuild an input from what it was given
    raises ``jaxinv.NotInvertibleError`` (jaxinv then saves the input).

    Example:
        ```python
        @jaxinv.custom_ivjp
        def double(x):
            return 2.0 * x

        @double.definverse
        def half(y):
            return y / 2.0
        ```
    """

    def __init__(self, fun: Callable):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.ivjp: Callable | None = None
        self.inverse: Callable | None = None
        self.ildj: Callable | None = None

    def defivjp(self, ivjp: Callable | None = None, *, ildj: Callable | None = None) -> Callable:
        """Set ``ivjp(xs, ys, cts) -> (xs, cts_xs)``; returns ``ivjp``.
        ``ildj(*ys) -> scalar``, optional, is the log-det for ``jaxinv.ildj``
        as in ``definverse``. Usable as a decorator, with or without ``ildj``.

        Example:
            ```python
            @rotate.defivjp(ildj=lambda y: jnp.zeros((), y.dtype))   # orthogonal
            def rotate_ivjp(xs, ys, cts): ...
            ```
        """
        return self._define("ivjp", ivjp, ildj)

    def definverse(self, inverse: Callable | None = None, *, ildj: Callable | None = None) -> Callable:
        """Set ``inverse(*ys) -> xs``; returns ``inverse``. ``ildj(*ys) ->
        scalar``, optional, gives ``log|det d(xs)/d(ys)|`` summed over elements
        for ``jaxinv.ildj`` (without it, the log-det is derived through the
        function's body). Usable as a decorator, with or without ``ildj``.

        Example:
            ```python
            double.definverse(lambda y: y / 2.0, ildj=lambda y: -y.size * jnp.log(2.0))
            ```
        """
        return self._define("inverse", inverse, ildj)

    def _define(self, kind: str, rule: Callable | None, ildj: Callable | None) -> Callable:
        if rule is None:  # used as a decorator with arguments
            return lambda rule: self._define(kind, rule, ildj)
        setattr(self, kind, rule)
        if ildj is not None:
            self.ildj = ildj
        return rule

    def __call__(self, *args, **kwargs):
        if kwargs:  # resolve keywords against the signature, as jax.custom_vjp does
            bound = inspect.signature(self.fun).bind(*args, **kwargs)
            bound.apply_defaults()
            args = bound.args + tuple(bound.kwargs.values())
            if bound.kwargs:
                raise TypeError(f"{self.fun.__name__}: keyword-only arguments are not supported by custom_ivjp")
        flat_args, in_tree = tree_flatten(args)
        closed, out_tree = trace_flat(self.fun, flat_args, in_tree)
        consts = list(closed.consts)
        body = _closure_converted(closed)
        rule = _Rule(self, in_tree, out_tree, closed.in_avals, tuple(isinstance(c, jax.core.Tracer) for c in consts))
        outs = custom_ivjp_call_p.bind(*consts, *flat_args, body=body, num_consts=len(consts), rule=rule)
        return tree_unflatten(out_tree, outs)


def _closure_converted(closed: ClosedJaxpr) -> ClosedJaxpr:
    jaxpr = closed.jaxpr
    return ClosedJaxpr(jaxpr.replace(constvars=[], invars=[*jaxpr.constvars, *jaxpr.invars]), ())


@contextlib.contextmanager
def _stale_tracers_are_rule_errors(what: str):
    """A rule closing over a value of jaxinv's own (finished) trace fails when
    jaxinv calls it later: say so, and how to fix it. Values of an enclosing
    jit / vmap / grad are still alive then, and fine."""
    try:
        yield
    except jax.errors.UnexpectedTracerError as e:
        raise RuleError(f"the {what} closes over a traced value (an argument of the function jaxinv "
                        "is differentiating); pass that value to the custom_ivjp function as an "
                        "argument instead, as with jax.custom_vjp") from e


def _describe(fun: Callable) -> str:
    """A user's rule as "`name` (file:line)", for error messages."""
    target = fun.func if isinstance(fun, functools.partial) else inspect.unwrap(fun)
    name = getattr(fun, "__name__", None) or getattr(target, "__name__", type(fun).__name__)
    code = getattr(target, "__code__", None)
    return f"`{name}` ({code.co_filename}:{code.co_firstlineno})" if code else f"`{name}`"


class _Rule:
    """The user's rules with the trees to call them; hashed by identity.

    ``in_avals`` are the flat arguments' types (per example, for a vmapped
    call): what the rules' results are checked against, as ``jax.custom_vjp``
    checks its ``bwd``.
    """

    def __init__(self, f: custom_ivjp, in_tree, out_tree, in_avals, traced_consts, in_axes=None):
        self.f, self.in_tree, self.out_tree = f, in_tree, out_tree
        self.in_avals, self.traced_consts = tuple(in_avals), traced_consts
        self.in_axes = in_axes  # set on a batched copy: the args' batch axes

    @property
    def num_args(self) -> int:
        return len(self.in_avals)

    @property
    def has_rule(self) -> bool:
        return self.f.ivjp is not None or self.f.inverse is not None

    def _unbatched(self) -> "_Rule":
        return _Rule(self.f, self.in_tree, self.out_tree, self.in_avals, self.traced_consts)

    def _ys(self, outvals):
        return tree_unflatten(self.out_tree, list(outvals))

    def inverse(self, args, outvals) -> list:
        """Flat inputs (``args`` with None for unknowns) from flat outputs."""
        if self.in_axes is not None:
            return self._batched_inverse(args, outvals)
        if self.f.inverse is None:
            xs, _ = self.ivjp(args, outvals, [jnp.zeros_like(y) for y in outvals])
            return xs
        ys = self._ys(outvals)
        with _stale_tracers_are_rule_errors(f"inverse of `{self.f.__name__}`"):
            got = self.f.inverse(*ys) if isinstance(ys, tuple) else self.f.inverse(ys)
        xs = (got,) if len(self.in_tree.children()) == 1 else got
        check = _Check(self, f"the inverse {_describe(self.f.inverse)} of `{self.f.__name__}`")
        return check.inputs(check.per_argument(xs, "its inputs (one value per argument)"), args)

    def ivjp(self, args, outvals, cts) -> tuple[list, list]:
        if self.in_axes is not None:
            raise NotInvertibleError("a vmapped custom_ivjp with a fused ivjp is evaluated through its inverse")
        xs = tree_unflatten(self.in_tree, list(args))
        with _stale_tracers_are_rule_errors(f"ivjp of `{self.f.__name__}`"):
            got = self.f.ivjp(xs, self._ys(outvals), tree_unflatten(self.out_tree, list(cts)))
        check = _Check(self, f"the ivjp {_describe(self.f.ivjp)} of `{self.f.__name__}`")
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise RuleError(f"{check.rule} must return a pair (xs, cts), got {type(got).__name__}")
        flat_xs = check.inputs(check.per_argument(got[0], "xs"), args)
        flat_cts = check.cotangents(check.per_argument(got[1], "cts"))
        return flat_xs, flat_cts

    def ildj(self, outvals):
        """The user's log-det at flat outputs (summed over a vmapped batch), or None."""
        if self.f.ildj is None:
            return None
        if self.in_axes is not None:
            return jnp.sum(jax.vmap(self._unbatched().ildj)(list(outvals)))
        ys = self._ys(outvals)
        with _stale_tracers_are_rule_errors(f"ildj of `{self.f.__name__}`"):
            got = self.f.ildj(*ys) if isinstance(ys, tuple) else self.f.ildj(ys)
        if jnp.shape(got) != ():
            raise RuleError(f"the ildj {_describe(self.f.ildj)} of `{self.f.__name__}` returned shape "
                            f"{jnp.shape(got)}; it must return a scalar (the log-det summed over all elements)")
        return got

    def _batched_inverse(self, args, outvals):
        """The inverse of a vmapped call: the user's inverse under vmap."""
        axes = [ax if a is not None else None for a, ax in zip(args, self.in_axes)]
        xs = jax.vmap(self._unbatched().inverse, in_axes=(axes, 0))(list(args), list(outvals))
        return [x if ax == 0 else x[0] for x, ax in zip(xs, self.in_axes)]


class _Check:
    """Checks what a user's rule returned against the function's arguments."""

    def __init__(self, rule: _Rule, name: str):
        self.r, self.rule = rule, name

    def arg(self, i: int) -> str:
        """``input 1 (`x2`)``, ``input 0['w'] (`params`)``: flat argument ``i``, for messages."""
        dummy = tree_unflatten(self.r.in_tree, [0] * self.r.num_args)
        path = jax.tree_util.tree_flatten_with_path(dummy)[0][i][0]
        try:
            params = [p.name for p in inspect.signature(self.r.f.fun).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            params = []
        pos = path[0].idx
        return f"input {pos}{jax.tree_util.keystr(path[1:])}" + (f" (`{params[pos]}`)" if pos < len(params) else "")

    def per_argument(self, got, what: str) -> list:
        """``got``, a tuple with one entry per argument (None standing for a whole
        argument), as one value or None per flat argument."""
        leaves: list = [None] * self.r.num_args
        dummy = tree_unflatten(self.r.in_tree, list(range(self.r.num_args)))

        def put(x, i):
            if x is not None:
                if not isinstance(i, int):
                    raise ValueError
                leaves[i] = x

        try:
            if not isinstance(got, (tuple, list)):
                raise ValueError
            jax.tree_util.tree_map(put, tuple(got), dummy, is_leaf=lambda x: x is None)
        except ValueError:
            raise RuleError(f"{self.rule} returned {what} structured as "
                            f"{jax.tree_util.tree_structure(got, is_leaf=lambda x: x is None)}; they must be "
                            f"structured like the arguments {self.r.in_tree}") from None
        return leaves

    def inputs(self, xs: list, given: list) -> list:
        """The rebuilt inputs, each checked; the given inputs where given."""
        for i, (x, a) in enumerate(zip(xs, given)):
            if x is None and a is None:
                raise RuleError(f"{self.rule} returned None for {self.arg(i)}, which jaxinv asked it to "
                                "rebuild: return it, or raise jaxinv.NotInvertibleError when it cannot be "
                                "rebuilt from the inputs given (jaxinv then saves it)")
            if x is not None:
                xs[i] = self.typed(x, i, "an input")
        return [x if a is None else a for x, a in zip(xs, given)]

    def cotangents(self, cts: list) -> list:
        """The input cotangents, each checked (None: zero; float0 for integers)."""
        return [ct if ct is None else self.typed(ct, i, "a cotangent") for i, ct in enumerate(cts)]

    def typed(self, x, i: int, kind: str):
        """``x`` as argument ``i``'s type, or RuleError: the same shape; the same
        dtype, or a Python scalar that converts to it, or (a cotangent of an
        integer argument) float0."""
        want = self.r.in_avals[i]
        try:
            got = jax.typeof(x)
        except TypeError:
            raise RuleError(f"{self.rule} returned {kind} of type {type(x).__name__} for {self.arg(i)}") from None
        if tuple(got.shape) != tuple(want.shape):
            raise RuleError(f"{self.rule} returned {kind} of shape {tuple(got.shape)} for {self.arg(i)} "
                            f"of shape {tuple(want.shape)}")
        if got.dtype == want.dtype or (kind == "a cotangent" and got.dtype == jax.dtypes.float0
                                       and not is_float(want)):
            return x
        if got.weak_type and jnp.result_type(x, want.dtype) == want.dtype:
            return jnp.asarray(x, want.dtype)
        hint = " (an integer input's cotangent is None or float0)" if (
            kind == "a cotangent" and not is_float(want)) else ""
        raise RuleError(f"{self.rule} returned {kind} of dtype {got.dtype} for {self.arg(i)} "
                        f"of dtype {want.dtype}{hint}")


# ---- the primitive outside jaxinv: the plain function


def eval_body(body: ClosedJaxpr, *args):
    """The call's closure-converted ``body`` run on ``args`` (its closed-over
    values first, then the function's arguments): the plain function."""
    return jax.core.eval_jaxpr(body.jaxpr, body.consts, *args)


def _impl(*args, body, num_consts, rule):
    return eval_body(body, *args)


def _abstract_eval(*avals, body, num_consts, rule):
    return [v.aval for v in body.jaxpr.outvars]


def _jvp(primals, tangents, *, body, num_consts, rule):
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    return jax.jvp(lambda *a: eval_body(body, *a), list(primals), tangents)


def _batch(args, dims, *, body, num_consts, rule):
    args = [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    in_axes = [None if d is None else 0 for d in dims]
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
    bbody = jax.make_jaxpr(jax.vmap(lambda *a: eval_body(body, *a), in_axes=in_axes))(*specs)
    per_example = [jax.ShapeDtypeStruct(a.shape[1:] if d is not None else a.shape, a.dtype)
                   for a, d in zip(args[num_consts:], dims[num_consts:])]
    brule = _Rule(rule.f, rule.in_tree, rule.out_tree, per_example, rule.traced_consts,
                  in_axes=tuple(in_axes[num_consts:]))
    outs = custom_ivjp_call_p.bind(*args, body=_closure_converted(bbody), num_consts=num_consts, rule=brule)
    return outs, [0] * len(outs)


custom_ivjp_call_p.def_impl(_impl)
custom_ivjp_call_p.def_abstract_eval(_abstract_eval)
ad.primitive_jvps[custom_ivjp_call_p] = _jvp
batching.primitive_batchers[custom_ivjp_call_p] = _batch
mlir.register_lowering(custom_ivjp_call_p, mlir.lower_fun(_impl, multiple_results=True))


# ---- inside jaxinv: the primitive's inverse, ivjp and log-det rules (in
# jaxinv/rules/utility.py) call the user's; without a user rule the body is inlined

register_inline(custom_ivjp_call_p, lambda p: None if p["rule"].has_rule else p["body"])
