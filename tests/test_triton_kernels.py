"""Kernel-specific tests of the Triton kernels (swiglu, fp8_quant, silu_mul_fp8_quant,
mxfp4_dequant, moe_align) and of the `_fp8` device helpers: exhaustive code tables, E4M3
midpoints, forced paths (native vs explicit FP8 rounding, ue8m0 reciprocal vs division, tile
tails), known answers. The generic properties (matches_reference, error_parity, NaN policy,
inputs_unchanged, deterministic, writes_all_outputs) run for every implementation in
tests/test_properties.py and are not repeated here.

Without a CUDA GPU the kernels run in the Triton interpreter (tests/conftest.py chooses it
before any test imports triton).
"""

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

import triton
import triton.language as tl

from parity import reference as ref
from parity.optimized.triton._caps import native_fp8_ok
from parity.optimized.triton._fp8 import (
    e4m3_code,
    e4m3_round,
    e4m3_store_value,
    e4m3_to_fp8,
    f32_to_bf16,
)
from parity.optimized.triton.moe_align import moe_align
from parity.optimized.triton.quant import (
    fp8_quant,
    mxfp4_dequant,
    silu_mul_fp8_quant,
)
from parity.optimized.triton.swiglu import swiglu
from parity.reference.numerics import round_to_e4m3
from tests.witnesses.triton_naive_fp8 import fp8_quant_naive_cast

DEV = "cuda" if torch.cuda.is_available() else "cpu"
FP8 = torch.float8_e4m3fn
FLOATS = (torch.bfloat16, torch.float16, torch.float32)
U32 = 2.0**-23  # float32 machine epsilon


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(shape, seed, dtype=torch.float32, scale=1.0):
    return (torch.randn(shape, generator=_gen(seed)) * scale).to(dtype).to(DEV)


