"""Numerical safety: ``check_reconstruction`` measures drift, ``anchor`` bounds it.

The reversible backward pass rebuilds every block's input from its output and
each rebuild rounds, so errors accumulate from the output back to the input.
``check_reconstruction`` reports them block by block against the true forward
values, with the gradient's angle to a float64 reference; ``anchor(x)`` makes
the backward pass store ``x`` instead of rebuilding it, so drift restarts there.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import checkpoint_name

import jaxinv
from jaxinv.check import angle_deg, check_reconstruction, rel_error
from jaxinv.markers import anchor, anchor_p
from jaxinv._src.tracing import trace
from helpers import assert_trees_close, coupling, nbytes, revnet_input, revnet_params
from jaxinv._src.compat import enable_x64

EPS = float(jnp.finfo(jnp.float32).eps)
WIDTH = 8   # of the test networks' activations


def rounding(depth, width=WIDTH):
    """A relative rounding bound for ``depth`` float32 blocks, each a few dot
    products of length ``width`` (Higham's gamma_n = n * eps per dot product,
    added up block by block): what a well-conditioned stack rebuilds its input
    within, and (in radians) how far its gradient may turn. Derived from the
    dtype, not fitted to one machine's measurement."""
    return depth * width * EPS


def named_revnet(params, x):
    """The helpers' RevNet with each block's output named "block"."""
    x1, x2 = x
    for p in params:
        x1, x2 = (checkpoint_name(v, "block") for v in coupling(p, x1, x2))
    return x1, x2


def anchored(block, every):
    """A stack of ``block`` with an anchor every ``every`` blocks (none after the last)."""
    def net(params, x):
        x1, x2 = x
        for i, p in enumerate(params):
            x1, x2 = block(p, x1, x2)
            if every and (i + 1) % every == 0 and i + 1 < len(params):
                x1, x2 = anchor((x1, x2))
        return x1, x2
    return net


def anchored_revnet(every):
    """The RevNet with an anchor every ``every`` blocks."""
    return anchored(coupling, every)


def inputs(depth, width=WIDTH, batch=4, scale=0.3, dtype=jnp.float32):
    cast = lambda t: jax.tree_util.tree_map(lambda a: a.astype(dtype), t)
    return (cast(revnet_params(jax.random.key(0), depth, width, scale)),
            cast(revnet_input(jax.random.key(1), batch, width)))


def sum_of_squares(net):
    return lambda params, x: sum(jnp.sum(y ** 2) for y in net(params, x))


# ---------------------------------------------------------------- the report


def test_report_has_a_row_per_argument_and_per_named_block():
    params, x = inputs(depth=5)
    report = check_reconstruction(named_revnet, params, x)
    assert [r.name for r in report.rows] == ["args[0]", "args[1]"] + [f"block#{i}" for i in range(5)]
    assert [r.kind for r in report.rows] == ["input"] * 2 + ["block"] * 5
    # the parameters are saved (exact); the input and the blocks are rebuilt; the last block is the output
    assert report.row("args[0]").how == "saved" and report.row("args[0]").rel_error == 0
    assert report.row("args[1]").how == "rebuilt" and 0 < report.row("args[1]").rel_error < rounding(5)
    assert report.row("block#4").how == "output" and report.row("block#4").rel_error == 0
    assert all(r.angle_deg is not None and r.angle_deg < np.degrees(rounding(5)) for r in report.rows)
    assert report.max_rel_error == max(r.rel_error for r in report.rows)
    assert report.input_rel_error == report.row("args[1]").rel_error
    assert report.dtype == "float32" and report.reference_dtype == "float64"
    with pytest.raises(KeyError, match="block#9"):
        report.row("block#9")


def test_report_gradients_are_jaxinv_grad_and_the_float64_reference():
    params, x = inputs(depth=4)
    report = check_reconstruction(named_revnet, params, x)
    loss = sum_of_squares(named_revnet)
    assert_trees_close(report.grads, jaxinv.grad(loss, argnums=(0, 1))(params, x), rtol=1e-6, atol=1e-6)
    with enable_x64(True):
        p64, x64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), (params, x))
        want = jax.grad(loss, argnums=(0, 1))(p64, x64)
    assert_trees_close(report.reference_grads, want, rtol=1e-10, atol=1e-12)
    assert jax.tree_util.tree_leaves(report.reference_grads)[0].dtype == np.float64


def test_report_prints_a_table_with_a_verdict():
    params, x = inputs(depth=3)
    text = str(check_reconstruction(named_revnet, params, x))
    lines = text.splitlines()
    assert "value" in lines[1] and "rel. error" in lines[1] and "angle vs float64" in lines[1]
    assert any(line.startswith("block#2 ") for line in lines)
    assert lines[-1].startswith("gradient: angle") and "OK (< 1 degree)" in lines[-1]


