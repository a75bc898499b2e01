"""Higher-order primitives inside jaxinv: ``scan``, ``fori_loop`` / ``while``,
``custom_jvp`` / ``custom_vjp``, ``jit``, ``checkpoint`` and nested
``jaxinv.invertible`` (``cond`` / ``switch``: ``test_cond.py``).

Every gradient is checked against JAX's own on the same computation; ``explain``
and the residual bytes of ``jaxinv.vjp`` show *how* it was obtained (rebuilt
from the outputs, or saved).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.tree_util import tree_leaves

import jaxinv
from helpers import assert_trees_close, coupling_block, head, nbytes


def assert_trees_differ(a, b, atol=1e-3):
    assert any(not np.allclose(x, y, atol=atol) for x, y in zip(tree_leaves(a), tree_leaves(b)))


def make_params(length, width=8, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return (0.3 * jax.random.normal(k1, (length, width, width)),
            0.3 * jax.random.normal(k2, (length, width, width)))


def make_x(batch=3, width=8, seed=1):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (batch, width)), jax.random.normal(k2, (batch, width))


PARAMS = make_params(4)
X1, X2 = make_x()


# ---------------------------------------------------------------- scan


def scan_xs(params, x1, x2, reverse=False):
    """Per-layer params stacked on the leading axis, scanned over as xs."""
    carry, _ = lax.scan(lambda c, p: (coupling_block(*c, *p), None), (x1, x2), params, reverse=reverse)
    return carry


def scan_tied(params, x1, x2, reverse=False):
    """One (W1, W2) closed over by the body: scan constants, not xs."""
    W1, W2 = params[0][0], params[1][0]
    carry, _ = lax.scan(lambda c, _: (coupling_block(*c, W1, W2), None), (x1, x2), None,
                        length=len(params[0]), reverse=reverse)
    return carry


def scan_ys(params, x1, x2, reverse=False):
    """Also emits a per-layer summary ys (known outputs of the scan)."""
    def body(c, p):
        y = coupling_block(*c, *p)
        return y, jnp.sum(y[0] * y[1], axis=-1)
    (y1, y2), ys = lax.scan(body, (x1, x2), params, reverse=reverse)
    return y1, y2, ys


SCANS = {"xs": scan_xs, "tied": scan_tied, "ys": scan_ys}
GRADS = {
    "jaxinv.grad": lambda net: jaxinv.grad(lambda *a: head(net(*a)), argnums=(0, 1, 2)),
    "jax.grad(invertible)": lambda net: jax.grad(lambda *a: head(jaxinv.invertible(net)(*a)), argnums=(0, 1, 2)),
}


@functools.lru_cache(maxsize=None)
def jax_scan_grad(scan, reverse):
    net = functools.partial(SCANS[scan], reverse=reverse)
    return jax.grad(lambda *a: head(net(*a)), argnums=(0, 1, 2))(PARAMS, X1, X2)


SCAN_CASES = [("xs", False, "jaxinv.grad"), ("xs", True, "jaxinv.grad"), ("tied", False, "jaxinv.grad"),
              ("ys", False, "jaxinv.grad"), ("ys", True, "jaxinv.grad"),
              ("xs", False, "jax.grad(invertible)"), ("tied", False, "jax.grad(invertible)"),
              ("ys", True, "jax.grad(invertible)")]


@pytest.mark.parametrize("scan, reverse, kind", SCAN_CASES,
                         ids=[f"{s}{'-reverse' if r else ''}-{k}" for s, r, k in SCAN_CASES])
def test_scan_revnet_grad_matches_jax(scan, reverse, kind):
    """A scan RevNet (params as xs, tied params as constants, or with ys outputs; forward or
    reverse=True): jaxinv.grad and jax.grad(jaxinv.invertible) equal jax.grad."""
    net = functools.partial(SCANS[scan], reverse=reverse)
    assert_trees_close(GRADS[kind](net)(PARAMS, X1, X2), jax_scan_grad(scan, reverse), relative_atol=True)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("scan", SCANS)
def test_scan_explain_reconstructs_the_carry(scan, reverse):
    """explain: the carry inputs are reconstructed by inverting the scan, the params are the
    only thing saved."""
    report = jaxinv.explain(functools.partial(SCANS[scan], reverse=reverse), PARAMS, X1, X2)
    inputs = [r for r in report.rows if r.index is None]
    assert [r.fate for r in inputs] == ["saved", "saved", "reconstructed", "reconstructed"], report
    assert all("`scan`" in r.detail for r in inputs[2:]), report
    assert report.saved_bytes == nbytes(PARAMS), report


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_scan_ys_are_known_outputs(reverse):
    """A scan's ys are outputs: with cotangents on carry and ys, jaxinv.vjp keeps only params,
    carry and ys, and matches jax.vjp."""
    net = functools.partial(scan_ys, reverse=reverse)
    out, vjp_fn = jaxinv.vjp(net, PARAMS, X1, X2)
    assert out[2].shape == (4, 3)
    assert nbytes(vjp_fn) == nbytes(PARAMS) + nbytes(out)
    ct = (jnp.cos(out[0]), jnp.sin(out[1]), jnp.linspace(-1.0, 1.0, 12).reshape(4, 3))
    assert_trees_close(vjp_fn(ct), jax.vjp(net, PARAMS, X1, X2)[1](ct), relative_atol=True)


def test_scan_inverse():
    """jaxinv.inverse of a scan RevNet (params fixed) rebuilds the initial carry."""
    y1, y2 = scan_xs(PARAMS, X1, X2)
    got = jaxinv.inverse(lambda a, b: scan_xs(PARAMS, a, b))(y1, y2)
    assert_trees_close(got, (X1, X2), rtol=1e-4, atol=1e-4)


def scan_nested(params, x1, x2):
    """A scan of scans: 2 groups of 2 layers."""
    grouped = jax.tree_util.tree_map(lambda a: a.reshape(2, 2, *a.shape[1:]), params)
    inner = lambda c, p: (lax.scan(lambda cc, q: (coupling_block(*cc, *q), None), c, p)[0], None)
    return lax.scan(inner, (x1, x2), grouped)[0]


def scan_data_xs(params, x1, x2):
    """Besides the params, xs holds a closed-over data sequence and an integer index."""
    seq = jnp.linspace(-1.0, 1.0, 4 * 8).reshape(4, 1, 8)
    body = lambda c, q: (coupling_block(c[0] + q[2] + q[3].astype(jnp.float32), c[1], q[0], q[1]), None)
    return lax.scan(body, (x1, x2), (*params, seq, jnp.arange(4)))[0]


SCAN_VARIANTS = {
    "nested": scan_nested,
    "unroll=2": lambda p, a, b: lax.scan(lambda c, q: (coupling_block(*c, *q), None), (a, b), p, unroll=2)[0],
    "data-and-int-xs": scan_data_xs,
}


@pytest.mark.parametrize("variant", SCAN_VARIANTS)
def test_scan_variants_are_inverted(variant):
    """Nested scans, unrolled scans and scans over extra data / integer xs: only the params are
    saved, and jaxinv.vjp matches jax.vjp."""
    net = SCAN_VARIANTS[variant]
    assert jaxinv.explain(net, PARAMS, X1, X2).saved_bytes == nbytes(PARAMS)
    out, vjp_fn = jaxinv.vjp(net, PARAMS, X1, X2)
    ct = (jnp.cos(out[0]), out[1])
    assert_trees_close(vjp_fn(ct), jax.vjp(net, PARAMS, X1, X2)[1](ct), relative_atol=True)


def weight_normalized(W):
    return W / jnp.sqrt(jnp.sum(W ** 2))


def wn_scan(params, x1, x2):
    """A scan RevNet whose weights are normalized in the body (W / |W|): a function of known
    values only, which the backward pass can recompute."""
    body = lambda c, p: (coupling_block(*c, weight_normalized(p[0]), weight_normalized(p[1])), None)
    return lax.scan(body, (x1, x2), params)[0]


def wn_unrolled(params, x1, x2):
    for W1, W2 in zip(*params):
        x1, x2 = coupling_block(x1, x2, weight_normalized(W1), weight_normalized(W2))
    return x1, x2


WN_NETS = {"scan": wn_scan, "unrolled": wn_unrolled}
@pytest.mark.parametrize("params", ["differentiated", "closed-over"])
@pytest.mark.parametrize("net", WN_NETS)
def test_weight_normalized_revnet_is_inverted(net, params):
    """Weight normalization of the params (a computation on known values) does not stop the
    inversion: explain saves only the params (nothing when they are closed over)."""
    f = WN_NETS[net]
    if params == "differentiated":
        assert jaxinv.explain(f, PARAMS, X1, X2).saved_bytes == nbytes(PARAMS)
    else:
        assert jaxinv.explain(lambda a, b: f(PARAMS, a, b), X1, X2).saved_bytes == 0


def test_weight_normalized_revnet_grad_matches_jax():
    """Whatever the plan, a weight-normalized scan RevNet gets JAX's gradient."""
    loss = lambda *a: head(wn_scan(*a))
    assert_trees_close(jaxinv.grad(loss, argnums=(0, 1, 2))(PARAMS, X1, X2),
                       jax.grad(loss, argnums=(0, 1, 2))(PARAMS, X1, X2))


