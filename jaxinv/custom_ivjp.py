"""``jaxinv.custom_ivjp``: a function carrying its own inverse / ivjp rule.

Mirrors ``jax.custom_vjp``::

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

Calling it binds the ``custom_ivjp_call`` primitive. Outside jaxinv it is the
plain function under ``jit`` (it lowers), ``vmap``, ``grad`` and ``jvp``. Inside
a jaxinv region its rule inverts it; without a rule its body is inlined and
inverted automatically.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Primitive
from jax.interpreters import ad, batching, mlir
from jax.tree_util import tree_flatten, tree_unflatten

from jaxinv import interpreter
from jaxinv.flatten import register_inline
from jaxinv.plan import make_plan
from jaxinv.registry import NotInvertibleError, RuleError

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

    Example::

        @jaxinv.custom_ivjp
        def double(x):
            return 2.0 * x

        @double.definverse
        def half(y):
            return y / 2.0
    """

    def __init__(self, fun: Callable):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.ivjp: Callable | None = None
        self.inverse: Callable | None = None
        self.ildj: Callable | None = None

    def defivjp(self, ivjp: Callable) -> Callable:
        """Set ``ivjp(xs, ys, cts) -> (xs, cts_xs)``; returns ``ivjp``."""
        self.ivjp = ivjp
        return ivjp

    def definverse(self, inverse: Callable | None = None, *, ildj: Callable | None = None) -> Callable:
        """Set ``inverse(*ys) -> xs``; returns ``inverse``. ``ildj(*ys) ->
        scalar``, optional, gives ``log|det d(xs)/d(ys)|`` summed over elements
        for ``jaxinv.ildj`` (without it, the log-det is derived through the
        function's body). Usable as a decorator, with or without ``ildj``.

        Example::

            double.definverse(lambda y: y / 2.0, ildj=lambda y: -y.size * jnp.log(2.0))
        """
        if inverse is None:
            return lambda inv: self.definverse(inv, ildj=ildj)
        self.inverse = inverse
        if ildj is not None:
            self.ildj = ildj
        return inverse

    def __call__(self, *args, **kwargs):
        if kwargs:  # resolve keywords against the signature, as jax.custom_vjp does
            bound = inspect.signature(self.fun).bind(*args, **kwargs)
            bound.apply_defaults()
            args = bound.args + tuple(bound.kwargs.values())
            if bound.kwargs:
                raise TypeError(f"{self.fun.__name__}: keyword-only arguments are not supported by custom_ivjp")
        flat_args, in_tree = tree_flatten(args)
        store = {}

        def flat_fun(*flat):
            out = self.fun(*tree_unflatten(in_tree, flat))
            flat_out, store["tree"] = tree_flatten(out)
            return flat_out

        closed = jax.make_jaxpr(flat_fun)(*flat_args)
        consts = list(closed.consts)
        body = _closure_converted(closed)
        rule = _Rule(self, in_tree, store["tree"], len(flat_args),
                     tuple(isinstance(c, jax.core.Tracer) for c in consts))
        outs = custom_ivjp_call_p.bind(*consts, *flat_args, body=body, num_consts=len(consts), rule=rule)
        return tree_unflatten(store["tree"], outs)


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


class _Rule:
    """The user's rules with the trees to call them; hashed by identity."""

    def __init__(self, f: custom_ivjp, in_tree, out_tree, num_args, traced_consts, in_axes=None):
        self.f, self.in_tree, self.out_tree = f, in_tree, out_tree
        self.num_args, self.traced_consts = num_args, traced_consts
        self.in_axes = in_axes  # set on a batched copy: the args' batch axes

    @property
    def has_rule(self) -> bool:
        return self.f.ivjp is not None or self.f.inverse is not None

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
        xs = (got,) if len(self.in_tree.children()) == 1 else tuple(got)
        flat, tree = tree_flatten(xs)
        if tree != self.in_tree:
            raise RuleError(f"the inverse of {self.f.__name__} returned structure {tree}, expected {self.in_tree}")
        return [a if a is not None else x for a, x in zip(args, flat)]

    def ivjp(self, args, outvals, cts) -> tuple[list, list]:
        if self.in_axes is not None:
            raise NotInvertibleError("a vmapped custom_ivjp with a fused ivjp is evaluated through its inverse")
        xs = tree_unflatten(self.in_tree, list(args))
        with _stale_tracers_are_rule_errors(f"ivjp of `{self.f.__name__}`"):
            got_xs, got_cts = self.f.ivjp(xs, self._ys(outvals), tree_unflatten(self.out_tree, list(cts)))
        flat_xs, tree = tree_flatten(tuple(got_xs))
        flat_cts, ct_tree = tree_flatten(tuple(got_cts), is_leaf=lambda c: c is None)
        if tree != self.in_tree or len(flat_cts) != self.num_args:
            raise RuleError(f"the ivjp of {self.f.__name__} must return (xs, cts_xs) shaped like the "
                            f"arguments {self.in_tree}; got {tree} and {ct_tree}")
        return flat_xs, flat_cts

    def ildj(self, outvals):
        """The user's log-det at flat outputs (summed over a vmapped batch), or None."""
        if self.f.ildj is None:
            return None
        if self.in_axes is not None:
            unbatched = _Rule(self.f, self.in_tree, self.out_tree, self.num_args, self.traced_consts)
            return jnp.sum(jax.vmap(unbatched.ildj)(list(outvals)))
        ys = self._ys(outvals)
        with _stale_tracers_are_rule_errors(f"ildj of `{self.f.__name__}`"):
            return self.f.ildj(*ys) if isinstance(ys, tuple) else self.f.ildj(ys)

    def _batched_inverse(self, args, outvals):
        """The inverse of a vmapped call: the user's inverse under vmap."""
        axes = [ax if a is not None else None for a, ax in zip(args, self.in_axes)]
        unbatched = _Rule(self.f, self.in_tree, self.out_tree, self.num_args, self.traced_consts)
        xs = jax.vmap(unbatched.inverse, in_axes=(axes, 0))(list(args), list(outvals))
        return [x if ax == 0 else x[0] for x, ax in zip(xs, self.in_axes)]


