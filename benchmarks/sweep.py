"""The depth sweep: every method on every network at every depth.

Example::

    records = run_sweep(SWEEPS["smoke"], progress=print)   # progress(label) after each network and depth
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks.measure import (device_peak_bytes, grad_error, measure_compile, param_bytes, reference_grad,
                                residual_bytes, time_methods)
from benchmarks.methods import METHODS
from benchmarks.processes import run_in_processes
from benchmarks.networks import NETWORKS


@dataclasses.dataclass(frozen=True)
class Config:
    """One network, run unrolled or scanned, at several depths (data-parallel
    over ``devices`` devices when more than one: the batch sharded, the params
    replicated, memory per device; over ``processes`` processes of
    ``devices // processes`` CPU devices each when more than one)."""
    network: str                 # a key of NETWORKS
    scan: bool
    depths: tuple[int, ...]
    sizes: dict = dataclasses.field(default_factory=dict)   # keyword arguments of the network builder
    name: str | None = None      # the name in the results (default: the network's)
    devices: int = 1
    processes: int = 1           # >1: jax.distributed processes on localhost, devices split between them
    # Builds (trace + compile) per method, alternated between methods. The
    # fastest is reported, and every build is kept (``build_s``) so that the
    # report can compare two methods round by round: one program's build time
    # varies by 10-25% from build to build on a shared machine, more than the
    # differences the build-time targets measure, and a round's two builds
    # share the machine's state.
    builds: int = 1


SWEEPS = {
    "full": [
        Config("revnet_mlp", False, (4, 16, 64, 256), builds=5),
        Config("revnet_mlp", True, (8, 64, 512, 1024), builds=5),
        Config("transformer", True, (4, 16, 64, 256)),
        Config("glow", True, (4, 16, 64, 256)),
        # jaxinv.nn's conversions of residual networks, and the cost of exact mode
        # (unrolled: XLA's compile time grows faster than linearly in their depth, ~30 s at 64 steps)
        Config("momentum_mlp", False, (16, 64)),
        Config("converted_transformer", False, (4, 8, 16)),
        Config("revnet_mlp", False, (16, 64), dict(exact_bits=12)),
        Config("momentum_mlp", False, (16, 64), dict(gamma=0.5, exact_bits=12)),
        # where activations dominate (the targets' shape), wide, and data-parallel
        Config("revnet_mlp", False, (16, 64), dict(batch=1024), name="RevNet MLP, batch 1024"),
        Config("revnet_mlp", False, (4, 16, 64), dict(width=1024, hidden=1024), name="RevNet MLP, width 1024"),
        Config("revnet_mlp", False, (16, 64), dict(batch=1024), name="RevNet MLP, batch 1024 on 4 devices",
               devices=4),
        Config("revnet_mlp", False, (16, 64), dict(batch=1024),
               name="RevNet MLP, batch 1024 on 2 processes x 2 devices", devices=4, processes=2),
    ],
    # seconds-long: the test suite's smoke run
    "smoke": [
        Config("revnet_mlp", False, (2, 3), dict(batch=4, width=8, hidden=8)),
        Config("revnet_mlp", True, (2,), dict(batch=4, width=8, hidden=8)),
        Config("momentum_mlp", False, (2,), dict(batch=4, width=8, hidden=8, gamma=0.5, exact_bits=12)),
        Config("converted_transformer", False, (2,), dict(batch=2, seq=4, d_model=8, n_heads=2, d_ff=8)),
        Config("revnet_mlp", False, (2,), dict(batch=8, width=8, hidden=8), name="RevNet MLP on 2 devices",
               devices=2),
        Config("revnet_mlp", False, (2,), dict(batch=8, width=8, hidden=8),
               name="RevNet MLP on 2 processes x 1 device", devices=2, processes=2),
    ],
}


def total_steps(configs) -> int:
    return sum(len(c.depths) for c in configs)


def measure_depth(config: Config, depth: int, repeats: int, time_budget_s: float,
                  methods=None) -> list[dict[str, Any]]:
    """All figures for every method on one network at one depth."""
    net = NETWORKS[config.network](depth=depth, scan=config.scan, **config.sizes)
    methods = [m for m in methods or METHODS.values() if m.name != "hand-fused" or net.reverse is not None]
    params, x = net.init(jax.random.PRNGKey(0))
    reference = reference_grad(net, params, x)
    if config.devices > 1:
        params, x = data_parallel(params, x, config.devices)
    rows, compiled = [], {}
    for method in methods:
        m = measure_compile(method, net, params, x)
        compiled[method.name] = m.pop("compiled")
        m["grad_error"] = grad_error(compiled[method.name](params, x), reference)
        m["residual_bytes"] = residual_bytes(method, net, params, x)
        rows.append({"network": config.name or net.name, "mode": "scan" if config.scan else "unrolled",
                     "depth": depth, "method": method.name, "devices": config.devices,
                     "processes": config.processes,
                     "param_bytes": param_bytes(params), **m})
    for row in rows:
        row["build_s"] = [row["trace_s"] + row["compile_s"]]
    for _ in range(config.builds - 1):
        for method, row in zip(methods, rows):
            again = measure_compile(method, net, params, x)
            row["build_s"].append(again["trace_s"] + again["compile_s"])
            if again["trace_s"] + again["compile_s"] < row["trace_s"] + row["compile_s"]:
                row["trace_s"], row["compile_s"] = again["trace_s"], again["compile_s"]
    times = time_methods(compiled, params, x, repeats, time_budget_s)
    for row in rows:
        row["builds"] = config.builds
        row["time_s"] = times[row["method"]]
        row["device_peak_bytes"] = device_peak_bytes()
    return rows


def data_parallel(params, x, devices: int):
    """``params`` replicated and ``x`` split along its batch axis over the
    first ``devices`` devices."""
    if jax.device_count() < devices:
        raise RuntimeError(f"the sharded benchmark needs {devices} devices, this process has {jax.device_count()} "
                           f"(on CPU: XLA_FLAGS=--xla_force_host_platform_device_count={devices})")
    mesh = jax.make_mesh((devices,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:devices])

    def put(a, spec):  # every process holds the whole value and places its own shards
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, NamedSharding(mesh, spec), lambda index: a[index])
    return jax.tree_util.tree_map(lambda a: put(a, P()), params), put(x, P("batch"))


def run_sweep(configs, repeats: int = 15, time_budget_s: float = 10.0,
              progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Measure every config at each of its depths; ``progress(label)`` after each."""
    records = []
    for config in configs:
        label = lambda depth: f"{config.name or config.network} {'scan' if config.scan else 'unrolled'} depth {depth}"
        if config.processes > 1:
            records += run_in_processes(config, repeats, time_budget_s)
            for depth in config.depths:
                if progress is not None:
                    progress(label(depth))
            continue
        for depth in config.depths:
            records += measure_depth(config, depth, repeats, time_budget_s)
            if progress is not None:
                progress(label(depth))
    return records
