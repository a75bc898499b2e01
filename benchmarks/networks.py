"""The benchmarked networks: stacks of ``depth`` identical invertible blocks.

Each network is a :class:`Network`: a block ``block(p, carry) -> carry`` run
``depth`` times, unrolled (a Python loop over a tuple of block params) or with
``lax.scan`` (params stacked along a leading ``depth`` axis); a scalar loss of the stack's output; and the block
run backwards by hand, ``reverse(p, carry_out, ct_out) -> (carry_in, dp,
ct_in)``, for the hand-fused baseline (see ``methods.py``). The forward code
is plain JAX: jaxinv sees nothing but what ``jax.grad`` sees. A network built
by one of ``jaxinv.nn``'s functions (``momentum_net``, ``reversible_blocks``,
with ``reversible=False``: plain JAX again) gives its own ``stack``; its
``block`` is then one residual function, and it has no hand-fused backward.

Example::

    net = revnet_mlp(depth=16, scan=False)
    params, x = net.init(jax.random.PRNGKey(0))
    loss = net.loss(params, x)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxinv.nn import (MLP, ActNorm, AffineCoupling, InvertibleDense, momentum_net, onto_grid, reversible_blocks,
                       steps_between_anchors, to_grid)
from jaxinv.nn.transformer import layer_norm, multi_head_attention

Params = Any


@dataclasses.dataclass(frozen=True)
class Network:
    """A stack of ``depth`` blocks (see the module docstring)."""
    name: str
    depth: int
    scan: bool
    init_block: Callable[[jax.Array], Params]        # key -> one block's params
    block: Callable[[Params, Any], Any]               # (p, carry) -> carry
    reverse: Callable[[Params, Any, Any], tuple] | None   # (p, carry_out, ct_out) -> (carry_in, dp, ct_in)
    input_shape: tuple[int, ...]
    to_carry: Callable[[jax.Array], Any]              # input -> first carry
    objective: Callable[[Any], jax.Array]             # last carry -> scalar loss
    stack: Callable[[Params, Any, Callable], Any] | None = None   # (params, carry, block) -> carry, if not a loop

    @property
    def label(self) -> str:
        return f"{self.name} ({'scan' if self.scan else 'unrolled'})"

    def init(self, key: jax.Array) -> tuple[Params, jax.Array]:
        """The params and an input batch. Scanned: one pytree stacked along a
        leading ``depth`` axis; unrolled: a tuple of ``depth`` block params."""
        k_params, k_x = jax.random.split(key)
        params = jax.vmap(self.init_block)(jax.random.split(k_params, self.depth))
        if not self.scan:
            params = tuple(jax.tree_util.tree_map(lambda a: a[i], params) for i in range(self.depth))
        return params, jax.random.normal(k_x, self.input_shape, jnp.float32)

    def run(self, params: Params, carry, block=None):
        """The stack forward, from a carry to a carry (``block`` overrides the block,
        e.g. with ``jax.checkpoint(net.block)``)."""
        block = block or self.block
        if self.stack is not None:
            return self.stack(params, carry, block)
        if self.scan:
            carry, _ = lax.scan(lambda c, p: (block(p, c), None), carry, params)
            return carry
        for p in params:
            carry = block(p, carry)
        return carry

    def loss(self, params: Params, x: jax.Array, block=None) -> jax.Array:
        return self.objective(self.run(params, self.to_carry(x), block))


# ------------------------------------------------------------------ additive couplings


def _dense_init(key, n_in, n_out, scale=1.0):
    return (jax.random.normal(key, (n_in, n_out), jnp.float32) * (scale / math.sqrt(n_in)),
            jnp.zeros((n_out,), jnp.float32))


def _coupling_block(F: Callable, G: Callable) -> Callable:
    """RevNet's block (Gomez et al. 2017): ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``."""
    def block(p, carry):
        x1, x2 = carry
        y1 = x1 + F(p["F"], x2)
        return y1, x2 + G(p["G"], y1)
    return block


