"""Triton kernels of the fused MoE (`fused_moe.py` is the registration and the wrapper).

Pipeline, after the tokens are sorted by expert and padded to `BLOCK_SIZE_M` (moe_align):

1. fp8_block only: `_act_quant_kernel` quantizes x per token group (scaled by the router weight
   first when it applies on the input), exactly `fp8_quant`'s codes and scales.
2. `_moe_gemm_kernel` GEMM1: rows of x (by sorted flat index t*k+j) times w13[e].T -> `[T*k, 2N]`
   in x.dtype (the vLLM rounding the contract's tolerance allows).
3. `_act_quant_kernel`: SwiGLU in float32 of each `[T*k]` row; rounded to x.dtype, or (fp8_block)
   quantized per group straight from float32, fused (`silu_mul_fp8_quant`'s fused path).
4. `_moe_gemm_kernel` GEMM2: activation rows times w2[e].T, times the router weight, in x.dtype
   -> `[T*k, H]`.
5. `_reduce_k_kernel`: out[t] = sum over j = 0..k-1 in that order, float32, skipped slots (-1)
   masked out (never read), so the result is bitwise deterministic: no atomics anywhere. With
   k == 1, GEMM2 writes the output rows directly and skipped tokens are zero-filled.

Exactness of the quantized GEMMs:
- fp8: an E4M3 value has 4 significant bits, so a product of two is exact in float32; each K
  tile (inside one scale group) is a float32 sum of exact products, then times a_scale *
  w_scale. The reference sums dequantized products instead: the two differ only by float32
  rounding. On a GPU the native fp8 `tl.dot` is used (Hopper WGMMA accumulates a K tile with
  reduced internal precision, then the tile is promoted to the float32 accumulator per
  BLOCK_SIZE_K <= 128, as DeepGEMM and vLLM do). Under TRITON_INTERPRET=1 the operands are
  upcast to float32 first (the interpreter's cast, with the NaN codes it decodes as +-480
  patched back to NaN), which gives the same float32 math.
- mxfp4: two exact variants. (a) Scale after the dot: per MX block of 32, a dot on the raw
  E2M1 values (exact in bf16 and fp16, built as bit patterns) and the block's scale applied to
  the float32 partial product: no per-element multiply, the choice for small BLOCK_SIZE_M and
  the only one for fp16 (which cannot hold 2**+-127). (b) Dequantize the tile: an E2M1 value
  times a power of two has at most 2 significant bits, so it is exact in bfloat16 over the whole
  E8M0 range (bf16 has float32's exponent range); one dot per K tile, the multiply amortized
  over BLOCK_SIZE_M rows (bf16, BLOCK_SIZE_M > 32, or the config's MX_SCALE_AFTER_DOT = 0).
  (c) Dequantize first (bf16 only, from MX_DEQUANT_MIN_ROWS rows per expert on average):
  the `mxfp4_dequant` kernel writes every expert's weights in bf16 (the exact value * scale),
  then the quant "none" GEMMs run on them: the decode happens once per weight element instead
  of once per element and M block. All three give every product exactly and differ only in
  the float32 summation order; the E2M1 decode is pure bit construction (`_e2m1_pair_f32`).
- Under the interpreter, bf16 `tl.dot` multiplies the raw bit patterns (triton 3.9), so every
  dot operand is upcast to float32 there (exact: bf16/fp16 products fit in float32).
"""

from __future__ import annotations

import triton
import triton.language as tl

from parity.optimized.triton._fp8 import e2m1_pair_bf16_bits as _e2m1_pair_bf16_bits
from parity.optimized.triton._fp8 import e4m3_code, to_dtype_rne
from parity.optimized.triton._kernels_swiglu import swiglu_f32
from parity.optimized.triton._launch import cdiv, env, k_pad, launch
from parity.optimized.triton._launch import next_pow2 as _next_pow2
from parity.optimized.triton._moe_configs import UPCAST_ENV

_F32_MAX = tl.constexpr(3.4028234663852886e38)
_E4M3_MAX = tl.constexpr(448.0)
_FP8_EPS = tl.constexpr(1e-10)  # fp8_quant's default eps


_TWO_126 = tl.constexpr(2.0**126)  # exact in float32
_TWO_14 = tl.constexpr(2.0**14)


# 0x81C00000 as an int32: the sign bit, then the float32 exponent's low 2 bits and the top
# mantissa bit (where an E2M1 code's sign and 3 magnitude bits go)
_E2M1_F32_MASK = tl.constexpr(-0x7E400000)


