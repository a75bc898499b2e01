"""Random programs for the fuzzer (``test_fuzz.py``), built from the rules' declared domains.

Every rule a pack registers declares :class:`~jaxinv.Example` s: a small function
containing the primitive and the set each argument is drawn from. The fuzzer
turns each example into a program *step*: it consumes one or more values of the
program (the arguments the rules can solve for, found by asking
``jaxinv.inverse`` once per example), maps each into the argument's declared
domain with a fixed affine map ``v * a + b``, and fills the other arguments
with closed-over constants drawn from their domains or with other live values
of the program (a coupling). A newly registered rule is therefore fuzzed
without touching this file.

Around these steps the strategies put what real programs have: non-invertible
maps (``sin``, ``relu``, a row maximum) as the side terms of couplings or as
lossy steps, values dropped from the outputs, and regions under ``jax.jit``,
``lax.scan`` (with and without a sliced input), ``lax.fori_loop`` and
``lax.cond``. Programs are generated on concrete values (so every step's
arguments lie in its domain, checked in every loop iteration) and print as
Python source, which is what hypothesis shows when a property fails.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import reject
from hypothesis import strategies as st
from jax import lax


import jaxinv
from jaxinv import packs, registry
from jaxinv.domains import Booleans, Example, Fixed, Integers, Nonsingular, Reals, as_domain
from jaxinv._src.compat import enable_x64, jaxprs_in_params

DTYPE = np.dtype(np.float64)  # the catalogue is built in float64; programs run in float64 or float32
INNER = 0.8                    # affine maps aim at the middle 80% of a domain (room for vmap's perturbed copies)
INPUT_SHAPES = [(2, 3), (3, 4), (4,), (6,)]


# ---------------------------------------------------------------- the steps a program is made of


@dataclasses.dataclass(frozen=True)
class RuleStep:
    """One declared example, used as a program step that consumes ``consumed``
    (argument positions) and puts every output of the example in their place."""

    name: str                  # e.g. "exp#0": the primitive and the example's index
    example: Example
    consumed: tuple[int, ...]
    exact: bool                # no saturating primitive inside: its inverse loses no precision
    shape_preserving: bool     # one consumed float argument, one output of its shape and dtype

    def describe(self) -> str:
        fn = getattr(self.example.fn, "__name__", repr(self.example.fn))
        label = f" {self.example.label!r}" if self.example.label else ""
        return f"{self.name}: {fn}{label} on ({self.example.describe()}), solving arguments {self.consumed}"


def _sample(domain, rng: np.random.Generator, float_dtype=DTYPE):
    """A value of ``domain`` (numpy; floats in ``float_dtype`` unless the domain pins a dtype)."""
    domain = as_domain(domain)
    if isinstance(domain, Fixed):
        return np.asarray(domain.value)
    if isinstance(domain, Integers):
        return rng.choice(np.asarray(domain.values), size=domain.shape).astype(domain.dtype)
    if isinstance(domain, Booleans):
        return rng.random(domain.shape) < domain.p_true
    dtype = np.dtype(domain.dtype or float_dtype)
    if isinstance(domain, Nonsingular):
        return domain.from_entries(rng.uniform(-1, 1, domain.shape)).astype(dtype)
    lo, hi = _inner(domain)
    return rng.uniform(lo, hi, domain.shape).astype(dtype)


def _inner(domain: Reals) -> tuple[float, float]:
    """The interval values are mapped into: the middle of the domain (its
    positive side for a domain away from zero)."""
    lo, hi = domain.lo, domain.hi
    if domain.away_from_zero:
        lo = max(lo, domain.away_from_zero)
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * INNER
    return mid - half, mid + half


def _primitives(fn, args) -> set:
    """Every primitive in ``fn``'s jaxpr, sub-jaxprs included."""
    found, stack = set(), [jax.make_jaxpr(fn)(*args).jaxpr]
    while stack:
        for e in stack.pop().eqns:
            found.add(e.primitive)
            stack.extend(j.jaxpr if hasattr(j, "jaxpr") else j for j in jaxprs_in_params(e.params))
    return found


def _consumable(domain) -> bool:
    domain = as_domain(domain)
    return isinstance(domain, Reals) and domain.dtype is None


def _leaves(x) -> list:
    return jax.tree_util.tree_leaves(x)


def _with(args: list, positions, values) -> list:
    args = list(args)
    for i, v in zip(positions, values):
        args[i] = v
    return args


