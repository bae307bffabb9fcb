"""Triton quantizer kernels: per-token-group FP8 (`fp8_quant`), fused SwiGLU + FP8
(`silu_mul_fp8_quant`) and MXFP4 dequantization. Imported lazily by `quant.py`.

Both FP8 kernels see the [M, K] activations as a list of groups: group `gi = m * (K/G) + j`
starts at element `gi * G` of the contiguous output, so one program takes BLOCK_G whole groups
as a [BLOCK_G, G_PAD] tile (contiguous, vectorised loads), reduces |x| along the row, and writes
the E4M3 codes straight into the float8 output. NATIVE_FP8 (set by the wrapper from
`_caps.native_fp8_ok`, i.e. sm_90 only) rounds with the clamped native cast, otherwise with the
exact integer rounding of `_fp8.e4m3_code`; both give the same codes.

Per element (after the bf16 -> float32 load): amax is an integer max over the |x| bits (2 ops),
the quotient `x / s` correctly rounded: for ue8m0 scales (powers of two whose reciprocal is a
normal float, see `RECIP_MIN_EPS`) one multiply by the exact per-group reciprocal, for fp32
scales one multiply and two fmas from the per-group `RN(1/s)` (`_fp8.div_by_recip`, proved
exact for eps >= 2**-40; a smaller eps keeps the true division `div_rn`), then the E4M3 rounding
(~7 ops native, ~18 explicit).
"""

import os

import torch
import triton
import triton.language as tl

from parity.optimized.triton._caps import variant_on
from parity.optimized.triton._fp8 import (
    div_by_recip,
    divfree_ok,
    e2m1_pair_bf16_bits,
    e4m3_store_value,
    to_dtype_rne,
)
from parity.optimized.triton._kernels_swiglu import SIGMOID, swiglu_f32
from parity.optimized.triton._launch import cdiv

_F32_MAX = tl.constexpr(3.4028234663852886e38)
_F32_INF_BITS = tl.constexpr(0x7F800000)

# ue8m0 scales are s = 2**ceil(log2(max(amax, eps) / 448)) with amax <= float32 max, so
# 2**-100 <= s <= 2**120 once eps >= 2**-90 (eps / 448 > 2**-100): then 1/s is an exact normal
# power of two and x * (1/s) is the same real number as x / s, rounded once, bit for bit the
# true division (even if a multiply flushed subnormals: |x / s| < 2**-26 for a subnormal x or a
# subnormal result, E4M3 code +-0 either way). A smaller eps keeps the division.
RECIP_MIN_EPS = 2.0**-90


@triton.jit
def _pow2_ceil(s):
    """2**ceil(log2(s)) for positive float32 s, exact: a power of two stays, anything else
    goes to the next exponent with a zero mantissa. Subnormals are scaled by 2**64 first (exact
    both ways); an exponent past 127 gives inf."""
    sub = s < 1.1754943508222875e-38
    sn = tl.where(sub, s * 18446744073709551616.0, s)
    bits = sn.to(tl.int32, bitcast=True)
    up = tl.where((bits & 0x7FFFFF) != 0, (bits & 0x7F800000) + 0x00800000, bits)
    p = up.to(tl.float32, bitcast=True)
    return tl.where(sub, p * 5.421010862427522e-20, p)


