"""The benchmark (``python -m benchmarks``): a seconds-long smoke run that it runs and
writes its table, and that every method it times computes the same gradient. The
targets themselves are checked by running the benchmark, never here."""

from __future__ import annotations

import json

import jax
import pytest

from benchmarks.__main__ import main
from benchmarks.methods import METHODS
from benchmarks.networks import NETWORKS
from benchmarks.report import targets
from helpers import assert_trees_close

# Measured and run on the newest JAX only (.ci/run; CONTRIBUTING.md): minutes per JAX release.
pytestmark = pytest.mark.newest_jax_only


def test_smoke_run_writes_its_table(tmp_path, capsys):
    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "results.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in table
    records = json.loads((tmp_path / "results.json").read_text())
    assert {(r["mode"], r["depth"]) for r in records} == {("unrolled", 2), ("unrolled", 3), ("scan", 2)}
    for r in records:
        assert r["temp_bytes"] >= 0 and r["time_s"] > 0 and r["grad_error"] < 1e-5, r
    # the sharded rows: one process with 2 devices, and 2 jax.distributed processes with 1 each
    assert {(r["devices"], r["processes"]) for r in records} == {(1, 1), (2, 1), (2, 2)}
    two_processes = {r["method"]: r for r in records if r["processes"] == 2}
    assert set(two_processes) == set(METHODS)
    one_process = {r["method"]: r for r in records if r["devices"] == 2 and r["processes"] == 1}
    for method, r in two_processes.items():   # the same program per device, wherever its devices are
        assert r["peak_bytes"] == one_process[method]["peak_bytes"], method
    assert (tmp_path / "memory.png").stat().st_size > 0 and (tmp_path / "time_ratio.png").stat().st_size > 0
    assert "[" in capsys.readouterr().err   # the progress bar


SMALL = {"revnet_mlp": dict(batch=4, width=8, hidden=8), "transformer": dict(batch=2, seq=4, d_model=8, d_ff=8),
         "glow": dict(batch=4, width=6, hidden=8), "momentum_mlp": dict(batch=4, width=8, hidden=8),
         "converted_transformer": dict(batch=2, seq=4, d_model=8, n_heads=2, d_ff=8)}
UNROLLED_ONLY = {"momentum_mlp", "converted_transformer"}   # jaxinv.nn's conversions take lists of blocks
CASES = [(network, scan, {}) for network in NETWORKS for scan in (False, True)
         if not (scan and network in UNROLLED_ONLY)]
CASES += [("revnet_mlp", False, dict(exact_bits=12)), ("momentum_mlp", False, dict(gamma=0.5, exact_bits=12))]


@pytest.mark.parametrize("network, scan, options", CASES,
                         ids=[f"{n}-{'scan' if s else 'unrolled'}{'-exact' if o else ''}" for n, s, o in CASES])
def test_every_method_computes_jax_grads_gradient(network, scan, options):
    """The hand-fused backward (where the network has one) and jaxinv's agree
    with jax.grad on every benchmarked network."""
    net = NETWORKS[network](depth=3, scan=scan, **SMALL[network], **options)
    params, x = net.init(jax.random.PRNGKey(0))
    want = jax.jit(METHODS["jax.grad"].grad(net))(params, x)
    methods = [m for m in METHODS.values() if m.name != "hand-fused" or net.reverse is not None]
    assert len(methods) == len(METHODS) - (net.reverse is None)
    for method in methods:
        assert_trees_close(jax.jit(method.grad(net))(params, x), want, rtol=1e-4, atol=1e-5, relative_atol=True)


def test_networks_that_take_lists_of_blocks_refuse_a_scan():
    for network in UNROLLED_ONLY:
        with pytest.raises(ValueError, match="unrolled only"):
            NETWORKS[network](depth=2, scan=True, **SMALL[network])


def test_targets_are_ratios_of_the_measured_figures():
    def rec(mode, depth, method, temp, time, build):
        return {"network": "RevNet MLP", "mode": mode, "depth": depth, "method": method, "temp_bytes": temp,
                "time_s": time, "trace_s": build / 2, "compile_s": build / 2}
    records = [rec("unrolled", 16, "jax.grad", 1600, 1.0, 1.0), rec("unrolled", 64, "jax.grad", 6400, 1.0, 2.0),
               rec("unrolled", 16, "jaxinv.grad", 100, 1.2, 1.0), rec("unrolled", 64, "jaxinv.grad", 148, 1.3, 5.0),
               rec("unrolled", 64, "hand-fused", 100, 1.25, 1.0),
               rec("scan", 8, "jaxinv.grad", 0, 0, 1.0), rec("scan", 512, "jaxinv.grad", 0, 0, 1.2)]
    got = {t.name: (t.value, t.holds) for t in targets(records) if t.name.startswith("jaxinv.grad")}
    assert got["jaxinv.grad: temp memory at depth 64 / jax.grad's"] == (148 / 6400, True)
    assert got["jaxinv.grad: temp memory growth depth 16 -> 64 / jax.grad's"] == (48 / 4800, True)
    assert got["jaxinv.grad: wall time at depth 64 / hand-fused"] == (1.3 / 1.25, True)
    assert got["jaxinv.grad: scan, trace + compile at depth 512 / depth 8"] == (1.2, True)
    assert got["jaxinv.grad: unrolled depth 64, trace + compile / jax.grad's"] == (2.5, False)
    assert all(t.value is None for t in targets(records) if t.name.startswith("jaxinv.invertible"))


def test_build_ratios_pair_the_builds_of_one_round():
    """Two methods' build times compare round by round (median of the ratios),
    so a round the machine slowed down for both does not count against either."""
    def rec(method, builds):
        return {"network": "RevNet MLP", "mode": "unrolled", "depth": 64, "method": method,
                "trace_s": 0.0, "compile_s": min(builds), "build_s": builds}
    records = [rec("hand-fused", [1.0, 2.0, 1.0]), rec("jaxinv.grad", [1.05, 2.1, 0.9])]
    got = {t.name: t.value for t in targets(records)}
    assert got["jaxinv.grad: unrolled depth 64, trace + compile / hand-fused's"] == pytest.approx(1.05)
    # the fastest builds alone would give 0.9 / 1.0; one build each: their ratio
    records = [rec("hand-fused", [1.0]), rec("jaxinv.grad", [1.2])]
    got = {t.name: t.value for t in targets(records)}
    assert got["jaxinv.grad: unrolled depth 64, trace + compile / hand-fused's"] == pytest.approx(1.2)


def test_readme_summary_is_the_committed_run():
    """The README's benchmark summary is generated from the committed full run
    (``python -m benchmarks --update-readme``), where every target holds."""
    import pathlib
    from benchmarks.report import SUMMARY_END, SUMMARY_START, summary

    root = pathlib.Path(__file__).resolve().parents[1]
    records = json.loads((root / "benchmarks" / "results" / "cpu" / "results.json").read_text())
    readme = (root / "README.md").read_text()
    block = readme[readme.index(SUMMARY_START) + len(SUMMARY_START):readme.index(SUMMARY_END)].strip()
    checked = targets(records)
    assert block == summary(records, checked), "stale: run python -m benchmarks --update-readme"
    assert checked and all(t.holds for t in checked), [t for t in checked if not t.holds]