def _inverts(example: Example, consumed, args) -> bool:
    """Whether ``jaxinv.inverse`` solves ``consumed`` from the example's outputs
    (the other arguments known) and gives them back."""
    g = lambda *xs: tuple(_leaves(example.fn(*_with(args, consumed, xs))))
    xs = [jnp.asarray(args[i]) for i in consumed]
    try:  # planned and traced, not run: the fuzzer runs it
        back = jax.eval_shape(jaxinv.inverse(g, *xs), *jax.eval_shape(g, *xs))
    except jaxinv.NotInvertibleError:
        return False
    back = back if isinstance(back, tuple) else (back,)
    # a wrong inverse is the fuzzer's to report, not the catalogue's to hide: keep the step
    return all(np.shape(b) == np.shape(x) for b, x in zip(back, xs))


@functools.cache
def catalogue() -> tuple[RuleStep, ...]:
    """Every (example, solvable argument set) of the installed packs' inverse
    rules, built once per process (float64)."""
    packs.load_entry_point_packs()
    steps = []
    rng = np.random.default_rng(0)
    with enable_x64(True):
        prims = sorted(set(registry.inverse_rules) | set(registry.ivjp_rules), key=lambda p: p.name)
        for prim in prims:
            for n, example in enumerate(packs.declared_examples(prim)):
                floats = [i for i, a in enumerate(example.args) if _consumable(a)]
                if not floats:
                    continue  # integer and key rules: checked by the conformance harness, not composed here
                args = [jnp.asarray(_sample(a, rng)) for a in example.args]
                try:
                    outs = _leaves(jax.eval_shape(example.fn, *args))
                    exact = not (_primitives(example.fn, args) & set(registry.saturating))
                except Exception:  # an example that needs more than its domains (checked by conformance)
                    continue
                patterns = [(i,) for i in floats] + ([tuple(floats)] if len(floats) > 1 else [])
                for consumed in patterns:
                    if not _inverts(example, consumed, args):
                        continue
                    x = args[consumed[0]]
                    preserving = (len(consumed) == 1 and len(outs) == 1 and outs[0].shape == np.shape(x)
                                  and outs[0].dtype == DTYPE)
                    steps.append(RuleStep(f"{prim.name}#{n}", example, consumed, exact, preserving))
    return tuple(steps)


# Maps that lose information, used as side terms of couplings and as lossy steps.
LOSSY = {
    "sin": jnp.sin,
    "abs": jnp.abs,
    "relu": jax.nn.relu,
    "square": lambda x: x * x,
    "clip": lambda x: jnp.clip(x, -0.5, 0.5),
    "minus_row_max": lambda x: x - jnp.max(x, axis=-1, keepdims=True),
    "centre": lambda x: x - jnp.mean(x),
}
# (Not a constant array, or rows repeating one value: a rank-1 matrix fed to
# svd or eigh is a point where the gradient is not defined, and JAX's own
# answer there changes under jit.)


# ---------------------------------------------------------------- statements


@dataclasses.dataclass
class Affine:
    out: str
    src: str
    a: float
    b: float

    def run(self, env, prog, check):
        env[self.out] = env[self.src] * self.a + self.b

    def lines(self):
        return [f"{self.out} = {self.src} * {self.a:.6g} + {self.b:.6g}"]


@dataclasses.dataclass
class Rename:
    out: str
    src: str

    def run(self, env, prog, check):
        env[self.out] = env[self.src]

    def lines(self):
        return [f"{self.out} = {self.src}"]


@dataclasses.dataclass
class Reshape:
    out: str
    src: str
    shape: tuple

    def run(self, env, prog, check):
        env[self.out] = jnp.reshape(env[self.src], self.shape)

    def lines(self):
        return [f"{self.out} = {self.src}.reshape({self.shape})"]


@dataclasses.dataclass
class Apply:
    outs: list[str]
    step: RuleStep
    args: list[tuple[str, str]]  # ("var", name) or ("const", name)

    def run(self, env, prog, check):
        vals = [env[n] if kind == "var" else jnp.asarray(prog.consts[n]) for kind, n in self.args]
        if check:
            for v, (kind, _), d in zip(vals, self.args, self.step.example.args):
                if kind == "var" and not _in_domain(v, as_domain(d)):
                    raise OutOfDomain(self.step.name)
        outs = _leaves(self.step.example.fn(*vals))
        env.update(zip(self.outs, outs))

    def lines(self):
        return [f"{', '.join(self.outs)} = {self.step.name}({', '.join(n for _, n in self.args)})"]


