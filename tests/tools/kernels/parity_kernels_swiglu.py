"""Witness swiglu kernels for the `parity fuzz/case/replay` tests (imported as `module:function`
with this folder on sys.path or as the current folder)."""

import os
import signal
import time

import torch

from parity.reference import swiglu as _ref


def correct(x, **kw):
    """A correct external kernel: the reference itself."""
    return _ref(x, **kw)


def broken(x, *, limit=None, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre"):
    """Ignores beta: wrong whenever beta != 0 (and on every other option it is right)."""
    return _ref(x, limit=limit, alpha=alpha, beta=0.0, layout=layout, clamp_mode=clamp_mode) * (
        1.0 if beta == 0.0 else 1.5
    )


def unsupported(x, **kw):
    raise NotImplementedError("this kernel supports nothing")


def _has_nan(x):
    return isinstance(x, torch.Tensor) and x.is_floating_point() and bool(torch.isnan(x).any())


def segfault_on_nan(x, **kw):
    """Kills its own process with SIGSEGV on NaN input (only the nan_policy property draws it)."""
    if _has_nan(x):
        os.kill(os.getpid(), signal.SIGSEGV)
    return _ref(x, **kw)


def abort_on_nan(x, **kw):
    if _has_nan(x):
        os.abort()
    return _ref(x, **kw)


def cuda_error_on_nan(x, **kw):
    """What a poisoned CUDA context looks like from Python."""
    if _has_nan(x):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    return _ref(x, **kw)


def hang_on_nan(x, **kw):
    if _has_nan(x):
        time.sleep(3600)
    return _ref(x, **kw)


not_callable = 42


def plain_only_broken(x, *, limit=None, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre"):
    """Supports only plain bfloat16 SiLU-and-mul (issue 10: such a kernel got 3 of 20 cases
    tested and passed), and is wrong there where N >= 8 (up scaled by 1.5)."""
    plain = limit is None and alpha == 1.0 and beta == 0.0 and layout == "concat"
    if not (plain and clamp_mode == "pre" and x.dtype == torch.bfloat16):
        raise NotImplementedError("only plain bfloat16 SiLU-and-mul")
    y = _ref(x)
    return y * 1.5 if x.shape[-1] >= 16 else y
