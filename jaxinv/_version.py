"""jaxinv's version (one place: the packaging metadata and the built-in rule packs read it)."""

__version__ = "0.1.0"
