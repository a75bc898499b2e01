"""jaxinv.nn couplings, the reversible transformer block and the stacks.

Every layer: round trips both ways, log-det = slogdet of the Jacobian per
example (float64 reference), ildj = -log_det, jit and vmap, dtype and shape.
Stacks: ``jaxinv.grad`` equals ``jax.grad`` and, because each coupling is
rebuilt from its output, the backward pass keeps nothing that grows with
depth (``jaxinv.explain(...).saved_bytes``).
"""

import dataclasses
import math
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinv
from jaxinv.nn.base import Layer
from jaxinv.nn.coupling import MLP, AdditiveCoupling, AffineCoupling
from jaxinv.nn.sequential import Sequential, rev_sequential
from jaxinv.nn.transformer import ReversibleTransformerBlock, layer_norm, multi_head_attention

from helpers import assert_trees_close, nbytes
from jaxinv._src.compat import enable_x64

KEY = jax.random.PRNGKey(0)
FLAT = jax.random.normal(jax.random.PRNGKey(1), (3, 6))        # (batch, features)
SEQ = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 8))      # (batch, seq, 2 * d_model)


def dense(scale=0.5):
    """A user-supplied residual function as an (init_fn, apply_fn) pair."""
    return (lambda key, h: scale * jax.random.normal(key, (h.shape[-1], h.shape[-1]), h.dtype),
            lambda w, h: jnp.tanh(h @ w))


def random_params(layer, x, scale=0.3, seed=0):
    """Random parameters shaped like layer.init's, drawn by numpy (nothing to compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype),
                                  jax.eval_shape(layer.init, KEY, x))


LAYERS = {
    "additive-split2": (AdditiveCoupling(hidden=(8,), split=2), FLAT),
    "additive-user-fg": (AdditiveCoupling(f=dense(), g=dense()), FLAT),
    "affine-sigmoid": (AffineCoupling(hidden=(8,)), FLAT),
    "affine-exp-swap-split4": (AffineCoupling(hidden=(8,), scale="exp", clamp=1.5, swap=True, split=4), FLAT),
    "affine-user-conditioner": (AffineCoupling(conditioner=MLP((8,), out=6, activation=jnp.tanh)), FLAT),
    "transformer": (ReversibleTransformerBlock(d_model=4, n_heads=2, d_ff=8), SEQ),
    "sequential-mixed": (Sequential((AffineCoupling(hidden=(8,)), AdditiveCoupling(hidden=(8,)),
                                     AffineCoupling(hidden=(8,), scale="exp", swap=True))), FLAT),
    "rev_sequential-affine": (rev_sequential(AffineCoupling(hidden=(8,), swap=True), depth=3), FLAT),
}


def setup(name):
    layer, x = LAYERS[name]
    return layer, random_params(layer, x), x


def per_example_slogdet(layer, params, x):
    """log|det J| per example of apply, the Jacobian taken on one example flattened."""
    def one(xi):
        f = lambda v: layer.apply(params, v.reshape((1,) + xi.shape)).reshape(-1)
        return jnp.linalg.slogdet(jax.jacfwd(f)(xi.reshape(-1)))
    return jax.vmap(one)(x)


@functools.lru_cache(maxsize=None)
def results(name):
    """Everything the per-layer tests check, computed in one compiled program per layer
    (compilation, not arithmetic, is what costs here)."""
    layer, params, x = setup(name)
    y_other = x + 0.1
    xs = jnp.stack([x, 2.0 * x])                          # an extra leading axis for vmap

    def run(params, x, y_other, xs):
        y, log_det = layer.forward_and_log_det(params, x)
        x_back, ildj = layer.inverse_and_log_det(params, y)
        ys, lds = jax.vmap(lambda v: layer.forward_and_log_det(params, v))(xs)
        return dict(y=y, log_det=log_det, x_back=x_back, ildj=ildj, apply=layer.apply(params, x),
                    apply_inverse=layer.apply(params, layer.inverse(params, y_other)),
                    ys=ys, lds=lds, xs_back=jax.vmap(lambda v: layer.inverse(params, v))(ys))

    def run64(params, x):
        y, log_det = layer.forward_and_log_det(params, x)
        x_back, ildj = layer.inverse_and_log_det(params, y)
        sign, ref = per_example_slogdet(layer, params, x)
        return dict(x=x, log_det=log_det, x_back=x_back, ildj=ildj, sign=sign, slogdet=ref)

    with enable_x64(True):
        params64, x64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), (params, x))
        f64 = jax.device_get(jax.jit(run64)(params64, x64))
    f32 = jax.device_get(jax.jit(run)(params, x, y_other, xs))
    return types.SimpleNamespace(x=x, y_other=y_other, xs=xs, f32=f32, f64=f64)


@pytest.mark.parametrize("name", LAYERS)
def test_round_trip(name):
    """inverse(apply(x)) == x and apply(inverse(y)) == y; apply is forward_and_log_det's y."""
    res = results(name)
    r = res.f32
    assert_trees_close(r["x_back"], res.x, atol=1e-5)
    assert_trees_close(r["apply_inverse"], res.y_other, atol=1e-5)
    assert_trees_close(r["apply"], r["y"])


