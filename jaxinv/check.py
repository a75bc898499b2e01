"""``jaxinv.check_reconstruction``: how far the rebuilt activations drift, block by block.

The reversible backward pass rebuilds each block's input from its output, and
every rebuild rounds: errors accumulate from the output back to the input, and
reach the gradient. This module measures that drift on a concrete input:

* for every **block boundary** (see below), the relative error of the value the
  backward pass rebuilds against the true forward value;
* the **angle** between the cotangent jaxinv's backward pass carries there and
  plain reverse-mode AD in float64 (the RevNet authors' criterion for the
  gradient: under 1 degree), next to the angle of plain AD in the working
  dtype (rounding that would be there without any reconstruction);
* the same angle for the gradient of every input, and in total.

**Blocks** are the values you name with ``jax.ad_checkpoint.checkpoint_name(x,
"block")`` (JAX's usual way to name an intermediate; an identity for jaxinv).
If you named none, each call ``f`` makes to one of your own ``jax.jit``-ed
functions is a block (its outputs; library helpers such as ``jnp.clip`` are
not). Every ``jaxinv.anchor`` is a row too: there the value arriving from the
later blocks is replaced by the stored one, so drift restarts at zero. A name
used several times is numbered in program order: ``block#0``, ``block#1``, ...
Values inside a ``lax.scan`` body are not visible (only the scan's inputs);
inside a ``jaxinv.invertible`` function, jit calls are already inlined: name
the blocks there.

Example:
    ```python
    def net(params, x):
        for p in params:
            x = checkpoint_name(coupling(p, x), "block")
        return x

    report = jaxinv.check_reconstruction(net, params, x)
    print(report)                  # a table, one row per block
    assert report.grad_angle_deg < 1.0
    ```
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import os
from collections import Counter
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.extend import source_info_util
from jax.extend.core import Var
from jax.tree_util import tree_flatten, tree_leaves, tree_unflatten

from jaxinv._src import interpreter
from jaxinv._src.compat import enable_x64, jit_p, name_p
from jaxinv._src.flatten import atom_value, eval_eqn, flatten, inline_rules, trace_flat
from jaxinv.markers import anchor_p
from jaxinv._src.dtypes import is_float, zero_cotangent
from jaxinv._src.tracing import trace

# checkpoint_name labels jaxinv gives to the outputs of the user's jit-ed blocks
_JIT_PREFIX = "jaxinv.check:"


@dataclasses.dataclass
class BlockCheck:
    """One row of a ``ReconstructionReport``.

    ``kind``: "input" (one of ``f``'s positional arguments), "block" or
    "anchor". ``how``: how the backward pass gets the value ("rebuilt",
    "recomputed", "saved", "output", ...). ``rel_error``: ``|rebuilt - true| /
    |true|`` over the row's arrays (0 for saved values; for an anchor, the
    value arriving from the later blocks, before the stored one replaces it).
    ``angle_deg``: angle between jaxinv's cotangent at this value (for an
    input: its gradient) and the float64 reference; ``baseline_angle_deg``:
    the same for plain AD in the working dtype. None where no
    cotangent reaches the value.

    Example:
        ```python
        worst = max(report.rows, key=lambda row: row.rel_error or 0.0)
        print(worst.name, worst.how, worst.rel_error)
        ```
    """
    name: str
    kind: str
    how: str
    rel_error: float | None
    angle_deg: float | None
    baseline_angle_deg: float | None


@dataclasses.dataclass
class ReconstructionReport:
    """What ``check_reconstruction`` measured.

    ``rows`` are in program order: the inputs first (the end of the backward
    pass, where drift is largest), then the blocks. ``grad_angle_deg`` and
    ``grad_rel_error`` compare jaxinv's gradient for all floating-point inputs
    together with the reference; ``baseline_grad_angle_deg`` is plain
    AD in the working dtype against the same reference. ``grads`` is
    jaxinv's gradient (a tuple, one entry per argument), ``reference_grads``
    the reference's (in ``reference_dtype``). ``str()`` is the table.

    Example:
        ```python
        report = jaxinv.check_reconstruction(net, params, x)
        assert report.ok, report          # the gradient within angle_tol degrees of float64's
        ```
    """
    rows: list[BlockCheck]
    grad_angle_deg: float
    grad_rel_error: float
    baseline_grad_angle_deg: float
    dtype: str
    reference_dtype: str
    angle_tol: float
    grads: Any = dataclasses.field(repr=False, default=None)
    reference_grads: Any = dataclasses.field(repr=False, default=None)

    @property
    def ok(self) -> bool:
        """The gradient is within ``angle_tol`` degrees of the reference."""
        return bool(self.grad_angle_deg < self.angle_tol)

    @property
    def blocks(self) -> list[BlockCheck]:
        """The block and anchor rows, in program order."""
        return [r for r in self.rows if r.kind != "input"]

    @property
    def max_rel_error(self) -> float:
        """The largest relative reconstruction error of any row."""
        return max((r.rel_error for r in self.rows if r.rel_error is not None), default=0.0)

    @property
    def input_rel_error(self) -> float:
        """The largest relative error of a rebuilt input of ``f``."""
        return max((r.rel_error for r in self.rows if r.kind == "input" and r.rel_error is not None),
                   default=0.0)

    def row(self, name: str) -> BlockCheck:
        """The row called ``name`` (``"block#3"``, ``"args[1]"``, ``"anchor#0"``)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {[r.name for r in self.rows]}")

    def __str__(self) -> str:
        head = ("value", "how", "rel. error", f"angle vs {self.reference_dtype}",
                f"plain AD {self.dtype} angle")
        body = [(r.name, r.how, _sci(r.rel_error), _deg(r.angle_deg), _deg(r.baseline_angle_deg))
                for r in self.rows]
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(5)]
        line = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
        out = [f"reconstruction check ({self.dtype}; reference: plain AD in {self.reference_dtype})",
               line(head), "-+-".join("-" * w for w in widths), *map(line, body)]
        verdict = "OK" if self.ok else "TOO LARGE"
        out.append(f"gradient: angle {_deg(self.grad_angle_deg)} vs {self.reference_dtype} "
                   f"(plain AD in {self.dtype}: {_deg(self.baseline_grad_angle_deg)}), "
                   f"relative error {_sci(self.grad_rel_error)}: {verdict} (< {self.angle_tol:g} degree)")
        return "\n".join(out)

    __repr__ = __str__


