"""The training run of tests/test_multiprocess.py, shared by its two worker
processes and the single-process reference."""

import jax
import numpy as np

from helpers import revnet, revnet_loss, revnet_params

STEPS, BATCH, WIDTH, DEPTH, LR = 3, 16, 8, 4, 0.05
loss = revnet_loss(revnet)


def init():
    return revnet_params(jax.random.PRNGKey(0), DEPTH, WIDTH)


def batch(i):
    """Step ``i``'s global batch (numpy: each process slices its own rows)."""
    rng = np.random.default_rng(i)
    return tuple(rng.normal(size=(BATCH, WIDTH)).astype(np.float32) for _ in range(2))


def sgd_step(grad):
    def step(params, x):
        return jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grad(params, x))
    return step
