"""Triton device helpers for exact float conversions (FP8 E4M3, bfloat16) by integer
arithmetic on float32 bits.

No helper relies on a native `.to(tl.float8e4nv)` for rounding unless asked to (NATIVE of
`e4m3_store_value`, where the caller has checked the device): under TRITON_INTERPRET=1
(triton 3.9) that cast drops the mantissa carry (124.1 -> 64) and turns values above 448 into
NaN, and on a GPU its overflow behaviour depends on the conversion instruction chosen. Here the
rounding is done once, exactly, on the float32 bit pattern:

- `e4m3_code(x)`: the 8-bit E4M3 code (int32 in [0, 255]) of float32 `x`: round to nearest,
  ties to even; |x| >= 448 (inf included) saturates to +-448; E4M3 subnormals (steps of 2**-9
  below 2**-6) rounded correctly; the sign of zero kept; NaN gives 0x7F (one canonical NaN).
- `e4m3_decode(code)`: float32 value of a code (exact).
- `e4m3_round(x)`: `e4m3_decode(e4m3_code(x))`, float32 on the E4M3 grid.
- `e4m3_to_fp8(x)`: `tl.float8e4nv` tensor holding `e4m3_code(x)` (a bitcast, so exact): for a
  `tl.dot` on FP8 operands or a store into a float8_e4m3fn tensor.
- `e4m3_store_value(x, NATIVE)`: the same `tl.float8e4nv` as `e4m3_to_fp8(x)`; with NATIVE
  (only where `_caps.native_fp8_ok` says the native cast is trusted: CUDA capability 9.x) by a
  clamp to +-448 and the native `.to(tl.float8e4nv)` (cvt.rn.satfinite.e4m3x2.f32), ~8 ops an
  element instead of ~18; NaN forced to code 0x7F, the sign of zero kept.
- `div_by_recip(v, s, r)`: `RN(v / s)` bit for bit from the per-row reciprocal `r = RN(1/s)`, one
  multiply and two fmas an element instead of a correctly rounded division (`div_rn`, ~10
  instructions and a range check); exact for a scale in the range `divfree_ok(eps)` promises
  (the proof is next to the code).
- `e2m1_pair_bf16_bits(packed)`: both bfloat16 patterns of `value * 2**-126` of a byte's two
  E2M1 codes in one int32 (two multiplies and two masks).
- `f32_to_bf16(x)`, `to_dtype_rne(x, dtype)`: round-to-nearest-even output casts; the
  interpreter's float32 -> bfloat16 cast truncates, so kernels storing bf16 use these
  (`to_dtype_rne` uses the integer form under the interpreter only: on a GPU the native cast
  is cvt.rn.bf16.f32, the same rounding in one instruction).

Imports triton at module level: only the `_kernels_*` modules import this, lazily.
"""

import os

import triton
import triton.language as tl

# Chosen when this module is imported (after TRITON_INTERPRET is set, as triton.jit reads it).
_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")

# float32 bit patterns (constexpr: a compiled kernel may read only constexpr globals)
_F32_2_POW_M6 = tl.constexpr(0x3C800000)  # 2**-6, the smallest normal E4M3 value
_F32_448 = tl.constexpr(0x43E00000)  # the largest E4M3 value
_F32_INF = tl.constexpr(0x7F800000)
_F32_MAX = tl.constexpr(3.4028234663852886e38)
# `div_by_recip` is exact for s = max(amax, eps) / 448 once eps >= 2**-40 (then s >= 2**-49)
DIVFREE_MIN_EPS = tl.constexpr(2.0**-40)


@triton.jit
def e4m3_code(x):
    """E4M3 code (int32 0..255) of float32 `x`: RNE, saturating at +-448, NaN -> 0x7F."""
    bits = x.to(tl.float32).to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80  # arithmetic shift: bit 31 lands on bit 7
    a = bits & 0x7FFFFFFF  # |x| as bits; the order of bits is the order of values

    # Normal E4M3 range [2**-6, 448): drop 20 of the 23 mantissa bits, ties to even; a carry
    # out of the mantissa correctly bumps the exponent. (exp - 127 + 7) << 3 == bits>>20 - 960.
    an = tl.minimum(a, _F32_448)  # lanes at or above 448 are replaced below; no int overflow
    normal = ((an + 0x7FFFF + ((an >> 20) & 1)) >> 20) - 960

    # Subnormal E4M3 range: the code is round(|x| * 2**9) in [0, 8] (8 is 2**-6, code 0x08).
    # The product is exact and below 8, so adding 2**23 rounds it to an integer, ties to even
    # (the same if the compiler fuses the two into an fma). Other lanes' junk is discarded.
    t = a.to(tl.float32, bitcast=True) * 512.0 + 8388608.0
    sub = t.to(tl.int32, bitcast=True) - 0x4B000000  # bits of 2**23

    code = tl.where(a < _F32_2_POW_M6, sub, normal)
    code = tl.where(a >= _F32_448, 0x7E, code)  # saturate (inf included): 448 is code 0x7E
    code = code | sign
    return tl.where(a > _F32_INF, 0x7F, code)


