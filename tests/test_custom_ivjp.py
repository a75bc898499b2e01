"""``jaxinv.custom_ivjp``: functions that carry their own inverse or ivjp rule.

Every gradient is checked against JAX's own (``jax.grad`` / ``jax.vjp`` of the
same, undecorated computation). The rules count their *eager* calls (calls on
concrete arrays, i.e. in the backward pass of an un-jitted ``jaxinv.grad``, not
while jaxinv probes the rule on abstract values) to show they are really used.
"""

import collections
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinv
from helpers import assert_trees_close, nbytes


def is_eager(x):
    return not isinstance(x, jax.core.Tracer)


# ---------------------------------------------------------------- a RevNet block with a hand-written ivjp

CALLS = collections.Counter()     # eager calls of the rules below
PATTERNS = []                     # which of (params, x1, x2) the ivjp was handed as None (eager calls)


@jaxinv.custom_ivjp
def block(params, x1, x2):
    W1, W2 = params
    y1 = x1 + jnp.tanh(x2 @ W1)
    y2 = x2 + jnp.tanh(y1 @ W2)
    return y1, y2


@block.defivjp
def block_ivjp(xs, ys, cts):
    params, x1_given, x2_given = xs
    W1, W2 = params
    y1, y2 = ys
    ct_y1, ct_y2 = cts
    if is_eager(y1):
        CALLS["block"] += 1
        PATTERNS.append((W1 is None or W2 is None, x1_given is None, x2_given is None))
    g = jnp.tanh(y1 @ W2)
    x2 = y2 - g
    f = jnp.tanh(x2 @ W1)
    x1 = y1 - f
    d2 = ct_y2 * (1 - g ** 2)            # through y2 = x2 + tanh(y1 @ W2)
    ct_y1 = ct_y1 + d2 @ W2.T
    d1 = ct_y1 * (1 - f ** 2)            # through y1 = x1 + tanh(x2 @ W1)
    ct_x2 = ct_y2 + d1 @ W1.T
    return (params, x1, x2), ((x2.T @ d1, y1.T @ d2), ct_y1, ct_x2)


def revnet(params, x1, x2):
    for p in params:
        x1, x2 = block(p, x1, x2)
    return x1, x2


def revnet_loss(params, x1, x2):
    y1, y2 = revnet(params, x1, x2)
    return jnp.sum(y1 ** 2) + jnp.sum(jnp.sin(y2))


def make_revnet_inputs(depth=4, width=5, batch=3, seed=0):
    k = jax.random.split(jax.random.key(seed), 2 * depth + 2)
    params = [(0.5 * jax.random.normal(k[2 * i], (width, width)),
               0.5 * jax.random.normal(k[2 * i + 1], (width, width))) for i in range(depth)]
    return params, jax.random.normal(k[-2], (batch, width)), jax.random.normal(k[-1], (batch, width))


PARAMS, X1, X2 = make_revnet_inputs()
ARGNUMS = [0, 1, 2, (0, 1), (1, 2), (0, 1, 2)]


@pytest.mark.parametrize("argnums", ARGNUMS, ids=str)
def test_revnet_grad_matches_jax(argnums):
    """jaxinv.grad through 4 custom_ivjp blocks equals jax.grad, for every argnums
    (the test of the removed jax.invertible)."""
    got = jaxinv.grad(revnet_loss, argnums=argnums)(PARAMS, X1, X2)
    want = jax.grad(revnet_loss, argnums=argnums)(PARAMS, X1, X2)
    assert_trees_close(got, want, relative_atol=True)


@pytest.mark.parametrize("argnums", ARGNUMS, ids=str)
def test_user_ivjp_is_called(argnums):
    """The hand-written ivjp runs in the backward pass, whichever inputs are differentiated
    (with the inputs themselves differentiated, it rebuilds every one of the 4 blocks)."""
    CALLS.clear()
    jaxinv.grad(revnet_loss, argnums=argnums)(PARAMS, X1, X2)
    assert CALLS["block"] >= 1
    if argnums in ((1, 2), (0, 1, 2)):
        assert CALLS["block"] == len(PARAMS)