NON_INVERTIBLE = {
    "sin": lambda c, w: jnp.sin(c),
    "sin*w": lambda c, w: jnp.sin(c) * w,
    "square": lambda c, w: c * c + w,
}


@pytest.mark.parametrize("body", NON_INVERTIBLE)
def test_scan_with_non_invertible_body_falls_back_to_saving(body):
    """A scan whose body cannot be inverted (carry = sin(carry), ...) is saved instead, says
    why, and still gives JAX's gradient."""
    step = NON_INVERTIBLE[body]

    def loss(x, w):
        c, _ = lax.scan(lambda c, wi: (step(c, wi), None), x, w)
        return jnp.sum(c ** 2)

    x, w = jnp.linspace(0.1, 1.0, 5), jnp.linspace(1.0, 2.0, 4)
    assert_trees_close(jaxinv.grad(loss, argnums=(0, 1))(x, w), jax.grad(loss, argnums=(0, 1))(x, w))
    report = jaxinv.explain(loss, x, w)
    assert report.saved_bytes > 0
    assert any("`scan`" in r.detail and "cannot be inverted" in r.detail for r in report.rows), report
    # its per-iteration values are temporary memory of the backward pass: explain says so
    assert report.loops_differentiated_by_jax == 1 and "JAX's own VJP" in str(report)
    invertible = jaxinv.explain(lambda x, w: jnp.sum(lax.scan(lambda c, wi: (c + wi, None), x, w)[0] ** 2), x, w)
    assert invertible.loops_differentiated_by_jax == 0


