"""A data-parallel reversible-transformer language model, trained with jaxinv.

A character-level model of Python source: the text is the Python standard
library's own ``.py`` files (sorted by name, concatenated, capped), so nothing
is downloaded. Characters are embedded (plus a learned position embedding),
duplicated into the two streams of a stack of
:class:`jaxinv.nn.ReversibleTransformerBlock` (causal attention, run with
``lax.scan`` by :func:`jaxinv.nn.rev_sequential`), the streams are averaged, and
a layer norm and a linear head give next-character logits.

``jaxinv.invertible`` makes ``jax.grad`` rebuild the body's activations from its
output in the backward pass instead of storing them block by block, so the
memory of a training step hardly grows with depth. The script shows what that
buys at a fixed memory budget: the budget is plain ``jax.grad``'s per-device
peak (XLA's memory analysis of the compiled, data-parallel train step) at the
base depth, and it looks for the deepest model each gradient can train within
it. It then trains the deepest jaxinv model and the base-depth ``jax.grad``
model, printing the loss and tokens/s, and checks that both gradients agree.

The batch is sharded over all devices (``jax.devices()``), the parameters and
optimizer state are replicated. On a CPU-only machine the script asks XLA for 4
host devices; on GPUs/TPUs it runs unchanged on the accelerators.

Run (needs ``pip install jaxinv[examples]``)::

    python examples/char_transformer_lm.py            # depths 4..64, a few minutes on a laptop CPU
    python examples/char_transformer_lm.py --quick    # tiny model, few steps (what the tests run)
"""

from __future__ import annotations

import os
import sys

# 4 host devices on a CPU-only machine (the flag only affects the host platform); must be set before JAX starts.
if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()

import argparse  # noqa: E402
import functools  # noqa: E402
import math  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxinv  # noqa: E402
from jaxinv.nn import ReversibleTransformerBlock, rev_sequential  # noqa: E402
from jaxinv.nn.transformer import layer_norm  # noqa: E402
from training import fit, train_step  # noqa: E402  (examples/training.py, beside this script)

CONFIGS = {  # global batch; depths[0] is the base depth that sets the memory budget
    "quick": dict(d_model=32, n_heads=4, d_ff=128, seq=32, batch=64, steps=15, lr=3e-3,
                  depths=(2, 4, 8), max_chars=300_000),
    "full": dict(d_model=64, n_heads=4, d_ff=256, seq=128, batch=32, steps=60, lr=2e-3,
                 depths=(4, 8, 16, 32, 64), max_chars=2_000_000),
}
METHODS = ("jax.grad", "jaxinv")
MiB = 2 ** 20


