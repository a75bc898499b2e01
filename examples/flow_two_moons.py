"""A RealNVP/Glow-style normalizing flow on scikit-learn's two moons.

The flow maps data ``x`` to a standard normal ``z`` through blocks of ActNorm
(data-dependent init), an invertible dense layer (Glow's LU-parametrised
``W``, 2x2 here) and an affine coupling (RealNVP). It is trained by maximum
likelihood,

    log p(x) = log N(f(x); 0, I) + log|det df/dx|,

with the log-det from ``forward_and_log_det``. ``jaxinv.invertible`` makes
``jax.grad`` of the likelihood rebuild the flow's activations from its output
instead of storing them. Samples come from the inverse, ``x = f^-1(z)``. The
script saves a picture of the data, the learned density and the samples, and
checks that ``jaxinv.inverse_and_ildj`` (the inverse and log-det read off the
flow's jaxpr) agrees with the layers' own.

Run (needs ``pip install jaxinv[examples]``)::

    python examples/flow_two_moons.py                     # writes examples/two_moons.png
    python examples/flow_two_moons.py --quick --out /tmp/moons.png
"""

from __future__ import annotations

import argparse
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import make_moons

import jaxinv
from jaxinv.nn import ActNorm, AffineCoupling, InvertibleDense, Sequential
from training import fit, train_step   # examples/training.py, beside this script

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "two_moons.png")


def make_flow(blocks: int, hidden: int) -> Sequential:
    layers = []
    for i in range(blocks):
        layers += [ActNorm(), InvertibleDense(2, seed=i),
                   AffineCoupling(hidden=(hidden, hidden), scale="exp", clamp=3.0, swap=i % 2 == 1)]
    return Sequential(tuple(layers))


def moons(rng: np.random.Generator, n: int) -> np.ndarray:
    x, _ = make_moons(n, noise=0.05, random_state=int(rng.integers(2**31)))
    return x.astype(np.float32)


def log_prob(flow_fn, params, x):
    """log p(x) per example: the standard normal's log-density at f(x) plus log|det df/dx|."""
    z, log_det = flow_fn(params, x)
    log_normal = -0.5 * jnp.sum(z ** 2, axis=-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
    return log_normal + log_det


def nll(flow_fn, params, x):
    """The loss: mean negative log-likelihood, in nats."""
    return -jnp.mean(log_prob(flow_fn, params, x))


def plot(path, data, samples, density):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid_x, grid_y, p = density
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    axes[0].scatter(data[:, 0], data[:, 1], s=2, alpha=0.5, color="tab:blue")
    axes[0].set_title("data (two moons)")
    axes[1].pcolormesh(grid_x, grid_y, p, shading="gouraud", cmap="viridis")
    axes[1].set_title("learned density p(x)")
    axes[2].scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5, color="tab:orange")
    axes[2].set_title("samples x = f⁻¹(z), z ~ N(0, I)")
    for ax in axes:
        ax.set_xlim(-1.5, 2.5)
        ax.set_ylim(-1.0, 1.5)
        ax.set_xticks([-1, 0, 1, 2])
        ax.set_aspect("equal")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny flow and few steps (for tests)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where to save the PNG (default: %(default)s)")
    parser.add_argument("--blocks", type=int, default=None, help="ActNorm+dense+coupling blocks (default 8; quick: 2)")
    parser.add_argument("--hidden", type=int, default=None, help="conditioner width (default 64; quick: 16)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 1500; quick: 150)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    blocks = args.blocks or (2 if args.quick else 8)
    hidden = args.hidden or (16 if args.quick else 64)
    steps = args.steps or (150 if args.quick else 1500)

    rng = np.random.default_rng(args.seed)
    flow = make_flow(blocks, hidden)
    # ActNorm reads this batch once, here, to start with zero mean and unit variance.
    params = jax.jit(flow.init)(jax.random.key(args.seed), jnp.asarray(moons(rng, 1024)))
    forward = jaxinv.invertible(flow.forward_and_log_det)     # jax.grad of it is reversible
    optimizer = optax.adam(optax.cosine_decay_schedule(3e-3, steps, alpha=0.1))
    step = jax.jit(train_step(functools.partial(nll, forward), optimizer))

    # held-out NLL and the density on a 64 x 64 grid: one compiled function, 4096 points each
    x_eval = jnp.asarray(moons(rng, 4096))
    evaluate = jax.jit(functools.partial(log_prob, flow.forward_and_log_det))
    held_out_nll = lambda params: -float(np.mean(np.asarray(evaluate(params, x_eval))))
    nll_start = held_out_nll(params)
    print(f"flow: {blocks} x (ActNorm, InvertibleDense(2), AffineCoupling(hidden {hidden})), {steps} steps")
    print(f"  step    0  held-out NLL {nll_start:.4f} nats")
    batches = ((moons(rng, args.batch),) for _ in range(steps))
    log = lambda i, params, losses: print(f"  step {i:4d}  held-out NLL {held_out_nll(params):.4f} nats")
    params, _, _, train_time = fit(step, params, optimizer.init(params), batches, log, max(1, steps // 5))
    nll_end = held_out_nll(params)

    # samples through the inverse (with the layers' own inverse log-det)
    z = jax.random.normal(jax.random.key(args.seed + 1), (2000, 2))
    samples, ildj_layers = map(np.asarray, jax.jit(flow.inverse_and_log_det)(params, z))
    gx, gy = np.meshgrid(np.linspace(-1.5, 2.5, 64), np.linspace(-1.0, 1.5, 64))
    grid = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=-1), jnp.float32)
    density = np.exp(np.asarray(evaluate(params, grid))).reshape(gx.shape)
    plot(args.out, np.asarray(x_eval[:2000]), samples, (gx, gy, density))

    # jaxinv can also invert the trained flow from its jaxpr alone, with its log-det
    # (Oryx's inverse_and_ildj): it must agree with the layers' own inverse and log-det.
    x_back, ildj = jax.jit(lambda p, z: jaxinv.inverse_and_ildj(functools.partial(flow.apply, p))(z))(params, z)
    ildj_error = abs(float(ildj) - float(np.sum(ildj_layers))) / abs(float(np.sum(ildj_layers)))
    print(f"jaxinv.inverse_and_ildj of the trained flow: max |x - layers' inverse| "
          f"{float(np.max(np.abs(np.asarray(x_back) - samples))):.1e}, "
          f"ildj vs the layers' relative error {ildj_error:.1e}")
    print(f"final held-out NLL {nll_end:.4f} nats (start {nll_start:.4f}); "
          f"training {train_time:.1f} s after the first step")
    print(f"saved {args.out}")
    return {"nll_start": nll_start, "nll_end": nll_end, "out": args.out, "samples": samples,
            "train_time": train_time, "ildj_error": ildj_error}


if __name__ == "__main__":
    main()
