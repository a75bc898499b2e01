"""Rule packs and registering rules: built-in packs, precedence between packs,
third-party packs found through entry points (loaded lazily; a broken one
never breaks jaxinv), and direct registrations (a brand-new primitive needs
only a rule; mistakes in registering are clear errors)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

import jaxinv
from helpers import assert_trees_close, input_fates
from jaxinv import packs, registry
from jaxinv.packs import entry_points, precedence, rule_pack
from jaxinv.domains import Example, reals


@pytest.fixture
def scratch_packs():
    """Packs installed by a test are uninstalled after it."""
    made = []
    yield made
    for pack in made:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jaxinv.RulePackConflictWarning)
            jaxinv.uninstall_rule_pack(pack)
        if pack in precedence._known:
            precedence._known.remove(pack)


def make_pack(name, prim=lax.exp_p, *, priority=0, scale=1.0, made=None, **kw):
    pack = jaxinv.RulePack(name, "1.0", priority=priority, **kw)
    pack.defunary(prim, lambda y: jnp.log(y) * scale, examples=Example(jnp.exp, reals()))
    if made is not None:
        made.append(pack)
    return pack


def test_builtin_packs_are_loaded_with_their_coverage():
    builtin = {p.name: p for p in jaxinv.rule_packs() if p.builtin}
    assert set(builtin) == {"jaxinv.elementwise", "jaxinv.structural", "jaxinv.linalg", "jaxinv.control_flow",
                            "jaxinv.utility"}
    for pack in builtin.values():
        assert pack.status == "loaded" and pack.origin == "built-in" and pack.version == jaxinv.__version__
        assert pack.coverage()["inverse"] > 0
    assert packs.provider(lax.exp_p).name == "jaxinv.elementwise"
    assert packs.provider(lax.dot_general_p).name == "jaxinv.linalg"


def test_a_third_party_pack_overrides_a_builtin_one_and_warns(scratch_packs):
    builtin_rule = registry.inverse_rules[lax.exp_p]
    mine = make_pack("mine", made=scratch_packs)
    with pytest.warns(jaxinv.RulePackConflictWarning, match="'jaxinv.elementwise'.*'mine'|'mine'.*'jaxinv.elementwise'"):
        jaxinv.install_rule_pack(mine)
    assert registry.inverse_rules[lax.exp_p] is mine.rules[lax.exp_p].inverse
    assert packs.provider(lax.exp_p) is mine
    # the built-in fused ivjp stays: precedence is per kind of rule
    assert packs.provider(lax.exp_p, "ivjp").name == "jaxinv.elementwise"
    jaxinv.uninstall_rule_pack(mine)
    assert registry.inverse_rules[lax.exp_p] is builtin_rule


def test_between_third_party_packs_priority_then_name_decides(scratch_packs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxinv.RulePackConflictWarning)
        b = jaxinv.install_rule_pack(make_pack("b_pack", made=scratch_packs))
        a = jaxinv.install_rule_pack(make_pack("a_pack", made=scratch_packs))
        assert packs.provider(lax.exp_p) is a  # same priority: the name that sorts first
        urgent = jaxinv.install_rule_pack(make_pack("z_pack", priority=5, made=scratch_packs))
        assert packs.provider(lax.exp_p) is urgent
    jaxinv.uninstall_rule_pack(urgent)
    assert packs.provider(lax.exp_p) is a
    del b


def test_a_direct_registration_wins_silently(scratch_packs):
    p = jax.extend.core.Primitive("scaled_by_three")
    p.def_impl(lambda x: 3 * x)
    p.def_abstract_eval(lambda a: a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a direct registration
        jaxinv.install_rule_pack(make_pack("pack_for_three", prim=p, made=scratch_packs))
        rule = jaxinv.register_inverse(p, lambda invals, outvals: [outvals[0] / 3])
    assert registry.inverse_rules[p] is rule
    x = jnp.arange(4.0)
    np.testing.assert_allclose(jaxinv.inverse(p.bind, x)(p.bind(x)), x)


def test_a_pack_for_another_jax_is_skipped_with_a_warning(scratch_packs):
    old = make_pack("old_pack", prim=lax.log_p, jax_versions="<0.5", made=scratch_packs)
    with pytest.warns(jaxinv.RulePackWarning, match="old_pack.*skipped.*<0.5"):
        jaxinv.install_rule_pack(old)
    assert old.status == "skipped" and old in jaxinv.rule_packs()
    assert packs.provider(lax.log_p).name == "jaxinv.elementwise"
    assert f"jax_versions='<0.5', status='skipped: supports JAX <0.5, not {jax.__version__}'" in repr(old)


def test_the_builtin_packs_declare_the_jax_range_jaxinv_installs_with():
    """pyproject.toml's JAX range is the built-in packs' range, and this JAX is in it."""
    import pathlib
    import tomllib
    from jaxinv._src.compat import SUPPORTED_JAX
    from jaxinv.rules import BUILTIN_PACKS
    pyproject = tomllib.loads((pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert f"jax{SUPPORTED_JAX}" in pyproject["project"]["dependencies"]
    assert rule_pack._version_matches(jax.__version__, SUPPORTED_JAX)
    assert all(p.jax_versions == SUPPORTED_JAX and p.status == "loaded" for p in BUILTIN_PACKS)


@pytest.mark.parametrize("version, spec, ok", [
    ("0.10.2", ">=0.10,<0.11", True), ("0.10.2", ">=0.11", False), ("0.10.2", "==0.10.*", True),
    ("0.10.2", "!=0.10.2", False), ("0.10.2", "~=0.10.0", True), ("0.11.0", "~=0.10.0", False),
    ("0.10.2", None, True),
    # PEP 440 (packaging.specifiers): a nightly counts, and comes before its release
    ("0.10.2.dev20261101", ">=0.10.1", True), ("0.10.2.dev20261101", ">=0.10.2", False),
    ("0.11.0.dev20261101", ">=0.6,<0.11", False),
])
def test_jax_version_specifiers(version, spec, ok):
    assert rule_pack._version_matches(version, spec) is ok


def test_an_unreadable_version_specifier_is_an_error():
    with pytest.raises(ValueError, match="unreadable JAX version specifier"):
        rule_pack._version_matches("0.10.2", "newer than 0.9")


class FakeEntryPoint:
    def __init__(self, name, value, load):
        self.name, self.value, self._load, self.dist = name, value, load, None

    def load(self):
        return self._load()


def test_entry_point_packs_load_lazily_and_broken_ones_are_reported(monkeypatch, scratch_packs):
    good = make_pack("good_plugin", prim=lax.expm1_p, made=scratch_packs)

    def broken():
        raise ImportError("No module named 'missing_dependency'")

    eps = [FakeEntryPoint("good", "good_mod:PACK", lambda: good),
           FakeEntryPoint("broken", "broken_mod:PACK", broken),
           FakeEntryPoint("factory", "fac_mod:make", lambda: (lambda: make_pack("made_by_factory", prim=lax.sinh_p,
                                                                                     made=scratch_packs))),
           FakeEntryPoint("not_a_pack", "x:y", lambda: 42)]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps if group == "jaxinv.rule_packs" else [])
    monkeypatch.setattr(entry_points, "_plugins_loaded", False)
    with pytest.warns(jaxinv.RulePackWarning) as record:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jaxinv.RulePackConflictWarning)
            listed = {p.name: p for p in jaxinv.rule_packs()}
    messages = " ".join(str(w.message) for w in record)
    assert "broken" in messages and "missing_dependency" in messages and "not a jaxinv.RulePack" in messages
    assert listed["good_plugin"].status == "loaded"
    assert listed["good_plugin"].origin == "entry point good = good_mod:PACK"
    assert listed["made_by_factory"].status == "loaded"
    assert listed["broken"].status == "failed" and "ImportError" in listed["broken"].error
    assert listed["not_a_pack"].status == "failed"
    for failed in ("broken", "not_a_pack"):
        precedence._known.remove(listed[failed])
    # jaxinv still works
    x = jnp.linspace(0.1, 1, 4)
    np.testing.assert_allclose(jaxinv.grad(lambda x: jnp.sum(jnp.tanh(x) ** 2))(x),
                               jax.grad(lambda x: jnp.sum(jnp.tanh(x) ** 2))(x), rtol=1e-6)


def test_import_jaxinv_does_not_load_plugins():
    code = "import jaxinv, jaxinv.packs.entry_points as p; print(p._plugins_loaded)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plugins_can_be_disabled(monkeypatch):
    monkeypatch.setenv("JAXINV_DISABLE_PLUGINS", "1")
    monkeypatch.setattr(entry_points, "_plugins_loaded", False)
    called = []
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: called.append(group) or [])
    packs.load_entry_point_packs()
    assert called == []


def scaling_primitive(name: str, scale: float) -> Primitive:
    """A brand-new primitive ``x -> scale * x`` that JAX can differentiate, batch and lower."""
    p = Primitive(name)
    p.def_impl(lambda x: scale * x)
    p.def_abstract_eval(lambda a: a)
    ad.deflinear2(p, lambda ct, x: [scale * ct])
    batching.primitive_batchers[p] = lambda args, dims: (p.bind(*args), dims[0])
    mlir.register_lowering(p, mlir.lower_fun(lambda x: scale * x, multiple_results=False))
    return p


def test_the_first_plan_loads_entry_point_packs(monkeypatch, scratch_packs):
    """A user who installs a pack and calls jaxinv.grad gets its rules: planning loads the plugins."""
    quadruple_p = scaling_primitive("test_quadruple", 4.0)
    pack = jaxinv.RulePack("quadruple_plugin", "1.0")
    pack.register_inverse(quadruple_p, lambda invals, outvals: [outvals[0] / 4.0])
    scratch_packs.append(pack)
    eps = [FakeEntryPoint("quadruple", "quad_mod:PACK", lambda: pack)]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps if group == "jaxinv.rule_packs" else [])
    monkeypatch.setattr(entry_points, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_deferred_loaders", [entry_points.load_entry_point_packs])  # as after import
    assert pack.status == "not installed"
    f = lambda x: jnp.sinh(quadruple_p.bind(x))
    x = jnp.linspace(-0.5, 0.5, 4)
    assert input_fates(f, x) == ["reconstructed"]      # without the pack, x would be saved
    assert pack.status == "loaded" and entry_points._plugins_loaded
    assert_trees_close(jaxinv.grad(lambda x: jnp.sum(f(x) ** 2))(x), jax.grad(lambda x: jnp.sum(f(x) ** 2))(x))


def test_a_new_primitive_needs_only_a_registered_rule():
    """Registering an inverse rule for a brand-new Primitive is all it takes."""
    X = jnp.array([0.5, -1.0, 2.0, 0.25], dtype=jnp.float32)
    triple_p = scaling_primitive("test_triple", 3.0)
    f = lambda x: jnp.sinh(triple_p.bind(x))
    assert input_fates(f, X) == ["saved"]          # before: unknown primitive, saved
    jaxinv.register_inverse(triple_p, lambda invals, outvals: [outvals[0] / 3.0])
    assert input_fates(f, X) == ["reconstructed"]  # after: inverted
    g = lambda x: jnp.sum(jnp.sin(f(x)))
    assert_trees_close(jaxinv.grad(g)(X), jax.grad(g)(X))
    x = X * 0.2  # away from tanh's flat tails, where atanh amplifies rounding
    np.testing.assert_allclose(jaxinv.inverse(f)(f(x)), x, rtol=1e-5)


def test_not_invertible_reasons_reach_the_error():
    p = jax.extend.core.Primitive("lossy")
    p.def_impl(lambda x: jnp.round(x))
    p.def_abstract_eval(lambda a: a)
    jaxinv.register_not_invertible(p, "it rounds to integers")
    with pytest.raises(jaxinv.NotInvertibleError, match="`lossy` is not invertible: it rounds to integers"):
        jaxinv.inverse(p.bind, jnp.ones(3))(jnp.ones(3))


def test_registering_for_a_non_primitive_is_a_clear_error():
    with pytest.raises(TypeError, match="expected a jax.extend.core.Primitive"):
        jaxinv.register_inverse(jnp.exp, lambda invals, outvals: outvals)


def test_an_inverse_and_its_principal_branch_keep_their_own_notes():
    power = packs.provider(lax.integer_pow_p).rules[lax.integer_pow_p]
    assert power.notes.startswith("odd exponents only") and power.principal_notes == "x >= 0 for even y"
    fft = packs.provider(lax.fft_p).rules[lax.fft_p]
    assert fft.notes.startswith("FFT <-> IFFT") and fft.principal_notes.startswith("IRFFT -> RFFT")
