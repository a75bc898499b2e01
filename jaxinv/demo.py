"""Memory flat in depth: a RevNet trained with ``jax.grad`` and with jaxinv.

Run ``python -m jaxinv.demo`` (``--quick`` for a seconds-long run,
``--depths 4 8 16`` to choose the depths). For each depth it builds a RevNet
of additive coupling blocks, written plainly (no custom rules):
```python
y1 = x1 + F(x2)        F(x) = tanh(x @ Wf + bf)
y2 = x2 + G(y1)        G(x) = tanh(x @ Wg + bg)
```

and compares, for the gradient of a loss on its output:

* the bytes ``jax.vjp`` keeps for the backward pass (the leaves of ``vjp_fn``)
  against ``jaxinv.vjp`` and ``jax.vjp`` of ``jaxinv.invertible(net)``;
* XLA's temporary memory for ``jax.jit(jax.grad(loss))`` with plain JAX, with
  ``jaxinv.invertible(net)`` and with ``jax.checkpoint`` around every block;
* their wall time, and how far their gradients are from ``jax.grad``'s.

jaxinv rebuilds every block's inputs from its outputs during the backward pass,
so it keeps only the outputs (and the parameters), whatever the depth.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jaxinv

DEFAULT_DEPTHS = (4, 8, 16, 32, 64)
QUICK_DEPTHS = (2, 4, 8)


# ---- the network


def mlp(p, x):
    """A one-layer MLP ``tanh(x @ W + b)``."""
    return jnp.tanh(x @ p["W"] + p["b"])


def block(p, x1, x2):
    """One additive coupling block: invertible whatever F and G are."""
    y1 = x1 + mlp(p["F"], x2)
    y2 = x2 + mlp(p["G"], y1)
    return y1, y2


def revnet(depth: int, width: int, key) -> list:
    """Parameters of a RevNet of ``depth`` coupling blocks on halves of ``width`` features."""
    def layer(k):
        kw, kb = jax.random.split(k)
        return {"W": jax.random.normal(kw, (width, width)) / np.sqrt(width),
                "b": 0.1 * jax.random.normal(kb, (width,))}

    keys = jax.random.split(key, 2 * depth).reshape(depth, 2, -1)
    return [{"F": layer(kf), "G": layer(kg)} for kf, kg in keys]


def net(params, x1, x2, block_fn: Callable = block):
    for p in params:
        x1, x2 = block_fn(p, x1, x2)
    return x1, x2


def checkpointed_net(params, x1, x2):
    """The same network, with ``jax.checkpoint`` around every block."""
    return net(params, x1, x2, block_fn=jax.checkpoint(block))


invertible_net = jaxinv.invertible(net)


def make_loss(network: Callable) -> Callable:
    def loss(params, x1, x2):
        y1, y2 = network(params, x1, x2)
        return 0.5 * (jnp.mean(y1 ** 2) + jnp.mean(y2 ** 2))
    return loss


LOSSES = {
    "jax.grad": make_loss(net),
    "invertible": make_loss(invertible_net),
    "checkpoint": make_loss(checkpointed_net),
}


def make_inputs(depth: int, width: int, batch: int, seed: int = 0):
    kp, k1, k2 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = revnet(depth, width, kp)
    return params, jax.random.normal(k1, (batch, width)), jax.random.normal(k2, (batch, width))


# ---- measurements


def nbytes(tree) -> int:
    return sum(int(np.prod(jnp.shape(l))) * jnp.result_type(l).itemsize for l in jax.tree_util.tree_leaves(tree))


def residual_bytes(vjp, network: Callable, params, x1, x2) -> int:
    """Bytes ``vjp(network, ...)`` keeps for its backward pass, minus the parameters'."""
    _, vjp_fn = vjp(network, params, x1, x2)
    return nbytes(vjp_fn) - nbytes(params)


RESIDUALS = {
    "jax.vjp": lambda p, x1, x2: residual_bytes(jax.vjp, net, p, x1, x2),
    "jaxinv.vjp": lambda p, x1, x2: residual_bytes(jaxinv.vjp, net, p, x1, x2),
    "jax.vjp(invertible)": lambda p, x1, x2: residual_bytes(jax.vjp, invertible_net, p, x1, x2),
}


def temp_bytes(compiled) -> int:
    """XLA's temporary buffers (everything but arguments and outputs)."""
    return int(compiled.memory_analysis().temp_size_in_bytes)


def compile_grad(loss: Callable, params, x1, x2):
    return jax.jit(jax.grad(loss)).lower(params, x1, x2).compile()


