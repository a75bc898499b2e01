"""The multi-process rows: one config measured by several ``jax.distributed``
processes on localhost, each with its own CPU host devices, the batch sharded
over all of them (gradients all-reduced across processes, as on many hosts).

``run_in_processes`` starts the workers and returns process 0's rows; a worker
is this module run as ``python -m benchmarks.processes CONFIG_JSON PROCESS_ID
PORT OUT REPEATS BUDGET_S``.

Example::

    rows = run_in_processes(Config("revnet_mlp", False, (16,), devices=4, processes=2), repeats=5,
                            time_budget_s=2.0)
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
from typing import Any

TIMEOUT_S = 1800


def run_in_processes(config, repeats: int, time_budget_s: float) -> list[dict[str, Any]]:
    """Measure ``config`` at each of its depths in ``config.processes`` worker
    processes of ``config.devices // config.processes`` CPU devices each."""
    if config.devices % config.processes:
        raise ValueError(f"{config.devices} devices do not split evenly over {config.processes} processes")
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={config.devices // config.processes}"}
    root = pathlib.Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    spec = json.dumps(dataclasses.asdict(config))
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "rows.json"
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.processes", spec, str(i), str(port), str(out),
                                   str(repeats), str(time_budget_s)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(config.processes)]
        logs = []
        try:
            for p in procs:
                logs.append(p.communicate(timeout=TIMEOUT_S)[0])
        finally:
            for p in procs:
                p.kill()
        for i, (p, log) in enumerate(zip(procs, logs)):
            if p.returncode != 0:
                raise RuntimeError(f"benchmark process {i} of {config.processes} failed:\n{log[-3000:]}")
        return json.loads(out.read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(spec: str, process_id: int, port: str, out: str, repeats: int, time_budget_s: float) -> None:
    import jax

    from benchmarks.sweep import Config, measure_depth

    fields = json.loads(spec)
    config = Config(**{**fields, "depths": tuple(fields["depths"])})
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=config.processes,
                               process_id=process_id, initialization_timeout=120)
    rows = [row for depth in config.depths for row in measure_depth(config, depth, repeats, time_budget_s)]
    if process_id == 0:
        pathlib.Path(out).write_text(json.dumps(rows))
    jax.distributed.shutdown()


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]))
