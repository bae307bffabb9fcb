"""A witness that really poisons the CUDA context: an out-of-bounds store from a Triton kernel
on NaN input (only the nan_policy property draws NaN). GPU only; imported lazily."""

import torch

from parity.reference import swiglu as _ref

_KERNEL = None


def _oob_kernel():
    global _KERNEL
    if _KERNEL is None:
        import triton
        import triton.language as tl

        @triton.jit
        def oob(ptr, off):
            tl.store(ptr + off, 1.0)

        _KERNEL = oob
    return _KERNEL


def illegal_address_on_nan(x, **kw):
    if x.is_cuda and x.is_floating_point() and bool(torch.isnan(x).any()):
        y = torch.empty(1, device=x.device)
        _oob_kernel()[(1,)](y, 1 << 40)  # far outside any allocation: illegal address
    return _ref(x, **kw)
