"""How reconstruction drift grows with depth, and how anchors and exact mode bound it.

Runs :func:`jaxinv.check_reconstruction` on stacks of additive (RevNet) and
affine coupling blocks, in float32, bfloat16 and mixed precision (a float32
stream and parameters, the residual functions computing in bfloat16), at
several depths, without anchors and with a ``jaxinv.anchor`` every ``k``
blocks, and prints a markdown table:

* **max rel. error**: the worst relative error of a value the backward pass
  rebuilds (the network's input without anchors; with anchors, the worst of
  the values arriving at an anchor or at the input: the drift over one segment);
* **grad angle**: the angle between jaxinv's gradient (all parameters and the
  input) and a float64 reference; **plain AD**: the same for ordinary
  reverse-mode AD in the working dtype (rounding that is there anyway).

With ``--exact``, a second table: exact mode against floating point at
depths 1,000 and 10,000, for additive couplings (``rev_sequential``, the
largest error of the input rebuilt by ``jaxinv.inverse``) and MomentumNets
with ``gamma=0.5`` (the largest error of the stream rebuilt at any step,
from ``check_reconstruction``), the residual functions in bfloat16.

Usage::

    python scripts/drift.py                    # the table in docs/numerics.md (about 3 minutes on 2 CPU cores)
    python scripts/drift.py --depths 8 32 --dtypes float32 mixed --every 10
    python scripts/drift.py --exact            # the exact-mode table (about 15 minutes)
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxinv
from jaxinv.check import check_reconstruction

try:  # jaxinv.anchor, once exported; jaxinv.markers has it either way
    anchor = jaxinv.anchor
except AttributeError:
    from jaxinv.markers import anchor


# ---------------------------------------------------------------- the blocks (written plainly)

# "mixed": the stream and parameters in float32, the residual functions
# computing in bfloat16 (their inputs and weights cast on the way in, their
# outputs cast back): the mixed-precision recipe of docs/numerics.md.
COMPUTE = {"mixed": jnp.bfloat16}


def linear(x, w, b, compute, then=lambda h: h):
    """then(x @ w + b), computed in ``compute`` (None: x's dtype), returned in x's dtype."""
    c = (lambda a: a) if compute is None else (lambda a: a.astype(compute))
    return then(c(x) @ c(w) + c(b)).astype(x.dtype)


def layer(x, w, b, compute):
    return linear(x, w, b, compute, then=jnp.tanh)


def additive(p, x1, x2, compute=None):
    """RevNet: y1 = x1 + F(x2), y2 = x2 + G(y1), with F, G one tanh layer."""
    (w1, b1), (w2, b2) = p["f"], p["g"]
    y1 = x1 + layer(x2, w1, b1, compute)
    y2 = x2 + layer(y1, w2, b2, compute)
    return y1, y2


def affine(p, x1, x2, compute=None, clamp=0.5):
    """Affine coupling (Real NVP with a soft-clamped log-scale, as in FrEIA):
    y1 = x1 * exp(clamp * tanh(h(x2))) + t(x2), then the same for x2 given y1,
    with h, t one layer on tanh(x) (bounded, so activations do not blow up).
    The inverse divides by the scale: a scale below 1 amplifies rounding."""
    def half(q, x, cond):
        w, b, v, c = q
        u = jnp.tanh(cond)
        return x * jnp.exp(clamp * layer(u, w, b, compute)) + linear(u, v, c, compute)
    y1 = half(p["f"], x1, x2)
    y2 = half(p["g"], x2, y1)
    return y1, y2


def init(kind, rng, depth, width, gain):
    """Per-block parameters (a list: one pytree per block), weights
    N(0, gain^2 / width), biases N(0, 0.01). (NumPy's generator: jax.random
    would compile a kernel per shape.)"""
    n = 2 if kind == "additive" else 4                    # arrays per half-block
    w = gain / np.sqrt(width) * rng.standard_normal((depth, 2, n // 2, width + 1, width), np.float32)
    half = lambda i, h: tuple(a for j in range(n // 2) for a in (w[i, h, j, :-1], 0.1 * w[i, h, j, -1] / gain))
    return [{"f": half(i, 0), "g": half(i, 1)} for i in range(depth)]


def network(kind, every: int | None, compute=None):
    block = additive if kind == "additive" else affine

    def net(params, x):
        x1, x2 = x
        for i, p in enumerate(params):
            x1, x2 = block(p, x1, x2, compute)
            if every and (i + 1) % every == 0 and i + 1 < len(params):
                x1, x2 = anchor((x1, x2))   # stored: drift restarts here
        return x1, x2

    return net


def measure(kind, precision, depth, every, *, width, batch, gain, seed=0):
    rng = np.random.default_rng(seed)
    dtype = jnp.float32 if precision in COMPUTE else jnp.dtype(precision)
    cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), t)
    x = cast(tuple(rng.standard_normal((2, batch, width), np.float32)))
    params = cast(init(kind, rng, depth, width, gain))
    return check_reconstruction(network(kind, every, COMPUTE.get(precision)), params, x)


# ---------------------------------------------------------------- exact mode, deep

def exact_coupling_error(depth, bits, width=8, batch=8):
    """The largest error of the input that ``jaxinv.inverse`` rebuilds through
    ``depth`` additive couplings (scanned), their residual functions in bfloat16."""
    from jaxinv.nn import MLP, AdditiveCoupling, rev_sequential, to_grid
    mlp = MLP(hidden=(16,), out=width // 2, activation=jnp.tanh, last_scale=0.02)
    in_bf16 = (mlp.init, lambda p, h: mlp.apply(jax.tree.map(lambda a: a.astype(jnp.bfloat16), p),
                                                 h.astype(jnp.bfloat16)))
    x = jax.random.normal(jax.random.key(0), (batch, width))
    stack = rev_sequential(AdditiveCoupling(f=in_bf16, g=in_bf16, exact_bits=bits), depth)
    params = stack.init(jax.random.key(1), x)
    x0 = x if bits is None else to_grid(x, bits)
    f = lambda x: stack.apply(params, x)
    return float(jnp.max(jnp.abs(jaxinv.inverse(f, x0)(jax.jit(f)(x0)) - x0)))


def exact_momentum_error(depth, bits, width=8, batch=8, gamma=0.5):
    """The largest relative error of the stream ``x`` rebuilt at any step of a
    ``momentum_net`` (unrolled; floating point with its automatic anchors),
    its residual functions in bfloat16; the gradient's angle to float64's, and
    plain AD's in the working dtype (float64 stream, the same bfloat16 compute)."""
    from jax.ad_checkpoint import checkpoint_name
    from jaxinv.nn import momentum_net
    ws = 0.5 * jax.random.normal(jax.random.key(2), (depth, width, width)) / np.sqrt(width)
    residuals = [lambda x, w=w: jnp.tanh(checkpoint_name(x, "stream").astype(jnp.bfloat16) @ w.astype(jnp.bfloat16))
                 for w in ws]
    x = jax.random.normal(jax.random.key(0), (batch, width))
    report = check_reconstruction(momentum_net(residuals, gamma, exact_bits=bits), x)
    errors = [r.rel_error for r in report.rows if r.name.startswith("stream")]
    return max(errors), report.grad_angle_deg, report.baseline_grad_angle_deg


def exact_table(depths):
    print("| network, residual functions in bfloat16, float32 stream | mode | "
          + " | ".join(f"depth {d:,}" for d in depths) + " |")
    print("|---|---|" + "---:|" * len(depths))
    for bits in (None, 12):
        errors = [exact_coupling_error(d, bits) for d in depths]
        print(f"| additive coupling (max abs. error of the input) | {'floating point' if bits is None else 'exact_bits=12'} | "
              + " | ".join(f"{e:.1e}" if e else "0" for e in errors) + " |", flush=True)
    for bits in (None, 12):
        cells = [exact_momentum_error(d, bits) for d in depths]
        mode = "floating point, automatic anchors" if bits is None else "exact_bits=12"
        print(f"| MomentumNet, gamma=0.5 (max rel. error of the stream; grad angle, plain AD's) | {mode} | "
              + " | ".join(f"{e:.1e}; {a:.2g}° ({b:.2g}°)" if e else f"0; {a:.2g}° ({b:.2g}°)" for e, a, b in cells)
              + " |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[8, 32, 100, 300])
    ap.add_argument("--every", type=int, default=10, help="an anchor every k blocks")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "mixed"],
                    help="float32, bfloat16, or mixed (float32 stream and parameters, bfloat16 compute)")
    ap.add_argument("--couplings", nargs="+", default=["additive", "affine"])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gain", type=float, default=0.3, help="weight scale (x 1/sqrt(width))")
    ap.add_argument("--exact", action="store_true", help="the exact-mode table instead, at --exact-depths")
    ap.add_argument("--exact-depths", type=int, nargs="+", default=[1_000, 10_000])
    args = ap.parse_args(argv)
    start = time.perf_counter()
    if args.exact:
        print(f"`python scripts/drift.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"))
        print(f"(JAX {jax.__version__}, {jax.devices()[0].platform})\n")
        exact_table(args.exact_depths)
        print(f"\n({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        return
    print(f"`python scripts/drift.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"))
    print(f"(width {args.width}, batch {args.batch}, weights N(0, {args.gain:g}/width), JAX {jax.__version__}, "
          f"{jax.devices()[0].platform}, eager)\n")
    print("| coupling | dtype | depth | anchors | max rel. error | grad angle | plain AD angle |")
    print("|---|---|---:|---|---:|---:|---:|")
    for kind in args.couplings:
        for dtype in args.dtypes:
            for depth in args.depths:
                for every in (None, args.every):
                    if every and depth <= every:
                        continue
                    r = measure(kind, dtype, depth, every, width=args.width, batch=args.batch, gain=args.gain)
                    print(f"| {kind} | {dtype} | {depth} | {f'every {every}' if every else 'none'} "
                          f"| {r.max_rel_error:.1e} | {r.grad_angle_deg:.2g}° | {r.baseline_grad_angle_deg:.2g}° |",
                          flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
