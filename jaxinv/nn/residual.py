"""Residual networks made reversible without rewriting them.

A residual network is a list of residual functions ``f_k`` applied as
``x <- x + f_k(x)``; it stores every ``x`` for the backward pass. Two
reversible forms run the *same* functions (the same parameters) so that
jaxinv rebuilds every activation from the output instead:

* the **momentum** form (MomentumNet, Sander et al. 2021), one residual
  function per step, with a velocity ``v`` (zero at the start):
  ```python
  v = gamma * v + (1 - gamma) * f(x)
  x = x + v
  ```
  inverted as ``x = x' - v'``, ``v = (v' - (1 - gamma) f(x)) / gamma``;
* the **RevNet** form (Gomez et al. 2017; Reformer), two residual functions
  per block (a transformer's attention and MLP branches) on two copies of the
  input, averaged at the end:
  ```python
  x1 = x1 + f(x2)
  x2 = x2 + g(x1)
  ```

A residual function is any callable ``x -> f(x)`` (``x`` an array or a
pytree of arrays, ``f(x)`` of the same structure and shapes): a function
closing over its parameters, an Equinox module, a Flax NNX module. Under ``jax.grad``,
``nnx.grad`` or ``eqx.filter_grad`` their parameters get gradients as usual;
the network's backward pass is jaxinv's (``jaxinv.invertible``), keeping
one activation and the parameters whatever the depth.

Example:
    ```python
    blocks = [lambda x, w=w: jnp.tanh(x @ w) for w in weights]   # x <- x + tanh(x @ w)
    net = jaxinv.nn.momentum_net(blocks, gamma=0.9)
    y = net(x)
    ```
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Collection, NamedTuple, Sequence

import jax
import jax.numpy as jnp

import jaxinv
from jaxinv.check import run_dtype
from jaxinv.nn.exact import BUFFER_BITS, check_exact_stream, onto_grid, shift_out, to_grid

__all__ = ["momentum_net", "reversible_blocks", "steps_between_anchors"]

Residual = Callable[[jax.Array], jax.Array]


def _check_gamma(gamma: Any) -> float:
    if isinstance(gamma, jax.Array) or not isinstance(gamma, numbers.Real):
        raise TypeError(f"gamma must be a Python float in (0, 1), got {type(gamma).__name__}: jaxinv divides by "
                        "it when it rebuilds a velocity, and only a constant is provably nonzero")
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}: gamma = 0 is a plain residual network "
                         "(not invertible), gamma = 1 ignores the residual functions")
    return float(gamma)


def _check_residuals(residuals: Sequence[Residual], what: str) -> list[Residual]:
    residuals = list(residuals)
    if not residuals:
        raise ValueError(f"{what} needs at least one residual function")
    for i, f in enumerate(residuals):
        if not callable(f):
            raise TypeError(f"{what}: residual function {i} is not callable: {f!r}")
    return residuals


def _check_anchor_every(anchor_every: int | str | None) -> int | str | None:
    if anchor_every not in (None, "auto") and (not isinstance(anchor_every, int) or anchor_every < 1):
        raise ValueError(f"anchor_every must be a positive int, 'auto' or None, got {anchor_every!r}")
    return anchor_every


def _check_keep_input(keep_input: Collection[int], n: int, what: str) -> frozenset[int]:
    """``keep_input`` as indices in ``range(n)`` (negative ones count from the end)."""
    if isinstance(keep_input, (int, str)) or not all(isinstance(i, int) for i in keep_input):
        raise TypeError(f"{what}: keep_input must be a collection of int indices, got {keep_input!r}")
    wrong = [i for i in keep_input if not -n <= i < n]
    if wrong:
        raise ValueError(f"{what}: keep_input indices {wrong} are out of range for {n} blocks")
    return frozenset(i % n for i in keep_input)


def steps_between_anchors(gamma: float, dtype: Any) -> int:
    """The most momentum steps whose rebuild may run between two stored states.

    Rebuilding a velocity divides by ``gamma``, so a rounding error of one
    ulp grows to ``gamma ** -k`` ulps over ``k`` steps. jaxinv allows that
    growth up to ``1 / sqrt(eps)`` of the dtype (about 2,900 in float32: the
    rebuilt values keep half their digits; 11 in bfloat16).

    Example:
        ```python
        steps_between_anchors(0.9, jnp.float32)    # 75
        steps_between_anchors(0.5, jnp.float32)    # 11
        ```
    """
    budget = 1.0 / math.sqrt(float(jnp.finfo(dtype).eps))
    return max(1, int(math.floor(math.log(budget) / math.log(1.0 / gamma))))


def _resolve_anchor_every(anchor_every, gamma: float, units: int, steps_per_unit: int, dtype) -> int | None:
    """``anchor_every`` in units (a unit: ``steps_per_unit`` momentum steps;
    ``"auto"``: as few anchors as keep every rebuilt segment within
    ``steps_between_anchors``); a refusal for a choice that would rebuild
    longer segments (a silently wrong gradient otherwise)."""
    limit = max(1, steps_between_anchors(gamma, dtype) // steps_per_unit)
    if anchor_every == "auto":
        return None if units <= limit else limit
    segment = min(anchor_every or units, units)
    if segment > limit:
        steps = segment * steps_per_unit
        growth = steps * math.log10(1.0 / gamma)   # gamma ** -steps, as a power of ten (it may overflow)
        raise ValueError(
            f"momentum_net with gamma={gamma} would rebuild {steps} steps between stored states in "
            f"{jnp.dtype(dtype).name}: rounding errors grow by gamma**-{steps} = "
            f"{10 ** (growth % 1):.1f}e+{int(growth):02d} there, and the gradient would be wrong. Use "
            f"anchor_every <= {limit} (or 'auto', the default), or a gamma nearer 1")
    return anchor_every


def _anchored(state, step: int, last: int, anchor_every: int | None):
    """``state`` stored (``jaxinv.anchor``) after every ``anchor_every``-th step but the last."""
    if anchor_every is not None and step % anchor_every == 0 and step < last:
        return jaxinv.anchor(state)
    return state


def _kept_if(run: Callable, keep: bool) -> Callable:
    return jaxinv.keep_input(run) if keep else run


class _Exact(NamedTuple):
    """Exact mode of a momentum network: the grid ``2 ** -bits``, ``gamma = 2 ** -shift``."""
    bits: int
    shift: int


def _check_exact(exact_bits: int | None, gamma: float) -> _Exact | None:
    if exact_bits is None:
        return None
    if not isinstance(exact_bits, int) or exact_bits < 0:
        raise ValueError(f"momentum_net: exact_bits must be a non-negative int, got {exact_bits!r}")
    shift = -math.log2(gamma)
    if not shift.is_integer():
        raise ValueError(f"momentum_net: exact mode needs gamma a power of two (0.5, 0.25, ...), got {gamma}: "
                         "then gamma * v is exact, and the bits it drops below the grid are kept")
    return _Exact(exact_bits, int(shift))


def _momentum_unit(residuals: Sequence[Residual], gamma: float, exact: _Exact | None, x, v, buffer):
    """The momentum steps of one unit (one residual function, or a block's two).
    In exact mode, ``v`` and ``x`` stay on the grid and ``buffer`` (uint32 per
    element) keeps the bits ``gamma * v`` drops."""
    for f in residuals:
        fx = f(x)
        if jax.tree.structure(fx) != jax.tree.structure(x) or any(
                jnp.shape(a) != jnp.shape(b) for a, b in zip(jax.tree.leaves(fx), jax.tree.leaves(x))):
            raise ValueError(f"a residual function must keep its input's shape: {jax.tree.map(jnp.shape, x)} became "
                             f"{jax.tree.map(jnp.shape, fx)} ({f!r})")
        if exact is None:
            v = jax.tree.map(lambda v, fx: gamma * v + (1.0 - gamma) * fx, v, fx)
        else:
            v, buffer = _exact_velocity(v, fx, buffer, gamma, exact)
        x = jax.tree.map(jnp.add, x, v)
    return x, v, buffer


def _exact_velocity(v, fx, buffer, gamma: float, exact: _Exact):
    """``gamma * v + (1 - gamma) * f(x)`` on the grid: the first term rounded
    down with its lost bits pushed into ``buffer``, the second rounded."""
    leaves, tree = jax.tree.flatten(v)
    push = shift_out(exact.bits, exact.shift)
    pairs = [push(gamma * a, b) for a, b in zip(leaves, tree.flatten_up_to(buffer))]
    kept, buffer = tree.unflatten([k for k, _ in pairs]), tree.unflatten([b for _, b in pairs])
    step = jax.tree.map(lambda fx, v: to_grid(((1.0 - gamma) * fx).astype(v.dtype), exact.bits), fx, v)
    return jax.tree.map(jnp.add, kept, step), buffer


def _least_precise(x) -> Any:
    """The float dtype of ``x``'s leaves with the fewest mantissa bits (what bounds
    a rebuild; the checked run's while ``check_reconstruction`` traces its reference)."""
    floats = [jnp.result_type(a) for a in jax.tree.leaves(x) if jnp.issubdtype(jnp.result_type(a), jnp.floating)]
    if not floats:
        raise TypeError("momentum_net needs floating-point inputs")
    return run_dtype(max(floats, key=lambda d: float(jnp.finfo(d).eps)))


def _run(fn: Callable, reversible: bool) -> Callable:
    return jaxinv.invertible(fn) if reversible else fn


def momentum_net(residuals: Sequence[Residual], gamma: float = 0.9, *, reversible: bool = True,
                 anchor_every: int | str | None = "auto", keep_input: Collection[int] = (),
                 exact_bits: int | None = None, return_velocity: bool = False) -> Callable[..., Any]:
    """A momentum residual network (MomentumNet) running ``residuals`` in order.

    Each step is ``v = gamma * v + (1 - gamma) * f(x); x = x + v``, with
    ``v`` zero at the start (or ``net(x, v)``). With ``gamma`` near 0 it is
    the residual network ``x + f(x)`` it is built from; any ``gamma`` in
    (0, 1) makes it invertible, so ``jax.grad`` (and ``nnx.grad``,
    ``eqx.filter_grad``) keep one activation whatever the depth. Rebuilding
    ``v`` divides by ``gamma`` once per step: rounding errors grow like
    ``gamma ** -depth`` (``jaxinv.check_reconstruction`` measures it), so keep
    ``gamma`` near 1 in deep networks. ``anchor_every=k`` stores the state
    every ``k`` steps (``jaxinv.anchor``): the
    rebuild restarts from exact values there, for one stored ``(x, v)`` each.
    The default, ``"auto"``, stores as few as keep the growth within
    ``steps_between_anchors(gamma, dtype)`` (75 steps at ``gamma=0.9`` in
    float32, none below that depth); a ``k``, or ``None`` (never), that would
    exceed it is refused rather than give a wrong gradient.
    ``keep_input=(i, ...)`` stores the state before step ``i`` and lets JAX
    differentiate that step (``jaxinv.keep_input``): plain AD for those steps.
    ``exact_bits=b`` (with ``gamma`` a power of two: 0.5, 0.25, ...) is exact
    mode (``jaxinv.nn.exact``): ``x`` and ``v`` stay on the grid of multiples
    of ``2 ** -b`` and are rebuilt bit for bit at any depth, no anchors
    needed; the bits ``gamma * v`` drops below the grid are kept in a buffer
    (MacKay et al. 2018), ``log2(1 / gamma)`` bits per element per step
    (1/64 of storing the float32 state ``(x, v)`` at ``gamma=0.5``).
    ``reversible=False`` runs the same network with plain AD (for debugging
    against it; ``jaxinv.disabled`` does it without touching the code).
    ``return_velocity=True`` returns ``(x, v)``.

    Example:
        ```python
        blocks = [eqx.nn.MLP(16, 16, 32, 1, key=k) for k in jax.random.split(key, 8)]
        net = jaxinv.nn.momentum_net(blocks, gamma=0.9)
        y = net(x)
        loss = lambda blocks, x: jnp.sum(jaxinv.nn.momentum_net(blocks, 0.9)(x) ** 2)
        grads = eqx.filter_grad(loss)(blocks, x)        # the blocks' parameters get their gradients
        ```
    """
    residuals = _check_residuals(residuals, "momentum_net")
    keep = _check_keep_input(keep_input, len(residuals), "momentum_net")
    gamma = _check_gamma(gamma)
    return _momentum([[f] for f in residuals], gamma, reversible=reversible,
                     anchor_every=_check_anchor_every(anchor_every), keep=keep, exact=_check_exact(exact_bits, gamma),
                     return_velocity=return_velocity)


def _momentum(units: list[list[Residual]], gamma: float, *, reversible: bool, anchor_every, keep: frozenset[int],
              exact: _Exact | None = None, return_velocity: bool = False) -> Callable[..., Any]:
    """A momentum network over ``units`` (each one or more residual functions,
    anchored and kept as a whole); ``anchor_every`` counts units."""

    def net(x, v=None):
        x = jax.tree.map(jnp.asarray, x)
        given = () if v is None else (jax.tree.map(lambda v, x: jnp.asarray(v, x.dtype), v, x),)
        if exact is None:
            every = _resolve_anchor_every(anchor_every, gamma, len(units), len(units[0]), _least_precise(x))
        else:   # nothing drifts: anchors only where asked; the stream enters on the grid
            for leaf in jax.tree.leaves(x):
                check_exact_stream(leaf, exact.bits, "momentum_net")
            every = None if anchor_every == "auto" else anchor_every
            x, given = jax.tree.map(lambda a: onto_grid(a, exact.bits), (x, given))

        def steps(x, v=None):
            v = jax.tree.map(jnp.zeros_like, x) if v is None else v    # zeros: a constant, nothing to rebuild
            buffer, used = None, BUFFER_BITS
            for i, unit in enumerate(units):
                if exact is not None and used + exact.shift * len(unit) > BUFFER_BITS:
                    buffer, used = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.uint32), x), 0   # a full one is kept
                x, v, buffer = _kept_if(functools.partial(_momentum_unit, unit, gamma, exact), i in keep)(x, v, buffer)
                used += 0 if exact is None else exact.shift * len(unit)
                x, v = _anchored((x, v), i + 1, len(units), every)
            return (x, v) if return_velocity else x

        return _run(steps, reversible)(x, *given)

    return net


