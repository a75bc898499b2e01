"""A reversible transformer block (Reformer, Kitaev et al. 2020; Rev-ViT,
Mangalam et al. 2022), in plain ``jax.numpy``.

The features are two streams of ``d_model`` each; attention and the MLP are
the two residual functions of a RevNet coupling:
```python
y1 = x1 + Attention(LayerNorm(x2))
y2 = x2 + MLP(LayerNorm(y1))
```

jaxinv inverts it as written: ``MLP(LayerNorm(y1))`` is recomputed from the
known ``y1``, subtracted to give ``x2``, then the attention branch is
recomputed from ``x2`` to give ``x1``. Nothing inside attention or the MLP is
ever inverted (softmax, GELU and the normalisation are not injective, and need
not be), so a stack keeps only its parameters and outputs.

Example:
    ```python
    block = ReversibleTransformerBlock(d_model=32, n_heads=4, d_ff=64)
    x = jnp.zeros((2, 10, 64))                    # (batch, seq, 2 * d_model)
    params = block.init(jax.random.PRNGKey(0), x)
    y = block.apply(params, x)
    ```
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from jaxinv.nn.base import Layer, Params

__all__ = ["ReversibleTransformerBlock", "layer_norm", "multi_head_attention"]


def layer_norm(params: Params, x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Layer normalisation over the last axis; ``params = (scale, bias)``.

    Example:
        ```python
        d = 8
        y = layer_norm((jnp.ones(d), jnp.zeros(d)), x)      # x: (..., 8)
        ```
    """
    scale, bias = params
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def multi_head_attention(params: Params, x: jax.Array, n_heads: int, causal: bool = False) -> jax.Array:
    """Multi-head self-attention on ``x`` of shape ``(batch, seq, d)``;
    ``params = {"wq", "wk", "wv", "wo": (d, d) matrices}``.

    Example:
        ```python
        ks = jax.random.split(jax.random.PRNGKey(0), 4)
        p = {n: jax.random.normal(k, (16, 16)) / 4 for n, k in zip(("wq", "wk", "wv", "wo"), ks)}
        y = multi_head_attention(p, jnp.ones((2, 5, 16)), n_heads=4, causal=True)   # (2, 5, 16)
        ```
    """
    b, s, d = x.shape
    if d % n_heads:
        raise ValueError(f"d_model={d} is not divisible by n_heads={n_heads}")
    dh = d // n_heads
    heads = lambda w: (x @ w).reshape(b, s, n_heads, dh)
    q, k, v = heads(params["wq"]), heads(params["wk"]), heads(params["wv"])
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh)
    if causal:
        mask = jnp.tril(jnp.ones((s, s), bool))
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, s, d)
    return out @ params["wo"]


@dataclasses.dataclass(frozen=True)
class ReversibleTransformerBlock(Layer):
    """A reversible pre-LayerNorm transformer block on ``x`` of shape
    ``(batch, seq, 2 * d_model)``: the last axis holds the two streams
    ``(x1, x2)``;

        y1 = x1 + MHSA(LN1(x2)),    y2 = x2 + MLP(LN2(y1)),    log|det| = 0,

    with ``n_heads`` attention heads (``causal=True`` masks future positions)
    and an MLP ``d_model -> d_ff -> d_model`` with ``activation`` (GELU).
    The inverse is ``x2 = y2 - MLP(LN2(y1))``, ``x1 = y1 - MHSA(LN1(x2))``.
    Params: ``{"ln1": (scale, bias), "attn": {"wq", "wk", "wv", "wo"},
    "ln2": (scale, bias), "mlp": ((w1, b1), (w2, b2))}``, in ``x``'s dtype;
    ``out_scale`` multiplies the init of the output projections (``wo`` and
    ``w2``): smaller values keep a deep stack near the identity at first.

    To feed a ``d_model`` sequence, duplicate it into both streams
    (``jnp.concatenate([h, h], -1)``), as Reformer and Rev-ViT do, and
    average the streams at the end.

    Example:
        ```python
        block = ReversibleTransformerBlock(d_model=16, n_heads=2, d_ff=32, causal=True)
        x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 32))
        params = block.init(jax.random.PRNGKey(0), x)
        y = block.apply(params, x)
        x_again = block.inverse(params, y)
        ```
    """
    d_model: int
    n_heads: int
    d_ff: int
    causal: bool = False
    activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu
    out_scale: float = 1.0

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")

    def _check(self, x):
        if x.ndim != 3 or x.shape[-1] != 2 * self.d_model:
            raise ValueError(f"ReversibleTransformerBlock(d_model={self.d_model}) expects x of shape "
                             f"(batch, seq, {2 * self.d_model}), got {x.shape}")

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        self._check(x)
        dtype, d, f = jnp.result_type(x), self.d_model, self.d_ff
        ks = jax.random.split(key, 6)
        normal = lambda k, shape, scale=1.0: scale * jax.random.normal(k, shape, dtype) / math.sqrt(shape[0])
        ln = lambda: (jnp.ones((d,), dtype), jnp.zeros((d,), dtype))
        return {
            "ln1": ln(),
            "attn": {"wq": normal(ks[0], (d, d)), "wk": normal(ks[1], (d, d)), "wv": normal(ks[2], (d, d)),
                     "wo": normal(ks[3], (d, d), self.out_scale)},
            "ln2": ln(),
            "mlp": ((normal(ks[4], (d, f)), jnp.zeros((f,), dtype)),
                    (normal(ks[5], (f, d), self.out_scale), jnp.zeros((d,), dtype))),
        }

    def attention(self, params: Params, h: jax.Array) -> jax.Array:
        """The residual function ``F(x2) = MHSA(LN1(x2))`` of one stream."""
        return multi_head_attention(params["attn"], layer_norm(params["ln1"], h), self.n_heads, self.causal)

    def mlp(self, params: Params, h: jax.Array) -> jax.Array:
        """The residual function ``G(y1) = MLP(LN2(y1))`` of one stream."""
        (w1, b1), (w2, b2) = params["mlp"]
        return self.activation(layer_norm(params["ln2"], h) @ w1 + b1) @ w2 + b2

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        self._check(x)
        x1, x2 = jnp.split(x, 2, axis=-1)
        y1 = x1 + self.attention(params, x2)
        y2 = x2 + self.mlp(params, y1)
        return jnp.concatenate([y1, y2], axis=-1)

    def inverse(self, params: Params, y: jax.Array) -> jax.Array:
        self._check(y)
        y1, y2 = jnp.split(y, 2, axis=-1)
        x2 = y2 - self.mlp(params, y1)
        x1 = y1 - self.attention(params, x2)
        return jnp.concatenate([x1, x2], axis=-1)

    def forward_and_log_det(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.apply(params, x), jnp.zeros(x.shape[:1], jnp.result_type(x))

    def inverse_and_log_det(self, params: Params, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.inverse(params, y), jnp.zeros(y.shape[:1], jnp.result_type(y))