@triton.jit
def _e2m1_pair_bits(packed, SHIFT: tl.constexpr, MASK: tl.constexpr):
    """(low, high) nibbles of packed E2M1 bytes as int32 bit patterns: each code's 3 magnitude
    bits at 28 - SHIFT .. 30 - SHIFT and its sign wherever MASK keeps a bit above them. From the
    sign-extended byte: the high nibble shifted left by 24 - SHIFT carries its sign (bit 7,
    repeated above it) up; the low one shifted to the top and back down SHIFT arithmetically
    repeats its sign (bit 3) above its magnitude. One shift pair or shift and one mask a code."""
    p = packed.to(tl.int8, bitcast=True).to(tl.int32)
    return ((p << 28) >> SHIFT) & MASK, (p << (24 - SHIFT)) & MASK


@triton.jit
def _e2m1_pair_f32(packed):
    """(low, high) nibbles of packed E2M1 bytes (bit 3 of a code the sign) as float32 values,
    exactly: each code's 3 magnitude bits go to the float32 exponent's low 2 bits and the top
    mantissa bit, its sign to bit 31, which is `value * 2**-126` (normal codes (1 + m/2) *
    2**(e - 127), code 1 (0.5) the subnormal 2**-127); times 2**126, an exact multiply by a power
    of two, is the value (-0 for code 8). The patterns: `_e2m1_pair_bits` with SHIFT 6 (sign to
    bit 31). sm_90 SASS (triton 3.6): 16.6 instructions a weight byte in the GEMV
    against 17.6 for two shifts and a masked or a code from the zero-extended byte, and 21.1
    for extracting the nibble first (`packed & 15`, `packed >> 4`)."""
    lo, hi = _e2m1_pair_bits(packed, 6, _E2M1_F32_MASK)
    return lo.to(tl.float32, bitcast=True) * _TWO_126, hi.to(tl.float32, bitcast=True) * _TWO_126


@triton.jit
def _e2m1_pair_to(packed, dtype: tl.constexpr, BF16_MUL: tl.constexpr = 0):
    """(low, high) nibbles of packed E2M1 bytes as `dtype` (bfloat16 or float16) values,
    exactly. bfloat16: the top half of the float32 value (its low 16 bits are zero: at most 2
    significant bits); BF16_MUL (a GPU only: the interpreter's bfloat16 arithmetic is on raw bit
    patterns) builds `value * 2**-126` as a bfloat16 pattern (code 1 the bfloat16 subnormal
    2**-127) and multiplies by 2**126 in bfloat16, two values an instruction (sm_90 HMUL2.BF16,
    subnormals kept): the same values. float16: the pattern with the magnitude bits at 11..9
    and the sign at 15 is value * 2**-14 (code 1 the float16 subnormal 2**-15), times 2**14 in
    float16: exact. The 16-bit patterns: `_e2m1_pair_bits` with SHIFT 22 (bfloat16) and 19
    (float16), the sign kept at bit 15; BF16_MUL 2 builds the same bfloat16 patterns with
    `_e2m1_pair_bf16_bits` (fewer instructions; PARITY_MOE_MX_BF16_MUL=2, off: no faster on the
    H100)."""
    if dtype == tl.bfloat16 and BF16_MUL == 2:
        p = _e2m1_pair_bf16_bits(packed)
        lo = p.to(tl.uint16).to(dtype, bitcast=True)
        hi = (p >> 16).to(tl.uint16).to(dtype, bitcast=True)
        return lo * _TWO_126, hi * _TWO_126
    elif dtype == tl.bfloat16 and BF16_MUL:
        lo, hi = _e2m1_pair_bits(packed, 22, 0x81C0)
        lo = lo.to(tl.uint16).to(dtype, bitcast=True)
        hi = hi.to(tl.uint16).to(dtype, bitcast=True)
        return lo * _TWO_126, hi * _TWO_126
    elif dtype == tl.bfloat16:
        lo, hi = _e2m1_pair_f32(packed)
        lo = (lo.to(tl.uint32, bitcast=True) >> 16).to(tl.uint16).to(dtype, bitcast=True)
        hi = (hi.to(tl.uint32, bitcast=True) >> 16).to(tl.uint16).to(dtype, bitcast=True)
        return lo, hi
    else:
        lo, hi = _e2m1_pair_bits(packed, 19, 0x8E00)
        lo, hi = lo.to(tl.uint16), hi.to(tl.uint16)
        lo = (lo.to(tl.float16, bitcast=True) * _TWO_14).to(tl.float16)
        hi = (hi.to(tl.float16, bitcast=True) * _TWO_14).to(tl.float16)
        return lo, hi