def _coupling_reverse(F: Callable, G: Callable) -> Callable:
    """The block backwards, fused by hand: each residual function is evaluated
    once, and that evaluation both rebuilds the input and gives its VJP."""
    def reverse(p, carry, ct):
        y1, y2 = carry
        dy1, dy2 = ct
        g, g_vjp = jax.vjp(G, p["G"], y1)
        x2 = y2 - g
        dG, dy1_from_g = g_vjp(dy2)
        dz1 = dy1 + dy1_from_g
        f, f_vjp = jax.vjp(F, p["F"], x2)
        x1 = y1 - f
        dF, dx2_from_f = f_vjp(dz1)
        return (x1, x2), {"F": dF, "G": dG}, (dz1, dy2 + dx2_from_f)
    return reverse


def _split(x):
    return tuple(jnp.split(x, 2, axis=-1))


def _mean_square(carry) -> jax.Array:
    return sum(jnp.mean(jnp.square(c)) for c in carry)


def _mlp(p, h):
    (w1, b1), (w2, b2) = p
    return jnp.tanh(h @ w1 + b1) @ w2 + b2


def revnet_mlp(depth: int, scan: bool, batch: int = 128, width: int = 128, hidden: int = 128,
               exact_bits: int | None = None) -> Network:
    """A RevNet of additive couplings whose residual functions are one-hidden-layer
    MLPs (``width/2 -> hidden -> width/2``, tanh), on ``(batch, width)`` inputs.
    ``exact_bits``: exact mode (``jaxinv.nn.exact``), the residual functions'
    outputs and the input rounded to that grid."""
    half = width // 2
    mlp = _mlp if exact_bits is None else (lambda p, h: to_grid(_mlp(p, h), exact_bits))
    name = "RevNet MLP" if exact_bits is None else f"RevNet MLP, exact_bits={exact_bits}"

    def init_block(key):
        k = jax.random.split(key, 4)
        # the last layer is scaled down so that a deep stack stays well conditioned
        return {"F": (_dense_init(k[0], half, hidden), _dense_init(k[1], hidden, half, 0.1)),
                "G": (_dense_init(k[2], half, hidden), _dense_init(k[3], hidden, half, 0.1))}

    to_carry = _split if exact_bits is None else (lambda x: _split(onto_grid(x, exact_bits)))
    return Network(name, depth, scan, init_block, _coupling_block(mlp, mlp),
                   _coupling_reverse(mlp, mlp), (batch, width), to_carry, _mean_square)


def momentum_mlp(depth: int, scan: bool = False, batch: int = 128, width: int = 128, hidden: int = 128,
                 gamma: float = 0.9, exact_bits: int | None = None) -> Network:
    """``jaxinv.nn.momentum_net`` over one-hidden-layer MLPs (``width -> hidden
    -> width``, tanh): ``v = gamma v + (1 - gamma) f(x); x = x + v``, its
    automatic anchors included (``exact_bits``: exact mode, no anchors)."""
    if scan:
        raise ValueError("momentum_net runs a list of residual functions: unrolled only")

    def init_block(key):
        k = jax.random.split(key)
        return (_dense_init(k[0], width, hidden), _dense_init(k[1], hidden, width, 0.1))

    def stack(params, carry, block):
        residuals = [functools.partial(block, p) for p in params]
        return momentum_net(residuals, gamma, reversible=False, exact_bits=exact_bits, return_velocity=True)(*carry)

    def reverse(p, carry, ct):
        """A step backwards, fused by hand: ``x = x' - v'``, then one MLP
        evaluation gives ``v = (v' - (1 - gamma) f(x)) / gamma`` and the VJP."""
        (x, v), (dx, dv) = carry, ct
        x = x - v
        f, f_vjp = jax.vjp(_mlp, p, x)
        dv = dv + dx                                       # x' = x + v'
        dp, dx_from_f = f_vjp((1.0 - gamma) * dv)
        return (x, (v - (1.0 - gamma) * f) / gamma), dp, (dx + dx_from_f, gamma * dv)

    # the hand-fused backward has no anchors nor lost bits: where momentum_net needs neither
    by_hand = reverse if exact_bits is None and depth <= steps_between_anchors(gamma, jnp.float32) else None
    name = f"MomentumNet MLP, gamma={gamma}" + ("" if exact_bits is None else f", exact_bits={exact_bits}")
    return Network(name, depth, False, init_block, _mlp, by_hand, (batch, width), lambda x: (x, jnp.zeros_like(x)),
                   lambda carry: jnp.mean(jnp.square(carry[0])), stack=stack)