def max_abs_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def median_times(fns: dict[str, Callable], args, repeats: int) -> dict[str, float]:
    """Median wall time in ms of each (already warmed-up) function, runs alternated."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {name: statistics.median(ts) for name, ts in times.items()}


@dataclasses.dataclass
class Row:
    depth: int
    param_bytes: int
    residual: dict[str, int]     # activation bytes kept by each vjp
    temp: dict[str, int]         # compiled temp bytes of jit(grad)
    ms: dict[str, float]         # median wall time of jit(grad)
    grad_diff: dict[str, float]  # max |grad - jax.grad's|


def measure(depth: int, width: int, batch: int, repeats: int = 5) -> Row:
    params, x1, x2 = make_inputs(depth, width, batch)
    args = (params, x1, x2)
    residual = {name: fn(*args) for name, fn in RESIDUALS.items()}
    compiled = {name: compile_grad(loss, *args) for name, loss in LOSSES.items()}
    grads = {name: c(*args) for name, c in compiled.items()}  # also warms up
    grads["jaxinv.grad"] = jaxinv.grad(LOSSES["jax.grad"])(*args)
    ref = grads["jax.grad"]
    return Row(
        depth=depth,
        param_bytes=nbytes(params),
        residual=residual,
        temp={name: temp_bytes(c) for name, c in compiled.items()},
        ms=median_times(compiled, args, repeats),
        grad_diff={name: max_abs_diff(g, ref) for name, g in grads.items() if name != "jax.grad"},
    )


# ---- the table


def kib(n: int) -> str:
    return f"{n / 1024:,.0f}"


def format_table(rows: Sequence[Row], width: int, batch: int) -> str:
    header = ["depth", "params KiB",
              "act. residuals¹ KiB: jax.vjp", "jaxinv.vjp", "jax.vjp(invertible)",
              "temp KiB: jax.grad", "invertible", "checkpoint",
              "ms: jax.grad", "invertible", "checkpoint",
              "max abs Δgrad: invertible", "jaxinv.grad", "checkpoint"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for r in rows:
        cells = [str(r.depth), kib(r.param_bytes),
                 *(kib(r.residual[k]) for k in RESIDUALS),
                 *(kib(r.temp[k]) for k in LOSSES),
                 *(f"{r.ms[k]:.2f}" for k in LOSSES),
                 *(f"{r.grad_diff[k]:.1e}" for k in ("invertible", "jaxinv.grad", "checkpoint"))]
        lines.append("| " + " | ".join(cells) + " |")
    out_kib = 2 * batch * width * 4 / 1024
    lines += [
        "",
        f"RevNet of additive coupling blocks, batch {batch}, two halves of {width} float32 features, "
        f"loss = mean squares of the output; {jax.device_count()} {jax.default_backend()} device(s).",
        "¹ Activation residuals = bytes of the leaves of the `vjp_fn` returned by the vjp, minus the parameters' "
        f"bytes, which every method keeps. jaxinv keeps only the network's output ({out_kib:,.0f} KiB), "
        "whatever the depth; `jax.vjp` keeps activations of every block.",
        "temp = `jax.jit(jax.grad(loss)).lower(...).compile().memory_analysis().temp_size_in_bytes` "
        "(XLA's buffers besides arguments and outputs). "
        "invertible = `jax.grad` over `jaxinv.invertible(net)`; checkpoint = `jax.checkpoint` around every block "
        "(which need not lower XLA's temp memory: XLA schedules the recomputation).",
        "ms = median wall time of the compiled gradient, runs alternated between the methods. "
        "Δgrad = largest absolute difference from `jax.grad`'s gradient (float32); jaxinv.grad is run eagerly. "
        "Rebuilding inputs from outputs rounds at every block, so the difference grows with depth.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(prog="python -m jaxinv.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=None,
                        help=f"numbers of coupling blocks (default {' '.join(map(str, DEFAULT_DEPTHS))})")
    parser.add_argument("--width", type=int, default=None, help="features per half (default 64; 16 with --quick)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 256; 32 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per method (default 7; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small sizes and depths: runs in seconds")
    args = parser.parse_args(argv)
    depths = args.depths or (QUICK_DEPTHS if args.quick else DEFAULT_DEPTHS)
    width = args.width or (16 if args.quick else 64)
    batch = args.batch or (32 if args.quick else 256)
    repeats = args.repeats or (3 if args.quick else 7)

    rows = []
    for depth in depths:
        rows.append(measure(depth, width, batch, repeats))
        print(f"depth {depth} measured", file=sys.stderr, flush=True)
    print(format_table(rows, width, batch))
    return rows


if __name__ == "__main__":
    main()