def _bits_equal(a, b):
    """Same shape, dtype, strides and bits; every NaN counts as equal to every NaN."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    assert a.stride() == b.stride(), (a.stride(), b.stride())
    if a.dtype == FP8:
        a, b = a.float(), b.float()
    nan = a.isnan()
    assert torch.equal(nan, b.isnan())
    assert torch.equal(a[~nan], b[~nan])
    assert torch.equal(torch.signbit(a[~nan]), torch.signbit(b[~nan]))


# --- _fp8 device helpers ----------------------------------------------------------------------


@triton.jit
def _helpers_kernel(x_ptr, code_ptr, round_ptr, fp8_ptr, bf16_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m)
    tl.store(code_ptr + offs, e4m3_code(x).to(tl.uint8), mask=m)
    tl.store(round_ptr + offs, e4m3_round(x), mask=m)
    tl.store(fp8_ptr + offs, e4m3_to_fp8(x), mask=m)
    tl.store(bf16_ptr + offs, f32_to_bf16(x), mask=m)


def _run_helpers(x):
    n = x.numel()
    code = torch.empty(n, dtype=torch.uint8, device=DEV)
    rounded = torch.empty(n, dtype=torch.float32, device=DEV)
    f8 = torch.empty(n, dtype=FP8, device=DEV)
    bf = torch.empty(n, dtype=torch.bfloat16, device=DEV)
    block = 8192
    with np.errstate(over="ignore", invalid="ignore"):  # the interpreter's numpy: inf is meant
        _helpers_kernel[(triton.cdiv(n, block),)](x, code, rounded, f8, bf, n, BLOCK=block)
    return code, rounded, f8, bf


def _e4m3_probe_values():
    grid = torch.arange(256).to(torch.uint8).view(FP8).float()
    grid = grid[~grid.isnan()].unique()
    mids = (grid[1:] + grid[:-1]) / 2
    big, small = torch.tensor(1e30), torch.tensor(-1e30)
    specials = torch.tensor(
        [448.0, 449.0, 463.9, 464.0, 465.0, 1e30, float("inf"), -float("inf"), float("nan"),
         -float("nan"), 0.0, -0.0, 124.1, -124.1, 2.0**-10, 3 * 2.0**-11, 2.0**-9, 1e-45,
         -1e-45, 2.0**-126, 3.4e38]
    )  # fmt: skip
    # a float32 from every 2**16-wide slice of bit patterns (all exponents, both signs)
    sweep = (torch.arange(2**16, dtype=torch.int64) << 16) | 0x5A5A
    sweep = sweep.to(torch.int32).view(torch.float32)
    return torch.cat(
        [grid, mids, torch.nextafter(mids, big), torch.nextafter(mids, small), specials, sweep]
    ).to(DEV)


def test_e4m3_helpers_match_torch_cast():
    """e4m3_code rounds like torch's (RNE) cast of the clamped value, on every midpoint, its
    neighbours, the subnormals, 448 and above, inf, -0.0 and a sweep of all exponents."""
    x = _e4m3_probe_values()
    code, rounded, f8, _ = _run_helpers(x)
    code, rounded, f8, x = code.cpu(), rounded.cpu(), f8.cpu(), x.cpu()
    # torch's CPU cast: the CUDA one flushes float32 subnormal inputs (-1e-45 -> +0.0)
    want = x.clamp(-448, 448).to(FP8)
    nan = x.isnan()
    assert torch.equal(code[~nan], want.view(torch.uint8)[~nan])
    assert (code[nan] == 0x7F).all()  # one canonical NaN
    assert torch.equal(f8.view(torch.uint8), code)
    assert torch.equal(rounded[~nan], want.float()[~nan])
    assert torch.equal(torch.signbit(rounded[~nan]), torch.signbit(want.float()[~nan]))
    assert rounded[nan].isnan().all()


def test_e4m3_helper_known_answers():
    x = torch.tensor([124.1, 124.0, 132.0, 448.0, 1000.0, -float("inf"), 2.0**-10, 3 * 2.0**-10])
    _, rounded, _, _ = _run_helpers(x.to(DEV))
    # 124 is the midpoint of 120 and 128 (ties to even: 128); 132 ties 128/136 -> 128;
    # 2**-10 ties 0 / 2**-9 -> 0; 3 * 2**-10 ties 2**-9 / 2**-8 -> 2**-8.
    want = [128.0, 128.0, 128.0, 448.0, 448.0, -448.0, 0.0, 2.0**-8]
    assert rounded.cpu().tolist() == want


def test_f32_to_bf16_is_round_to_nearest_even():
    x = _e4m3_probe_values()
    ties = torch.tensor([1 + 2.0**-8, 1 + 3 * 2.0**-8, -(1 + 3 * 2.0**-8), 129.5, 3.4e38])
    x = torch.cat([x, ties.to(DEV)])
    *_, bf = _run_helpers(x)
    bf, x = bf.cpu(), x.cpu()
    want = x.to(torch.bfloat16)
    nan = x.isnan()
    assert torch.equal(bf.view(torch.int16)[~nan], want.view(torch.int16)[~nan])
    assert bf[nan].isnan().all()


@triton.jit
def _store_value_kernel(x_ptr, out_ptr, n, NATIVE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m)
    tl.store(out_ptr + offs, e4m3_store_value(x, NATIVE), mask=m)


def _run_store_value(x, native):
    out = torch.empty(x.numel(), dtype=FP8, device=x.device)
    with np.errstate(over="ignore", invalid="ignore"):
        _store_value_kernel[(triton.cdiv(x.numel(), 8192),)](
            x, out, x.numel(), NATIVE=native, BLOCK=8192
        )
    return out.view(torch.uint8)


def _exact_e4m3_specials():
    """Inputs whose E4M3 code needs no rounding (grid values, both zeros, float32 subnormals)
    or only the clamp (above 448, inf) or the NaN rule: what the interpreter's native cast
    gets right, so the NATIVE branch's own logic can be checked on the CPU."""
    grid = torch.arange(256).to(torch.uint8).view(FP8).float()
    grid = grid[~grid.isnan()]
    specials = torch.tensor(
        [449.0, 1e30, 3.4e38, float("inf"), -449.0, -1e30, -float("inf"), float("nan"),
         -float("nan"), 1e-45, -1e-45, 2.0**-127, -(2.0**-127)]
    )  # fmt: skip
    return torch.cat([grid, specials]).to(DEV)