def test_ivjp_gets_known_params_and_rebuilds_the_activations():
    """jaxinv.vjp of the block chain: each block's ivjp is handed its params and None for
    (x1, x2); the residuals are exactly the params and the outputs."""
    CALLS.clear()
    PATTERNS.clear()
    out, vjp_fn = jaxinv.vjp(revnet, PARAMS, X1, X2)
    ct = (jnp.cos(out[0]), jnp.sin(out[1]))
    got = vjp_fn(ct)
    assert_trees_close(out, revnet(PARAMS, X1, X2))
    assert_trees_close(got, jax.vjp(revnet, PARAMS, X1, X2)[1](ct))
    assert CALLS["block"] == len(PARAMS)
    assert PATTERNS == [(False, True, True)] * len(PARAMS)
    assert nbytes(vjp_fn) == nbytes(PARAMS) + nbytes(out)


def test_ivjp_cotangents_are_the_ones_used():
    """The cotangents the ivjp returns are used as they are (the rule is trusted): a rule
    scaling them by 3 shows in jaxinv.vjp, while JAX, which ignores the rule, gives 2."""
    @jaxinv.custom_ivjp
    def double(x):
        return 2.0 * x

    @double.defivjp
    def double_ivjp(xs, ys, cts):
        return (ys / 2.0,), (3.0 * cts,)

    x = jnp.arange(1.0, 4.0)
    (got,) = jaxinv.vjp(double, x)[1](jnp.ones(3))
    (want,) = jax.vjp(double, x)[1](jnp.ones(3))
    np.testing.assert_allclose(got, 3.0 * jnp.ones(3))
    np.testing.assert_allclose(want, 2.0 * jnp.ones(3))


TRANSFORMED_GRADS = {
    "jit(jaxinv.grad)": lambda: jax.jit(jaxinv.grad(revnet_loss, argnums=(0, 1, 2)))(PARAMS, X1, X2),
    "jax.grad(invertible)": lambda: jax.grad(
        lambda p, a, b: (lambda y: jnp.sum(y[0] ** 2) + jnp.sum(jnp.sin(y[1])))(jaxinv.invertible(revnet)(p, a, b)),
        argnums=(0, 1, 2))(PARAMS, X1, X2),
}


@pytest.mark.parametrize("kind", TRANSFORMED_GRADS)
def test_revnet_grad_under_jit_and_invertible(kind):
    """The user's rule also serves jit(jaxinv.grad) and jax.grad of jaxinv.invertible."""
    assert_trees_close(TRANSFORMED_GRADS[kind](), jax.grad(revnet_loss, argnums=(0, 1, 2))(PARAMS, X1, X2),
                       relative_atol=True)


def test_vmap_of_jaxinv_grad_with_custom_ivjp():
    """vmap(jaxinv.grad) over a batch of inputs (the batched rule) equals vmap(jax.grad)."""
    xs1, xs2 = jnp.stack([X1, 0.5 * X1, -X1]), jnp.stack([X2, -X2, 2.0 * X2])
    got = jax.vmap(jaxinv.grad(revnet_loss, argnums=(0, 1, 2)), in_axes=(None, 0, 0))(PARAMS, xs1, xs2)
    want = jax.vmap(jax.grad(revnet_loss, argnums=(0, 1, 2)), in_axes=(None, 0, 0))(PARAMS, xs1, xs2)
    assert_trees_close(got, want, relative_atol=True)


# ---------------------------------------------------------------- definverse only


@jaxinv.custom_ivjp
def affine(x):
    return 2.0 * x + 1.0


@affine.definverse
def affine_inverse(y):
    CALLS["affine_inverse" if is_eager(y) else "affine_inverse_traced"] += 1
    return (y - 1.0) / 2.0


