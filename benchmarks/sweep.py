"""The depth sweep: every method on every network at every depth.

Example::

    records = run_sweep(SWEEPS["full"], progress=ProgressBar(total_steps(SWEEPS["full"])))
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable

import jax

from benchmarks.measure import grad_error, measure_compile, reference_grad, residual_bytes, time_methods
from benchmarks.methods import METHODS
from benchmarks.networks import NETWORKS


@dataclasses.dataclass(frozen=True)
class Config:
    """One network, run unrolled or scanned, at several depths."""
    network: str                 # a key of NETWORKS
    scan: bool
    depths: tuple[int, ...]
    sizes: dict = dataclasses.field(default_factory=dict)   # keyword arguments of the network builder


SWEEPS = {
    "full": [
        Config("revnet_mlp", False, (4, 16, 64, 256)),
        Config("revnet_mlp", True, (8, 64, 512, 1024)),
        Config("transformer", True, (4, 16, 64, 256)),
        Config("glow", True, (4, 16, 64, 256)),
    ],
    # seconds-long: the test suite's smoke run
    "smoke": [
        Config("revnet_mlp", False, (2, 3), dict(batch=4, width=8, hidden=8)),
        Config("revnet_mlp", True, (2,), dict(batch=4, width=8, hidden=8)),
    ],
}


def total_steps(configs) -> int:
    return sum(len(c.depths) for c in configs)


class ProgressBar:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total: int, width: int = 30, stream=None):
        self.total, self.done, self.width = total, 0, width
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()

    def update(self, label: str) -> None:
        filled = self.width * self.done // max(self.total, 1)
        elapsed = time.perf_counter() - self.start
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                          f"{elapsed:5.0f}s  {label:<48}")
        self.stream.flush()

    def step(self, label: str) -> None:
        self.done += 1
        self.update(label)
        if self.done == self.total:
            self.stream.write("\n")


def measure_depth(config: Config, depth: int, repeats: int, time_budget_s: float,
                  methods=None) -> list[dict[str, Any]]:
    """All figures for every method on one network at one depth."""
    methods = methods or list(METHODS.values())
    net = NETWORKS[config.network](depth=depth, scan=config.scan, **config.sizes)
    params, x = net.init(jax.random.PRNGKey(0))
    reference = reference_grad(net, params, x)
    rows, compiled = [], {}
    for method in methods:
        m = measure_compile(method, net, params, x)
        compiled[method.name] = m.pop("compiled")
        m["grad_error"] = grad_error(compiled[method.name](params, x), reference)
        m["residual_bytes"] = residual_bytes(method, net, params, x)
        rows.append({"network": net.name, "mode": "scan" if config.scan else "unrolled", "depth": depth,
                     "method": method.name, **m})
    times = time_methods(compiled, params, x, repeats, time_budget_s)
    for row in rows:
        row["time_s"] = times[row["method"]]
    return rows


def run_sweep(configs, repeats: int = 15, time_budget_s: float = 10.0,
              progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Measure every config at each of its depths; ``progress(label)`` after each."""
    records = []
    for config in configs:
        for depth in config.depths:
            records += measure_depth(config, depth, repeats, time_budget_s)
            if progress is not None:
                progress(f"{config.network} {'scan' if config.scan else 'unrolled'} depth {depth}")
    return records
