"""The fuzzer: properties of jaxinv on random programs built from the registered rules.

Each property is checked on a random program (see ``fuzzing.py``) with its
outputs in a random order:

* ``jaxinv.vjp`` equals ``jax.vjp``, and ``jaxinv.grad`` of some of the
  arguments equals ``jax.grad``;
* ``jax.grad`` of ``jaxinv.invertible(program)`` equals ``jax.grad`` of the
  program, under ``jit`` and under ``vmap``;
* an invertible program round-trips through ``jaxinv.inverse``, its
  ``inverse_and_ildj`` is ``-log|det J|`` (where the Jacobian is square), and
  one made of exact steps saves no activation (``jaxinv.explain``).

The suite runs a fixed, fast profile. For a long run (random seeds, many
programs)::

    JAXINV_FUZZ_PROGRAMS=2000 python -m pytest tests/test_fuzz.py -q --hypothesis-show-statistics

A failure prints the program (shrunk, in a long run, unless
``JAXINV_FUZZ_SHRINK=0``) as Python source, with its constants and the rules
it uses.
"""

import contextlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, Phase, event, given, note, reject, settings
from hypothesis import strategies as st

import jaxinv
from fuzzing import Program, catalogue, programs
from helpers import assert_trees_close
from jaxinv import registry
from jaxinv._src.compat import enable_x64

LONG = "JAXINV_FUZZ_PROGRAMS" in os.environ
# The suite's profile is fixed (derandomized) and does not shrink (a failing
# program of a few steps already reads well); a long run draws random programs
# and shrinks what fails.
FUZZ = settings(max_examples=int(os.environ.get("JAXINV_FUZZ_PROGRAMS", 12)), deadline=None, database=None,
                derandomize=not LONG, suppress_health_check=list(HealthCheck), print_blob=LONG,
                phases=list(Phase) if LONG and os.environ.get("JAXINV_FUZZ_SHRINK") != "0"
                else [Phase.explicit, Phase.generate])


@contextlib.contextmanager
def drawn(data, **kw):
    """Draw a dtype (most often float64, where tolerances are tight), a program
    of it and the same program with its outputs permuted; inside the dtype's
    x64 context, yield ``(dtype, program, permuted, inputs)``."""
    dtype = np.dtype(data.draw(st.sampled_from(["float64", "float64", "float32"]), label="dtype"))
    with enable_x64(dtype == np.float64):
        program = data.draw(programs(dtype=dtype, **kw), label="program")
        perm = data.draw(st.permutations(range(len(program.outputs))), label="output order")
        for feature in sorted(program.features()):
            event(feature)
        note(repr(program))
        note(f"outputs in the order {perm}")
        yield dtype, program, program.permuted(perm), [jnp.asarray(v) for v in program.values]


