"""Triton kernels of `fp8_block_quant` (blockwise FP8 weight quantization). Imported lazily by
`fp8_block_quant.py`.

`w [..., R, C]` is read as `[E, R, C]` (E the product of the leading dims); blocks never cross
an expert. Two kernels:

- `_tile_kernel` (a padded block of at most `MAX_TILE` elements): one program takes one block
  row of one expert and NCB neighbouring block columns as a [BR_PAD, NCB, BC_PAD] tile, held in
  registers between the amax and the rounding (w is read once).
- `_loop_kernel` (larger blocks): one program a block, two passes over it in chunks (amax, then
  quantize; the second read mostly hits L2).

Per block: amax is an integer max over the |w| bit patterns (exact, inf counted as the float32
maximum, a NaN anywhere makes the block NaN: every NaN is above inf as bits), `s = max(amax,
eps) / 448` by a correctly rounded division, ue8m0 rounds s up to a power of two exactly from
its bits. Codes: `w / s` correctly rounded, from the block's `1/s` (one division a block): for
ue8m0 `w * (1/s)`: s is a power of two in [2**-22, 2**126] (eps = 1e-4), so 1/s is exact and
the product is the true quotient rounded once; for fp32 scales one multiply and two fmas from
`RN(1/s)` (`_fp8.div_by_recip`, proved exact for eps >= 2**-40). The E4M3 rounding is
`_fp8.e4m3_store_value` (exact integer rounding, or the clamped native cast on sm_90 where
`_caps.native_fp8_ok` says so): the same codes.
"""

import triton
import triton.language as tl

from parity.optimized.triton._caps import variant_on
from parity.optimized.triton._fp8 import div_by_recip, divfree_ok, e4m3_store_value
from parity.optimized.triton._launch import cdiv

_F32_MAX = tl.constexpr(3.4028234663852886e38)
_F32_INF_BITS = tl.constexpr(0x7F800000)

MAX_TILE = 16384  # padded block elements a program may hold in registers
# elements a program (tile path), a chunk (loop path); warps None: by elements. A dict so a
# benchmark can try others without editing the kernels.
TILE = {
    "elems": 8192,
    "chunk": 4096,
    "warps": None,
    "cols_first": variant_on("fp8_block_cols_first"),
}
# cols_first (tile path): one flat grid axis with the column blocks of a block row fastest, so
# programs that run side by side read neighbouring 256-byte pieces of the same 128 rows (one
# DRAM page) rather than the same columns of 128 different block rows (the 2-D grid's order:
# CUDA starts programs x fastest). The 128 x 128 weight reached 67% of copy on the H100 where
# fp8_quant, which reads whole rows, reached 82% (2026-12-05): not yet timed, hence off.


@triton.jit
def to_f32(v):
    """`v` as float32, bfloat16 by its bits (exact): the triton 3.9 interpreter's bfloat16 ->
    float32 cast gets subnormals wrong (5.5e-40 -> 5.9e-39); on a GPU this is the same shift."""
    if v.dtype == tl.bfloat16:
        b = v.to(tl.int16, bitcast=True).to(tl.int32) << 16
        return b.to(tl.float32, bitcast=True)
    else:
        return v.to(tl.float32)


@triton.jit
def _pow2_ceil(s):
    """2**ceil(log2(s)) for positive normal float32 s, exact (s >= 1e-4 / 448 here): a power
    of two stays, anything else goes to the next exponent with a zero mantissa."""
    bits = s.to(tl.int32, bitcast=True)
    up = tl.where((bits & 0x7FFFFF) != 0, (bits & 0x7F800000) + 0x00800000, bits)
    return up.to(tl.float32, bitcast=True)


@triton.jit
def _block_scale(mb, eps, UE8M0: tl.constexpr):
    """Scale from the max |w| bit pattern `mb` (int32) of a block; NaN for a NaN block."""
    amax = tl.where(mb >= _F32_INF_BITS, _F32_MAX, mb.to(tl.float32, bitcast=True))
    s = tl.where(amax < eps, eps, amax)
    s = tl.math.div_rn(s, tl.full(s.shape, 448.0, tl.float32))
    if UE8M0:
        s = _pow2_ceil(s)
    return tl.where(mb > _F32_INF_BITS, float("nan"), s)