@triton.jit
def _quant_groups(v, eps, UE8M0: tl.constexpr, RECIP: tl.constexpr, NATIVE_FP8: tl.constexpr):
    """Per-row FP8 quantization of a float32 [BLOCK_G, G_PAD] tile whose padding lanes are 0.

    Returns (codes tl.float8e4nv [BLOCK_G, G_PAD], scales float32 [BLOCK_G]). amax counts inf
    as the float32 maximum; a NaN anywhere in a row makes its scale NaN and all its codes NaN
    (0x7F). amax is an integer max over the |x| bit patterns: for non-negative floats the order
    of the bits is the order of the values, and every NaN is above inf, so the reduction is
    exact and cannot drop a NaN (as a float tl.max may).
    """
    mb = tl.max(v.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=1)
    nan_row = mb > _F32_INF_BITS
    amax = tl.where(mb >= _F32_INF_BITS, _F32_MAX, mb.to(tl.float32, bitcast=True))
    s = tl.where(amax < eps, eps, amax)
    s = tl.math.div_rn(s, tl.full(s.shape, 448.0, tl.float32))
    if UE8M0:
        s = _pow2_ceil(s)
    s = tl.where(nan_row, float("nan"), s)
    if RECIP:
        # ue8m0 with eps >= RECIP_MIN_EPS (host-checked): 1/s exact, x * (1/s) == x / s.
        r = tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s)
        q = v * r[:, None]
    elif divfree_ok(eps):
        # RN(v / s) by one multiply and two fmas from the row's correctly rounded reciprocal
        # (exact, see `_fp8.div_by_recip`); a plain reciprocal-multiply may move a code by one
        # step near a midpoint.
        r = tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s)
        q = div_by_recip(v, s[:, None], r[:, None])
    else:  # eps < 2**-40: a row scale may be too small for the proof; a true division
        q = tl.math.div_rn(v, s[:, None] + tl.zeros_like(v))
    return e4m3_store_value(q, NATIVE_FP8), s


@triton.jit
def _store_scales(s_ptr, s, gi, gmask, groups_per_row, M, COL_MAJOR: tl.constexpr):
    if COL_MAJOR:  # scales [M, K/G] with strides (1, M): element (m, j) at j * M + m
        idx = (gi % groups_per_row).to(tl.int64) * M + gi // groups_per_row
    else:
        idx = gi.to(tl.int64)
    tl.store(s_ptr + idx, s, mask=gmask)


# Compile keys (issue 11, section 4): the group counts and M only bound and index the groups and
# scales (no vector access depends on them), so they are not specialised; N feeds the row
# addresses of silu_mul_fp8_quant's loads and is. BLOCK_G depends on G alone (_group_blocks).
_COUNTS = ["n_groups", "groups_per_row", "M"]


@triton.jit(do_not_specialize=_COUNTS)
def _fp8_quant_kernel(
    x_ptr,
    q_ptr,  # float8_e4m3fn output (or a uint8 view of it)
    s_ptr,
    n_groups,
    groups_per_row,
    M,
    eps,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    BLOCK_G: tl.constexpr,
    UE8M0: tl.constexpr,
    COL_MAJOR: tl.constexpr,
    RECIP: tl.constexpr,
    NATIVE_FP8: tl.constexpr,
):
    gi = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    c = tl.arange(0, G_PAD)
    gmask = gi < n_groups
    mask = gmask[:, None] & (c < G)[None, :]
    offs = gi.to(tl.int64)[:, None] * G + c[None, :]
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    codes, s = _quant_groups(v, eps, UE8M0, RECIP, NATIVE_FP8)
    tl.store(q_ptr + offs, codes.to(q_ptr.dtype.element_ty, bitcast=True), mask=mask)
    _store_scales(s_ptr, s, gi, gmask, groups_per_row, M, COL_MAJOR)


