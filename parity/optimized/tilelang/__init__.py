"""tilelang backend: registrations (kernels load tilelang lazily)."""

from parity.optimized.tilelang import mhc  # noqa: F401
