"""parity: reference-vs-optimized numerical verification for DeepSeek-V4-class MoE kernels.

The public API (`parity.api`), loaded on first use so that `import parity` stays light (no
torch, no Hypothesis):

- `parity.check(op, fn, ...) -> Report`: every property of `op` against `fn` (a callable or
  "module:function"); `Report.raise_for_failure()` raises what the CLI prints;
- `parity.ops()`: the ops of the contract;
- `parity.register(op, name=..., backend=...)`: register a fast path (a decorator);
- `parity.strategies(op) -> (strategy, build)`: the Hypothesis strategy of `op`'s cases and
  the function that builds a case's tensors, for one's own `@given` tests.
"""

from parity._errors import Unsupported

__all__ = ["Report", "Unsupported", "__version__", "check", "ops", "register", "strategies"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("check", "ops", "register", "strategies"):
        from parity import api

        return getattr(api, name)
    if name == "Report":
        from parity.campaign.engine import Report

        return Report
    raise AttributeError(f"module 'parity' has no attribute {name!r}")
