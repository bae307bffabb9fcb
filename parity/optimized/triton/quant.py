"""Triton quantizers (`docs/ops.md`): fp8_quant, silu_mul_fp8_quant (one fused kernel) and
mxfp4_dequant. Registrations and wrappers only; kernels in `_kernels_quant.py`, imported on the
first call (then kept in a module global). Validation is the reference's `validate_<op>`, so
the errors are the same; it runs once per call signature, whose plan is cached (see `swiglu.py`
and `_launch.py`: the key holds everything the validator reads, plus what the plan depends on:
the FP8 rounding choice's environment and the kernels' tile settings).

The FP8 kernels round with the native E4M3 cast where `_caps.native_fp8_ok` trusts it (CUDA
capability 9.x; override with PARITY_TRITON_FP8_CAST=explicit|native, see `_caps.py`), else
with the exact integer rounding; the codes are the same."""

from __future__ import annotations

import torch

from parity._errors import Unsupported
from parity.optimized.triton._caps import ENV as _FP8_ENV
from parity.optimized.triton._caps import native_fp8_ok
from parity.optimized.triton._launch import (
    Launch,
    check_f32_scalar,
    env,
    launch_context,
    plain,
    store,
    tensor_key,
)
from parity.reference.common import FLOAT_DTYPES, FP8
from parity.reference.quant import (
    validate_fp8_quant,
    validate_mxfp4_dequant,
    validate_silu_mul_fp8_quant,
)
from parity.registry import register

_INF = float("inf")
_SILU_EPS = 1e-10  # silu_mul_fp8_quant quantizes with fp8_quant's default eps
_MAX_GROUP = 16384  # one group is one row of a program's tile
_kernels = None  # parity.optimized.triton._kernels_quant, imported on the first plan
_PLANS: dict = {}  # (op, call signature) -> plan


def _kq():
    global _kernels
    if _kernels is None:
        from parity.optimized.triton import _kernels_quant

        _kernels = _kernels_quant
    return _kernels


def _tiles():
    """What a plan's tiles depend on: `_kernels_quant.TILE` (a tile sweep changes it), the
    sigmoid's division (`_kernels_swiglu.SIGMOID`) for silu_mul_fp8_quant, and mxfp4_dequant's
    `DEQUANT` variant."""
    tile = _kernels.TILE
    return tile["elems"], tile["warps"], _kernels.SIGMOID["fast"], _kernels.DEQUANT["bf16"]


def _fp8_env():
    """The environment `native_fp8_ok` reads (its device is in the key beside this)."""
    return env(_FP8_ENV), env("TRITON_INTERPRET")


def _scales(m: int, groups: int, column_major: bool, device) -> torch.Tensor:
    if column_major:  # DeepGEMM's layout: strides (1, M), as the reference builds it
        return torch.empty_strided((m, groups), (1, max(m, 1)), dtype=torch.float32, device=device)
    return torch.empty((m, groups), dtype=torch.float32, device=device)


def _check_group(op: str, group_size: int) -> None:
    if group_size > _MAX_GROUP:
        raise Unsupported(f"{op}: group_size={group_size} above {_MAX_GROUP} (one tile row)")


