"""Rules for higher-order primitives: scan, fori-style while loops, cond /
switch, custom_jvp and custom_vjp calls.

These rules recurse into the interpreter (a loop body is planned and run like
any jaxpr), so this pack sits above ``jaxinv._src.interpreter`` rather than
below it. Each rule is registered right after its definition (see
CONTRIBUTING.md, "The conventions"). ``jit``, ``closed_call`` and ``remat``
need no rule: their bodies are inlined (``jaxinv._src.flatten``).

* ``scan``: the body must rebuild its carry (and any unknown ``xs`` slice) from
  its outputs with nothing saved; the ivjp is a *reverse scan of the inverted
  body*, carrying the rebuilt carry and its cotangent, so memory and compile
  time stay flat in the number of iterations.
* ``while`` in the form ``lax.fori_loop`` produces (counter, bound, state...):
  the trip count comes from the known initial counter and bound; the ivjp is a
  reverse ``fori_loop`` (reverse-mode through a while loop, which JAX itself
  refuses).
* ``cond`` (``lax.cond``, ``lax.switch``): invertible when its index (first
  operand) is known; the outer plan recomputes it, or saves it (one scalar)
  when it is computed from values the outputs cannot give back. Every branch
  must rebuild the unknown operands with nothing saved; the inverse is a
  ``lax.switch`` over the inverted branches, the ivjp a ``lax.switch`` over
  the branches' reverse sweeps.
* ``custom_jvp_call`` / ``custom_vjp_call``: inverted through their body; their
  cotangents come from their own custom rule (the interpreter's derived ivjp).
  Well-known JAX functions whose body no rule inverts (``jnp.logaddexp``, hence
  ``jax.nn.softplus``; ``jax.scipy.special.logit``) are recognised and get their
  own inverse from ``jaxinv.rules.functions``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import ClosedJaxpr, Literal
from jax.extend.core import primitives as P

from jaxinv import registry
from jaxinv._src import interpreter
from jaxinv._src.flatten import as_closed, flatten, has_calls
from jaxinv._src.plan import make_plan
from jaxinv._version import __version__
from jaxinv._src.compat import literal_value, SUPPORTED_JAX
from jaxinv._src.dtypes import is_float
from jaxinv.domains import Example, booleans, fixed, integers, reals
from jaxinv.packs import RulePack
from jaxinv.registry import NotInvertibleError
from jaxinv.rules.functions import known_inverse

pack = RulePack("jaxinv.control_flow", __version__, jax_versions=SUPPORTED_JAX, builtin=True,
                description="loops, cond/switch and custom-derivative calls, inverted through their bodies")

# ---------------------------------------------------------------- shared helpers


def _body_plan(body: ClosedJaxpr, known: tuple[bool, ...]):
    """A loop body's plan with nothing saved (raises NotInvertibleError); calls
    inside the body (jit, remat, nested regions) are inlined first. Under
    ``jaxinv.inverse`` it is planned in its mode (principal branches, divisors
    assumed nonzero), as the code around the loop is."""
    return _body_plan_in_mode(body, known, registry.principal_branches_allowed())


@functools.lru_cache(maxsize=512)
def _body_plan_in_mode(body: ClosedJaxpr, known: tuple[bool, ...], principal_branch: bool):
    if has_calls(body):
        body = flatten(body, lift_consts=False)
    plan = make_plan(body, known, allow_saving=False, principal_branch=principal_branch)
    lost = [i for i, (v, k) in enumerate(zip(plan.jaxpr.invars, known)) if not k and v not in plan.sources]
    if lost:  # the planner recovers only what the outputs depend on
        raise NotInvertibleError(f"the outputs do not depend on input(s) {lost} of the body")
    return plan


def _zero_if_none(ct, like):
    return jnp.zeros_like(like) if ct is None else ct


# ---------------------------------------------------------------- scan


def _scan_parts(seq, num_consts, num_carry):
    return list(seq[:num_consts]), list(seq[num_consts:num_consts + num_carry]), list(seq[num_consts + num_carry:])


def _scan_setup(invals, num_consts, num_carry, jaxpr):
    consts, init, xs = _scan_parts(invals, num_consts, num_carry)
    if any(c is None for c in consts):
        raise NotInvertibleError("a scan's constants must be known to invert it")
    xs_known = tuple(x is not None for x in xs)
    known = (True,) * num_consts + (False,) * num_carry + xs_known
    return consts, init, xs, xs_known, _body_plan(as_closed(jaxpr), known)


def _scan_outputs(jaxpr, num_consts, num_carry, init, outvals, length) -> tuple[list, list]:
    """(final carry, ys) of a scan run backwards; an unread counter is filled in."""
    carry_out = _counted_carries(jaxpr, num_consts, init, outvals[:num_carry], length)
    if any(c is None for c in carry_out):
        raise NotInvertibleError("a scan's final carry is needed to run it backwards")
    return carry_out, list(outvals[num_carry:])


def _counted_carries(jaxpr, num_consts, init, carry_out, length) -> list:
    """Fill in an unread final carry that is a counter (``lax.fori_loop``'s
    ``i``: the body adds a literal step to it) from its known start: start +
    step * length."""
    body = as_closed(jaxpr).jaxpr
    filled = list(carry_out)
    for j, c in enumerate(carry_out):
        if c is not None or init[j] is None:
            continue
        v_in, v_out = body.invars[num_consts + j], body.outvars[j]
        steps = [e for e in body.eqns if v_out in e.outvars]
        if (len(steps) == 1 and steps[0].primitive is P.add_p and steps[0].invars[0] is v_in
                and isinstance(steps[0].invars[1], Literal)):
            dtype = jnp.result_type(init[j])
            filled[j] = (init[j] + np.asarray(literal_value(steps[0].invars[1]), dtype) * length).astype(dtype)
    return filled


def _scan_backwards(invals, outvals, jaxpr, num_consts, num_carry, length, reverse, with_ildj=False):
    """The reverse scan of the inverted body: (inputs, summed log-det or None)."""
    consts, init, xs, xs_known, plan = _scan_setup(invals, num_consts, num_carry, jaxpr)
    carry_out, ys = _scan_outputs(jaxpr, num_consts, num_carry, init, outvals, length)
    known_xs = [x for x in xs if x is not None]

    def step(state, sl):
        carry, log_det = state
        xs_i, ys_i = sl
        it = iter(xs_i)
        inputs = consts + [None] * num_carry + [next(it) if k else None for k in xs_known]
        if with_ildj:
            vals, term = interpreter.reconstruct_and_ildj(plan, inputs, [], list(carry) + list(ys_i))
            log_det = log_det + term.astype(log_det.dtype)
        else:
            vals = interpreter.reconstruct(plan, inputs, [], list(carry) + list(ys_i))
        _, c_in, x_in = _scan_parts(vals, num_consts, num_carry)
        return (c_in, log_det), [x for x, k in zip(x_in, xs_known) if not k]

    (c0, log_det), xs_rec = lax.scan(step, (list(carry_out), interpreter.log_det_zero(carry_out)), (known_xs, list(ys)),
                                     length=length,
                                     reverse=not reverse)
    rec = iter(xs_rec)
    solved = consts + [i if i is not None else c for i, c in zip(init, c0)] + \
        [x if x is not None else next(rec) for x in xs]
    return solved, (log_det if with_ildj else None)


def _scan_inverse(invals, outvals, *, jaxpr, num_consts, num_carry, length, reverse, **_):
    return _scan_backwards(invals, outvals, jaxpr, num_consts, num_carry, length, reverse)[0]


def _scan_ildj(invals, outvals, *, jaxpr, num_consts, num_carry, length, reverse, **_):
    # The scan is a composition of its iterations: the log-dets add up.
    return _scan_backwards(invals, outvals, jaxpr, num_consts, num_carry, length, reverse, with_ildj=True)[1]


def _scan_ivjp(invals, outvals, out_cts, *, jaxpr, num_consts, num_carry, length, reverse, **_):
    consts, init, xs, xs_known, plan = _scan_setup(invals, num_consts, num_carry, jaxpr)
    carry_out, ys = _scan_outputs(jaxpr, num_consts, num_carry, init, outvals, length)
    ct_carry, ct_ys = out_cts[:num_carry], out_cts[num_carry:]
    fc = [j for j, c in enumerate(carry_out) if is_float(c)]            # carries with cotangents
    fk = [j for j, c in enumerate(consts) if is_float(c)]
    known_xs = [x for x in xs if x is not None]
    x_avals = [v.aval for v in as_closed(jaxpr).jaxpr.invars[num_consts + num_carry:]]

    def step(carry, sl):
        c_val, c_ct, k_ct = carry
        xs_i, ys_i, ys_ct_i = sl
        it = iter(xs_i)
        inputs = consts + [None] * num_carry + [next(it) if k else None for k in xs_known]
        outs_ct = [None] * num_carry
        for j, ct in zip(fc, c_ct):
            outs_ct[j] = ct
        vals, in_cts = interpreter.backward(plan, inputs, [], list(c_val) + list(ys_i),
                                            outs_ct + list(ys_ct_i), return_inputs=True)
        _, c_in, x_in = _scan_parts(vals, num_consts, num_carry)
        k_in_ct, c_in_ct, x_in_ct = _scan_parts(in_cts, num_consts, num_carry)
        new_k_ct = [acc + _zero_if_none(k_in_ct[j], consts[j]) for acc, j in zip(k_ct, fk)]
        new_c_ct = [_zero_if_none(c_in_ct[j], c_in[j]) for j in fc]
        x_ct = [_zero_if_none(ct, jnp.zeros(a.shape, a.dtype)) for ct, a in zip(x_in_ct, x_avals)
                if is_float(a)]
        return (c_in, new_c_ct, new_k_ct), ([x for x, k in zip(x_in, xs_known) if not k], x_ct)

    start = (list(carry_out), [ct_carry[j] for j in fc], [jnp.zeros_like(consts[j]) for j in fk])
    (c0, c0_ct, k_ct), (xs_rec, xs_ct) = lax.scan(
        step, start, (known_xs, list(ys), list(ct_ys)), length=length, reverse=not reverse)
    rec = iter(xs_rec)
    new_invals = consts + [i if i is not None else c for i, c in zip(init, c0)] + \
        [x if x is not None else next(rec) for x in xs]
    in_cts = [None] * len(invals)
    for j, ct in zip(fk, k_ct):
        in_cts[j] = ct
    for j, ct in zip(fc, c0_ct):
        in_cts[num_consts + j] = ct
    float_x = [j for j, a in enumerate(x_avals) if is_float(a)]
    for j, ct in zip(float_x, xs_ct):
        in_cts[num_consts + num_carry + j] = ct
    return new_invals, in_cts


pack.register_inverse(P.scan_p, _scan_inverse, examples=[
    Example(lambda c, xs: lax.scan(lambda c, x: (c + x, jnp.exp(c)), c, xs), reals(shape=(3,)),
            reals(shape=(4, 3)), solve=[(0,), (0, 1)], label="carry and xs from the outputs"),
    Example(lambda c, xs: lax.scan(lambda c, x: (c * 1.5 + jnp.tanh(x), None), c, xs), reals(shape=(3,)),
            reals(shape=(5, 3)), solve=[(0,)], label="carry only, xs known"),
], notes="the body must rebuild its carry with nothing saved; ivjp = reverse scan of the inverted body")
pack.register_ivjp(P.scan_p, _scan_ivjp)
pack.register_ildj(P.scan_p, _scan_ildj)


# ---------------------------------------------------------------- fori-style while


def _fori_form(cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts):
    """Whether the loop is ``lax.fori_loop``'s: carry (i, upper, *state), cond
    ``i < upper``, body ``(i + 1, upper, ...)``."""
    cj, bj = as_closed(cond_jaxpr).jaxpr, as_closed(body_jaxpr).jaxpr
    if cond_nconsts or len(cj.eqns) != 1 or cj.eqns[0].primitive is not P.lt_p:
        return False
    i, upper = cj.invars[0], cj.invars[1]
    if list(cj.eqns[0].invars) != [i, upper]:
        return False
    b_i, b_upper = bj.invars[body_nconsts], bj.invars[body_nconsts + 1]
    if bj.outvars[1] is not b_upper:
        return False
    inc = [e for e in bj.eqns if bj.outvars[0] in e.outvars]
    return (len(inc) == 1 and inc[0].primitive is P.add_p and inc[0].invars[0] is b_i
            and isinstance(inc[0].invars[1], Literal) and int(literal_value(inc[0].invars[1])) == 1)


def _while_setup(invals, cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts):
    if not _fori_form(cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts):
        raise NotInvertibleError("only while loops with a fixed trip count (lax.fori_loop) can be inverted")
    nb = body_nconsts
    consts, (i0, upper), state = list(invals[:nb]), invals[nb:nb + 2], list(invals[nb + 2:])
    if any(c is None for c in consts) or i0 is None or upper is None:
        raise NotInvertibleError("the loop's constants, start and bound must be known to invert it")
    known = (True,) * nb + (True, True) + (False,) * len(state)
    return consts, i0, upper, state, _body_plan(as_closed(body_jaxpr), known)


def _while_backwards(invals, outvals, cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts, with_ildj=False):
    """The loop run backwards with the inverted body: (inputs, summed log-det or None)."""
    consts, i0, upper, state, plan = _while_setup(invals, cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts)
    nb = body_nconsts
    n = jnp.maximum(upper - i0, 0)
    s_final = list(outvals[2:])

    def step(k, carry):
        s, log_det = carry
        i = i0 + n - 1 - k
        args = (plan, consts + [i, upper] + [None] * len(s), [], [i + 1, upper, *s])
        if with_ildj:
            vals, term = interpreter.reconstruct_and_ildj(*args)
            log_det = log_det + term.astype(log_det.dtype)
        else:
            vals = interpreter.reconstruct(*args)
        return vals[nb + 2:], log_det

    s0, log_det = lax.fori_loop(0, n, step, (s_final, interpreter.log_det_zero(s_final)))
    return consts + [i0, upper] + list(s0), (log_det if with_ildj else None)


def _while_inverse(invals, outvals, *, cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts, **_):
    return _while_backwards(invals, outvals, cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts)[0]


def _while_ildj(invals, outvals, *, cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts, **_):
    # A fixed-count loop is a composition of its iterations: the log-dets add up.
    return _while_backwards(invals, outvals, cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts, with_ildj=True)[1]


def _while_ivjp(invals, outvals, out_cts, *, cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts, **_):
    consts, i0, upper, state, plan = _while_setup(invals, cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts)
    nb = body_nconsts
    n = jnp.maximum(upper - i0, 0)
    s_final = list(outvals[2:])
    fs = [j for j, s in enumerate(s_final) if is_float(s)]
    fk = [j for j, c in enumerate(consts) if is_float(c)]

    def step(k, carry):
        s, s_ct, k_ct = carry
        i = i0 + n - 1 - k
        outs_ct = [None, None] + [None] * len(s)
        for j, ct in zip(fs, s_ct):
            outs_ct[2 + j] = ct
        vals, in_cts = interpreter.backward(plan, consts + [i, upper] + [None] * len(s), [],
                                            [i + 1, upper, *s], outs_ct, return_inputs=True)
        s_in = vals[nb + 2:]
        return (s_in, [_zero_if_none(in_cts[nb + 2 + j], s_in[j]) for j in fs],
                [acc + _zero_if_none(in_cts[j], consts[j]) for acc, j in zip(k_ct, fk)])

    start = (s_final, [_zero_if_none(out_cts[2 + j], s_final[j]) for j in fs],
             [jnp.zeros_like(consts[j]) for j in fk])
    s0, s0_ct, k_ct = lax.fori_loop(0, n, step, start)
    in_cts = [None] * len(invals)
    for j, ct in zip(fk, k_ct):
        in_cts[j] = ct
    for j, ct in zip(fs, s0_ct):
        in_cts[nb + 2 + j] = ct
    return consts + [i0, upper] + list(s0), in_cts


pack.register_inverse(P.while_p, _while_inverse, examples=Example(
    lambda x, n: lax.fori_loop(0, n, lambda i, x: jnp.sinh(x) * 0.5 + 1.0, x), reals(-1, 1), fixed(np.int32(3)),
    solve=[(2,)], label="fori_loop with a traced bound (a while loop)"),
    notes="fixed trip count (lax.fori_loop form) only; ivjp = reverse fori_loop")
pack.register_ivjp(P.while_p, _while_ivjp)
pack.register_ildj(P.while_p, _while_ildj)


# ---------------------------------------------------------------- cond / switch


def _cond_setup(invals, outvals, branches):
    """The plans of every branch, with the operands known here known in each
    (nothing saved). The index must be known: it is an input of the cond, which
    the outer plan recomputes or saves (a scalar) like any other. Branches are
    checked first, so that a branch no index could help is the reason given."""
    if any(y is None for y in outvals):
        raise NotInvertibleError("every output of a cond/switch is needed to run its branch backwards")
    known = tuple(x is not None for x in invals[1:])
    plans = []
    for k, branch in enumerate(branches):
        try:
            plans.append(_body_plan(as_closed(branch), known))
        except NotInvertibleError as err:
            raise NotInvertibleError(f"branch {k} (of {len(branches)}) is not invertible: {err}") from None
    if invals[0] is None:
        raise NotInvertibleError("the branch index of a cond/switch must be known (recomputed or saved)")
    return invals[0], list(invals[1:]), plans


def _cond_backwards(invals, outvals, branches, with_ildj=False):
    # cond(i, ops) = branches[i](ops): the operands are branch i's inverse applied
    # to the outputs, so run lax.switch(i, inverted branches); the log-det is the
    # chosen branch's.
    index, ops, plans = _cond_setup(invals, outvals, branches)
    unknown = [j for j, x in enumerate(ops) if x is None]
    zero = interpreter.log_det_zero([*ops, *outvals])

    def inverted(plan):
        def run(outs):
            if with_ildj:
                vals, log_det = interpreter.reconstruct_and_ildj(plan, ops, [], list(outs))
            else:
                vals, log_det = interpreter.reconstruct(plan, ops, [], list(outs)), zero
            return [vals[j] for j in unknown], log_det.astype(zero.dtype)
        return run

    solved, log_det = lax.switch(index, [inverted(p) for p in plans], list(outvals))
    solved = iter(solved)
    return [index] + [x if x is not None else next(solved) for x in ops], (log_det if with_ildj else None)


def _cond_inverse(invals, outvals, *, branches, **_):
    return _cond_backwards(invals, outvals, branches)[0]


def _cond_ildj(invals, outvals, *, branches, **_):
    return _cond_backwards(invals, outvals, branches, with_ildj=True)[1]


def _cond_ivjp(invals, outvals, out_cts, *, branches, **_):
    # The same switch, each branch running its own reverse sweep: it rebuilds
    # the operands and their cotangents (known float operands included) together.
    index, ops, plans = _cond_setup(invals, outvals, branches)
    unknown = [j for j, x in enumerate(ops) if x is None]
    avals = [v.aval for v in as_closed(branches[0]).jaxpr.invars]
    floats = [j for j, a in enumerate(avals) if is_float(a)]
    cts = [ct if ct is not None and is_float(y) else None for ct, y in zip(out_cts, outvals)]

    def reversed_branch(plan):
        def run(outs):
            vals, in_cts = interpreter.backward(plan, ops, [], list(outs), cts, return_inputs=True)
            return ([vals[j] for j in unknown],
                    [_zero_if_none(in_cts[j], jnp.zeros(avals[j].shape, avals[j].dtype)) for j in floats])
        return run

    solved, float_cts = lax.switch(index, [reversed_branch(p) for p in plans], list(outvals))
    solved = iter(solved)
    in_cts = [None] * len(invals)
    for j, ct in zip(floats, float_cts):
        in_cts[1 + j] = ct
    return [index] + [x if x is not None else next(solved) for x in ops], in_cts


pack.register_inverse(P.cond_p, _cond_inverse, examples=[
    Example(lambda i, x: lax.switch(i, [lambda x: jnp.exp(x), lambda x: x * 2.0 + 1.0, lambda x: -jnp.tanh(x)], x),
            integers((0, 1, 2), shape=(), dtype=np.int32), reals(), solve=[(1,)], label="lax.switch"),
    Example(lambda p, x, w: lax.cond(p, lambda x: x + jnp.tanh(w), lambda x: x * 2.0 - w, x),
            booleans(shape=()), reals(), reals(), solve=[(2,)], label="lax.cond, a known closed-over operand"),
], notes="the index must be known (recomputed or saved); every branch must invert with nothing saved; "
         "ivjp = lax.switch over the branches' reverse sweeps")
pack.register_ivjp(P.cond_p, _cond_ivjp)
pack.register_ildj(P.cond_p, _cond_ildj)


# ---------------------------------------------------------------- custom_jvp / custom_vjp


@jax.custom_jvp
def _scaled_tanh(x):  # conformance example
    return jnp.tanh(x) * 2.0


_scaled_tanh.defjvp(lambda primals, tangents: (_scaled_tanh(primals[0]),
                                               2.0 * (1 - jnp.tanh(primals[0]) ** 2) * tangents[0]))


@jax.custom_vjp
def _shifted_exp(x):  # conformance example
    return jnp.exp(x) + 1.0


_shifted_exp.defvjp(lambda x: (_shifted_exp(x), jnp.exp(x)), lambda ex, ct: (ct * ex,))


def _custom_call_inverse(invals, outvals, *, call_jaxpr, num_consts, **params):
    rule = known_inverse(call_jaxpr, params.get("jvp_jaxpr_fun")) if num_consts == 0 else None
    if rule is not None:  # jnp.logaddexp, logit, ...: a body no per-primitive rule inverts
        return rule(list(invals), list(outvals))
    known = tuple(x is not None for x in invals)
    if not all(known[:num_consts]):
        raise NotInvertibleError("the values a custom_jvp/custom_vjp function closes over must be known")
    plan = _body_plan(as_closed(call_jaxpr), known)
    return interpreter.reconstruct(plan, list(invals), [], list(outvals))


def _custom_call_ildj(invals, outvals, *, call_jaxpr, num_consts, **params):
    # Through the body, as the inverse; a recognised function (logaddexp,
    # logit) is elementwise in its unknown operand: sum log|dx/dy| by forward mode.
    rule = known_inverse(call_jaxpr, params.get("jvp_jaxpr_fun")) if num_consts == 0 else None
    if rule is not None:
        unknown = [j for j, x in enumerate(invals) if x is None]
        if len(unknown) != 1 or len(outvals) != 1:
            raise NotInvertibleError("a log-det needs one unknown operand")
        (u,) = unknown
        _, dx = jax.jvp(lambda y: rule(list(invals), [y])[u], (outvals[0],), (jnp.ones_like(outvals[0]),))
        return jnp.sum(jnp.log(jnp.abs(dx)))
    plan = _body_plan(as_closed(call_jaxpr), tuple(x is not None for x in invals))
    return interpreter.reconstruct_and_ildj(plan, list(invals), [], list(outvals))[1]


pack.register_inverse(P.custom_jvp_call_p, _custom_call_inverse, examples=[
    Example(lambda x: _scaled_tanh(x), reals(), label="a user's custom_jvp, through its body"),
    Example(jax.nn.softplus, reals(-10, 10), label="softplus (logaddexp, recognised)"),
    # Where one operand is far below the other, the output hides it (logaddexp(5, -4.5) = 5 + 7e-5: float32
    # keeps 0.6% of it), so the domain keeps the operands within 4 of each other.
    Example(jnp.logaddexp, reals(-2, 2), reals(-2, 2), solve=[(0,), (1,)], label="logaddexp, either operand"),
    Example(jax.scipy.special.logit, reals(0.01, 0.99), label="logit (recognised)"),
], notes="inverted through its body, or by a known inverse (logaddexp, softplus, logit); cotangents from its "
         "custom JVP; logaddexp with a nonzero known operand saturates: the gradient path saves its input")
pack.register_inverse(P.custom_vjp_call_p, _custom_call_inverse,
                      examples=Example(lambda x: _shifted_exp(x), reals()),
                      notes="inverted through its body; cotangents from its custom VJP")
pack.register_ildj(P.custom_jvp_call_p, _custom_call_ildj)
pack.register_ildj(P.custom_vjp_call_p, _custom_call_ildj)
