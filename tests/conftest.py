"""Suite-wide setup: 4 CPU devices for the SPMD tests, and the ``every_jax``
marker on the subset that also runs on the older JAX releases of the CI
matrix. (``tests/`` is on ``sys.path`` through pytest's ``pythonpath`` setting
in pyproject.toml, so the tests import ``helpers`` and ``fuzzing`` directly.)"""

import os

# 4 CPU devices for the SPMD tests (test_spmd.py), set before JAX starts; other
# tests place everything on the first device as before.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=4".strip()

import pytest  # noqa: E402

# The subset `.ci/run` also runs on the older JAX releases of its matrix
# (`.ci/test-jax`, marker `every_jax`): it touches every module and, through the
# conformance harness, every rule family, in minutes. The rest of the suite
# runs on the newest JAX (and on any release with `.ci/test-jax VERSION -m "not
# newest_jax_only"`).
EVERY_JAX_FILES = {
    "test_conformance.py", "test_primitive_coverage.py", "test_function_identity.py", "test_spmd.py",
    "test_multiprocess.py", "test_integrations.py", "test_nn_layers.py", "test_custom_ivjp.py", "test_vjp.py",
    "test_invertible.py", "test_check.py", "test_packs.py", "test_rules.py", "test_errors.py", "test_flatten.py",
    "test_policy.py", "test_stable_vjp.py", "test_oryx_cases.py", "test_partial.py", "test_docs.py",
    "test_readme.py", "test_api_reference.py", "test_nn_residual.py", "test_disable.py",
    "test_nn_exact.py", "test_keep_input.py",
}
EVERY_JAX_TESTS = {"test_demo.py::test_demo_quick", "test_nn_coupling.py::test_round_trip",
                   "test_nn_coupling.py::test_stack_grad_matches_jax",
                   # from test_policy.py, moved to the file of their subject
                   "test_identity_and_prng.py::test_dropout_is_replayed_from_its_key",
                   "test_explain_memory.py::test_explain_reports_lines_fates_and_bytes"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in EVERY_JAX_FILES or f"{item.path.name}::{item.originalname}" in EVERY_JAX_TESTS:
            item.add_marker(pytest.mark.every_jax)