@pytest.mark.parametrize("make_vjp", [jaxinv.vjp, lambda f, *a: jax.vjp(jaxinv.invertible(f), *a)],
                         ids=["jaxinv.vjp", "jax.vjp(invertible)"])
def test_scan_residuals_flat_in_length(make_vjp):
    """Residual bytes of a scan RevNet minus its params are the same at length 4 and 32 (just
    the outputs), while jax.vjp's grow with the length."""
    x1, x2 = make_x(batch=16)

    def activation_bytes(vjp, length):
        params = make_params(length)
        out, vjp_fn = vjp(scan_xs, params, x1, x2)
        return nbytes(vjp_fn) - nbytes(params), nbytes(out)

    (short, out_bytes), (long, _) = activation_bytes(make_vjp, 4), activation_bytes(make_vjp, 32)
    assert short == long == out_bytes
    assert out_bytes < jax_scan_activation_bytes(4) < jax_scan_activation_bytes(32)


@functools.lru_cache(maxsize=None)
def jax_scan_activation_bytes(length):
    params = make_params(length)
    return nbytes(jax.vjp(scan_xs, params, *make_x(batch=16))[1]) - nbytes(params)


def scan_with_step_counter(params, x1, x2):
    """A scan whose carry holds a step counter the caller discards."""
    def body(c, p):
        i, a, b = c
        a, b = coupling_block(a, b, *p)
        return (i + 1, a, b), None
    (_, y1, y2), _ = lax.scan(body, (jnp.int32(0), x1, x2), params)
    return y1, y2


