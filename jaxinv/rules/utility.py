"""Rules for primitives that only carry values through, for PRNG keys, and for
jaxinv's own primitives: the ``nonzero`` and ``anchor`` markers and
``custom_ivjp`` calls.

* Identity-like primitives (``optimization_barrier``, ``sharding_constraint``,
  ``checkpoint_name``'s ``name``, ``stop_gradient``): the input is the output.
* ``jit`` / ``pjit``, ``closed_call``, ``call`` and ``remat`` (``jax.checkpoint``)
  need no rule: ``jaxinv._src.flatten`` inlines their bodies, so the planner sees
  (and inverts) across their borders.
* PRNG: ``random_bits``, ``random_split``, ``random_fold_in`` (and the
  arithmetic that turns bits into a dropout mask) are hashes of the key; they are
  never solved for, only recomputed forward from the key, which the plan keeps
  (a few bytes) instead of the mask. Where a key primitive is a bijection it is
  inverted: ``random_wrap`` <-> ``random_unwrap``, and ``threefry2x32`` as a
  bijection of its counter for a known key.
* ``custom_ivjp_call`` (``jaxinv.custom_ivjp`` defines the primitive and the
  user API): its rules call the user's ``definverse`` / ``defivjp`` rules; the
  cotangents of traced closed-over values, and a log-det the user did not give,
  come from the body. Without a user rule the body is inlined instead.

Each rule is registered right after its definition (see CONTRIBUTING.md, "The
conventions").
"""

from __future__ import annotations

import jax
import jax.extend.random  # noqa: F401  (threefry_2x32, in an example)
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.extend.core import primitives as P
from jax.sharding import SingleDeviceSharding

from jaxinv._src import interpreter
from jaxinv._src.compat import SUPPORTED_JAX, name_p, optimization_barrier_p, random_unwrap_p, random_wrap_p
from jaxinv._src.dtypes import is_float
from jaxinv._src.plan import make_plan
from jaxinv.custom_ivjp import custom_ivjp, custom_ivjp_call_p, eval_body
from jaxinv._version import __version__
from jaxinv.domains import Example, integers, reals
from jaxinv.markers import anchor, anchor_p, keep_input_p, nonzero, nonzero_p
from jaxinv.packs import RulePack
from jaxinv.registry import NotInvertibleError, input_avals

pack = RulePack("jaxinv.utility", __version__, jax_versions=SUPPORTED_JAX, builtin=True,
                description="identity-like primitives (optimization_barrier, sharding_constraint, name, "
                            "stop_gradient), PRNG key wrapping and threefry2x32, markers, and jaxinv's "
                            "custom_ivjp calls; jit/pjit, closed_call and remat (checkpoint) need no rule: "
                            "jaxinv._src.flatten inlines them")

# ---------------------------------------------------------------- markers

pack.defunary(nonzero_p, lambda y: y, ct=lambda x, y, ct: ct, examples=Example(nonzero, reals()),
              notes="identity; asserts nonzero (for a matrix: nonsingular)")
pack.register_nonzero(nonzero_p)
pack.register_nonsingular(nonzero_p)

# jaxinv.anchor: no inverse for gradients (the planner stores its input, so
# rebuilding restarts from an exact value); jaxinv.inverse sees the identity.
pack.defunary(anchor_p, lambda y: y, principal_branch=True, examples=Example(anchor, reals()),
              notes="identity; for gradients its input is stored instead")
pack.register_ildj(anchor_p)
pack.register_not_invertible(anchor_p, "an anchor stores its input (the backward pass restarts from it)")

# jaxinv.keep_input marks the inputs of a block the gradient path never
# inverts (its call is one unit; the save policy stores what it marks).
pack.defunary(keep_input_p, lambda y: y, principal_branch=True, examples=Example(keep_input_p.bind, reals()),
              notes="identity; for gradients the block it marks is not inverted: its input is stored")
pack.register_ildj(keep_input_p)
pack.register_not_invertible(keep_input_p, "a jaxinv.keep_input block stores its input (JAX differentiates it)")

# ---------------------------------------------------------------- custom_ivjp calls


def _split_consts(invals, num_consts, what):
    """The closed-over values (every one must be known) and the arguments."""
    consts, args = list(invals[:num_consts]), list(invals[num_consts:])
    if any(c is None for c in consts):
        raise NotInvertibleError(f"the values {what} closes over must be known")
    return consts, args


