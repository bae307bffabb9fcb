"""flashinfer backend: registrations (kernels load flashinfer lazily)."""

from parity.optimized.flashinfer import adapters  # noqa: F401