def test_e4m3_store_value_explicit_is_e4m3_code():
    x = _e4m3_probe_values()
    code, *_ = _run_helpers(x)
    assert torch.equal(_run_store_value(x, False).cpu(), code.cpu())


@pytest.mark.skipif(
    DEV != "cpu" and not native_fp8_ok(DEV), reason="the native cast: sm_90 (or this CPU test)"
)
def test_e4m3_store_value_native_clamp_nan_and_signed_zero():
    """The NATIVE branch on inputs that need no rounding (the interpreter's cast is exact on
    them): saturation to +-448 (0x7E / 0xFE), NaN of either sign 0x7F, -1e-45 keeps its sign."""
    x = _exact_e4m3_specials()
    code, *_ = _run_helpers(x)
    got = _run_store_value(x, True).cpu()
    assert torch.equal(got, code.cpu())
    assert got[-6:-4].tolist() == [0x7F, 0x7F] and got[-3].item() == 0x80


@pytest.mark.skipif(not native_fp8_ok(DEV), reason="the native E4M3 cast is trusted on sm_90 only")
def test_e4m3_store_value_native_matches_explicit_on_sm90():
    """Where the wrappers use it, the native branch gives e4m3_code's bits on every midpoint,
    its neighbours, the specials and a sweep of all exponents, and on every float32 pattern
    with |x| in [2**-12, 512) (all mantissas of the exponents that round)."""
    lo, hi = 0x39800000, 0x44000000  # 2**-12 and 512 as bits
    sweep = torch.arange(lo, hi, dtype=torch.int64, device=DEV).to(torch.int32).view(torch.float32)
    for x in (_e4m3_probe_values(), sweep, -sweep):
        code, *_ = _run_helpers(x)
        assert torch.equal(_run_store_value(x, True), code)