def reversible_transformer(depth: int, scan: bool = True, batch: int = 8, seq: int = 64, d_model: int = 64,
                           n_heads: int = 4, d_ff: int = 128) -> Network:
    """Reformer / Rev-ViT blocks: ``F`` = attention of a LayerNorm, ``G`` = an MLP
    of a LayerNorm, on ``(batch, seq, 2 * d_model)`` inputs."""

    def attention(p, h):
        return multi_head_attention(p["attn"], layer_norm(p["ln"], h), n_heads)

    def mlp(p, h):
        (w1, b1), (w2, b2) = p["mlp"]
        return jax.nn.gelu(layer_norm(p["ln"], h) @ w1 + b1) @ w2 + b2

    def init_block(key):
        k = jax.random.split(key, 6)
        ln = (jnp.ones((d_model,), jnp.float32), jnp.zeros((d_model,), jnp.float32))
        attn = {n: jax.random.normal(kk, (d_model, d_model), jnp.float32) / math.sqrt(d_model)
                for n, kk in zip(("wq", "wk", "wv"), k[:3])}
        attn["wo"] = jax.random.normal(k[3], (d_model, d_model), jnp.float32) * (0.1 / math.sqrt(d_model))
        return {"F": {"ln": ln, "attn": attn},
                "G": {"ln": ln, "mlp": (_dense_init(k[4], d_model, d_ff), _dense_init(k[5], d_ff, d_model, 0.1))}}

    return Network("Reversible transformer", depth, scan, init_block, _coupling_block(attention, mlp),
                   _coupling_reverse(attention, mlp), (batch, seq, 2 * d_model), _split, _mean_square)


def converted_transformer(depth: int, scan: bool = False, batch: int = 8, seq: int = 64, d_model: int = 64,
                          n_heads: int = 4, d_ff: int = 128) -> Network:
    """A pre-LayerNorm transformer's blocks (``x + attn(ln(x))``, then ``+
    mlp(ln(.))``) converted by ``jaxinv.nn.reversible_blocks`` to the RevNet
    form (two copies of the input, averaged at the end), on ``(batch, seq,
    d_model)`` inputs. Its ``block`` is one residual branch."""
    if scan:
        raise ValueError("reversible_blocks runs a list of blocks: unrolled only")
    init_block = reversible_transformer(1, d_model=d_model, d_ff=d_ff).init_block   # the same branches' params

    def branch(p, h):
        if "attn" in p:
            return multi_head_attention(p["attn"], layer_norm(p["ln"], h), n_heads)
        (w1, b1), (w2, b2) = p["mlp"]
        return jax.nn.gelu(layer_norm(p["ln"], h) @ w1 + b1) @ w2 + b2

    def stack(params, x, block):
        branches = lambda p: (functools.partial(block, p["F"]), functools.partial(block, p["G"]))
        return reversible_blocks(params, branches, reversible=False)(x)

    return Network("Converted transformer (reversible_blocks)", depth, False, init_block, branch, None,
                   (batch, seq, d_model), lambda x: x, lambda x: jnp.mean(jnp.square(x)), stack=stack)


# ------------------------------------------------------------------ Glow-style flow


