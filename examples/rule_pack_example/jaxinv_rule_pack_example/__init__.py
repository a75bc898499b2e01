"""An example third-party rule pack for jaxinv.

It ships a primitive of its own, ``leaky_relu_p`` (JAX's ``jax.nn.leaky_relu``
is a ``select_n`` of two branches, which no per-primitive rule can invert), and
the rules that make it reversible:

* inverse: ``x = y`` where ``y >= 0``, else ``y / slope`` (``slope > 0``);
* fused ivjp: the cotangent is ``ct`` where ``y >= 0``, else ``slope * ct``,
  read off the output without rebuilding anything else.

The pack is published through the ``jaxinv.rule_packs`` entry point in this
project's ``pyproject.toml``; installing the distribution is all a user does.

Example::

    import jaxinv
    from jaxinv_rule_pack_example import leaky_relu
    jaxinv.grad(lambda x: leaky_relu(x, 0.1).sum())(x)
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxinv import Example, NotInvertibleError, RulePack
from jaxinv.domains import reals

__all__ = ["PACK", "leaky_relu", "leaky_relu_p"]

# ---------------------------------------------------------------- the primitive

leaky_relu_p = Primitive("leaky_relu")


def leaky_relu(x, slope: float = 0.01):
    """``x`` where ``x >= 0``, else ``slope * x``: a bijection for ``slope > 0``.

    Example::

        leaky_relu(jnp.array([-2.0, 3.0]), 0.5)    # [-1., 3.]
    """
    return leaky_relu_p.bind(x, slope=float(slope))


def _impl(x, *, slope):
    return jnp.where(x >= 0, x, slope * x)


leaky_relu_p.def_impl(_impl)
leaky_relu_p.def_abstract_eval(lambda aval, *, slope: aval)
ad.defjvp(leaky_relu_p, lambda t, x, *, slope: jnp.where(x >= 0, t, slope * t))
batching.defvectorized(leaky_relu_p)
mlir.register_lowering(leaky_relu_p, mlir.lower_fun(_impl, multiple_results=False))

# ---------------------------------------------------------------- the rule pack


def _inverse(y, *, slope):
    # y >= 0 exactly when x >= 0 (slope > 0 keeps the sign), so each branch
    # inverts on its own half-line.
    if slope <= 0:
        raise NotInvertibleError(f"leaky_relu with slope={slope} is not injective (needs slope > 0)")
    return jnp.where(y >= 0, y, y / slope)


def _cotangent(x, y, ct, *, slope):
    return jnp.where(y >= 0, ct, slope * ct)


PACK = RulePack("leaky_relu_example", "0.1.0", jax_versions=">=0.6",
                description="an invertible leaky ReLU primitive (example third-party pack)")
PACK.defunary(leaky_relu_p, _inverse, ct=_cotangent, examples=[
    Example(lambda x: leaky_relu(x, 0.1), reals(-5, 5), label="slope 0.1"),
    Example(lambda x: leaky_relu(x, 2.0), reals(-5, 5), label="slope 2 (steeper left branch)"),
], notes="slope > 0")