def test_native_fp8_selection(monkeypatch):
    """False for the interpreter and for a CPU tensor; PARITY_TRITON_FP8_CAST forces either."""
    monkeypatch.delenv("PARITY_TRITON_FP8_CAST", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert native_fp8_ok(torch.device("cpu")) is False
    assert native_fp8_ok("cuda:0") is False  # the interpreter never casts natively
    monkeypatch.delenv("TRITON_INTERPRET")
    assert native_fp8_ok(torch.device("cpu")) is False
    assert native_fp8_ok("cpu") is False
    if torch.cuda.is_available():
        major = torch.cuda.get_device_capability(0)[0]
        assert native_fp8_ok(torch.device("cuda", 0)) is (major == 9)
    monkeypatch.setenv("PARITY_TRITON_FP8_CAST", "explicit")
    assert native_fp8_ok(torch.device("cpu")) is False
    monkeypatch.setenv("PARITY_TRITON_FP8_CAST", "native")
    assert native_fp8_ok(torch.device("cpu")) is True
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert native_fp8_ok(torch.device("cpu")) is True  # forced, even where it is wrong
    monkeypatch.setenv("PARITY_TRITON_FP8_CAST", "fast")
    with pytest.raises(ValueError, match="PARITY_TRITON_FP8_CAST"):
        native_fp8_ok(torch.device("cpu"))
    monkeypatch.setenv("PARITY_TRITON_FP8_CAST", "")
    assert native_fp8_ok(torch.device("cpu")) is False


@pytest.mark.skipif(not native_fp8_ok(DEV), reason="the native E4M3 cast is trusted on sm_90 only")
@pytest.mark.parametrize("fmt", ["fp32", "ue8m0"])
def test_fp8_kernels_native_and_explicit_agree_on_sm90(monkeypatch, fmt):
    x = _randn((64, 1024), seed=3, scale=5.0) * torch.logspace(-6, 6, 64, device=DEV)[:, None]
    x[1, 5], x[2, 7], x[3, 0] = float("nan"), -float("inf"), -1e-45
    x[4, 128:256] = -float("nan")
    got = {}
    for mode in ("native", "explicit"):
        monkeypatch.setenv("PARITY_TRITON_FP8_CAST", mode)
        got[mode] = (fp8_quant(x, scale_format=fmt), silu_mul_fp8_quant(x, scale_format=fmt))
    for (qa, sa), (qb, sb) in zip(got["native"], got["explicit"]):
        assert torch.equal(qa.view(torch.uint8), qb.view(torch.uint8))
        assert torch.equal(sa.view(torch.int32), sb.view(torch.int32))


# --- swiglu -----------------------------------------------------------------------------------


def _swiglu_close(y, x, **kw):
    """The OpSpec's tolerance: 1 ulp of the output dtype + 16 u32 |y| against float64."""
    with ref.precision("float64", round_output=False):
        want = ref.swiglu(x, **kw)
    assert y.shape == want.shape and y.dtype == x.dtype and y.is_contiguous()
    y64 = y.double()
    nan = want.isnan()
    assert torch.equal(y64.isnan(), nan)
    inf = torch.isinf(want.to(x.dtype).double())
    want = torch.where(inf, want.to(x.dtype).double(), want)
    info = torch.finfo(x.dtype)
    ulp = torch.maximum(want.abs(), torch.tensor(info.tiny, dtype=torch.float64)) * info.eps
    tol = ulp + 16 * U32 * want.abs()
    ok = (y64 == want) | ((y64 - want).abs() <= tol)
    assert ok[~nan].all(), (y64[~nan][~ok[~nan]][:5], want[~nan][~ok[~nan]][:5])


def test_fast_sigmoid_reaches_both_kernels_and_their_plans(monkeypatch):
    """`_kernels_swiglu.SIGMOID["fast"]` (div.full.f32 for the sigmoid's reciprocal) becomes the
    FAST constexpr of swiglu's and silu_mul_fp8_quant's launches, and a plan made without it is
    not reused with it (their keys hold it). The interpreter divides exactly either way (the
    outputs are equal there); on a GPU the two stay within 4 float32 ulps (div.full: 2)."""
    import parity.optimized.triton.quant as q
    import parity.optimized.triton.swiglu as sw
    from parity.optimized.triton import _kernels_swiglu as ksw

    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(0)).to(DEV)
    exact = swiglu(x)
    codes = silu_mul_fp8_quant(x)[0].view(torch.uint8)
    monkeypatch.setitem(ksw.SIGMOID, "fast", True)
    fast = swiglu(x)
    torch.testing.assert_close(fast, exact, rtol=2.0**-21, atol=1e-37)
    if DEV == "cpu":
        assert torch.equal(fast, exact)
        assert torch.equal(silu_mul_fp8_quant(x)[0].view(torch.uint8), codes)
    else:
        silu_mul_fp8_quant(x)
    consts = [p[1][0].consts for p in sw._PLANS.values() if p[1] is not None]
    assert {c["FAST"] for c in consts} == {False, True}
    consts = [p[-1][0].consts for p in q._PLANS.values() if p[-1] is not None]
    assert {c.get("FAST") for c in consts} >= {False, True}


@pytest.mark.parametrize(
    "shape", [(1, 2), (3, 2, 2 * 65), (2, 3, 4, 2 * 7), (2 * 5,), (17, 2 * 1025), (1, 2 * 2049)]
)
def test_swiglu_leading_dims_and_tails(shape):
    for layout in ("concat", "interleaved"):
        x = _randn(shape, seed=len(shape), scale=3.0)
        _swiglu_close(swiglu(x, limit=7.0, layout=layout), x, limit=7.0, layout=layout)


def test_swiglu_wide_range_float32():
    """The accurate exp: every gate in [-87, 88] within the float32 tolerance (a plain
    ex2.approx(z * log2e) loses ~|z|/2 ulps there)."""
    # alpha != 1: float32 rounds z = alpha * gate by up to |z| 2**-24, which moves exp(z) by
    # |z|/2 ulps in any float32 evaluation (torch's included): keep |z| small there.
    for alpha, lo, hi in [(1.0, -87.0, 88.0), (1.702, -10.0, 10.0)]:
        g = torch.linspace(lo, hi, 20001)
        x = torch.stack([g, torch.full_like(g, 1.5)], -1).reshape(1, -1).to(DEV)
        y = swiglu(x, layout="interleaved", alpha=alpha)
        _swiglu_close(y, x, layout="interleaved", alpha=alpha)


