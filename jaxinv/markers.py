"""``jaxinv.nonzero``, ``jaxinv.anchor``, ``jaxinv.keep_input``: markers that tell the planner something.

``jaxinv.nonzero``: the user's promise that a value is safe to divide by.
jaxinv inverts ``y = x * s`` as ``x = y / s`` only when it can prove ``s``
nonzero (literals without zeros, outputs of ``exp`` or ``logistic``): dividing
by a zero would turn a finite gradient into NaN. ``nonzero(s)`` is the identity
function that records the promise; for a square matrix used in ``dot_general``
it promises the matrix is nonsingular.

``jaxinv.anchor``: a value the reversible backward pass stores instead of
rebuilding, so reconstruction drift restarts from an exact value there
(docs/numerics.md).

``jaxinv.keep_input``: a function (a block) that the reversible backward pass
never inverts: its input is stored and its gradient is JAX's own (MemCNN's
``keep_input``; also how to turn reversibility off for one block).
"""

from __future__ import annotations

import functools

import jax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir


def _identity_marker(name: str) -> Primitive:
    """An identity primitive that JAX's transformations see through (impl,
    shape, JVP, batching, lowering); jaxinv's rules give it its meaning."""
    p = Primitive(name)
    p.def_impl(lambda x: x)
    p.def_abstract_eval(lambda aval: aval)
    ad.primitive_jvps[p] = lambda primals, tangents: (p.bind(*primals), tangents[0])
    batching.primitive_batchers[p] = lambda args, dims: (p.bind(*args), dims[0])
    mlir.register_lowering(p, mlir.lower_fun(lambda x: x, multiple_results=False))
    return p


nonzero_p = _identity_marker("jaxinv_nonzero")


def nonzero(x):
    """Return ``x`` unchanged, marked as nonzero (or nonsingular) for jaxinv.

    Example:
        ```python
        scale = jaxinv.nonzero(1.0 + jax.nn.softplus(s))
        y = x * scale          # jaxinv now rebuilds x = y / scale
        ```
    """
    return jax.tree_util.tree_map(nonzero_p.bind, x)



# ---------------------------------------------------------------- anchors

anchor_p = _identity_marker("jaxinv_anchor")


def anchor(x):
    """Return ``x`` unchanged, stored by jaxinv's backward pass instead of rebuilt.

    Reconstruction rounds at every block, so the rebuilt activations (and the
    gradient) drift from the true ones as depth grows. At an anchor the
    backward pass restarts from the exact stored value: drift is bounded by the
    blocks between two anchors, at the cost of one stored activation per anchor.
    ``anchor`` has no inverse rule on purpose: the planner saves its input.

    Example:
        ```python
        for i in range(depth):
            x = block(params[i], x)
            if (i + 1) % 10 == 0:
                x = jaxinv.anchor(x)     # store every 10th activation
        ```
    """
    return jax.tree_util.tree_map(anchor_p.bind, x)



# ---------------------------------------------------------------- kept inputs

keep_input_p = _identity_marker("jaxinv_keep_input")


def keep_input(f):
    """``f`` with its input stored by jaxinv's backward pass, and its gradient
    taken by JAX (plain AD), never by inverting ``f``.

    MemCNN's ``keep_input``, for any function of positional array (or pytree)
    arguments, invertible or not: the backward pass holds the block's input,
    runs ``f`` forward again from it and differentiates it as ``jax.grad``
    would (as ``jax.checkpoint`` does), and rebuilds the blocks before it
    starting from that exact value. It costs one stored input per call; it
    is also how to turn reversibility off for one block (to debug against
    plain AD, or to run a non-invertible block inside a reversible network).
    ``jaxinv.inverse`` inverts ``f`` as usual.

    Example:
        ```python
        def net(params, x):
            for i, p in enumerate(params):
                block = functools.partial(coupling, p)
                x = jaxinv.keep_input(block)(x) if i == 3 else block(x)   # block 3: plain AD
            return x
        g = jaxinv.grad(loss)(params, x)
        ```
    """
    @functools.wraps(f)
    def kept(*args, **kwargs):
        if kwargs:
            raise TypeError(f"jaxinv.keep_input({getattr(f, '__name__', f)!r}) takes positional arguments only, got "
                            f"keywords {sorted(kwargs)}: bind them first (functools.partial) or pass them in order")
        body, consts = jax.closure_convert(f, *args)   # f's closed-over arrays become arguments, with gradients
        return _kept_call(body, tuple(consts), args)
    return kept


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _kept_call(body, consts, args):
    # The marker names the inputs to store; with no inverse rule for gradients,
    # it makes the call one unit the planner cannot invert (see save_policy).
    return body(*jax.tree_util.tree_map(keep_input_p.bind, args), *consts)


@_kept_call.defjvp
def _kept_call_jvp(body, primals, tangents):
    return jax.jvp(lambda consts, args: body(*args, *consts), primals, tangents)
