"""``jaxinv.disabled``: plain AD everywhere, without changing the model's code.

Inside ``with jaxinv.disabled():`` (or with the environment variable
``JAXINV_DISABLE=1`` for a whole process) ``jaxinv.invertible(f)`` is ``f``,
and ``jaxinv.vjp``, ``jaxinv.grad`` and ``jaxinv.value_and_grad`` are JAX's own:
every activation is stored, as without jaxinv. The layers of ``jaxinv.nn`` and
their Flax and Equinox wrappers follow, since they run through
``jaxinv.invertible``. Use it to debug against plain AD, or to compare memory.

The switch is read when a function is traced: a function ``jax.jit`` has
already traced keeps the backward pass it was traced with.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

__all__ = ["disabled", "is_enabled"]

_disabled: contextvars.ContextVar[bool | None] = contextvars.ContextVar("jaxinv_disabled", default=None)


def is_enabled() -> bool:
    """Whether jaxinv's reversible backward pass is on (``disabled`` and
    ``JAXINV_DISABLE=1`` turn it off; the context manager wins).

    Example:
        ```python
        with jaxinv.disabled():
            assert not jaxinv.is_enabled()
        ```
    """
    flag = _disabled.get()
    if flag is None:
        return os.environ.get("JAXINV_DISABLE", "") in ("", "0")
    return not flag


@contextlib.contextmanager
def disabled(disable: bool = True):
    """Run jaxinv as plain AD inside the block: ``jaxinv.invertible(f)`` is
    ``f``, and ``jaxinv.vjp``/``grad``/``value_and_grad`` are JAX's own.
    ``disabled(False)`` turns it back on inside (over ``JAXINV_DISABLE=1``).

    Example:
        ```python
        with jaxinv.disabled():                      # the same model, every activation stored
            g_plain = jax.jit(jax.grad(loss))(params, x)
        g = jax.jit(jax.grad(loss))(params, x)       # reversible again
        ```
    """
    token = _disabled.set(bool(disable))
    try:
        yield
    finally:
        _disabled.reset(token)