def test_a_given_loss_is_differentiated():
    params, x = inputs(depth=3)
    loss = lambda out: jnp.sum(jnp.sin(out[0]) * out[1])
    report = check_reconstruction(named_revnet, params, x, loss=loss)
    want = jax.grad(lambda p, x: loss(named_revnet(p, x)), argnums=(0, 1))(params, x)
    assert_trees_close(report.grads, want, rtol=1e-5, atol=1e-6)


def test_without_names_the_calls_of_your_jitted_blocks_are_rows():
    block = jax.jit(coupling)

    def net(params, x):
        x1, x2 = x
        for p in params:
            x1, x2 = block(p, x1, x2)
            x2 = jnp.clip(x2, -50.0, 50.0)   # a library jit (clip): not a block
        return x1, x2

    params, x = inputs(depth=3)
    report = check_reconstruction(net, params, x)
    assert [r.name for r in report.blocks] == ["coupling#0", "coupling#1", "coupling#2"]
    # a jit-ed f is entered: its inner calls are the blocks
    assert [r.name for r in check_reconstruction(jax.jit(net), params, x).blocks] == [r.name for r in report.blocks]


def test_named_values_take_precedence_over_jitted_calls():
    block = jax.jit(coupling)

    def net(params, x):
        x1, x2 = x
        for i, p in enumerate(params):
            x1, x2 = block(p, x1, x2)
            if i == 1:
                x1 = checkpoint_name(x1, "middle")
        return x1, x2

    params, x = inputs(depth=3)
    assert [r.name for r in check_reconstruction(net, params, x).blocks] == ["middle#0"]


def test_the_gradient_of_a_well_conditioned_net_is_within_a_tiny_angle():
    params, x = inputs(depth=16)
    report = check_reconstruction(anchored_revnet(None), params, x)
    assert report.ok and report.grad_angle_deg < np.degrees(rounding(16))
    assert report.grad_rel_error < rounding(16)
    # of the order of the rounding plain float32 AD commits anyway
    assert report.grad_angle_deg < 20 * report.baseline_grad_angle_deg


def test_angle_and_relative_error_helpers():
    assert angle_deg([jnp.array([1.0, 0.0])], [jnp.array([0.0, 2.0])]) == pytest.approx(90.0)
    # accurate for tiny angles (arccos of a dot product would round to 0)
    tiny = 1e-9
    assert angle_deg([np.array([1.0, 0.0])], [np.array([1.0, tiny])]) == pytest.approx(np.degrees(tiny), rel=1e-6)
    assert rel_error([np.array([1.0, 2.0]), np.array([2.0])], [np.array([1.0, 2.0]), np.array([4.0])]) == \
        pytest.approx(2.0 / np.sqrt(21.0))


# ---------------------------------------------------------------- drift and anchors


def affine_coupling(p, x1, x2):
    """An affine coupling with unbounded shifts: y1 = x1 * exp(tanh(x2 W)) + x2 V.
    Activations grow with depth while the shift dominates the scaled input, so
    each inversion ``x1 = (y1 - t) / s`` cancels digits: ill-conditioned."""
    (w1, v1), (w2, v2) = p
    y1 = x1 * jnp.exp(jnp.tanh(x2 @ w1)) + x2 @ v1
    y2 = x2 * jnp.exp(jnp.tanh(y1 @ w2)) + y1 @ v2
    return y1, y2


def affine_net(every):
    return anchored(affine_coupling, every)


def affine_net_anchored_after(blocks):
    """The affine stack with an anchor after each block whose 1-based index is in ``blocks``."""
    def net(params, x):
        x1, x2 = x
        for i, p in enumerate(params):
            x1, x2 = affine_coupling(p, x1, x2)
            if i + 1 in blocks and i + 1 < len(params):
                x1, x2 = anchor((x1, x2))
        return x1, x2
    return net


DEPTH, EVERY = 32, 8
SEGMENTS = DEPTH // EVERY


