"""Triton quantizers (`docs/ops.md`): fp8_quant, silu_mul_fp8_quant (one fused kernel) and
mxfp4_dequant. Registrations and wrappers only; kernels in `_kernels_quant.py`, imported on the
first call (then kept in a module global). Validation is the reference's own, so the errors are
the same.

The FP8 kernels round with the native E4M3 cast where `_caps.native_fp8_ok` trusts it (CUDA
capability 9.x; override with PARITY_TRITON_FP8_CAST=explicit|native, see `_caps.py`), else
with the exact integer rounding; the codes are the same."""

from __future__ import annotations

import torch

from parity._errors import Unsupported
from parity.optimized.triton._caps import native_fp8_ok
from parity.optimized.triton._launch import check_f32_scalar, launch_context
from parity.reference._common import (
    FLOAT_DTYPES,
    FP8,
    check_choice,
    check_float,
    check_tensor,
    fail,
)
from parity.reference.quant import MX_BLOCK, _check_fp8_quant_options
from parity.reference.swiglu import CLAMP_MODES
from parity.registry import register

_SILU_EPS = 1e-10  # silu_mul_fp8_quant quantizes with fp8_quant's default eps
_MAX_GROUP = 16384  # one group is one row of a program's tile
_kernels = None  # parity.optimized.triton._kernels_quant, imported on the first launch


def _kq():
    global _kernels
    if _kernels is None:
        from parity.optimized.triton import _kernels_quant

        _kernels = _kernels_quant
    return _kernels


def _scales(m: int, groups: int, column_major: bool, device) -> torch.Tensor:
    if column_major:  # DeepGEMM's layout: strides (1, M), as the reference builds it
        return torch.empty_strided((m, groups), (1, max(m, 1)), dtype=torch.float32, device=device)
    return torch.empty((m, groups), dtype=torch.float32, device=device)


def _check_group(op: str, group_size: int) -> None:
    if group_size > _MAX_GROUP:
        raise Unsupported(f"{op}: group_size={group_size} above {_MAX_GROUP} (one tile row)")


@register(
    "fp8_quant",
    name="triton",
    backend="triton",
    devices=("cuda", "cpu"),
    dtypes=FLOAT_DTYPES,
    requires=("triton",),
    note="whole groups per program (~2048 elements), true division, integer E4M3 rounding",
)
def fp8_quant(
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
    _check_group(op, group_size)
    eps = check_f32_scalar(op, "eps", eps)

    m, k = x.shape
    q = torch.empty((m, k), dtype=FP8, device=x.device)
    s = _scales(m, k // group_size, column_major_scales, x.device)
    if q.numel() == 0:
        return q, s
    with launch_context(op, x):
        _kq().launch_fp8_quant(
            x.contiguous(),
            q,
            s,
            group_size=group_size,
            eps=eps,
            ue8m0=scale_format == "ue8m0",
            column_major=column_major_scales,
            native_fp8=native_fp8_ok(x.device),
        )
    return q, s


@register(
    "silu_mul_fp8_quant",
    name="triton",
    backend="triton",
    devices=("cuda", "cpu"),
    dtypes=FLOAT_DTYPES,
    requires=("triton",),
    note="one kernel: SwiGLU in float32 (never rounded to x.dtype), then per-group FP8",
)
def silu_mul_fp8_quant(
    x: torch.Tensor,
    *,
    group_size: int = 128,
    limit: float | None = None,
    clamp_mode: str = "pre",
    scale_format: str = "fp32",
    column_major_scales: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    op = "silu_mul_fp8_quant"
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, ndim=2)
    _check_fp8_quant_options(op, group_size, scale_format, column_major_scales)
    if limit is not None:
        limit = check_float(op, "limit", limit, positive=True)
    check_choice(op, "clamp_mode", clamp_mode, CLAMP_MODES)
    if x.shape[1] % 2 != 0:
        fail(op, "x", "an even last dimension (gate and up halves)", list(x.shape))
    if (x.shape[1] // 2) % group_size != 0:
        fail(op, "x", f"N = dim 1 / 2 divisible by group_size={group_size}", list(x.shape))
    _check_group(op, group_size)
    if limit is not None:
        limit = check_f32_scalar(op, "limit", limit)

    m, n = x.shape[0], x.shape[1] // 2
    q = torch.empty((m, n), dtype=FP8, device=x.device)
    s = _scales(m, n // group_size, column_major_scales, x.device)
    if q.numel() == 0:
        return q, s
    with launch_context(op, x):
        _kq().launch_silu_mul_fp8_quant(
            x.contiguous(),
            q,
            s,
            group_size=group_size,
            limit=limit,
            post=clamp_mode == "post",
            eps=_SILU_EPS,
            ue8m0=scale_format == "ue8m0",
            column_major=column_major_scales,
            native_fp8=native_fp8_ok(x.device),
        )
    return q, s


@register(
    "mxfp4_dequant",
    name="triton",
    backend="triton",
    devices=("cuda", "cpu"),
    dtypes=FLOAT_DTYPES,
    requires=("triton",),
    note="values and 2**(code-127) built from exponent bits; exact, then one rounding",
)
def mxfp4_dequant(
    packed: torch.Tensor, scales: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    op = "mxfp4_dequant"
    check_tensor(op, "packed", packed, dtypes=(torch.uint8,), min_ndim=1)
    if packed.shape[-1] % (MX_BLOCK // 2) != 0:
        fail(op, "packed", f"last dimension divisible by {MX_BLOCK // 2}", list(packed.shape))
    k = 2 * packed.shape[-1]
    check_tensor(
        op,
        "scales",
        scales,
        dtypes=(torch.uint8,),
        shape=(*packed.shape[:-1], k // MX_BLOCK),
        device=packed.device,
    )
    if dtype not in FLOAT_DTYPES:
        fail(op, "dtype", "one of bfloat16, float16, float32", dtype, kind=TypeError)

    y = torch.empty((*packed.shape[:-1], k), dtype=dtype, device=packed.device)
    numel = y.numel()
    if numel == 0:
        return y
    with launch_context(op, packed):
        # read as [rows, K/2] and [rows, K/32], written as [rows, K]: contiguous, no views
        _kq().launch_mxfp4_dequant(packed.contiguous(), scales.contiguous(), y, numel // k, k)
    return y