def reference(fn, *args):
    """JAX's own answer; a program JAX itself cannot differentiate is not one
    to compare against (``jax.vjp`` of ``lax.pad`` with a constant operand and
    a differentiated padding value raises inside JAX 0.10's transpose rule)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 -- any failure of the reference
        note(f"JAX itself fails: {type(e).__name__}: {e}")
        reject()


def cotangents(program: Program, outs, seed=1):
    rng = np.random.default_rng(seed)
    cts = []
    for y in outs:
        dt = jnp.result_type(y)
        if jnp.issubdtype(dt, jnp.complexfloating):
            cts.append(jnp.asarray(rng.normal(size=y.shape) + 1j * rng.normal(size=y.shape), dt))
        elif jnp.issubdtype(dt, jnp.inexact):
            cts.append(jnp.asarray(rng.normal(size=y.shape), dt))
        else:
            cts.append(np.zeros(y.shape, jax.dtypes.float0))
    return tuple(cts)


def tolerance(f, xs, reference, dtype) -> float:
    """An absolute tolerance for ``f``'s results near ``reference`` in
    ``dtype``: how far ``f`` moves when its inputs move by 64 ulps (the
    program's own conditioning), times a margin.

    Never below ``sqrt(eps)`` of the reference's scale: a value rebuilt from
    the outputs can lose digits to cancellation that the forward pass does not
    (``acosh(4 x**3 + 45)`` rebuilds ``x**3`` as a difference of two numbers
    near 45), which moving the inputs does not show. In float64 that floor
    (1.5e-8) is still below float32's eps, so a value that passed through
    float32 fails, as does any wrong formula. Inputs so close to a singularity
    that 64 ulps give a non-finite answer leave nothing to compare: rejected."""
    eps = float(np.finfo(dtype).eps)
    moved = f(*[x * (1 + 64 * eps) if jnp.issubdtype(jnp.result_type(x), jnp.inexact) else x for x in xs])
    pairs = [(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree_util.tree_leaves(moved), jax.tree_util.tree_leaves(reference)) if np.size(a)]
    if not all(np.all(np.isfinite(a)) for a, _ in pairs):
        event("rejected: 64 ulps from a singularity")
        reject()
    drift = max((float(np.max(np.abs(a - b))) for a, b in pairs), default=0.0)
    scale = max((float(np.max(np.abs(b))) for _, b in pairs), default=1.0)
    return max(16 * drift, float(np.sqrt(eps)) * max(scale, 1.0))


def check_ildj(program, permuted, xs, dtype):
    """``inverse_and_ildj`` gives ``-log|det J|`` of the program (in float64,
    for a square Jacobian of real values), whatever the order of the outputs.
    Each log-det is compared with JAX's at the point it was computed, the
    rebuilt inputs: an ill-conditioned chain (``rsqrt`` of ``rsqrt``) rebuilds
    its inputs a little off, and the round trip checks that error."""
    outs = program(*xs)
    sizes = [int(np.size(x)) for x in xs]
    real = all(jnp.issubdtype(jnp.result_type(y), jnp.floating) for y in (*xs, *outs))
    if dtype != np.float64 or not real or sum(sizes) != sum(int(np.size(y)) for y in outs) or sum(sizes) > 64:
        return
    try:
        answers = [jaxinv.inverse_and_ildj(f, *xs)(*f(*xs)) for f in (program, permuted)]
    except jaxinv.NotInvertibleError as e:
        if "no log-det" in str(e):
            event("ildj refused: a step has no log-det rule")
            return  # refused clearly, not answered wrongly
        raise

    def minus_logdet(*x):
        def flat(z):
            parts = jnp.split(z, np.cumsum(sizes)[:-1])
            return jnp.concatenate([y.ravel() for y in program(*[p.reshape(np.shape(a)) for p, a in zip(parts, x)])])
        return -jnp.linalg.slogdet(jax.jacfwd(flat)(jnp.concatenate([a.ravel() for a in x])))[1]

    for rebuilt, got in answers:
        assert np.isfinite(got), got
        rebuilt = list(rebuilt) if isinstance(rebuilt, (tuple, list)) else [rebuilt]
        try:
            want = minus_logdet(*rebuilt)
        except TypeError as e:  # JAX has no forward mode for custom_vjp functions
            event(f"ildj not compared: {e}")
            return
        if not np.isfinite(want):
            event("ildj not compared: JAX's Jacobian is singular (stop_gradient)")
            return  # the function is invertible, its JAX derivative is not
        np.testing.assert_allclose(got, want, rtol=0, atol=tolerance(minus_logdet, rebuilt, want, dtype))
    event("ildj checked")


def loss_of(f, cts):
    """``sum(real(ct * f(*xs)))`` over the floating outputs."""
    def loss(*xs):
        return sum(jnp.sum(jnp.real(c * y)) for c, y in zip(cts, f(*xs)) if jnp.issubdtype(jnp.result_type(y), jnp.inexact))
    return loss


def test_the_fuzzer_composes_every_kind_of_rule():
    """The catalogue holds the registered rules' examples: elementwise,
    structural, linear algebra and control flow (a new rule joins by declaring
    examples, and is then fuzzed)."""
    with enable_x64(True):
        names = {s.name.split("#")[0] for s in catalogue()}
    for prim in ("exp", "log", "mul", "div", "dot_general", "reshape", "transpose", "concatenate", "cumsum",
                 "scan", "cond", "fft", "triangular_solve", "sort"):
        if any(p.name == prim for p in registry.inverse_rules) or any(p.name == prim for p in registry.ivjp_rules):
            assert prim in names, f"`{prim}` has rules and examples but the fuzzer cannot compose it"
    assert any(not s.exact for s in catalogue()) and any(s.shape_preserving for s in catalogue())


@FUZZ
@given(st.data())
def test_vjp_equals_jax_vjp(data):
    with drawn(data) as (dtype, _, program, xs):
        want_out, want_vjp = reference(jax.vjp, program, *xs)
        cts = cotangents(program, want_out)
        got_out, got_vjp = jaxinv.vjp(program, *xs)
        want = reference(want_vjp, cts)
        atol = tolerance(lambda *x: jax.vjp(program, *x)[1](cts), xs, want, dtype)
        assert_trees_close(got_out, want_out, rtol=0.0, atol=atol)
        # the backward pass compiled, as in training (XLA may then recompute a
        # rebuilt value in every fusion that reads it)
        assert_trees_close(jax.jit(got_vjp)(cts), want, rtol=0.0, atol=atol)
        # jaxinv.grad of some arguments: the others are given values (data, or fixed weights)
        argnums = tuple(sorted(data.draw(st.sets(st.sampled_from(range(len(xs))), min_size=1), label="argnums")))
        want_grad = reference(jax.grad(loss_of(program, cts), argnums), *xs)
        assert_trees_close(jaxinv.grad(loss_of(program, cts), argnums)(*xs), want_grad, rtol=0.0,
                           atol=tolerance(jax.grad(loss_of(program, cts), argnums), xs, want_grad, dtype))


@FUZZ
@given(st.data())
def test_invertible_grad_under_jit_and_vmap_equals_jax_grad(data):
    with drawn(data) as (dtype, _, program, xs):
        cts = cotangents(program, program(*xs))
        argnums = tuple(range(len(xs)))
        reference_grad = jax.grad(loss_of(program, cts), argnums)
        got = jax.grad(loss_of(jaxinv.invertible(program), cts), argnums)
        want = reference(reference_grad, *xs)
        atol = tolerance(reference_grad, xs, want, dtype)
        assert_trees_close(jax.jit(got)(*xs), want, rtol=0.0, atol=atol)
        # vmap: the inputs and a copy moved by a relative 1e-4 (inside every domain's margin)
        rng = np.random.default_rng(2)
        batch = [jnp.stack([x, x * (1 + 1e-4 * rng.uniform(-1, 1, x.shape))]) for x in xs]
        want_batch = jax.vmap(reference_grad)(*batch)
        assert_trees_close(jax.vmap(got)(*batch), want_batch, rtol=0.0, atol=2 * atol)


@FUZZ
@given(st.data())
def test_invertible_programs_round_trip_and_exact_ones_save_nothing(data):
    with drawn(data, lossy=False) as (dtype, program, permuted, xs):
        assert program.invertible
        atol = tolerance(lambda *x: x, xs, xs, dtype)
        for f in (program, permuted):
            back = jaxinv.inverse(f, *xs)(*f(*xs))
            back = back if isinstance(back, tuple) else (back,)
            if not program.exact and not all(np.all(np.isfinite(b)) for b in back):
                # a saturating map's output rounded (erfc(7) = 4e-23, then + 0.79):
                # no inverse can recover its input; jaxinv.inverse gives inf or nan
                event("not compared: a saturating map's output lost its input to rounding")
                reject()
            assert all(np.all(np.isfinite(b)) for b in back), back
            if not all(np.allclose(b, x, rtol=0.0, atol=atol) for b, x in zip(back, xs)):
                # a reconstruction is as good as the outputs' rounding allows: the inverse's own conditioning
                atol_f = max(atol, tolerance(lambda *y: jaxinv.inverse(f, *xs)(*y), list(f(*xs)), back, dtype))
                assert_trees_close(back, tuple(xs), rtol=0.0, atol=atol_f)
        check_ildj(program, permuted, xs, dtype)
        if program.exact:
            report = jaxinv.explain(permuted, *xs)
            assert report.saved_activation_bytes == 0, str(report)
            assert jaxinv.explain(program, *xs).saved_bytes == report.saved_bytes
