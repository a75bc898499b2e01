"""Every registered rule passes the conformance harness (``jaxinv.testing``).

The cases come from the registry itself: each primitive with an inverse,
fused ivjp or principal-branch rule is checked on the examples its pack
declares, so no rule can be added untested (a rule without examples fails).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import jaxinv
from jaxinv import packs, registry
from jaxinv.domains import Example, reals
from jaxinv.testing import RuleCheckError, check_inverse_rule, check_ivjp_rule, check_rule, check_rule_pack
from jaxinv._src.compat import enable_x64


def _registered():
    prims = set(registry.inverse_rules) | set(registry.ivjp_rules)
    cases = [pytest.param(p, False, id=p.name) for p in sorted(prims, key=lambda p: p.name)]
    cases += [pytest.param(p, True, id=f"{p.name}[principal]")
              for p in sorted(registry.principal_inverse_rules, key=lambda p: p.name)]
    return cases


# The older JAX releases of the CI matrix (.ci/test-jax) check every rule in one
# configuration, float32 under jit: what differs between releases is the
# jaxpr a rule is handed. The newest checks both dtypes, under jit and vmap.
ONE_CONFIGURATION = dict(dtypes=["float32"], modes=["jit"]) if os.environ.get("JAXINV_CONFORMANCE") == "quick" else {}


@pytest.mark.parametrize("prim, principal", _registered())
def test_registered_rule_conforms(prim, principal):
    report = check_rule(prim, principal_branch=principal, max_examples=3, **ONE_CONFIGURATION)
    assert report.checks > 0 and report.solved


def test_every_registered_rule_comes_from_a_pack_with_examples():
    for table, kind in [(registry.inverse_rules, "inverse"), (registry.principal_inverse_rules, "principal")]:
        for prim in table:
            owner = packs.provider(prim, kind)
            assert owner is not None, f"{prim.name}: written into the table directly, not through a pack"
            if owner is not packs.direct:  # (tests register a few rules of their own directly)
                assert packs.declared_examples(prim, kind), f"{prim.name} declares no {kind} examples"
    from jaxinv.rules import BUILTIN_PACKS
    assert all(packs.provider(prim, "inverse") is not packs.direct
               for pack in BUILTIN_PACKS for prim, rule in pack.rules.items() if rule.inverse is not None)


def test_coverage_is_at_least_sixty_primitives():
    builtin = [p for p in jaxinv.rule_packs() if p.builtin]
    covered = {prim for pack in builtin for prim, rule in pack.rules.items() if rule.inverse is not None}
    assert len(covered) >= 60, sorted(p.name for p in covered)


# --------------------------------------------------------------------------
# The harness catches wrong rules (it must be able to fail)


def test_a_wrong_inverse_is_reported_with_what_to_fix():
    wrong = lambda invals, outvals, **_: [jnp.log(outvals[0]) * 1.001]
    with pytest.raises(RuleCheckError) as info:
        check_rule(lax.exp_p, Example(jnp.exp, reals(-2, 2)), inverse=wrong, ivjp=None, max_examples=2)
    message = str(info.value)
    assert "exp" in message and "input 0" in message and "elements wrong" in message
    assert "float32" in message and "mode=jit" in message


def test_a_wrong_cotangent_is_caught_against_jax_vjp():
    def ivjp(invals, outvals, out_cts, **_):
        (y,), (ct,) = outvals, out_cts
        return [jnp.arctanh(y)], [ct * (1 - y)]  # should be 1 - y**2
    with pytest.raises(RuleCheckError, match="cotangent 0 \\(vs jax.vjp\\)"):
        check_rule(lax.tanh_p, Example(jnp.tanh, reals(-1, 1)), ivjp=ivjp, max_examples=2)


def test_a_rule_that_reads_values_while_planning_is_caught():
    def reads_values(invals, outvals, **_):
        if float(outvals[0].sum()) > 1e9:  # concretizes a tracer
            raise ValueError
        return [jnp.log(outvals[0])]
    with pytest.raises(RuleCheckError, match="abstract values"):
        check_rule(lax.exp_p, Example(jnp.exp, reals()), inverse=reads_values, ivjp=None, max_examples=1)


def test_a_wrong_dtype_is_caught():
    as_f64 = lambda invals, outvals, **_: [jnp.log(outvals[0]).astype(jnp.float64)]
    with enable_x64(True), pytest.raises(RuleCheckError, match="exact shape and dtype"):
        check_inverse_rule(lax.exp_p, jnp.ones(3, jnp.float32), rule=as_f64, accuracy=None)


def test_a_declared_pattern_the_rule_refuses_is_a_failure():
    with pytest.raises(RuleCheckError, match="declares this pattern solvable"):
        check_rule(lax.add_p, Example(jnp.add, reals(), reals(), solve=[(0, 1)]), max_examples=1)


def test_a_rule_without_examples_fails():
    p = jax.extend.core.Primitive("undocumented")
    with pytest.raises(RuleCheckError, match="no examples"):
        check_rule(p, [], inverse=lambda invals, outvals: outvals)


def test_check_by_hand_on_given_values():
    report = check_inverse_rule(lax.mul_p, jnp.arange(1.0, 7.0), jnp.full(6, 2.0), solve=[(0,), (1,)])
    assert report.solved == {(0,), (1,)}
    check_ivjp_rule(lax.tanh_p, jnp.linspace(-2, 2, 6), accuracy=None)


def test_check_rule_pack_reports_every_failing_rule():
    pack = jaxinv.RulePack("broken", "0")
    square_p = jax.extend.core.Primitive("my_square")
    square_p.def_impl(lambda x: x * x)
    square_p.def_abstract_eval(lambda a: a)
    jax.interpreters.ad.defjvp(square_p, lambda t, x: 2 * x * t)
    pack.defunary(square_p, lambda y: y, examples=Example(square_p.bind, reals(0.5, 2)))  # wrong: not sqrt
    with pytest.raises(RuleCheckError, match="'broken': 1 rule"):
        check_rule_pack(pack, max_examples=1)
    fixed = jaxinv.RulePack("fixed", "0")
    fixed.defunary(square_p, jnp.sqrt, examples=Example(square_p.bind, reals(0.5, 2)))
    (report,) = check_rule_pack(fixed, max_examples=2)
    assert report.ok and report.solved == {(0,)}


def test_domains_are_respected_in_float32():
    # a draw rounded to float32 must stay inside the declared closed interval
    report = check_rule(lax.log_p, Example(jnp.log, reals(1e-3, 1e3)), max_examples=5, dtypes=["float32"])
    assert report.ok