@dataclasses.dataclass
class Lossy:
    out: str
    src: str
    fn: str

    def run(self, env, prog, check):
        env[self.out] = LOSSY[self.fn](env[self.src])

    def lines(self):
        return [f"{self.out} = {self.fn}({self.src})"]


@dataclasses.dataclass
class Couple:
    """``out = target + (fn(source).reshape(-1) @ M).reshape(target.shape)``."""
    out: str
    target: str
    source: str
    fn: str
    matrix: str

    def run(self, env, prog, check):
        t = env[self.target]
        side = LOSSY[self.fn](env[self.source]).reshape(-1) @ jnp.asarray(prog.consts[self.matrix])
        env[self.out] = t + side.reshape(jnp.shape(t))

    def lines(self):
        return [f"{self.out} = {self.target} + ({self.fn}({self.source}).reshape(-1) @ {self.matrix})"
                f".reshape({self.target}.shape)"]


@dataclasses.dataclass
class Region:
    """A block on ``ins`` giving ``outs`` (same shapes): under ``jit``, a
    ``scan``/``fori_loop`` of ``length`` iterations, or a ``cond`` choosing
    ``body`` or ``other``. A scan with ``xs`` adds row ``i`` of that input to
    its first carry at iteration ``i``. Bodies read outer values as closures."""
    kind: str                  # "jit" | "scan" | "fori" | "cond"
    ins: list[str]
    outs: list[str]
    body: list
    other: list = dataclasses.field(default_factory=list)
    length: int = 1
    xs: str | None = None
    pred: tuple | None = None  # ("const", name) or ("var", name, threshold)

    def _block(self, env, prog, check, body):
        def block(*vals):
            local = dict(env)
            local.update(zip(self.ins, vals))
            run_block(body, local, prog, check)
            return tuple(local[o] for o in self.outs)
        return block

    def run(self, env, prog, check):
        ins = tuple(env[n] for n in self.ins)
        block = self._block(env, prog, check, self.body)
        if self.kind == "jit":
            outs = block(*ins) if check else jax.jit(block)(*ins)
        elif self.kind in ("scan", "fori"):
            def step(carry, x):
                if x is not None:
                    carry = (carry[0] + x, *carry[1:])
                return block(*carry), None
            if check:
                outs = ins
                for i in range(self.length):
                    outs = step(outs, None if self.xs is None else env[self.xs][i])[0]
            elif self.kind == "scan":
                outs = lax.scan(step, ins, None if self.xs is None else env[self.xs], length=self.length)[0]
            else:
                outs = lax.fori_loop(0, self.length, lambda i, c: step(c, None)[0], ins)
        else:
            pred = self._pred(env, prog)
            other = self._block(env, prog, check, self.other)
            if check:  # both branches must be in their domains (vmap may take either)
                other(*ins)
                outs = block(*ins) if bool(pred) else other(*ins)
            else:
                outs = lax.cond(pred, block, other, *ins)
        env.update(zip(self.outs, outs))

    def _pred(self, env, prog):
        if self.pred[0] == "const":
            return jnp.asarray(prog.consts[self.pred[1]])
        return jnp.sum(env[self.pred[1]]) > self.pred[2]

    def lines(self):
        ins, outs = ", ".join(self.ins), ", ".join(self.outs)
        indent = lambda block: ["    " + line for s in block for line in s.lines()]
        body = [f"def body({ins}):", *indent(self.body), f"    return ({outs},)"]
        if self.kind == "jit":
            return [*body, f"{outs}, = jax.jit(body)({ins})"]
        if self.kind == "scan":
            head = [f"# scan: row i of {self.xs} is added to {self.ins[0]} first"] if self.xs else []
            return [*head, *body, f"({outs},), _ = lax.scan(lambda c, x: (body(*c), None), ({ins},), "
                                  f"{self.xs or 'None'}, length={self.length})"]
        if self.kind == "fori":
            return [*body, f"{outs}, = lax.fori_loop(0, {self.length}, lambda i, c: body(*c), ({ins},))"]
        other = [f"def other({ins}):", *indent(self.other), f"    return ({outs},)"]
        pred = self.pred[1] if self.pred[0] == "const" else f"jnp.sum({self.pred[1]}) > {self.pred[2]:.6g}"
        return [*body, *other, f"{outs}, = lax.cond({pred}, body, other, {ins})"]


