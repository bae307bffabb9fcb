"""Known-answer tests of the format helpers and the quantizer references (docs/ops.md)."""

import math

import pytest
import torch

from parity.reference.numerics import (
    E2M1_VALUES,
    e2m1_decode,
    e2m1_encode,
    e8m0_decode,
    exp2i,
    pack_nibbles,
    round_to_e4m3,
    round_to_e4m3_arith,
    ue8m0_pow2_ceil,
    unpack_nibbles,
)
from parity.reference.quant import (
    _fp8_quant_f32,
    _silu_mul_fp8_quant_f32,
    fp8_block_dequant,
    fp8_block_quant,
    fp8_dequant,
    fp8_quant,
    mxfp4_dequant,
    mxfp4_quant,
    silu_mul_fp8_quant,
)
from parity.reference.swiglu import swiglu, swiglu_f32

F32_MAX = torch.finfo(torch.float32).max
FP8 = torch.float8_e4m3fn
NAN, INF = float("nan"), float("inf")


def f32(*values):
    return torch.tensor(values, dtype=torch.float32)


def same(a, b):
    """Bitwise-level equality for float tensors: NaN == NaN and the sign of zero counts."""
    a, b = a.to(torch.float32), b.to(torch.float32)
    return a.shape == b.shape and bool(
        ((a == b) & (a.signbit() == b.signbit()) | (a.isnan() & b.isnan())).all()
    )


# --- E4M3 rounding ------------------------------------------------------------------------------


def e4m3_grid():
    """All finite non-negative float8_e4m3fn values (0, 125 positive, up to 448) and their codes."""
    codes = torch.arange(128, dtype=torch.uint8)
    values = codes.view(FP8).to(torch.float32)
    keep = ~values.isnan()
    return values[keep], codes[keep]


def test_e4m3_grid_is_the_format():
    values, _ = e4m3_grid()
    assert len(values) == 127 and values[-1] == 448.0
    assert values[1] == 2.0**-9  # smallest subnormal
    assert bool((values[1:] > values[:-1]).all())


@pytest.mark.parametrize("rounder", [round_to_e4m3, round_to_e4m3_arith])
def test_e4m3_every_midpoint_ties_to_even(rounder):
    values, codes = e4m3_grid()
    lo, hi = values[:-1], values[1:]
    mid = (lo + hi) / 2  # exact in float32: the grid has 3 mantissa bits
    assert bool(((mid.double() * 2) == (lo.double() + hi.double())).all())
    expect = torch.where(codes[:-1] % 2 == 0, lo, hi)
    for sign in (1.0, -1.0):
        assert same(rounder(sign * mid), sign * expect)
        assert same(rounder(sign * values), sign * values)  # grid points are fixed
        # One float32 ulp either side of a midpoint goes to the nearer neighbour.
        assert same(rounder(sign * torch.nextafter(mid, hi)), sign * hi)
        assert same(rounder(sign * torch.nextafter(mid, lo)), sign * lo)


@pytest.mark.parametrize("rounder", [round_to_e4m3, round_to_e4m3_arith])
def test_e4m3_saturation_and_specials(rounder):
    x = f32(448.0, 449.0, 464.0, 1e30, INF, -500.0, -INF, NAN, -0.0, 0.0, 2.0**-10, 2.0**-11)
    # 2**-10 is the tie between 0 and the smallest subnormal 2**-9: even code 0.
    expect = f32(448, 448, 448, 448, 448, -448, -448, NAN, -0.0, 0.0, 0.0, 0.0)
    assert same(rounder(x), expect)


def test_e4m3_arith_matches_cast_on_random_values():
    g = torch.Generator().manual_seed(0)
    n = 50_000
    # Log-uniform magnitudes over the whole E4M3 range (subnormals included) and beyond ...
    mag = torch.exp2(torch.empty(n).uniform_(-14.0, 10.0, generator=g))
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    # ... plus arbitrary float32 bit patterns (float32 subnormals, huge values, NaN, inf).
    bits = torch.randint(-(2**31), 2**31 - 1, (n,), dtype=torch.int32, generator=g)
    x = torch.cat([mag * sign, bits.view(torch.float32)])
    assert same(round_to_e4m3_arith(x), round_to_e4m3(x))


# --- E2M1, nibbles, E8M0 -----------------------------------------------------------------------