def scan_with_returned_counter(params, x1, x2):
    (i, y1, y2), _ = lax.scan(lambda c, p: ((c[0] + 1, *coupling_block(c[1], c[2], *p)), None),
                              (jnp.int32(0), x1, x2), params)
    return i, y1, y2


def test_scan_with_returned_counter_is_inverted():
    """A step-counter carry that is returned does not stop the inversion."""
    report = jaxinv.explain(scan_with_returned_counter, PARAMS, X1, X2)
    assert report.saved_bytes == nbytes(PARAMS), report


def test_scan_with_discarded_counter_is_inverted():
    """A scan carrying a step counter the caller discards is still inverted, saving at most the
    counter's final value besides the params."""
    report = jaxinv.explain(scan_with_step_counter, PARAMS, X1, X2)
    assert report.saved_bytes <= nbytes(PARAMS) + 4, report


def test_scan_with_discarded_counter_grad_matches_jax():
    """Whatever the plan, the gradient through a scan with a discarded counter is JAX's."""
    loss = lambda *a: head(scan_with_step_counter(*a))
    assert_trees_close(jaxinv.grad(loss, argnums=(0, 1, 2))(PARAMS, X1, X2),
                       jax.grad(loss, argnums=(0, 1, 2))(PARAMS, X1, X2))


# ---------------------------------------------------------------- fori_loop / while


def fori_step(i, c):
    x1, x2, w = c
    y1 = x1 + jnp.tanh(x2 * w + 0.1 * i)
    return y1, x2 + jnp.tanh(y1 * w), w


def fori_net(x1, x2, w, lo, hi):
    y1, y2, _ = lax.fori_loop(lo, hi, fori_step, (x1, x2, w))
    return y1, y2


def fori_loss(x1, x2, w, lo, hi):
    return head(fori_net(x1, x2, w, lo, hi))


FX1, FX2, FW = jnp.linspace(-1.0, 1.0, 5), jnp.linspace(0.2, 0.8, 5), jnp.float32(0.7)
BOUNDS = [(0, 6), (2, 7), (0, 0), (5, 3)]


def test_jax_refuses_reverse_mode_through_a_traced_fori_loop():
    """Why the while rule matters: with traced bounds fori_loop is a while loop, and jax.grad
    refuses it."""
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        jax.jit(jax.grad(fori_loss))(FX1, FX2, FW, 0, 6)


@pytest.mark.parametrize("lo, hi", BOUNDS[1:3], ids=str)
def test_fori_loop_with_concrete_array_bounds(lo, hi):
    """Concrete (array) bounds: JAX lowers fori_loop to a scan, and jaxinv.grad equals jax.grad
    with Python-int bounds."""
    got = jaxinv.grad(fori_loss, argnums=(0, 1, 2))(FX1, FX2, FW, jnp.int32(lo), jnp.int32(hi))
    assert_trees_close(got, jax.grad(fori_loss, argnums=(0, 1, 2))(FX1, FX2, FW, lo, hi))


