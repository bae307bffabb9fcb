"""Triton kernel of `mxfp4_quant` (OCP MXFP4: E2M1 elements, E8M0 scales, blocks of 32).
Imported lazily by `mxfp4_quant.py`.

`x [..., K]` is read as `[rows, K]`; a program takes BLOCK_R rows x BLOCK_B blocks as a
[BLOCK_R, BLOCK_B, 32] tile. Everything is exact integer work on the float32 bits, plus one
multiply by a power of two:

- amax: integer max over |x| bits (order of bits = order of values, NaN above inf, so a NaN is
  never dropped); inf counts as the float32 maximum (0x7F7FFFFF).
- exponent from amax's biased exponent field EB (amax = 1.f * 2**(EB - 127)): "floor" e = EB -
  129 = floor(log2 amax) - 2; "ceil" adds 1 where 1.f > 1.5, i.e. ceil(log2(amax / 6)) (amax <=
  6 * 2**e = 1.5 * 2**(e + 2)); zero and subnormal amax give e <= -127, clamped to -127 as the
  reference does (its frexp exponent of a subnormal is below -125). e never exceeds 126.
- elements: y = x * 2**-e, where 2**-e (biased exponent 127 - e in [1, 254]) is a normal
  float, so y is x / 2**e exactly (a subnormal y is below 2**-126, code 0 either way; a plain
  multiply, no flush of a subnormal x). E2M1 code = number of midpoints passed: strict `>` at
  0.25, 1.25, 2.5, 5 (the lower code is even), `>=` at 0.75, 1.75, 3.5 (the upper code is
  even): ties to the even code; above 6 saturates to code 7 (inf too). Sign bit of x -> bit 3.
- NaN block: scale code 255, element codes 0. Element 2i goes to the low nibble.

`_mxfp4_quant_pairs_kernel` (bfloat16 and float16 inputs, `TILE["pairs"]`): the same
arithmetic, but x is read as int32 words of two elements, [BLOCK_R, BLOCK_B, 16]: element 2i is
the low half of word i and 2i + 1 the high half (little-endian), so the two nibbles of a packed
byte come from one word and the byte's offset is the word's offset: no [.., 16, 2] reshape and
split of the codes, which may move them between threads. The halves are widened to float32
exactly (bfloat16 by a shift of the bits, float16 by a cast).
"""

import torch
import triton
import triton.language as tl

from parity.optimized.triton._kernels_fp8_block_quant import to_f32
from parity.optimized.triton._launch import cdiv

_F32_MAX_BITS = tl.constexpr(0x7F7FFFFF)
_F32_INF_BITS = tl.constexpr(0x7F800000)

# elements a program; warps None: by elements; pairs: 16-bit inputs read as int32 words of two
# elements (`_mxfp4_quant_pairs_kernel`); bits: E2M1 codes from the float32 bits of |y|
# (`_e2m1_codes_bits`) instead of seven compares summed, the same codes (every bfloat16 value,
# tests/test_triton_new_kernels.py). Chosen by the tile sweep (scripts/sweep_tiles.py new, H100,
# 2026-12-06, x [8192, 7168] bf16, copy measured in the same run): words + bits 72.7 us (67.2%
# of copy), words + compares 80.1 us (61.0%), element kernel 78.6 / 87.0 us; sm_90 SASS 1088 ->
# 792 instructions a program. Its nightly (9000 examples) passed on the H100 with bits on.
TILE = {"elems": 4096, "warps": 4, "pairs": True, "bits": True}


@triton.jit
def _e2m1_codes(v, inv):
    """E2M1 magnitude codes (int32 0..7) of float32 v * inv (inv a power of two): the number
    of midpoints passed, ties to the even code."""
    mag = tl.abs(v * inv)
    return (
        (mag > 0.25).to(tl.int32)
        + (mag >= 0.75).to(tl.int32)
        + (mag > 1.25).to(tl.int32)
        + (mag >= 1.75).to(tl.int32)
        + (mag > 2.5).to(tl.int32)
        + (mag >= 3.5).to(tl.int32)
        + (mag > 5.0).to(tl.int32)
    )


