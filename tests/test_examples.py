"""The examples in examples/ run end to end (``--quick``: tiny models, few steps)."""

import importlib.util
import os

import pytest

# Measured and run on the newest JAX only (.ci/run; CONTRIBUTING.md): minutes per JAX release.
pytestmark = pytest.mark.newest_jax_only

pytest.importorskip("sklearn")
pytest.importorskip("optax")

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.fixture(autouse=True)
def examples_on_path(monkeypatch):
    """The examples import their shared training loop (examples/training.py) as
    a script's neighbour, as ``python examples/NAME.py`` finds it."""
    monkeypatch.syspath_prepend(EXAMPLES)


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_revnet_digits_learns_with_less_memory_than_jax_grad():
    result = load_example("revnet_digits").main(["--quick"])
    assert result["test_accuracy"] > 0.5          # chance is 0.1
    assert result["grad_error"] < 1e-4
    rev, plain = result["memory"]["jaxinv"], result["memory"]["jax.grad"]
    assert rev["residual_bytes"] < plain["residual_bytes"]
    if rev["temp_bytes"] is not None:            # XLA's memory analysis of the compiled gradient
        assert rev["temp_bytes"] < plain["temp_bytes"]


def test_flow_two_moons_lowers_the_nll_and_saves_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "moons.png"
    result = load_example("flow_two_moons").main(["--quick", "--out", str(out)])
    assert result["nll_end"] < result["nll_start"] - 0.1
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["samples"].shape == (2000, 2)
    assert result["ildj_error"] < 1e-4          # jaxinv.inverse_and_ildj agrees with the layers' log-det


def test_char_transformer_lm_trains_deeper_at_the_same_memory():
    import jax

    result = load_example("char_transformer_lm").main(["--quick"])
    deepest = result["deepest"]
    assert deepest["jaxinv"] > deepest["jax.grad"]
    rows = [r for r in result["memory"] if r["method"] == "jaxinv" and r["depth"] == deepest["jaxinv"]]
    assert rows and all(r["peak_bytes"] <= result["budget_bytes"] for r in rows)
    assert result["loss_end"] < result["loss_start"]
    assert result["grad_error"] < 1e-4
    assert result["devices"] == jax.device_count()