@jaxinv.custom_ivjp
def shear(x1, x2):
    return x1, x2 + jnp.tanh(x1)


@shear.definverse
def shear_inverse(y1, y2):
    CALLS["shear_inverse" if is_eager(y1) else "shear_inverse_traced"] += 1
    return y1, y2 - jnp.tanh(y1)


Y = jnp.array([3.0, 5.0, -1.0])


@pytest.mark.parametrize("example", [False, True], ids=["lazy", "example_args"])
def test_inverse_uses_definverse(example):
    """jaxinv.inverse(f) (traced lazily or at example args) runs the user's inverse."""
    CALLS.clear()
    f_inv = jaxinv.inverse(affine, jnp.zeros(3)) if example else jaxinv.inverse(affine)
    np.testing.assert_allclose(f_inv(Y), (Y - 1.0) / 2.0)
    assert CALLS["affine_inverse"] + CALLS["affine_inverse_traced"] >= 1


def test_inverse_of_a_two_argument_definverse():
    """A two-argument function's inverse returns the tuple of its arguments."""
    x1, x2 = jnp.array([0.1, -0.2]), jnp.array([1.0, 2.0])
    got = jaxinv.inverse(shear)(*shear(x1, x2))
    assert isinstance(got, tuple) and len(got) == 2
    assert_trees_close(got, (x1, x2))


@pytest.mark.parametrize("f, args", [(affine, (Y,)), (shear, (Y, 2.0 * Y))], ids=["affine", "shear"])
def test_definverse_vjp_matches_jax_and_keeps_only_outputs(f, args):
    """jaxinv.vjp rebuilds the inputs with the user's inverse: cotangents are jax.vjp's, and
    the only residuals are the outputs."""
    CALLS.clear()
    out, vjp_fn = jaxinv.vjp(f, *args)
    ct = jax.tree_util.tree_map(lambda y: jnp.cos(y) + 2.0, out)
    assert_trees_close(vjp_fn(ct), jax.vjp(f, *args)[1](ct))
    assert nbytes(vjp_fn) == nbytes(out)
    assert CALLS[f"{f.__name__}_inverse"] >= 1


def test_definverse_grad_matches_jax_in_a_loss():
    """jaxinv.grad of a loss around a definverse-only function equals jax.grad."""
    loss = lambda x1, x2: jnp.sum(jnp.exp(affine(shear(x1, x2)[1])) * shear(x1, x2)[0])
    args = (Y / 4.0, jnp.array([0.3, -0.1, 0.2]))
    assert_trees_close(jaxinv.grad(loss, argnums=(0, 1))(*args), jax.grad(loss, argnums=(0, 1))(*args))


def test_definverse_and_defivjp_return_the_rule():
    """Used as decorators, definverse/defivjp leave the rule bound to its name and the
    decorated function still a custom_ivjp."""
    assert callable(affine_inverse) and affine_inverse(jnp.float32(5.0)) == 2.0
    assert callable(block_ivjp)
    assert isinstance(affine, jaxinv.custom_ivjp) and isinstance(block, jaxinv.custom_ivjp)

    @jaxinv.custom_ivjp
    def f(x):
        return x + 1.0

    rule = lambda y: y - 1.0
    assert f.definverse(rule) is rule
    ivjp = lambda xs, ys, cts: ((ys - 1.0,), (cts,))
    assert f.defivjp(ivjp) is ivjp


def test_wrongly_shaped_inverse_is_a_rule_error():
    """An inverse returning the wrong structure is a RuleError that reaches the user (from
    jaxinv.inverse and from jaxinv.vjp), not a silent "cannot invert"."""
    @jaxinv.custom_ivjp
    def f(x1, x2):
        return 2.0 * x1, x2 + x1

    f.definverse(lambda y1, y2: y1 / 2.0)  # one value for two arguments
    x = jnp.arange(1.0, 4.0)
    with pytest.raises(jaxinv.RuleError, match="structure"):
        jaxinv.inverse(f)(x, x)
    with pytest.raises(jaxinv.RuleError, match="structure"):
        jaxinv.vjp(f, x, x)[1]((x, x))