def test_e2m1_decode_table():
    expect = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
    assert same(e2m1_decode(torch.arange(16, dtype=torch.uint8)), f32(*expect))
    assert E2M1_VALUES == (0, 0.5, 1, 1.5, 2, 3, 4, 6)


def test_e2m1_encode_ties_saturation_and_sign():
    x = f32(0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 6, 7, 1e9, INF, 0.26, 4.9, -0.0, -0.25, -5)
    expect = [0, 0, 2, 2, 4, 4, 6, 6, 7, 7, 7, 7, 1, 6, 8, 8, 14]
    assert e2m1_encode(x).tolist() == expect
    grid = e2m1_decode(torch.arange(16, dtype=torch.uint8))
    assert e2m1_encode(grid).tolist() == list(range(16))


def test_pack_nibbles_order():
    codes = torch.tensor([[1, 2, 15, 0], [7, 8, 0, 9]], dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.tolist() == [[0x21, 0x0F], [0x87, 0x90]]  # element 2i in the low nibble
    assert unpack_nibbles(packed).tolist() == codes.tolist()


def test_exp2i_exact_over_the_float32_range():
    e = torch.arange(-149, 128)
    assert exp2i(e).tolist() == [math.ldexp(1.0, int(k)) for k in e]


def test_e8m0_decode():
    codes = torch.tensor([0, 1, 126, 127, 128, 254, 255], dtype=torch.uint8)
    expect = [2.0**-127, 2.0**-126, 0.5, 1.0, 2.0, 2.0**127]
    got = e8m0_decode(codes)
    assert got[:-1].tolist() == expect and got[-1].isnan()


def test_ue8m0_pow2_ceil_exact():
    k = torch.arange(-140, 127)
    p = exp2i(k)
    assert ue8m0_pow2_ceil(p).tolist() == p.tolist()  # powers of two map to themselves
    above = torch.nextafter(p, torch.full_like(p, INF))
    assert ue8m0_pow2_ceil(above).tolist() == exp2i(k + 1).tolist()
    below = torch.nextafter(p, torch.zeros_like(p))
    assert ue8m0_pow2_ceil(below[1:]).tolist() == p[1:].tolist()
    assert ue8m0_pow2_ceil(f32(3.0, 0.3, NAN)).tolist()[:2] == [4.0, 0.5]
    assert ue8m0_pow2_ceil(f32(NAN)).isnan().all()


# --- fp8_quant ------------------------------------------------------------------------------------


def row(group_values, group_size=4):
    """One [1, K] row from per-group value lists, each padded with zeros to group_size."""
    out = []
    for vals in group_values:
        out += list(vals) + [0.0] * (group_size - len(vals))
    return f32(*out).reshape(1, -1)


def test_fp8_quant_fp32_scale_and_codes():
    x = row([[448.0, 1.0, -2.5, 100.0], [1.0, 0.5]])
    q, s = fp8_quant(x, group_size=4)
    assert q.dtype == FP8 and s.dtype == torch.float32 and s.shape == (1, 2)
    assert torch.equal(s, f32(448.0, 1.0).reshape(1, 2) / 448)  # amax / 448
    assert same(q.float()[0, :4], f32(448, 1, -2.5, 96))  # 100 -> 96 (step 8 above 64)
    assert same(q.float()[0, 4:6], f32(448, 224))
    assert same(fp8_dequant(q, s, 4)[0, :4], f32(448, 1, -2.5, 96))


@pytest.mark.parametrize("k", [-10, 0, 5])
def test_fp8_quant_ue8m0_exact_powers_of_two(k):
    amax = 448.0 * 2.0**k
    x = row([[amax, amax / 4], [amax * (1 + 2.0**-20), amax / 4]])
    q, s = fp8_quant(x, group_size=4, scale_format="ue8m0")
    assert s.tolist() == [[2.0**k, 2.0 ** (k + 1)]]
    assert q.float()[0, [0, 1, 4, 5]].tolist() == [448.0, 112.0, 224.0, 56.0]


def test_fp8_quant_saturates_at_448_after_division():
    amax = 1.0000499486923218  # float32 value where amax / (amax / 448) rounds to above 448
    s = f32(amax) / 448
    assert (f32(amax) / s).item() > 448.0
    q, _ = fp8_quant(row([[amax, -amax]]), group_size=4)
    assert q.float()[0, :2].tolist() == [448.0, -448.0]


def test_fp8_quant_all_zero_group():
    x = row([[0.0, -0.0], [1.0]])
    for fmt, scale in [("fp32", f32(1e-10) / 448), ("ue8m0", ue8m0_pow2_ceil(f32(1e-10) / 448))]:
        q, s = fp8_quant(x, group_size=4, scale_format=fmt)
        assert s[0, 0] == scale[0] and s[0, 0] > 0
        assert same(q.float()[0, :4], f32(0, -0.0, 0, 0))  # no NaN, sign of zero kept
    q, s = fp8_quant(x, group_size=4, eps=0.5)
    assert s[0, 0] == f32(0.5 / 448)[0] and s[0, 1] == f32(1 / 448)[0]


def test_fp8_quant_nan_group_and_inf_saturation():
    x = row([[1.0, NAN, 2.0], [INF, 1.0, -INF], [3.0]])
    q, s = fp8_quant(x, group_size=4)
    assert s[0, 0].isnan() and q.float()[0, :4].isnan().all()  # the NaN group only
    assert s[0, 1] == f32(F32_MAX)[0] / 448  # inf counts as the float32 maximum
    assert same(q.float()[0, 4:8], f32(448, 0, -448, 0))
    assert s[0, 2] == f32(3.0 / 448)[0] and q.float()[0, 8] == 448.0


def test_fp8_quant_column_major_scales():
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
    q, s = fp8_quant(x, group_size=4)
    qc, sc = fp8_quant(x, group_size=4, column_major_scales=True)
    assert sc.stride() == (1, 5) and sc.shape == (5, 3) and torch.equal(sc, s)
    assert torch.equal(qc.view(torch.uint8), q.view(torch.uint8)) and q.is_contiguous()


def test_fp8_quant_low_precision_input_is_upcast_exactly():
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    q, s = fp8_quant(x, group_size=8)
    q32, s32 = fp8_quant(x.float(), group_size=8)
    assert torch.equal(q.view(torch.uint8), q32.view(torch.uint8)) and torch.equal(s, s32)


def test_fp8_quant_empty():
    for column_major in (False, True):
        q, s = fp8_quant(torch.zeros(0, 256), column_major_scales=column_major)
        assert q.shape == (0, 256) and q.dtype == FP8 and s.shape == (0, 2)
        assert s.dtype == torch.float32
    q, s = fp8_quant(torch.zeros(3, 0))
    assert q.shape == (3, 0) and s.shape == (3, 0)


# --- fp8_block_quant ------------------------------------------------------------------------------


def test_fp8_block_quant_partial_blocks():
    w = f32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, -448).reshape(3, 5)
    q, s = fp8_block_quant(w, block_shape=(2, 2))
    assert q.shape == (3, 5) and q.dtype == FP8 and s.shape == (2, 3)
    amax = f32(7, 9, 10, 12, 14, 448).reshape(2, 3)  # partial blocks: last row, last column
    assert torch.equal(s, amax / 448)
    expect = round_to_e4m3(w / fp8_expand(s, 2, 2, 3, 5))
    assert same(q.float(), expect) and q.float()[2, 4] == -448.0
    assert same(fp8_block_dequant(q, s, (2, 2)), expect * fp8_expand(s, 2, 2, 3, 5))


