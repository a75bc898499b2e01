"""What a rule pack is: ``RulePack``, a named, versioned set of rules with
the examples that declare where each one must work.

A pack only records; ``jaxinv.packs.precedence`` decides which pack's rule
enters the tables of ``jaxinv.registry``.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Sequence

import jax
from jax.extend.core import Primitive
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from jaxinv.domains import Example
from jaxinv.registry import InverseRule, IvjpRule, NotInvertibleError, input_avals

#: The kinds of rule a pack may give a primitive (one table of jaxinv.registry each).
KINDS = ("inverse", "ivjp", "principal", "ildj", "elementwise", "nonzero", "nonsingular", "not_invertible",
         "saturates")


@dataclasses.dataclass
class PackRule:
    """Everything one pack says about one primitive."""

    primitive: Primitive
    inverse: InverseRule | None = None
    ivjp: IvjpRule | None = None
    principal: InverseRule | None = None
    ildj: Callable[..., Any] | None = None
    elementwise: bool = False
    nonzero: Callable[..., bool] | None = None
    nonsingular: bool = False
    not_invertible: str | None = None
    saturates: str | None = None      # where the inverse loses precision (see registry.saturating)
    examples: list[Example] = dataclasses.field(default_factory=list)  # for inverse and ivjp
    principal_examples: list[Example] = dataclasses.field(default_factory=list)  # on the principal branch
    notes: str = ""              # on the inverse (and ivjp)
    principal_notes: str = ""    # on the principal branch

    def provides(self, kind: str) -> bool:
        value = getattr(self, kind)
        return value is not None and value is not False


def _examples(examples) -> list[Example]:
    if examples is None:
        return []
    if isinstance(examples, Example):
        return [examples]
    return list(examples)


def _accepting(fn: Callable) -> Callable:
    """Wrap ``fn`` so that it receives only the keyword params it names."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins: pass nothing
        return lambda *args, **params: fn(*args)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return fn
    names = {n for n, p in sig.parameters.items() if p.kind is not p.VAR_POSITIONAL}
    return lambda *args, **params: fn(*args, **{k: v for k, v in params.items() if k in names})


