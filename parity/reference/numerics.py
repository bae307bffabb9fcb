"""Number-format helpers of the quantizer references: FP8 E4M3, FP4 E2M1 and E8M0 (UE8M0) scales.

All helpers are pure torch, work on any device and never modify their input. Rounding is always
round-to-nearest, ties to even. Powers of two are built exactly from their exponent bits, never
through a float `log2`/`exp2` that could round across a power of two.
"""

from __future__ import annotations

import torch

E4M3_MAX = 448.0
E2M1_MAX = 6.0
# Magnitudes of the E2M1 codes 0..7; bit 3 of a code is the sign.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E8M0_BIAS = 127
E8M0_NAN = 255

_E4M3_MIN_NORMAL_EXP = -6  # smallest normal binade of E4M3 is [2**-6, 2**-5)
_E4M3_MANTISSA_BITS = 3


# --- exact powers of two ----------------------------------------------------------------------


def exp2i(e: torch.Tensor) -> torch.Tensor:
    """Exactly `2.0 ** e` in float32 for an integer tensor `e` in [-149, 127].

    Built from the float32 bit pattern, so subnormal results (e < -126) are exact too.
    """
    e = e.to(torch.int32)
    normal = (e + 127).clamp(min=1) << 23  # biased exponent field, mantissa 0
    subnormal = torch.ones_like(e) << (e + 149).clamp(0, 22)  # a single mantissa bit
    return torch.where(e >= -126, normal, subnormal).view(torch.float32)


def floor_log2(x: torch.Tensor) -> torch.Tensor:
    """Exactly `floor(log2(|x|))` as int32 for finite nonzero float32 `x` (subnormals included)."""
    _, e = torch.frexp(x.to(torch.float32))  # |x| = m * 2**e with m in [0.5, 1)
    return e - 1


# --- FP8 E4M3 (float8_e4m3fn) -----------------------------------------------------------------


def round_to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round float32 `x` to the nearest float8_e4m3fn value (ties to even), as float32.

    Values beyond +-448 saturate to +-448 (the clamp comes before the cast, so the result never
    depends on how a cast treats overflow); NaN stays NaN; the sign of zero is kept. torch's cast
    is round-to-nearest-even on every E4M3 midpoint (checked exhaustively by the tests).
    """
    x = x.to(torch.float32).clamp(-E4M3_MAX, E4M3_MAX)
    return x.to(torch.float8_e4m3fn).to(torch.float32)


def round_to_e4m3_arith(x: torch.Tensor) -> torch.Tensor:
    """`round_to_e4m3` by arithmetic only (no fp8 cast): the form the Triton kernels mirror.

    The grid step of a value in binade [2**b, 2**(b+1)) is 2**(b - 3); below the smallest normal
    binade (subnormals) the step stays 2**-9. Scaling by a power of two is exact, so one
    round-half-to-even on `x / step` is the whole rounding.
    """
    x = x.to(torch.float32).clamp(-E4M3_MAX, E4M3_MAX)  # clamp first: 448 is a grid point
    binade = floor_log2(x).clamp(min=_E4M3_MIN_NORMAL_EXP)  # zero/NaN give junk, harmless below
    step = exp2i(binade - _E4M3_MANTISSA_BITS)
    return torch.round(x / step) * step  # torch.round is half-to-even; keeps -0.0 and NaN


# --- FP4 E2M1 -----------------------------------------------------------------------------------


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Encode float `x` (already divided by its scale) to E2M1 codes, uint8 in [0, 15].

    Round to nearest, ties to the even code (= even mantissa, as E2M1 is a float format);
    magnitudes above 6 saturate to 6 (code 7); bit 3 is the sign, so -0.0 gives code 8. NaN gives
    code 0 (or 8 if its sign bit is set): callers that allow NaN decide what NaN encodes to.
    """
    mag = x.to(torch.float32).abs()
    code = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for lo in range(len(E2M1_VALUES) - 1):
        mid = (E2M1_VALUES[lo] + E2M1_VALUES[lo + 1]) / 2
        # Past the midpoint we move up one code; at the midpoint only if the upper code is even.
        up = mag > mid if lo % 2 == 0 else mag >= mid
        code = code + up.to(torch.uint8)
    return code | (torch.signbit(x).to(torch.uint8) << 3)


def e2m1_decode(code: torch.Tensor) -> torch.Tensor:
    """Decode uint8 E2M1 codes (low 4 bits) to float32 values; code 8 decodes to -0.0."""
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=code.device)
    mag = table[(code & 7).long()]
    return torch.where((code & 8) != 0, -mag, mag)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes `[..., K]` (K even) into uint8 `[..., K // 2]`: element 2i in the low
    nibble, element 2i+1 in the high nibble."""
    codes = codes.to(torch.uint8)
    return (codes[..., 0::2] & 15) | ((codes[..., 1::2] & 15) << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_nibbles`: uint8 `[..., K // 2]` -> uint8 codes `[..., K]`."""
    pairs = torch.stack((packed & 15, packed >> 4), dim=-1)
    return pairs.flatten(-2)


# --- E8M0 / UE8M0 scales ------------------------------------------------------------------------


def ue8m0_pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    """`2 ** ceil(log2(s))` for positive float32 `s`, exact (frexp, no float log2).

    NaN, inf and 0 are returned unchanged (none occurs for a finite amax and a positive eps);
    a finite `s` above 2**127 gives inf.
    """
    s = s.to(torch.float32)
    m, e = torch.frexp(s)  # s = m * 2**e, m in [0.5, 1)
    # s is already a power of two exactly when m == 0.5; otherwise round the exponent up.
    up = torch.where(e > 127, torch.full_like(s, float("inf")), exp2i(e.clamp(max=127)))
    p = torch.where(m == 0.5, s, up)
    return torch.where(~torch.isfinite(s) | (s == 0), s, p)


def e8m0_decode(code: torch.Tensor) -> torch.Tensor:
    """uint8 E8M0 scale codes -> float32 `2 ** (code - 127)`; code 255 -> NaN.

    Code 0 is 2**-127, a float32 subnormal (exact).
    """
    value = exp2i(code.to(torch.int32) - E8M0_BIAS)
    return torch.where(code == E8M0_NAN, torch.full_like(value, float("nan")), value)
