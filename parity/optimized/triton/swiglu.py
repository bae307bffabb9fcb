"""Triton SwiGLU (`docs/ops.md`, "swiglu"): registration and wrapper; the kernel lives in
`_kernels_swiglu.py` and is imported on the first call (then kept in a module global: an import
statement costs ~1 us a call).

The wrappers here and in `quant.py` are on the critical path at small T, so they avoid work
beyond validation and the output allocation: no `.view` (the launchers take flat row counts;
the kernels only need the data pointers), no per-call imports, and no device switch when the
tensor's device is already current.
"""

from __future__ import annotations

import torch

from parity.optimized.triton._launch import check_f32_scalar, launch_context
from parity.reference.common import FLOAT_DTYPES
from parity.reference.swiglu import validate_swiglu
from parity.registry import register

_kernels = None  # parity.optimized.triton._kernels_swiglu, imported on the first launch


@register(
    "swiglu",
    name="triton",
    backend="triton",
    devices=("cuda", "cpu"),
    dtypes=FLOAT_DTYPES,
    requires=("triton",),
    note="2-D tiles of ~4096 outputs, float32 math with an accurate exp, one rounding",
)
def swiglu(
    x: torch.Tensor,
    *,
    limit: float | None = None,
    alpha: float = 1.0,
    beta: float = 0.0,
    layout: str = "concat",
    clamp_mode: str = "pre",
) -> torch.Tensor:
    op = "swiglu"
    limit, alpha, beta = validate_swiglu(
        x, limit=limit, alpha=alpha, beta=beta, layout=layout, clamp_mode=clamp_mode
    )
    limit = None if limit is None else check_f32_scalar(op, "limit", limit)
    alpha = check_f32_scalar(op, "alpha", alpha)
    beta = check_f32_scalar(op, "beta", beta)

    shape = x.shape
    n = shape[-1] // 2
    y = torch.empty((*shape[:-1], n), dtype=x.dtype, device=x.device)
    numel = y.numel()
    if numel == 0:
        return y
    global _kernels
    with launch_context(op, x):
        if _kernels is None:
            from parity.optimized.triton import _kernels_swiglu

            _kernels = _kernels_swiglu
        _kernels.launch_swiglu(
            x.contiguous(),  # read as [rows, 2N], y as [rows, N]: both contiguous
            y,
            numel // n,
            n,
            limit=limit,
            alpha=alpha,
            beta=beta,
            interleaved=layout == "interleaved",
            post=clamp_mode == "post",
        )
    return y