def test_wrongly_shaped_ivjp_is_a_rule_error():
    """An ivjp returning cotangents for the wrong number of arguments is a RuleError."""
    @jaxinv.custom_ivjp
    def f(x1, x2):
        return x1, x2 + jnp.sin(x1)

    f.defivjp(lambda xs, ys, cts: ((ys[0], ys[1] - jnp.sin(ys[0])), (cts[0],)))
    x = jnp.arange(1.0, 4.0)
    with pytest.raises(jaxinv.RuleError, match="structured like the arguments"):
        jaxinv.vjp(f, x, x)[1]((x, x))


# ---------------------------------------------------------------- no rule: the body is inverted


@jaxinv.custom_ivjp
def ruleless_couple(x1, x2):
    return x1, x2 + jnp.tanh(x1)


def ruleless_net(x1, x2):
    for _ in range(3):
        x1, x2 = ruleless_couple(x1, x2)
        x1, x2 = x2, x1
    return x1, x2


def test_no_rule_body_is_inverted_automatically():
    """Without a rule the body is inlined and inverted: nothing saved but the outputs, and
    jaxinv.inverse recovers the inputs."""
    x1, x2 = jnp.array([0.5, -1.0, 2.0]), jnp.array([0.1, 0.2, 0.3])
    report = jaxinv.explain(ruleless_net, x1, x2)
    assert report.saved_bytes == 0, report
    out, vjp_fn = jaxinv.vjp(ruleless_net, x1, x2)
    assert nbytes(vjp_fn) == nbytes(out)
    ct = (jnp.ones(3), jnp.arange(3.0))
    assert_trees_close(vjp_fn(ct), jax.vjp(ruleless_net, x1, x2)[1](ct))
    assert_trees_close(jaxinv.inverse(ruleless_net)(*out), (x1, x2), rtol=1e-4, atol=1e-4)


def test_no_rule_with_params_saves_only_params():
    """A rule-less custom_ivjp RevNet block: explain saves exactly the params."""
    @jaxinv.custom_ivjp
    def plain_block(params, x1, x2):
        W1, W2 = params
        y1 = x1 + jnp.tanh(x2 @ W1)
        return y1, x2 + jnp.tanh(y1 @ W2)

    def net(params, x1, x2):
        for p in params:
            x1, x2 = plain_block(p, x1, x2)
        return x1, x2

    assert jaxinv.explain(net, PARAMS, X1, X2).saved_bytes == nbytes(PARAMS)
    loss = lambda *a: jnp.sum(jnp.sin(net(*a)[0]) * net(*a)[1])
    assert_trees_close(jaxinv.grad(loss, argnums=(0, 1, 2))(PARAMS, X1, X2),
                       jax.grad(loss, argnums=(0, 1, 2))(PARAMS, X1, X2))


# ---------------------------------------------------------------- outside jaxinv: the plain function


def plain_block_fn(params, x1, x2):
    W1, W2 = params
    y1 = x1 + jnp.tanh(x2 @ W1)
    return y1, x2 + jnp.tanh(y1 @ W2)