@pytest.mark.parametrize("name", LAYERS)
def test_log_det_is_slogdet_of_jacobian(name):
    """forward_and_log_det's log-det equals log|det(jacfwd)| per example (float64), and
    inverse_and_log_det returns the input and -log_det."""
    r = results(name).f64
    assert r["log_det"].dtype == np.float64
    np.testing.assert_array_equal(r["sign"], 1.0)          # orientation preserving
    np.testing.assert_allclose(r["log_det"], r["slogdet"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(r["ildj"], -r["log_det"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(r["x_back"], r["x"], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", LAYERS)
def test_jit_vmap_dtype_shape(name):
    """Shapes and dtypes are kept; the log-det is one value per example; under vmap over an
    extra leading axis each slice is the unbatched result (all under jit)."""
    res = results(name)
    r, x = res.f32, res.x
    y, log_det = r["y"], r["log_det"]
    assert y.shape == x.shape and y.dtype == x.dtype
    assert log_det.shape == x.shape[:1] and log_det.dtype == x.dtype
    assert_trees_close((r["ys"][0], r["lds"][0]), (y, log_det), atol=1e-5)
    assert_trees_close(r["xs_back"], res.xs, atol=1e-5)


def test_float64_dtype_preserved():
    """Params are initialised in the input's dtype; outputs keep it."""
    with enable_x64(True):
        for name in ("additive-split2", "affine-sigmoid", "transformer"):
            layer, x = LAYERS[name]
            x64 = x.astype(jnp.float64)
            params = jax.eval_shape(layer.init, KEY, x64)
            assert {a.dtype for a in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float64)}, name
            y, log_det = jax.eval_shape(layer.forward_and_log_det, params, x64)
            assert y.dtype == log_det.dtype == jnp.float64, name


# ---------------------------------------------------------------- the couplings themselves


def test_affine_coupling_starts_near_identity():
    """The default conditioner's last layer is zero: scale="exp" starts as the identity,
    Glow's sigmoid(raw + 2) as y2 = sigmoid(2) * x2 with y1 = x1."""
    x = FLAT
    exp_layer, glow = AffineCoupling(hidden=(8,), scale="exp"), AffineCoupling(hidden=(8,))
    at_init = lambda layer, x: layer.forward_and_log_det(layer.init(KEY, x), x)
    (y, log_det), glow_out = jax.jit(lambda x: (at_init(exp_layer, x), at_init(glow, x)))(x)
    assert_trees_close((y, log_det), (x, jnp.zeros(3)))
    y, log_det = glow_out
    s = jax.nn.sigmoid(2.0)
    assert_trees_close(y, jnp.concatenate([x[:, :3], s * x[:, 3:]], -1))
    assert_trees_close(log_det, jnp.full(3, 3 * jnp.log(s)))


def test_affine_coupling_transforms_one_half():
    """swap=False keeps the first half (split=2 features) and transforms the second;
    swap=True the reverse."""
    layers = {swap: AffineCoupling(hidden=(8,), swap=swap, split=2) for swap in (False, True)}
    params = {swap: random_params(layer, FLAT) for swap, layer in layers.items()}
    ys = jax.jit(lambda p, x: {s: l.apply(p[s], x) for s, l in layers.items()})(params, FLAT)
    for swap, y in ys.items():
        kept, changed = (slice(2, 6), slice(0, 2)) if swap else (slice(0, 2), slice(2, 6))
        np.testing.assert_array_equal(y[:, kept], FLAT[:, kept])
        assert not np.allclose(y[:, changed], FLAT[:, changed])


def test_soft_clamp_bounds_the_log_scale():
    """FrEIA's exp(clamp * tanh(raw / clamp)): |log scale| <= clamp however large raw is."""
    layer = AffineCoupling(hidden=(8,), scale="exp", clamp=0.5, split=3)
    _, log_det = jax.jit(layer.forward_and_log_det)(random_params(layer, FLAT, scale=50.0), FLAT)
    assert np.all(np.abs(log_det) <= 3 * 0.5 + 1e-6)
    assert np.max(np.abs(log_det)) > 1.0                  # the raw scales are far beyond the clamp


def test_additive_coupling_is_the_revnet_block():
    """y1 = x1 + F(x2), y2 = x2 + G(y1) with the user's F and G, log-det 0."""
    _, f = dense()
    layer = AdditiveCoupling(f=dense(), g=dense())
    params = random_params(layer, FLAT)
    x1, x2 = FLAT[:, :3], FLAT[:, 3:]
    y1 = x1 + f(params["f"], x2)
    y2 = x2 + f(params["g"], y1)
    y, log_det = jax.jit(layer.forward_and_log_det)(params, FLAT)
    assert_trees_close(y, jnp.concatenate([y1, y2], -1))
    np.testing.assert_array_equal(log_det, 0.0)


def test_flax_module_as_residual_function():
    """Any object with init(key, x) / apply(params, x) is a residual function: a flax.linen module."""
    nn = pytest.importorskip("flax.linen")
    layer = AdditiveCoupling(f=nn.Dense(3), g=nn.Dense(3))
    params = jax.jit(layer.init)(KEY, FLAT)
    y = jax.jit(layer.apply)(params, FLAT)
    assert_trees_close(jax.jit(layer.inverse)(params, y), FLAT, atol=1e-5)
    assert jaxinv.explain(lambda x: layer.apply(params, x), FLAT).saved_bytes == 0


def test_hidden_width_may_be_an_int():
    assert MLP(hidden=5).hidden == (5,)
    params = AffineCoupling(hidden=5).init(KEY, FLAT)
    assert [w.shape for w, _ in params["conditioner"]] == [(3, 5), (5, 6)]


def test_bad_configurations_are_reported():
    with pytest.raises(ValueError, match="scale must be one of"):
        AffineCoupling(scale="softplus")
    with pytest.raises(ValueError, match="must output 2 \\* 3 features"):
        layer = AffineCoupling(conditioner=MLP((4,), out=3))
        jax.eval_shape(lambda x: layer.apply(layer.init(KEY, x), x), FLAT)
    with pytest.raises(ValueError, match="cannot split a last axis of size 6 at 6"):
        AdditiveCoupling(split=6).init(KEY, FLAT)
    with pytest.raises(TypeError, match="must have init"):
        AdditiveCoupling(f=lambda p, x: x).init(KEY, FLAT)
    with pytest.raises(ValueError, match="not divisible"):
        ReversibleTransformerBlock(d_model=6, n_heads=4, d_ff=8)
    with pytest.raises(ValueError, match="expects x of shape"):
        block = ReversibleTransformerBlock(d_model=4, n_heads=2, d_ff=8)
        block.init(KEY, FLAT)


# ---------------------------------------------------------------- the transformer block


def test_transformer_block_streams():
    """y1 = x1 + MHSA(LN(x2)), y2 = x2 + MLP(LN(y1)), written out by hand."""
    block, params, x = setup("transformer")
    x1, x2 = x[..., :4], x[..., 4:]
    y1 = x1 + multi_head_attention(params["attn"], layer_norm(params["ln1"], x2), 2)
    (w1, b1), (w2, b2) = params["mlp"]
    y2 = x2 + jax.nn.gelu(layer_norm(params["ln2"], y1) @ w1 + b1) @ w2 + b2
    assert_trees_close(results("transformer").f32["y"], jnp.concatenate([y1, y2], -1), atol=1e-6)


def test_causal_block_ignores_the_future():
    """With causal=True, changing the last position changes no earlier output."""
    block = ReversibleTransformerBlock(d_model=4, n_heads=2, d_ff=8, causal=True)
    params, x = random_params(block, SEQ), SEQ
    apply = jax.jit(block.apply)
    y, y_changed = apply(params, x), apply(params, x.at[:, -1].add(1.0))
    assert_trees_close(y_changed[:, :-1], y[:, :-1], atol=1e-6)
    assert not np.allclose(y_changed[:, -1], y[:, -1])


def test_transformer_block_grad_matches_jax_and_saves_nothing():
    """jaxinv.grad through one block equals jax.grad; the block is rebuilt from its output."""
    block, params, x = setup("transformer")
    loss = lambda p, x: jnp.sum(jnp.sin(block.apply(p, x)))
    assert_trees_close(jax.jit(jaxinv.grad(loss, argnums=(0, 1)))(params, x),
                       jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x), rtol=1e-4, atol=1e-5)
    assert jaxinv.explain(lambda x: block.apply(params, x), x).saved_bytes == 0


# ---------------------------------------------------------------- stacks


def affine_pair():
    """Two affine couplings with linear conditioners, transforming one half then the other."""
    return Sequential((AffineCoupling(hidden=()), AffineCoupling(hidden=(), scale="exp", swap=True)))


def mixed_stack(depth):
    """Affine (sigmoid / exp, alternating halves) and additive couplings, unrolled."""
    kinds = [lambda i: AffineCoupling(hidden=(4,), swap=bool(i % 2)),
             lambda i: AdditiveCoupling(hidden=(4,)),
             lambda i: AffineCoupling(hidden=(4,), scale="exp", swap=bool(i % 2))]
    return Sequential(tuple(kinds[i % 3](i) for i in range(depth)))


STACKS = {
    "Sequential(mixed)": (mixed_stack, FLAT),
    "rev_sequential(affine pair)": (lambda d: rev_sequential(affine_pair(), d), FLAT),
    "rev_sequential(additive, user F/G)": (lambda d: rev_sequential(AdditiveCoupling(f=dense(0.3),
                                                                                     g=dense(0.3)), d), FLAT),
    "Sequential(transformer)": (lambda d: Sequential((ReversibleTransformerBlock(4, 2, 8),) * d), SEQ),
}
# The planner gives up on a scan with more than 6 unknown inputs at the function's border
# (jaxinv._src.plan: cheapest_unlocking_subset's limit): the default MLP's 8 and the transformer's
# 12 parameter leaves make it save the stack's input and use JAX's scan VJP instead.
STACKS_OVER_LIMIT = {
    "rev_sequential(additive)": (lambda d: rev_sequential(AdditiveCoupling(hidden=(8,)), d), FLAT),
    "rev_sequential(transformer)": (lambda d: rev_sequential(ReversibleTransformerBlock(4, 2, 8), d), SEQ),
}
ALL_STACKS = {**STACKS, **STACKS_OVER_LIMIT}


def stack_setup(name, depth):
    make, x = ALL_STACKS[name]
    net = make(depth)
    return net, random_params(net, x, scale=0.1), x


def flow_loss(net):
    """A flow's negative log-likelihood (standard normal base), per batch."""
    def loss(params, x):
        z, log_det = net.forward_and_log_det(params, x)
        return jnp.sum(0.5 * z ** 2) - jnp.sum(log_det)
    return loss


@pytest.mark.parametrize("name", [n for n in STACKS if "transformer" not in n])
def test_stack_grad_matches_jax(name):
    """jaxinv.grad of a flow loss through 8 layers equals jax.grad (params and input).
    (The transformer block's gradient is checked on one block: unrolled blocks compile slowly.)"""
    net, params, x = stack_setup(name, 8)
    loss = flow_loss(net)
    assert_trees_close(jax.jit(jaxinv.grad(loss, argnums=(0, 1)))(params, x),
                       jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x), rtol=1e-4, atol=1e-4, relative_atol=True)


@pytest.mark.parametrize("name", [*STACKS, *STACKS_OVER_LIMIT])  # a scan with > 6 unknown inputs too
def test_stack_saves_nothing_that_grows_with_depth(name):
    """explain: with the params closed over, nothing is saved at depth 4 or 16; passed as
    arguments, exactly the params are (referenced, not copied), never activations."""
    saved = {}
    for depth in (4, 16):
        net, params, x = stack_setup(name, depth)
        closed = jaxinv.explain(lambda x: net.forward_and_log_det(params, x), x)
        as_args = jaxinv.explain(net.forward_and_log_det, params, x)
        saved[depth] = (closed.saved_bytes, as_args.saved_bytes - nbytes(params))
    assert saved == {4: (0, 0), 16: (0, 0)}, saved


def test_sequential_log_det_is_the_sum_and_inverse_runs_backwards():
    net, params, x = stack_setup("Sequential(mixed)", 5)

    def by_hand(params, x):
        h, total = x, 0.0
        for layer, p in zip(net.layers, params):
            h, ld = layer.forward_and_log_det(p, h)
            total = total + ld
        y = h
        for layer, p in zip(reversed(net.layers), reversed(params)):
            h = layer.inverse(p, h)
        return (y, total), h

    def stacked(params, x):
        y, log_det = net.forward_and_log_det(params, x)
        return (y, log_det), net.inverse(params, y)

    assert_trees_close(jax.jit(stacked)(params, x), jax.jit(by_hand)(params, x))
    with pytest.raises(ValueError, match="5 layers got 4"):
        jax.eval_shape(net.apply, params[:4], x)


@dataclasses.dataclass(frozen=True)
class Recenter(Layer):
    """A test layer with a data-dependent init (like ActNorm's): y = x + shift with
    shift = 1 - mean(x) over the batch at init; it also records its init key."""

    def init(self, key, x):
        return {"shift": 1.0 - jnp.mean(x, axis=0), "key": jax.random.key_data(key)}

    def forward_and_log_det(self, params, x):
        return x + params["shift"], jnp.zeros(x.shape[:1], x.dtype)

    def inverse_and_log_det(self, params, y):
        return y - params["shift"], jnp.zeros(y.shape[:1], y.dtype)


def test_rev_sequential_init_runs_the_layers():
    """RevSequential.init scans: layer i is initialised with key i of split(key, depth) on
    layer i-1's output (a data-dependent init sees its real input, not the stack's)."""
    params = jax.jit(rev_sequential(Recenter(), 3).init)(KEY, FLAT)
    np.testing.assert_array_equal(params["key"], jax.random.key_data(jax.random.split(KEY, 3)))
    # layer 0 shifts the batch mean to 1; the next layers find it there and shift by 0
    assert_trees_close(params["shift"], jnp.stack([1.0 - jnp.mean(FLAT, axis=0), jnp.zeros(6), jnp.zeros(6)]),
                       atol=1e-6)


def test_rev_sequential_of_a_layer_without_params():
    """A parameter-free layer (nothing to scan over) still runs ``depth`` times."""
    from jaxinv.nn.elementwise import LeakyReLU
    net = rev_sequential(LeakyReLU(0.5), 3)
    params = net.init(KEY, FLAT)
    y, log_det = net.forward_and_log_det(params, FLAT)
    want = jnp.where(FLAT > 0, FLAT, FLAT * 0.125)
    assert_trees_close(y, want)
    assert_trees_close(log_det, jnp.sum(jnp.where(FLAT > 0, 0.0, 3 * math.log(0.5)), axis=-1), atol=1e-5)
    assert_trees_close(net.inverse(params, y), FLAT, atol=1e-6)


def test_rev_sequential_is_sequential_with_stacked_params():
    """RevSequential = Sequential of the same layer with params[i] = slice i of every leaf."""
    layer = AffineCoupling(hidden=(4,), scale="exp")
    stack, seq = rev_sequential(layer, 3), Sequential((layer,) * 3)
    unstack = lambda params: tuple(jax.tree_util.tree_map(lambda a: a[i], params) for i in range(3))

    def both(params, x):
        y = stack.apply(params, x)
        return ((stack.forward_and_log_det(params, x), seq.forward_and_log_det(unstack(params), x)),
                (stack.inverse_and_log_det(params, y), seq.inverse_and_log_det(unstack(params), y)))

    params = random_params(stack, FLAT)
    assert all(a.shape[0] == 3 for a in jax.tree_util.tree_leaves(params))
    for got, want in jax.jit(both)(params, FLAT):
        assert_trees_close(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="leading axis of size 5"):
        jax.eval_shape(rev_sequential(layer, 5).apply, params, FLAT)


def test_rev_sequential_program_size_flat_in_depth():
    """jaxinv.grad of a scanned stack traces to the same program at depth 4 and 32, so
    compile time does not grow with depth (an unrolled Sequential's grows)."""
    def n_eqns(net):
        params = jax.eval_shape(net.init, KEY, FLAT)
        return len(jax.make_jaxpr(jaxinv.grad(flow_loss(net)))(params, FLAT).eqns)
    assert n_eqns(rev_sequential(affine_pair(), 4)) == n_eqns(rev_sequential(affine_pair(), 32))
    assert n_eqns(Sequential((affine_pair(),) * 4)) < n_eqns(Sequential((affine_pair(),) * 8))


def test_rev_sequential_grad_of_params_alone_is_flat_in_depth():
    """``jaxinv.grad(loss)`` with the default argnums=0 (the params; x a known value):
    the scan is still rebuilt from its output by its fused rule, not differentiated by
    JAX's scan VJP, which stores every layer's carry. XLA's temp memory is exact on CPU."""
    x = jax.random.normal(KEY, (64, 16))

    def compiled_temp(grad, depth):
        net = rev_sequential(AffineCoupling(hidden=(32,)), depth)
        params = random_params(net, x, scale=0.1)
        loss = lambda p, x: jnp.sum(net.apply(p, x) ** 2)
        got = jax.jit(grad(loss))(params, x)
        assert_trees_close(got, jax.jit(jax.grad(loss))(params, x), rtol=1e-4, atol=1e-4, relative_atol=True)
        return jax.jit(grad(loss)).lower(params, x).compile().memory_analysis().temp_size_in_bytes

    ours = {d: compiled_temp(jaxinv.grad, d) for d in (4, 16)}
    plain = {d: compiled_temp(jax.grad, d) for d in (4, 16)}
    assert plain[16] - plain[4] >= 12 * x.nbytes     # JAX keeps one carry per layer
    assert ours[16] == ours[4], ours


def test_rev_sequential_under_jit_grad_of_invertible():
    """jax.jit(jax.grad(...)) over jaxinv.invertible(stack) equals jax.grad, also per example
    under vmap."""
    net, params, x = stack_setup("rev_sequential(affine pair)", 8)
    inv = jaxinv.invertible(net.forward_and_log_det)
    loss = lambda p, x: (lambda z, ld: jnp.sum(0.5 * z ** 2) - jnp.sum(ld))(*inv(p, x))
    got = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    want = jax.jit(jax.grad(flow_loss(net), argnums=(0, 1)))(params, x)
    assert_trees_close(got, want, rtol=1e-4, atol=1e-4, relative_atol=True)
    # the loss sums over examples: per-example gradients (vmap) sum to the batch's
    per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, x[:, None])
    assert_trees_close(jax.tree_util.tree_map(lambda g: g.sum(0), per_example), want[0],
                       rtol=1e-4, atol=1e-4, relative_atol=True)


def test_deep_stack_round_trip_stays_accurate():
    """64 scanned additive couplings at their default init (last layer scaled by 0.1): the
    stack stays well conditioned, its inverse accurate."""
    net = rev_sequential(AdditiveCoupling(hidden=(16,)), 64)
    x_back = jax.jit(lambda x: net.inverse(net.init(KEY, x), net.apply(net.init(KEY, x), x)))(FLAT)
    assert_trees_close(x_back, FLAT, atol=1e-4)