def run_block(block, env, prog, check=False):
    for s in block:
        s.run(env, prog, check)


class OutOfDomain(Exception):
    """A step's argument left its declared domain (in a later loop iteration)."""


def _in_domain(v, d) -> bool:
    if not isinstance(d, Reals):
        return True
    v = np.asarray(v)
    ok = (v >= d.lo) & (v <= d.hi)
    if d.away_from_zero:
        ok &= np.abs(v) >= d.away_from_zero
    return bool(np.all(ok))


# ---------------------------------------------------------------- programs


@dataclasses.dataclass
class Program:
    """A random program: ``inputs`` -> ``outputs`` through ``body``.

    ``invertible``: the outputs determine the inputs (no lossy step, nothing
    dropped); ``exact``: invertible through steps whose inverses lose no
    precision, so the plan of its gradient saves no activation."""

    inputs: list[str]
    values: list[np.ndarray]
    consts: dict[str, np.ndarray]
    body: list
    outputs: list[str]
    steps: dict[str, RuleStep]
    invertible: bool
    exact: bool
    dtype: np.dtype

    def __call__(self, *xs):
        env = dict(zip(self.inputs, xs))
        run_block(self.body, env, self)
        return tuple(env[o] for o in self.outputs)

    def features(self) -> set[str]:
        """What the program contains (region kinds, lossy maps, couplings...),
        for the fuzzer's statistics."""
        found, stack = set(), list(self.body)
        while stack:
            s = stack.pop()
            found.add(s.kind if isinstance(s, Region) else type(s).__name__.lower())
            if isinstance(s, Region):
                stack += s.body + s.other
        found.add("invertible" if self.invertible else "not invertible")
        if self.exact:
            found.add("exact")
        return found

    def _repr_pretty_(self, p, cycle):  # how hypothesis prints a failing example
        p.text(repr(self))

    def permuted(self, perm) -> "Program":
        """The same program with its outputs in the order ``perm``."""
        return dataclasses.replace(self, outputs=[self.outputs[j] for j in perm])

    def __repr__(self) -> str:
        lines = [f"def program({', '.join(self.inputs)}):"]
        lines += ["    " + line for s in self.body for line in s.lines()]
        lines.append(f"    return ({', '.join(self.outputs)},)")
        lines.append(f"# {self.dtype}, invertible={self.invertible} exact={self.exact}")
        for name, x in zip(self.inputs, self.values):
            lines.append(f"# {name}: {np.shape(x)}, in [{np.min(x):.3g}, {np.max(x):.3g}]")
        for name, c in self.consts.items():
            c = np.asarray(c)
            lines.append(f"# {name} = {np.array2string(c.ravel()[:6], precision=3)}{'...' if c.size > 6 else ''}"
                         f" ({c.dtype}{list(c.shape)})")
        lines += [f"# {s.describe()}" for s in self.steps.values()]
        return "\n".join(lines)