@triton.jit
def _e8m0_to_f32(code):
    """float32 `2 ** (code - 127)` of uint8 E8M0 codes; code 0 is the subnormal 2**-127, 255 NaN."""
    c = code.to(tl.int32)
    bits = tl.where(c == 0, 0x00400000, tl.where(c == 255, 0x7FC00000, c << 23))
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _fp8_to_f32(v):
    """float32 value of a float8e4nv tile, for the interpreter: its cast decodes the NaN codes
    0x7F/0xFF as +-480, so those are patched to NaN (the other 254 codes cast exactly)."""
    bits = v.to(tl.uint8, bitcast=True)
    return tl.where((bits & 0x7F) == 0x7F, float("nan"), v.to(tl.float32))


@triton.jit
def mx_block_dot(a_even, a_odd, packed, sc, UPCAST_DOT: tl.constexpr):
    """One MX block of 32 along K as a tile product, its E8M0 scale applied after: the even
    and odd activation columns against the low and high nibbles of the packed E2M1 codes
    (exact in bf16 and fp16). Shared by the sorted and the decode path."""
    lo, hi = _e2m1_pair_to(packed, a_even.dtype)
    if UPCAST_DOT:
        part = tl.dot(a_even.to(tl.float32), lo.to(tl.float32))
        part = tl.dot(a_odd.to(tl.float32), hi.to(tl.float32), part)
    else:
        part = tl.dot(a_even, lo)
        part = tl.dot(a_odd, hi, part)
    return part * sc


