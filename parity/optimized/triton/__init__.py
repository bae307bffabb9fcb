"""Triton fast paths: each public module here registers its ops; kernels (in _kernels_*.py)
import triton lazily. Modules are found by name, so a new kernel for an existing op is a new
module here and nothing else. Private modules (_*) and the tuner register nothing."""

import importlib
import pkgutil

_NOT_REGISTRATIONS = {"tune"}  # the fused_moe tuner: loaded by `parity.catalog.tuner()` only

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):  # a stable order
    if not _info.name.startswith("_") and _info.name not in _NOT_REGISTRATIONS:
        importlib.import_module(f"{__name__}.{_info.name}")