class _Builder:
    """Draws a program step by step on concrete values (float64)."""

    def __init__(self, data, allow_lossy: bool, dtype):
        self.data, self.allow_lossy, self.dtype = data, allow_lossy, np.dtype(dtype)
        self.rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
        self.n = 0
        self.inputs, self.values, self.consts, self.steps = [], [], {}, {}
        self.env: dict[str, Any] = {}
        self.pool: list[str] = []      # live float values (all are outputs unless dropped)
        self.terminal: list[str] = []  # outputs that no step consumes (integer, complex)
        self.invertible, self.exact = True, True
        self.block: list = []          # the program's statements

    # names and values
    def fresh(self, prefix="v") -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def new_input(self, shape) -> str:
        name = self.fresh("x")
        value = self.rng.uniform(-1.5, 1.5, shape).astype(self.dtype)
        self.inputs.append(name)
        self.values.append(value)
        self.env[name] = jnp.asarray(value)
        return name

    def const(self, value) -> str:
        name = self.fresh("c")
        self.consts[name] = np.asarray(value)
        return name

    def emit(self, block, stmt, env=None):
        stmt.run(self.env if env is None else env, self, True)
        block.append(stmt)

    def choose(self, options, label):
        return self.data.draw(st.sampled_from(options), label=label)

    # steps
    def into_domain(self, block, name, domain: Reals, env) -> str | None:
        """``name`` mapped by ``v * a + b`` into the middle of ``domain`` (or
        left alone when it already lies there and the draw says so)."""
        v = np.asarray(env[name])
        lo, hi = _inner(domain)
        if np.all((v >= lo) & (v <= hi)) and self.data.draw(st.booleans(), label="no affine map"):
            return name
        vmin, vmax = float(np.min(v)), float(np.max(v))
        a = min((hi - lo) / (vmax - vmin), 4.0) if vmax > vmin else 1.0
        if a < 1e-4:
            return None  # a value spread too wide to map well (its gradient would be scaled away)
        if self.data.draw(st.booleans(), label="flip sign"):
            a = -a
        # the middle of the image lands at a random point of the middle half, not
        # at the domain's centre: a constant array would land exactly on 0, where
        # relu and abs have kinks and a gradient depends on the last rounding
        centre = lo + (hi - lo) * self.rng.uniform(0.25, 0.75)
        half = abs(a) * (vmax - vmin) / 2
        centre = min(max(centre, lo + half), hi - half)
        b = centre - a * (vmin + vmax) / 2
        out = self.fresh()
        self.emit(block, Affine(out, name, a, b), env)
        return out

    def fit(self, block, name, shape, env) -> str:
        if np.shape(env[name]) == tuple(shape):
            return name
        out = self.fresh()
        self.emit(block, Reshape(out, name, tuple(shape)), env)
        return out

    def rule_step(self, block, pool, env, preserving: bool, outer=()) -> bool:
        if preserving:  # a loop's carry keeps its shape: only steps that fit a carried value
            shapes = {np.shape(env[n]) for n in pool}
            options = [s for s in catalogue() if s.shape_preserving
                       and as_domain(s.example.args[s.consumed[0]]).shape in shapes]
        else:
            options = list(catalogue())
        if not options:
            return False
        step = self.choose(options, "rule")
        args = step.example.args
        slots = []
        for i in step.consumed:
            shape = as_domain(args[i]).shape
            fits = [k for k, n in enumerate(pool) if k not in slots and (
                np.shape(env[n]) == shape if preserving else np.size(env[n]) == np.prod(shape, dtype=int))]
            if preserving and not fits:
                return False
            if fits and (preserving or self.data.draw(st.integers(0, 3), label="reuse") > 0):
                slots.append(self.choose(fits, "consumed value"))
            else:
                pool.append(self.new_input(shape))
                slots.append(len(pool) - 1)
        refs = []
        for i, d in enumerate(args):
            d = as_domain(d)
            if i in step.consumed:
                name = pool[slots[step.consumed.index(i)]]
                name = self.into_domain(block, self.fit(block, name, d.shape, env), d, env)
                if name is None:
                    return False
                refs.append(("var", name))
                continue
            readable = [n for k, n in enumerate([*pool, *outer]) if k not in slots
                        and np.size(env[n]) == np.prod(d.shape, dtype=int)]
            if _consumable(d) and readable and self.data.draw(st.booleans(), label="read a live value"):
                name = self.into_domain(block, self.fit(block, self.choose(readable, "read"), d.shape, env), d, env)
                if name is not None:
                    refs.append(("var", name))
                    continue
            refs.append(("const", self.const(_sample(d, self.rng, self.dtype))))
        try:
            outs = _leaves(step.example.fn(*[env[n] if k == "var" else jnp.asarray(self.consts[n]) for k, n in refs]))
        except Exception:
            return False
        names = [self.fresh() for _ in outs]
        self.emit(block, Apply(names, step, refs), env)
        self.steps[step.name] = step
        self.exact &= step.exact
        for k in sorted(slots, reverse=True):
            pool.pop(k)
        if preserving:
            pool.insert(sorted(slots)[0], names[0])
        else:
            for n, o in zip(names, outs):
                (pool if jnp.result_type(o) == self.dtype else self.terminal).append(n)
        return True

    def couple_step(self, block, pool, env) -> bool:
        if len(pool) < 2:
            return False
        t, s = self.data.draw(st.permutations(range(len(pool))), label="coupling")[:2]
        fn = self.choose(sorted(LOSSY), "side term")
        m = self.const((self.rng.normal(size=(np.size(env[pool[s]]), np.size(env[pool[t]]))) / 4).astype(self.dtype))
        out = self.fresh()
        self.emit(block, Couple(out, pool[t], pool[s], fn, m), env)
        pool[t] = out
        return True

    def lossy_step(self, block, pool, env) -> bool:
        k = self.choose(range(len(pool)), "lossy value")
        out = self.fresh()
        self.emit(block, Lossy(out, pool[k], self.choose(sorted(LOSSY), "lossy map")), env)
        pool[k] = out
        self.invertible = self.exact = False
        return True

    def straight(self, block, pool, env, n, preserving=False, outer=()):
        """``n`` steps on ``pool``; with ``preserving``, every value keeps its
        shape (a loop's carry) and ``outer`` values may be read as closures."""
        for _ in range(n):
            kinds = ["rule", "rule", "couple"] + (["lossy"] if self.allow_lossy else [])
            kind = self.choose(kinds, "step")
            if kind == "rule":
                self.rule_step(block, pool, env, preserving, outer)
            elif kind == "couple":
                self.couple_step(block, pool, env)
            elif pool:
                self.lossy_step(block, pool, env)

    def region(self, block, pool):
        """A jit/scan/fori/cond region on one or two live values."""
        if not pool:
            return
        kind = self.choose(["jit", "scan", "fori", "cond"], "region")
        k = self.data.draw(st.integers(1, min(2, len(pool))), label="carried values")
        slots = sorted(self.data.draw(st.permutations(range(len(pool))), label="carry")[:k])
        ins = [pool[i] for i in slots]
        outer = [n for n in pool if n not in ins]
        length = self.data.draw(st.integers(1, 3), label="length") if kind in ("scan", "fori") else 1
        xs = None
        local = dict(self.env)
        if kind == "scan" and self.data.draw(st.booleans(), label="sliced input"):
            xs = self.new_input((length, *np.shape(self.env[ins[0]])))
            local[ins[0]] = local[ins[0]] + self.env[xs][0]
        body, inner = [], list(ins)
        self.straight(body, inner, local, self.data.draw(st.integers(1, 3), label="body steps"), True, outer)
        region = Region(kind, ins, list(inner), body, length=length, xs=xs)
        if kind == "cond":
            other, other_inner = [], list(ins)
            self.straight(other, other_inner, dict(self.env), self.data.draw(st.integers(0, 2), label="other steps"),
                          True, outer)
            # both branches end in the same names
            region.outs = [self.fresh() for _ in ins]
            body += [Rename(o, n) for o, n in zip(region.outs, inner)]
            region.other = other + [Rename(o, n) for o, n in zip(region.outs, other_inner)]
            if outer and self.data.draw(st.booleans(), label="data-dependent predicate"):
                r = self.choose(outer, "predicate value")
                region.pred = ("var", r, float(np.sum(self.env[r])) + self.choose([-1.0, 1.0], "predicate side"))
            else:
                region.pred = ("const", self.const(self.data.draw(st.booleans(), label="predicate")))
        elif inner == ins and xs is None:
            return  # nothing happened inside
        try:
            region.run(self.env, self, True)
        except OutOfDomain:
            reject()  # a later iteration left a domain: not a program the rules are meant for
        block.append(region)
        for i, o in zip(slots, region.outs):
            pool[i] = o
        if xs is not None:
            pool.append(xs)  # a live value (an output): the carry alone does not determine carry and rows

    def finish(self) -> Program:
        outputs = list(self.pool)
        if self.allow_lossy and len(outputs) > 1 and self.data.draw(st.booleans(), label="drop an output"):
            outputs.pop(self.choose(range(len(outputs)), "dropped"))
            self.invertible = self.exact = False
        outputs += self.terminal
        return Program(self.inputs, self.values, self.consts, self.block, outputs, self.steps, self.invertible,
                       self.exact and self.invertible, self.dtype)


@st.composite
def programs(draw, *, lossy: bool = True, regions: bool = True, max_steps: int = 5, dtype=DTYPE):
    """Random programs from the installed rules, in ``dtype`` (draw float64
    ones inside ``enable_x64(True)``).

    Example::

        @given(programs(lossy=False))
        def test_round_trip(program): ...
    """
    data = draw(st.data())
    b = _Builder(data, allow_lossy=lossy and data.draw(st.booleans(), label="lossy steps"), dtype=dtype)
    for _ in range(data.draw(st.integers(1, 2), label="inputs")):
        b.pool.append(b.new_input(b.choose(INPUT_SHAPES, "input shape")))
    for _ in range(data.draw(st.integers(1, max_steps), label="steps")):
        if regions and data.draw(st.integers(0, 3), label="region?") == 0:
            b.region(b.block, b.pool)
        else:
            b.straight(b.block, b.pool, b.env, 1)
    if not b.pool and not b.terminal:
        reject()
    return b.finish()