@triton.jit
def dot_acc(acc, a, b, a_s, b_s, QUANT: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """acc plus the tile product a . b: for block FP8 (QUANT 1) one scale group's product in
    float32, times a_s per row then b_s per column (the per-group scales); else accumulated in
    the dot itself. Shared by the sorted and the decode path."""
    if QUANT == 1:
        if UPCAST_DOT:
            d = tl.dot(_fp8_to_f32(a), _fp8_to_f32(b), input_precision="ieee")
        else:
            d = tl.dot(a, b)
        out = acc + d * a_s[:, None] * b_s[None, :]
    else:
        if UPCAST_DOT:
            out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            out = tl.dot(a, b, acc)
    return out


# Compile keys (issue 11, section 4): num_valid (T * k) and num_pid_m only bound rows and
# programs, so they are not specialised; the row divisor (k for GEMM1, 1 for GEMM2) divides once
# a row block, so it is a run-time int, not a constexpr: one compile serves every token count
# and top-k (GEMM2's divisor 1 keeps triton's specialisation, a division-free kernel).
@triton.jit(do_not_specialize=["num_valid", "num_pid_m"])
def _moe_gemm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    a_scale_ptr,
    b_scale_ptr,
    topk_w_ptr,
    sorted_ids_ptr,
    expert_ids_ptr,
    num_post_ptr,
    N,
    K,
    num_valid,
    num_pid_m,
    stride_am,
    stride_ak,
    stride_be,
    stride_bn,
    stride_bk,
    stride_cm,
    stride_cn,
    stride_asm,
    stride_ask,
    stride_bse,
    stride_bsn,
    stride_bsk,
    group_n,
    group_k,
    a_row_div,  # top_k for GEMM1 (row of x = flat index // k), 1 for GEMM2
    MUL_WEIGHT: tl.constexpr,
    QUANT: tl.constexpr,  # 0 none, 1 fp8 block, 2 mxfp4
    MX_SCALE_AFTER_DOT: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    SKIP_LAST_K: tl.constexpr,  # fault injection for the tuner's self-test; 0 in use
    BLOCK_SIZE_M: tl.constexpr,
    BLOCK_SIZE_N: tl.constexpr,
    BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
):
    """C[row] = A[row // a_row_div] @ B[e].T (times the router weight), for the rows of one
    BLOCK_SIZE_M block of sorted flat indices (all of one expert e) and one BLOCK_SIZE_N block of
    output columns. B is `[E, N, K]` (mxfp4: `[E, N, K // 2]` packed)."""
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    # Grouped ordering: GROUP_SIZE_M row blocks share the weight columns in L2.
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    # The grid is a data-independent upper bound; blocks past the padded total do nothing.
    num_post = tl.load(num_post_ptr)
    if pid_m * BLOCK_SIZE_M >= num_post:
        return

    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    tok = tl.load(sorted_ids_ptr + offs_m)
    tok_mask = tok < num_valid  # padding holds T*k
    a_rows = (tok // a_row_div).to(tl.int64)
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)

    # Wrapped column offsets keep the weight loads in bounds; the store masks the tail.
    offs_n = (pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)) % N
    b_cols = b_ptr + expert * stride_be + offs_n.to(tl.int64)[None, :] * stride_bn
    a_base = a_ptr + a_rows[:, None] * stride_am

    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    num_k = tl.cdiv(K, BLOCK_SIZE_K) - SKIP_LAST_K
    if QUANT == 2:
        s_cols = b_scale_ptr + expert * stride_bse + offs_n.to(tl.int64)[None, :] * stride_bsn
        if MX_SCALE_AFTER_DOT:
            # One dot per MX block of 32 on the raw E2M1 values (exact in bf16 and fp16), its
            # scale applied to the float32 partial product: no per-element multiply, so cheap
            # for small BLOCK_SIZE_M; the only exact way for fp16 (2**+-127 is out of its range).
            offs16 = tl.arange(0, 16)
            for kb in range(0, num_k):
                for g in tl.static_range(BLOCK_SIZE_K // 32):
                    kg = kb * BLOCK_SIZE_K + 32 * g
                    hmask = offs16 < (K - kg) // 2
                    amask = tok_mask[:, None] & hmask[None, :]
                    # byte i holds elements 2i (low nibble) and 2i + 1 (high nibble): A is split
                    # into its even and odd columns instead of interleaving the weight tile
                    a_even = tl.load(
                        a_base + (kg + 2 * offs16)[None, :] * stride_ak, mask=amask, other=0.0
                    )
                    a_odd = tl.load(
                        a_base + (kg + 2 * offs16 + 1)[None, :] * stride_ak, mask=amask, other=0.0
                    )
                    packed = tl.load(
                        b_cols + (kg // 2 + offs16)[:, None] * stride_bk,
                        mask=hmask[:, None],
                        other=0,
                    )
                    smask = (tl.zeros((1, BLOCK_SIZE_N), tl.int32) + kg) < K  # not scalar:
                    sc = _e8m0_to_f32(  # the interpreter rejects scalar masks
                        tl.load(s_cols + (kg // 32) * stride_bsk, mask=smask, other=0)
                    )
                    acc += mx_block_dot(a_even, a_odd, packed, sc, UPCAST_DOT)
        else:
            # Dequantize the weight tile (value times scale: exact in bf16 over the whole E8M0
            # range), one dot per K tile: the per-element multiply is amortized over BLOCK_M.
            HALF_K: tl.constexpr = BLOCK_SIZE_K // 2
            NUM_G: tl.constexpr = BLOCK_SIZE_K // 32
            offs_h = tl.arange(0, HALF_K)
            offs_g = tl.arange(0, NUM_G)
            for kb in range(0, num_k):
                k0 = kb * BLOCK_SIZE_K
                hmask = offs_h < (K - k0) // 2
                amask = tok_mask[:, None] & hmask[None, :]
                a_even = tl.load(
                    a_base + (k0 + 2 * offs_h)[None, :] * stride_ak, mask=amask, other=0.0
                )
                a_odd = tl.load(
                    a_base + (k0 + 2 * offs_h + 1)[None, :] * stride_ak, mask=amask, other=0.0
                )
                packed = tl.load(
                    b_cols + (k0 // 2 + offs_h)[:, None] * stride_bk, mask=hmask[:, None], other=0
                )
                # one scale per (32 elements of K, column), broadcast over its 16 packed rows
                gmask = offs_g < (K - k0) // 32
                sc = tl.load(
                    s_cols + (k0 // 32 + offs_g)[:, None] * stride_bsk, mask=gmask[:, None], other=0
                )
                sc = tl.broadcast_to(_e8m0_to_f32(sc)[:, None, :], (NUM_G, 16, BLOCK_SIZE_N))
                sc = tl.reshape(sc, (HALF_K, BLOCK_SIZE_N))
                w_lo, w_hi = _e2m1_pair_f32(packed)
                w_lo = w_lo * sc  # exact: <= 2 significant bits * 2**e
                w_hi = w_hi * sc
                if UPCAST_DOT:
                    acc = tl.dot(a_even.to(tl.float32), w_lo, acc, input_precision="ieee")
                    acc = tl.dot(a_odd.to(tl.float32), w_hi, acc, input_precision="ieee")
                else:
                    acc = tl.dot(a_even, w_lo.to(a_even.dtype), acc)
                    acc = tl.dot(a_odd, w_hi.to(a_odd.dtype), acc)
    else:
        offs_k = tl.arange(0, BLOCK_SIZE_K)
        for kb in range(0, num_k):
            k0 = kb * BLOCK_SIZE_K
            kmask = offs_k < K - k0
            a = tl.load(
                a_base + (k0 + offs_k)[None, :] * stride_ak,
                mask=tok_mask[:, None] & kmask[None, :],
                other=0.0,
            )
            b = tl.load(b_cols + (k0 + offs_k)[:, None] * stride_bk, mask=kmask[:, None], other=0.0)
            if QUANT == 1:
                # BLOCK_SIZE_K divides group_k: the whole tile lies in one scale group.
                kg = k0 // group_k
                a_s = tl.load(
                    a_scale_ptr + a_rows * stride_asm + kg * stride_ask, mask=tok_mask, other=0.0
                )
                b_s = tl.load(
                    b_scale_ptr
                    + expert * stride_bse
                    + (offs_n // group_n) * stride_bsn
                    + kg * stride_bsk
                )
                acc = dot_acc(acc, a, b, a_s, b_s, QUANT, UPCAST_DOT)
            else:
                acc = dot_acc(acc, a, b, 0.0, 0.0, QUANT, UPCAST_DOT)

    if MUL_WEIGHT:
        w = tl.load(topk_w_ptr + tok, mask=tok_mask, other=0.0)
        acc = acc * w[:, None]
    offs_cn = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    c_ptrs = c_ptr + tok.to(tl.int64)[:, None] * stride_cm + offs_cn[None, :] * stride_cn
    c = to_dtype_rne(acc, c_ptr.dtype.element_ty)
    tl.store(c_ptrs, c, mask=tok_mask[:, None] & (offs_cn[None, :] < N))


@triton.jit
def _act_quant_kernel(
    in_ptr,
    out_ptr,
    scale_ptr,
    ids_ptr,
    w_ptr,
    n_cols,
    stride_in,
    stride_out,
    stride_sm,
    limit,  # +inf without a limit: every clamp keeps its operand (as in _kernels_swiglu)
    alpha,
    beta,
    SWIGLU: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    CLAMP_POST: tl.constexpr,
    QUANT_FP8: tl.constexpr,
    SKIP_INVALID: tl.constexpr,
    MUL_WEIGHT: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    GROUPS_PER_PROG: tl.constexpr,
):
    """One row, GROUPS_PER_PROG groups of GROUP columns: y = SwiGLU(row) (or the row itself,
    times the router weight when MUL_WEIGHT), in float32; then either y rounded to the output
    dtype, or (QUANT_FP8) per group s = max(amax, eps) / 448 and the E4M3 codes of y / s."""
    row = tl.program_id(0)
    if SKIP_INVALID:
        # rows of skipped (-1) slots are never read by GEMM2: do not compute them
        if tl.load(ids_ptr + row) < 0:
            return
    g = tl.program_id(1) * GROUPS_PER_PROG + tl.arange(0, GROUPS_PER_PROG)
    c = tl.arange(0, BLOCK_G)
    col = g[:, None] * GROUP + c[None, :]
    mask = (c[None, :] < GROUP) & (col < n_cols)
    row64 = row.to(tl.int64)
    src = in_ptr + row64 * stride_in
    if SWIGLU:
        if INTERLEAVED:
            gate = tl.load(src + 2 * col, mask=mask, other=0.0).to(tl.float32)
            up = tl.load(src + 2 * col + 1, mask=mask, other=0.0).to(tl.float32)
        else:
            gate = tl.load(src + col, mask=mask, other=0.0).to(tl.float32)
            up = tl.load(src + n_cols + col, mask=mask, other=0.0).to(tl.float32)
        y = swiglu_f32(gate, up, limit, alpha, beta, CLAMP_POST, False)
    else:
        y = tl.load(src + col, mask=mask, other=0.0).to(tl.float32)
        if MUL_WEIGHT:
            y = y * tl.load(w_ptr + row)
    store_act(
        y,
        mask,
        out_ptr + row64 * stride_out,
        scale_ptr + row64 * stride_sm,
        g,
        col,
        n_cols,
        GROUP,
        QUANT_FP8,
    )


@triton.jit
def store_act(
    y, mask, dst_row, scale_row, g, col, n_cols, GROUP: tl.constexpr, QUANT_FP8: tl.constexpr
):
    """Store float32 `y` [groups, BLOCK_G] (columns `col`, valid where `mask`) of one row:
    rounded to the output dtype, or (QUANT_FP8) per group s = max(amax, eps) / 448 and the
    E4M3 codes of y / s, exactly `fp8_quant`'s (scales to `scale_row[g]`)."""
    dst = dst_row + col
    if QUANT_FP8:
        # amax with inf counted as the float32 max and NaN propagated (a GPU max drops NaN)
        a = tl.where(mask, tl.abs(y), 0.0)
        a = tl.where(a > _F32_MAX, _F32_MAX, a)
        amax = tl.max(a, axis=1)
        has_nan = tl.max(tl.where(mask & (y != y), 1, 0), axis=1) > 0
        amax = tl.where(has_nan, float("nan"), amax)
        amax = tl.where(amax < _FP8_EPS, _FP8_EPS, amax)  # NaN compares false: kept
        s = tl.math.div_rn(amax, tl.full(amax.shape, _E4M3_MAX, tl.float32))
        code = e4m3_code(tl.math.div_rn(y, s[:, None]))  # true division, as fp8_quant
        tl.store(dst, code.to(tl.uint8).to(tl.float8e4nv, bitcast=True), mask=mask)
        gmask = g * GROUP < n_cols
        tl.store(scale_row + g, s, mask=gmask)
    else:
        tl.store(dst, to_dtype_rne(y, dst_row.dtype.element_ty), mask=mask)


# k is a run-time int under an unrolled bound K_PAD >= k (slots j >= k masked): k makes no
# compile key below K_PAD (`k_pad`), as H makes none within a BLOCK_H bucket.
@triton.jit(do_not_specialize=["top_k"])
def _reduce_k_kernel(
    in_ptr, ids_ptr, out_ptr, H, stride_in, stride_out, top_k, K_PAD: tl.constexpr,
    BLOCK_H: tl.constexpr,
):  # fmt: skip
    """out[t] = sum_{j=0..k-1} in[t*k + j] in float32, in that order; slots with id -1 are
    masked (their rows were never written). Every output row is written (zeros if all -1)."""
    t = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = offs < H
    acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for j in tl.static_range(K_PAD):
        # a padding slot reads slot k-1's id (in bounds) and is masked
        flat = t.to(tl.int64) * top_k + tl.minimum(j, top_k - 1)
        expert = tl.load(ids_ptr + flat)
        valid = (offs * 0 + expert) >= 0  # as a vector: the interpreter rejects scalar masks
        valid = valid & ((offs * 0 + j) < top_k)
        v = tl.load(in_ptr + flat * stride_in + offs, mask=hmask & valid, other=0.0)
        acc += v.to(tl.float32)
    out = to_dtype_rne(acc, out_ptr.dtype.element_ty)
    tl.store(out_ptr + t.to(tl.int64) * stride_out + offs, out, mask=hmask)


# --- launch ---------------------------------------------------------------------------------------


def act_tiles(n_cols: int, group: int | None, interpret: bool) -> tuple[int, int, int, int]:
    """(GROUP, BLOCK_G, groups, GROUPS_PER_PROG) of an activation row of `n_cols` columns, fp8
    groups of `group` (None: no quantization, the group is only a tile). Under the interpreter
    every program costs Python overhead: one program a row there. On a GPU 2048 columns a program
    whatever N (a narrow N is masked), so the tile follows the fp8 group alone and N makes no
    compile key (issue 11, section 4)."""
    if group is not None:
        block_g = _next_pow2(group)
    elif interpret:
        group = block_g = min(_next_pow2(n_cols), 1024)
    else:
        group = block_g = 1024
    n_groups = cdiv(n_cols, group)
    gpp = _next_pow2(n_groups) if interpret else max(1, 2048 // block_g)
    return group, block_g, n_groups, gpp


def block_h(h: int, interpret: bool) -> int:
    """The columns a program of a k-sum: the whole row in the interpreter (one program a row),
    else three tiles (256, 512, 1024) so that H makes three compile keys at most."""
    return _next_pow2(h) if interpret else min(max(_next_pow2(h), 256), 1024)


def _launch_gemm(
    a,
    b,
    c,
    a_scale,
    b_scale,
    topk_w,
    align,
    *,
    n,
    k_dim,
    row_div,
    mul_weight,
    quant,
    group,
    cfg,
    upcast,
    mx_scale_after_dot,
    num_valid,
    num_pid_m,
):
    sorted_ids, expert_ids, num_post = align
    bm, bn = cfg["BLOCK_SIZE_M"], cfg["BLOCK_SIZE_N"]
    qcode = {"none": 0, "fp8_block": 1, "mxfp4": 2}[quant]
    dummy = c
    a_s = a_scale if a_scale is not None else dummy
    b_s = b_scale if b_scale is not None else dummy
    a_ss = a_scale.stride() if a_scale is not None else (0, 0)
    b_ss = b_scale.stride() if b_scale is not None else (0, 0, 0)
    grid = (num_pid_m * cdiv(n, bn),)
    _moe_gemm_kernel[grid](
        a,
        b,
        c,
        a_s,
        b_s,
        topk_w,
        sorted_ids,
        expert_ids,
        num_post,
        n,
        k_dim,
        num_valid,
        num_pid_m,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        b.stride(2),
        c.stride(0),
        c.stride(1),
        a_ss[0],
        a_ss[1],
        b_ss[0],
        b_ss[1],
        b_ss[2],
        group[0],
        group[1],
        row_div,
        MUL_WEIGHT=mul_weight,
        QUANT=qcode,
        MX_SCALE_AFTER_DOT=mx_scale_after_dot,
        UPCAST_DOT=upcast,
        SKIP_LAST_K=int(cfg.get("SKIP_LAST_K", 0)),
        BLOCK_SIZE_M=bm,
        BLOCK_SIZE_N=bn,
        BLOCK_SIZE_K=cfg["BLOCK_SIZE_K"],
        GROUP_SIZE_M=cfg["GROUP_SIZE_M"],
        num_warps=cfg.get("num_warps", 4),
        num_stages=cfg.get("num_stages", 3),
    )


def gemm1_input(x, ids, topk_w, fp8: bool, block_shape, on_input: bool, interpret: bool):
    """(a1, a1_scales): GEMM1's activation input, shared by the sorted and the decode path: x
    itself, or (fp8) x quantized per group of block_shape[1] columns as `fp8_quant` does, scaled
    by the router weight first when it goes on the input."""
    import torch

    if not fp8:
        return x, None
    t, h = x.shape
    gk = block_shape[1]
    a1 = torch.empty((t, h), dtype=torch.float8_e4m3fn, device=x.device)
    a1_s = torch.empty((t, h // gk), dtype=torch.float32, device=x.device)
    _launch_act(
        x,
        a1,
        a1_s,
        ids,
        topk_w,
        n_cols=h,
        swiglu=False,
        quant_fp8=True,
        group=gk,
        skip_invalid=False,
        mul_weight=on_input,
        limit=None,
        alpha=1.0,
        beta=0.0,
        interleaved=False,
        clamp_post=False,
        interpret=interpret,
    )
    return a1, a1_s


def _launch_act(
    src,
    dst,
    scales,
    ids,
    weights,
    *,
    n_cols,
    swiglu,
    quant_fp8,
    group,
    skip_invalid,
    mul_weight,
    limit,
    alpha,
    beta,
    interleaved,
    clamp_post,
    interpret,
):
    rows = src.shape[0]
    group, block_g, n_groups, gpp = act_tiles(n_cols, group if quant_fp8 else None, interpret)
    grid = (rows, cdiv(n_groups, gpp))
    args = (
        src,
        dst,
        scales if scales is not None else dst,
        ids,
        weights,
        n_cols,
        src.stride(0),
        dst.stride(0),
        scales.stride(0) if scales is not None else 0,
        float(limit) if limit is not None else float("inf"),
        float(alpha),
        float(beta),
    )
    consts = dict(
        SWIGLU=swiglu,
        INTERLEAVED=interleaved,
        CLAMP_POST=clamp_post,
        QUANT_FP8=quant_fp8,
        SKIP_INVALID=skip_invalid,
        MUL_WEIGHT=mul_weight,
        GROUP=group,
        BLOCK_G=block_g,
        GROUPS_PER_PROG=gpp,
    )
    launch("act_quant", _act_quant_kernel, grid, args, consts, num_warps=4)


def dequant_mxfp4(w, scale, dtype):
    """MXFP4 weights `[E, R, K // 2]` uint8 with E8M0 scales `[E, R, K // 32]` as a new
    `[E, R, K]` tensor of `dtype` (bfloat16 only: exact), one launch of the `mxfp4_dequant`
    kernel (the op's own, bit-exact to the reference)."""
    import torch

    from parity.optimized.triton._kernels_quant import launch_mxfp4_dequant

    if dtype != torch.bfloat16:
        raise ValueError(f"dequant_mxfp4: {dtype} cannot hold every MXFP4 value exactly")
    e, r, kh = w.shape
    out = torch.empty((e, r, 2 * kh), dtype=dtype, device=w.device)
    if out.numel() == 0:
        return out
    launch_mxfp4_dequant(w.contiguous(), scale.contiguous(), out, e * r, 2 * kh)
    return out


def use_dequant_first(cfg, quant, dtype, t, k, e) -> bool:
    """Whether mxfp4 dequantizes the weights first: bfloat16 activations (float16 cannot hold
    2**+-127: it keeps the exact scale-after-dot GEMM), and on average at least
    MX_DEQUANT_MIN_ROWS rows per expert (t * k >= threshold * e; 0 disables)."""
    import torch

    thr = int(cfg.get("MX_DEQUANT_MIN_ROWS", 0))
    return quant == "mxfp4" and dtype == torch.bfloat16 and thr > 0 and t * k >= thr * e


def run_fused_moe(
    x,
    w13,
    w2,
    topk_weights,
    topk_ids,
    align,
    *,
    quant,
    w13_scale,
    w2_scale,
    limit,
    alpha,
    beta,
    interleaved,
    clamp_post,
    on_input,
    block_shape,
    cfg,
    interpret,
):
    """Launch the pipeline on validated inputs with T > 0; `align` is moe_align's output for
    BLOCK_SIZE_M. Returns `out [T, H]` in x.dtype."""
    import torch

    t, h = x.shape
    k = topk_ids.shape[1]
    e, two_n = w13.shape[0], w13.shape[1]
    n = two_n // 2
    dev, dt = x.device, x.dtype
    num_valid = t * k
    bm = cfg["BLOCK_SIZE_M"]
    # every non-empty block holds at least one valid slot; each expert adds one partial block
    num_pid_m = min(cdiv(align[0].numel(), bm), cdiv(num_valid, bm) + min(e, num_valid))
    topk_w = topk_weights.contiguous()
    ids = topk_ids.contiguous()
    x = x.contiguous()
    if use_dequant_first(cfg, quant, dt, t, k, e):
        # many rows per expert: dequantize every expert's weights once (exact in bf16, one
        # launch each) and run the plain bf16 GEMMs, instead of dequantizing each weight tile
        # once per M block inside the GEMM
        w13 = dequant_mxfp4(w13, w13_scale, dt)
        w2 = dequant_mxfp4(w2, w2_scale, dt)
        quant, w13_scale, w2_scale = "none", None, None
    fp8 = quant == "fp8_block"
    # mxfp4: scales after the dot for fp16 (required) and for small M tiles (cheaper), unless
    # the config says otherwise (bf16 only)
    after = cfg.get("MX_SCALE_AFTER_DOT")
    if after is None:
        after = cfg["BLOCK_SIZE_M"] <= 32
    mx_after = quant == "mxfp4" and (dt == torch.float16 or bool(after))
    group = tuple(block_shape) if fp8 else (1, 1)
    common = dict(
        cfg=cfg,
        upcast=interpret or env(UPCAST_ENV) == "1",
        mx_scale_after_dot=mx_after,
        num_valid=num_valid,
        num_pid_m=num_pid_m,
        quant=quant,
        group=group,
    )

    a1, a1_s = gemm1_input(x, ids, topk_w, fp8, block_shape, on_input, interpret)

    c1 = torch.empty((num_valid, two_n), dtype=dt, device=dev)
    _launch_gemm(
        a1,
        w13,
        c1,
        a1_s,
        w13_scale,
        topk_w,
        align,
        n=two_n,
        k_dim=h,
        row_div=k,
        mul_weight=on_input and not fp8,
        **common,
    )

    if fp8:
        a2 = torch.empty((num_valid, n), dtype=torch.float8_e4m3fn, device=dev)
        a2_s = torch.empty((num_valid, n // block_shape[1]), dtype=torch.float32, device=dev)
    else:
        a2 = torch.empty((num_valid, n), dtype=dt, device=dev)
        a2_s = None
    _launch_act(
        c1,
        a2,
        a2_s,
        ids,
        topk_w,
        n_cols=n,
        swiglu=True,
        quant_fp8=fp8,
        group=block_shape[1] if fp8 else 0,
        skip_invalid=True,
        mul_weight=False,
        limit=limit,
        alpha=alpha,
        beta=beta,
        interleaved=interleaved,
        clamp_post=clamp_post,
        interpret=interpret,
    )

    out = torch.empty((t, h), dtype=dt, device=dev)
    if k == 1:
        # one slot per token: GEMM2 writes the output rows directly; skipped tokens become 0
        _launch_gemm(
            a2,
            w2,
            out,
            a2_s,
            w2_scale,
            topk_w,
            align,
            n=h,
            k_dim=n,
            row_div=1,
            mul_weight=not on_input,
            **common,
        )
        out.masked_fill_(ids < 0, 0.0)
        return out
    c2 = torch.empty((num_valid, h), dtype=dt, device=dev)
    _launch_gemm(
        a2,
        w2,
        c2,
        a2_s,
        w2_scale,
        topk_w,
        align,
        n=h,
        k_dim=n,
        row_div=1,
        mul_weight=not on_input,
        **common,
    )
    bh = block_h(h, interpret)
    _reduce_k_kernel[(t, cdiv(h, bh))](
        c2, ids, out, h, c2.stride(0), out.stride(0), k, K_PAD=k_pad(k), BLOCK_H=bh, num_warps=4
    )
    return out