def fp8_expand(s, br, bc, rows, cols):
    return s.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:rows, :cols]


def test_fp8_block_quant_eps_ue8m0_and_leading_dims():
    w = torch.zeros(2, 3, 4)
    w[1, 0, 0] = 1280.0  # s = 1280 / 448 = 2.86 -> 4
    q, s = fp8_block_quant(w, block_shape=(2, 4), scale_format="ue8m0")
    assert s.shape == (2, 2, 1)
    tiny = ue8m0_pow2_ceil(f32(1e-4) / 448)[0]
    assert s.flatten().tolist() == [tiny, tiny, 4.0, tiny]
    assert q.float()[1, 0, 0] == 320.0  # 1280 / 4
    _, s = fp8_block_quant(w, block_shape=(2, 4))
    assert s[0, 0, 0] == f32(1e-4)[0] / 448


def test_fp8_block_quant_empty():
    q, s = fp8_block_quant(torch.zeros(0, 200, 130))
    assert q.shape == (0, 200, 130) and q.dtype == FP8 and s.shape == (0, 2, 2)
    q, s = fp8_block_quant(torch.zeros(4, 0), block_shape=(3, 3))
    assert q.shape == (4, 0) and s.shape == (2, 0)


# --- silu_mul_fp8_quant ---------------------------------------------------------------------------