@pytest.fixture(scope="module")
def affine_reports():
    """float32 affine couplings at depth 8 and 32, and 32 with an anchor every 8
    blocks; and the references the anchored stack is held to, measured in the
    same run (so on any CPU and JAX release): each 8-block segment checked
    alone, from its true input and without anchors ("segment", s), and the
    whole stack with only segment s rebuilt, an anchor after every block
    outside it ("only", s)."""
    w = 0.3 / np.sqrt(WIDTH) * jax.random.normal(jax.random.key(0), (DEPTH, 4, WIDTH, WIDTH))
    params = [((w[i, 0], w[i, 1]), (w[i, 2], w[i, 3])) for i in range(DEPTH)]
    x = revnet_input(jax.random.key(1), 4, WIDTH)
    reports = {(8, None): check_reconstruction(affine_net(None), params[:8], x),
               (DEPTH, None): check_reconstruction(affine_net(None), params, x),
               (DEPTH, EVERY): check_reconstruction(affine_net(EVERY), params, x)}
    start = x
    for s in range(SEGMENTS):
        segment = params[s * EVERY:(s + 1) * EVERY]
        reports["segment", s] = check_reconstruction(affine_net(None), segment, start)
        start = affine_net(None)(segment, start)        # eagerly, as the check runs its forward pass
        inside = set(range(s * EVERY + 1, (s + 1) * EVERY))
        reports["only", s] = check_reconstruction(affine_net_anchored_after(set(range(1, DEPTH)) - inside),
                                                  params, x)
    return reports


def test_drift_grows_with_depth_without_anchors(affine_reports):
    shallow, deep = affine_reports[8, None], affine_reports[DEPTH, None]
    assert shallow.input_rel_error < rounding(8) and shallow.ok   # 8 blocks: within rounding
    assert deep.input_rel_error > 1                           # not one correct digit: the rebuilt input is garbage
    assert not deep.ok                                        # the gradient is off by more than 1 degree
    # plain AD in the same dtype passes the criterion jaxinv fails: the drift is jaxinv's
    assert deep.baseline_grad_angle_deg < deep.angle_tol <= deep.grad_angle_deg


def test_anchors_every_8_blocks_bound_the_drift(affine_reports):
    anchored = affine_reports[DEPTH, EVERY]
    anchors = [r for r in anchored.rows if r.kind == "anchor"]
    assert [r.name for r in anchors] == ["anchor#0", "anchor#1", "anchor#2"]
    assert all(r.how == "stored (anchor)" for r in anchors)
    # Drift restarts at every anchor: what arrives at the start of segment s (the
    # input for s = 0, else the anchor before it) is rebuilt exactly as far off as
    # when that segment alone, without anchors, is inverted from its true output
    # (the same float32 operations on the same values).
    arriving = [anchored.row(name).rel_error for name in ["args[1]", "anchor#0", "anchor#1", "anchor#2"]]
    alone = [affine_reports["segment", s].input_rel_error for s in range(SEGMENTS)]
    assert arriving == pytest.approx(alone, rel=EPS, abs=0)
    assert anchored.max_rel_error == pytest.approx(max(alone), rel=EPS, abs=0)
    # The gradient: to first order its error is the sum of the errors of the
    # segments, each rebuilt from its anchor, which is what the stack with only
    # that segment rebuilt (everything else stored) commits; by the triangle
    # inequality the angle is at most SEGMENTS times the largest of those
    # (each of which includes plain float32 AD's own error, baseline_grad_angle_deg).
    only = [affine_reports["only", s].grad_angle_deg for s in range(SEGMENTS)]
    assert anchored.grad_angle_deg <= SEGMENTS * max(only)
    # and within the RevNet criterion (1 degree)
    assert anchored.ok


def test_the_block_before_an_anchor_is_stored_exactly():
    def net(params, x):
        x1, x2 = x
        for i, p in enumerate(params):
            x1, x2 = (checkpoint_name(v, "block") for v in coupling(p, x1, x2))
            if i == 1:
                x1, x2 = anchor((x1, x2))
        return x1, x2

    params, x = inputs(depth=4)
    report = check_reconstruction(net, params, x)
    assert [r.name for r in report.blocks] == ["block#0", "block#1", "anchor#0", "block#2", "block#3"]
    assert report.row("block#1").how == "saved" and report.row("block#1").rel_error == 0
    assert report.row("anchor#0").rel_error > 0      # what arrived rebuilt, replaced by the stored value


# ---------------------------------------------------------------- the anchor marker


def anchor_inputs(plan):
    return [v for e in plan.jaxpr.eqns if e.primitive is anchor_p for v in e.invars]


def test_the_plan_stores_exactly_the_anchored_values():
    params, x = inputs(depth=6)
    plain = trace(anchored_revnet(None), (params, x)).plan
    anchored = trace(anchored_revnet(2), (params, x)).plan
    stored = anchor_inputs(anchored)
    assert len(stored) == 4                              # 2 anchors x (x1, x2)
    assert set(stored) <= set(anchored.saved)
    # besides the anchors, the same is saved as without them: the parameters
    assert len(anchored.saved) == len(plain.saved) + len(stored)
    extra = jaxinv.explain(anchored_revnet(2), params, x).saved_bytes - \
        jaxinv.explain(anchored_revnet(None), params, x).saved_bytes
    assert extra == 4 * x[0].nbytes
    # and the blocks before an anchor are rebuilt from it, by inversion
    first = anchored.jaxpr.eqns[[e.primitive for e in anchored.jaxpr.eqns].index(anchor_p)]
    assert all(anchored.sources[v].kind == "saved" for v in first.invars)
    rebuilt = [v for e in anchored.jaxpr.eqns[:10] for v in e.outvars if anchored.sources[v].kind == "invert"]
    assert rebuilt