class RulePack:
    """A named, versioned set of rules.

    ``jax_versions`` is a version specifier such as ``">=0.10,<0.11"`` (``None``:
    any); installing the pack under another JAX skips it with a warning.

    Example:
        ```python
        from jaxinv import RulePack, Example
        from jaxinv.domains import reals
        pack = RulePack("my_pack", version="0.1.0", jax_versions=">=0.10")
        pack.defunary(my_exp_p, jnp.log, examples=Example(my_exp, reals(-5, 5)))
        jaxinv.install_rule_pack(pack)     # or publish it under the entry point group
        ```
    """

    def __init__(self, name: str, version: str = "0.0.0", *, jax_versions: str | None = None,
                 priority: float = 0, description: str = "", builtin: bool = False):
        self.name = name
        self.version = version
        self.jax_versions = jax_versions
        self.priority = priority
        self.description = description
        self.builtin = builtin
        self.rules: dict[Primitive, PackRule] = {}
        self.status = "not installed"
        self.origin = "built-in" if builtin else "constructed"
        self.error: str | None = None
        # Set by jaxinv.packs.precedence while the pack is installed: a rule
        # registered then is resolved against the other packs' at once.
        self._on_change: Callable[[Primitive], None] | None = None

    # ---- bookkeeping
    def _entry(self, prim: Primitive) -> PackRule:
        if not isinstance(prim, Primitive):
            raise TypeError(f"rule pack {self.name!r}: expected a jax.extend.core.Primitive, got {prim!r}")
        if prim not in self.rules:
            self.rules[prim] = PackRule(prim)
        return self.rules[prim]

    def _set(self, prim: Primitive, kind: str, value: Any, examples=None, notes: str = "") -> None:
        entry = self._entry(prim)
        setattr(entry, kind, value)
        (entry.principal_examples if kind == "principal" else entry.examples).extend(_examples(examples))
        if notes:
            setattr(entry, "principal_notes" if kind == "principal" else "notes", notes)
        if self._on_change is not None:
            self._on_change(prim)

    @property
    def primitives(self) -> list[Primitive]:
        """The primitives this pack has any rule for, by name."""
        return sorted(self.rules, key=lambda p: p.name)

    def coverage(self) -> dict[str, int]:
        """How many primitives get each kind of rule from this pack.

        Example:
            ```python
            jaxinv.rule_packs()[0].coverage()   # {'inverse': 38, 'ivjp': 12, ...}
            ```
        """
        return {kind: sum(r.provides(kind) for r in self.rules.values()) for kind in KINDS}

    def supports(self, jax_version: str = jax.__version__) -> bool:
        """Whether this pack declares support for ``jax_version``."""
        return _version_matches(jax_version, self.jax_versions)

    def __repr__(self) -> str:
        cov = self.coverage()
        status = self.status if self.error is None else f"{self.status}: {self.error}"
        return (f"RulePack({self.name!r}, version={self.version!r}, jax_versions={self.jax_versions!r}, "
                f"status={status!r}, inverse={cov['inverse']}, ivjp={cov['ivjp']}, principal={cov['principal']})")

    # ---- registration (the one convention of registry.py)
    def register_inverse(self, prim: Primitive, rule: InverseRule, *, principal_branch: bool = False,
                         examples: Example | Sequence[Example] = (), notes: str = "") -> InverseRule:
        """Register ``rule(invals, outvals, **params) -> invals`` as ``prim``'s inverse.

        With ``principal_branch=True`` the rule inverts a non-injective primitive
        on a chosen branch; only ``jaxinv.inverse`` uses it, never the gradient
        path. ``examples`` declare where the rule must work (checked by
        ``jaxinv.testing``).

        Example:
            ```python
            double_p = jax.extend.core.Primitive("double")
            ...
            jaxinv.register_inverse(double_p, lambda invals, outvals: [outvals[0] / 2])
            ```
        """
        self._set(prim, "principal" if principal_branch else "inverse", rule, examples, notes)
        return rule

    def register_ivjp(self, prim: Primitive, rule: IvjpRule, *, examples: Example | Sequence[Example] = (),
                      notes: str = "") -> IvjpRule:
        """Register ``rule(invals, outvals, out_cts, **params) -> (invals, in_cts)``.

        Example:
            ```python
            def exp_ivjp(invals, outvals, out_cts, **params):
                (y,), (ct,) = outvals, out_cts
                return [jnp.log(y)], [ct * y]

            jaxinv.register_ivjp(lax.exp_p, exp_ivjp)
            ```
        """
        self._set(prim, "ivjp", rule, examples, notes)
        return rule

    def register_ildj(self, prim: Primitive, rule: Callable[..., Any] | None = None) -> None:
        """Register ``rule(invals, outvals, **params) -> scalar``: ``log|det|`` of
        the Jacobian of the inverse, d(unknown inputs)/d(outputs), summed over
        elements, for the pattern of unknowns in ``invals`` (for ``jaxinv.ildj``).
        Without ``rule``: the log-det is 0 (permutations, copies, unit-triangular
        maps such as ``cumsum``).

        Example:
            ```python
            pack.register_ildj(lax.concatenate_p)          # a permutation: 0
            pack.register_ildj(my_scale_p, lambda invals, outvals, *, s: -y.size * jnp.log(abs(s)))
            ```
        """
        self._set(prim, "ildj", rule if rule is not None else zero_ildj)

    def register_elementwise(self, prim: Primitive) -> None:
        """Declare ``prim`` elementwise: each unknown input element depends on one
        output element, so ``jaxinv.ildj`` derives its log-det from the inverse
        rule by forward mode (``defunary`` and ``defbinary`` do this).

        Example:
            ```python
            pack.register_elementwise(lax.integer_pow_p)
            ```
        """
        self._set(prim, "elementwise", True)

    def register_nonzero(self, prim: Primitive, rule: Callable[..., bool] | None = None) -> None:
        """Declare when ``prim``'s output is provably nonzero.

        ``rule(nonzero_in, **params) -> bool`` gets one bool per input; the
        default says "always" (as for ``exp``). Used by ``require_nonzero``.

        Example:
            ```python
            pack.register_nonzero(lax.exp_p)                                # exp(x) != 0
            pack.register_nonzero(lax.mul_p, lambda nz, **_: all(nz))       # a * b
            ```
        """
        self._set(prim, "nonzero", rule if rule is not None else always_nonzero)

    def register_nonsingular(self, prim: Primitive) -> None:
        """Declare that ``prim``'s output, as a matrix, is nonsingular (a marker).

        Example:
            ```python
            pack.register_nonsingular(jaxinv.markers.nonzero_p)
            ```
        """
        self._set(prim, "nonsingular", True)

    def register_not_invertible(self, prim: Primitive, reason: str) -> None:
        """Document why ``prim`` has no inverse: the planner's error says so.

        Example:
            ```python
            pack.register_not_invertible(lax.reduce_precision_p, "it rounds away mantissa bits")
            ```
        """
        self._set(prim, "not_invertible", reason)

    def register_saturating(self, prim: Primitive, where: str) -> None:
        """Declare that ``prim``'s inverse is ill-conditioned where its output
        saturates (``where`` says how): the gradient path saves its input
        rather than invert it, except in a loop body, where inverting is the
        only way to keep memory flat (the zero-divisor policy's sibling, see
        docs/design.md).

        Example:
            ```python
            pack.register_saturating(lax.tanh_p, "tanh(x) rounds to ±1 for |x| > 9 in float32")
            ```
        """
        self._set(prim, "saturates", where)

    def declare_examples(self, prim: Primitive, *examples: Example) -> None:
        """Add examples (where the rules for ``prim`` must work) after registering.

        Example:
            ```python
            pack.declare_examples(lax.add_p, Example(jnp.add, reals(), reals(shape=())))
            ```
        """
        self._entry(prim).examples.extend(examples)

    # ---- one-line helpers, in the spirit of ad.defjvp
    def defunary(self, prim: Primitive, inverse: Callable, ct: Callable | None = None, *,
                 principal_branch: bool = False, examples: Example | Sequence[Example] = (),
                 notes: str = "", saturates: str | None = None) -> None:
        """One-line rules for an injective unary elementwise primitive ``y = prim(x)``.

        ``inverse(y, **params) -> x``; the optional fused ``ct(x, y, ct_y,
        **params) -> ct_x`` registers an ivjp too. ``inverse``/``ct`` receive
        only the params they name. Also declares "nonzero iff the input is",
        unless a nonzero rule is registered first: true when ``prim(0) == 0``
        (``tanh``, ``sinh``); for any other primitive register its nonzero rule
        first (``log``: never, as ``log(1) == 0``), or the planner may divide by
        a zero. And declares the primitive elementwise (its log-det for
        ``jaxinv.ildj`` is derived from ``inverse``).
        ``saturates`` declares the inverse ill-conditioned where the output
        saturates (see ``register_saturating``).

        Example:
            ```python
            defunary(lax.exp_p, jnp.log, ct=lambda x, y, ct: ct * y,
                     examples=Example(jnp.exp, reals(-10, 10)))
            ```
        """
        inv = _accepting(inverse)

        def inverse_rule(invals, outvals, **params):
            return [inv(outvals[0], **params)]

        self.register_inverse(prim, inverse_rule, principal_branch=principal_branch, examples=examples,
                              notes=notes)
        self._set(prim, "elementwise", True)
        if saturates is not None:
            self.register_saturating(prim, saturates)
        if principal_branch:
            return
        if not self._entry(prim).provides("nonzero"):
            self.register_nonzero(prim, nonzero_if_first)
        if ct is not None:
            cot = _accepting(ct)

            def ivjp_rule(invals, outvals, out_cts, **params):
                x = inv(outvals[0], **params)
                return [x], [cot(x, outvals[0], out_cts[0], **params)]

            self.register_ivjp(prim, ivjp_rule)

    def defbinary(self, prim: Primitive, solve_lhs: Callable | None, solve_rhs: Callable | None, *,
                  examples: Example | Sequence[Example] = (), notes: str = "") -> None:
        """One-line inverse for a binary primitive ``y = prim(a, b)``.

        ``solve_lhs(y, b, **params) -> a`` recovers the first operand when the
        second is known, ``solve_rhs(y, a, **params) -> b`` the second; pass
        ``None`` for a side that cannot be solved. A solver that divides by its
        known operand calls ``require_nonzero`` on it.

        Example:
            ```python
            defbinary(lax.add_p, lambda y, b: y - b, lambda y, a: y - a)
            ```
        """
        solvers = [_accepting(s) if s is not None else None for s in (solve_lhs, solve_rhs)]

        def inverse_rule(invals, outvals, **params):
            unknown = [i for i, v in enumerate(invals) if v is None]
            if len(unknown) != 1:
                raise NotInvertibleError(f"both operands of `{prim.name}` are unknown; one must be known")
            (i,) = unknown
            if solvers[i] is None:
                raise NotInvertibleError(f"`{prim.name}` cannot be solved for its {('first', 'second')[i]} operand")
            out = list(invals)
            out[i] = solvers[i](outvals[0], invals[1 - i], **params)
            return out

        self.register_inverse(prim, inverse_rule, examples=examples, notes=notes)
        self._set(prim, "elementwise", True)

    def defpermutation(self, prim: Primitive, *, examples: Example | Sequence[Example] = (),
                       notes: str = "") -> None:
        """One-line rules for a structural primitive that only moves elements
        (``reshape``, ``transpose``, ``rev``, ``squeeze``, ...).

        Its inverse is its own linear transpose, applied to the outputs; the
        fused ivjp applies the same transpose to the cotangents.

        Example:
            ```python
            defpermutation(lax.rev_p, examples=Example(lambda x: lax.rev(x, (0,)), reals()))
            ```
        """

        def undo(y, params):
            f = lambda x: prim.bind(x, **params)
            (x,) = jax.linear_transpose(f, input_avals()[0])(y)
            return x

        def inverse_rule(invals, outvals, **params):
            return [undo(outvals[0], params)]

        def ivjp_rule(invals, outvals, out_cts, **params):
            return [undo(outvals[0], params)], [undo(out_cts[0], params)]

        self.register_inverse(prim, inverse_rule, examples=examples, notes=notes)
        self.register_ivjp(prim, ivjp_rule)
        self.register_nonzero(prim, nonzero_if_first)
        self.register_ildj(prim)


