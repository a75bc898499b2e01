"""The README's quickstart runs and gives JAX's gradients."""

import pathlib
import re

import jax

from helpers import assert_trees_close

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs_and_matches_jax(capsys):
    """Execute the quickstart block; its reversible gradients equal jax.grad's."""
    code = re.search(r"## Quickstart\s+```python\n(.*?)```", README.read_text(), re.S).group(1)
    env: dict = {}
    exec(compile(code, "README.md", "exec"), env)
    plain = lambda p, x1, x2: (env["revnet"](p, x1, x2)[0] ** 2).sum()
    assert_trees_close(env["grads"], jax.grad(plain)(env["params"], env["x1"], env["x2"]), rtol=1e-4)
    assert "reconstructed" in capsys.readouterr().out