def test_anchors_are_stored_when_the_parameters_are_one_stacked_array():
    def net(w, x):
        x1, x2 = x
        for i in range(w.shape[0]):
            x1 = x1 + jnp.tanh(x2 @ w[i, 0])
            x2 = x2 + jnp.tanh(x1 @ w[i, 1])
            if (i + 1) % 4 == 0 and i + 1 < w.shape[0]:
                x1, x2 = anchor((x1, x2))
        return x1, x2

    w = 0.3 * jax.random.normal(jax.random.key(0), (12, 2, 8, 8))
    x = revnet_input(jax.random.key(1), 4, 8)
    plan = trace(net, (w, x)).plan
    assert set(anchor_inputs(plan)) <= set(plan.saved)
    assert not set(plan.jaxpr.invars[1:]) & set(plan.saved)      # the input x is rebuilt, not stored


def test_anchor_is_the_identity_under_jit_vmap_grad_and_jvp():
    x = jnp.arange(6.0).reshape(2, 3)
    assert anchor(x) is not None and jnp.array_equal(anchor(x), x)
    assert jnp.array_equal(jax.jit(anchor)(x), x)
    assert jnp.array_equal(jax.vmap(anchor)(x), x)
    assert jnp.array_equal(jax.vmap(anchor, in_axes=1, out_axes=1)(x), x)
    assert jnp.array_equal(jax.grad(lambda x: jnp.sum(anchor(x) ** 2))(x), 2 * x)
    assert jnp.array_equal(jax.jit(jax.vmap(jax.grad(lambda r: jnp.sum(anchor(r) ** 2))))(x), 2 * x)
    _, t = jax.jvp(anchor, (x,), (jnp.ones_like(x),))
    assert jnp.array_equal(t, jnp.ones_like(x))
    assert jnp.allclose(jax.hessian(lambda v: jnp.sum(anchor(v) ** 3))(x[0]), jnp.diag(6 * x[0]))
    pair = anchor({"a": x, "b": (x, 1.0)})
    assert jax.tree_util.tree_structure(pair) == jax.tree_util.tree_structure({"a": x, "b": (x, 1.0)})


@pytest.mark.parametrize("how", ["jaxinv.grad", "jit(jaxinv.grad)", "grad(invertible)", "jit(grad(invertible))",
                                 "vmap(grad(invertible))"])
def test_gradients_through_anchors_are_jax_grads(how):
    params, x = inputs(depth=5)
    net = anchored_revnet(2)
    loss = lambda params, x, net=net: jnp.sum(jnp.sin(net(params, x)[0]) * net(params, x)[1])
    inv = jaxinv.invertible(net)
    inv_loss = lambda params, x: jnp.sum(jnp.sin(inv(params, x)[0]) * inv(params, x)[1])
    if how == "vmap(grad(invertible))":
        xs = jax.tree_util.tree_map(lambda a: jnp.stack([a, -2 * a]), x)
        got = jax.vmap(jax.grad(inv_loss, argnums=1), in_axes=(None, 0))(params, xs)
        want = jax.vmap(jax.grad(loss, argnums=1), in_axes=(None, 0))(params, xs)
    else:
        fn = {"jaxinv.grad": jaxinv.grad(loss, argnums=(0, 1)),
              "jit(jaxinv.grad)": jax.jit(jaxinv.grad(loss, argnums=(0, 1))),
              "grad(invertible)": jax.grad(inv_loss, argnums=(0, 1)),
              "jit(grad(invertible))": jax.jit(jax.grad(inv_loss, argnums=(0, 1)))}[how]
        got, want = fn(params, x), jax.grad(loss, argnums=(0, 1))(params, x)
    assert_trees_close(got, want, rtol=1e-5, atol=1e-5)


def test_invertible_keeps_the_anchored_values_as_residuals():
    params, x = inputs(depth=6)
    _, plain_vjp = jax.vjp(jaxinv.invertible(anchored_revnet(None)), params, x)
    _, anchored_vjp = jax.vjp(jaxinv.invertible(anchored_revnet(3)), params, x)
    assert nbytes(anchored_vjp) - nbytes(plain_vjp) == 2 * x[0].nbytes   # one anchor of (x1, x2)
