"""The division-free FP8 quotient `_fp8.div_by_recip`: q0 = RN(v*r), t = RN(q0*s - v),
q = RN(q0 - t*r) with r = RN(1/s), claimed equal to RN(v/s) (proof in its docstring).

What is exhaustive and what is sampled:
- exhaustive, exact: every pair of p-bit significands (v, s) for p = 4..12 (the algorithm in
  precision p; the structural cases of the proof, both quotient binades, every s);
- exhaustive in float32: all 2**23 significands of v in [1, 2) for a set of scales s: the
  three (v, s) pairs the proof leaves to a check (s = 2 - 2u, 2 - 4u, u = 2**-24), s = 1 and
  1 + 2u, and the scales max(amax, eps) / 448 of sampled bfloat16 amax values;
- sampled: the exponent-range edges (+-0, subnormal v, tiny quotients, inf, scales from
  2**-49 to 2**120, eps paths) through the E4M3 code, and the kernels in the Triton
  interpreter against the reference, bit for bit, on inputs built to sit at E4M3 midpoints
  after division (every E4M3 midpoint and value m, v = m*s and up to 3 ulps either side).

The float32 fmas are emulated exactly in numpy (`_fma32`: the product in float64 is exact,
the sum is split by TwoSum and rounded once to float32; itself checked against fractions).
The triton 3.9 interpreter's `tl.math.fma` is a true fma (`_interpreter.fma_fp32`, checked
here), so the interpreter runs the same algorithm as the GPU (where it is fma.rn.f32).
"""

from fractions import Fraction

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

import triton
import triton.language as tl

from parity import reference as ref
from parity.optimized.triton.fp8_block_quant import fp8_block_quant
from parity.optimized.triton.quant import fp8_quant, silu_mul_fp8_quant
from parity.reference.numerics import round_to_e4m3

F32 = np.float32
U = 2.0**-24


# --- exact float32 fma emulation ------------------------------------------------------------


