"""flashinfer backend: registrations (kernels load flashinfer lazily)."""
