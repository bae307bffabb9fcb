"""Triton compiles of this process, counted and timed (issue 11, section 4: the GPU property
suites ran compile-bound on the H100, and a suite's examples a second alone cannot say so).

`install()` chains triton's own JIT hooks (`triton.knobs.runtime.jit_cache_hook`, called before a
compile, and `jit_post_compile_hook`, after it), keeping any hook already set; `totals()` is the
count and seconds so far. A "compile" is a launch key new to this process: a file-cache hit
counts too, with the seconds it took to load. Nothing is counted in the Triton interpreter (it
compiles nothing) or where triton lacks these hooks. Imports triton only when asked to install.
"""

from __future__ import annotations

import importlib.util
import time

_count = 0
_seconds = 0.0
_starts: list[float] = []
_installed = False


def install() -> bool:
    """Install the hooks once; False where triton or its hooks are missing."""
    global _installed
    if _installed:
        return True
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton

        rt = triton.knobs.runtime
        before, after = rt.jit_cache_hook, rt.jit_post_compile_hook
    except Exception:  # an older triton without knobs: nothing counted
        return False

    def on_start(*args, **kwargs):
        _starts.append(time.perf_counter())
        return before(*args, **kwargs) if before is not None else None  # truthy skips the compile

    def on_end(*args, **kwargs):
        global _count, _seconds
        if _starts:
            _seconds += time.perf_counter() - _starts.pop()
        _count += 1
        return after(*args, **kwargs) if after is not None else None

    rt.jit_cache_hook, rt.jit_post_compile_hook = on_start, on_end
    _installed = True
    return True


def totals() -> tuple[int, float]:
    """(compiles, seconds) of this process since `install()`."""
    return _count, _seconds