def _group_launch(kernel, n_groups: int, group_size: int, **consts) -> Launch:
    """`_kernels_quant.launch_fp8_quant`'s / `launch_silu_mul_fp8_quant`'s launch as a `Launch`
    (the same tiles, grid and constexprs: tests/test_launch_cost.py compares them)."""
    g_pad, block_g, warps = _kernels._group_blocks(n_groups, group_size)
    consts = dict(G=group_size, G_PAD=g_pad, BLOCK_G=block_g, **consts)
    names = kernel.arg_names
    consts = {n: consts[n] for n in names if n in consts}  # in the kernel's parameter order
    return Launch(kernel, (-(-n_groups // block_g),), consts, num_warps=warps)


def _fp8_key(x, group_size, scale_format, column_major_scales, eps):
    return (
        "fp8_quant", x.__class__, x.shape, x.dtype, x.device, group_size.__class__, group_size,
        scale_format, column_major_scales.__class__, column_major_scales, eps.__class__, eps,
        _fp8_env(), _tiles(),
    )  # fmt: skip


def _fp8_plan(x, group_size, scale_format, column_major_scales, eps):
    op = "fp8_quant"
    eps_f = validate_fp8_quant(
        x,
        group_size=group_size,
        scale_format=scale_format,
        column_major_scales=column_major_scales,
        eps=eps,
    )
    _check_group(op, group_size)
    check_f32_scalar(op, "eps", eps_f)
    kq = _kq()
    m, k = x.shape
    groups_per_row = k // group_size
    n_groups = m * groups_per_row
    launch = None
    if m * k:
        ue8m0 = scale_format == "ue8m0"
        run = _group_launch(
            kq._fp8_quant_kernel,
            n_groups,
            group_size,
            UE8M0=ue8m0,
            COL_MAJOR=bool(column_major_scales),
            RECIP=ue8m0 and eps_f >= kq.RECIP_MIN_EPS,
            NATIVE_FP8=native_fp8_ok(x.device),
        )
        launch = (run, n_groups, groups_per_row, m)
    plan = (m, k, groups_per_row, bool(column_major_scales), launch)
    if x.__class__ is torch.Tensor and plain(group_size, scale_format, column_major_scales, eps):
        store(_PLANS, _fp8_key(x, group_size, scale_format, column_major_scales, eps), plan)
    return plan


def _silu_key(x, group_size, limit, clamp_mode, scale_format, column_major_scales):
    return (
        "silu_mul_fp8_quant", x.__class__, x.shape, x.dtype, x.device, group_size.__class__,
        group_size, limit.__class__, limit, clamp_mode, scale_format,
        column_major_scales.__class__, column_major_scales, _fp8_env(), _tiles(),
    )  # fmt: skip


def _silu_plan(x, group_size, limit, clamp_mode, scale_format, column_major_scales):
    op = "silu_mul_fp8_quant"
    limit_f = validate_silu_mul_fp8_quant(
        x,
        group_size=group_size,
        limit=limit,
        clamp_mode=clamp_mode,
        scale_format=scale_format,
        column_major_scales=column_major_scales,
    )
    _check_group(op, group_size)
    if limit_f is not None:
        check_f32_scalar(op, "limit", limit_f)
    kq = _kq()
    m, n = x.shape[0], x.shape[1] // 2
    groups_per_row = n // group_size
    n_groups = m * groups_per_row
    launch = None
    if m * n:
        ue8m0 = scale_format == "ue8m0"
        run = _group_launch(
            kq._silu_mul_fp8_quant_kernel,
            n_groups,
            group_size,
            POST=clamp_mode == "post",
            FAST=kq.SIGMOID["fast"],
            UE8M0=ue8m0,
            COL_MAJOR=bool(column_major_scales),
            RECIP=ue8m0 and _SILU_EPS >= kq.RECIP_MIN_EPS,
            NATIVE_FP8=native_fp8_ok(x.device),
        )
        launch = (run, n_groups, groups_per_row, m, n)
    plan = (m, n, groups_per_row, bool(column_major_scales), launch)
    if x.__class__ is torch.Tensor and plain(
        group_size, limit, clamp_mode, scale_format, column_major_scales
    ):
        key = _silu_key(x, group_size, limit, clamp_mode, scale_format, column_major_scales)
        store(_PLANS, key, plan)
    return plan


def _dequant_key(packed, scales, dtype):
    return (
        "mxfp4_dequant",
        *tensor_key(packed),
        *tensor_key(scales),
        dtype.__class__,
        dtype,
        _tiles(),
    )


def _dequant_plan(packed, scales, dtype):
    k = validate_mxfp4_dequant(packed, scales, dtype=dtype)
    kq = _kq()
    shape = (*packed.shape[:-1], k)
    numel = 1
    for d in shape:
        numel *= d
    launch = None
    if numel:
        rows, p = numel // k, k // 2
        # as `_kernels_quant.launch_mxfp4_dequant` (tests/test_launch_cost.py compares them)
        grid, consts, warps = kq.dequant_launch(rows, k, dtype, packed.device)
        run = Launch(kq._mxfp4_dequant_kernel, grid, consts, num_warps=warps)
        launch = (run, rows, p)
    plan = (shape, launch)
    if packed.__class__ is scales.__class__ is torch.Tensor and plain(dtype):
        store(_PLANS, _dequant_key(packed, scales, dtype), plan)
    return plan


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
    try:
        m, k, gpr, col, launch = _PLANS[
            _fp8_key(x, group_size, scale_format, column_major_scales, eps)
        ]
    except Exception:  # a new signature, or one the key cannot hold: validate
        m, k, gpr, col, launch = _fp8_plan(x, group_size, scale_format, column_major_scales, eps)
    dev = x.device
    q = torch.empty((m, k), dtype=FP8, device=dev)
    s = _scales(m, gpr, col, dev)
    if launch is None:
        return q, s
    run, n_groups, gpr, m = launch
    with launch_context("fp8_quant", x):
        run(x.contiguous(), q, s, n_groups, gpr, m, float(eps))
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
    try:
        m, n, gpr, col, launch = _PLANS[
            _silu_key(x, group_size, limit, clamp_mode, scale_format, column_major_scales)
        ]
    except Exception:  # a new signature, or one the key cannot hold: validate
        m, n, gpr, col, launch = _silu_plan(
            x, group_size, limit, clamp_mode, scale_format, column_major_scales
        )
    dev = x.device
    q = torch.empty((m, n), dtype=FP8, device=dev)
    s = _scales(m, gpr, col, dev)
    if launch is None:
        return q, s
    run, n_groups, gpr, m, n = launch
    with launch_context("silu_mul_fp8_quant", x):
        run(
            x.contiguous(),
            q,
            s,
            n_groups,
            gpr,
            m,
            n,
            _INF if limit is None else float(limit),  # no limit: +inf (see the kernel)
            _SILU_EPS,
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
    try:
        shape, launch = _PLANS[_dequant_key(packed, scales, dtype)]
    except Exception:  # a new signature, or one the key cannot hold: validate
        shape, launch = _dequant_plan(packed, scales, dtype)
    y = torch.empty(shape, dtype=dtype, device=packed.device)
    if launch is None:
        return y
    run, rows, p = launch
    with launch_context("mxfp4_dequant", packed):
        # read as [rows, K/2] and [rows, K/32], written as [rows, K]: contiguous, no views
        run(packed.contiguous(), scales.contiguous(), y, rows, p)
    return y
