"""tilelang backend: registrations (kernels load tilelang lazily)."""