P0 = PARAMS[0]
OUTSIDE = {
    "call": lambda f: f(P0, X1, X2),
    "jit": lambda f: jax.jit(f)(P0, X1, X2),
    "jit.lower.compile": lambda f: jax.jit(f).lower(P0, X1, X2).compile()(P0, X1, X2),
    "vmap": lambda f: jax.vmap(f, in_axes=(None, 0, 0))(P0, X1[:, None, :], X2[:, None, :]),
    "vmap_params": lambda f: jax.vmap(f, in_axes=((0, 0), None, None))(
        (jnp.stack([P0[0], PARAMS[1][0]]), jnp.stack([P0[1], PARAMS[1][1]])), X1, X2),
    "grad": lambda f: jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a)[0]) * f(*a)[1]), argnums=(0, 1, 2))(P0, X1, X2),
    "jvp": lambda f: jax.jvp(f, (P0, X1, X2), (jax.tree_util.tree_map(jnp.ones_like, P0), X2, X1)),
    "hessian": lambda f: jax.hessian(lambda x: jnp.sum(f(P0, x, X2)[1] ** 3))(X1[0]),
}


@pytest.mark.parametrize("transform", OUTSIDE)
def test_outside_jaxinv_it_is_the_plain_function(transform):
    """Outside jaxinv, a custom_ivjp function behaves exactly like its undecorated body under
    jit (it lowers and compiles), vmap, grad, jvp and hessian."""
    assert_trees_close(OUTSIDE[transform](block), OUTSIDE[transform](plain_block_fn))


def test_jit_lowering_contains_no_custom_primitive():
    """jax.jit(f).lower(...) of a custom_ivjp function lowers to plain StableHLO."""
    text = jax.jit(block).lower(P0, X1, X2).as_text()
    assert "custom_ivjp" not in text and "tanh" in text


# ---------------------------------------------------------------- pytrees


@jaxinv.custom_ivjp
def dict_layer(state):
    a, (b, c) = state["a"], state["bc"]
    b = b + jnp.sin(a)
    return {"out": (a * jnp.exp(c), b), "c": c}


@dict_layer.defivjp
def dict_layer_ivjp(xs, ys, cts):
    (state,) = xs
    (ya, yb), c = ys["out"], ys["c"]
    (ct_a, ct_b), ct_c = cts["out"], cts["c"]
    if is_eager(yb):
        CALLS["dict_layer"] += 1
    e = jnp.exp(c)
    a = ya / e
    b = yb - jnp.sin(a)
    new_ct_a = ct_a * e + ct_b * jnp.cos(a)
    new_ct_c = ct_c + ct_a * a * e
    return ({"a": a, "bc": (b, c)},), ({"a": new_ct_a, "bc": (ct_b, new_ct_c)},)


STATE = {"a": jnp.array([0.5, -1.0, 2.0]), "bc": (jnp.array([1.0, 2.0, 3.0]), jnp.array([0.1, -0.2, 0.3]))}


def test_pytree_arguments_and_outputs():
    """A custom_ivjp over a dict-of-tuples argument returning a nested dict: jaxinv.vjp uses
    the rule and matches jax.vjp; jaxinv.inverse rebuilds the dict."""
    CALLS.clear()
    out, vjp_fn = jaxinv.vjp(dict_layer, STATE)
    ct = jax.tree_util.tree_map(lambda y: jnp.cos(y) + 1.0, out)
    assert_trees_close(vjp_fn(ct), jax.vjp(dict_layer, STATE)[1](ct))
    assert CALLS["dict_layer"] == 1
    assert nbytes(vjp_fn) == nbytes(out)
    assert_trees_close(jaxinv.inverse(dict_layer, STATE)(out), STATE)


def test_pytree_grad_in_a_loss():
    """jaxinv.grad of a loss over two stacked dict layers equals jax.grad (dict-shaped gradient)."""
    def loss(state):
        out = dict_layer(state)
        out = dict_layer({"a": out["out"][0], "bc": (out["out"][1], out["c"])})
        return jnp.sum(out["out"][0] * out["out"][1]) + jnp.sum(out["c"] ** 2)

    assert_trees_close(jaxinv.grad(loss)(STATE), jax.grad(loss)(STATE))


# ---------------------------------------------------------------- closures over traced values


RULE_STYLES = ("definverse", "defivjp", "dict-in-closure", "helper-function", "functools.partial",
               "object-attribute")