TRACED_BOUND_GRADS = {
    "jit(jaxinv.grad)": lambda: jax.jit(jaxinv.grad(fori_loss, argnums=(0, 1, 2))),
    "jit(jaxinv.grad)-argnums0": lambda: jax.jit(jaxinv.grad(fori_loss, argnums=(0,))),
    "jax.grad(invertible)": lambda: jax.grad(lambda x1, x2, w, lo, hi: head(jaxinv.invertible(fori_net)(
        x1, x2, w, lo, hi)), argnums=(0, 1, 2)),
}


@pytest.mark.parametrize("lo, hi", [(2, 7), (5, 3)], ids=str)
@pytest.mark.parametrize("kind", TRACED_BOUND_GRADS)
def test_fori_loop_with_traced_bounds(kind, lo, hi):
    """Traced bounds (a while loop): jaxinv's gradient equals jax.grad of the same loop with
    static Python-int bounds (which JAX turns into a scan)."""
    want = jax.grad(fori_loss, argnums=(0, 1, 2))(FX1, FX2, FW, lo, hi)
    got = TRACED_BOUND_GRADS[kind]()(FX1, FX2, FW, jnp.int32(lo), jnp.int32(hi))
    assert_trees_close(tuple(got), want[:len(got)])


@pytest.mark.parametrize("lo, hi", BOUNDS, ids=str)
def test_fori_loop_with_traced_bounds_is_inverted(lo, hi):
    """With the bounds as arguments, jaxinv.vjp rebuilds the state from the outputs (explain:
    reconstructed by inverting `while`; saved: only w and the two bounds) and matches jax.vjp
    with static bounds."""
    args = (FX1, FX2, FW, jnp.int32(lo), jnp.int32(hi))
    report = jaxinv.explain(fori_net, *args)
    inputs = [r for r in report.rows if r.index is None]
    assert [r.fate for r in inputs] == ["reconstructed", "reconstructed", "saved", "saved", "saved"], report
    assert all("`while`" in r.detail for r in inputs[:2]), report
    out, vjp_fn = jaxinv.vjp(fori_net, *args)
    assert nbytes(vjp_fn) == nbytes(out) + 12
    ct = (jnp.cos(out[0]), out[1])
    got = vjp_fn(ct)
    assert_trees_close(got[:3], jax.vjp(lambda *a: fori_net(*a, lo, hi), FX1, FX2, FW)[1](ct))
    assert all(g.dtype == jax.dtypes.float0 for g in got[3:])   # integer bounds: float0 cotangents


# ---------------------------------------------------------------- custom_jvp / custom_vjp


@jax.custom_jvp
def act_jvp(x):
    return jnp.tanh(x)


@act_jvp.defjvp
def _act_jvp_rule(primals, tangents):
    (x,), (t,) = primals, tangents
    return jnp.tanh(x), 0.5 * t          # deliberately not the derivative of tanh


@jax.custom_vjp
def act_vjp(x):
    return jnp.tanh(x)


act_vjp.defvjp(lambda x: (jnp.tanh(x), x), lambda x, ct: (ct * jnp.cos(x),))  # deliberately wrong


ACTS = {"custom_jvp": act_jvp, "custom_vjp": act_vjp}


def act_scan(act):
    def net(params, x1, x2):
        carry, _ = lax.scan(lambda c, p: (coupling_block(*c, *p, act=act), None), (x1, x2), params)
        return carry
    return net


def act_blocks(act):
    def net(params, x1, x2):
        for W1, W2 in zip(*params):
            x1, x2 = coupling_block(x1, x2, W1, W2, act=act)
        return x1, x2
    return net


NETS = {"scan": act_scan, "unrolled": act_blocks}


