"""The few pieces of ``jax._src`` jaxinv needs, kept in one place.

Why each is here: ``split``, ``tile`` and ``stack``-style primitives are not
exported by ``jax.extend.core.primitives`` in JAX 0.10, but appear in jaxprs of
ordinary ``jnp`` code, so rules must be registered for them.
"""

from jax._src.lax import lax as _lax

split_p = _lax.split_p
tile_p = _lax.tile_p
stack_p = _lax.stack_p  # jnp.stack binds it directly in 0.10 (stack[axis=...] in jaxprs)
unstack_p = _lax.unstack_p  # jnp.unstack binds it (multiple results)
optimization_barrier_p = _lax.optimization_barrier_p  # lax.optimization_barrier binds it (identity on a tuple)
from jax._src.random import prng as _prng  # noqa: E402  random_wrap/unwrap: key data <-> key (jax.random.key_data ...)
random_wrap_p = _prng.random_wrap_p
random_unwrap_p = _prng.random_unwrap_p
from jax._src.lax import slicing as _slicing  # noqa: E402
scatter_sub_p = _slicing.scatter_sub_p  # x.at[i].subtract(u) binds it (scatter-sub in jaxprs)