def test_swiglu_pre_and_post_differ_in_float32():
    x = torch.tensor([[12.0, 15.0, 1.0, 1.0]], device=DEV)  # gates above limit=10
    pre = swiglu(x, limit=10.0, clamp_mode="pre")
    post = swiglu(x, limit=10.0, clamp_mode="post")
    assert (pre != post).all()
    _swiglu_close(pre, x, limit=10.0, clamp_mode="pre")
    _bits_equal(post.cpu(), torch.full_like(post.cpu(), 10.0))  # act clamped to exactly 10


def test_swiglu_rounds_bf16_to_nearest_even():
    # gate 128: sigmoid is exactly 1.0 in float32, so y = 128 * (u + beta) exactly: 129.5 is a
    # bfloat16 tie (129 / 130): ties-to-even gives 130, truncation 129.
    x = torch.tensor([[128.0, 1.0]], dtype=torch.bfloat16, device=DEV)
    y = swiglu(x, beta=3 * 2.0**-8)
    assert y.item() == 130.0
    assert ref.swiglu(x.cpu(), beta=3 * 2.0**-8).item() == 130.0


def test_swiglu_strided_input():
    """The wrapper reads a strided x through a contiguous copy (the kernel takes flat rows)."""
    base = _randn((6, 40), seed=3, scale=3.0)
    x = base[:, ::2]  # [6, 20], stride 2
    _swiglu_close(swiglu(x, limit=10.0), x, limit=10.0)


# --- fp8_quant --------------------------------------------------------------------------------


def _e4m3_midpoints():
    grid = torch.arange(128).to(torch.uint8).view(FP8).float()
    grid = grid[~grid.isnan()].unique()
    return (grid[1:] + grid[:-1]) / 2


@pytest.mark.parametrize("scale_format", ["fp32", "ue8m0"])
def test_fp8_quant_midpoints_ties_to_even(scale_format):
    """A group whose amax is 448 has s = 1 exactly (fp32 and ue8m0): x / s is x, so every
    E4M3 midpoint must round to its even neighbour."""
    mids = _e4m3_midpoints()
    row = torch.zeros(256)
    row[: mids.numel()] = mids
    row[mids.numel()] = 448.0
    row[128:] = -row[:128]
    x = row.reshape(2, 128).to(DEV)
    q, s = fp8_quant(x, scale_format=scale_format)
    assert s.cpu().tolist() == [[1.0], [1.0]]
    assert torch.equal(q.float().cpu(), round_to_e4m3(x.cpu()))
    _bits_equal(q.cpu(), ref.fp8_quant(x.cpu(), scale_format=scale_format)[0])


def test_fp8_quant_saturation_inf_and_zero_groups():
    x = torch.zeros(4, 64)
    x[0, :3] = torch.tensor([448.0, 124.1, -447.9])
    x[1, 0], x[1, 1], x[1, 2] = float("inf"), 1.0, -float("inf")  # amax is the float32 max
    x[2, :2] = torch.tensor([1e30, -3e38])
    x = x.to(DEV)  # row 3: all zero
    for fmt in ("fp32", "ue8m0"):
        q, s = fp8_quant(x, group_size=32, scale_format=fmt)
        rq, rs = ref.fp8_quant(x.cpu(), group_size=32, scale_format=fmt)
        _bits_equal(q.cpu(), rq)
        _bits_equal(s.cpu(), rs)
        assert s[0, 0].item() == 1.0 and q.float()[0, 1].item() == 128.0  # 124.1 -> 128
        assert q.float()[1, 0].item() == 448.0 and q.float()[1, 2].item() == -448.0
        assert (q.float()[3] == 0).all()
    _, s = fp8_quant(x, group_size=32)
    assert s[3, 0].item() == torch.tensor(1e-10).div(448.0).item()  # all-zero: eps / 448


