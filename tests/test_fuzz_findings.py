"""What the program fuzzer (``test_fuzz.py``) found, one test each, named after the bug.

Each test is the shrunk program the fuzzer printed, written plainly.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxinv
from helpers import assert_trees_close
from jaxinv._src.compat import enable_x64


def test_inverse_of_a_function_returning_a_one_tuple_takes_its_element():
    # inverse(f, x)(*f(x)) is the natural call; with f returning (y,) it passed y
    # where the 1-tuple was expected and raised a structure mismatch
    f = lambda x: (jnp.exp(x),)
    x = jnp.linspace(-1.0, 1.0, 5)
    assert_trees_close(jaxinv.inverse(f, x)(*f(x)), x, rtol=1e-6, atol=1e-6)
    assert_trees_close(jaxinv.inverse(f, x)(f(x)), x, rtol=1e-6, atol=1e-6)


def test_inverse_frees_the_closure_divisor_instead_of_giving_up_on_a_parameter():
    # (x2, (x1 + x2) / c): the planner's first strategy named x1 (a parameter of
    # the add, next to the known x2), which jaxinv.inverse cannot save, and it
    # stopped there instead of trying the strategy that makes the closure value c known
    c = jnp.asarray(np.random.default_rng(0).uniform(0.8, 1.5, (2, 3)))
    x1, x2 = jnp.full((2, 3), 0.3), jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
    for f in (lambda x1, x2: (x2, (x1 + x2) / c), lambda x1, x2: (jnp.arctan2(x1 + 4 * x2, c), x2)):
        assert_trees_close(jaxinv.inverse(f, x1, x2)(*f(x1, x2)), (x1, x2), rtol=1e-6, atol=1e-6)
        assert jaxinv.explain(f, x1, x2).saved_activation_bytes == 0


def test_a_closed_over_nonsingular_matrix_inside_a_scan_body_inverts():
    # scan(lambda c, _: (W @ c, None)) with W closed over: inside the body W is a
    # scan constant with no value, so "W is nonsingular" could not be proven and
    # jaxinv.inverse refused; its value is now moved into the body with the masks
    W = jnp.asarray(np.eye(4) * 5 + np.random.default_rng(0).uniform(-1, 1, (4, 4)))
    f = lambda x: jax.lax.scan(lambda c, _: (W @ c, None), x, None, length=2)[0]
    x = jnp.linspace(-1.0, 1.0, 4)
    assert_trees_close(jaxinv.inverse(f, x)(f(x)), x, rtol=1e-5, atol=1e-5)
    assert jaxinv.explain(f, x).saved_activation_bytes == 0
    loss = lambda x: jnp.sum(jnp.sin(f(x)))
    assert_trees_close(jaxinv.grad(loss)(x), jax.grad(loss)(x), rtol=1e-5, atol=1e-6)


def test_a_closed_over_nonsingular_matrix_inside_a_cond_branch_inverts():
    # lax.cond(p, lambda c: W @ c, ...) passes the closed-over W as an operand:
    # the same as the scan above, for cond's branches
    W = jnp.asarray(np.eye(4) * 5 + np.random.default_rng(0).uniform(-1, 1, (4, 4)))
    x = jnp.linspace(-1.0, 1.0, 4)
    for pred in (True, False):
        f = lambda x: jax.lax.cond(pred, lambda c: W @ c, lambda c: c * 2.0, x)
        assert_trees_close(jaxinv.inverse(f, x)(f(x)), x, rtol=1e-5, atol=1e-5)
        assert jaxinv.explain(f, x).saved_activation_bytes == 0


def test_inverse_plans_a_cond_branch_in_its_own_mode():
    # jaxinv.inverse assumes a divisor nonzero (a zero is outside f's invertible
    # domain) and inverts sin on its principal branch; a cond branch or a scan
    # body was planned in the gradient's stricter mode, so the same code
    # inverted outside a cond and not inside one
    x = jnp.asarray([[0.9, -1.1, 1.3, 0.7]])
    for f in (lambda x: jax.lax.cond(True, lambda c: jnp.cumprod(c, axis=1), lambda c: c, x),
              lambda x: jax.lax.scan(lambda c, _: (jnp.sin(c), None), x, None, length=2)[0]):
        x0 = 0.5 * x
        assert_trees_close(jaxinv.inverse(f, x0)(f(x0)), x0, rtol=1e-5, atol=1e-6)
    # gradients keep the strict mode: cumprod's divisor is not assumed nonzero there
    f = lambda x: jax.lax.cond(True, lambda c: jnp.cumprod(c, axis=1), lambda c: c, x)
    loss = lambda x: jnp.sum(f(x) ** 2)
    assert_trees_close(jaxinv.grad(loss)(x.at[0, 1].set(0.0)), jax.grad(loss)(x.at[0, 1].set(0.0)), rtol=1e-5, atol=1e-6)


def test_svd_with_close_singular_values_is_saved_not_rebuilt_on_the_gradient_path():
    # the VJP of svd divides by singular-value gaps: rebuilt as U diag(s) V^T with
    # rounding, a matrix whose singular values are close gets a different gap
    # and a different gradient (the fuzzer met the limit: a rank-1 matrix's
    # repeated zeros gave NaN where jax.grad's was finite)
    rng = np.random.default_rng(0)
    u = np.linalg.qr(rng.normal(size=(4, 3)))[0]
    v = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    a = jnp.asarray(u @ np.diag([1.0, 1.0 + 3e-4, 0.5]) @ v.T, jnp.float32)
    cts = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(4, 3), (3,), (3, 3)]]
    loss = lambda a: sum(jnp.sum(c * o) for c, o in zip(cts, jnp.linalg.svd(2.0 * a, full_matrices=False)))
    want = jax.grad(loss)(a)
    assert_trees_close(jaxinv.grad(loss)(a), want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_the_max_of_a_rebuilt_value_keeps_its_cotangent_under_jit_and_in_a_scan():
    # softmax-style h - max(h) beside a coupling, h rebuilt through atan2's
    # inverse (a tan): XLA recomputed h inside each fusion that read it, and its
    # copies differed in the last bit, so JAX's max VJP (a mask of the chosen
    # element, a count of ties) dropped a row's cotangent without a near-tie
    # (13 of 20 seeds wrong under jit, 38 of 40 in a scan body)
    with enable_x64(True):
        for seed in range(4):
            rng = np.random.default_rng(seed)
            e, d = rng.normal(size=(2, 3, 8))
            W, f, xs = rng.normal(size=(8, 8)), rng.normal(size=(3, 8)), rng.normal(size=(2, 3, 8)) * 0.1

            def step(e, f, x, reduce):
                h = e + x
                side = h - reduce(h, axis=1, keepdims=True)
                return jnp.arctan2(h * 0.4 + 0.1, d + 2.0), f + side @ W

            for reduce in (jnp.max, jnp.min):
                flat = lambda e, f: step(e, f, 0.0, reduce)
                looped = lambda e, f: jax.lax.scan(lambda c, x: (step(*c, x, reduce), None), (e, f), xs)[0]
                for program in (flat, looped):
                    outs = program(e, f)
                    cts = (jnp.zeros_like(outs[0]), jnp.asarray(rng.normal(size=outs[1].shape)))
                    want = jax.vjp(program, e, f)[1](cts)
                    got = jax.jit(lambda c: jaxinv.vjp(program, e, f)[1](c))(cts)
                    assert_trees_close(got, want, rtol=1e-9, atol=1e-9)


def test_logaddexp_with_a_dominant_known_operand_is_saved_not_inverted():
    # logaddexp(x, c) rounds to c where x << c: in float32 at x - c = -8.4 the
    # rebuilt x kept 10 of 24 bits and a gradient was 2.6% off. The gradient
    # path now saves x (jaxinv.inverse still inverts); softplus (c = 0) keeps
    # full precision and is still inverted
    c = jnp.asarray([3.888, 1.0, -2.0], jnp.float32)
    x = jnp.asarray([-4.5, 0.3, 1.0], jnp.float32)
    f = lambda x: jnp.logaddexp(x, c) * 2.0
    assert jaxinv.explain(f, x).saved_input_bytes == x.nbytes  # x is kept, not rebuilt
    loss = lambda x: jnp.sum(f(x) ** 2)
    assert_trees_close(jaxinv.grad(loss)(x), jax.grad(loss)(x), rtol=1e-6, atol=1e-6)
    softplus = lambda x: jax.nn.softplus(x) * 2.0
    assert jaxinv.explain(softplus, x).saved_activation_bytes == 0


def test_a_given_argument_read_by_a_cond_branch_is_folded_as_a_jax_array():
    # jaxinv.grad(f, argnums=0) makes x2 a given value; a cond branch reading
    # it got x2's value folded in as a numpy array (to prove it nonzero), and
    # JAX refuses numpy constants in a jaxpr ("non-canonical constant")
    with enable_x64(True):
        rng = np.random.default_rng(0)
        W = jnp.asarray(rng.normal(size=(6, 6)) * 0.2)

        def f(x1, x2):
            a, b = jax.lax.cond(True, lambda a, b: (a, b + (jnp.abs(a).reshape(-1) @ W).reshape(b.shape)),
                                lambda a, b: (a, b), x1, x2)
            return jnp.sum((b * 1.35 + 1.9) / (a * -1.33 + 2.03)) + jnp.sum(b ** 2)

        x1 = jnp.asarray(rng.uniform(-1, 1, (2, 3)))
        for x2 in (jnp.asarray(rng.uniform(-1, 1, (2, 3))), jnp.asarray(rng.uniform(-1, 1, (2, 3)))):
            want = jax.grad(f)(x1, x2)
            assert_trees_close(jaxinv.grad(f)(x1, x2), want, rtol=1e-12, atol=1e-12)
            assert_trees_close(jax.jit(jaxinv.grad(f))(x1, x2), want, rtol=1e-12, atol=1e-12)


def test_a_loop_that_cannot_be_inverted_saves_the_input_of_its_carry_not_the_carry():
    # the loop's body multiplies by a value not provably nonzero, so JAX's VJP
    # differentiates it and its carry must be known; the carry c * (x3 * a + b)
    # joins a closed-over c with the input x3, and the planner saved the carry
    # (an activation) instead of x3 (free) with the carry recomputed
    rng = np.random.default_rng(0)
    c, W = jnp.asarray(rng.uniform(0.8, 1.6, (3, 4))), jnp.asarray(rng.normal(size=(12, 6)) * 0.2)

    def f(x1, x2, x3):
        carry = c * (x3 * -0.46 + 1.2)
        m = x1.reshape((1, 4)) * -0.63 + 0.96
        coupled = x2 + jax.nn.relu(carry).reshape(-1) @ W
        return x1, coupled, jax.lax.fori_loop(0, 3, lambda i, v: (v * 1.5 - 2.5) * m, carry)

    x1, x2, x3 = jnp.asarray([-1.0, -0.5, 0.2, 0.4]), jnp.linspace(-1, 1, 6), jnp.asarray([[0.3, -0.7, 1.1, 0.05]])
    assert jaxinv.explain(f, x1, x2, x3).saved_activation_bytes == 0
    loss = lambda *xs: sum(jnp.sum(y * y) for y in f(*xs))
    assert_trees_close(jaxinv.grad(loss, (0, 1, 2))(x1, x2, x3), jax.grad(loss, (0, 1, 2))(x1, x2, x3),
                       rtol=1e-5, atol=1e-5)


def test_a_moved_closure_value_under_a_window_write_is_recomputed_not_saved():
    # (x1, dynamic_update_slice(C, x3, ...)) with C closed over and moved first
    # (device_put; JAX 0.6's jnp.asarray binds one): the outputs show C outside
    # the window, so C's copy counted as data being rebuilt, and the planner
    # saved it (jaxinv.inverse refused) instead of recomputing it from C, free
    C = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    f = lambda x1, x3: (x1, jax.lax.dynamic_update_slice(jax.device_put(C), x3, (5, -1)))
    x1, x3 = jnp.full((2, 3), 0.3), jnp.linspace(-1.0, 1.0, 4).reshape(2, 2)
    assert_trees_close(jaxinv.inverse(f, x1, x3)(*f(x1, x3)), (x1, x3), rtol=0, atol=0)
    assert jaxinv.explain(f, x1, x3).saved_activation_bytes == 0
    y, vjp_fn = jaxinv.vjp(f, x1, x3)
    _, want_fn = jax.vjp(f, x1, x3)
    cts = (jnp.ones((2, 3)), jnp.arange(12.0).reshape(3, 4))
    assert_trees_close(vjp_fn(cts), want_fn(cts), rtol=1e-6, atol=1e-6)