def zero_ildj(invals, outvals, **_):
    """The log-det of a permutation, copy or unit-triangular map: 0."""
    return 0.0


# What nonzero rules (``register_nonzero``: ``rule(nonzero_in, **params) -> bool``)
# most often say, given which inputs are provably nonzero.
def always_nonzero(nonzero_in, **_) -> bool:
    """``exp``: nonzero whatever its input."""
    return True


def never_nonzero(nonzero_in, **_) -> bool:
    """``log``: may be zero whatever its input (``log(1) == 0``)."""
    return False


def nonzero_if_first(nonzero_in, **_) -> bool:
    """``neg``, ``a / b``: nonzero where the first input is."""
    return nonzero_in[0]


def nonzero_if_all(nonzero_in, **_) -> bool:
    """``a * b``: nonzero where every input is."""
    return all(nonzero_in)


def _version_matches(version: str, spec: str | None) -> bool:
    """Whether ``version`` (JAX's, pre-releases included) meets ``spec`` (PEP 440, e.g. ``">=0.10,<0.11"``)."""
    if not spec:
        return True
    try:
        specifiers = SpecifierSet(spec)
    except InvalidSpecifier:
        raise ValueError(f"unreadable JAX version specifier {spec!r} (use e.g. '>=0.10,<0.11')") from None
    return specifiers.contains(version, prereleases=True)