@triton.jit
def _e2m1_codes_bits(v, inv):
    """`_e2m1_codes` from the bits of y = |v * inv|: for y >= 1, y rounded to one mantissa bit
    with ties to even by integer arithmetic on its float32 bits (add 2**21 - 1 plus the kept
    bit, drop the 22 bits below it: exact, a carry moves the exponent), whose exponent and
    kept bit are the code: 2 (E - 126) + m, 8 and above (y >= 7, inf) saturating to 7; below 1
    the two midpoints 0.25 (to 0) and 0.75 (to 1.0, code 2), ties even. No rounding of y
    itself: every y in [1, 8) is a normal float, its bits exact."""
    mag = tl.abs(v * inv)
    b = mag.to(tl.int32, bitcast=True)
    top = tl.minimum(((b + 0x1FFFFF + ((b >> 22) & 1)) >> 22) - 252, 7)
    low = (mag > 0.25).to(tl.int32) + (mag >= 0.75).to(tl.int32)
    return tl.where(mag >= 1.0, top, low)


@triton.jit
def _codes(v, inv, BITS: tl.constexpr):
    if BITS:
        return _e2m1_codes_bits(v, inv)
    else:
        return _e2m1_codes(v, inv)


@triton.jit
def _block_exponent(mb, CEIL: tl.constexpr):
    """(e, nan, 2**-e) of blocks whose |x| bits have the maximum `mb` (see the module
    docstring): e clamped to -127, inf counted as the float32 maximum, NaN blocks flagged."""
    nan = mb > _F32_INF_BITS
    mb = tl.minimum(mb, _F32_MAX_BITS)
    e = (mb >> 23) - 129
    if CEIL:
        e += ((mb & 0x7FFFFF) > 0x400000).to(tl.int32)
    e = tl.maximum(e, -127)
    return e, nan, ((127 - e) << 23).to(tl.float32, bitcast=True)  # 2**-e, a normal float


@triton.jit
def _store_scales(s_ptr, row64, blk, NB, e, nan, m2):
    """E8M0 scale codes e + 127 (255 for a NaN block) of [rows, blocks] into s [rows, NB]."""
    scale = tl.where(nan, 255, e + 127).to(tl.uint8)
    tl.store(s_ptr + row64[:, None] * NB + blk[None, :], scale, mask=m2)


@triton.jit
def _half_to_f32(h, BF16: tl.constexpr):
    """float32 of a 16-bit pattern held in the low half of int32 `h` (exact)."""
    if BF16:
        return (h << 16).to(tl.float32, bitcast=True)
    else:
        return h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


# Compile keys (issue 11, section 4): ROWS only bounds the rows and NB enters the addresses as
# NB * 16 or NB * 32 (a multiple of 16 whatever NB), so neither is specialised (a compile key
# each on a GPU); the tile depends on whether a row has more than 8 blocks (launch_args).
_COUNTS = ["ROWS", "NB"]