def test_fp8_quant_ue8m0_scales_are_exact_powers_of_two():
    x = _randn((9, 256), seed=5) * torch.logspace(-30, 30, 9, device=DEV)[:, None]
    x[0, :128] = 448.0 * 2.0**-3  # amax / 448 is already a power of two: kept
    q, s = fp8_quant(x, scale_format="ue8m0")
    rq, rs = ref.fp8_quant(x.cpu(), scale_format="ue8m0")
    _bits_equal(s.cpu(), rs)
    _bits_equal(q.cpu(), rq)
    assert ((s.view(torch.int32) & 0x7FFFFF) == 0).all()
    assert s[0, 0].item() == 2.0**-3
    # a tiny eps gives a subnormal scale: still rounded up to a power of two exactly
    z = torch.zeros(1, 128, device=DEV)
    for eps in (1e-40, 3e-42):
        _, s = fp8_quant(z, scale_format="ue8m0", eps=eps)
        _bits_equal(s.cpu(), ref.fp8_quant(z.cpu(), scale_format="ue8m0", eps=eps)[1])


def test_fp8_quant_ue8m0_reciprocal_and_division_paths_agree_with_reference():
    """ue8m0 multiplies by the exact reciprocal when eps >= RECIP_MIN_EPS, else divides: both
    bit-exact, on tiny groups (scale eps / 448), float32 subnormal inputs and huge groups."""
    x = _randn((6, 128), seed=11) * torch.logspace(-40, 37, 6, device=DEV)[:, None]
    x[0, :4] = torch.tensor([1e-45, -1e-45, 2.0**-127, -(2.0**-130)])
    x[5, 0] = float("inf")
    for eps in (1e-10, 1e-20, 1e-30, 1e-44):
        q, s = fp8_quant(x, scale_format="ue8m0", eps=eps)
        rq, rs = ref.fp8_quant(x.cpu(), scale_format="ue8m0", eps=eps)
        _bits_equal(q.cpu(), rq)
        _bits_equal(s.cpu(), rs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cast trap is the interpreter's")
def test_naive_cast_witness_is_wrong_under_the_interpreter():
    """The native x.to(tl.float8e4nv) cast (interpreter) drops the mantissa carry: 124.1 (with
    s = 1) comes out 64, not 128. The real kernel gets it right on the same input."""
    x = torch.zeros(1, 128)
    x[0, 0], x[0, 1] = 448.0, 124.1
    want_q, want_s = ref.fp8_quant(x)
    nq, ns = fp8_quant_naive_cast(x)
    assert torch.equal(ns, want_s)
    assert nq.float()[0, 1].item() != 128.0
    assert not torch.equal(nq.float(), want_q.float())
    q, _ = fp8_quant(x)
    _bits_equal(q, want_q)


# --- silu_mul_fp8_quant -----------------------------------------------------------------------


def _intermediate_matters():
    """bf16 (gate, up) pairs with gate >= 24 (sigmoid is 1.0 in float32, so the float32
    intermediate is gate * up exactly) where quantizing the float32 product and its bf16
    rounding give different codes, with s = 1 (a 448 in the group)."""
    g = torch.arange(24, 200, dtype=torch.float32).to(torch.bfloat16).float()
    u = torch.linspace(1.01, 1.99, 50).to(torch.bfloat16).float()
    gg, uu = torch.meshgrid(g, u, indexing="ij")
    prod = (gg * uu).flatten()
    keep = (prod < 448) & (round_to_e4m3(prod) != round_to_e4m3(prod.to(torch.bfloat16).float()))
    return gg.flatten()[keep], uu.flatten()[keep]


def test_silu_mul_fp8_quant_keeps_the_float32_intermediate():
    g, u = _intermediate_matters()
    n = 128
    assert g.numel() > 10
    gate, up = torch.zeros(n), torch.zeros(n)
    gate[: min(n - 1, g.numel())] = g[: n - 1]
    up[: min(n - 1, u.numel())] = u[: n - 1]
    gate[-1], up[-1] = 448.0, 1.0  # amax 448: s = 1
    x = torch.cat([gate, up]).reshape(1, 2 * n).to(torch.bfloat16).to(DEV)
    q, s = silu_mul_fp8_quant(x)
    assert s.item() == 1.0
    _bits_equal(q.cpu(), ref.silu_mul_fp8_quant(x.cpu())[0])
    fp32_path = round_to_e4m3(gate.bfloat16().float() * up.bfloat16().float())
    bf16_path = round_to_e4m3((gate.bfloat16().float() * up.bfloat16().float()).bfloat16().float())
    assert torch.equal(q.float().cpu()[0], fp32_path)
    assert not torch.equal(q.float().cpu()[0], bf16_path)


def _silu_codes_close(q, s, x, **kw):
    """Equal to the reference, or (where the float32 SwiGLU differs from torch's by an ulp)
    dequantizing within one E4M3 step and the scale within 4 float32 ulps."""
    rq, rs = ref.silu_mul_fp8_quant(x.cpu(), **kw)
    assert q.shape == rq.shape and s.shape == rs.shape and s.stride() == rs.stride()
    q, s = q.cpu(), s.cpu()
    assert torch.equal(s.isnan(), rs.isnan())
    fin = ~rs.isnan()
    assert ((s[fin] - rs[fin]).abs() <= 4 * U32 * rs[fin].abs()).all()
    a, b = q.float(), rq.float()
    assert torch.equal(a.isnan(), b.isnan())
    both = ~a.isnan()
    step = torch.maximum(b.abs() / 8, torch.tensor(2.0**-9))
    assert ((a - b).abs()[both] <= step[both]).all()
    return (a[both] == b[both]).float().mean().item()


def test_silu_mul_fp8_quant_nan_and_zero_groups():
    """The kernel's own eps (fp8_quant's default, 1e-10): an all-zero group gets s = eps / 448;
    a NaN gate poisons its group only."""
    x = torch.zeros(2, 512, device=DEV)
    x[0, 5] = float("nan")
    x[1, 128:256] = 3.0
    q, s = silu_mul_fp8_quant(x)
    assert s[0, 0].isnan() and not s[0, 1].isnan() and not s[1].isnan().any()
    assert s[0, 1].item() == torch.tensor(1e-10).div(448.0).item()
    _silu_codes_close(q, s, x)


# --- mxfp4_dequant ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [False, True], ids=["shipped", "mxfp4_dequant_bf16"])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_mxfp4_dequant_every_code_and_scale(dtype, variant, monkeypatch):
    # every byte (both nibbles) under the extreme and ordinary scale codes; the
    # mxfp4_dequant_bf16 variant (8192-element programs; bfloat16 arithmetic on a GPU) too
    from parity.optimized.triton import _kernels_quant as kq

    monkeypatch.setitem(kq.DEQUANT, "bf16", variant)
    codes = torch.tensor([0, 1, 2, 100, 127, 128, 200, 253, 254, 255], dtype=torch.uint8)
    packed = torch.arange(256, dtype=torch.int32).to(torch.uint8).repeat(codes.numel(), 1)
    scales = codes[:, None].repeat(1, 256 // 16)
    y = mxfp4_dequant(packed.to(DEV), scales.to(DEV), dtype=dtype)
    _bits_equal(y.cpu(), ref.mxfp4_dequant(packed, scales, dtype=dtype))
    assert y[-1].isnan().all()  # scale code 255
    assert torch.signbit(y[4, 16]).item() and y[4, 16].item() == 0  # byte 8, low nibble: -0.0


# --- moe_align --------------------------------------------------------------------------------


def _align_case(t, k, e, seed, skip=0.1):
    g = _gen(seed)
    ids = torch.randint(0, e, (t, k), dtype=torch.int32, generator=g)
    ids[torch.rand((t, k), generator=g) < skip] = -1
    return ids.to(DEV)


@pytest.mark.parametrize(
    "t,k,e,bs",
    [(1, 1, 1, 1), (5, 2, 8, 4), (33, 6, 16, 16), (300, 8, 64, 16), (100, 4, 3, 128),
     (40, 8, 1500, 8), (7, 3, 5, 1), (129, 1, 2, 64), (16, 8, 256, 64)],
)  # fmt: skip
def test_moe_align_matches_reference(t, k, e, bs):
    ids = _align_case(t, k, e, seed=t * k + e)
    before = ids.clone()
    out = moe_align(ids, num_experts=e, block_size=bs)
    want = ref.moe_align(ids.cpu(), num_experts=e, block_size=bs)
    # the Triton sort is stable, so even the unspecified tails equal the reference's
    for a, b in zip(out, want):
        assert a.dtype == torch.int32 and a.device == ids.device
        assert torch.equal(a.cpu(), b)
    again = moe_align(ids, num_experts=e, block_size=bs)
    assert all(torch.equal(a, b) for a, b in zip(out, again))
    assert torch.equal(ids, before)


def test_moe_align_known_answer_and_empty():
    ids = torch.tensor([[2, 0], [2, -1], [0, 2]], dtype=torch.int32, device=DEV)
    s, e, n = moe_align(ids, num_experts=4, block_size=2)
    assert n.tolist() == [6]
    assert s[:6].tolist() == [1, 4, 0, 2, 5, 6]  # expert 0: 1, 4; expert 2: 0, 2, 5 + pad 6
    assert e[:3].tolist() == [0, 2, 2]
    assert s.numel() == 6 + 4 * 1 and e.numel() == s.numel() // 2 + 1
    for t, k in [(0, 4), (3, 0)]:
        ids = torch.zeros(t, k, dtype=torch.int32, device=DEV)
        out = moe_align(ids, num_experts=8, block_size=16)
        want = ref.moe_align(ids.cpu(), num_experts=8, block_size=16)
        for a, b in zip(out, want):
            assert a.shape == b.shape and a.dtype == b.dtype
        assert out[2].item() == 0
    all_skipped = torch.full((4, 2), -1, dtype=torch.int32, device=DEV)
    s, e, n = moe_align(all_skipped, num_experts=3, block_size=4)
    assert n.item() == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cast trap is the interpreter's")
def test_property_suite_catches_the_naive_cast_under_the_interpreter():
    """The fp8_quant matches_reference property, as the suite runs it, fails the naive cast."""
    from parity.catalog import get_spec
    from parity.properties.runner import run_property

    stats = run_property(
        get_spec("fp8_quant"),
        "matches_reference",
        fp8_quant_naive_cast,
        impl_name="tests.witnesses.triton_naive_fp8:fp8_quant_naive_cast",
        device="cpu",
        max_examples=200,
        shrink=False,
    )
    assert stats.failure is not None, f"not caught in {stats.run} cases"
    assert stats.run > 0


def test_mxfp4_dequant_bf16_variant_is_a_gpu_path(monkeypatch):
    """The mxfp4_dequant_bf16 variant computes in bfloat16 only for a bfloat16 output on a GPU:
    never under the interpreter (its bfloat16 arithmetic works on raw bit patterns), never for
    another dtype or a CPU tensor, never unless PARITY_TRITON_VARIANTS names it."""
    from parity.optimized.triton import _kernels_quant as kq

    monkeypatch.setitem(kq.DEQUANT, "bf16", True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert kq.dequant_bf16_mul(torch.bfloat16, "cuda") == 1
    assert kq.dequant_bf16_mul(torch.float32, "cuda") == 0
    assert kq.dequant_bf16_mul(torch.bfloat16, "cpu") == 0
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kq.dequant_bf16_mul(torch.bfloat16, "cuda") == 0
    monkeypatch.setitem(kq.DEQUANT, "bf16", False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert kq.dequant_bf16_mul(torch.bfloat16, "cuda") == 0
    assert kq._dequant_blocks(448)[:2] == (1, 64)  # 2048 elements a program
    monkeypatch.setitem(kq.DEQUANT, "bf16", True)
    assert kq._dequant_blocks(448)[:2] == (4, 64)  # 8192
