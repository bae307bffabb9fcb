"""The decode path of the Triton fused MoE: few tokens (T * k <= DECODE_MAX_PAIRS), where the
layer's cost is reading the touched experts' weights once.

1. `_group_kernel` (one program): the T*k (token, slot) pairs grouped by expert, stably, in
   O((T*k)**2) compares: `pairs` (pair indices, expert by expert) and one slot per distinct
   expert (expert, first position, count); slots past the distinct count get count 0. No sort
   over all experts, no padding, no host sync.
2. `_gemm_kernel` GEMM1 and GEMM2: grid (slot, N block, K split); each program reads its
   expert's `[BLOCK_N, K / split]` weight slice exactly once (rows of an expert beyond BLOCK_M,
   only possible with many tokens or repeated experts, loop and re-read) and writes float32
   partials `[split, pair, N]`. BLOCK_M == 1: a GEMV on CUDA cores; else tl.dot on rows padded
   to BLOCK_M. Split-K is deterministic: partials to a buffer, summed by the next kernel in
   split order; no atomics.
3. `_act_kernel`: per valid pair, the GEMM1 partials summed, (router weight on the input), then
   rounded to x.dtype (the sorted path's GEMM1 output rounding), SwiGLU in float32, stored
   rounded to x.dtype or quantized per group exactly as `fp8_quant` (`store_act`, shared).
4. `_out_kernel`: out[t] = sum over j = 0..k-1 in order of round(w_j * sum over splits), in
   float32, skipped slots never read, every row written.

Numerics are the sorted path's (`_kernels_fused_moe.py`): every product exact in float32
(bf16/fp16 x bf16/fp16; E4M3 x E4M3 per scale group, times a_scale then w_scale; an E2M1 value
times x, the MX block's partial sum then times its E8M0 scale), only the float32 summation
order differs. The same roundings, in the same places: GEMM1 output, activation (or its FP8
codes), each expert's weighted output to x.dtype, the k-sum in float32.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from parity.optimized.triton._fp8 import to_dtype_rne
from parity.optimized.triton._kernels_fused_moe import (
    _E2M1_F32_MASK,
    _TWO_126,
    _e2m1_pair_f32,
    _e2m1_pair_to,
    _e8m0_to_f32,
    _fp8_to_f32,
    act_tiles,
    block_h,
    dot_acc,
    mx_block_dot,
    store_act,
)
from parity.optimized.triton._kernels_swiglu import swiglu_f32
from parity.optimized.triton._launch import cdiv, env, k_pad, launch
from parity.optimized.triton._launch import next_pow2 as _next_pow2
from parity.optimized.triton._moe_configs import UPCAST_ENV

# Compile keys (issue 11, section 4; each new one compiles on a GPU): integer arguments that only
# bound rows or index scalars are not specialised, nor the alignment of the scratch slices and
# ids read a scalar at a time; a size that masks a vectorised access (N of the GEMM and the act
# kernel, H of the output kernel) or enters an address of one (strides, K) keeps its
# specialisation. Tiles depend on the sizes through a few buckets.
_SCRATCH = ["pairs_ptr", "slot_e_ptr", "slot_start_ptr", "slot_cnt_ptr"]
# mxfp4 decode GEMMs on whole MX blocks (16-byte weight loads; the dot tile's one K-32 dot a
# block). The default since H100 2026-12-06 (graph replay, T 1 172.0 -> 168.8 us, T 16 901.0 ->
# 806.4 us; fused_moe's nightly, 9000 examples, passed with it); PARITY_MOE_MX_VEC=0 keeps the
# byte-wise loads. Read once at import.
MX_VEC_ENV = "PARITY_MOE_MX_VEC"
_MX_VEC = os.environ.get(MX_VEC_ENV, "1") != "0"
# The mxfp4 dot tile's E2M1 values scaled by 2**126 in bfloat16, two an instruction (sm_90 SASS
# of the 128 x 64 tile, triton 3.6: 19.2 -> 17.2 instructions a weight byte; H100 2026-12-06,
# graph replay, T 16 661.2 -> 627.5 us; its every-byte and decode tests passed there): the
# default; PARITY_MOE_MX_BF16_MUL=0 scales in float32. Never under UPCAST_DOT (the
# interpreter's bfloat16 arithmetic works on raw bit patterns). Read once at import.
# PARITY_MOE_MX_BF16_MUL=2: the same bfloat16 patterns from two multiplies a byte
# (`_e2m1_pair_bf16_bits`; sm_90 SASS 17.2 -> 15.2 instructions a weight byte), off: no faster
# on the H100 (2026-12-06).
MX_BF16_MUL_ENV = "PARITY_MOE_MX_BF16_MUL"
_MX_BF16_MUL = {"0": 0, "2": 2}.get(os.environ.get(MX_BF16_MUL_ENV, "1"), 1)
# The mxfp4 T 1 GEMV on int32 words with the codes decoded in PTX (`_e2m1_word_f32_ptx`): sm_90
# SASS (triton 3.6) of the GEMV 32 x 256 11.7 instructions a weight byte against 14.0 for the
# default (the [1, K] activations), 10.3 at 128 x 128; PARITY_MOE_MX_PTX=2 also hands it its
# activations in float32 (converted once a GEMM): 10.2 at 32 x 256. The GPU default since H100
# 2026-12-06 (graph replay at T 1 119.5 -> 107.3 us, fused_moe's nightly with it 9000 examples
# pass); PARITY_MOE_MX_PTX=0 turns it off, =2 (no faster there) adds the float32 activations.
# Never under the interpreter, which runs no inline assembly. Read once at import.
MX_PTX_ENV = "PARITY_MOE_MX_PTX"
_MX_PTX = {"0": 0, "2": 2}.get(os.environ.get(MX_PTX_ENV, "1"), 1)


@triton.jit(
    do_not_specialize=["P", "S", "E"],
    do_not_specialize_on_alignment=["ids_ptr", *_SCRATCH, "clean_ptr", "bad_ptr"],
)
def _group_kernel(
    ids_ptr,
    pairs_ptr,
    slot_e_ptr,
    slot_start_ptr,
    slot_cnt_ptr,
    clean_ptr,
    bad_ptr,
    P,
    S,
    E,
    BLOCK_P: tl.constexpr,
):
    """Pairs grouped by expert (ascending id, pair order within an expert) and one slot per
    distinct expert id, all from one [P, P] comparison. Skipped pairs (-1) are left out. An id
    outside [-1, E) is skipped as -1 too: `clean` gets the ids every later kernel reads, and
    `bad[0]` is 1 where any id was out of range (the host raises on it after the launches, so
    the call reads the ids back once, at its end, instead of stalling before its first kernel)."""
    offs = tl.arange(0, BLOCK_P)
    raw = tl.load(ids_ptr + offs, mask=offs < P, other=-1)
    out_of_range = (raw < -1) | (raw >= E)
    ids = tl.where(out_of_range, -1, raw)
    tl.store(clean_ptr + offs, ids, mask=offs < P)
    tl.store(bad_ptr, tl.max(out_of_range.to(tl.int32), axis=0))
    valid = ids >= 0
    a = ids[:, None]  # pair p (rows) against pair q (columns)
    b = ids[None, :]
    vq = valid[None, :]
    same = (a == b) & vq
    rank = tl.sum(tl.where(same & (offs[None, :] < offs[:, None]), 1, 0), axis=1)
    count = tl.sum(tl.where(same, 1, 0), axis=1)
    less = (b < a) & vq
    start = tl.sum(tl.where(less, 1, 0), axis=1)  # valid pairs of lower expert ids
    tl.store(pairs_ptr + start + rank, offs, mask=valid)
    first = valid & (rank == 0)
    slot = tl.sum(tl.where(less & first[None, :], 1, 0), axis=1)  # distinct lower ids
    tl.store(slot_e_ptr + slot, ids, mask=first)
    tl.store(slot_start_ptr + slot, start, mask=first)
    tl.store(slot_cnt_ptr + slot, count, mask=first)
    distinct = tl.sum(tl.where(first, 1, 0), axis=0)
    tl.store(slot_cnt_ptr + offs, offs * 0, mask=(offs >= distinct) & (offs < S))


# E2M1 -> float32 for 8 codes of an int32 word in sm_90 PTX (a GPU only: the interpreter runs no
# inline assembly). Each nibble (sign bit 3, magnitude e1 e0 m) is placed as the E4M3 byte
# `sign << 7 | e1 e0 m << 2`: exponent field e, mantissa m << 2, which is `value * 2**-6` exactly
# (codes e >= 1: 2**(e - 7) (1 + m/2) against 2**(e - 1) (1 + m/2); code 1, 0.5, the E4M3
# subnormal 4/8 * 2**-6; code 0 zero, code 8 -0). Four bytes a 32-bit op: the low nibbles' signs
# go up 4 and their magnitudes up 2, the high nibbles' magnitudes down 2. The hardware converts
# two E4M3 bytes to two float16 values an instruction (exact: float16 holds every E4M3 value),
# times 64 in float16 (two an instruction, exact: the result is the E2M1 value, at most 6), then
# to float32 (exact). About 21 sm_90 instructions for 8 codes (5 LOP3/SHF, 4 F2FP, 4 HMUL2, 8
# HADD2.F32) where `_e2m1_pair_f32` takes about 5 a code (scripts/sass_gemv.py).
_E2M1_WORD_PTX = tl.constexpr(
    """{
.reg .b32 t0, t1, t2, t3, lo, hi, f0, f1, f2, f3, c64;
.reg .b16 l0, l1, h0, h1, x0, x1, x2, x3, x4, x5, x6, x7;
shl.b32 t0, $8, 4;
shl.b32 t1, $8, 2;
and.b32 t0, t0, 0x80808080;
and.b32 t1, t1, 0x1C1C1C1C;
or.b32 lo, t0, t1;
shr.u32 t2, $8, 2;
and.b32 t2, t2, 0x1C1C1C1C;
and.b32 t3, $8, 0x80808080;
or.b32 hi, t3, t2;
mov.b32 {l0, l1}, lo;
mov.b32 {h0, h1}, hi;
cvt.rn.f16x2.e4m3x2 f0, l0;
cvt.rn.f16x2.e4m3x2 f1, l1;
cvt.rn.f16x2.e4m3x2 f2, h0;
cvt.rn.f16x2.e4m3x2 f3, h1;
mov.b32 c64, 0x54005400;
mul.rn.f16x2 f0, f0, c64;
mul.rn.f16x2 f1, f1, c64;
mul.rn.f16x2 f2, f2, c64;
mul.rn.f16x2 f3, f3, c64;
mov.b32 {x0, x2}, f0;
mov.b32 {x4, x6}, f1;
mov.b32 {x1, x3}, f2;
mov.b32 {x5, x7}, f3;
cvt.f32.f16 $0, x0;
cvt.f32.f16 $1, x1;
cvt.f32.f16 $2, x2;
cvt.f32.f16 $3, x3;
cvt.f32.f16 $4, x4;
cvt.f32.f16 $5, x5;
cvt.f32.f16 $6, x6;
cvt.f32.f16 $7, x7;
}"""
)


@triton.jit
def _e2m1_word_f32_ptx(words):
    """The 8 E2M1 codes of 2-D int32 `words` (element j in bits 4j .. 4j + 3) as float32 values,
    `[..., 8]` in element order (`_E2M1_WORD_PTX`)."""
    e0, e1, e2, e3, e4, e5, e6, e7 = tl.inline_asm_elementwise(
        _E2M1_WORD_PTX,
        "=r,=r,=r,=r,=r,=r,=r,=r,r",
        [words],
        dtype=(tl.float32,) * 8,
        is_pure=True,
        pack=1,
    )
    return _join8(e0, e1, e2, e3, e4, e5, e6, e7)


@triton.jit
def _join8(e0, e1, e2, e3, e4, e5, e6, e7):
    """Eight 2-D tensors as one `[..., 8]` tensor in argument order (the new dim a thread's own).
    `tl.join` appends its new dim last, so the outermost join's pair is the lowest bit of the
    flat index: the arguments go in bit-reversed order (joined 0..7 in order, elements 1 and 4,
    3 and 6 swapped places: H100 2026-12-06, test_e2m1_word_decoder_ptx_every_byte)."""
    q0 = tl.join(tl.join(e0, e4), tl.join(e2, e6))
    q1 = tl.join(tl.join(e1, e5), tl.join(e3, e7))
    return tl.reshape(tl.join(q0, q1), (e0.shape[0], e0.shape[1], 8))


@triton.jit
def _mx_block_scales(s_rows, k0, k_hi, offs_g, stride_bsk):
    """float32 E8M0 scales `[BLOCK_N, NG]` of the MX blocks `offs_g` of a GEMV K tile from K
    offset k0 (`s_rows` the rows' scale pointers `[BLOCK_N, 1]`; blocks at or past k_hi read
    code 0: their products are all zero)."""
    gmask = offs_g < (k_hi - k0) // 32
    sc = tl.load(s_rows + (k0 // 32 + offs_g)[None, :] * stride_bsk, mask=gmask[None, :], other=0)
    return _e8m0_to_f32(sc)


# N masks the vectorised stores of the partial sums (16-byte stores at BLOCK_M 16 only where N is
# a multiple of 16: scripts/compile_keys.py --detail), so it keeps its specialisation.
@triton.jit(do_not_specialize_on_alignment=_SCRATCH)
def _gemm_kernel(
    a_ptr,
    b_ptr,
    part_ptr,
    a_scale_ptr,
    b_scale_ptr,
    pairs_ptr,
    slot_e_ptr,
    slot_start_ptr,
    slot_cnt_ptr,
    N,
    K,
    k_per_split,
    stride_am,
    stride_ak,
    stride_be,
    stride_bn,
    stride_bk,
    stride_ps,
    stride_pm,
    stride_asm,
    stride_ask,
    stride_bse,
    stride_bsn,
    stride_bsk,
    group_n,
    group_k,
    a_row_div,  # k for GEMM1 (row of x = pair // k), 1 for GEMM2: run time (one key for any k)
    QUANT: tl.constexpr,  # 0 none, 1 fp8 block, 2 mxfp4
    UPCAST_DOT: tl.constexpr,  # the interpreter: dot operands in float32
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    MX_WORDS: tl.constexpr = 0,  # mxfp4 GEMV: 1 when B is the codes as int32 words
    MX_VEC: tl.constexpr = 0,  # mxfp4: 1 loads whole MX blocks (PARITY_MOE_MX_VEC)
    MX_ACT_2D: tl.constexpr = 0,  # mxfp4 GEMV with MX_VEC: activations as [1, K] tiles
    MX_BF16_MUL: tl.constexpr = 0,  # mxfp4 dot tile with MX_VEC: `_e2m1_pair_to`'s BF16_MUL
    MX_PTX: tl.constexpr = 0,  # mxfp4 GEMV with MX_WORDS: the codes decoded in PTX (a GPU only)
):
    """part[split, pair, n] = A[pair // a_row_div, K range of split] . B[e, n, same range] for
    the pairs of one slot's expert e and one BLOCK_N block of columns. B is `[E, N, K]`
    (mxfp4: `[E, N, K // 2]` packed, scales `[E, N, K // 32]`)."""
    slot = tl.program_id(0)
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    cnt = tl.load(slot_cnt_ptr + slot)
    if cnt == 0:
        return
    expert = tl.load(slot_e_ptr + slot).to(tl.int64)
    start = tl.load(slot_start_ptr + slot)
    k_lo = split * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    offs_nw = (offs_n % N).to(tl.int64)  # wrapped: weight loads in bounds, the store masks
    b_base = b_ptr + expert * stride_be
    part_base = part_ptr + split.to(tl.int64) * stride_ps
    if QUANT == 2:
        s_base = b_scale_ptr + expert * stride_bse
    for m0 in range(0, cnt, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mmask = offs_m < cnt
        pair = tl.load(pairs_ptr + start + offs_m, mask=mmask, other=0)
        a_rows = (pair // a_row_div).to(tl.int64)
        a_base = a_ptr + a_rows * stride_am  # [BLOCK_M]
        if BLOCK_M == 1:
            # a GEMV on CUDA cores: one row (a scalar pair), no padding, no tensor cores
            row = (tl.load(pairs_ptr + start + m0) // a_row_div).to(tl.int64)
            a0 = a_ptr + row * stride_am
            acc1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
            if QUANT == 2 and MX_WORDS == 1 and MX_PTX:
                # the word GEMV with `_e2m1_word_f32_ptx`: a thread's 4 words are one MX block
                # (K and BLOCK_K multiples of 32; one 16-byte load), its 32 activations in
                # element order; the same exact products, each block's 32 summed in its thread,
                # times the block's scale, kept per (row, block) to the end of K
                NW: tl.constexpr = BLOCK_K // 8
                NGW: tl.constexpr = BLOCK_K // 32
                offs_w = tl.arange(0, NW)
                offs_gw = tl.arange(0, NGW)
                w_rows = b_base + offs_nw[:, None] * stride_bn
                s_rows = s_base + offs_nw[:, None] * stride_bsn
                elem = offs_w[:, None] * 8 + tl.arange(0, 8)[None, :]  # [NW, 8] in the tile
                accg = tl.zeros((BLOCK_N, NGW), dtype=tl.float32)
                for k0 in range(k_lo, k_hi, BLOCK_K):
                    k0 = tl.multiple_of(k0, 32)
                    wmask = offs_w // 4 < (k_hi - k0) // 32
                    kw = tl.max_contiguous(tl.multiple_of(k0 // 8 + offs_w, 4), 4)
                    wv = tl.load(w_rows + kw[None, :] * stride_bk, mask=wmask[None, :], other=0).to(
                        tl.int32, bitcast=True
                    )
                    w = _e2m1_word_f32_ptx(wv)  # [BLOCK_N, NW, 8]
                    av = tl.load(a0 + (k0 + elem) * stride_ak, mask=wmask[:, None], other=0.0)
                    wsum = tl.sum(w * av.to(tl.float32)[None, :, :], axis=2)
                    blk = tl.sum(tl.reshape(wsum, (BLOCK_N, NGW, 4)), axis=2)
                    accg += blk * _mx_block_scales(s_rows, k0, k_hi, offs_gw, stride_bsk)
                acc1 = tl.sum(accg, axis=1)
            elif QUANT == 2 and MX_WORDS == 1:
                # B is the packed codes viewed as int32 words: word w of a row holds elements
                # 8w .. 8w + 7, element 8w + j in bits 4j .. 4j + 3 (little-endian bytes, low
                # nibble first). Each nibble becomes its float32 pattern with two shifts and a
                # mask on the whole word (`_e2m1_pair_f32`'s bits, in place), so a thread
                # decodes 8 codes per 4-byte load instead of unpacking bytes, and a block's sum
                # stays in its thread. sm_90 SASS (triton 3.6, scripts/sass_gemv.py) at 128 x
                # 128: 15.8 instructions a weight byte against 25.8 for the byte loads below
                # (their block sums cross threads: SHFL) and 16.7 for the whole-block loads.
                # Products exact as below; each MX block's 32 products summed per word then over
                # its 4 words, times the block's scale, kept per (row, block) to the end of K:
                # another order of the same sums.
                NGW: tl.constexpr = BLOCK_K // 32
                offs_gw = tl.arange(0, NGW)
                word = offs_gw[:, None] * 4 + tl.arange(0, 4)[None, :]  # [NGW, 4] in the tile
                w_rows = b_base + offs_nw[:, None, None] * stride_bn
                s_rows = s_base + offs_nw[:, None] * stride_bsn
                accg = tl.zeros((BLOCK_N, NGW), dtype=tl.float32)
                for k0 in range(k_lo, k_hi, BLOCK_K):
                    wmask = word < (k_hi - k0) // 8
                    wv = tl.load(
                        w_rows + (k0 // 8 + word)[None, :, :] * stride_bk,
                        mask=wmask[None, :, :],
                        other=0,
                    ).to(tl.int32, bitcast=True)
                    part = tl.zeros((BLOCK_N, NGW, 4), dtype=tl.float32)
                    for j in tl.static_range(8):
                        aj = tl.load(a0 + (k0 + 8 * word + j) * stride_ak, mask=wmask, other=0.0)
                        # nibble j to the top, then down 6 arithmetically: its sign (bit 4j + 3)
                        # repeated into bit 31, its magnitude at 22..24
                        bits = ((wv << (28 - 4 * j)) >> 6) & _E2M1_F32_MASK
                        v = bits.to(tl.float32, bitcast=True) * _TWO_126
                        part += aj.to(tl.float32)[None, :, :] * v
                    sc = _mx_block_scales(s_rows, k0, k_hi, offs_gw, stride_bsk)
                    accg += tl.sum(part, axis=2) * sc
                acc1 = tl.sum(accg, axis=1)
            elif QUANT == 2:
                # byte i holds elements 2i (low nibble) and 2i + 1 (high nibble)
                HALF_K: tl.constexpr = BLOCK_K // 2
                NUM_G: tl.constexpr = BLOCK_K // 32
                offs_h = tl.arange(0, HALF_K)
                offs_g = tl.arange(0, NUM_G)
                w_rows = b_base + offs_nw[:, None] * stride_bn
                s_rows = s_base + offs_nw[:, None] * stride_bsn
                for k0 in range(k_lo, k_hi, BLOCK_K):
                    if MX_VEC:
                        # K, k_lo, k_hi and BLOCK_K are multiples of 32 (whole MX blocks): the
                        # same mask per 16-byte block and an aligned offset let the weights load
                        # 16 bytes at a time (sm_90 SASS: LDG.E.128 for 32 LDG.E.U8 a thread,
                        # 33% fewer instructions a weight byte; scripts/sass_gemv.py)
                        k0 = tl.multiple_of(k0, 32)
                        hmask = offs_h // 16 < (k_hi - k0) // 32
                        kb = tl.multiple_of(k0 // 2, 16)
                    else:
                        hmask = offs_h < (k_hi - k0) // 2
                        kb = k0 // 2
                    if MX_ACT_2D:
                        # the activations loaded as [1, HALF_K] tiles: triton 3.6 then moves
                        # them to the weights' layout with stmatrix and 16-byte shared loads
                        # instead of 2-byte ones (sm_90 SASS, GEMV 32 x 256: 15.7 -> 14.0
                        # instructions a weight byte, 56 -> 61 registers; the GPU default, see
                        # `_moe_configs` DECODE_MX_ACT_2D)
                        a_even = tl.load(
                            a0 + (k0 + 2 * offs_h)[None, :] * stride_ak,
                            mask=hmask[None, :],
                            other=0.0,
                        ).to(tl.float32)
                        a_odd = tl.load(
                            a0 + (k0 + 2 * offs_h + 1)[None, :] * stride_ak,
                            mask=hmask[None, :],
                            other=0.0,
                        ).to(tl.float32)
                    else:
                        a_even = tl.load(a0 + (k0 + 2 * offs_h) * stride_ak, mask=hmask, other=0.0)
                        a_odd = tl.load(
                            a0 + (k0 + 2 * offs_h + 1) * stride_ak, mask=hmask, other=0.0
                        )
                        a_even = a_even.to(tl.float32)[None, :]
                        a_odd = a_odd.to(tl.float32)[None, :]
                    packed = tl.load(
                        w_rows + (kb + offs_h)[None, :] * stride_bk,
                        mask=hmask[None, :],
                        other=0,
                    )
                    # exact products (at most 11 significant bits); each MX block's 32 summed
                    # in float32, then times the block's scale (the sorted path's scale after
                    # the dot)
                    w_lo, w_hi = _e2m1_pair_f32(packed)
                    if MX_VEC:
                        # a block is a thread's own 16 bytes: its 16 even and 16 odd products
                        # summed apart, each a chain of FFMAs (one sum of the pairs' products
                        # cost an FMUL, an FFMA and an FADD a pair; sm_90 SASS of the GEMV 32 x
                        # 256 16.6 -> 15.7 instructions a weight byte, 64 -> 56 registers)
                        blk = tl.sum(tl.reshape(a_even * w_lo, (BLOCK_N, NUM_G, 16)), axis=2)
                        blk += tl.sum(tl.reshape(a_odd * w_hi, (BLOCK_N, NUM_G, 16)), axis=2)
                    else:
                        # byte loads: a block spans threads, so one sum (two would cross them
                        # twice: 26.4 -> 35.0 instructions a weight byte)
                        prod = a_even * w_lo + a_odd * w_hi
                        blk = tl.sum(tl.reshape(prod, (BLOCK_N, NUM_G, 16)), axis=2)
                    sc = _mx_block_scales(s_rows, k0, k_hi, offs_g, stride_bsk)
                    acc1 += tl.sum(blk * sc, axis=1)
            elif QUANT == 0:
                # products accumulated elementwise, reduced across K once at the end (no
                # cross-thread reduction per K tile): a float32 sum in another order
                offs_k = tl.arange(0, BLOCK_K)
                w_rows = b_base + offs_nw[:, None] * stride_bn
                acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
                for k0 in range(k_lo, k_hi, BLOCK_K):
                    kmask = offs_k < k_hi - k0
                    av = tl.load(a0 + (k0 + offs_k) * stride_ak, mask=kmask, other=0.0)
                    bv = tl.load(
                        w_rows + (k0 + offs_k)[None, :] * stride_bk, mask=kmask[None, :], other=0.0
                    )
                    acc2 += av.to(tl.float32)[None, :] * bv.to(tl.float32)
                acc1 = tl.sum(acc2, axis=1)
            else:
                offs_k = tl.arange(0, BLOCK_K)
                w_rows = b_base + offs_nw[:, None] * stride_bn
                for k0 in range(k_lo, k_hi, BLOCK_K):
                    kmask = offs_k < k_hi - k0
                    av = tl.load(a0 + (k0 + offs_k) * stride_ak, mask=kmask, other=0.0)
                    bv = tl.load(
                        w_rows + (k0 + offs_k)[None, :] * stride_bk,
                        mask=kmask[None, :],
                        other=0.0,
                    )
                    if UPCAST_DOT:
                        av = _fp8_to_f32(av)
                        bv = _fp8_to_f32(bv)
                    # exact E4M3 products summed in float32 over one scale group, then times
                    # a_scale, then w_scale (the sorted path's order)
                    d = tl.sum(av.to(tl.float32)[None, :] * bv.to(tl.float32), axis=1)
                    kg = k0 // group_k  # BLOCK_K divides group_k: one scale group
                    a_s = tl.load(a_scale_ptr + row * stride_asm + kg * stride_ask)
                    b_s = tl.load(
                        b_scale_ptr
                        + expert * stride_bse
                        + (offs_nw // group_n) * stride_bsn
                        + kg * stride_bsk
                    )
                    acc1 += d * a_s * b_s
            acc = acc1[None, :]
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            if QUANT == 2:
                # one dot per MX block of 32 on the raw E2M1 values (exact in bf16 and fp16),
                # the block's scale applied to the float32 partial product
                offs16 = tl.arange(0, 16)
                for k0 in range(k_lo, k_hi, BLOCK_K):
                    for g in tl.static_range(BLOCK_K // 32):
                        kg = k0 + 32 * g
                        if MX_VEC:  # one whole MX block or none (as the GEMV above)
                            kg = tl.multiple_of(kg, 32)
                            hmask = (offs16 * 0 + kg) < k_hi
                            kb = tl.multiple_of(kg // 2, 16)
                        else:
                            hmask = offs16 < (k_hi - kg) // 2
                            kb = kg // 2
                        packed = tl.load(
                            b_base
                            + offs_nw[None, :] * stride_bn
                            + (kb + offs16)[:, None] * stride_bk,
                            mask=hmask[:, None],
                            other=0,
                        )
                        smask = (tl.zeros((1, BLOCK_N), tl.int32) + kg) < k_hi
                        sc = _e8m0_to_f32(
                            tl.load(
                                s_base + offs_nw[None, :] * stride_bsn + (kg // 32) * stride_bsk,
                                mask=smask,
                                other=0,
                            )
                        )
                        if MX_VEC:
                            # the block's 32 activations in order and the two nibble planes
                            # interleaved back to K order: one K-32 dot a block instead of two
                            # K-16 ones, the codes decoded where the dot reads them (sm_90 SASS:
                            # no shared-memory store of decoded values, 21% fewer instructions
                            # at 128 x 64); the same exact products, another float32 order
                            offs32 = tl.arange(0, 32)
                            a_blk = tl.load(
                                a_base[:, None] + (kg + offs32)[None, :] * stride_ak,
                                mask=mmask[:, None] & ((offs32 * 0 + kg) < k_hi)[None, :],
                                other=0.0,
                            )
                            lo, hi = _e2m1_pair_to(packed, a_blk.dtype, MX_BF16_MUL)
                            w = tl.reshape(tl.permute(tl.join(lo, hi), (0, 2, 1)), (32, BLOCK_N))
                            if UPCAST_DOT:
                                part = tl.dot(a_blk.to(tl.float32), w.to(tl.float32))
                            else:
                                part = tl.dot(a_blk, w)
                            acc += part * sc
                        else:
                            amask = mmask[:, None] & hmask[None, :]
                            a_even = tl.load(
                                a_base[:, None] + (kg + 2 * offs16)[None, :] * stride_ak,
                                mask=amask,
                                other=0.0,
                            )
                            a_odd = tl.load(
                                a_base[:, None] + (kg + 2 * offs16 + 1)[None, :] * stride_ak,
                                mask=amask,
                                other=0.0,
                            )
                            acc += mx_block_dot(a_even, a_odd, packed, sc, UPCAST_DOT)
            else:
                offs_k = tl.arange(0, BLOCK_K)
                for k0 in range(k_lo, k_hi, BLOCK_K):
                    kmask = offs_k < k_hi - k0
                    a = tl.load(
                        a_base[:, None] + (k0 + offs_k)[None, :] * stride_ak,
                        mask=mmask[:, None] & kmask[None, :],
                        other=0.0,
                    )
                    b = tl.load(
                        b_base + offs_nw[None, :] * stride_bn + (k0 + offs_k)[:, None] * stride_bk,
                        mask=kmask[:, None],
                        other=0.0,
                    )
                    if QUANT == 1:
                        kg = k0 // group_k
                        a_s = tl.load(
                            a_scale_ptr + a_rows * stride_asm + kg * stride_ask,
                            mask=mmask,
                            other=0.0,
                        )
                        b_s = tl.load(
                            b_scale_ptr
                            + expert * stride_bse
                            + (offs_nw // group_n) * stride_bsn
                            + kg * stride_bsk
                        )
                        acc = dot_acc(acc, a, b, a_s, b_s, QUANT, UPCAST_DOT)
                    else:
                        acc = dot_acc(acc, a, b, 0.0, 0.0, QUANT, UPCAST_DOT)
        dst = part_base + pair.to(tl.int64)[:, None] * stride_pm + offs_n[None, :]
        tl.store(dst, acc, mask=mmask[:, None] & nmask[None, :])


# split: GEMM1's K-split count, a run-time loop bound (it follows T and the shape: 3 values in
# the GPU's draws, each a compile key as a constexpr); the partials are summed in the same order
@triton.jit(do_not_specialize=["split"], do_not_specialize_on_alignment=["ids_ptr", "w_ptr"])
def _act_kernel(
    part_ptr,
    out_ptr,
    scale_ptr,
    ids_ptr,
    w_ptr,
    n_cols,
    stride_ps,
    stride_pm,
    stride_out,
    stride_sm,
    limit,  # +inf without a limit: every clamp keeps its operand (as in _kernels_swiglu)
    alpha,
    beta,
    split,
    INTERLEAVED: tl.constexpr,
    CLAMP_POST: tl.constexpr,
    QUANT_FP8: tl.constexpr,
    MUL_WEIGHT: tl.constexpr,
    X_BF16: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    GROUPS_PER_PROG: tl.constexpr,
):
    """One pair, GROUPS_PER_PROG groups of GROUP activation columns: gate and up summed over
    the K splits in order (times the router weight when it applies on the input), rounded to
    x.dtype, SwiGLU in float32, stored by `store_act`. Skipped pairs are not computed (GEMM2
    never reads them)."""
    row = tl.program_id(0)
    if tl.load(ids_ptr + row) < 0:
        return
    g = tl.program_id(1) * GROUPS_PER_PROG + tl.arange(0, GROUPS_PER_PROG)
    c = tl.arange(0, BLOCK_G)
    col = g[:, None] * GROUP + c[None, :]
    mask = (c[None, :] < GROUP) & (col < n_cols)
    row64 = row.to(tl.int64)
    src = part_ptr + row64 * stride_pm
    if INTERLEAVED:
        gate_col = 2 * col
        up_col = 2 * col + 1
    else:
        gate_col = col
        up_col = n_cols + col
    gate = tl.zeros((GROUPS_PER_PROG, BLOCK_G), dtype=tl.float32)
    up = tl.zeros((GROUPS_PER_PROG, BLOCK_G), dtype=tl.float32)
    for s in range(split):
        gate += tl.load(src + s * stride_ps + gate_col, mask=mask, other=0.0)
        up += tl.load(src + s * stride_ps + up_col, mask=mask, other=0.0)
    if MUL_WEIGHT:
        wt = tl.load(w_ptr + row)
        gate = gate * wt
        up = up * wt
    # GEMM1's output rounded to x.dtype, as the sorted path stores it
    if X_BF16:
        gate = to_dtype_rne(gate, tl.bfloat16).to(tl.float32)
        up = to_dtype_rne(up, tl.bfloat16).to(tl.float32)
    else:
        gate = to_dtype_rne(gate, tl.float16).to(tl.float32)
        up = to_dtype_rne(up, tl.float16).to(tl.float32)
    y = swiglu_f32(gate, up, limit, alpha, beta, CLAMP_POST, False)
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


# k: a run-time int under the unrolled bound K_PAD (`k_pad`), as in _reduce_k_kernel
@triton.jit(do_not_specialize=["top_k"], do_not_specialize_on_alignment=["ids_ptr", "w_ptr"])
def _out_kernel(
    part_ptr,
    ids_ptr,
    w_ptr,
    out_ptr,
    H,
    stride_ps,
    stride_pm,
    stride_out,
    top_k,
    SPLIT: tl.constexpr,
    K_PAD: tl.constexpr,
    MUL_WEIGHT: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """out[t] = sum_{j=0..k-1} round(w_j * sum_s part[s, t*k + j]) in float32, in that order,
    rounded to out's dtype: the sorted path's GEMM2 rounding and k-sum. Skipped slots (-1) are
    never read (their weight may be NaN); every row is written (zeros if all -1)."""
    t = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = offs < H
    acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for j in tl.static_range(K_PAD):
        # a padding slot reads slot k-1's id (in bounds) and is masked
        flat = t.to(tl.int64) * top_k + tl.minimum(j, top_k - 1)
        valid = (offs * 0 + tl.load(ids_ptr + flat)) >= 0  # a vector: no scalar masks
        m = hmask & valid & ((offs * 0 + j) < top_k)
        y = tl.zeros((BLOCK_H,), dtype=tl.float32)
        for s in tl.static_range(SPLIT):
            y += tl.load(part_ptr + s * stride_ps + flat * stride_pm + offs, mask=m, other=0.0)
        if MUL_WEIGHT:
            y = y * tl.load(w_ptr + flat + offs * 0, mask=m, other=0.0)
        y = to_dtype_rne(y, out_ptr.dtype.element_ty).to(tl.float32)
        acc += tl.where(m, y, 0.0)
    out = to_dtype_rne(acc, out_ptr.dtype.element_ty)
    tl.store(out_ptr + t.to(tl.int64) * stride_out + offs, out, mask=hmask)


# --- launch ---------------------------------------------------------------------------------------

LAUNCHES = {"decode": 0}  # calls of run_decode (tests assert the path was taken)


def _gemm(
    a,
    b,
    part,
    a_s,
    b_s,
    groups,
    *,
    n_out,
    k_dim,
    k_split,
    split,
    row_div,
    quant,
    group,
    bm,
    bn,
    bk,
    warps,
    stages,
    upcast,
    mx_words=False,
    mx_act_2d=False,
):
    pairs, slot_e, slot_start, slot_cnt = groups
    # the PTX decode (PARITY_MOE_MX_PTX) runs on the word GEMV, whole MX blocks a tile
    mx_ptx = int(_MX_PTX and quant == "mxfp4" and bm == 1 and not upcast and bk % 32 == 0)
    # mxfp4 GEMV on int32 words (DECODE_MX_WORDS), where the packed codes can be viewed so: the
    # last dim contiguous, a multiple of 4 bytes, the other strides and the offset too
    mx_words = int(
        (mx_words or mx_ptx)
        and quant == "mxfp4"
        and bm == 1
        and b.stride(-1) == 1
        and b.shape[-1] % 4 == 0
        and all(st % 4 == 0 for st in b.stride()[:-1])
        and b.storage_offset() % 4 == 0
    )
    if mx_words:
        b = b.view(torch.int32)
    if mx_ptx and mx_words and _MX_PTX == 2 and a.dtype != torch.float32:
        # the activations converted once (exact) instead of in every N block's program: 11.7
        # -> 10.2 instructions a weight byte (sm_90 SASS, 32 x 256), one small launch more
        a = a.float()
    qcode = {"none": 0, "fp8_block": 1, "mxfp4": 2}[quant]
    a_ss = a_s.stride() if a_s is not None else (0, 0)
    b_ss = b_s.stride() if b_s is not None else (0, 0, 0)
    grid = (slot_cnt.numel(), cdiv(n_out, bn), split)
    args = (
        a,
        b,
        part,
        a_s if a_s is not None else part,
        b_s if b_s is not None else part,
        pairs,
        slot_e,
        slot_start,
        slot_cnt,
        n_out,
        k_dim,
        k_split,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        b.stride(2),
        part.stride(0),
        part.stride(1),
        a_ss[0],
        a_ss[1],
        b_ss[0],
        b_ss[1],
        b_ss[2],
        group[0],
        group[1],
        row_div,
    )
    consts = dict(
        QUANT=qcode,
        UPCAST_DOT=upcast,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        MX_WORDS=mx_words,
        MX_VEC=int(qcode == 2 and _MX_VEC),
        MX_ACT_2D=int(qcode == 2 and _MX_VEC and bm == 1 and not mx_words and mx_act_2d),
        MX_BF16_MUL=int(_MX_BF16_MUL) if qcode == 2 and _MX_VEC and bm > 1 and not upcast else 0,
        MX_PTX=int(mx_ptx and mx_words),
    )
    launch("gemm", _gemm_kernel, grid, args, consts, num_warps=warps, num_stages=stages)


def run_decode(
    x,
    w13,
    w2,
    topk_weights,
    topk_ids,
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
    """The decode pipeline on validated inputs with T > 0 (cfg: `decode_config`'s). Returns
    (`out [T, H]` in x.dtype, `bad`: a one-element int32 tensor, 1 where an id was outside
    [-1, E) and skipped as -1; the caller raises on it). Launches: grouping, (fp8: the
    activation quantization,) GEMM1, activation, GEMM2, output: no host sync."""
    import torch

    from parity.optimized.triton._kernels_fused_moe import gemm1_input

    LAUNCHES["decode"] += 1
    t, h = x.shape
    k = topk_ids.shape[1]
    e, two_n = w13.shape[0], w13.shape[1]
    n = two_n // 2
    dev, dt = x.device, x.dtype
    p = t * k
    fp8 = quant == "fp8_block"
    x = x.contiguous()
    topk_w = topk_weights.contiguous()

    slots = min(e, p)
    # one int32 buffer: pairs [p], slot (expert, start, count) [3, slots], clean ids [p], flag
    scratch = torch.empty(2 * p + 3 * slots + 1, dtype=torch.int32, device=dev)
    pairs = scratch[:p]
    slot_info = scratch[p : p + 3 * slots].view(3, slots)
    ids = scratch[p + 3 * slots : 2 * p + 3 * slots].view(t, k)
    bad = scratch[2 * p + 3 * slots :]
    launch(
        "group",
        _group_kernel,
        (1,),
        (topk_ids.contiguous(), pairs, slot_info[0], slot_info[1], slot_info[2], ids, bad, p,
         slots, e),
        dict(BLOCK_P=max(32, _next_pow2(p))),  # four tiles up to DECODE_MAX_PAIRS
        num_warps=4,
    )  # fmt: skip
    groups = (pairs, slot_info[0], slot_info[1], slot_info[2])

    a1, a1_s = gemm1_input(x, ids, topk_w, fp8, block_shape, on_input, interpret)
    group = tuple(block_shape) if fp8 else (1, 1)
    common = dict(
        quant=quant,
        group=group,
        bm=cfg["DECODE_BLOCK_M"],
        bk=cfg["DECODE_BLOCK_K"],
        warps=cfg["DECODE_NUM_WARPS"],
        stages=cfg["DECODE_NUM_STAGES"],
        upcast=interpret or env(UPCAST_ENV) == "1",
        mx_words=bool(cfg.get("DECODE_MX_WORDS", 0)),
        mx_act_2d=bool(cfg.get("DECODE_MX_ACT_2D", 0)),
    )

    split1 = cfg["SPLIT1"]
    part1 = torch.empty((split1, p, two_n), dtype=torch.float32, device=dev)
    _gemm(
        a1,
        w13,
        part1,
        a1_s,
        w13_scale,
        groups,
        n_out=two_n,
        k_dim=h,
        k_split=cfg["KSPLIT1"],
        split=split1,
        row_div=k,
        bn=cfg["DECODE_BLOCK_N1"],
        **common,
    )

    gk, block_g, n_groups, gpp = act_tiles(n, block_shape[1] if fp8 else None, interpret)
    if fp8:
        a2 = torch.empty((p, n), dtype=torch.float8_e4m3fn, device=dev)
        a2_s = torch.empty((p, n // gk), dtype=torch.float32, device=dev)
    else:
        a2 = torch.empty((p, n), dtype=dt, device=dev)
        a2_s = None
    args = (
        part1,
        a2,
        a2_s if a2_s is not None else a2,
        ids,
        topk_w,
        n,
        part1.stride(0),
        part1.stride(1),
        a2.stride(0),
        a2_s.stride(0) if a2_s is not None else 0,
        float(limit) if limit is not None else float("inf"),
        float(alpha),
        float(beta),
        split1,
    )
    consts = dict(
        INTERLEAVED=interleaved,
        CLAMP_POST=clamp_post,
        QUANT_FP8=fp8,
        MUL_WEIGHT=on_input and not fp8,  # fp8 scaled x before quantizing it
        X_BF16=dt == torch.bfloat16,
        GROUP=gk,
        BLOCK_G=block_g,
        GROUPS_PER_PROG=gpp,
    )
    launch("act", _act_kernel, (p, cdiv(n_groups, gpp)), args, consts, num_warps=4)

    split2 = cfg["SPLIT2"]
    part2 = torch.empty((split2, p, h), dtype=torch.float32, device=dev)
    _gemm(
        a2,
        w2,
        part2,
        a2_s,
        w2_scale,
        groups,
        n_out=h,
        k_dim=n,
        k_split=cfg["KSPLIT2"],
        split=split2,
        row_div=1,
        bn=cfg["DECODE_BLOCK_N2"],
        **common,
    )

    out = torch.empty((t, h), dtype=dt, device=dev)
    bh = block_h(h, interpret)
    launch(
        "out",
        _out_kernel,
        (t, cdiv(h, bh)),
        (part2, ids, topk_w, out, h, part2.stride(0), part2.stride(1), out.stride(0), k),
        dict(SPLIT=split2, K_PAD=k_pad(k), MUL_WEIGHT=not on_input, BLOCK_H=bh),
        num_warps=4,
    )
    return out, bad
