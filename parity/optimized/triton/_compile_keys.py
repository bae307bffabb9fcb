"""The key triton compiles a launch under, recorded in the interpreter (issue 11, section 4).

On a GPU every launch whose key is new compiles a kernel: on the H100 (2026-12-05) the nightly
suites ran at 10 examples a second for fp8_quant (about 230 compile keys in 900 examples)
against 194 for mxfp4_dequant (about 60). The key is what triton's launcher binds: each runtime
argument as `native_specialize_impl` types and specialises it (an int's value 1, divisibility by
16 or 64-bit width, a pointer's dtype and 16-byte alignment; `do_not_specialize` honoured),
every constexpr by value, and the launch options. `record()` computes it for every launch made in
the interpreter (CPU tensors), so a CPU run counts the compiles a GPU run would make
(`scripts/compile_keys.py`) and tests can hold a kernel's key independent of a size.
"""

from __future__ import annotations

import collections
import contextlib
import inspect


def _is_constexpr(p: inspect.Parameter) -> bool:
    a = p.annotation
    return "constexpr" in (a if isinstance(a, str) else getattr(a, "__name__", repr(a)))


class Keys:
    """What `record()` saw: kernel name -> Counter of (parts, options) keys."""

    def __init__(self):
        self.launches: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.params: dict[str, list[str]] = {}
        self.sources: dict[str, str] = {}  # kernel name -> "module:function"
        self.skip_run = False  # record each launch without running it (outputs are garbage)

    def distinct(self, name: str) -> int:
        return len(self.launches.get(name, ()))


@contextlib.contextmanager
def record(*, skip_run: bool = False):
    """Record the compile key of every interpreter launch in the block (TRITON_INTERPRET=1
    must have been set before triton was imported). Yields a `Keys`."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import native_specialize_impl

    keys = Keys()
    keys.skip_run = skip_run
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        params = list(inspect.signature(self.fn).parameters.values())
        names = [p.name for p in params]
        dns = set(self.kwargs.get("do_not_specialize") or ())
        dnsa = set(self.kwargs.get("do_not_specialize_on_alignment") or ())
        bound = dict(zip(names, args))
        bound.update({k: v for k, v in kwargs.items() if k in names})
        parts = []
        for i, p in enumerate(params):
            v = bound.get(p.name, p.default)
            if _is_constexpr(p):
                parts.append(("c", getattr(v, "value", v)))
            else:
                spec = i not in dns and p.name not in dns
                align = i not in dnsa and p.name not in dnsa
                parts.append(tuple(native_specialize_impl(BaseBackend, v, False, spec, align)))
        opts = tuple(sorted((k, v) for k, v in kwargs.items() if k not in bound))
        name = f"{self.fn.__module__.rsplit('.', 1)[-1]}.{self.fn.__name__}"
        keys.params[name] = names
        keys.sources[name] = f"{self.fn.__module__}:{self.fn.__name__}"
        keys.launches[name][(tuple(parts), opts)] += 1
        if keys.skip_run:
            return None
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        yield keys
    finally:
        InterpretedFunction.run = original