def _custom_ivjp_inverse(invals, outvals, *, body, num_consts, rule):
    consts, args = _split_consts(invals, num_consts, rule.f.__name__)
    return consts + list(rule.inverse(args, outvals))


def _custom_ivjp_ivjp(invals, outvals, out_cts, *, body, num_consts, rule):
    consts, args = _split_consts(invals, num_consts, rule.f.__name__)
    if rule.f.ivjp is not None and rule.in_axes is None:
        xs, arg_cts = rule.ivjp(args, outvals, out_cts)
    else:
        xs = rule.inverse(args, outvals)
        _, f_vjp = jax.vjp(lambda *a: eval_body(body, *consts, *a), *xs)
        arg_cts = list(f_vjp(list(out_cts)))
    const_cts = [None] * num_consts
    if any(rule.traced_consts):
        # The user's ivjp knows nothing of closed-over values: differentiate the body for them.
        _, c_vjp = jax.vjp(lambda *c: eval_body(body, *c, *xs), *consts)
        const_cts = list(c_vjp(list(out_cts)))
    return consts + list(xs), const_cts + list(arg_cts)


def _custom_ivjp_ildj(invals, outvals, *, body, num_consts, rule):
    """The user's ildj, else the log-det derived through the body (planned
    like a loop body: nothing saved)."""
    consts, args = _split_consts(invals, num_consts, rule.f.__name__)
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


@custom_ivjp
def _couple(x1, x2):  # conformance example
    return x1, x2 + jnp.tanh(x1)


_couple.definverse(lambda y1, y2: (y1, y2 - jnp.tanh(y1)))


pack.register_inverse(custom_ivjp_call_p, _custom_ivjp_inverse,
                      examples=Example(_couple, reals(), reals(), solve=[(0, 1)]),
                      notes="the user's own rule (definverse / defivjp)")
pack.register_ivjp(custom_ivjp_call_p, _custom_ivjp_ivjp)
pack.register_ildj(custom_ivjp_call_p, _custom_ivjp_ildj)

# ---------------------------------------------------------------- identity-like


def _barrier_inverse(invals, outvals, **_):
    if any(x is None and y is None for x, y in zip(invals, outvals)):
        raise NotInvertibleError("an unknown input's output of optimization_barrier is not read")
    return [y if x is None else x for x, y in zip(invals, outvals)]


def _barrier_ivjp(invals, outvals, out_cts, **_):
    avals = input_avals()
    return (_barrier_inverse(invals, outvals),
            [ct if is_float(a) else None for ct, a in zip(out_cts, avals)])


# optimization_barrier(xs) = xs (it only blocks compiler reordering): each input
# is its output, and so is its cotangent.
pack.register_inverse(optimization_barrier_p, _barrier_inverse, examples=Example(
    lambda x, y: lax.optimization_barrier((x, y)), reals(), reals(shape=(3,)), solve=[(0,), (1,), (0, 1)]),
    notes="identity on a tuple")
pack.register_ivjp(optimization_barrier_p, _barrier_ivjp)
pack.register_nonzero(optimization_barrier_p, lambda nz, **_: all(nz))
pack.register_ildj(optimization_barrier_p)  # the identity: log-det 0


def _same_ct(x, y, ct):
    return ct if is_float(y) else None


def _zero_ct(x, y, ct):
    return jnp.zeros_like(ct) if is_float(y) else None


def _one_device():  # a sharding for the example, made lazily (no backend at import)
    return SingleDeviceSharding(jax.devices()[0])


# with_sharding_constraint and checkpoint_name only annotate a value: x = y, ct_x = ct_y.
pack.defunary(P.sharding_constraint_p, lambda y: y, ct=_same_ct,
              examples=Example(lambda x: lax.with_sharding_constraint(x, _one_device()), reals()),
              notes="identity (a sharding annotation)")
pack.defunary(name_p, lambda y: y, ct=_same_ct, examples=Example(lambda x: checkpoint_name(x, "h"), reals()),
              notes="identity (jax.ad_checkpoint.checkpoint_name)")
# stop_gradient is the identity on values and zero on cotangents.
pack.defunary(P.stop_gradient_p, lambda y: y, ct=_zero_ct, examples=Example(lax.stop_gradient, reals()),
              notes="identity on values; its cotangent is zero")