def _sci(x) -> str:
    return "-" if x is None else ("0" if x == 0 else f"{x:.2e}")


def _deg(x) -> str:
    return "-" if x is None else f"{x:.2g}°" if x >= 1e-3 else f"{x:.1e}°"


# ---------------------------------------------------------------- numbers


def _np(x) -> np.ndarray:
    a = np.asarray(x)
    return a.astype(np.complex128 if np.iscomplexobj(a) else np.float64).ravel()


def _concat(xs) -> np.ndarray:
    xs = [_np(x) for x in xs]
    return np.concatenate(xs) if xs else np.zeros(0)


def rel_error(got: Sequence, want: Sequence) -> float:
    """``|got - want| / |want|`` over several arrays (float64 arithmetic)."""
    g, w = _concat(got), _concat(want)
    den = np.linalg.norm(w)
    num = np.linalg.norm(g - w)
    return float(num / den) if den > 0 else float(num)


def angle_deg(a: Sequence, b: Sequence) -> float:
    """The angle in degrees between two vectors given as lists of arrays
    (``2 atan2(|u - v|, |u + v|)`` of the unit vectors: accurate near 0)."""
    u, v = _concat(a), _concat(b)
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu == 0 or nv == 0:
        return 0.0 if nu == nv else 90.0
    u, v = u / nu, v / nv
    return math.degrees(2 * math.atan2(np.linalg.norm(u - v), np.linalg.norm(u + v)))


# ---------------------------------------------------------------- marking blocks


def _is_user_jit(eqn) -> bool:
    """A call of the user's own jit-ed function, not of a JAX helper's like
    ``jnp.clip``: the function was defined outside JAX (where JAX recorded it;
    else some equation of its body has a user source line, which JAX 0.6 also
    gives a helper's equations)."""
    body = eqn.params.get("jaxpr")
    if body is None:
        return False
    defined = getattr(getattr(body.jaxpr, "debug_info", None), "func_src_info", None)
    if defined:
        return _JAX_DIR not in defined
    return any(source_info_util.summarize(e.source_info) for e in body.jaxpr.eqns)