# ---- the primitive outside jaxinv: the plain function


def _eval_body(body: ClosedJaxpr, *args):
    return jax.core.eval_jaxpr(body.jaxpr, body.consts, *args)


def _impl(*args, body, num_consts, rule):
    return _eval_body(body, *args)


def _abstract_eval(*avals, body, num_consts, rule):
    return [v.aval for v in body.jaxpr.outvars]


def _jvp(primals, tangents, *, body, num_consts, rule):
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    return jax.jvp(lambda *a: _eval_body(body, *a), list(primals), tangents)


def _batch(args, dims, *, body, num_consts, rule):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    args = [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    in_axes = [None if d is None else 0 for d in dims]
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
    bbody = jax.make_jaxpr(jax.vmap(lambda *a: _eval_body(body, *a), in_axes=in_axes))(*specs)
    brule = _Rule(rule.f, rule.in_tree, rule.out_tree, rule.num_args, rule.traced_consts,
                  in_axes=tuple(in_axes[num_consts:]))
    outs = custom_ivjp_call_p.bind(*args, body=_closure_converted(bbody), num_consts=num_consts, rule=brule)
    return outs, [0] * len(outs)


custom_ivjp_call_p.def_impl(_impl)
custom_ivjp_call_p.def_abstract_eval(_abstract_eval)
ad.primitive_jvps[custom_ivjp_call_p] = _jvp
batching.primitive_batchers[custom_ivjp_call_p] = _batch
mlir.register_lowering(custom_ivjp_call_p, mlir.lower_fun(_impl, multiple_results=True))


# ---- inside jaxinv: the user's rules, or the inlined body


register_inline(custom_ivjp_call_p, lambda p: None if p["rule"].has_rule else p["body"])


def _split(invals, num_consts, what):
    consts, args = list(invals[:num_consts]), list(invals[num_consts:])
    if any(c is None for c in consts):
        raise NotInvertibleError(f"the values {what} closes over must be known")
    return consts, args


def inverse_rule(invals, outvals, *, body, num_consts, rule):
    consts, args = _split(invals, num_consts, rule.f.__name__)
    return consts + list(rule.inverse(args, outvals))


def ildj_rule(invals, outvals, *, body, num_consts, rule):
    """The user's ildj, else the log-det derived through the body (planned
    like a loop body: nothing saved)."""
    consts, args = _split(invals, num_consts, rule.f.__name__)
    given = rule.ildj(outvals)
    if given is not None:
        return given
    known = (True,) * num_consts + tuple(a is not None for a in args)
    try:
        body_plan = make_plan(body, known, allow_saving=False, principal_branch=True)
    except NotInvertibleError as e:
        raise NotInvertibleError(f"no log-det for `{rule.f.__name__}`: give definverse(inv, ildj=...) "
                                 f"({e.reason})") from None
    _, log_det = interpreter.reconstruct_and_ildj(body_plan, consts + list(args), [], list(outvals))
    return log_det


def ivjp_rule(invals, outvals, out_cts, *, body, num_consts, rule):
    consts, args = _split(invals, num_consts, rule.f.__name__)
    if rule.f.ivjp is not None and rule.in_axes is None:
        xs, arg_cts = rule.ivjp(args, outvals, out_cts)
    else:
        xs = rule.inverse(args, outvals)
        _, f_vjp = jax.vjp(lambda *a: _eval_body(body, *consts, *a), *xs)
        arg_cts = list(f_vjp(list(out_cts)))
    const_cts = [None] * num_consts
    if any(rule.traced_consts):
        # The user's ivjp knows nothing of closed-over values: differentiate the body for them.
        _, c_vjp = jax.vjp(lambda *c: _eval_body(body, *c, *xs), *consts)
        const_cts = list(c_vjp(list(out_cts)))
    return consts + list(xs), const_cts + list(arg_cts)

