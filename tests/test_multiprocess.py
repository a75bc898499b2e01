"""Two processes on localhost (``jax.distributed``, 2 CPU devices each) train
a RevNet data-parallel with ``jaxinv.grad``; the parameters equal a
single-process ``jax.grad`` run's. The test starts and stops its processes
itself, within a time bound."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

import jaxinv
from helpers import assert_trees_close
from multiprocess_setup import STEPS, batch, init, loss, sgd_step

WORKER = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_data_parallel_like_one(tmp_path):
    port = _free_port()
    outs = [tmp_path / f"params{i}.npz" for i in range(2)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, WORKER, str(i), str(port), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i, out in enumerate(outs)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]

    # The reference: one process, jax.grad. Reconstruction rounds differently
    # from storing: the tolerance is 8x the single-process jaxinv.grad run's own
    # distance from it (and never below 64 ulps of the parameters).
    want, alone = (_train(jax.grad(loss)), _train(jaxinv.grad(loss)))
    scale = max(float(np.max(np.abs(w))) for w in want)
    tol = 8 * max(max(float(np.max(np.abs(a - w))) for a, w in zip(alone, want)),
                  64 * float(np.finfo(np.float32).eps) * scale)
    for out in outs:
        with np.load(out) as got:
            assert_trees_close([got[f"arr_{j}"] for j in range(len(want))], want, rtol=0, atol=tol)


def _train(grad) -> list:
    params = init()
    step = jax.jit(sgd_step(grad))
    for i in range(STEPS):
        params = step(params, batch(i))
    return [np.asarray(p) for p in jax.tree_util.tree_leaves(params)]