def load_text(max_chars: int) -> str:
    """The standard library's top-level ``.py`` files, sorted by name and
    concatenated, cut at ``max_chars`` characters (deterministic for a given Python).

    Example::

        text = load_text(10_000)      # starts with __future__.py
    """
    libdir = os.path.dirname(os.__file__)
    parts, size = [], 0
    for name in sorted(os.listdir(libdir)):
        if name.endswith(".py") and size < max_chars:
            with open(os.path.join(libdir, name), encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
            size += len(parts[-1])
    if not parts:
        raise SystemExit(f"no .py sources in {libdir}")
    return "".join(parts)[:max_chars]


def encode(text: str) -> tuple[np.ndarray, list[str]]:
    """Character ids (int32) and the vocabulary: the text's distinct characters, sorted."""
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    return np.array([index[c] for c in text], np.int32), vocab


def make_model(vocab_size: int, d_model: int, n_heads: int, d_ff: int, depth: int, seq: int):
    """``init(key) -> params`` and ``loss(params, tokens, reversible)``: the mean
    next-character cross-entropy on ``tokens`` of shape ``(batch, seq + 1)``.
    ``reversible=True`` wraps the body in ``jaxinv.invertible``.

    Example::

        init, loss = make_model(vocab_size=100, d_model=32, n_heads=4, d_ff=128, depth=8, seq=32)
        params = init(jax.random.key(0))
        g = jax.grad(loss)(params, tokens)          # tokens: int32 (batch, 33)
    """
    block = ReversibleTransformerBlock(d_model, n_heads, d_ff, causal=True, out_scale=1 / math.sqrt(depth))
    body = rev_sequential(block, depth)

    def init(key):
        k_embed, k_pos, k_body, k_head = jax.random.split(key, 4)
        return {"embed": jax.random.normal(k_embed, (vocab_size, d_model)),
                "pos": 0.1 * jax.random.normal(k_pos, (seq, d_model)),
                "body": body.init(k_body, jnp.zeros((1, seq, 2 * d_model))),
                "ln": (jnp.ones(d_model), jnp.zeros(d_model)),
                "head": (jax.random.normal(k_head, (d_model, vocab_size)) / math.sqrt(d_model),
                         jnp.zeros(vocab_size))}

    def loss(params, tokens, reversible=True):
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        h = params["embed"][inputs] + params["pos"]
        body_fn = jaxinv.invertible(body.apply) if reversible else body.apply
        y1, y2 = jnp.split(body_fn(params["body"], jnp.concatenate([h, h], -1)), 2, axis=-1)
        w, b = params["head"]
        logits = layer_norm(params["ln"], (y1 + y2) / 2) @ w + b
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    return init, loss


def compile_step(loss, optimizer, params, opt_state, tokens, mesh, reversible: bool):
    """The jitted data-parallel train step (parameters and optimizer state
    replicated and donated, batch sharded over ``"batch"``), compiled for the
    shapes of its arguments (arrays or ``jax.ShapeDtypeStruct``\\ s)."""
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
    step = train_step(functools.partial(loss, reversible=reversible), optimizer)
    jitted = jax.jit(step, in_shardings=(replicated, replicated, data), out_shardings=replicated,
                     donate_argnums=(0, 1))
    return jitted.lower(params, opt_state, tokens).compile()


def memory_row(compiled, depth: int, method: str) -> dict:
    """Per-device bytes of a compiled step from XLA's memory analysis: peak =
    arguments + outputs + temporaries - donated (aliased) buffers."""
    m = compiled.memory_analysis()
    peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return {"depth": depth, "method": method, "peak_bytes": int(peak), "temp_bytes": int(m.temp_size_in_bytes)}


def relative_grad_error(loss, params, tokens) -> float:
    """``|g_jaxinv - g_jax.grad| / |g_jax.grad|`` (global norms) of ``loss``'s
    gradient with respect to ``params``, on one batch (one compiled function)."""
    def error(params, tokens):
        g_rev, g_plain = (jax.grad(functools.partial(loss, reversible=r))(params, tokens) for r in (True, False))
        norm = lambda tree: jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(tree)))
        return norm(jax.tree.map(jnp.subtract, g_rev, g_plain)) / norm(g_plain)
    return float(jax.jit(error)(params, tokens))


def sample_batch(rng: np.random.Generator, ids: np.ndarray, batch: int, seq: int) -> np.ndarray:
    """``batch`` random windows of ``seq + 1`` consecutive characters."""
    starts = rng.integers(0, len(ids) - seq - 1, batch)
    return ids[starts[:, None] + np.arange(seq + 1)]


