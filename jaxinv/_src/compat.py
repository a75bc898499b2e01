"""Differences between the JAX releases jaxinv supports (0.6.0 to 0.10.x), and
the few pieces of ``jax._src`` it needs, in one place.

Everything else in jaxinv imports these names or calls these helpers instead of
testing versions. Each item says which JAX changed what. A primitive that some
supported JAX does not have is ``None`` there, and the rules for it are simply
not registered (``available``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect

import jax
import jax.extend.core as _core
from jax.extend.core import primitives as _P
# jax._src: primitives that ordinary jnp code binds but jax.extend does not
# export, and names that only later releases export publicly.
from jax._src import ad_checkpoint as _ad_checkpoint
from jax._src import core as _src_core
from jax._src.lax import lax as _lax
from jax._src.lax import slicing as _slicing
from jax._src.random import prng as _prng

# The JAX releases jaxinv supports (pyproject.toml states the same range; the
# built-in rule packs declare it).
SUPPORTED_JAX = ">=0.6,<0.11"

# -- names that moved ---------------------------------------------------------

# jax.extend.core exports DropVar and jaxprs_in_params from JAX 0.9.
DropVar = getattr(_core, "DropVar", None) or _src_core.DropVar
jaxprs_in_params = getattr(_core, "jaxprs_in_params", None) or _src_core.jaxprs_in_params
# jit's primitive is jit_p from JAX 0.7, pjit_p in 0.6.
jit_p = getattr(_P, "jit_p", None) or _P.pjit_p
# jax.extend.core.primitives exports name_p (checkpoint_name) and remat_p (jax.checkpoint) from JAX 0.8.
name_p = getattr(_P, "name_p", None) or _ad_checkpoint.name_p
remat_p = getattr(_P, "remat_p", None) or _ad_checkpoint.remat_p
# jax.enable_x64 from JAX 0.8; jax.experimental.enable_x64 before.
if hasattr(jax, "enable_x64"):
    enable_x64 = jax.enable_x64
else:
    from jax.experimental import enable_x64

# JAX 0.7 wraps a jaxpr literal's array in jax._src.literals.LiteralArray, which
# lacks most of numpy's operators (``**``, comparisons); 0.6 gives a numpy array
# and 0.8 on a numpy subclass.
_LiteralArray = getattr(importlib.import_module("jax._src.literals"), "LiteralArray", None) \
    if importlib.util.find_spec("jax._src.literals") else None


def literal_value(v):
    """The value of the jaxpr literal ``v`` as numpy gives it (numbers and
    numpy arrays have every operator rules use).

    Example:
        ```python
        read = lambda v: literal_value(v) if isinstance(v, Literal) else env[v]
        ```
    """
    val = v.val
    return val.val if _LiteralArray is not None and isinstance(val, _LiteralArray) else val


# -- primitives not in every release (None where absent) -------------------------

split_p = _lax.split_p                    # jnp.split binds it
optimization_barrier_p = _lax.optimization_barrier_p
random_wrap_p = _prng.random_wrap_p       # key data <-> key (jax.random.key_data, wrap_key_data)
random_unwrap_p = _prng.random_unwrap_p
scatter_sub_p = _slicing.scatter_sub_p    # x.at[i].subtract(u)
tile_p = getattr(_lax, "tile_p", None)    # jnp.tile binds it from JAX 0.9 (reshape + broadcast before)
stack_p = getattr(_lax, "stack_p", None)  # jnp.stack binds it from JAX 0.10 (concatenate before)
unstack_p = getattr(_lax, "unstack_p", None)  # jnp.unstack binds it from JAX 0.10 (slices before)
# The first JAX release with each primitive that not every supported JAX has.
PRIMITIVES_SINCE = {"tile": "0.9", "stack": "0.10", "unstack": "0.10"}


def available(*primitives) -> bool:
    """Whether this JAX has every one of ``primitives`` (rules for a primitive
    it lacks are not registered).

    Example:
        ```python
        if available(tile_p):
            pack.register_inverse(tile_p, _tile_inverse)
        ```
    """
    return all(p is not None for p in primitives)


# lax.mul takes out_dtype (a mixed-precision product) in JAX 0.10, not in 0.8.
MUL_HAS_OUT_DTYPE = "out_dtype" in inspect.signature(jax.lax.mul).parameters

# -- other libraries ---------------------------------------------------------------


def variable_value(variable):
    """A Flax NNX variable's value: ``get_value()`` from Flax 0.12, ``.value`` in
    0.11 (the Flax that JAX 0.6 installs).

    Example:
        ```python
        arrays = jax.tree.map(variable_value, params, is_leaf=lambda v: isinstance(v, nnx.Variable))
        ```
    """
    return variable.get_value() if hasattr(variable, "get_value") else variable.value


# -- behaviour ------------------------------------------------------------------


def bind_equation(primitive, invals, params):
    """``primitive.bind`` as a jaxpr equation with ``params`` binds it.
    ``get_bind_params`` returns the params from JAX 0.9, ``(subfuns, params)``
    before (the subfunctions bound first).

    Example:
        ```python
        outs = bind_equation(eqn.primitive, invals, eqn.params)
        ```
    """
    got = primitive.get_bind_params(params)
    if isinstance(got, tuple):
        subfuns, got = got
        return primitive.bind(*subfuns, *invals, **got)
    return primitive.bind(*invals, **got)


_SPEC_PARAMS = frozenset(inspect.signature(jax.ShapeDtypeStruct.__init__).parameters)


def aval_spec(aval):
    """What ``make_jaxpr`` traces to ``aval`` again (a ``ShapeDtypeStruct``): shape, dtype, weak
    type, an explicit sharding in the type, and inside ``shard_map`` the mesh
    axes the value varies over (JAX 0.10 calls them ``manual_axis_type``,
    earlier releases ``vma``). Without them a retraced ``shard_map`` body mixes
    varying and invariant operands, and a retraced VJP of a sharded ``dot`` no
    longer knows its output's sharding: JAX refuses both.

    Example:
        ```python
        jax.make_jaxpr(fn)(*[aval_spec(v.aval) for v in jaxpr.invars])
        ```
    """
    extra = {}
    sharding = getattr(aval, "sharding", None)
    if sharding is not None and not sharding.mesh.empty:  # explicit sharding in the type
        extra["sharding"] = sharding
    mat = getattr(aval, "manual_axis_type", None)
    if "manual_axis_type" in _SPEC_PARAMS and mat is not None and not mat.empty:
        extra["manual_axis_type"] = mat
    elif getattr(aval, "vma", None):
        # Releases that spell it ``vma`` (0.6-0.9): JAX 0.6 drops a
        # ShapeDtypeStruct's ``vma`` when it traces one, but ``make_jaxpr``
        # takes an abstract value as it is, varying axes included.
        return aval
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type, **extra)


def varying_axes(x) -> frozenset:
    """The ``shard_map`` mesh axes ``x`` varies over (empty outside one).

    Example:
        ```python
        varying_axes(x)   # frozenset({'d'}) for a batch-sharded x in shard_map
        ```
    """
    aval = jax.typeof(x) if hasattr(jax, "typeof") else jax.core.get_aval(x)
    mat = getattr(aval, "manual_axis_type", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))


def vary_like(x, like):
    """``x`` made to vary over every ``shard_map`` mesh axis ``like`` varies
    over (``x`` itself when it already does). JAX 0.6-0.7 spell this
    ``lax.pvary``; 0.8 adds ``lax.pcast(..., to="varying")`` and 0.10 drops
    ``pvary``.

    Example:
        ```python
        ct = vary_like(ct, y)   # a cotangent as varying as its output
        ```
    """
    missing = tuple(sorted(varying_axes(like) - varying_axes(x), key=str))
    if not missing:
        return x
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, missing, to="varying")
    return jax.lax.pvary(x, missing)


def trace_context():
    """What, besides shapes and dtypes, changes a trace: the abstract mesh in
    scope (``shard_map``, ``pmap`` and ``jax.sharding.use_mesh`` set one). A
    cache of traced jaxprs keys on it, or a jaxpr traced under one ``pmap``
    is replayed under another's mesh and JAX refuses it.

    Example:
        ```python
        key = (primitive, avals, trace_context())
        ```
    """
    return jax.sharding.get_abstract_mesh()


def with_sharding_of(ct, aval):
    """``ct`` resharded to ``aval``'s explicit sharding if it differs, as JAX's
    own transpose leaves a cotangent: the gradient of a replicated input is
    replicated, of a batch-sharded one batch-sharded (and a loop's carried
    cotangent keeps one type from step to step).

    Example:
        ```python
        ct = with_sharding_of(ct, invar.aval)
        ```
    """
    want = getattr(aval, "sharding", None)
    if ct is None or want is None or want.mesh.empty:
        return ct
    have = getattr(jax.typeof(ct), "sharding", None)
    if have is not None and not have.mesh.empty and have.spec == want.spec:
        return ct
    return _reshard(ct, want)


def without_dead_code(closed):
    """``closed`` with the equations no output needs removed (every input kept).

    A traced VJP re-evaluates its primal, and most of that is dead once the
    cotangents are all that is asked for: a cached VJP replayed once per block
    would otherwise emit it again every time.

    Example:
        ```python
        closed = without_dead_code(jax.make_jaxpr(vjp_of_eqn)(*specs))
        ```
    """
    from jax.interpreters import partial_eval as pe
    jaxpr, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars), instantiate=True)
    return closed.replace(jaxpr=jaxpr)


# jax.sharding.reshard from JAX 0.7; jax.experimental.shard.reshard in 0.6.
if hasattr(jax.sharding, "reshard"):
    _reshard = jax.sharding.reshard
else:
    from jax.experimental.shard import reshard as _reshard
