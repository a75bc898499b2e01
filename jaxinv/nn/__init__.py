"""``jaxinv.nn``: invertible layers (see :mod:`jaxinv.nn.base` for the contract)."""

from jaxinv.nn.base import Layer

__all__ = ["Layer"]