def train(compiled, init, optimizer, ids, mesh, cfg, seed: int, label: str):
    """Train from a fresh init for ``cfg["steps"]`` steps; returns the final
    params, the losses and tokens/s (timed after the first step)."""
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
    params = jax.device_put(jax.jit(init)(jax.random.key(seed)), replicated)
    opt_state = jax.device_put(optimizer.init(params), replicated)
    rng = np.random.default_rng(seed)          # the same batches for every method
    batches = ((jax.device_put(sample_batch(rng, ids, cfg["batch"], cfg["seq"]), data),)
               for _ in range(cfg["steps"]))
    log = lambda i, params, losses: print(f"  {label}  step {i:4d}  loss {float(losses[-1]):.4f}")
    params, _, losses, elapsed = fit(compiled, params, opt_state, batches, log, max(1, cfg["steps"] // 5))
    tokens_per_s = cfg["batch"] * cfg["seq"] * (cfg["steps"] - 1) / elapsed
    print(f"  {label}  {tokens_per_s:,.0f} tokens/s")
    stats = jax.devices()[0].memory_stats()    # None on CPU
    if isinstance(stats, dict) and "peak_bytes_in_use" in stats:
        print(f"  {label}  device 0 peak_bytes_in_use so far: {stats['peak_bytes_in_use'] / MiB:.1f} MiB")
    return params, losses, tokens_per_s


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and few steps (for tests)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 60; quick: 15)")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default 32; quick: 64)")
    parser.add_argument("--depths", type=int, nargs="+", default=None,
                        help="depths to try, the first sets the budget (default 4 8 16 32 64; quick: 2 4 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = dict(CONFIGS["quick" if args.quick else "full"])
    cfg.update({k: v for k, v in (("steps", args.steps), ("batch", args.batch), ("depths", args.depths)) if v})
    n = jax.device_count()
    cfg["batch"] = -(-cfg["batch"] // n) * n   # a multiple of the device count
    mesh = jax.make_mesh((n,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))

    ids, vocab = encode(load_text(cfg["max_chars"]))
    print(f"{len(ids):,} characters of Python standard-library source, vocabulary {len(vocab)}")
    print(f"{n} {jax.devices()[0].platform} devices; global batch {cfg['batch']} x {cfg['seq']} characters, "
          f"d_model {cfg['d_model']}, {cfg['n_heads']} heads, d_ff {cfg['d_ff']}")
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(cfg["lr"]))
    dims = (len(vocab), cfg["d_model"], cfg["n_heads"], cfg["d_ff"])
    tokens_shape = jax.ShapeDtypeStruct((cfg["batch"], cfg["seq"] + 1), jnp.int32)

    # Memory of the compiled step (shapes only, nothing runs). Memory grows with depth, so jax.grad is
    # deepened from the base depth until it no longer fits, jaxinv shallowed from the deepest until it fits.
    compiled, rows, deepest, budget = {}, [], {}, None
    for method, depths in (("jax.grad", cfg["depths"]), ("jaxinv", cfg["depths"][::-1])):
        for depth in depths:
            init, loss = make_model(*dims, depth, cfg["seq"])
            params = jax.eval_shape(init, jax.random.key(0))
            compiled[method, depth] = compile_step(loss, optimizer, params, jax.eval_shape(optimizer.init, params),
                                                   tokens_shape, mesh, reversible=method == "jaxinv")
            row = memory_row(compiled[method, depth], depth, method)
            budget = budget or row["peak_bytes"]          # jax.grad at the base depth
            row["fits"] = row["peak_bytes"] <= budget
            rows.append(row)
            if row["fits"]:
                deepest[method] = max(depth, deepest.get(method, 0))
            if row["fits"] == (method == "jaxinv"):
                break
    print(f"\nper-device memory of one train step (budget: jax.grad at depth {cfg['depths'][0]}, "
          f"{budget / MiB:.2f} MiB)")
    print(f"  {'depth':>5s}  {'method':8s}  {'peak MiB':>9s}  {'temp MiB':>9s}  fits")
    for r in rows:
        print(f"  {r['depth']:5d}  {r['method']:8s}  {r['peak_bytes'] / MiB:9.2f}  {r['temp_bytes'] / MiB:9.2f}  "
              f"{'yes' if r['fits'] else 'no'}")
    print(f"deepest model within the budget: jax.grad {deepest['jax.grad']}, jaxinv {deepest['jaxinv']} "
          f"({deepest['jaxinv'] / deepest['jax.grad']:g}x deeper)\n")

    results = {}
    for method in METHODS:
        depth = deepest[method]
        init, loss = make_model(*dims, depth, cfg["seq"])
        results[method] = train(compiled[method, depth], init, optimizer, ids, mesh, cfg, args.seed,
                                f"{method:8s} depth {depth:3d}")

    # The reversible gradient equals jax.grad's (same model, trained params, one batch).
    depth = deepest["jaxinv"]
    _, loss = make_model(*dims, depth, cfg["seq"])
    tokens = sample_batch(np.random.default_rng(args.seed + 1), ids, cfg["batch"], cfg["seq"])
    tokens = jax.device_put(tokens, NamedSharding(mesh, P("batch")))
    grad_error = relative_grad_error(loss, results["jaxinv"][0], tokens)
    print(f"\njaxinv vs jax.grad gradient at depth {depth}: relative error {grad_error:.2e}")

    losses = results["jaxinv"][1]
    return {"budget_bytes": budget, "deepest": deepest, "memory": rows, "devices": n,
            "loss_start": losses[0], "loss_end": float(np.mean(losses[-3:])), "losses": losses,
            "tokens_per_s": {m: results[m][2] for m in METHODS}, "grad_error": grad_error, "config": cfg}


if __name__ == "__main__":
    main()