# ---------------------------------------------------------------- PRNG keys

_U32 = (0, 1, 7, 0x9E3779B9, 2**31, 2**32 - 1)


def _unwrap_inverse(invals, outvals, **_):
    # the key whose data is the output, with the key type of the input
    # (its PRNG implementation, e.g. threefry, is part of the key dtype)
    return [jax.random.wrap_key_data(outvals[0], impl=input_avals()[0].dtype._impl)]


# random_wrap (key data -> key) and random_unwrap (key -> key data) only change
# the type: each is inverted by the other.
pack.register_inverse(random_wrap_p, lambda invals, outvals, **_: [jax.random.key_data(outvals[0])],
                      examples=Example(lambda d: jax.random.key_data(jax.random.wrap_key_data(d)),
                                       integers(_U32, shape=(3, 2), dtype=np.uint32)),
                      notes="key data from the key (random_unwrap)")
pack.register_inverse(random_unwrap_p, _unwrap_inverse,
                      examples=Example(lambda d: jax.random.key_data(jax.random.wrap_key_data(d)),
                                       integers(_U32, shape=(3, 2), dtype=np.uint32)),
                      notes="the key from its data (random_wrap with the key's implementation)")
pack.register_ildj(random_wrap_p)  # a bijection of integers: log-det 0
pack.register_ildj(random_unwrap_p)

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotr32(v, r):
    return jnp.right_shift(v, np.uint32(r)) | jnp.left_shift(v, np.uint32(32 - r))


def _threefry2x32_undo(k1, k2, y1, y2):
    """Threefry-2x32's 20 rounds run backwards (as JAX's unrolled lowering in
    jax/_src/random/threefry2x32.py, read bottom-up); uint32 arithmetic wraps."""
    ks = [k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA)]
    x0, x1 = y1, y2
    for g in reversed(range(5)):
        x0 = x0 - ks[(g + 1) % 3]
        x1 = x1 - ks[(g + 2) % 3] - np.uint32(g + 1)
        for r in reversed(_THREEFRY_ROTATIONS[g % 2]):
            # round: x0 += x1; x1 = rotl(x1, r) ^ x0
            x1 = _rotr32(x1 ^ x0, r)
            x0 = x0 - x1
    return x0 - ks[0], x1 - ks[1]


def _threefry2x32_inverse(invals, outvals, **_):
    k1, k2, x1, x2 = invals
    if k1 is None or k2 is None:
        raise NotInvertibleError("threefry2x32 is a bijection of its counter only for a known key")
    if any(y is None for y in outvals):
        raise NotInvertibleError("both outputs of threefry2x32 are needed to undo its rounds")
    shape = tuple(jnp.shape(outvals[0]))
    for x, a in zip((x1, x2), input_avals()[2:]):
        if x is None and tuple(a.shape) != shape:
            raise NotInvertibleError("a broadcast counter of threefry2x32 cannot be recovered uniquely")
    c1, c2 = _threefry2x32_undo(k1, k2, outvals[0], outvals[1])
    return [k1, k2, c1 if x1 is None else x1, c2 if x2 is None else x2]


# threefry2x32(k1, k2, x1, x2): a 20-round Threefish-style cipher of the counter
# (x1, x2) under the key (k1, k2); each round (add, rotate, xor) is undone exactly.
pack.register_inverse(P.threefry2x32_p, _threefry2x32_inverse, examples=Example(
    lambda k, c: jax.extend.random.threefry_2x32(k, c), integers(_U32, shape=(2,), dtype=np.uint32),
    integers(_U32, shape=(6,), dtype=np.uint32), solve=[(2,), (3,), (2, 3)]),
    notes="the counter, for a known key (a bijection)")
pack.register_ildj(P.threefry2x32_p)  # a bijection of integers: log-det 0

_HASH = ("a hash of the key: recomputed forward from the key (which the plan keeps, a few bytes), "
         "never solved for")
pack.register_not_invertible(P.random_bits_p, "pseudo-random bits are " + _HASH)
pack.register_not_invertible(P.random_split_p, "split keys are " + _HASH)
pack.register_not_invertible(P.random_fold_in_p, "a folded-in key is " + _HASH)
