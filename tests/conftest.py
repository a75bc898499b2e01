import os
import sys

# 4 CPU devices for the SPMD tests (test_spmd.py), set before JAX starts; other
# tests place everything on the first device as before.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=4".strip()

sys.path.insert(0, os.path.dirname(__file__))
