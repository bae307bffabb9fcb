"""Triton quantizers (`docs/ops.md`): fp8_quant, silu_mul_fp8_quant (one fused kernel) and
mxfp4_dequant. Registrations and wrappers only; kernels in `_kernels_quant.py`, imported on the
first call (then kept in a module global). Validation is the reference's `validate_<op>`, so
the errors are the same.

The FP8 kernels round with the native E4M3 cast where `_caps.native_fp8_ok` trusts it (CUDA
capability 9.x; override with PARITY_TRITON_FP8_CAST=explicit|native, see `_caps.py`), else
with the exact integer rounding; the codes are the same."""

from __future__ import annotations

import torch

from parity._errors import Unsupported
from parity.optimized.triton._caps import native_fp8_ok
from parity.optimized.triton._launch import check_f32_scalar, launch_context
from parity.reference.common import FLOAT_DTYPES, FP8
from parity.reference.quant import (
    validate_fp8_quant,
    validate_mxfp4_dequant,
    validate_silu_mul_fp8_quant,
)
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
    eps = validate_fp8_quant(
        x,
        group_size=group_size,
        scale_format=scale_format,
        column_major_scales=column_major_scales,
        eps=eps,
    )
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
    limit = validate_silu_mul_fp8_quant(
        x,
        group_size=group_size,
        limit=limit,
        clamp_mode=clamp_mode,
        scale_format=scale_format,
        column_major_scales=column_major_scales,
    )
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
    k = validate_mxfp4_dequant(packed, scales, dtype=dtype)
    y = torch.empty((*packed.shape[:-1], k), dtype=dtype, device=packed.device)
    numel = y.numel()
    if numel == 0:
        return y
    with launch_context(op, packed):
        # read as [rows, K/2] and [rows, K/32], written as [rows, K]: contiguous, no views
        _kq().launch_mxfp4_dequant(packed.contiguous(), scales.contiguous(), y, numel // k, k)
    return y