@triton.jit(do_not_specialize=_COUNTS)
def _silu_mul_fp8_quant_kernel(
    x_ptr,  # [M, 2N]: gate = x[:, :N], up = x[:, N:]
    q_ptr,  # float8_e4m3fn [M, N] output (or a uint8 view of it)
    s_ptr,
    n_groups,
    groups_per_row,
    M,
    N,
    limit,  # +inf without a limit: every clamp keeps its operand (as in _kernels_swiglu)
    eps,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    BLOCK_G: tl.constexpr,
    POST: tl.constexpr,
    FAST: tl.constexpr,
    UE8M0: tl.constexpr,
    COL_MAJOR: tl.constexpr,
    RECIP: tl.constexpr,
    NATIVE_FP8: tl.constexpr,
):
    gi = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    c = tl.arange(0, G_PAD)
    gmask = gi < n_groups
    mask = gmask[:, None] & (c < G)[None, :]
    row = (gi // groups_per_row).to(tl.int64)
    col = (gi % groups_per_row) * G
    g_offs = (row * (2 * N) + col)[:, None] + c[None, :]
    g = tl.load(x_ptr + g_offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + g_offs + N, mask=mask, other=0.0).to(tl.float32)
    # The SwiGLU result stays float32 (never rounded to x.dtype) up to the quantization.
    y = swiglu_f32(g, u, limit, 1.0, 0.0, POST, FAST)
    y = tl.where(mask, y, 0.0)
    codes, s = _quant_groups(y, eps, UE8M0, RECIP, NATIVE_FP8)
    q_offs = gi.to(tl.int64)[:, None] * G + c[None, :]
    tl.store(q_ptr + q_offs, codes.to(q_ptr.dtype.element_ty, bitcast=True), mask=mask)
    _store_scales(s_ptr, s, gi, gmask, groups_per_row, M, COL_MAJOR)


# Tile sizes (elements a program; num_warps, None: 4 up to 2048 elements, else 8). A dict so a
# tuning script can try others without editing the kernels. On an H100 (bf16, 8192 x 7168)
# 1024..8192 elements and 2..8 warps gave 1.1-1.33 TB/s; 2048 with 4 warps was best overall.
TILE = {"elems": 2048, "warps": None}


def _group_blocks(n_groups: int, group_size: int) -> tuple[int, int, int]:
    """(G_PAD, BLOCK_G, num_warps): ~TILE["elems"] elements a program, in whole groups (one
    group of up to 16384 when it is larger). Not shrunk for few groups: one tile a group size
    (a compile each on a GPU), some of it masked where the groups are fewer."""
    g_pad = triton.next_power_of_2(group_size)
    block_g = max(1, TILE["elems"] // g_pad)
    warps = TILE["warps"] or (4 if block_g * g_pad <= 2048 else 8)
    return g_pad, block_g, warps


def launch_fp8_quant(x, q, scales, *, group_size, eps, ue8m0, column_major, native_fp8=False):
    """x [M, K] contiguous (M, K > 0); q [M, K] float8_e4m3fn (or uint8); scales [M, K/G].
    native_fp8: round with the native E4M3 cast (only where `_caps.native_fp8_ok`)."""
    m, k = x.shape
    groups_per_row = k // group_size
    n_groups = m * groups_per_row
    g_pad, block_g, warps = _group_blocks(n_groups, group_size)
    _fp8_quant_kernel[(cdiv(n_groups, block_g),)](
        x,
        q,
        scales,
        n_groups,
        groups_per_row,
        m,
        eps,
        G=group_size,
        G_PAD=g_pad,
        BLOCK_G=block_g,
        UE8M0=ue8m0,
        COL_MAJOR=column_major,
        RECIP=ue8m0 and eps >= RECIP_MIN_EPS,
        NATIVE_FP8=native_fp8,
        num_warps=warps,
    )


def launch_silu_mul_fp8_quant(
    x, q, scales, *, group_size, limit, post, eps, ue8m0, column_major, native_fp8=False
):
    """x [M, 2N] contiguous (M, N > 0); q [M, N] float8_e4m3fn (or uint8); scales [M, N/G]."""
    m, n = q.shape
    groups_per_row = n // group_size
    n_groups = m * groups_per_row
    g_pad, block_g, warps = _group_blocks(n_groups, group_size)
    _silu_mul_fp8_quant_kernel[(cdiv(n_groups, block_g),)](
        x,
        q,
        scales,
        n_groups,
        groups_per_row,
        m,
        n,
        float("inf") if limit is None else limit,
        eps,
        G=group_size,
        G_PAD=g_pad,
        BLOCK_G=block_g,
        POST=post,
        FAST=SIGMOID["fast"],
        UE8M0=ue8m0,
        COL_MAJOR=column_major,
        RECIP=ue8m0 and eps >= RECIP_MIN_EPS,
        NATIVE_FP8=native_fp8,
        num_warps=warps,
    )


# --- MXFP4 dequantization --------------------------------------------------------------------


@triton.jit
def _e2m1_scaled_bits(b, SHIFT: tl.constexpr):
    """The E2M1 nibble at bit SHIFT (0 or 4) of int32 bytes `b` as float32 bits whose value is
    e2m1_value * 2**-126 exactly: magnitude bits m2 m1 m0 at bits 24..22 (code 1 is the
    subnormal 0.5 * 2**-126, codes 2..7 the normals 1, 1.5, 2, 3, 4, 6 times 2**-126), the sign
    bit 3 at bit 31 (code 8 is -0.0). 5 integer ops."""
    return ((b & (7 << SHIFT)) << (22 - SHIFT)) | ((b & (8 << SHIFT)) << (28 - SHIFT))


# The `mxfp4_dequant_bf16` variant (PARITY_TRITON_VARIANTS; off until timed): bfloat16 output
# computed in bfloat16 on a GPU (BF16_MUL) and 8192 elements a program instead of 2048. sm_90
# SASS (triton 3.6): the kernel is short and a 2048-element program (4 warps) gives a thread 8
# bytes, so fixed work is much of it (31 instructions a byte a thread at 1 x 64 blocks; 24-26 at
# 4-8 rows of 64 blocks, 8 warps); the bfloat16 form cuts the per-byte work of the float32 one
# (two FMUL, five integer ops and a select a value) to two multiplies, two masks and two HMUL2
# a byte: 15.5 at 4 x 64 blocks.
DEQUANT = {"bf16": variant_on("mxfp4_dequant_bf16")}


# R only bounds the rows: not specialised (a compile key each on a GPU); P = K/2 is a multiple
# of 16 whatever K, so its specialisation never splits a key.
@triton.jit(do_not_specialize=["R"])
def _mxfp4_dequant_kernel(
    p_ptr,  # uint8 [R, K/2]
    s_ptr,  # uint8 [R, K/32]
    y_ptr,  # [R, K]
    R,
    P,  # K / 2
    BLOCK_R: tl.constexpr,
    BLOCK_S: tl.constexpr,  # scale blocks (32 elements, 16 bytes) a program
    BF16_MUL: tl.constexpr = 0,  # bfloat16 y on a GPU: the values computed in bfloat16
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    sb = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    byte = tl.arange(0, 16)
    n_sb = P // 16
    rmask = rows < R
    row64 = rows.to(tl.int64)
    smask = rmask[:, None] & (sb < n_sb)[None, :]
    sc = tl.load(s_ptr + row64[:, None] * n_sb + sb[None, :], mask=smask, other=127)
    sc = sc.to(tl.int32)
    pcol = sb[:, None] * 16 + byte[None, :]  # [BLOCK_S, 16]
    pmask = smask[:, :, None]
    b = tl.load(p_ptr + row64[:, None, None] * P + pcol[None, :, :], mask=pmask, other=0)
    b = b.to(tl.int32)
    ycol = tl.program_id(1) * (BLOCK_S * 32) + tl.arange(0, BLOCK_S * 32)
    ymask = rmask[:, None] & (ycol < 2 * P)[None, :]
    if BF16_MUL:
        # value * 2**(code - 127) in bfloat16, exactly: the value (its pattern times 2**126),
        # times the scale 2**(code - 127) as a bfloat16 (code 0 the subnormal 2**-127, code 255
        # a NaN, so the block is NaN without a select): a power of two times at most 2
        # significant bits, at least 2**-128 (a bfloat16 subnormal) and inf past the range as
        # in float32. Two values an instruction (HMUL2.BF16).
        pair = e2m1_pair_bf16_bits(b)
        lo = pair.to(tl.uint16).to(tl.bfloat16, bitcast=True) * 2.0**126
        hi = (pair >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True) * 2.0**126
        sbits = tl.where(sc == 0, 0x40, tl.where(sc == 255, 0x7FC0, sc << 7))
        sf = sbits.to(tl.uint16).to(tl.bfloat16, bitcast=True)[:, :, None]
        lo = lo * sf
        hi = hi * sf
        out = tl.reshape(tl.join(lo, hi), (BLOCK_R, BLOCK_S * 32)).to(tl.bfloat16)
        tl.store(y_ptr + row64[:, None] * (2 * P) + ycol[None, :], out, mask=ymask)
        return
    # value * 2**(code - 127), exactly, as (value * 2**-126) * m1 * factor: m1 = 2**126 gives
    # the value (exact), factor = 2**(code - 127) is a normal power of two; code 0 (2**-127,
    # subnormal) takes m1 = 2**125 and factor 2**-126. Code 255 is NaN for the whole block.
    nan = (sc == 255)[:, :, None]
    m1 = tl.where(sc == 0, 2.0**125, 2.0**126)[:, :, None]
    factor = (tl.maximum(sc, 1) << 23).to(tl.float32, bitcast=True)[:, :, None]
    lo = (_e2m1_scaled_bits(b, 0).to(tl.float32, bitcast=True) * m1) * factor
    hi = (_e2m1_scaled_bits(b, 4).to(tl.float32, bitcast=True) * m1) * factor
    lo = tl.where(nan, float("nan"), lo)
    hi = tl.where(nan, float("nan"), hi)
    # element 2i (low nibble) then 2i + 1 (high nibble): interleave, then store contiguously
    vals = tl.reshape(tl.join(lo, hi), (BLOCK_R, BLOCK_S * 32))
    if y_ptr.dtype.element_ty == tl.bfloat16:
        # Every value (at most 2 significant bits, float32's exponent range, NaN 0x7FC00000) is
        # exact in bfloat16: the high half of its bits is the correctly rounded result.
        out = (vals.to(tl.int32, bitcast=True) >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        out = to_dtype_rne(vals, y_ptr.dtype.element_ty)
    tl.store(y_ptr + row64[:, None] * (2 * P) + ycol[None, :], out, mask=ymask)


def _dequant_blocks(n_sb: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_S, num_warps) for rows of `n_sb` scale blocks: the blocks of a row a
    program in four buckets (8, 16, 32, 64; 64 is 2048 outputs), several rows a program for
    fewer; never shrunk for few rows (masked). Four tiles whatever the shape (each a compile on
    a GPU). The `mxfp4_dequant_bf16` variant: 8192 elements a program."""
    elems = 8192 if DEQUANT["bf16"] else TILE["elems"]
    block_s = min(max(8, triton.next_power_of_2(n_sb)), 64)
    block_r = max(1, elems // (block_s * 32))
    return block_r, block_s, TILE["warps"] or (4 if block_r * block_s * 32 <= 2048 else 8)


def dequant_bf16_mul(dtype, device) -> int:
    """BF16_MUL of `_mxfp4_dequant_kernel` for output `dtype` on `device`: the variant,
    bfloat16 output, on a GPU (never the interpreter, whose bfloat16 arithmetic works on raw
    bit patterns)."""
    return int(
        DEQUANT["bf16"]
        and dtype == torch.bfloat16
        and torch.device(device).type == "cuda"
        and os.environ.get("TRITON_INTERPRET") != "1"
    )


def dequant_launch(rows: int, k: int, dtype, device) -> tuple[tuple, dict, int]:
    """(grid, constexprs, num_warps) of `_mxfp4_dequant_kernel` for `rows` rows of K elements
    into `dtype` on `device`: the one place that picks them (`launch_mxfp4_dequant` and
    mxfp4_dequant's plan)."""
    n_sb = k // 32
    block_r, block_s, warps = _dequant_blocks(n_sb)
    grid = (cdiv(rows, block_r), cdiv(n_sb, block_s))
    consts = dict(BLOCK_R=block_r, BLOCK_S=block_s, BF16_MUL=dequant_bf16_mul(dtype, device))
    return grid, consts, warps


def launch_mxfp4_dequant(packed, scales, y, rows, k):
    """packed [..., K/2], scales [..., K/32] uint8 contiguous, read as `rows` rows; y [..., K]
    contiguous (rows, K > 0)."""
    grid, consts, warps = dequant_launch(rows, k, y.dtype, y.device)
    _mxfp4_dequant_kernel[grid](packed, scales, y, rows, k // 2, **consts, num_warps=warps)