def _rn32(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """float32 RN of the exact value hi + lo (float64, |lo| <= ulp(hi)/2, hi = RN64(hi+lo))."""
    r = hi.astype(F32)
    # hi a float32 midpoint (a float64 number) and lo != 0: the exact value is off the tie
    toward = np.where(hi > r.astype(np.float64), np.inf, -np.inf).astype(F32)
    other = np.nextafter(r, toward)
    mid = (r.astype(np.float64) + other.astype(np.float64)) / 2
    tie = (hi == mid) & (lo != 0) & (r.astype(np.float64) != hi)
    nudged = np.nextafter(hi, np.where(lo > 0, np.inf, -np.inf)).astype(F32)
    return np.where(tie, nudged, r)


def _fma32(a, b, c) -> np.ndarray:
    """float32 fma(a, b, c) rounded once (finite inputs, no float64 under/overflow)."""
    p = a.astype(np.float64) * b.astype(np.float64)  # 48 bits: exact
    c = np.broadcast_to(c, p.shape).astype(np.float64)
    s = p + c  # TwoSum: s + e == p + c exactly
    bb = s - p
    e = (p - (s - bb)) + (c - bb)
    return _rn32(s, e)


def _divfree32(v, s):
    """The kernel's algorithm on float32 arrays (v clamped to the finite range first)."""
    v = np.clip(v, -np.finfo(F32).max, np.finfo(F32).max).astype(F32)
    s = np.asarray(s, F32)
    r = (F32(1) / s).astype(F32)  # IEEE division: RN(1/s)
    q0 = (v * r).astype(F32)
    t = _fma32(q0, s, -v)
    return _fma32(t, -r, q0)


def test_fma32_emulation_rounds_once():
    rng = np.random.default_rng(1)
    a = rng.standard_normal(3000).astype(F32)
    b = rng.standard_normal(3000).astype(F32)
    c = (-(a.astype(np.float64) * b)).astype(F32)  # heavy cancellation
    c[::2] = (c[::2] * (1 + rng.standard_normal(1500).astype(F32) * F32(1e-6))).astype(F32)
    # ties after a first rounding: (1 + 2**-12)**2 - 1 = 2**-11 + 2**-24
    a[0] = b[0] = F32(1 + 2**-12)
    c[0] = F32(-1)
    got = _fma32(a, b, c)
    for i in range(3000):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        g = got[i]
        nb = np.nextafter(g, F32(-np.inf)), np.nextafter(g, F32(np.inf))
        d = abs(Fraction(float(g)) - exact)
        assert all(d <= abs(Fraction(float(n)) - exact) for n in nb), i
    assert got[0] == F32(2**-11 + 2**-24)
    # witness: rounding the product first is caught by the same known answer
    assert F32(F32(a[0] * b[0]) + c[0]) != got[0]


@triton.jit
def _fma_kernel(a_ptr, b_ptr, c_ptr, o_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    m = offs < n
    a = tl.load(a_ptr + offs, mask=m)
    b = tl.load(b_ptr + offs, mask=m)
    c = tl.load(c_ptr + offs, mask=m)
    tl.store(o_ptr + offs, tl.math.fma(a, b, c), mask=m)


def test_triton_fma_is_one_rounding():
    """The interpreter's (and the device's) tl.math.fma rounds once, like `_fma32`, including
    the sign of an exact zero (-0 * 1 + -0 is -0; +0 * -1 + +0 is +0)."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal(512).astype(F32)
    b = rng.standard_normal(512).astype(F32)
    c = (-(a.astype(np.float64) * b)).astype(F32)
    a[:3] = [1 + 2**-12, -0.0, 0.0]
    b[:3] = [1 + 2**-12, 1.0, -1.0]
    c[:3] = [-1.0, -0.0, 0.0]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t = [torch.from_numpy(x).to(dev) for x in (a, b, c)]
    out = torch.empty_like(t[0])
    _fma_kernel[(1,)](*t, out, 512, BLOCK=512)
    got = out.cpu().numpy()
    want = _fma32(a, b, c)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.signbit(got[1]) and not np.signbit(got[2])


# --- exhaustive in reduced precision (exact) --------------------------------------------------


def _rn(x: np.ndarray, p: int) -> np.ndarray:
    """x (float64) rounded to p significant bits, ties to even (exact for p <= 26 here)."""
    m, e = np.frexp(x)
    return np.ldexp(np.rint(np.ldexp(m, p)), e - p)


def _pairs(p: int):
    n = 1 << (p - 1)
    sig = np.arange(n, 2 * n, dtype=np.float64) / n  # every p-bit significand in [1, 2)
    v, s = np.meshgrid(sig, sig, indexing="ij")
    return v.ravel(), s.ravel()


def _divfree_p(v, s, p, r=None):
    # Every operation below is exact in float64 before its rounding to p bits (p <= 12:
    # products of 2p bits, sums of at most 3p + 2), and 1/s, v/s are never within 2**-53 of a
    # p-bit midpoint, so float64 division followed by _rn is a single correct rounding.
    r = _rn(1.0 / s, p) if r is None else r
    q0 = _rn(v * r, p)
    t = _rn(q0 * s - v, p)
    return _rn(q0 - t * r, p), q0


@pytest.mark.parametrize("p", range(4, 13))
def test_divfree_exhaustive_reduced_precision(p):
    v, s = _pairs(p)
    want = _rn(v / s, p)
    got, q0 = _divfree_p(v, s, p)
    assert np.array_equal(got, want)
    # the quotient-binade split of the proof: both binades are covered
    assert (v < s).any() and (v >= s).any()
    # witnesses: the uncorrected product, and a reciprocal one ulp off, are caught
    assert not np.array_equal(q0, want)
    r_bad = _rn(1.0 / s, p) + np.where(s > 1, 2.0**-p, 0.0)
    assert not np.array_equal(_divfree_p(v, s, p, r_bad)[0], want)


# --- exhaustive over v in float32 ---------------------------------------------------------------


def _bf16_scales(n: int) -> list[float]:
    """max(amax, 1e-10) / 448 in float32 for sampled bfloat16 amax (the scales fp8_quant makes),
    normalised to [1, 2) (exponents do not matter, see the proof)."""
    rng = np.random.default_rng(3)
    amax = torch.from_numpy(rng.standard_normal(n).astype(F32) * 10).abs().to(torch.bfloat16)
    s = (amax.float() / torch.full_like(amax.float(), 448.0)).numpy()
    m, _ = np.frexp(s.astype(np.float64))
    return [float(x) * 2 for x in m]


_F32_SCALES = [
    2 - 2 * U,  # significand all ones: pairs (2-4u, 2-2u), (2-6u, 2-2u) of the proof
    2 - 4 * U,  # pair (2-6u, 2-4u)
    1.0,
    1 + 2 * U,
    *_bf16_scales(2),
]


@pytest.mark.parametrize("s", _F32_SCALES)
def test_divfree_all_float32_significands(s):
    s = F32(s)
    assert 1 <= s < 2
    v = (np.arange(1 << 23, dtype=np.uint32) | 0x3F800000).view(F32)  # all of [1, 2)
    for lo in range(0, 1 << 23, 1 << 21):  # chunks: bounded memory
        vc = v[lo : lo + (1 << 21)]
        got = _divfree32(vc, s)
        want = (vc / s).astype(F32)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), s


# --- exponent-range edges, through the E4M3 code ------------------------------------------------


def _codes(x: np.ndarray) -> np.ndarray:
    q = round_to_e4m3(torch.from_numpy(x.astype(F32)))
    return q.to(torch.float8_e4m3fn).view(torch.uint8).numpy()


def test_divfree_edges_give_the_reference_codes():
    """Scales over [2**-49, RN(max / 448)] (eps >= 2**-40 and any amax), v over every exponent
    including subnormals, +-0 and +-inf: the E4M3 code of the algorithm's quotient equals that
    of the true float32 quotient (sampled). Within the finite quotient range the float32
    quotient itself must match; below 2**-11 only the code (+-0 with v's sign) is claimed."""
    rng = np.random.default_rng(4)
    exps = np.arange(-49, 119)
    s = np.ldexp(1 + rng.integers(0, 1 << 23, exps.size) / 2**23, exps).astype(F32)
    s = np.concatenate([s, np.ldexp(np.ones(3), [-49, 0, 119]).astype(F32)])
    big_s = F32(np.finfo(F32).max) / F32(448)  # the largest fp32 scale (amax inf or max)
    s = np.append(s, big_s)
    bits = rng.integers(0, 1 << 31, 4000, dtype=np.int64).astype(np.uint32)
    special = np.array([0.0, 2**-149, 2**-126, 1.0, np.finfo(F32).max, np.inf], F32)
    v_all = np.concatenate([bits.view(F32), special])
    v_all = np.concatenate([v_all, -v_all])
    n_tiny = 0
    for sc in s:
        with np.errstate(over="ignore"):
            v = v_all[np.abs(v_all) <= max(float(sc) * 448 * (1 + 2**-22), 1e-30)]
        v = np.concatenate([v, np.array([0.0, -0.0], F32)])
        if sc == big_s:  # inf only in a row whose amax counts it as the float32 maximum
            v = np.concatenate([v, np.array([np.inf, -np.inf], F32)])
        v = np.concatenate([v, (v[:200] * F32(2**-30)).astype(F32)])  # tiny quotients
        with np.errstate(all="ignore"):
            want = (v / sc).astype(F32)
            got = _divfree32(v, sc)
        assert np.array_equal(_codes(got), _codes(want)), float(sc)
        big = np.isfinite(v) & (np.abs(want) >= 2**-11)
        assert np.array_equal(got[big].view(np.uint32), want[big].view(np.uint32))
        n_tiny += int((np.abs(want) < 2**-11).sum())
    assert n_tiny > 1000  # regime II was exercised
    # the sign of zero: -0 / s is -0 (code 0x80), +0 / s is +0
    z = _divfree32(np.array([-0.0, 0.0], F32), F32(0.75))
    assert np.signbit(z[0]) and not np.signbit(z[1])


# --- the kernels in the interpreter, adversarial inputs -----------------------------------------


def _e4m3_points() -> np.ndarray:
    """Every positive E4M3 value and every midpoint between neighbours (float32, exact)."""
    vals = np.unique(
        torch.arange(0, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    )
    mids = (vals[1:] + vals[:-1]) / 2
    return np.concatenate([vals, mids, [vals[-1] * 1.03]]).astype(F32)


def _adversarial_rows(scales: np.ndarray, group: int, rng) -> np.ndarray:
    """One group a scale: the group's amax is s*448 (so the kernel derives s, or a neighbour,
    itself) and the other elements are m*s nudged by -3..3 ulps, m an E4M3 point, random sign."""
    pts = _e4m3_points()
    rows = []
    for sc in scales:
        amax = F32(F32(sc) * F32(448))
        m = rng.choice(pts, group - 1)
        v = (m * F32(sc)).astype(F32)
        steps = rng.integers(-3, 4, group - 1)
        for k in range(3):
            v = np.where(steps > k, np.nextafter(v, F32(np.inf)), v)
            v = np.where(steps < -k, np.nextafter(v, F32(-np.inf)), v)
        v = np.where(rng.random(group - 1) < 0.5, -v, v)
        rows.append(np.concatenate([[amax], np.clip(v, -amax, amax)]).astype(F32))
    return np.stack(rows)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8 if t.element_size() == 1 else torch.int32)


def _scales(n: int, rng) -> np.ndarray:
    m = 1 + rng.integers(0, 1 << 23, n) / 2**23
    e = rng.integers(-30, 60, n)
    s = np.ldexp(m, e).astype(F32)
    s[:4] = [1.0, F32(2 - 2 * U), F32(1 + 2 * U), F32(2 - 4 * U)]
    return s


DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the GPU's fma.rn.f32 where there is one


def _on_cpu(outs):
    """The kernel's outputs on the CPU, strides kept (the reference's are compared there)."""
    return tuple(t.cpu() for t in outs)


@pytest.mark.parametrize("fmt", ["fp32", "ue8m0"])
def test_fp8_quant_kernel_adversarial(fmt):
    rng = np.random.default_rng(5)
    x = _adversarial_rows(_scales(48, rng), 128, rng).reshape(6, 1024)
    x[5, :128] = 0.0  # an all-zero group: eps / 448
    x[5, 128:256] *= F32(2**-120)  # amax far below eps: eps path, subnormal v
    x[5, 256] = np.inf  # inf saturates, the rest of its group quantizes normally
    x[5, 384] = np.nan  # a NaN group
    x[5, 512] = -0.0
    xt = torch.from_numpy(x)
    # witness: a reciprocal-multiply is wrong on these inputs (they sit on E4M3 midpoints)
    rq, rs = ref.fp8_quant(xt, scale_format="fp32")
    naive = round_to_e4m3(xt.reshape(6, 8, 128) * (1 / rs).unsqueeze(-1)).reshape(6, 1024)
    assert not torch.equal(_bits(naive.to(torch.float8_e4m3fn)), _bits(rq))
    for eps in (1e-10, 2.0**-40, 2.0**-45):  # the last one keeps the true division
        for col in (False, True):
            q, s = _on_cpu(
                fp8_quant(xt.to(DEV), scale_format=fmt, eps=eps, column_major_scales=col)
            )
            rq, rs = ref.fp8_quant(xt, scale_format=fmt, eps=eps, column_major_scales=col)
            assert torch.equal(_bits(q), _bits(rq)), (eps, col)
            assert torch.equal(_bits(s), _bits(rs)), (eps, col)


@pytest.mark.parametrize("fmt", ["fp32", "ue8m0"])
def test_silu_mul_fp8_quant_kernel_adversarial(fmt):
    """Up = 1/silu(gate) would not be exact; instead gate is large (silu(g) == g in float32
    for g >= 2**5: sigmoid rounds to 1) and the adversarial values sit in up / g."""
    rng = np.random.default_rng(6)
    y = _adversarial_rows(_scales(16, rng), 128, rng).reshape(4, 512)
    g = np.full_like(y, 64.0)  # silu(64) == 64 exactly in float32
    u = (y / F32(64)).astype(F32)  # exact: a power of two
    x = torch.from_numpy(np.concatenate([g, u], axis=1))
    q, s = _on_cpu(silu_mul_fp8_quant(x.to(DEV), scale_format=fmt))
    rq, rs = ref.silu_mul_fp8_quant(x, scale_format=fmt)
    assert torch.equal(_bits(q), _bits(rq))
    assert torch.equal(_bits(s), _bits(rs))


@pytest.mark.parametrize("fmt", ["fp32", "ue8m0"])
@pytest.mark.parametrize("block", [(8, 16), (64, 512)])
def test_fp8_block_quant_kernel_adversarial(fmt, block):
    """Both kernels: the register tile (8 x 16) and the two-pass loop (64 x 512 elements, above
    MAX_TILE)."""
    rng = np.random.default_rng(7)
    br, bc = block
    n = br * bc
    rows = _adversarial_rows(_scales(4, rng), n, rng)  # 4 blocks a weight
    w = rows.reshape(2, 2, br, bc).transpose(0, 2, 1, 3).reshape(2 * br, 2 * bc)
    wt = torch.from_numpy(np.ascontiguousarray(w))
    q, s = _on_cpu(fp8_block_quant(wt.to(DEV), block_shape=block, scale_format=fmt))
    rq, rs = ref.fp8_block_quant(wt, block_shape=block, scale_format=fmt)
    assert torch.equal(_bits(q), _bits(rq))
    assert torch.equal(_bits(s), _bits(rs))
