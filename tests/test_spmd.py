"""jaxinv under JAX's SPMD machinery, on the suite's 4 forced host devices
(``conftest.py``): ``jit`` with ``NamedSharding``, ``shard_map`` with its
default checks, ``pmap`` in any order with other maps, sharding constraints
inside the network, and a ``scan`` over stacked sharded weights. Every
gradient equals ``jax.grad``'s and keeps the sharding ``jax.grad`` gives it
(its primal's, under Explicit axes).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxinv
from helpers import assert_trees_close, revnet, revnet_input, revnet_loss, revnet_params

pytestmark = pytest.mark.skipif(jax.device_count() < 4, reason="needs the 4 forced host devices of conftest.py")

BATCH, WIDTH, DEPTH = 16, 8, 3


def _mesh(shape=(4,), names=("d",), kind="explicit"):
    kind = jax.sharding.AxisType.Explicit if kind == "explicit" else jax.sharding.AxisType.Auto
    return jax.make_mesh(shape, names, axis_types=(kind,) * len(shape))


def _setup(key=0):
    params = revnet_params(jax.random.PRNGKey(key), DEPTH, WIDTH)
    x = revnet_input(jax.random.PRNGKey(key + 1), BATCH, WIDTH)
    return params, x


def _place(tree, mesh, spec):
    return jax.tree_util.tree_map(lambda a: jax.device_put(a, NamedSharding(mesh, spec(a))), tree)


LOSS = revnet_loss(revnet)
GRADS = {"jaxinv.grad": jaxinv.grad(LOSS, argnums=(0, 1)),
         "jax.grad(invertible)": jax.grad(revnet_loss(jaxinv.invertible(revnet)), argnums=(0, 1))}


def _assert_same_sharding(got, want):
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        assert g.sharding.is_equivalent_to(w.sharding, g.ndim), (g.sharding, w.sharding)


@pytest.mark.parametrize("how", GRADS)
@pytest.mark.parametrize("kind", ["explicit", "auto"])
@pytest.mark.parametrize("layout", ["data", "model", "data and model"])
def test_jit_with_named_shardings_matches_jax_grad(how, kind, layout):
    params, x = _setup()
    mesh = _mesh((2, 2), ("batch", "model"), kind) if layout == "data and model" else _mesh(
        (4,), ("batch",) if layout == "data" else ("model",), kind)
    batch_axis = "batch" if "data" in layout else None
    model_axis = "model" if "model" in layout else None
    params = _place(params, mesh, lambda a: P(None, model_axis) if a.ndim == 2 else P())
    x = _place(x, mesh, lambda a: P(batch_axis, None))
    want = jax.jit(jax.grad(LOSS, argnums=(0, 1)))(params, x)
    got = jax.jit(GRADS[how])(params, x)
    assert_trees_close(got, want, rtol=1e-5, atol=1e-5)
    # Explicit axes: a gradient has its primal's sharding type (newer JAX's
    # transpose gives jax.grad the same; JAX 0.6's can leave a replicated
    # bias's gradient sharded like the activations it was summed from).
    # Auto axes: XLA chooses, as for jax.grad.
    _assert_same_sharding(got, (params, x) if kind == "explicit" else want)
    if batch_axis:  # the input gradient of a batch-sharded input is batch-sharded
        assert got[1][0].sharding.spec[0] == batch_axis


@pytest.mark.parametrize("how", GRADS)
def test_shard_map_with_default_checks_matches_jax_grad(how):
    params, x = _setup()
    mesh = _mesh()
    x = _place(x, mesh, lambda a: P("d"))

    def step(grad):
        def per_device(params, x):
            g_params, g_x = grad(params, x)
            return jax.lax.psum(g_params, "d"), g_x
        return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("d")), out_specs=(P(), P("d"))))

    want = step(jax.grad(LOSS, argnums=(0, 1)))(params, x)
    got = step(GRADS[how])(params, x)
    assert_trees_close(got, want, rtol=1e-5, atol=1e-5)


def test_pmap_in_any_order_with_other_maps():
    params, x = _setup()
    stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a] * 4), params)
    xs = jax.tree_util.tree_map(lambda a: a.reshape(4, BATCH // 4, WIDTH), x)
    want = jax.pmap(jax.grad(LOSS, argnums=(0, 1)), axis_name="i")(stacked, xs)
    # a shard_map, then pmaps under two axis names, then the default one
    test_shard_map_with_default_checks_matches_jax_grad("jaxinv.grad")
    for kw in ({"axis_name": "i"}, {"axis_name": "j"}, {}):
        for grad in GRADS.values():
            assert_trees_close(jax.pmap(grad, **kw)(stacked, xs), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("how", GRADS)
def test_sharding_constraints_inside_the_network(how):
    params, x = _setup()
    mesh = _mesh((4,), ("batch",), "auto")  # with_sharding_constraint names Auto axes
    x = _place(x, mesh, lambda a: P("batch"))
    spec = NamedSharding(mesh, P("batch", None))

    def constrained(params, x):
        x1, x2 = x
        for (w1, b1), (w2, b2) in params:
            x1 = jax.lax.with_sharding_constraint(x1 + jnp.tanh(x2 @ w1 + b1), spec)
            x2 = jax.lax.with_sharding_constraint(x2 + jnp.tanh(x1 @ w2 + b2), spec)
        return x1, x2

    grads = {"jaxinv.grad": jaxinv.grad(revnet_loss(constrained), argnums=(0, 1)),
             "jax.grad(invertible)": jax.grad(revnet_loss(jaxinv.invertible(constrained)), argnums=(0, 1))}
    want = jax.jit(jax.grad(revnet_loss(constrained), argnums=(0, 1)))(params, x)
    got = jax.jit(grads[how])(params, x)
    assert_trees_close(got, want, rtol=1e-5, atol=1e-5)
    _assert_same_sharding(got, want)
    assert jaxinv.explain(revnet_loss(constrained), params, x).saved_activation_bytes \
        == jaxinv.explain(LOSS, params, x).saved_activation_bytes


@pytest.mark.parametrize("how", ["jaxinv.grad", "jax.grad(invertible)"])
def test_scan_over_stacked_sharded_weights(how):
    params, x = _setup()
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *params)
    # Auto axes: under Explicit ones x @ w(model-sharded) changes the carry's type
    mesh = _mesh((2, 2), ("batch", "model"), "auto")
    stacked = _place(stacked, mesh, lambda a: P(None, None, "model") if a.ndim == 3 else P())
    x = _place(x, mesh, lambda a: P("batch", None))

    def scanned(stacked, x):
        def block(carry, p):
            return revnet([p], carry), None
        return jax.lax.scan(block, x, stacked)[0]

    grad = (jaxinv.grad(revnet_loss(scanned), argnums=(0, 1)) if how == "jaxinv.grad"
            else jax.grad(revnet_loss(jaxinv.invertible(scanned)), argnums=(0, 1)))
    want = jax.jit(jax.grad(revnet_loss(scanned), argnums=(0, 1)))(stacked, x)
    got = jax.jit(grad)(stacked, x)
    assert_trees_close(got, want, rtol=1e-5, atol=1e-5)
    _assert_same_sharding(got, want)


def test_the_plain_network_saves_nothing_per_layer_under_sharding():
    # explain under a mesh: a sharded RevNet still rebuilds its activations
    params, x = _setup()
    mesh = _mesh((4,), ("batch",))
    x = _place(x, mesh, lambda a: P("batch"))
    # the params replicated on the same mesh (JAX 0.6 refuses to mix meshes in one dot)
    params = _place(params, mesh, lambda a: P())
    deep = _place(revnet_params(jax.random.PRNGKey(7), 2 * DEPTH, WIDTH), mesh, lambda a: P())
    shallow_saved = jaxinv.explain(LOSS, params, x).saved_activation_bytes
    assert jaxinv.explain(LOSS, deep, x).saved_activation_bytes == shallow_saved
    assert np.isfinite(shallow_saved)