@functools.lru_cache(maxsize=None)
def true_tanh_grad(net):
    return jax.grad(lambda *a: head(NETS[net](jnp.tanh)(*a)), argnums=(0, 1, 2))(PARAMS, X1, X2)


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("act", ACTS)
def test_custom_derivative_rules_are_followed(act, net):
    """Inside a RevNet (unrolled or in a scan), a custom_jvp/custom_vjp activation whose rule
    is deliberately not its true derivative: jaxinv.grad follows the custom rule like jax.grad
    (and so differs from the true gradient), and the activations are still rebuilt."""
    f = NETS[net](ACTS[act])
    loss = lambda *a: head(f(*a))
    want = jax.grad(loss, argnums=(0, 1, 2))(PARAMS, X1, X2)
    assert_trees_close(jaxinv.grad(loss, argnums=(0, 1, 2))(PARAMS, X1, X2), want, relative_atol=True)
    assert_trees_differ(want, true_tanh_grad(net))
    assert jaxinv.explain(f, PARAMS, X1, X2).saved_bytes == nbytes(PARAMS)


def _shift_coupling(x1, x2):
    return x1, x2 + jnp.tanh(x1) + jnp.exp(x1)


@jax.custom_jvp
def coupling_jvp(x1, x2):
    return _shift_coupling(x1, x2)


@coupling_jvp.defjvp
def _coupling_jvp_rule(primals, tangents):
    out = _shift_coupling(*primals)
    t1, t2 = tangents
    return out, (t1, t2 + 3.0 * t1)     # deliberately not the true derivative


@jax.custom_vjp
def coupling_vjp(x1, x2):
    return _shift_coupling(x1, x2)


coupling_vjp.defvjp(lambda x1, x2: (_shift_coupling(x1, x2), None),
                    lambda _, cts: (cts[0] - 2.0 * cts[1], cts[1]))   # deliberately not the true VJP


def shifts(f):
    def net(x1, x2):
        for _ in range(3):
            x2, x1 = f(x1, x2)
        return x1, x2
    return net


@pytest.mark.parametrize("name", ["custom_jvp", "custom_vjp"])
def test_invertible_custom_function_body_is_inverted(name):
    """An invertible function with a custom_jvp/custom_vjp: its body is inverted (explain: the
    inputs are reconstructed through the custom call, nothing saved), and jaxinv.vjp's cotangents
    are those of its custom rule, as jax.vjp's are."""
    net = shifts({"custom_jvp": coupling_jvp, "custom_vjp": coupling_vjp}[name])

    report = jaxinv.explain(net, X1, X2)
    assert report.saved_bytes == 0, report
    inputs = [r for r in report.rows if r.index is None]
    assert all(r.fate == "reconstructed" and f"`{name}_call`" in r.detail for r in inputs), report
    out, vjp_fn = jaxinv.vjp(net, X1, X2)
    assert nbytes(vjp_fn) == nbytes(out)
    ct = (jnp.cos(out[0]), out[1])
    want = jax.vjp(net, X1, X2)[1](ct)
    assert_trees_close(vjp_fn(ct), want)
    assert_trees_differ(want, jax.vjp(shifts(_shift_coupling), X1, X2)[1](ct))


# ---------------------------------------------------------------- bodies of sub-jaxprs are planned like the top level


def affine(x):
    return x * 3.0 + 1.0


@jax.custom_jvp
def affine_jvp(x):
    return affine(x)


affine_jvp.defjvp(lambda p, t: (affine(p[0]), 3.0 * t[0]))


@jax.custom_vjp
def affine_vjp(x):
    return affine(x)


affine_vjp.defvjp(lambda x: (affine(x), None), lambda _, ct: (3.0 * ct,))

AFFINE_WRAPPERS = {
    "top-level": affine,
    "jit": jax.jit(affine),
    "checkpoint": jax.checkpoint(affine),
    "invertible": jaxinv.invertible(affine),
    "scan": lambda x: lax.scan(lambda c, _: (affine(c), None), x, None, length=3)[0],
    "custom_jvp": affine_jvp,
    "custom_vjp": affine_vjp,
}


