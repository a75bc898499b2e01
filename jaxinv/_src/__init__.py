"""jaxinv's machinery: tracing, planning, the reverse sweep. Private; see README.md here."""
