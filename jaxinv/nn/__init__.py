"""``jaxinv.nn``: invertible layers, functional and framework-agnostic.

Every layer keeps the contract of ``jaxinv.nn.Layer`` (``init``,
``apply``, ``inverse``, ``forward_and_log_det``, ``inverse_and_log_det``) and
is built so that jaxinv rebuilds its input from its output: ``jaxinv.grad``
through a deep stack keeps activation memory flat in depth. Flax NNX and
Equinox wrappers live in ``jaxinv.nn.flax`` and ``jaxinv.nn.equinox``
(imported on demand).

Example:
    ```python
    from jaxinv import nn
    flow = nn.Sequential((nn.ActNorm(), nn.InvertibleDense(), nn.AffineCoupling()))
    params = flow.init(key, x)
    z, log_det = flow.forward_and_log_det(params, x)
    ```
"""

from jaxinv.nn.base import Layer
from jaxinv.nn.coupling import MLP, AdditiveCoupling, AffineCoupling
from jaxinv.nn.elementwise import ActNorm, LeakyReLU
from jaxinv.nn.exact import onto_grid, to_grid
from jaxinv.nn.keep import KeepInput
from jaxinv.nn.linear import Householder, InvertibleConv1x1, InvertibleDense
from jaxinv.nn.reshape import HaarDownsampling, Squeeze
from jaxinv.nn.residual import momentum_net, reversible_blocks, steps_between_anchors
from jaxinv.nn.sequential import RevSequential, Sequential, rev_sequential
from jaxinv.nn.transformer import ReversibleTransformerBlock

__all__ = [
    "MLP", "ActNorm", "AdditiveCoupling", "AffineCoupling", "HaarDownsampling", "Householder", "InvertibleConv1x1",
    "InvertibleDense", "KeepInput", "Layer", "LeakyReLU", "ReversibleTransformerBlock", "RevSequential", "Sequential", "Squeeze",
    "momentum_net", "onto_grid", "rev_sequential", "reversible_blocks", "steps_between_anchors", "to_grid",
]