@pytest.mark.parametrize("wrapper", AFFINE_WRAPPERS)
def test_affine_map_is_inverted_in_every_wrapper(wrapper):
    """x * 3 + 1 is inverted wherever it sits (top level, jit, checkpoint, invertible, scan body,
    custom_jvp/custom_vjp body): jaxinv.vjp keeps only the output."""
    f = AFFINE_WRAPPERS[wrapper]
    x = jnp.linspace(-1.0, 1.0, 4)
    assert jaxinv.explain(f, x).saved_bytes == 0
    out, vjp_fn = jaxinv.vjp(f, x)
    assert nbytes(vjp_fn) == nbytes(out)
    assert_trees_close(vjp_fn(jnp.cos(out)), jax.vjp(f, x)[1](jnp.cos(out)))


SCAN_BODY_WRAPPERS = {
    "plain": lambda f: f,
    "jit": jax.jit,
    "checkpoint": jax.checkpoint,
    "invertible": jaxinv.invertible,
    "custom_ivjp": jaxinv.custom_ivjp,
}


@pytest.mark.parametrize("wrapper", SCAN_BODY_WRAPPERS)
def test_wrapped_coupling_in_a_scan_body_is_inverted(wrapper):
    """A scan body calling a jit/checkpoint/invertible/custom_ivjp-wrapped coupling (a common way
    to write a layer) is still inverted: only the params are saved."""
    block = SCAN_BODY_WRAPPERS[wrapper](coupling_block)
    net = lambda p, a, b: lax.scan(lambda c, q: (block(*c, *q), None), (a, b), p)[0]
    assert jaxinv.explain(net, PARAMS, X1, X2).saved_bytes == nbytes(PARAMS)


@pytest.mark.parametrize("wrapper", [w for w in SCAN_BODY_WRAPPERS if w != "plain"])
def test_wrapped_coupling_in_a_scan_body_grad_matches_jax(wrapper):
    """Whatever the plan, wrapped couplings in a scan body give JAX's gradient."""
    block = SCAN_BODY_WRAPPERS[wrapper](coupling_block)
    net = lambda p, a, b: lax.scan(lambda c, q: (block(*c, *q), None), (a, b), p)[0]
    loss = lambda *a: head(net(*a))
    assert_trees_close(jaxinv.grad(loss, argnums=(0, 1, 2))(PARAMS, X1, X2), jax_scan_grad("xs", False))


def _invert_coupling(y1, y2, W1, W2):
    x2 = y2 - jnp.tanh(y1 @ W2)
    return y1 - jnp.tanh(x2 @ W1), x2


def test_custom_ivjp_with_rule_in_a_scan_body():
    """A custom_ivjp *with* an ivjp, called in a scan body, is inverted by its rule: only the
    params are saved, and the gradient is JAX's."""
    block = jaxinv.custom_ivjp(coupling_block)
    calls = []

    @block.defivjp
    def _ivjp(xs, ys, cts):
        _, _, W1, W2 = xs
        calls.append(tuple(x is None for x in xs))   # (never keep the tracers themselves)
        x1, x2 = _invert_coupling(*ys, W1, W2)
        _, f_vjp = jax.vjp(coupling_block, x1, x2, W1, W2)
        return (x1, x2, W1, W2), f_vjp(tuple(cts))

    net = lambda p, a, b: lax.scan(lambda c, q: (block(*c, *q), None), (a, b), p)[0]
    assert jaxinv.explain(net, PARAMS, X1, X2).saved_bytes == nbytes(PARAMS)
    calls.clear()
    loss = lambda *a: head(net(*a))
    assert_trees_close(jaxinv.grad(loss, argnums=(0, 1, 2))(PARAMS, X1, X2),
                       jax.grad(loss, argnums=(0, 1, 2))(PARAMS, X1, X2))
    # (the rule is also probed on other patterns while planning)
    assert (True, True, False, False) in calls


# ---------------------------------------------------------------- jit, checkpoint, nested invertible


