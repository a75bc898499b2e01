"""The example pack passes jaxinv's conformance harness and is found through
its entry point once installed (``pip install -e examples/rule_pack_example``)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinv
from jaxinv.testing import check_rule_pack
from jaxinv_rule_pack_example import PACK, leaky_relu, leaky_relu_p


def test_the_pack_conforms():
    reports = check_rule_pack(PACK, max_examples=5)
    assert [r.primitive for r in reports] == ["leaky_relu"]


def test_the_pack_is_loaded_through_its_entry_point():
    (pack,) = [p for p in jaxinv.rule_packs() if p.name == "leaky_relu_example"]
    assert pack is PACK and pack.status == "loaded"
    assert pack.origin.startswith("entry point leaky_relu = jaxinv_rule_pack_example:PACK")
    assert pack.coverage()["inverse"] == 1 and pack.coverage()["ivjp"] == 1


def test_installing_the_distribution_is_all_a_user_does():
    """In a fresh process, the first plan loads the pack: no rule_packs() call, no import of the pack."""
    code = ("import jax.numpy as jnp, jaxinv\n"
            "import jaxinv_rule_pack_example as ex\n"   # the user's model uses the primitive
            "flow = lambda x: jnp.sinh(ex.leaky_relu(x * 2.0 + 1.0, 0.2))\n"
            "print(ex.PACK.status, jaxinv.explain(flow, jnp.ones(3)).saved_bytes, ex.PACK.status)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["not", "installed", "0", "loaded"]


def revnet_block(x1, x2):
    y1 = x1 + leaky_relu(x2 @ jnp.eye(3) * 0.5, 0.2)
    y2 = x2 + jnp.tanh(y1)
    return y1, y2


def test_reversible_gradient_through_the_new_primitive():
    x1, x2 = jnp.linspace(-2, 2, 6).reshape(2, 3), jnp.linspace(1, -3, 6).reshape(2, 3)
    loss = lambda x1, x2: sum(jnp.sum(y ** 2) for y in revnet_block(*revnet_block(x1, x2)))
    want = jax.grad(loss, argnums=(0, 1))(x1, x2)
    got = jaxinv.grad(loss, argnums=(0, 1))(x1, x2)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_a_flow_through_the_new_primitive_saves_nothing():
    flow = lambda x: jnp.sinh(leaky_relu(x * 2.0 + 1.0, 0.2) * 0.5)
    x = jnp.linspace(-2, 2, 12).reshape(3, 4)
    assert jaxinv.explain(flow, x).saved_bytes == 0  # x is rebuilt from the output
    jaxinv.uninstall_rule_pack(PACK)
    try:  # without the pack, the leaky ReLU's input must be saved
        assert jaxinv.explain(flow, x).saved_bytes == x.nbytes
    finally:
        jaxinv.install_rule_pack(PACK)
    np.testing.assert_allclose(jaxinv.grad(lambda x: flow(x).sum())(x), jax.grad(lambda x: flow(x).sum())(x),
                               rtol=1e-5, atol=1e-6)


def test_inverse_of_the_new_primitive():
    x = jnp.array([-3.0, -0.5, 0.0, 2.0])
    f = lambda x: leaky_relu(x, 0.25)
    np.testing.assert_allclose(jaxinv.inverse(f, x)(f(x)), x)


def test_a_nonpositive_slope_is_refused_with_the_reason():
    with pytest.raises(jaxinv.NotInvertibleError, match="slope=0.0 is not injective"):
        jaxinv.inverse(lambda x: leaky_relu(x, 0.0), jnp.ones(3))(jnp.ones(3))


def test_it_is_a_plain_jax_primitive_outside_jaxinv():
    x = jnp.array([-2.0, 3.0])
    np.testing.assert_allclose(jax.jit(jax.vmap(lambda v: leaky_relu(v, 0.5)))(x), [-1.0, 3.0])
    assert leaky_relu_p.name == "leaky_relu"