def make_coupling(W, rule=None):
    """A coupling layer closing over W, with no rule or a rule reaching W in one of RULE_STYLES."""
    @jaxinv.custom_ivjp
    def couple(x1, x2):
        return x1, x2 + jnp.tanh(x1 @ W)

    if rule == "definverse":
        couple.definverse(lambda y1, y2: (y1, y2 - jnp.tanh(y1 @ W)))
    elif rule == "defivjp":
        def ivjp(xs, ys, cts):
            (y1, y2), (c1, c2) = ys, cts
            t = jnp.tanh(y1 @ W)
            return (y1, y2 - t), (c1 + (c2 * (1 - t ** 2)) @ W.T, c2)
        couple.defivjp(ivjp)
    elif rule == "dict-in-closure":
        state = {"W": W}
        couple.definverse(lambda y1, y2: (y1, y2 - jnp.tanh(y1 @ state["W"])))
    elif rule == "helper-function":
        shift = lambda y1: jnp.tanh(y1 @ W)
        couple.definverse(lambda y1, y2: (y1, y2 - shift(y1)))
    elif rule == "functools.partial":
        couple.definverse(functools.partial(lambda W_, y1, y2: (y1, y2 - jnp.tanh(y1 @ W_)), W))
    elif rule == "object-attribute":
        layer = types.SimpleNamespace(W=W)
        couple.definverse(lambda y1, y2: (y1, y2 - jnp.tanh(y1 @ layer.W)))
    return couple


def closure_net(W, x1, x2, rule=None):
    couple = make_coupling(W, rule)
    for _ in range(3):
        x1, x2 = couple(x1, x2)
        x1, x2 = x2, x1
    return x1, x2


W4 = 0.7 * jax.random.normal(jax.random.key(3), (4, 4))
XA, XB = jax.random.normal(jax.random.key(4), (2, 4)), jax.random.normal(jax.random.key(5), (2, 4))


def closure_loss(W, x1, x2, rule=None):
    y1, y2 = closure_net(W, x1, x2, rule)
    return jnp.sum(jnp.sin(y1) * y2)


@pytest.mark.parametrize("argnums", [0, (0, 1, 2)], ids=str)
def test_closure_over_differentiated_value(argnums):
    """A rule-less custom_ivjp closing over W, with W differentiated: jaxinv.grad and
    jax.grad(invertible) give JAX's gradient, W is the only thing saved besides what the
    non-invertible loss head needs."""
    want = jax.grad(closure_loss, argnums=argnums)(W4, XA, XB)
    assert_trees_close(jaxinv.grad(closure_loss, argnums=argnums)(W4, XA, XB), want)
    net = jaxinv.invertible(closure_net)
    inv_loss = lambda W, a, b: jnp.sum(jnp.sin(net(W, a, b)[0]) * net(W, a, b)[1])
    assert_trees_close(jax.grad(inv_loss, argnums=argnums)(W4, XA, XB), want)
    assert jaxinv.explain(closure_net, W4, XA, XB).saved_bytes == W4.nbytes


@pytest.mark.parametrize("rule", ["definverse", "defivjp"])
def test_closure_over_a_concrete_value_with_rule(rule):
    """A rule closing over a concrete (non-traced) W is used, and matches jax.vjp."""
    f = lambda a, b: closure_net(W4, a, b, rule)
    out, vjp_fn = jaxinv.vjp(f, XA, XB)
    ct = (jnp.cos(out[0]), out[1])
    assert_trees_close(vjp_fn(ct), jax.vjp(f, XA, XB)[1](ct))
    assert nbytes(vjp_fn) == nbytes(out) + W4.nbytes  # W is a closure value