BLOCK_WRAPPERS = {
    "plain": lambda f: f,
    "jit": jax.jit,
    "checkpoint": jax.checkpoint,
    "checkpoint(nothing_saveable)": lambda f: jax.checkpoint(f, policy=jax.checkpoint_policies.nothing_saveable),
    "invertible": jaxinv.invertible,
    "jit(invertible)": lambda f: jax.jit(jaxinv.invertible(f)),
}


def unrolled(wrapper):
    block = BLOCK_WRAPPERS[wrapper](coupling_block)

    def net(params, x1, x2):
        for W1, W2 in zip(*params):
            x1, x2 = block(x1, x2, W1, W2)
        return x1, x2
    return net


@functools.lru_cache(maxsize=None)
def jax_unrolled_grad():
    net = unrolled("plain")
    return jax.grad(lambda *a: head(net(*a)), argnums=(0, 1, 2))(PARAMS, X1, X2)


@pytest.mark.parametrize("wrapper", BLOCK_WRAPPERS)
def test_wrapped_blocks_grad_matches_jax(wrapper):
    """RevNet blocks wrapped in jit / checkpoint / jaxinv.invertible: jaxinv.grad and
    jax.grad(jaxinv.invertible(net)) equal jax.grad."""
    net = unrolled(wrapper)
    want = jax_unrolled_grad()
    assert_trees_close(jaxinv.grad(lambda *a: head(net(*a)), argnums=(0, 1, 2))(PARAMS, X1, X2), want)
    inv = jaxinv.invertible(net)
    assert_trees_close(jax.grad(lambda *a: head(inv(*a)), argnums=(0, 1, 2))(PARAMS, X1, X2), want)


@pytest.mark.parametrize("wrapper", BLOCK_WRAPPERS)
def test_wrapped_blocks_form_one_region(wrapper):
    """Wrapped blocks are inlined into one reversible region: the residuals of jaxinv.vjp and of
    jax.vjp(jaxinv.invertible) are the params plus the outputs, exactly as for plain blocks."""
    net = unrolled(wrapper)
    for vjp in (jaxinv.vjp, lambda f, *a: jax.vjp(jaxinv.invertible(f), *a)):
        out, vjp_fn = vjp(net, PARAMS, X1, X2)
        assert nbytes(vjp_fn) == nbytes(PARAMS) + nbytes(out)
    assert jaxinv.explain(net, PARAMS, X1, X2).saved_bytes == nbytes(PARAMS)


def test_nested_invertible_is_one_region():
    """jaxinv.invertible of a net of jaxinv.invertible blocks keeps the same residuals as
    jaxinv.invertible of the plain net (one region, not one per block), and the same gradient."""
    nested, flat = jaxinv.invertible(unrolled("invertible")), jaxinv.invertible(unrolled("plain"))
    _, nested_fn = jax.vjp(nested, PARAMS, X1, X2)
    out, flat_fn = jax.vjp(flat, PARAMS, X1, X2)
    assert nbytes(nested_fn) == nbytes(flat_fn) == nbytes(PARAMS) + nbytes(out)
    ct = (jnp.cos(out[0]), out[1])
    assert_trees_close(nested_fn(ct), flat_fn(ct))
    assert_trees_close(nested_fn(ct), jax.vjp(unrolled("plain"), PARAMS, X1, X2)[1](ct))


def test_invertible_of_invertible_net():
    """jaxinv.invertible(jaxinv.invertible(net)) is net's region once: same residuals, JAX's
    gradient."""
    net = unrolled("plain")
    twice = jaxinv.invertible(jaxinv.invertible(net))
    out, fn = jax.vjp(twice, PARAMS, X1, X2)
    assert nbytes(fn) == nbytes(PARAMS) + nbytes(out)
    assert_trees_close(jax.grad(lambda *a: head(twice(*a)), argnums=(0, 1, 2))(PARAMS, X1, X2), jax_unrolled_grad())
