"""A naive Triton fp8_quant that rounds with the native `x.to(tl.float8e4nv)` cast.

Not a registered implementation: a plain function that `tests/test_triton_kernels.py` runs to
show the cast trap the real kernels avoid, and asserts the fp8_quant matches_reference property
catches under the interpreter. Under
TRITON_INTERPRET=1 (triton 3.9) the cast drops the mantissa carry (124.1 -> 64) and turns
values above 448 into NaN; on a GPU the cast rounds correctly but has its own overflow rule.
The scale is computed as in the contract (fp32 scales, row-major only).
"""

from __future__ import annotations

import os

import torch

from parity.reference.common import FLOAT_DTYPES, FP8, check_float, check_tensor, fail
from parity.reference.quant import _check_fp8_quant_options

if not torch.cuda.is_available():  # as parity.optimized does: before triton defines a kernel
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton
    import triton.language as tl
except ImportError:  # the witness is then unavailable; importing this module still works
    triton = None

if triton is not None:

    @triton.jit
    def _naive_kernel(x_ptr, q_ptr, s_ptr, n_groups, eps, G: tl.constexpr, BLOCK_G: tl.constexpr):
        gi = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
        c = tl.arange(0, G)
        gmask = gi < n_groups
        offs = gi[:, None] * G + c[None, :]
        v = tl.load(x_ptr + offs, mask=gmask[:, None], other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(v), axis=1)
        s = tl.maximum(amax, eps) / 448.0
        q = v / s[:, None]
        tl.store(q_ptr + offs, q.to(tl.float8e4nv), mask=gmask[:, None])  # the naive cast
        tl.store(s_ptr + gi, s, mask=gmask)


def fp8_quant_naive_cast(
    x: torch.Tensor,
    *,
    group_size: int = 128,
    scale_format: str = "fp32",
    column_major_scales: bool = False,
    eps: float = 1e-10,
) -> tuple[torch.Tensor, torch.Tensor]:
    op = "fp8_quant"
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, ndim=2)
    _check_fp8_quant_options(op, group_size, scale_format, column_major_scales)
    eps = check_float(op, "eps", eps, positive=True)
    if x.shape[1] % group_size != 0:
        fail(op, "x", f"K (dim 1) divisible by group_size={group_size}", list(x.shape))
    if triton is None:
        raise NotImplementedError("triton is not installed")
    if scale_format != "fp32" or column_major_scales or group_size & (group_size - 1):
        raise NotImplementedError("naive witness: fp32 row-major scales, power-of-two groups")

    m, k = x.shape
    q = torch.empty((m, k), dtype=FP8, device=x.device)
    s = torch.empty((m, k // group_size), dtype=torch.float32, device=x.device)
    n_groups = s.numel()
    if n_groups:
        block_g = 4
        _naive_kernel[(triton.cdiv(n_groups, block_g),)](
            x.contiguous(), q, s, n_groups, eps, G=group_size, BLOCK_G=block_g
        )
    return q, s