@triton.jit(do_not_specialize=_COUNTS)
def _mxfp4_quant_pairs_kernel(
    x_ptr,  # int32 view of a bfloat16 / float16 [rows, K]: [rows, K/2] words
    p_ptr,  # uint8 [rows, K/2]
    s_ptr,  # uint8 [rows, K/32]
    ROWS,
    NB,  # blocks of 32 a row (K / 32)
    BLOCK_R: tl.constexpr,
    BLOCK_B: tl.constexpr,
    CEIL: tl.constexpr,
    BF16: tl.constexpr,
    BITS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    blk = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    j = tl.arange(0, 16)
    m2 = (rows < ROWS)[:, None] & (blk < NB)[None, :]
    row64 = rows.to(tl.int64)  # rows * K may pass 2**31
    # word offsets of x and byte offsets of the packed output are the same numbers
    offs = (row64 * (NB * 16))[:, None, None] + (blk[:, None] * 16 + j[None, :])[None, :, :]
    w = tl.load(x_ptr + offs, mask=m2[:, :, None], other=0)
    lo = _half_to_f32(w & 0xFFFF, BF16)
    hi = _half_to_f32((w >> 16) & 0xFFFF, BF16)
    blo = lo.to(tl.int32, bitcast=True)
    bhi = hi.to(tl.int32, bitcast=True)
    mb = tl.max(tl.maximum(blo & 0x7FFFFFFF, bhi & 0x7FFFFFFF), axis=2)  # [BLOCK_R, BLOCK_B]
    e, nan, inv = _block_exponent(mb, CEIL)
    inv = inv[:, :, None]
    clo = _codes(lo, inv, BITS) | ((blo >> 28) & 8)  # arithmetic shift: bit 31 lands on bit 3
    chi = _codes(hi, inv, BITS) | ((bhi >> 28) & 8)
    packed = tl.where(nan[:, :, None], 0, clo | (chi << 4)).to(tl.uint8)
    tl.store(p_ptr + offs, packed, mask=m2[:, :, None])
    _store_scales(s_ptr, row64, blk, NB, e, nan, m2)


@triton.jit(do_not_specialize=_COUNTS)
def _mxfp4_quant_kernel(
    x_ptr,
    p_ptr,  # uint8 [rows, K/2]
    s_ptr,  # uint8 [rows, K/32]
    ROWS,
    NB,  # blocks of 32 a row (K / 32)
    BLOCK_R: tl.constexpr,
    BLOCK_B: tl.constexpr,
    CEIL: tl.constexpr,
    BITS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    blk = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    j = tl.arange(0, 32)
    m2 = (rows < ROWS)[:, None] & (blk < NB)[None, :]
    row64 = rows.to(tl.int64)  # rows * K may pass 2**31
    offs = (row64 * (NB * 32))[:, None, None] + (blk[:, None] * 32 + j[None, :])[None, :, :]
    v = to_f32(tl.load(x_ptr + offs, mask=m2[:, :, None], other=0.0))
    bits = v.to(tl.int32, bitcast=True)
    mb = tl.max(bits & 0x7FFFFFFF, axis=2)  # [BLOCK_R, BLOCK_B]
    e, nan, inv = _block_exponent(mb, CEIL)
    # arithmetic shift: bit 31 lands on bit 3
    code = _codes(v, inv[:, :, None], BITS) | ((bits >> 28) & 8)
    code = tl.where(nan[:, :, None], 0, code)
    lo, hi = tl.split(tl.reshape(code, (BLOCK_R, BLOCK_B, 16, 2)))
    packed = (lo | (hi << 4)).to(tl.uint8)
    p_offs = (row64 * (NB * 16))[:, None, None] + (blk[:, None] * 16 + tl.arange(0, 16)[None, :])[
        None, :, :
    ]
    tl.store(p_ptr + p_offs, packed, mask=m2[:, :, None])
    _store_scales(s_ptr, row64, blk, NB, e, nan, m2)


def launch_args(rows: int, k: int, ceil: bool, dtype=None) -> tuple:
    """(kernel, grid, constexprs, options) of one launch for x [rows, K] of `dtype`: `launch`
    runs it, the wrapper keeps it in its plan (`_launch.Launch`), so both launch the same
    thing. With `TILE["pairs"]` a 16-bit x goes to the word kernel (the caller passes
    `x.view(torch.int32)`, see `reads_words`)."""
    nb = k // 32
    # the blocks of a row a program in four buckets (8, 16, 32, 64: at most half of them masked
    # below 64), several rows a program for fewer; never shrunk for few rows (masked): four tiles
    # whatever the shape
    cap = max(1, TILE["elems"] // 32)
    block_b = min(max(8, 1 << (nb - 1).bit_length()), cap)
    block_r = max(1, TILE["elems"] // (block_b * 32))
    warps = TILE["warps"] or (4 if block_r * block_b * 32 <= 2048 else 8)
    grid = (cdiv(rows, block_r), cdiv(nb, block_b))
    consts = dict(BLOCK_R=block_r, BLOCK_B=block_b, CEIL=ceil, BITS=bool(TILE.get("bits")))
    if reads_words(dtype):
        consts["BF16"] = dtype == torch.bfloat16
        return _mxfp4_quant_pairs_kernel, grid, consts, dict(num_warps=warps)
    return _mxfp4_quant_kernel, grid, consts, dict(num_warps=warps)


def reads_words(dtype) -> bool:
    """Whether a launch for x of `dtype` reads x as int32 words (`x.view(torch.int32)`)."""
    return bool(TILE["pairs"]) and dtype in (torch.bfloat16, torch.float16)


def launch(x, packed, scales, *, rows, k, ceil):
    """x [rows, K] contiguous (rows, K > 0, K % 32 == 0); packed [rows, K/2], scales [rows,
    K/32] uint8 contiguous."""
    kernel, grid, consts, opts = launch_args(rows, k, ceil, x.dtype)
    if reads_words(x.dtype):
        x = x.view(torch.int32)
    kernel[grid](x, packed, scales, rows, k // 32, **consts, **opts)