@pytest.mark.parametrize("style", RULE_STYLES)
def test_rule_closing_over_differentiated_value_is_a_rule_error(style):
    """As with jax.custom_vjp, a rule must not close over a value being transformed (the
    differentiated W): jaxinv raises RuleError saying to pass it as an argument."""
    f = lambda W, a, b: make_coupling(W, style)(a, b)
    with pytest.raises(jaxinv.RuleError, match="closes over a traced value"):
        out, vjp_fn = jaxinv.vjp(f, W4, XA, XB)
        vjp_fn(out)


def test_rule_taking_the_weight_as_an_argument():
    """The fix the RuleError suggests: W as an argument of the custom_ivjp function; the rule
    is used and the cotangents (W's included) are JAX's."""
    @jaxinv.custom_ivjp
    def couple(W, x1, x2):
        return x1, x2 + jnp.tanh(x1 @ W)

    @couple.defivjp
    def _(xs, ys, cts):
        W, _, _ = xs
        (y1, y2), (c1, c2) = ys, cts
        if is_eager(y1):
            CALLS["couple"] += 1
        t = jnp.tanh(y1 @ W)
        d = c2 * (1 - t ** 2)
        return (W, y1, y2 - t), (y1.T @ d, c1 + d @ W.T, c2)

    def net(W, x1, x2):
        for _ in range(3):
            x1, x2 = couple(W, x1, x2)
            x1, x2 = x2, x1
        return x1, x2

    CALLS.clear()
    out, vjp_fn = jaxinv.vjp(net, W4, XA, XB)
    ct = (jnp.cos(out[0]), out[1])
    assert_trees_close(vjp_fn(ct), jax.vjp(net, W4, XA, XB)[1](ct))
    assert CALLS["couple"] == 3
    assert nbytes(vjp_fn) == W4.nbytes + nbytes(out)


ENCLOSING = {
    "jit": lambda run: jax.jit(run)(W4),
    "vmap": lambda run: jax.vmap(run)(jnp.stack([W4, 0.5 * W4]))[0],
    "grad": lambda run: jax.grad(lambda W: jnp.sum(jnp.sin(run(W)[0])))(W4),
}


@pytest.mark.parametrize("transform", list(ENCLOSING))
@pytest.mark.parametrize("rule", ["definverse", "defivjp"])
def test_rule_closing_over_a_value_of_an_enclosing_transformation(rule, transform):
    """A rule may close over a value traced by an *enclosing* jit / vmap / grad that jaxinv
    does not differentiate (it is alive when the rule runs): results equal JAX's."""
    ct = (jnp.cos(XA), XB)

    def run_with(vjp, rule_):
        def run(W):
            f = lambda a, b: closure_net(W, a, b, rule_)
            return vjp(f, XA, XB)[1](ct)
        return run

    got = ENCLOSING[transform](run_with(jaxinv.vjp, rule))
    assert_trees_close(got, ENCLOSING[transform](run_with(jax.vjp, None)))


def test_keyword_arguments_like_custom_vjp():
    """Like a jax.custom_vjp function, a custom_ivjp function can be called with keywords."""
    out = block(PARAMS[0], X1, x2=X2)
    assert_trees_close(out, block(PARAMS[0], X1, X2))


def test_vmapped_custom_ivjp_uses_its_inverse_per_example():
    """A vmapped custom_ivjp inside jaxinv is inverted with the user's inverse under
    vmap: nothing saved, JAX's cotangents, and jaxinv.inverse recovers the input."""
    @jaxinv.custom_ivjp
    def h(x):
        return jnp.exp(x) * 2.0

    @h.definverse
    def _(y):
        return jnp.log(y / 2.0)

    f = lambda x: jax.vmap(h)(x)
    x = jnp.linspace(-0.5, 0.5, 6).reshape(3, 2)
    assert jaxinv.explain(f, x).saved_bytes == 0
    y, vjp_fn = jaxinv.vjp(f, x)
    assert_trees_close(vjp_fn(jnp.cos(y)), jax.vjp(f, x)[1](jnp.cos(y)))
    assert_trees_close(jaxinv.inverse(f)(y), x)
