"""One process of tests/test_multiprocess.py: ``python multiprocess_worker.py
PROCESS_ID PORT OUT.npz``. Two of these, with 2 CPU devices each, train a
RevNet data-parallel over the 4 global devices with ``jaxinv.grad`` and save
the final parameters."""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxinv  # noqa: E402
from multiprocess_setup import STEPS, batch, init, loss, sgd_step  # noqa: E402


def main(process_id: int, port: str, out: str) -> None:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=60)
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = jax.make_mesh((4,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    params = init()
    step = jax.jit(sgd_step(jaxinv.grad(loss)))
    for i in range(STEPS):
        x1, x2 = batch(i)
        half = slice(process_id * len(x1) // 2, (process_id + 1) * len(x1) // 2)  # this process's rows
        x = tuple(jax.make_array_from_process_local_data(NamedSharding(mesh, P("batch")), a[half])
                  for a in (x1, x2))
        params = step(params, x)
    leaves = [np.asarray(p.addressable_data(0)) for p in jax.tree_util.tree_leaves(params)]
    np.savez(out, *leaves)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
