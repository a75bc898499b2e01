"""A RevNet classifier on scikit-learn's 8x8 digits, trained with jaxinv.

The body is a stack of RevNet additive couplings on the 64 pixels
(``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``), run with ``lax.scan``
(:func:`jaxinv.nn.rev_sequential`); a linear head gives the logits.
``jaxinv.invertible`` makes ``jax.grad`` rebuild the body's activations from
its output instead of storing one per block, so the memory of the backward
pass does not grow with depth. The script trains with that gradient, reports
the test accuracy, and compares the memory of one gradient with plain
``jax.grad``'s: the residuals ``jax.vjp`` keeps, and XLA's temporary buffers
for the compiled gradient.

Run (needs ``pip install jaxinv[examples]``)::

    python examples/revnet_digits.py            # depth 32, about 20 s on a laptop CPU
    python examples/revnet_digits.py --quick    # a few seconds (what the tests run)
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jaxinv
from jaxinv.nn import AdditiveCoupling, rev_sequential
from training import fit, train_step   # examples/training.py, beside this script


def load_data(seed: int = 0):
    """Standardised 64-pixel vectors and labels, split 80/20 (stratified)."""
    digits = load_digits()
    x = digits.data.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.2, random_state=seed,
                                                        stratify=digits.target)
    mean, std = x_train.mean(0), x_train.std(0) + 1.0   # +1: a few border pixels are always 0
    return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


def make_model(depth: int, hidden: int):
    body = rev_sequential(AdditiveCoupling(hidden=(hidden,)), depth)

    def init(key, x):
        return {"body": body.init(key, x), "head": (jnp.zeros((x.shape[-1], 10)), jnp.zeros(10))}

    def logits(params, x, reversible=True):
        body_fn = jaxinv.invertible(body.apply) if reversible else body.apply
        w, b = params["head"]
        return body_fn(params["body"], x) @ w + b

    return init, logits


def loss_fn(logits, params, x, labels, reversible=True):
    return optax.softmax_cross_entropy_with_integer_labels(logits(params, x, reversible), labels).mean()


def tree_bytes(tree) -> int:
    return sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(tree))


def memory_report(logits, params, x, labels) -> tuple[dict, dict]:
    """Bytes one gradient needs, reversible (jaxinv) vs stored activations
    (jax.grad), and the gradients themselves (from the same compiled functions)."""
    memory, grads = {}, {}
    for name, reversible in (("jaxinv", True), ("jax.grad", False)):
        loss = functools.partial(loss_fn, logits, reversible=reversible)
        _, vjp_fn = jax.vjp(lambda p: loss(p, x, labels), params)
        compiled = jax.jit(jax.grad(loss)).lower(params, x, labels).compile()
        analysis = compiled.memory_analysis()
        memory[name] = {"residual_bytes": tree_bytes(vjp_fn),
                        "temp_bytes": None if analysis is None else analysis.temp_size_in_bytes}
        grads[name] = compiled(params, x, labels)
    return memory, grads


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and few steps (for tests)")
    parser.add_argument("--depth", type=int, default=None, help="coupling blocks (default 32; quick: 4)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden width of F and G (default 128; quick: 32)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 400; quick: 150)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    depth = args.depth or (4 if args.quick else 32)
    hidden = args.hidden or (32 if args.quick else 128)
    steps = args.steps or (150 if args.quick else 400)

    x_train, y_train, x_test, y_test = load_data(args.seed)
    init, logits = make_model(depth, hidden)
    params = jax.jit(init)(jax.random.key(args.seed), jnp.asarray(x_train[:args.batch]))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(optax.cosine_decay_schedule(2e-3, steps)))
    step = jax.jit(train_step(functools.partial(loss_fn, logits), optimizer))   # jaxinv's backward

    @jax.jit
    def accuracy(params, x, labels):
        return jnp.mean(jnp.argmax(logits(params, x), axis=-1) == labels)

    print(f"RevNet on digits: {depth} additive couplings (MLP hidden {hidden}) on 64 pixels, "
          f"{len(x_train)} train / {len(x_test)} test images")
    rng = np.random.default_rng(args.seed)

    def batches():
        for _ in range(steps):
            idx = rng.choice(len(x_train), args.batch, replace=False)
            yield x_train[idx], y_train[idx]

    def log(i, params, losses):
        print(f"  step {i:4d}  loss {np.mean([float(loss) for loss in losses[-20:]]):.4f}")

    params, _, losses, train_time = fit(step, params, optimizer.init(params), batches(), log, max(1, steps // 5))
    test_acc = float(accuracy(params, x_test, y_test))
    print(f"test accuracy: {test_acc:.4f} (chance 0.1); training {train_time:.1f} s after the first step")

    # one gradient, reversible vs plain, at the training batch size
    xb, yb = jnp.asarray(x_train[:args.batch]), jnp.asarray(y_train[:args.batch])
    memory, grads = memory_report(logits, params, xb, yb)
    grad_err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(jax.tree.leaves(grads["jaxinv"]), jax.tree.leaves(grads["jax.grad"])))
    param_bytes = tree_bytes(params)
    print(f"memory of one gradient (batch {args.batch}; parameters {param_bytes / 1024:.1f} KiB):")
    print(f"  {'':10s} {'vjp residuals':>15s} {'XLA temp buffers':>17s}")
    for name, m in memory.items():
        temp = "n/a" if m["temp_bytes"] is None else f"{m['temp_bytes'] / 1024:.1f} KiB"
        print(f"  {name:10s} {m['residual_bytes'] / 1024:11.1f} KiB {temp:>17s}")
    print(f"max |gradient difference| jaxinv vs jax.grad: {grad_err:.2e}")
    return {"test_accuracy": test_acc, "losses": losses, "memory": memory, "grad_error": grad_err,
            "param_bytes": param_bytes, "train_time": train_time}


if __name__ == "__main__":
    main()
