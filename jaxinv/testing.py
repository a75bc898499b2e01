"""``jaxinv.testing``: the conformance harness every rule must pass.

A rule is right when, called the way the interpreter calls it,

* its **inverse** returns the true inputs (same shape, dtype, values) for every
  pattern of unknown inputs it claims to solve, and
* its fused **ivjp** also returns the cotangents ``jax.vjp`` gives,
* its **log-det** (for ``jaxinv.ildj``) equals ``slogdet`` of the inverse's Jacobian,

eagerly, under ``jax.jit`` and under ``jax.vmap``, in float32 and float64, on
random inputs drawn (with hypothesis) from the domains its pack declares, and
it decides what it can solve from shapes alone (it runs on abstract values
while jaxinv plans). A failure raises ``RuleCheckError`` whose message
names the pack, primitive, example, pattern, mode and dtype, the worst element,
the inputs, and a line that reproduces it.

Example:
    ```python
    from jaxinv.testing import check_rule_pack, check_inverse_rule
    check_rule_pack(my_pack)                          # every rule, every example
    check_inverse_rule(lax.exp_p, jnp.ones(3), accuracy=None)   # one call, by hand
    ```

Needs ``hypothesis`` (``pip install jaxinv[test]``) for ``check_rule`` and
``check_rule_pack``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal, Primitive

from jaxinv import packs, registry
from jaxinv._src import facts
from jaxinv._src.probe import solve_abstractly
from jaxinv._src.compat import bind_equation, enable_x64
from jaxinv.domains import Booleans, Example, Fixed, Integers, Nonsingular, Reals, as_domain
from jaxinv._src.flatten import atom_value, eval_eqn, flatten, hashable_params
from jaxinv._src.dtypes import is_float, zero_cotangent
from jaxinv.registry import NotInvertibleError

MODES = ("jit", "vmap")  # add "eager" to also run each rule op by op
DTYPES = ("float32", "float64")
BATCH = 3  # examples per vmap call


class RuleCheckError(AssertionError):
    """A rule failed the conformance checks; the message says how to reproduce it.

    Example:
        ```python
        with pytest.raises(jaxinv.testing.RuleCheckError, match="exp"):
            check_rule(lax.exp_p, inverse=lambda invals, outvals: [outvals[0]])   # a wrong inverse
        ```
    """


@dataclasses.dataclass
class CheckReport:
    """What was checked for one primitive, and what went wrong.

    Example:
        ```python
        report = check_rule(lax.exp_p)
        print(report)              # inverse rule for `exp`: 24 checks passed (...)
        report.raise_if_failed()   # RuleCheckError listing every failure, if any
        ```
    """

    primitive: str
    pack: str = ""
    kind: str = "inverse"
    checks: int = 0
    solved: set = dataclasses.field(default_factory=set)
    refused: dict = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return not self.failures

    def __str__(self) -> str:
        head = f"{self.pack + ': ' if self.pack else ''}{self.kind} rule for `{self.primitive}`"
        if self.ok:
            return f"{head}: {self.checks} checks passed (patterns solved: {sorted(self.solved)})"
        return f"{head}: {len(self.failures)} failure(s)\n" + "\n\n".join(self.failures)

    def raise_if_failed(self) -> "CheckReport":
        """This report, or ``RuleCheckError`` with every failure if any check failed."""
        if self.failures:
            raise RuleCheckError(str(self))
        return self


# --------------------------------------------------------------------------
# one equation, concrete values


@dataclasses.dataclass
class _Equation:
    prim: Primitive
    params: dict
    invals: list  # concrete inputs
    fixed: tuple[bool, ...]  # literal/constant inputs: always known
    avals: list
    out_avals: list

    def outvals(self) -> list:
        out = bind_equation(self.prim, self.invals, self.params)
        return list(out) if self.prim.multiple_results else [out]


_traced: dict = {}


def _equation(prim: Primitive, fn: Callable, args: Sequence[Any]) -> _Equation:
    """The first ``prim`` equation in ``fn``'s (flattened) jaxpr on ``args``
    (traced once per function and argument shapes, then evaluated)."""
    leaves = jax.tree_util.tree_leaves(args)
    key = (prim, fn, tuple((np.shape(x), str(jnp.result_type(x))) for x in leaves), jax.config.jax_enable_x64)
    if key not in _traced:
        _traced[key] = _locate(prim, fn, args)
    closed, consts, index, fixed = _traced[key]
    env = dict(zip(closed.jaxpr.invars, [*consts, *leaves]))
    env.update(zip(closed.jaxpr.constvars, closed.consts))
    read = functools.partial(atom_value, env)
    for eqn in closed.jaxpr.eqns[:index]:
        env.update(zip(eqn.outvars, eval_eqn(eqn, [read(v) for v in eqn.invars])))
    eqn = closed.jaxpr.eqns[index]
    return _Equation(prim, dict(eqn.params), [read(v) for v in eqn.invars], fixed, [v.aval for v in eqn.invars],
                     [v.aval for v in eqn.outvars])


def _locate(prim, fn, args):
    traced = jax.make_jaxpr(fn)(*args)
    closed = flatten(traced)  # its first invars are traced's constants, lifted
    lifted = list(traced.consts)
    consts = set(closed.jaxpr.constvars) | set(closed.jaxpr.invars[:len(lifted)])
    for index, eqn in enumerate(closed.jaxpr.eqns):
        if eqn.primitive is prim:
            # only the prefix that computes this equation's inputs needs evaluating
            return closed, lifted, index, tuple(isinstance(v, Literal) or v in consts for v in eqn.invars)
        if all(isinstance(v, Literal) or v in consts for v in eqn.invars):
            consts.update(eqn.outvars)
    raise RuleCheckError(f"the example function {_name(fn)} has no `{prim.name}` equation; its jaxpr is\n{closed}")


def _name(fn) -> str:
    code = getattr(fn, "__code__", None)
    where = f" at {code.co_filename.split('/')[-1]}:{code.co_firstlineno}" if code else ""
    return f"{getattr(fn, '__name__', repr(fn))}{where}"


def _tolerance(dtype, scale: float) -> dict:
    dtype = np.dtype(dtype)
    if not is_float(dtype):
        return dict(rtol=0.0, atol=0.0)
    eps = float(jnp.finfo(dtype).eps)
    return dict(rtol=4000 * eps * scale, atol=400 * eps * scale)


def _compare(what: str, got, want, scale: float) -> str | None:
    """None if ``got`` matches ``want``, else a one-paragraph explanation."""
    if got is None:
        return f"{what}: the rule returned None"
    if _is_key(want) or _is_key(got):
        if not (_is_key(want) and _is_key(got)) or str(got.dtype) != str(want.dtype):
            return f"{what}: got {getattr(got, 'dtype', type(got))}, want {want.dtype} (a PRNG key)"
        got, want = jax.random.key_data(got), jax.random.key_data(want)
    got_shape, got_dtype = tuple(np.shape(got)), np.dtype(jnp.result_type(got))
    want_shape, want_dtype = tuple(np.shape(want)), np.dtype(jnp.result_type(want))
    if got_shape != want_shape or got_dtype != want_dtype:
        return (f"{what}: got shape {got_shape} {got_dtype.name}, want {want_shape} {want_dtype.name} "
                "(a rule must return each input with its exact shape and dtype)")
    g, w = np.asarray(got), np.asarray(want)
    tol = _tolerance(want_dtype, scale)
    if is_float(want_dtype):
        g64 = g.astype(np.complex128 if np.iscomplexobj(g) else np.float64)
        w64 = w.astype(np.complex128 if np.iscomplexobj(w) else np.float64)
        with np.errstate(invalid="ignore"):  # inf - inf: equal infinities are compared below
            err = np.abs(g64 - w64)
        bad = ~(err <= tol["atol"] + tol["rtol"] * np.abs(w64))
        bad &= ~((np.isnan(g64) & np.isnan(w64)) | (g64 == w64))
    else:
        bad = g != w
    if not np.any(bad):
        return None
    idx = np.unravel_index(int(np.argmax(bad)), bad.shape) if bad.ndim else ()
    return (f"{what}: {int(np.sum(bad))} of {bad.size} elements wrong; first at index {tuple(int(i) for i in idx)}: "
            f"got {g[idx]!r}, want {w[idx]!r} (rtol={tol['rtol']:.1e}, atol={tol['atol']:.1e})")


def _show(values) -> str:
    lines = []
    for i, v in enumerate(values):
        arr = np.asarray(jax.random.key_data(v) if _is_key(v) else v)
        body = np.array2string(arr, precision=6, threshold=24, separator=", ").replace("\n", " ")
        lines.append(f"    x{i} ({arr.dtype.name}{list(arr.shape)}) = {body}")
    return "\n".join(lines)


def _patterns(eqn: _Equation, solve) -> tuple[list, bool]:
    """Patterns of unknown inputs to try, and whether each one must solve."""
    if solve is not None:
        return [tuple(p) for p in solve], True
    free = [i for i, f in enumerate(eqn.fixed) if not f]
    pats = [(i,) for i in free]
    if len(free) > 1:
        pats.append(tuple(free))
    return pats, False


# --------------------------------------------------------------------------
# running a rule in each mode


def _known(values, pattern, fixed):
    return [None if i in pattern else v for i, v in enumerate(values)]


def _call(rule, eqn: _Equation, invals, outvals, cts=None):
    with registry.solving(eqn.avals), registry.proving(None):
        if cts is None:
            return rule(invals, outvals, **eqn.params)
        return rule(invals, outvals, cts, **eqn.params)


_compiled: dict = {}


def _compiled_call(rule, eqn0: _Equation, with_cts: bool, how: str, axes=None):
    """``rule`` as a function of (known inputs, outputs[, cts]), jitted (and
    vmapped) once per rule, params, shapes and pattern of Nones."""
    fixed = {i: v for i, v in enumerate(eqn0.invals) if eqn0.fixed[i]}
    key = (how, id(rule), eqn0.prim, _params_key(eqn0.params), tuple(map(str, eqn0.avals)), with_cts,
           None if axes is None else repr(axes), tuple((i, repr(v)) for i, v in fixed.items()))
    fn = _compiled.get(key)
    if fn is None:
        def plain(known, out, cts=None):
            # literals and constants reach rules as concrete values, as in the interpreter
            known = [fixed[i] if i in fixed and k is not None else k for i, k in enumerate(known)]
            return _call(rule, eqn0, known, out, cts if with_cts else None)
        fn = jax.jit(plain if how == "jit" else jax.vmap(plain, in_axes=axes))
        _compiled[key] = fn
    return fn


def _params_key(params):
    """``params`` as a cache key: their value when hashable, else their identity."""
    key = hashable_params(params)
    return key if key is not None else id(params)


def _run_modes(rule, eqns: list[_Equation], pattern, modes, cts_list=None):
    """Yield (mode, index in eqns, result) for each mode."""
    eqn0 = eqns[0]
    knowns = [_known(e.invals, pattern, e.fixed) for e in eqns]
    outs = [e.outvals() for e in eqns]
    with_cts = cts_list is not None
    cts_of = (lambda k: cts_list[k]) if with_cts else (lambda k: None)

    if "eager" in modes:
        for k, (known, out) in enumerate(zip(knowns, outs)):
            yield "eager", k, _call(rule, eqn0, known, out, cts_of(k))
    if "jit" in modes:
        jitted = _compiled_call(rule, eqn0, with_cts, "jit")
        for k, (known, out) in enumerate(zip(knowns, outs)):
            yield "jit", k, jitted(known, out, cts_of(k))
    if "vmap" in modes and len(eqns) > 1:
        # fixed inputs (literals, constants) are shared, the rest batched
        batched_known = [None if k is None else (eqn0.invals[i] if eqn0.fixed[i] else _stack([kn[i] for kn in knowns]))
                         for i, k in enumerate(knowns[0])]
        axes_known = [None if (k is None or eqn0.fixed[i]) else 0 for i, k in enumerate(knowns[0])]
        batched_out = [None if o is None else _stack([out[j] for out in outs]) for j, o in enumerate(outs[0])]
        axes_out = [None if o is None else 0 for o in outs[0]]
        if with_cts:
            batched_cts = [None if c is None else _stack([cl[j] for cl in cts_list]) for j, c in enumerate(cts_list[0])]
            axes_cts = [None if c is None else 0 for c in cts_list[0]]
            axes = (axes_known, axes_out, axes_cts)
            res = _compiled_call(rule, eqn0, with_cts, "vmap", axes)(batched_known, batched_out, batched_cts)
        else:
            axes = (axes_known, axes_out)
            res = _compiled_call(rule, eqn0, with_cts, "vmap", axes)(batched_known, batched_out)
        for k in range(len(eqns)):
            yield "vmap", k, jax.tree_util.tree_map(lambda a, k=k: _unbatch(a, k), res)


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _unbatch(a, k):
    if a is None or np.ndim(a) == 0:
        return a
    return a[k] if _is_key(a) else np.asarray(a)[k]


def _stack(values):
    """Stack on the host (a device stack would compile one XLA program per shape)."""
    if _is_key(values[0]):  # typed PRNG keys: stack their data, wrap again
        impl = jax.random.key_impl(values[0])
        return jax.random.wrap_key_data(np.stack([np.asarray(jax.random.key_data(v)) for v in values]), impl=impl)
    return np.stack([np.asarray(v) for v in values])


_abstract_cache: dict = {}


def _abstract_ok(rule, eqn: _Equation, pattern) -> str | None:
    """Run the rule on abstract values, as the planner does (every fact granted).
    Returns "refused: reason", an error text, or None (cached: shapes decide)."""
    key = (id(rule), eqn.prim, _params_key(eqn.params), tuple(map(str, eqn.avals)), eqn.fixed, tuple(pattern),
           tuple(repr(v) if f else None for v, f in zip(eqn.invals, eqn.fixed)))
    if key not in _abstract_cache:
        _abstract_cache[key] = _abstract_ok_uncached(rule, eqn, pattern)
    return _abstract_cache[key]


def _abstract_ok_uncached(rule, eqn: _Equation, pattern) -> str | None:
    known = [i not in pattern for i in range(len(eqn.invals))]
    granted = [frozenset({facts.NONZERO, facts.NONSINGULAR})] * max(len(eqn.invals), len(eqn.out_avals))
    try:
        solve_abstractly(rule, eqn.params, eqn.avals, eqn.out_avals, known,
                         [True] * len(eqn.out_avals), {i: v for i, v in enumerate(eqn.invals) if eqn.fixed[i] and known[i]},
                         granted, granted)
    except NotInvertibleError as e:
        return f"refused: {e.reason}"
    except Exception as e:
        return (f"the rule fails on abstract values ({type(e).__name__}: {e}); rules run under jax.eval_shape "
                "while jaxinv plans, so they must decide from shapes and params, never from values")
    return None


# --------------------------------------------------------------------------
# the checks


_reference: dict = {}


def _reference_cts(eqn: _Equation, cts) -> list:
    """``jax.vjp`` of the primitive at the true inputs (None for integer inputs)."""
    floats = tuple(i for i, a in enumerate(eqn.avals) if is_float(a))
    ref = [None] * len(eqn.invals)
    if not floats:
        return ref
    key = (eqn.prim, _params_key(eqn.params), tuple(map(str, eqn.avals)), floats)
    fn = _reference.get(key)
    if fn is None:
        prim, params = eqn.prim, eqn.params

        def vjp_at(invals, cts):
            def f(*xs):
                args = list(invals)
                for i, x in zip(floats, xs):
                    args[i] = x
                out = bind_equation(prim, args, params)
                return list(out) if prim.multiple_results else [out]
            xs = [invals[i] for i in floats]
            outs, vjp = jax.vjp(f, *xs)
            full = [jnp.zeros_like(o) if c is None else c for c, o in zip(cts, outs)]
            try:
                return vjp([c if is_float(o) else zero_cotangent(o)
                            for c, o in zip(full, outs)])
            except ValueError:
                # JAX cannot reverse-differentiate some primitives (a while
                # loop with a traced trip count): ct_x = J^T ct, J by forward mode.
                jac = jax.jacfwd(f, argnums=tuple(range(len(xs))))(*xs)
                return [sum(jnp.tensordot(c, jac[o][j], axes=np.ndim(c))
                            for o, c in enumerate(full) if is_float(outs[o])) for j in range(len(xs))]

        fn = _reference[key] = jax.jit(vjp_at)
    for i, ct in zip(floats, fn(list(eqn.invals), list(cts))):
        ref[i] = ct
    return ref


def _random_cts(eqn: _Equation, rng) -> list:
    cts = []
    for o in eqn.outvals():
        if is_float(o):
            c = rng.standard_normal(np.shape(o))
            if jnp.issubdtype(jnp.result_type(o), jnp.complexfloating):
                c = c + 1j * rng.standard_normal(np.shape(o))
            cts.append(jnp.asarray(c, jnp.result_type(o)))
        else:
            cts.append(None)
    return cts


def _check_batch(report: CheckReport, eqns: list[_Equation], inverse, ivjp, solve, modes, scale, where: str,
                 seed: int = 0, logdet=None) -> None:
    """Check ``inverse`` (and ``ivjp``, and the log-det ``logdet = (ildj_rule,
    elementwise)``) on a batch of equations of one shape."""
    eqn0 = eqns[0]
    patterns, required = _patterns(eqn0, solve)
    rng = np.random.default_rng(seed)
    cts_list = [_random_cts(e, rng) for e in eqns] if ivjp is not None else None
    refs = [_reference_cts(e, c) for e, c in zip(eqns, cts_list)] if ivjp is not None else None
    dtype = next((np.dtype(jnp.result_type(v)).name for v in eqn0.invals if is_float(v)), "no float")

    def fail(msg, pattern, mode, k, kind):
        report.failures.append(
            f"[{where}] {kind}, unknown inputs {list(pattern)}, mode={mode}, dtype={dtype}:\n  {msg}\n"
            f"  inputs:\n{_show(eqns[k].invals)}\n  params: {eqn0.params}\n"
            f"  reproduce: jaxinv.testing.{'check_rule' if kind == 'ildj' else f'check_{kind}_rule'}"
            f"(<{eqn0.prim.name}_p>, x0, ..., **params)")

    for pattern in patterns:
        if any(eqn0.fixed[i] for i in pattern):
            report.failures.append(f"[{where}] solve pattern {list(pattern)} names a literal/constant input")
            continue
        abstract = _abstract_ok(inverse, eqn0, pattern)
        if abstract is not None and not abstract.startswith("refused"):
            fail(abstract, pattern, "abstract (planning)", 0, "inverse")
            continue
        if abstract is not None:
            if required:
                fail(f"the rule {abstract}, but the example declares this pattern solvable", pattern,
                     "abstract (planning)", 0, "inverse")
            else:
                report.refused[pattern] = abstract
            continue
        report.solved.add(pattern)
        if logdet is not None and dtype == "float64":
            msg = _check_log_det(eqn0, inverse, logdet, pattern, scale)
            if msg:
                fail(msg, pattern, "eager", 0, "ildj")
        for mode, k, got in _guarded(_run_modes(inverse, eqns, pattern, modes)):
            report.checks += 1
            msg = got if isinstance(got, str) else _compare_all(got, eqns[k].invals, scale, "input")
            if msg:
                fail(msg, pattern, mode, k, "inverse")
                break
        if ivjp is None:
            continue
        for mode, k, got in _guarded(_run_modes(ivjp, eqns, pattern, modes, cts_list)):
            report.checks += 1
            if isinstance(got, str):
                msg = got
            else:
                invals, in_cts = got
                msg = _compare_all(invals, eqns[k].invals, scale, "input")
                if not msg:
                    msg = _compare_cts(in_cts, refs[k], eqns[k], scale)
            if msg:
                fail(msg, pattern, mode, k, "ivjp")
                break
    if not report.solved and not required:
        report.failures.append(f"[{where}] the rule solves no pattern of unknowns: {report.refused}")


def _check_log_det(eqn: _Equation, inverse, logdet, pattern, scale) -> str | None:
    """The log-det term against ``slogdet`` of the inverse's Jacobian (float
    unknowns with respect to float outputs, when that Jacobian is square)."""
    from jaxinv._src.interpreter import ildj_term

    ildj_rule, elementwise = logdet
    outs = eqn.outvals()
    unknown = [i for i in pattern if is_float(eqn.invals[i])]
    varied = [j for j, o in enumerate(outs) if is_float(o)]
    complex_ = any(jnp.issubdtype(jnp.result_type(v), jnp.complexfloating) for v in [*eqn.invals, *outs])
    n_in = sum(np.size(eqn.invals[i]) for i in unknown)
    if complex_ or not unknown or n_in != sum(np.size(outs[j]) for j in varied):
        return None  # not a square real Jacobian: nothing to compare with
    known = _known(eqn.invals, pattern, eqn.fixed)
    try:
        got = ildj_term(eqn.prim, eqn.params, eqn.avals, inverse, ildj_rule, elementwise, known, outs)
    except NotInvertibleError as e:
        return f"the log-det refused a pattern the inverse solves: {e.reason}"
    except Exception as e:
        return f"the log-det rule raised {type(e).__name__}: {e}"

    def solve(*ys):
        full = list(outs)
        for j, y in zip(varied, ys):
            full[j] = y
        with registry.solving(eqn.avals), registry.proving(None):
            solved = inverse(known, full, **eqn.params)
        return jnp.concatenate([jnp.ravel(solved[i]) for i in unknown])

    jac = jax.jacfwd(solve, argnums=tuple(range(len(varied))))(*[outs[j] for j in varied])
    jac = jnp.concatenate([jnp.reshape(J, (n_in, -1)) for J in jac], axis=1)
    want = float(jnp.linalg.slogdet(jac)[1])
    got = float(got)
    if not np.isfinite(want):  # a singular Jacobian (cbrt at 0): no finite log-det to match
        return None if not np.isfinite(got) or np.isnan(want) else f"log-det {got!r}, but the Jacobian is singular"
    tol = 1e-7 * scale * max(1.0, abs(want), n_in)
    if not abs(got - want) <= tol:
        return f"log-det {got!r}, but slogdet of the inverse's Jacobian is {want!r} (tolerance {tol:.1e})"
    return None


def _guarded(results):
    """The (mode, k, result) triples, an exception becoming a message that ends them."""
    mode = "?"
    try:
        for mode, k, got in results:
            yield mode, k, got
    except Exception as e:  # a rule that crashes in some mode: report, don't abort the pack
        yield f"after {mode}", 0, f"the rule raised {type(e).__name__}: {e}"


def _compare_all(got, want, scale, what) -> str | None:
    got = list(got)
    if len(got) != len(want):
        return f"the rule returned {len(got)} values for {len(want)} inputs"
    for i, (g, w) in enumerate(zip(got, want)):
        msg = _compare(f"{what} {i}", g, w, scale)
        if msg:
            return msg
    return None


def _compare_cts(got, ref, eqn: _Equation, scale) -> str | None:
    got = list(got)
    if len(got) != len(ref):
        return f"the ivjp returned {len(got)} cotangents for {len(ref)} inputs"
    for i, (g, r) in enumerate(zip(got, ref)):
        if r is None:  # integer input: None or float0 zeros
            continue
        if g is None:
            if np.any(np.asarray(r) != 0):
                return f"cotangent {i}: the ivjp returned None but jax.vjp gives a nonzero cotangent"
            continue
        msg = _compare(f"cotangent {i} (vs jax.vjp)", g, r, scale)
        if msg:
            return msg
    return None


def _cast_floats(values, dtype):
    return [jnp.asarray(v, dtype) if is_float(v) and not jnp.issubdtype(jnp.result_type(v), jnp.complexfloating)
            else v for v in values]


def check_inverse_rule(prim: Primitive, *example_invals, rule=None, solve=None, modes=MODES, dtypes=None,
                       tolerance: float = 1.0, **params) -> CheckReport:
    """Check ``prim``'s inverse rule (the registered one, or ``rule``) on one
    example: ``prim.bind(*example_invals, **params)``.

    Without ``solve`` every single unknown input (and all of them together) is
    tried, and the rule must solve at least one; with ``solve`` (a list of
    index tuples) each listed pattern must be solved. ``dtypes`` re-runs with
    the floating inputs cast to each dtype (float64 under ``jax.enable_x64``).

    Example:
        ```python
        check_inverse_rule(lax.exp_p, jnp.linspace(-3, 3, 6), accuracy=None)
        check_inverse_rule(lax.add_p, x, y, solve=[(0,), (1,)])
        ```
    """
    rule = rule if rule is not None else _table_rule(registry.inverse_rules, prim, "inverse")
    return _check_given(prim, example_invals, params, rule, None, solve, modes, dtypes, tolerance, "inverse")


def check_ivjp_rule(prim: Primitive, *example_invals, rule=None, solve=None, modes=MODES, dtypes=None,
                    tolerance: float = 1.0, **params) -> CheckReport:
    """Check ``prim``'s fused ivjp rule (the registered one, or ``rule``): the
    inputs it rebuilds against the true ones, its cotangents against
    ``jax.vjp`` of the primitive, for random output cotangents.

    Example:
        ```python
        check_ivjp_rule(lax.tanh_p, jnp.linspace(-2, 2, 6), accuracy=None)
        ```
    """
    rule = rule if rule is not None else _table_rule(registry.ivjp_rules, prim, "ivjp")
    inverse = registry.inverse_rules.get(prim, _ivjp_as_inverse(rule))
    return _check_given(prim, example_invals, params, inverse, rule, solve, modes, dtypes, tolerance, "ivjp")


def _ivjp_as_inverse(ivjp):
    def inverse(invals, outvals, **params):
        cts = [jnp.zeros_like(o) if o is not None and is_float(o) else None for o in outvals]
        return ivjp(invals, outvals, cts, **params)[0]
    return inverse


def _table_rule(table, prim, kind):
    packs.load_entry_point_packs()
    if prim not in table:
        raise RuleCheckError(f"no {kind} rule is registered for `{prim.name}`")
    return table[prim]


def _check_given(prim, example_invals, params, inverse, ivjp, solve, modes, dtypes, tolerance, kind):
    report = CheckReport(prim.name, kind=kind)
    for dtype in (dtypes or [None]):
        with enable_x64(dtype is not None and np.dtype(dtype) == np.float64) if dtype else _nothing():
            invals = _cast_floats(example_invals, dtype) if dtype else [jnp.asarray(v) for v in example_invals]
            outs = jax.eval_shape(lambda *xs: bind_equation(prim, xs, params), *invals)
            eqn = _Equation(prim, params, invals, (False,) * len(invals),
                            [jax.ShapeDtypeStruct(np.shape(v), jnp.result_type(v)) for v in invals],
                            list(outs) if prim.multiple_results else [outs])
            # vmap needs a batch: the example, and two copies (values cannot be varied blindly)
            _check_batch(report, [eqn] * BATCH if "vmap" in modes else [eqn], inverse, ivjp, solve, modes,
                         tolerance, f"given example{'' if dtype is None else ', ' + str(dtype)}")
    return report.raise_if_failed()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------
# random examples from declared domains (hypothesis)


def _draw(data, domain, dtype):
    """One argument drawn from ``domain`` (floats in ``dtype``)."""
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    domain = as_domain(domain)
    if isinstance(domain, Fixed):
        return jnp.asarray(domain.value)
    if isinstance(domain, Integers):
        arr = data.draw(hnp.arrays(np.int64, domain.shape, elements=st.sampled_from(domain.values)))
        return _host(arr, domain.dtype)
    if isinstance(domain, Booleans):
        return _host(data.draw(hnp.arrays(np.bool_, domain.shape, elements=st.booleans())), np.bool_)
    dt = domain.dtype or dtype
    if isinstance(domain, Nonsingular):
        entries = data.draw(hnp.arrays(np.float64, domain.shape, elements=st.floats(-1, 1)))
        return _host(domain.from_entries(entries), dt)
    assert isinstance(domain, Reals), domain
    if domain.away_from_zero:
        mag = data.draw(hnp.arrays(np.float64, domain.shape,
                                   elements=st.floats(domain.away_from_zero, max(abs(domain.lo), abs(domain.hi)))))
        sign = data.draw(hnp.arrays(np.bool_, domain.shape, elements=st.booleans()))
        arr = np.where(sign, mag, -mag)
        arr = np.clip(arr, domain.lo, domain.hi)
    else:
        arr = data.draw(hnp.arrays(np.float64, domain.shape, elements=st.floats(domain.lo, domain.hi)))
    # keep the cast inside the domain (rounding to float32 may step past a bound)
    cast = np.asarray(arr.astype(dt)).astype(np.float64)
    arr = np.where(cast > domain.hi, np.nextafter(np.asarray(domain.hi, dt), -np.inf), arr)
    arr = np.where(cast < domain.lo, np.nextafter(np.asarray(domain.lo, dt), np.inf), arr)
    # Magnitudes near the smallest normal number are drawn as (signed) zeros: XLA
    # flushes subnormal results to zero, so there even 0.1 * x loses x's sign and
    # no inverse can tell the preimages apart (hypothesis likes -finfo.tiny).
    info = jnp.finfo(dt)
    tiny = min(float(info.tiny) / float(info.eps), 1e-30)
    arr = np.where(np.abs(arr) < tiny, arr * 0.0, arr)
    return _host(arr, dt)


def _host(arr, dtype):
    """``arr`` as a jax array of ``dtype``, converted on the host (no XLA compile)."""
    return jnp.asarray(np.asarray(arr).astype(np.dtype(dtype)))


def _example_dtype_ok(example: Example, dtype) -> bool:
    """float64 runs only matter when the example has a floating argument whose
    dtype is not pinned."""
    if np.dtype(dtype) == np.float32:
        return True
    return any(isinstance(as_domain(a), (Reals, Nonsingular)) and as_domain(a).dtype is None for a in example.args)


def check_rule(prim: Primitive, examples: Example | Sequence[Example] | None = None, *, inverse=None, ivjp=None,
               logdet=None, principal_branch: bool = False, pack: str = "", max_examples: int = 5,
               dtypes: Sequence[str] = DTYPES, modes: Sequence[str] = MODES, seed: int = 0) -> CheckReport:
    """Check ``prim``'s rules on random inputs from declared examples.

    By default the rules and examples are those registered for ``prim`` (the
    winning pack's); ``inverse``/``ivjp``/``examples`` override them. Each
    example is traced to find ``prim``'s equation (so params are what JAX puts
    in jaxprs); ``max_examples`` batches of inputs are drawn from its domains
    per dtype, and each batch is checked eagerly, under ``jit`` and ``vmap``.
    With ``principal_branch=True`` the principal-branch inverse is checked (on
    the branch the examples declare). Where the primitive has a log-det rule
    (or is elementwise), its term is compared, in float64, with ``slogdet`` of
    the inverse's Jacobian (``logdet=(ildj_rule, elementwise)`` overrides).

    Example:
        ```python
        from jaxinv.testing import check_rule
        check_rule(lax.exp_p)
        check_rule(my_p, Example(my_fn, reals(-1, 1)), inverse=my_inverse)
        ```
    """
    packs.load_entry_point_packs()
    kind = "principal" if principal_branch else "inverse"
    if inverse is None and examples is None:
        owner = packs.provider(prim, kind)
        if owner is not None:
            pack = pack or owner.name
    if inverse is None:
        table = registry.principal_inverse_rules if principal_branch else registry.inverse_rules
        inverse = table.get(prim)
        if inverse is None and not principal_branch and prim in registry.ivjp_rules:
            inverse = _ivjp_as_inverse(registry.ivjp_rules[prim])
        if inverse is None:
            raise RuleCheckError(f"no {kind} rule is registered for `{prim.name}`")
    if ivjp is None and not principal_branch:
        ivjp = registry.ivjp_rules.get(prim)
    if logdet is None and (prim in registry.ildj_rules or prim in registry.elementwise_primitives):
        logdet = (registry.ildj_rules.get(prim), prim in registry.elementwise_primitives)
    if examples is None:
        examples = packs.declared_examples(prim, kind)
    examples = [examples] if isinstance(examples, Example) else list(examples)
    report = CheckReport(prim.name, pack=pack, kind=kind + (" + ivjp" if ivjp is not None else ""))
    if not examples:
        report.failures.append(f"no examples are declared for `{prim.name}`: pass examples=Example(fn, domains...) "
                               "when registering it, so the harness knows where it must work")
        return report.raise_if_failed()
    for n, example in enumerate(examples):
        for dtype in dtypes:
            if not _example_dtype_ok(example, dtype):
                continue
            where = f"example {n}{' ' + repr(example.label) if example.label else ''} ({_name(example.fn)}), {dtype}"
            _check_example(report, prim, example, inverse, ivjp, dtype, modes, max_examples, seed, where, logdet)
    return report.raise_if_failed()


def _check_example(report, prim, example, inverse, ivjp, dtype, modes, max_examples, seed, where, logdet=None):
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    x64 = np.dtype(dtype) == np.float64
    batch = BATCH if "vmap" in modes else 1
    failures_before = len(report.failures)
    scale = example.tolerance

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        with enable_x64(x64):
            draws = [[_draw(data, a, np.dtype(dtype)) for a in example.args] for _ in range(batch)]
            if len(report.failures) > failures_before:
                return  # one failure per example is enough to act on
            eqns = [_equation(prim, example.fn, args) for args in draws]
            _check_batch(report, eqns, inverse, ivjp, example.solve, modes, scale, where, seed, logdet)

    run()


def check_rule_pack(pack: "packs.RulePack", *, max_examples: int = 5, dtypes: Sequence[str] = DTYPES,
                    modes: Sequence[str] = MODES) -> list[CheckReport]:
    """Check every rule of ``pack`` (installed or not) on its declared examples;
    raise one ``RuleCheckError`` listing every failure.

    Example:
        ```python
        from jaxinv.testing import check_rule_pack
        import my_package
        check_rule_pack(my_package.PACK)
        ```
    """
    reports, failed = [], []
    for prim in pack.primitives:
        entry = pack.rules[prim]
        kinds = []
        if entry.inverse is not None or entry.ivjp is not None:
            kinds.append(False)
        if entry.principal is not None:
            kinds.append(True)
        for principal in kinds:
            inverse = entry.principal if principal else entry.inverse
            if inverse is None:  # a pack adding only a fused ivjp
                inverse = registry.inverse_rules.get(prim) or _ivjp_as_inverse(entry.ivjp)
            examples = entry.principal_examples if principal else entry.examples
            try:
                logdet = (entry.ildj, entry.elementwise) if entry.ildj is not None or entry.elementwise else None
                reports.append(check_rule(prim, examples, inverse=inverse, ivjp=None if principal else entry.ivjp,
                                          logdet=logdet, principal_branch=principal, pack=pack.name, max_examples=max_examples,
                                          dtypes=dtypes, modes=modes))
            except RuleCheckError as e:
                failed.append(str(e))
    if failed:
        raise RuleCheckError(f"rule pack {pack.name!r}: {len(failed)} rule(s) failed\n\n" + "\n\n".join(failed))
    return reports


# The public surface (the API reference documents each name).
__all__ = ["CheckReport", "RuleCheckError", "check_inverse_rule", "check_ivjp_rule", "check_rule", "check_rule_pack"]
