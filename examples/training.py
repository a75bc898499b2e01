"""The training loop the examples share: a plain Optax step and the loop that runs it.

Nothing here is specific to jaxinv: the examples make their gradient
reversible by wrapping their network in ``jaxinv.invertible`` before the loss
reaches :func:`train_step`, so ``jax.value_and_grad`` runs jaxinv's backward
pass.

Example::

    step = jax.jit(train_step(loss, optax.adam(1e-3)))          # loss(params, *batch)
    params, opt_state, losses, seconds = fit(step, params, optimizer.init(params), batches)
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import jax
import optax


def train_step(loss: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """``step(params, opt_state, *batch) -> (params, opt_state, loss value)``:
    one update of ``optimizer`` with the gradient of ``loss(params, *batch)``.
    Not jitted: the caller jits it (with shardings, donation) as it needs."""
    def step(params, opt_state, *batch):
        value, grads = jax.value_and_grad(loss)(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value
    return step


def fit(step: Callable, params, opt_state, batches: Iterable[tuple], log: Callable | None = None,
        log_every: int = 1):
    """Run ``step`` on each batch (a tuple of arguments) of ``batches``.

    ``log(i, params, losses)`` is called after step ``i`` (counted from 1)
    when ``i`` is a multiple of ``log_every``. Returns the final params and
    optimizer state, the losses (floats), and the seconds the steps took after
    the first one (which compiles), without waiting on each step in between.
    """
    losses, start = [], time.perf_counter()
    for i, batch in enumerate(batches):
        params, opt_state, loss = step(params, opt_state, *batch)
        losses.append(loss)
        if i == 0:
            losses[0] = float(loss)            # waits for the first (compiling) step
            start = time.perf_counter()
        if log is not None and (i + 1) % log_every == 0:
            log(i + 1, params, losses)
    losses = [float(x) for x in jax.block_until_ready(losses)]
    return params, opt_state, losses, time.perf_counter() - start
