"""The gradient methods compared, each as ``loss -> vjp`` builders over one network.

Every method returns the gradient of ``net.loss`` with respect to the params:

- ``jax.grad``: plain reverse mode, every activation stored;
- ``jax.checkpoint``: each block wrapped in ``jax.checkpoint`` (its inputs stored,
  its inside recomputed in the backward pass);
- ``jaxinv.grad``: jaxinv's reversible backward pass;
- ``jaxinv.invertible``: ``jax.grad`` of the stack wrapped in ``jaxinv.invertible``;
- ``hand-fused``: the reversible backward written by hand for this network
  (``Network.reverse``): each block is rebuilt from its output and the values of
  that rebuild give its VJP, with no extra forward pass. The limit of the approach.

Example::

    grad = METHODS["jaxinv.grad"].grad(net)
    g = jax.jit(grad)(params, x)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

import jaxinv

from benchmarks.networks import Network


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    # net -> (params, x) -> (loss, vjp_fn): vjp_fn(1.0) = (d params,)
    vjp: Callable[[Network], Callable]
    # net -> (params, x) -> d params; default: from ``vjp``
    make_grad: Callable[[Network], Callable] | None = None

    def grad(self, net: Network) -> Callable:
        """``(params, x) -> d loss / d params``."""
        if self.make_grad is not None:
            return self.make_grad(net)

        def grad(params, x):
            loss, vjp_fn = self.vjp(net)(params, x)
            return vjp_fn(jnp.ones_like(loss))[0]
        return grad


def _plain(net):
    return lambda params, x: jax.vjp(lambda p: net.loss(p, x), params)


def _checkpoint(net):
    block = jax.checkpoint(net.block)
    return lambda params, x: jax.vjp(lambda p: net.loss(p, x, block), params)


def _jaxinv_vjp(net):
    return lambda params, x: jaxinv.vjp(lambda p: net.loss(p, x), params)


def _jaxinv_invertible(net):
    stack = jaxinv.invertible(net.run)
    return lambda params, x: jax.vjp(lambda p: net.objective(stack(p, net.to_carry(x))), params)


def _hand_fused(net):
    stack = hand_fused_stack(net)
    return lambda params, x: jax.vjp(lambda p: net.objective(stack(p, net.to_carry(x))), params)


def hand_fused_stack(net: Network) -> Callable:
    """``net.run`` with a hand-written reversible backward pass (a ``jax.custom_vjp``
    that keeps only the params and the output)."""

    @jax.custom_vjp
    def stack(params, carry):
        return net.run(params, carry)

    def fwd(params, carry):
        out = net.run(params, carry)
        return out, (params, out)

    def bwd(res, ct):
        params, carry = res
        if net.scan:
            def step(state, p):
                carry, ct = state
                carry, dp, ct = net.reverse(p, carry, ct)
                return (carry, ct), dp
            (_, ct), grads = lax.scan(step, (carry, ct), params, reverse=True)
            return grads, ct
        grads = []
        for p in reversed(params):
            carry, dp, ct = net.reverse(p, carry, ct)
            grads.append(dp)
        return tuple(grads[::-1]), ct

    stack.defvjp(fwd, bwd)
    return stack


METHODS = {m.name: m for m in [
    Method("jax.grad", _plain),
    Method("jax.checkpoint", _checkpoint),
    Method("jaxinv.grad", _jaxinv_vjp, lambda net: jaxinv.grad(net.loss)),
    Method("jaxinv.invertible", _jaxinv_invertible),
    Method("hand-fused", _hand_fused),
]}