_JAX_DIR = os.path.dirname(jax.__file__)


def _eval_marking(jaxpr, consts, args, counts: Counter) -> list:
    """Evaluate ``jaxpr``, naming the float outputs of each top-level call of a
    user's jit-ed function. A jaxpr that is a single call (``f`` itself jit-ed or
    ``jaxinv.invertible``) is entered."""
    env: dict = {}
    read = functools.partial(atom_value, env)
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    single = len(jaxpr.eqns) == 1
    for e in jaxpr.eqns:
        invals = [read(v) for v in e.invars]
        rule = inline_rules.get(e.primitive)
        body = rule(e.params) if (single and rule is not None) else None
        if body is not None:
            outs = _eval_marking(body.jaxpr, body.consts, invals, counts)
        else:
            outs = eval_eqn(e, invals)
            if e.primitive is jit_p and _is_user_jit(e):
                name = str(e.params.get("name", "jit"))
                label = f"{_JIT_PREFIX}{name}#{counts[name]}"
                counts[name] += 1
                outs = [checkpoint_name(o, label) if is_float(v.aval) else o for o, v in zip(outs, e.outvars)]
        env.update(zip(e.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def _marked(f: Callable) -> Callable:
    """``f``, with the outputs of its calls to the user's jit-ed functions named."""

    def g(*args):
        flat, tree = tree_flatten(args)
        closed, out_tree = trace_flat(f, flat, tree)
        outs = _eval_marking(closed.jaxpr, closed.consts, flat, Counter())
        return tree_unflatten(out_tree, outs)

    return g


@dataclasses.dataclass
class _Group:
    name: str
    kind: str                 # "block" | "anchor"
    eqns: list[int]           # equations whose (single) output is watched


def _groups(jaxpr, jit_blocks: bool) -> list[_Group]:
    """Watched equations (checkpoint_name and anchor), grouped: adjacent
    equations of the same name (one pytree named at once) form one block.
    With ``jit_blocks=False`` the names given to jit calls are ignored."""
    groups: list[_Group] = []
    prev = None
    for i, e in enumerate(jaxpr.eqns):
        if e.primitive is name_p and (jit_blocks or not str(e.params["name"]).startswith(_JIT_PREFIX)):
            key = ("block", str(e.params["name"]))
        elif e.primitive is anchor_p:
            key = ("anchor", "anchor")
        else:
            prev = None
            continue
        if key == prev and groups[-1].eqns[-1] == i - 1:
            groups[-1].eqns.append(i)
        else:
            groups.append(_Group(key[1], key[0], [i]))
        prev = key
    counts: Counter = Counter()
    for g in groups:
        base = g.name[len(_JIT_PREFIX):].rsplit("#", 1)[0] if g.name.startswith(_JIT_PREFIX) else g.name
        g.name = f"{base}#{counts[base]}"
        counts[base] += 1
    return groups


def _user_names(jaxpr) -> bool:
    return any(e.primitive is name_p and not str(e.params["name"]).startswith(_JIT_PREFIX) for e in jaxpr.eqns)


# ---------------------------------------------------------------- the measurement


class _Recorder:
    """Watches jaxinv's backward sweep (its ``SweepObserver``): the first value
    it holds for each watched variable (it drops values once it has passed
    them), and the cotangents reaching the watched equations' outputs."""

    def __init__(self, watch: set, watch_eqns: set):
        self.watch, self.watch_eqns = watch, watch_eqns
        self.rebuilt: dict = {}
        self.cts: dict = {}

    def value(self, v, x) -> None:
        if v in self.watch and v not in self.rebuilt:
            self.rebuilt[v] = x

    def cotangents(self, i, outvars, cts) -> None:
        if i in self.watch_eqns:
            self.cts.update((v, ct) for v, ct in zip(outvars, cts) if ct is not None)


def _evaluate(closed, inputs) -> tuple[dict, list]:
    """Evaluate a flat jaxpr equation by equation (as jaxinv's forward pass
    does), keeping every value: ``(env, outputs)``."""
    jaxpr = closed.jaxpr
    env: dict = dict(zip(jaxpr.constvars, closed.consts))
    env.update(zip(jaxpr.invars, inputs))
    read = functools.partial(atom_value, env)
    for e in jaxpr.eqns:
        env.update(zip(e.outvars, eval_eqn(e, [read(v) for v in e.invars])))
    return env, [read(v) for v in jaxpr.outvars]


def _backprop(closed, env, out_cts, watch_eqns) -> tuple[list, dict]:
    """Plain reverse-mode AD over stored activations: each equation's own VJP
    (``jax.vjp`` of the primitive, as ``jax.grad`` would transpose it) at the
    stored values. Returns the inputs' cotangents (None for zero) and the
    cotangents of the watched equations' outputs."""
    jaxpr = closed.jaxpr
    read = functools.partial(atom_value, env)
    active = {v for v in jaxpr.invars if is_float(v.aval)}
    for e in jaxpr.eqns:
        if any(isinstance(v, Var) and v in active for v in e.invars):
            active.update(v for v in e.outvars if is_float(v.aval))
    cts: dict = {}
    for v, ct in zip(jaxpr.outvars, out_cts):
        if isinstance(v, Var) and v in active and ct is not None:
            interpreter._accumulate(cts, v, ct)
    watched: dict = {}
    for i in reversed(range(len(jaxpr.eqns))):
        e = jaxpr.eqns[i]
        out_ct = [cts.pop(v, None) for v in e.outvars]
        if i in watch_eqns:
            watched.update((v, c) for v, c in zip(e.outvars, out_ct) if c is not None)
        active_in = [isinstance(v, Var) and v in active for v in e.invars]
        if not any(active_in) or all(c is None for c in out_ct):
            continue
        out_ct = [c if c is not None else zero_cotangent(v.aval) for v, c in zip(e.outvars, out_ct)]
        in_cts = interpreter.primitive_vjp(e, [read(v) for v in e.invars], out_ct, active_in)
        for v, c in zip(e.invars, in_cts):
            if c is not None:
                interpreter._accumulate(cts, v, c)
    return [cts.get(v) for v in jaxpr.invars], watched


def _default_loss(out):
    return sum(jnp.sum(jnp.square(jnp.abs(y))) for y in tree_leaves(out)
               if is_float(y))


def _output_cts(loss, out_tree, outs, num_out) -> list:
    """d loss / d output, one entry per flat output (None: not a float, or aux)."""
    vals = list(outs[:num_out])
    idx = [j for j, y in enumerate(vals) if is_float(y)]

    def total(floats):
        full = list(vals)
        for j, y in zip(idx, floats):
            full[j] = y
        return loss(tree_unflatten(out_tree, full))

    got = jax.grad(total)([vals[j] for j in idx])
    cts: list = [None] * len(outs)
    for j, c in zip(idx, got):
        cts[j] = c
    return cts


def _flat(f: Callable, args: tuple):
    """``f`` traced at ``args`` to one flat jaxpr, as ``jaxinv._src.tracing.trace``
    does (closure values lifted to leading inputs): ``(closed, consts, out_tree)``."""
    flat_args, in_tree = tree_flatten(args)
    traced, out_tree = trace_flat(f, flat_args, in_tree)
    return flatten(traced), list(traced.consts), out_tree


def check_reconstruction(f: Callable, *args, loss: Callable | None = None, reference_dtype=jnp.float64,
                         angle_tol: float = 1.0) -> ReconstructionReport:
    """Measure, block by block, how far jaxinv's rebuilt values and cotangents
    drift from the truth when differentiating ``loss(f(*args))``.

    ``loss`` maps ``f``'s output to a scalar (default: the sum of squares of
    all its floating-point leaves). The reference is plain reverse-mode AD
    (stored activations, each equation's ``jax.vjp``) with every floating-point
    leaf of ``args`` cast to ``reference_dtype`` (x64 is enabled for it only);
    the baseline is the same in the working dtype. Blocks are the values named
    with ``jax.ad_checkpoint.checkpoint_name``, else the outputs of each call
    to one of your ``jax.jit``-ed functions, plus every ``jaxinv.anchor`` (see
    the module docstring). Everything runs eagerly, equation by equation, as
    ``jaxinv.grad`` does outside ``jit`` (under ``jit`` XLA may fuse the
    recomputations differently, e.g. with FMA contraction).

    Example:
        ```python
        report = jaxinv.check_reconstruction(net, params, x)
        print(report)
        report.grad_angle_deg, report.row("block#0").rel_error
        ```
    """
    loss = _default_loss if loss is None else loss
    flat_args, in_tree = tree_flatten(args)
    marked = _marked(f)
    t = trace(marked, args)
    jit_blocks = not _user_names(t.plan.jaxpr)   # calls of jit-ed functions are blocks unless you named some
    plan, jaxpr = t.plan, t.plan.jaxpr
    nc = t.num_consts
    live = set(plan.live)
    groups = [g for g in _groups(jaxpr, jit_blocks) if all(i in live for i in g.eqns)]
    watch_eqns = {i for g in groups for i in g.eqns}
    watch_vars = [jaxpr.eqns[i].outvars[0] for g in groups for i in g.eqns]
    arg_vars = jaxpr.invars[nc:]

    # the forward pass (every true value), then jaxinv's backward sweep, recorded
    inputs = [*t.consts, *flat_args]
    truth, outs = _evaluate(plan.closed, inputs)
    residuals = [truth[v] for v in plan.saved]
    out_cts = _output_cts(loss, t.out_tree, outs, t.num_out)
    known = [*t.consts, *[None] * len(flat_args)]
    recorder = _Recorder(set(watch_vars) | set(arg_vars), watch_eqns)
    arg_cts = interpreter.Sweep(plan, known, residuals, outs, observer=recorder).run(out_cts)[nc:]
    missing = [v for v in (*watch_vars, *arg_vars) if v not in recorder.rebuilt and v in plan.sources]
    if missing:  # values no cotangent needed: rebuild them by a plain reconstruction
        plain = interpreter.Sweep(plan, known, residuals, outs)
        for v in reversed(missing):
            recorder.rebuilt[v] = plain.value(v)

    # plain AD in the working dtype, and in reference_dtype
    base_in, base_w = _backprop(plan.closed, truth, out_cts, watch_eqns)
    jit_named = jit_blocks and any(e.primitive is name_p and str(e.params["name"]).startswith(_JIT_PREFIX)
                                   for e in jaxpr.eqns)
    ref_args, ref_w = _reference(marked if jit_named else f, args, reference_dtype, groups, jit_blocks, loss)
    float_args = [j for j, x in enumerate(flat_args) if is_float(x)]
    or_zero = lambda c, j: c if c is not None else zero_cotangent(flat_args[j])
    mine_g = {j: or_zero(arg_cts[j], j) for j in float_args}
    base_g = {j: or_zero(base_in[nc + j], j) for j in float_args}
    ref_g = {j: ref_args[j] if ref_args[j] is not None else np.zeros(np.shape(flat_args[j])) for j in float_args}

    rows = []
    start = 0
    for a, arg in enumerate(args):          # one row per positional argument
        idx = list(range(start, start + len(tree_leaves(arg))))
        start += len(idx)
        kinds = [plan.sources[arg_vars[j]].kind if arg_vars[j] in plan.sources else "unused" for j in idx]
        have = [j for j in idx if arg_vars[j] in recorder.rebuilt]
        err = rel_error([recorder.rebuilt[arg_vars[j]] for j in have], [flat_args[j] for j in have]) if have else None
        fl = [j for j in idx if j in ref_g]
        ang = angle_deg([mine_g[j] for j in fl], [ref_g[j] for j in fl]) if fl else None
        bang = angle_deg([base_g[j] for j in fl], [ref_g[j] for j in fl]) if fl else None
        rows.append(BlockCheck(f"args[{a}]", "input", _how(kinds), err, ang, bang))
    for k, g in enumerate(groups):
        vs = [jaxpr.eqns[i].outvars[0] for i in g.eqns]
        kinds = [plan.sources[v].kind if v in plan.sources else "unused" for v in vs]
        have = [v for v in vs if v in recorder.rebuilt]
        err = rel_error([recorder.rebuilt[v] for v in have], [truth[v] for v in have]) if have else None
        mine, base, ref = [recorder.cts.get(v) for v in vs], [base_w.get(v) for v in vs], ref_w[k]
        if all(c is not None for c in (*mine, *base, *ref)):
            ang, bang = angle_deg(mine, ref), angle_deg(base, ref)
        else:
            ang = bang = None
        how = "stored (anchor)" if g.kind == "anchor" else _how(kinds)
        rows.append(BlockCheck(g.name, g.kind, how, err, ang, bang))

    mine_all = [mine_g[j] for j in float_args]
    ref_all = [ref_g[j] for j in float_args]
    dtype = str(jnp.result_type(*[flat_args[j] for j in float_args])) if float_args else "-"
    return ReconstructionReport(
        rows=rows,
        grad_angle_deg=angle_deg(mine_all, ref_all) if float_args else 0.0,
        grad_rel_error=rel_error(mine_all, ref_all) if float_args else 0.0,
        baseline_grad_angle_deg=angle_deg([base_g[j] for j in float_args], ref_all) if float_args else 0.0,
        dtype=dtype, reference_dtype=str(np.dtype(reference_dtype)), angle_tol=angle_tol,
        grads=tree_unflatten(in_tree, [mine_g.get(j, zero_cotangent(x)) for j, x in enumerate(flat_args)]),
        reference_grads=tree_unflatten(in_tree, [ref_g.get(j, zero_cotangent(x)) for j, x in enumerate(flat_args)]))


_KIND_NAMES = {"invert": "rebuilt", "assemble": "rebuilt", "recompute": "recomputed", "saved": "saved", "output": "output",
               "input": "given", "const": "constant", "unused": "unused"}


def _how(kinds) -> str:
    return ", ".join(dict.fromkeys(_KIND_NAMES.get(k, k) for k in kinds))


_run_dtype: contextvars.ContextVar[Any] = contextvars.ContextVar("jaxinv_check_run_dtype", default=None)


def run_dtype(dtype: Any) -> Any:
    """The dtype a function traced now runs in: ``dtype``, except while
    ``check_reconstruction`` traces its wider reference, where it is the
    checked run's. A function choosing its plan by precision (``momentum_net``'s
    anchors) calls it, so that the reference has the same blocks.

    Example:
        ```python
        every = steps_between_anchors(gamma, run_dtype(x.dtype))
        ```
    """
    return _run_dtype.get() or dtype


def _reference(marked, args, dtype, groups, jit_blocks, loss) -> tuple[list, list]:
    """Plain AD of the same (marked) function with the float arguments cast to
    ``dtype``: the gradient of each flat argument (None for zero) and, for each
    of ``groups`` (matched by name), the cotangents of its values."""
    wide = np.dtype(dtype).itemsize > 4 and not jax.config.jax_enable_x64
    floats = [jnp.result_type(x) for x in tree_leaves(args) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    token = _run_dtype.set(max(floats, key=lambda d: float(jnp.finfo(d).eps)) if floats else None)
    try:
        return _reference_in(marked, args, dtype, groups, jit_blocks, loss, wide)
    finally:
        _run_dtype.reset(token)


def _reference_in(marked, args, dtype, groups, jit_blocks, loss, wide) -> tuple[list, list]:
    with enable_x64(True) if wide else contextlib.nullcontext():
        cast = lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x
        args_ref = jax.tree_util.tree_map(cast, args)
        closed, consts, out_tree = _flat(marked, args_ref)
        by_name = {g.name: g for g in _groups(closed.jaxpr, jit_blocks)}
        if any(g.name not in by_name or len(by_name[g.name].eqns) != len(g.eqns) for g in groups):
            raise RuntimeError("check_reconstruction: tracing in the reference dtype gave other blocks "
                               f"({sorted(by_name)} vs {[g.name for g in groups]})")
        watch = {i for g in groups for i in by_name[g.name].eqns}
        env, outs = _evaluate(closed, [*consts, *tree_leaves(args_ref)])
        in_cts, watched = _backprop(closed, env, _output_cts(loss, out_tree, outs, len(outs)), watch)
        to_np = lambda c: None if c is None else np.asarray(c)
        arg_cts = [to_np(c) for c in in_cts[len(consts):]]
        group_cts = [[to_np(watched.get(closed.jaxpr.eqns[i].outvars[0])) for i in by_name[g.name].eqns]
                     for g in groups]
    return arg_cts, group_cts
