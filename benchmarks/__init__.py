"""The benchmark (``python -m benchmarks``; see ``__main__.py``)."""

import os
import sys

# The data-parallel rows run on 4 devices: on CPU, 4 host devices, set before
# JAX starts (the other rows use the first device, as before).
if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
