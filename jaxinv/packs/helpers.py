"""The one-line registration helpers (``jaxinv.register_inverse``,
``jaxinv.defunary``, ...): methods of the pack of direct registrations,
which always wins (``jaxinv.packs.precedence``)."""

from __future__ import annotations

import inspect
from typing import Callable

from jaxinv.packs.precedence import direct
from jaxinv.packs.rule_pack import RulePack


def _direct(method: Callable) -> Callable:
    """``method`` of the pack of direct registrations, as a module-level
    function with the method's docstring and its signature without ``self``
    (what ``help`` and the API reference show)."""
    bound = getattr(direct, method.__name__)

    def call(*args, **kwargs):
        return bound(*args, **kwargs)

    call.__name__ = call.__qualname__ = method.__name__
    call.__doc__ = method.__doc__
    call.__signature__ = inspect.signature(bound)
    return call


register_inverse = _direct(RulePack.register_inverse)
register_ivjp = _direct(RulePack.register_ivjp)
register_nonzero = _direct(RulePack.register_nonzero)
register_ildj = _direct(RulePack.register_ildj)
register_not_invertible = _direct(RulePack.register_not_invertible)
defunary = _direct(RulePack.defunary)
defbinary = _direct(RulePack.defbinary)
defpermutation = _direct(RulePack.defpermutation)
