"""Differences between the JAX releases jaxinv supports, in one place.

Everything else in jaxinv calls these helpers instead of testing versions.
"""

from __future__ import annotations

import inspect

import jax

_SPEC_PARAMS = frozenset(inspect.signature(jax.ShapeDtypeStruct.__init__).parameters)


def aval_spec(aval) -> jax.ShapeDtypeStruct:
    """A ``ShapeDtypeStruct`` that traces to ``aval`` again: shape, dtype, weak
    type, an explicit sharding in the type, and inside ``shard_map`` the mesh
    axes the value varies over (JAX 0.10 calls them ``manual_axis_type``,
    earlier releases ``vma``). Without them a retraced ``shard_map`` body mixes
    varying and invariant operands, and a retraced VJP of a sharded ``dot`` no
    longer knows its output's sharding: JAX refuses both.

    Example::

        jax.make_jaxpr(fn)(*[aval_spec(v.aval) for v in jaxpr.invars])
    """
    extra = {}
    sharding = getattr(aval, "sharding", None)
    if sharding is not None and not sharding.mesh.empty:  # explicit sharding in the type
        extra["sharding"] = sharding
    mat = getattr(aval, "manual_axis_type", None)
    if "manual_axis_type" in _SPEC_PARAMS and mat is not None and not mat.empty:
        extra["manual_axis_type"] = mat
    elif "vma" in _SPEC_PARAMS and getattr(aval, "vma", None):
        extra["vma"] = aval.vma
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type, **extra)


def varying_axes(x) -> frozenset:
    """The ``shard_map`` mesh axes ``x`` varies over (empty outside one).

    Example::

        varying_axes(x)   # frozenset({'d'}) for a batch-sharded x in shard_map
    """
    aval = jax.typeof(x) if hasattr(jax, "typeof") else jax.core.get_aval(x)
    mat = getattr(aval, "manual_axis_type", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))


def trace_context():
    """What, besides shapes and dtypes, changes a trace: the abstract mesh in
    scope (``shard_map``, ``pmap`` and ``jax.sharding.use_mesh`` set one). A
    cache of traced jaxprs keys on it, or a jaxpr traced under one ``pmap``
    is replayed under another's mesh and JAX refuses it.

    Example::

        key = (primitive, avals, trace_context())
    """
    return jax.sharding.get_abstract_mesh()


def with_sharding_of(ct, aval):
    """``ct`` resharded to ``aval``'s explicit sharding if it differs, as JAX's
    own transpose leaves a cotangent: the gradient of a replicated input is
    replicated, of a batch-sharded one batch-sharded (and a loop's carried
    cotangent keeps one type from step to step).

    Example::

        ct = with_sharding_of(ct, invar.aval)
    """
    want = getattr(aval, "sharding", None)
    if ct is None or want is None or want.mesh.empty:
        return ct
    have = getattr(jax.typeof(ct), "sharding", None)
    if have is not None and not have.mesh.empty and have.spec == want.spec:
        return ct
    return jax.sharding.reshard(ct, want)


def without_dead_code(closed):
    """``closed`` with the equations no output needs removed (every input kept).

    A traced VJP re-evaluates its primal, and most of that is dead once the
    cotangents are all that is asked for: a cached VJP replayed once per block
    would otherwise emit it again every time.

    Example::

        closed = without_dead_code(jax.make_jaxpr(vjp_of_eqn)(*specs))
    """
    from jax.interpreters import partial_eval as pe
    jaxpr, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars), instantiate=True)
    return closed.replace(jaxpr=jaxpr)