@pytest.mark.parametrize("limit,clamp_mode", [(None, "pre"), (3.0, "pre"), (3.0, "post")])
def test_silu_mul_fp8_quant_is_fp8_quant_of_float32_swiglu(limit, clamp_mode):
    x = 3 * torch.randn(4, 16, generator=torch.Generator().manual_seed(3))
    xb = x.to(torch.bfloat16)
    q, s = silu_mul_fp8_quant(xb, group_size=4, limit=limit, clamp_mode=clamp_mode)
    y32 = swiglu_f32(xb, limit=limit, clamp_mode=clamp_mode, dtype=torch.float32)
    q_ref, s_ref = _fp8_quant_f32(y32, 4, "fp32", 1e-10)
    assert same(q.float(), q_ref) and torch.equal(s, s_ref)
    # The unfused path (SwiGLU rounded to bf16 first) is what fp8_quant(swiglu(x)) gives.
    qu, su = _silu_mul_fp8_quant_f32(xb, 4, limit, clamp_mode, "fp32", torch.bfloat16)
    q2, s2 = fp8_quant(swiglu(xb, limit=limit, clamp_mode=clamp_mode), group_size=4)
    assert same(qu, q2.float()) and torch.equal(su, s2)


def test_silu_mul_fp8_quant_layout_options_and_empty():
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(4))
    q, s = silu_mul_fp8_quant(x, group_size=4, scale_format="ue8m0", column_major_scales=True)
    assert q.shape == (3, 8) and s.shape == (3, 2) and s.stride() == (1, 3)
    assert bool((torch.log2(s) == torch.log2(s).round()).all())
    q, s = silu_mul_fp8_quant(torch.zeros(0, 512))
    assert q.shape == (0, 256) and q.dtype == FP8 and s.shape == (0, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_fp8_quant_check_takes_up_minus_zero_as_plus_zero_where_gate_is_exact(dtype):
    """The contract's up + beta turns an up of -0.0 into +0.0, so gate 21 (silu is exactly the
    gate there) times up -0.0 is +0.0 and its code 0x00. The check's exact branch once kept -0.0
    and failed the reference (H100 2026-12-05, regime zero_groups: 1 code in 11200 groups, on
    CUDA and on the CPU for those inputs); a -0 code (0x80) still fails it."""
    from parity.properties.case import Case
    from parity.properties.specs import silu_mul_fp8_quant as spec

    x = torch.zeros(2, 256, dtype=dtype)
    x[0, 0], x[0, 128] = 21.0, -0.0  # gate 21, up -0.0
    x[0, 1], x[0, 129] = 1.5, 2.0  # a nonzero in the group: a normal scale
    x[1, 0], x[1, 128] = 21.0, -0.0  # an all-zero group: the floor scale
    opts = dict(group_size=128, limit=None, clamp_mode="pre", scale_format="fp32")
    case = Case("silu_mul_fp8_quant", (x,), {**opts, "column_major_scales": False}, {}, "cpu")
    q, s = silu_mul_fp8_quant(x, **opts)
    assert int(q[0, 0].view(torch.uint8)) == 0 and int(q[1, 0].view(torch.uint8)) == 0
    assert spec.compare(case, (q, s))
    for row in (0, 1):
        bad = q.clone()
        bad.view(torch.uint8)[row, 0] = 0x80
        assert not spec.compare(case, (bad, s))


# --- MXFP4 ----------------------------------------------------------------------------------------


def block(*head, fill=0.0):
    """A 32-element block starting with `head`."""
    return list(head) + [fill] * (32 - len(head))


def test_mxfp4_hand_block_codes_and_bytes():
    x = f32(*block(0.5, -1.0, 0.0, -0.0, 6.0, 3.0))
    packed, scales = mxfp4_quant(x)
    assert packed.shape == (16,) and packed.dtype == torch.uint8
    assert scales.tolist() == [127]  # amax 6: e = floor(log2 6) - 2 = 0
    assert packed[:3].tolist() == [0xA1, 0x80, 0x57]
    assert same(mxfp4_dequant(packed, scales, dtype=torch.float32), x)


def test_mxfp4_midpoints_tie_to_even_code():
    x = f32(*block(0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0))
    packed, scales = mxfp4_quant(x)
    assert scales.tolist() == [127]
    assert unpack_nibbles(packed)[:8].tolist() == [0, 2, 2, 4, 4, 6, 6, 7]


def test_mxfp4_floor_vs_ceil():
    x = f32(*block(6.0), *block(7.0), *block(3.0), *block(-12.5))
    p_floor, s_floor = mxfp4_quant(x, scale_rounding="floor")
    p_ceil, s_ceil = mxfp4_quant(x, scale_rounding="ceil")
    # amax 6: both e = 0. amax 7: floor e = 0 (7 saturates to 6), ceil e = 1 (7/2 = 3.5 ties to 4).
    # amax 3: floor e = -1 (3/0.5 = 6), ceil e = -1. amax 12.5: floor e = 1, ceil e = 2.
    assert [c - 127 for c in s_floor.tolist()] == [0, 0, -1, 1]
    assert [c - 127 for c in s_ceil.tolist()] == [0, 1, -1, 2]
    first = [0, 32, 64, 96]
    assert unpack_nibbles(p_floor)[first].tolist() == [7, 7, 7, 15]  # 12.5/2 = 6.25 -> 6
    assert unpack_nibbles(p_ceil)[first].tolist() == [7, 6, 7, 13]  # 12.5/4 = 3.125 -> 3


def test_mxfp4_zero_nan_inf_and_extreme_blocks():
    x = torch.stack(
        [
            f32(*block()),  # amax 0 -> code 0
            f32(*block(1.0, NAN, 2.0)),  # NaN -> code 255, element codes 0
            f32(*block(INF, 1.0, -INF)),  # inf: amax = float32 max, floor e = 125
            f32(*block(2.0**-140)),  # e = -142 clamps to -127
        ]
    )
    packed, scales = mxfp4_quant(x)
    assert scales.tolist() == [[0], [255], [252], [0]]
    codes = unpack_nibbles(packed)
    assert bool((codes[0] == 0).all() and (codes[1] == 0).all() and (codes[3] == 0).all())
    assert codes[2, :3].tolist() == [7, 0, 15]
    y = mxfp4_dequant(packed, scales, dtype=torch.float32)
    assert bool((y[0] == 0).all() and y[1].isnan().all())
    assert y[2, 0] == 6.0 * 2.0**125 and y[2, 2] == -6.0 * 2.0**125


def test_mxfp4_dequant_sign_of_zero_nan_scale_and_dtypes():
    packed = torch.tensor([0x80, 0x71] + [0] * 14, dtype=torch.uint8)  # codes 0, 8, 1, 7, ...
    y = mxfp4_dequant(packed, torch.tensor([0], dtype=torch.uint8), dtype=torch.float32)
    assert same(y[:4], f32(0.0, -0.0, 0.5 * 2.0**-127, 6.0 * 2.0**-127))  # subnormal scale
    yb = mxfp4_dequant(packed, torch.tensor([130], dtype=torch.uint8))
    assert yb.dtype == torch.bfloat16 and same(yb[:4], f32(0.0, -0.0, 4.0, 48.0))
    yn = mxfp4_dequant(packed, torch.tensor([255], dtype=torch.uint8), dtype=torch.float16)
    assert yn.dtype == torch.float16 and yn.isnan().all()


def test_mxfp4_roundtrip_on_grid_values_and_leading_dims():
    g = torch.Generator().manual_seed(5)
    codes = torch.randint(0, 16, (2, 3, 64), dtype=torch.uint8, generator=g)
    codes[..., 0::32] = 7  # amax 6 in every block, so floor e = the block exponent
    k = torch.randint(-20, 20, (2, 3, 2), generator=g)
    x = e2m1_decode(codes) * exp2i(k).repeat_interleave(32, -1)
    packed, scales = mxfp4_quant(x.to(torch.bfloat16))
    assert packed.shape == (2, 3, 32) and scales.shape == (2, 3, 2)
    assert torch.equal(unpack_nibbles(packed), codes) and torch.equal(scales.long() - 127, k)
    assert same(mxfp4_dequant(packed, scales), x)


def test_mxfp4_empty():
    packed, scales = mxfp4_quant(torch.zeros(0, 64))
    assert packed.shape == (0, 32) and packed.dtype == torch.uint8
    assert scales.shape == (0, 2) and scales.dtype == torch.uint8
    y = mxfp4_dequant(packed, scales, dtype=torch.float16)
    assert y.shape == (0, 64) and y.dtype == torch.float16


# --- validation and input immutability ------------------------------------------------------------

X = torch.ones(2, 256)
U8 = torch.zeros(2, 16, dtype=torch.uint8)
S8 = torch.zeros(2, 1, dtype=torch.uint8)

BAD = [
    (fp8_quant, ([1.0],), {}, TypeError, "fp8_quant: x"),
    (fp8_quant, (X.long(),), {}, TypeError, "fp8_quant: x"),
    (fp8_quant, (X.double(),), {}, TypeError, "fp8_quant: x"),
    (fp8_quant, (X[0],), {}, ValueError, "fp8_quant: x"),
    (fp8_quant, (X,), {"group_size": 96}, ValueError, "fp8_quant: x"),
    (fp8_quant, (X,), {"group_size": 0}, ValueError, "fp8_quant: group_size"),
    (fp8_quant, (X,), {"group_size": 128.0}, TypeError, "fp8_quant: group_size"),
    (fp8_quant, (X,), {"scale_format": "e8m0"}, ValueError, "fp8_quant: scale_format"),
    (fp8_quant, (X,), {"column_major_scales": 1}, TypeError, "fp8_quant: column_major_scales"),
    (fp8_quant, (X,), {"eps": 0.0}, ValueError, "fp8_quant: eps"),
    (fp8_block_quant, (X[0],), {}, ValueError, "fp8_block_quant: w"),
    (fp8_block_quant, (X,), {"block_shape": 128}, TypeError, "fp8_block_quant: block_shape"),
    (fp8_block_quant, (X,), {"block_shape": (1, 2, 3)}, ValueError, "fp8_block_quant: block_"),
    (fp8_block_quant, (X,), {"block_shape": (0, 128)}, ValueError, r"block_shape\[0\]"),
    (fp8_block_quant, (X,), {"scale_format": None}, ValueError, "fp8_block_quant: scale_"),
    (silu_mul_fp8_quant, (X,), {"group_size": 256}, ValueError, "silu_mul_fp8_quant: x"),
    (silu_mul_fp8_quant, (X[:, :255],), {"group_size": 1}, ValueError, "silu_mul_fp8_quant: x"),
    (silu_mul_fp8_quant, (X,), {"group_size": 64, "limit": 0}, ValueError, "quant: limit"),
    (silu_mul_fp8_quant, (X,), {"group_size": 64, "clamp_mode": "x"}, ValueError, "clamp_mode"),
    (mxfp4_quant, (X,), {"block": 16}, ValueError, "mxfp4_quant: block"),
    (mxfp4_quant, (X[:, :48],), {}, ValueError, "mxfp4_quant: x"),
    (mxfp4_quant, (X,), {"scale_rounding": "even"}, ValueError, "mxfp4_quant: scale_rounding"),
    (mxfp4_dequant, (U8.float(), S8), {}, TypeError, "mxfp4_dequant: packed"),
    (mxfp4_dequant, (U8[:, :8], S8), {}, ValueError, "mxfp4_dequant: packed"),
    (mxfp4_dequant, (U8, S8[:1]), {}, ValueError, "mxfp4_dequant: scales"),
    (mxfp4_dequant, (U8, S8.float()), {}, TypeError, "mxfp4_dequant: scales"),
    (mxfp4_dequant, (U8, S8), {"dtype": torch.float64}, TypeError, "mxfp4_dequant: dtype"),
]


@pytest.mark.parametrize(
    "fn,args,kwargs,error,match", BAD, ids=[f"{b[0].__name__}-{i}" for i, b in enumerate(BAD)]
)
def test_bad_input_raises_naming_the_argument(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


@pytest.mark.parametrize(
    "fn,kwargs",
    [
        (fp8_quant, {"group_size": 4}),
        (fp8_block_quant, {"block_shape": (2, 4)}),
        (silu_mul_fp8_quant, {"group_size": 4}),
        (mxfp4_quant, {}),
    ],
)
def test_inputs_unchanged_and_outputs_contiguous(fn, kwargs):
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(6)).t()  # non-contiguous
    x[0, :3] = torch.tensor([NAN, INF, -0.0])
    before = x.clone()
    q, s = fn(x, **kwargs)
    assert same(x, before) and x.stride() == (1, 6)
    assert q.is_contiguous() and s.is_contiguous()
