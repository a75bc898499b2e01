"""The figures measured for one (network, method) pair.

- ``temp_bytes``: XLA's temporary buffers of ``jit(grad)``, from
  ``jit(...).lower(...).compile().memory_analysis()`` (exact on CPU: the peak
  working memory besides arguments and outputs);
- ``peak_bytes``: the memory users feel, arguments + outputs + temp - aliased
  (the params and their gradients are in every method's peak; XLA may keep
  activations in a gradient's buffer before it is written, which temp alone
  does not show). Per device for a sharded network;
- ``device_peak_bytes``: the device's own ``peak_bytes_in_use`` after the
  timed runs, where the backend reports it (None on CPU; the process's peak,
  so only the first method's is its own);
- ``param_bytes``: the params' bytes (per device);
- ``residual_bytes``: bytes held by the ``vjp`` function between the forward and
  the backward pass, minus the params and the input it references;
- ``trace_s`` / ``compile_s``: ``jit(grad).lower`` and ``.compile`` wall time,
  with Python's garbage collector paused as ``timeit`` pauses it (a collection
  costs by the size of the whole heap, which the harness's earlier networks
  set, not the method being built);
- ``time_s``: median wall time of the compiled gradient, methods alternated
  (``time_methods``);
- ``grad_error``: relative error ``|g - g64| / |g64|`` (global norms) against
  ``jax.grad`` in float64.

Example::

    m = measure_compile(method, net, params, x)
    m["temp_bytes"], m["compile_s"]
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.methods import METHODS, Method
from benchmarks.networks import Network
from jaxinv._src.compat import enable_x64


def residual_bytes(method: Method, net: Network, params, x) -> int:
    """Bytes the vjp function keeps between the passes besides the params and the
    input (which it references, not copies): what the forward pass stores for
    the backward, per device. Run eagerly, so that a referenced input is the
    same object."""
    _, vjp_fn = method.vjp(net)(params, x)
    given = {id(leaf) for leaf in jax.tree_util.tree_leaves((params, x))}
    return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree_util.tree_leaves(vjp_fn)
               if isinstance(leaf, jax.Array) and id(leaf) not in given)


def measure_compile(method: Method, net: Network, params, x) -> dict:
    """Trace and compile ``jit(grad)``; return the compiled function and its figures."""
    fn = jax.jit(method.grad(net))
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        lowered = fn.lower(params, x)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
    finally:
        gc.enable()
    mem = compiled.memory_analysis()
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
    return {"compiled": compiled, "trace_s": t1 - t0, "compile_s": t2 - t1,
            "temp_bytes": int(mem.temp_size_in_bytes), "peak_bytes": int(peak)}


def param_bytes(params) -> int:
    """The params' bytes on one device (a shard's, for a sharded leaf)."""
    return sum(leaf.addressable_shards[0].data.nbytes if isinstance(leaf, jax.Array) else np.asarray(leaf).nbytes
               for leaf in jax.tree_util.tree_leaves(params))


def device_peak_bytes() -> int | None:
    """This process's first device's ``peak_bytes_in_use`` (None where the backend has no memory stats, as on CPU)."""
    stats = jax.local_devices()[0].memory_stats()
    return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def time_methods(compiled: dict[str, Callable], params, x, repeats: int, budget_s: float = 20.0) -> dict[str, float]:
    """Median wall time per method, runs alternated (method A, B, ..., A, B, ...)
    so that machine noise hits all alike; each function warmed up first."""
    for f in compiled.values():
        jax.block_until_ready(f(params, x))
    times: dict[str, list[float]] = {name: [] for name in compiled}
    start = time.perf_counter()
    for r in range(repeats):
        for name, f in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(params, x))
            times[name].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {name: statistics.median(ts) for name, ts in times.items()}


def reference_grad(net: Network, params, x):
    """``jax.grad`` in float64 (the accuracy reference)."""
    with enable_x64(True):
        p64, x64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), (params, x))
        g = jax.jit(METHODS["jax.grad"].grad(net))(p64, x64)
        return jax.tree_util.tree_map(np.asarray, g)


def grad_error(grads, reference) -> float:
    num = sum(float(np.sum((np.asarray(g, np.float64) - r) ** 2))
              for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(reference)))
    den = sum(float(np.sum(r ** 2)) for r in jax.tree_util.tree_leaves(reference))
    return float(np.sqrt(num / den))
