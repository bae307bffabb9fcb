"""parity: reference-vs-optimized numerical verification for DeepSeek-V4-class MoE kernels.

`parity.check(op, fn)` tests a kernel (see `parity.api`); `parity.register` registers a fast
path; `parity.ops()` lists the ops; `parity.strategies(op)` gives the case strategy. These
load on first use: `import parity` stays light."""

from parity._errors import Unsupported

__all__ = ["Unsupported", "__version__", "check", "ops", "register", "strategies"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("check", "ops", "register", "strategies"):
        from parity import api

        return getattr(api, name)
    raise AttributeError(f"module 'parity' has no attribute {name!r}")