def reversible_blocks(blocks: Sequence[Any], branches: Callable[[Any], tuple[Residual, Residual]], *,
                      form: str = "revnet", gamma: float = 0.9, reversible: bool = True,
                      anchor_every: int | str | None = "auto", keep_input: Collection[int] = ()) -> Callable[..., Any]:
    """A stack of two-branch residual blocks (a transformer's ``x + attn(x)``,
    then ``+ mlp(.)``) run in a reversible form, with the blocks' own parameters.

    ``branches(block) -> (f, g)`` names a block's two residual functions: for
    a pre-LayerNorm transformer block, ``f = lambda x: block.attn(block.ln1(x))``
    and ``g = lambda x: block.mlp(block.ln2(x))``. ``form="revnet"`` runs
    ``x1 = x1 + f(x2); x2 = x2 + g(x1)`` on two copies of the input and
    returns their mean (Reformer's recipe); ``form="momentum"`` runs
    ``f, g, f, g, ...`` as momentum steps (``momentum_net``). Either way the
    network's backward pass rebuilds its activations, so its memory is flat in
    depth; ``anchor_every=k`` stores the state after every ``k`` blocks (drift
    bounded by ``k`` blocks; ``"auto"``: none in the RevNet form, whose rebuild
    only subtracts, and ``momentum_net``'s choice in the momentum form);
    ``keep_input=(i, ...)`` stores the input of block ``i`` and lets JAX
    differentiate that block (``jaxinv.keep_input``: plain AD there);
    ``reversible=False`` runs the same form with plain AD.

    Example:
        ```python
        body = jaxinv.nn.reversible_blocks(model.blocks, lambda b: (lambda x: b.attn(b.ln1(x)),
                                                                    lambda x: b.mlp(b.ln2(x))))
        h = body(model.embed(tokens))
        ```
    """
    if form not in ("revnet", "momentum"):
        raise ValueError(f"form must be 'revnet' or 'momentum', got {form!r}")
    pairs = [tuple(branches(b)) for b in blocks]
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"branches(block) must return two residual functions (f, g); block {i} gave {len(pair)}")
    _check_residuals([r for pair in pairs for r in pair], "reversible_blocks")
    keep = _check_keep_input(keep_input, len(pairs), "reversible_blocks")
    anchor_every = _check_anchor_every(anchor_every)
    if form == "momentum":  # f and g as two momentum steps of one unit
        return _momentum([list(pair) for pair in pairs], _check_gamma(gamma), reversible=reversible,
                         anchor_every=anchor_every, keep=keep)
    anchor_every = None if anchor_every == "auto" else anchor_every

    def coupling(f, g, x1, x2):
        x1 = jax.tree.map(jnp.add, x1, f(x2))
        return x1, jax.tree.map(jnp.add, x2, g(x1))

    def couple(x):
        x1 = x2 = x
        for i, (f, g) in enumerate(pairs):
            x1, x2 = _kept_if(functools.partial(coupling, f, g), i in keep)(x1, x2)
            x1, x2 = _anchored((x1, x2), i + 1, len(pairs), anchor_every)
        return jax.tree.map(lambda a, b: (a + b) / 2, x1, x2)

    def net(x):
        return _run(couple, reversible)(jax.tree.map(jnp.asarray, x))

    return net
