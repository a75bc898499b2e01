"""How reconstruction drift grows with depth, and how anchors bound it.

Runs :func:`jaxinv.check_reconstruction` on stacks of additive (RevNet) and
affine coupling blocks, in float32 and bfloat16, at several depths, without
anchors and with a ``jaxinv.anchor`` every ``k`` blocks, and prints a markdown
table:

* **max rel. error**: the worst relative error of a value the backward pass
  rebuilds (the network's input without anchors; with anchors, the worst of
  the values arriving at an anchor or at the input: the drift over one segment);
* **grad angle**: the angle between jaxinv's gradient (all parameters and the
  input) and a float64 reference; **plain AD**: the same for ordinary
  reverse-mode AD in the working dtype (rounding that is there anyway).

Usage::

    python scripts/drift.py                    # the table in docs/numerics.md (about 2 minutes on 2 CPU cores)
    python scripts/drift.py --depths 8 32 --dtypes float32 --every 10
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

def additive(p, x1, x2):
    """RevNet: y1 = x1 + F(x2), y2 = x2 + G(y1), with F, G one tanh layer."""
    (w1, b1), (w2, b2) = p["f"], p["g"]
    y1 = x1 + jnp.tanh(x2 @ w1 + b1)
    y2 = x2 + jnp.tanh(y1 @ w2 + b2)
    return y1, y2


def affine(p, x1, x2, clamp=0.5):
    """Affine coupling (Real NVP with a soft-clamped log-scale, as in FrEIA):
    y1 = x1 * exp(clamp * tanh(h(x2))) + t(x2), then the same for x2 given y1,
    with h, t one layer on tanh(x) (bounded, so activations do not blow up).
    The inverse divides by the scale: a scale below 1 amplifies rounding."""
    def half(q, x, cond):
        w, b, v, c = q
        u = jnp.tanh(cond)
        return x * jnp.exp(clamp * jnp.tanh(u @ w + b)) + (u @ v + c)
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


def network(kind, every: int | None):
    block = additive if kind == "additive" else affine

    def net(params, x):
        x1, x2 = x
        for i, p in enumerate(params):
            x1, x2 = block(p, x1, x2)
            if every and (i + 1) % every == 0 and i + 1 < len(params):
                x1, x2 = anchor((x1, x2))   # stored: drift restarts here
        return x1, x2

    return net


def measure(kind, dtype, depth, every, *, width, batch, gain, seed=0):
    rng = np.random.default_rng(seed)
    cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), t)
    x = cast(tuple(rng.standard_normal((2, batch, width), np.float32)))
    params = cast(init(kind, rng, depth, width, gain))
    return check_reconstruction(network(kind, every), params, x)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[8, 32, 100, 300])
    ap.add_argument("--every", type=int, default=10, help="an anchor every k blocks")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--couplings", nargs="+", default=["additive", "affine"])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gain", type=float, default=0.3, help="weight scale (x 1/sqrt(width))")
    args = ap.parse_args(argv)
    start = time.perf_counter()
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
                    r = measure(kind, jnp.dtype(dtype), depth, every, width=args.width, batch=args.batch,
                                gain=args.gain)
                    print(f"| {kind} | {dtype} | {depth} | {f'every {every}' if every else 'none'} "
                          f"| {r.max_rel_error:.1e} | {r.grad_angle_deg:.2g}° | {r.baseline_grad_angle_deg:.2g}° |",
                          flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