def glow_flow(depth: int, scan: bool = True, batch: int = 256, width: int = 64, hidden: int = 128) -> Network:
    """Glow steps (Kingma & Dhariwal 2018) from :mod:`jaxinv.nn`: ActNorm, an
    invertible dense layer (LU), an affine coupling (sigmoid scale); the loss is
    the negative log-likelihood under a standard normal base. The carry is
    ``(h, log_det)``."""
    half = width // 2
    conditioner = MLP((hidden,), 2 * (width - half), last_scale=0.1)
    layers = (ActNorm(), InvertibleDense(width), AffineCoupling(conditioner))

    def init_block(key):
        x = jnp.zeros((2, width), jnp.float32)
        params = [layer.init(k, x) for layer, k in zip(layers, jax.random.split(key, 3))]
        # ActNorm's data-dependent init needs data: start it at the identity here
        params[0] = jax.tree_util.tree_map(jnp.zeros_like, params[0])
        return tuple(params)

    def block(p, carry):
        h, total = carry
        for layer, q in zip(layers, p):
            h, ld = layer.forward_and_log_det(q, h)
            total = total + ld
        return h, total

    def coupling_reverse(p, y, dy, dtotal):
        # one conditioner evaluation, on y1 = x1, rebuilds x2 and gives the VJP
        y1, y2 = y[..., :half], y[..., half:]
        h, conditioner_vjp = jax.vjp(conditioner.apply, p["conditioner"], y1)
        shift, raw = jnp.split(h, 2, axis=-1)

        def affine(x2, shift, raw):
            return x2 * jax.nn.sigmoid(raw + 2.0) + shift, jnp.sum(jax.nn.log_sigmoid(raw + 2.0), axis=-1)

        x2 = (y2 - shift) / jax.nn.sigmoid(raw + 2.0)
        (_, log_det), affine_vjp = jax.vjp(affine, x2, shift, raw)
        dx2, dshift, draw = affine_vjp((dy[..., half:], dtotal))
        dp, dy1 = conditioner_vjp(jnp.concatenate([dshift, draw], axis=-1))
        x = jnp.concatenate([y1, x2], axis=-1)
        return x, log_det, jnp.concatenate([dy[..., :half] + dy1, dx2], axis=-1), {"conditioner": dp}

    def dense_reverse(p, y, dy, dtotal):
        # W and its log-det are built once; x = y W^-1 (inverting the 64 x 64 W
        # and multiplying is 2.6x faster on CPU than an LU solve with 256
        # right-hand sides); the VJP of y = x W by hand: dx = dy W^T, dW = x^T dy.
        dense = layers[1]
        (w, log_det), weight_vjp = jax.vjp(lambda q: (dense.weight(q), jnp.sum(dense.factors(q)[2])), p)
        x = y @ jnp.linalg.inv(w)
        (dp,) = weight_vjp((x.T @ dy, jnp.sum(dtotal)))
        return x, log_det, dy @ w.T, dp

    def reverse(p, carry, ct):
        h, total = carry
        dh, dtotal = ct
        grads = [None] * 3
        h, log_det, dh, grads[2] = coupling_reverse(p[2], h, dh, dtotal)
        total = total - log_det
        h, log_det, dh, grads[1] = dense_reverse(p[1], h, dh, dtotal)
        total = total - log_det
        # ActNorm: invert, then its (elementwise) VJP at the rebuilt input
        h, ild = layers[0].inverse_and_log_det(p[0], h)
        _, vjp = jax.vjp(layers[0].forward_and_log_det, p[0], h)
        grads[0], dh = vjp((dh, dtotal))
        return (h, total + ild), tuple(grads), (dh, dtotal)

    def objective(carry):
        z, log_det = carry
        return jnp.mean(0.5 * jnp.sum(jnp.square(z), axis=-1) - log_det)

    return Network("Glow flow", depth, scan, init_block, block, reverse, (batch, width),
                   lambda x: (x, jnp.zeros(x.shape[:1], x.dtype)), objective)


NETWORKS = {
    "revnet_mlp": revnet_mlp,
    "momentum_mlp": momentum_mlp,
    "transformer": reversible_transformer,
    "converted_transformer": converted_transformer,
    "glow": glow_flow,
}