@triton.jit
def e4m3_decode(code):
    """Float32 value of E4M3 codes (int32 0..255); 0x7F and 0xFF decode to NaN."""
    code = code.to(tl.int32)
    mag = code & 0x7F
    e = mag >> 3
    m = mag & 7
    normal = (((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True)
    val = tl.where(e == 0, m.to(tl.float32) * 0.001953125, normal)  # subnormal: m * 2**-9
    val = tl.where(mag == 0x7F, float("nan"), val)
    # The sign as a bit: a float negation may compile to 0 - x, which loses -0.0.
    sign = (code & 0x80) << 24
    return (val.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def e4m3_round(x):
    """Float32 `x` rounded onto the E4M3 grid (RNE, saturating at +-448, NaN kept)."""
    return e4m3_decode(e4m3_code(x))


@triton.jit
def e4m3_to_fp8(x):
    """`tl.float8e4nv` holding the correctly rounded `x` (bitcast of `e4m3_code`)."""
    return e4m3_code(x).to(tl.uint8).to(tl.float8e4nv, bitcast=True)


@triton.jit
def e4m3_store_value(x, NATIVE: tl.constexpr):
    """`tl.float8e4nv` holding `e4m3_code(x)` (RNE, saturating at +-448, NaN -> 0x7F).

    NATIVE (trusted on sm_90 only, see `_caps.py`): the clamp to +-448 is explicit (the result
    does not rely on satfinite), float32 subnormals (E4M3 code +-0 anyway) become signed zeros
    first (a cast that flushes its input may lose the sign), then one native cast rounds; NaN
    lanes are forced to the canonical code 0x7F (the cast may keep a negative NaN's sign,
    0xFF). The clamp works on |x| as bits, where the order is that of the values: ~8 ops an
    element (one cvt per two) instead of ~18. Otherwise the exact integer rounding."""
    if NATIVE:
        bits = x.to(tl.float32).to(tl.int32, bitcast=True)
        a = bits & 0x7FFFFFFF
        m = tl.minimum(a, _F32_448)  # inf and NaN too (NaN is fixed below)
        m = tl.where(a < 0x00800000, 0, m)  # below 2**-126: an exact zero
        y = (m | (bits ^ a)).to(tl.float32, bitcast=True)  # bits ^ a: the sign bit
        code = y.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
        code = tl.where(a > _F32_INF, 0x7F, code).to(tl.uint8)
        return code.to(tl.float8e4nv, bitcast=True)
    else:
        return e4m3_to_fp8(x)


@triton.jit
def divfree_ok(eps):
    """Whether `div_by_recip` is exact for every row scale `max(amax, eps) / 448` (eps the
    float32 kernel argument, a runtime scalar: one uniform branch a program)."""
    return (eps >= DIVFREE_MIN_EPS) & (eps <= _F32_MAX)


@triton.jit
def div_by_recip(v, s, r):
    """RN(v / s) for float32 `v` and the row scale `s` (broadcastable to v), given
    `r = div_rn(1, s)` computed once a row; NaN where s is NaN. Needs `divfree_ok(eps)`.

    q0 = RN(v*r); t = RN(q0*s - v) (fma); q = RN(q0 - t*r) (fma). Proof that the E4M3 code of
    q is that of RN(v/s) (p = 24, u = 2**-p, z = v/s; s in [2**-49, RN(max/448)], max the
    float32 maximum, as eps >= 2**-40 and amax, eps <= max; |v| <= amax, so |z| <= 448 (1 +
    2u)):

    Regime I, |z| >= 2**-11: |v| >= 2**-60, r in [2**-120, 2**49], |q0|, |q| >= 2**-12, and t
    is 0 or a multiple of ulp(q0) ulp(s) >= 2**-35 * 2**-72: no operand or result is subnormal
    or overflows (so flush-to-zero is moot), and scaling v, s by powers of two changes nothing.
    Take v, s in [1, 2); s = 1 is exact (r = 1, t = 0). Else r = 1/s + rho, |rho| <= u/2, and
    sigma = s*r - 1 = s*rho, |sigma| < u. Write d = q0 - z, t* = q0*s - v = d*s (exact), t =
    t* + eta. Then w = q0 - t*r = z - d*sigma - eta*r exactly, and q = RN(w) = RN(z) as soon as
    |w - z| < D, D the distance from z to the midpoint m between RD(z) and RU(z). z is never a
    midpoint, and v - m*s is a multiple of g = ulp(z) * u, so D >= g / s.
    (A) z in [1, 2) (ulp 2u): |v*r - z| <= v*u/2 < u, so q0 is RD(z) or RU(z) (Markstein's
        hypothesis), or q0 = 1 - u with z in [1, 1 + u/2), whose D >= u/2 dwarfs |w - z| <=
        1.5u * u + 2u**2. Faithful q0: t* is a multiple of 4u**2 below 4u, exact (eta = 0);
        |d| <= u + D, so |w - z| <= (u + D) s u/2 < D, as D >= 2u**2/s and s**2 + 2su < 4.
    (B) z in (1/2, 1) (ulp u): Markstein's hypothesis can fail (q0 1.5 ulp off when v, s ~ 2),
        so directly. If q0 is RD(z) or RU(z): |d| <= u/2 + D, t* a multiple of 2u**2 below 2u,
        exact, and (u/2 + D) s u/2 < D as D >= u**2/s. If not, v*r passed the midpoint beyond
        RU(z) (or RD(z)): D > u(1 - v/2), |d| < 1.5u, |eta| <= 2u**2, |w - z| < (0.75 s +
        2r) u**2 <= 2.75u**2 + u**3 < D once v <= 2 - 8u; v < s < 2 leaves the three pairs
        (v, s) = (2-6u, 2-4u), (2-6u, 2-2u), (2-4u, 2-2u), checked directly by
        tests/test_fp8_divfree.py (all v for those s). The same test runs the algorithm over
        every pair of p-bit significands for p = 4..12 (exact) and all 2**23 significands of v
        for a set of s in float32 (the fmas emulated exactly).
    Regime II, |z| < 2**-11: RN(z) has E4M3 code +-0 with the sign of v; so has q: |w| <=
    |z| (1 + 5u) + 2**-101 < 2**-10 (codes round 2**-10 to 0, ties to even), and w is 0 only
    for v = +-0, else of the sign of z: q0 = 0 gives t = -v exactly and w = v*r; else the
    errors of q0 and t move w by less than |z| (a subnormal t errs by <= 2**-150 <= |v|/2).
    v = +-0: q0 = +-0, t = (+-0) + (-+0) = +0, q = (-0) + (+-0) = +-0: the sign survives
    (this is why the last fma adds t*(-r), not -(t*r)). Every rounding keeps the sign.
    v = +-inf (a finite row): clamped to +-float32 max first (else inf - inf = NaN), whose
    quotient is > 448 (1 - 2u) and saturates like inf does (s = RN(max / 448)). NaN v: the
    row's s, r and hence q are NaN.
    """
    vc = tl.clamp(v, -_F32_MAX, _F32_MAX)  # NaN may become finite: its row is NaN anyway
    q0 = vc * r
    t = tl.math.fma(q0, tl.broadcast_to(s, q0.shape), -vc)
    return tl.math.fma(t, tl.broadcast_to(-r, q0.shape), q0)


@triton.jit
def e2m1_pair_bf16_bits(packed):
    """Both bfloat16 patterns of `value * 2**-126` (the sign at 15; code 1 the bfloat16
    subnormal 2**-127) of the two E2M1 codes of uint8 `packed` in one int32, the low nibble's
    in bits 0..15 and the high one's in 16..31. Two multiplies of the zero-extended byte b:
    b * (2**6 + 2**18) puts the low magnitude (bits 0..2) at 6..8 and the high one (4..6) at
    22..24, b * (2**12 + 2**24) the low sign (bit 3) at 15 and the high one (7) at 31; the two
    copies of b in each product do not overlap, so no carries. Times 2**126 in bfloat16
    (exact, subnormals kept on a GPU; the interpreter's bfloat16 arithmetic is on raw bit
    patterns) they are the values. The halves are the pair a bfloat16x2 register holds:
    fused_moe's dot tile (sm_90 SASS of its 128 x 64 tile 17.2 -> 15.2 instructions a weight
    byte) and mxfp4_dequant's bfloat16 output."""
    b = packed.to(tl.int32)
    return ((b * 0x40040) & 0x01C001C0) | ((b * 0x1001000) & -0x7FFF8000)  # 0x80008000


@triton.jit
def f32_to_bf16(x):
    """float32 -> bfloat16, round to nearest even, by integer arithmetic on the bits.

    The triton 3.9 interpreter's `.to(tl.bfloat16)` truncates instead; on a GPU the result is
    the same as `cvt.rn.bf16.f32`. Overflow rounds to inf; NaN stays NaN (quiet, sign kept).
    """
    bits = x.to(tl.float32).to(tl.int32, bitcast=True)
    r = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # arithmetic shift: the sign bits come back
    r = tl.where((bits & 0x7FFFFFFF) > _F32_INF, (bits >> 16) | 0x40, r)
    return r.to(tl.int16).to(tl.bfloat16, bitcast=True)


@triton.jit
def to_dtype_rne(x, dtype: tl.constexpr):
    """float32 `x` rounded once to `dtype` (bfloat16, float16 or float32), ties to even."""
    if dtype == tl.bfloat16 and _INTERPRET:
        return f32_to_bf16(x)
    else:
        return x.to(dtype)