@triton.jit
def _codes(v, s, eps, UE8M0: tl.constexpr, NATIVE_FP8: tl.constexpr):
    """E4M3 codes of float32 `v` divided by the block scales `s` (one value a block, shaped to
    broadcast against v: the reciprocal is taken once a block, not once an element)."""
    r = tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s)
    if UE8M0:  # 1/s exact (see the module docstring): v * (1/s) == v / s, bit for bit
        q = v * r
    elif divfree_ok(eps):  # RN(v / s) from RN(1/s), one multiply and two fmas, exact
        q = div_by_recip(v, s, r)
    else:  # eps < 2**-40 (not the op's 1e-4): the proof does not cover it; a true division
        q = tl.math.div_rn(v, s + tl.zeros_like(v))
    return e4m3_store_value(q, NATIVE_FP8)


# Compile keys (issue 11, section 4): R, nr and nc only bound and index the blocks, so they are
# not specialised (a compile key each on a GPU); C is the row stride of the loads and is. NCB
# depends on the block shape alone (`ncb`).
_COUNTS = ["R", "nr", "nc"]


@triton.jit(do_not_specialize=_COUNTS)
def _tile_kernel(
    w_ptr,
    q_ptr,  # float8_e4m3fn output (or a uint8 view of it)
    s_ptr,  # float32 [E, nr, nc]
    R,
    C,
    nr,
    nc,
    eps,
    BR: tl.constexpr,
    BC: tl.constexpr,
    BR_PAD: tl.constexpr,
    BC_PAD: tl.constexpr,
    NCB: tl.constexpr,
    UE8M0: tl.constexpr,
    NATIVE_FP8: tl.constexpr,
    COLS_FIRST: tl.constexpr,
):
    if COLS_FIRST:  # one flat axis, a block row's column groups fastest (see TILE)
        groups = tl.cdiv(nc, NCB)
        pid = tl.program_id(0) // groups  # expert * nr + block row
        cg = tl.program_id(0) % groups
    else:
        pid = tl.program_id(0)  # expert * nr + block row
        cg = tl.program_id(1)
    rb = pid % nr
    i = tl.arange(0, BR_PAD)
    cb = cg * NCB + tl.arange(0, NCB)
    c = tl.arange(0, BC_PAD)
    row = rb * BR + i
    col = cb[:, None] * BC + c[None, :]  # [NCB, BC_PAD]
    rmask = (i < BR) & (row < R)
    cmask = (c < BC)[None, :] & (col < C)
    mask = rmask[:, None, None] & cmask[None, :, :]
    # int64 row offsets: E * R * C may pass 2**31
    grow = (pid // nr).to(tl.int64) * R + row
    offs = (grow * C)[:, None, None] + col[None, :, :]
    v = to_f32(tl.load(w_ptr + offs, mask=mask, other=0.0))
    mb = tl.max(tl.max(v.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=2), axis=0)  # [NCB]
    s = _block_scale(mb, eps, UE8M0)
    codes = _codes(v, s[None, :, None], eps, UE8M0, NATIVE_FP8)
    tl.store(q_ptr + offs, codes.to(q_ptr.dtype.element_ty, bitcast=True), mask=mask)
    tl.store(s_ptr + pid.to(tl.int64) * nc + cb, s, mask=cb < nc)


@triton.jit(do_not_specialize=_COUNTS)
def _loop_kernel(
    w_ptr,
    q_ptr,
    s_ptr,
    R,
    C,
    nr,
    nc,
    eps,
    BR: tl.constexpr,
    BC: tl.constexpr,
    TR: tl.constexpr,
    TC: tl.constexpr,
    UE8M0: tl.constexpr,
    NATIVE_FP8: tl.constexpr,
):
    # one grid axis (dim 0 takes 2**31 - 1 programs, dim 1 only 65535): block (pid, cb)
    pid = tl.program_id(0) // nc  # expert * nr + block row
    cb = tl.program_id(0) % nc
    rb = pid % nr
    base = (pid // nr).to(tl.int64) * R
    r0 = rb * BR
    c0 = cb * BC
    ti = tl.arange(0, TR)
    tc = tl.arange(0, TC)
    mb = tl.zeros((TR, TC), dtype=tl.int32)
    for dr in range(0, BR, TR):
        for dc in range(0, BC, TC):
            row = r0 + dr + ti
            col = c0 + dc + tc
            mask = ((dr + ti < BR) & (row < R))[:, None] & ((dc + tc < BC) & (col < C))[None, :]
            offs = ((base + row) * C)[:, None] + col[None, :]
            v = to_f32(tl.load(w_ptr + offs, mask=mask, other=0.0))
            mb = tl.maximum(mb, v.to(tl.int32, bitcast=True) & 0x7FFFFFFF)
    # a [1] tensor, not a scalar: the scale math then has one shape on every path
    s = _block_scale(tl.max(tl.max(mb, axis=1), axis=0, keep_dims=True), eps, UE8M0)
    for dr in range(0, BR, TR):
        for dc in range(0, BC, TC):
            row = r0 + dr + ti
            col = c0 + dc + tc
            mask = ((dr + ti < BR) & (row < R))[:, None] & ((dc + tc < BC) & (col < C))[None, :]
            offs = ((base + row) * C)[:, None] + col[None, :]
            v = to_f32(tl.load(w_ptr + offs, mask=mask, other=0.0))
            codes = _codes(v, s[:, None], eps, UE8M0, NATIVE_FP8)
            tl.store(q_ptr + offs, codes.to(q_ptr.dtype.element_ty, bitcast=True), mask=mask)
    tl.store(s_ptr + pid.to(tl.int64) * nc + cb + tl.arange(0, 1), s)


def _warps(elems: int) -> int:
    return TILE["warps"] or (4 if elems <= 2048 else 8 if elems <= 8192 else 16)


def ncb(br_pad: int, bc_pad: int) -> int:
    """Column blocks a `_tile_kernel` program: the most (a power of two) that fit TILE["elems"];
    not fewer where a row has fewer blocks (masked), so the block shape alone fixes the tile."""
    per = max(1, TILE["elems"] // (br_pad * bc_pad))
    return 1 << (per.bit_length() - 1)


def plan(*, experts, rows, cols, block_shape, ue8m0, native_fp8):
    """The launch of one quantization: (kernel, grid, constexprs, num_warps). One place for the
    tile choice, so `launch` and the wrapper's cached plan cannot disagree."""
    br, bc = block_shape
    nr, nc = cdiv(rows, br), cdiv(cols, bc)
    br_pad, bc_pad = 1 << (br - 1).bit_length(), 1 << (bc - 1).bit_length()
    common = dict(UE8M0=ue8m0, NATIVE_FP8=native_fp8)
    if br_pad * bc_pad <= MAX_TILE:
        n_cb = ncb(br_pad, bc_pad)
        cols_first = bool(TILE.get("cols_first"))
        consts = dict(BR=br, BC=bc, BR_PAD=br_pad, BC_PAD=bc_pad, NCB=n_cb, **common)
        consts["COLS_FIRST"] = cols_first
        grid = (experts * nr, cdiv(nc, n_cb))
        if cols_first:
            grid = (grid[0] * grid[1],)
        return _tile_kernel, grid, consts, _warps(br_pad * bc_pad * n_cb)
    tc = min(bc_pad, TILE["chunk"])
    tr = max(1, min(br_pad, TILE["chunk"] // tc))
    consts = dict(BR=br, BC=bc, TR=tr, TC=tc, **common)
    return _loop_kernel, (experts * nr * nc,), consts, _warps(tr * tc)


def launch(w, q, scales, *, experts, rows, cols, block_shape, eps, ue8m0, native_fp8=False):
    """w [E, R, C] contiguous (E, R, C > 0); q like w, float8_e4m3fn; scales [E, nr, nc]."""
    kernel, grid, consts, warps = plan(
        experts=experts, rows=rows, cols=cols, block_shape=block_shape, ue8m0=ue8m0,
        native_fp8=native_fp8,
    )  # fmt: skip
    nr, nc = cdiv(rows, block_shape[0]), cdiv(cols, block_shape[1])
    kernel[grid](w, q, scales, rows, cols, nr, nc, eps, num_warps=warps, **consts)
