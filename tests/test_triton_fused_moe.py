"""The Triton fused MoE against the reference, at tiny shapes (the Triton interpreter on a CPU).

Two comparisons per case: against `parity.reference.fused_moe` with a tolerance covering the
roundings the contract allows (GEMM1 output, activation, each expert's output in x.dtype), and
against `vllm_chain`, a float64 emulation that rounds at exactly those points, with a tolerance
of a few output ulps: a dropped K block, a wrong scale or a misrouted row fails both. The cases
force the kernel's paths (tile configs with masked tails, both mxfp4 variants, the dequantize-
first threshold) and check its config loading; the generic properties (error_parity, T = 0,
NaN policy, inputs_unchanged, deterministic) run for every implementation in
tests/test_properties.py and are not repeated here.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

import triton
import triton.language as tl

from parity.optimized.triton import _kernels_fused_moe as kern
from parity.optimized.triton import fused_moe as mod
from parity.optimized.triton._moe_configs import (
    config_file_name,
    default_config,
    get_config,
    override_config,
)
from parity.optimized.triton.moe_align import align_torch
from parity.reference import fused_moe as reference
from parity.reference.quant import (
    _fp8_quant_f32,
    fp8_block_dequant,
    fp8_block_quant,
    fp8_quant,
    mxfp4_dequant,
    mxfp4_quant,
)
from parity.reference.routing import moe_align
from parity.reference.swiglu import swiglu_math

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
kernel = mod.fused_moe

GPT_OSS = dict(swiglu_limit=7.0, swiglu_alpha=1.702, swiglu_beta=1.0, layout="interleaved")
DSV4 = dict(swiglu_limit=10.0)
# small tiles so that every dimension has several blocks and a tail
SMALL = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 2}
# the sorted path with 64-deep K tiles, no dequantize-first: the decode tests' mxfp4 baseline
SORTED_MX = dict(SMALL, BLOCK_SIZE_K=64, MX_DEQUANT_MIN_ROWS=0)


@pytest.fixture(params=["decode", "sorted"])
def path(request, monkeypatch):
    """Both paths for the tests that run the default config: the decode path (few tokens, the
    default) and the sorted path (PARITY_MOE_DECODE=0)."""
    if request.param == "sorted":
        monkeypatch.setenv("PARITY_MOE_DECODE", "0")
    return request.param


def make(t, h, n, e, k, dtype, seed=0, minus_one=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g).to(dtype)
    w13 = torch.randn(e, 2 * n, h, generator=g) / h**0.5 * 2
    w2 = torch.randn(e, h, n, generator=g) / n**0.5
    weights = torch.rand(t, k, generator=g) + 0.1
    ids = torch.zeros(t, k, dtype=torch.int32)
    for i in range(t):
        ids[i] = torch.randperm(e, generator=g)[:k].to(torch.int32)
    if minus_one and t >= 3:
        ids[0, 0] = -1  # one skipped slot
        ids[2, :] = -1  # a token with no expert on this rank
        weights[2, :] = float("nan")  # ignored: every slot of the token is skipped
    return x, w13, w2, weights, ids


def quantize(w13, w2, quant, dtype, block_shape=(128, 128)):
    """Weights in the mode's format, plus the float64 values the format represents."""
    if quant == "none":
        a, b = w13.to(dtype), w2.to(dtype)
        return a, b, None, None, a.double(), b.double()
    if quant == "fp8_block":
        q13, s13 = fp8_block_quant(w13, block_shape=block_shape)
        q2, s2 = fp8_block_quant(w2, block_shape=block_shape)
        d13 = fp8_block_dequant(q13, s13, block_shape).double()
        d2 = fp8_block_dequant(q2, s2, block_shape).double()
        return q13, q2, s13, s2, d13, d2
    p13, s13 = mxfp4_quant(w13)
    p2, s2 = mxfp4_quant(w2)
    d13 = mxfp4_dequant(p13, s13, dtype=torch.float32).double()
    d2 = mxfp4_dequant(p2, s2, dtype=torch.float32).double()
    return p13, p2, s13, s2, d13, d2


def _fake_fp8(v, group):
    q, s = _fp8_quant_f32(v.to(torch.float32), group, "fp32", 1e-10)
    return (q.double() * s.double().repeat_interleave(group, dim=-1)).to(torch.float64)


def vllm_chain(x, d13, d2, weights, ids, *, quant, opts, on_input=False, group=128):
    """Float64 math rounded where the kernel rounds: GEMM1 output and activation (or its FP8
    codes) and each expert's weighted output to x.dtype; the k-sum in float32."""
    dt = x.dtype
    t, k = ids.shape
    xin = x.double()
    if on_input:
        xin = (x.float() * torch.where(ids >= 0, weights, 0.0)).double()
    if quant == "fp8_block":
        xin = _fake_fp8(xin, group)
    sw = dict(
        limit=opts.get("swiglu_limit"),
        alpha=opts.get("swiglu_alpha", 1.0),
        beta=opts.get("swiglu_beta", 0.0),
        layout=opts.get("layout", "concat"),
        clamp_mode=opts.get("swiglu_clamp_mode", "pre"),
    )
    out = torch.zeros(t, x.shape[1], dtype=torch.float32)
    for ti in range(t):
        for j in range(k):
            e = int(ids[ti, j])
            if e < 0:
                continue
            h1 = (xin[ti] @ d13[e].T).to(dt)
            act = swiglu_math(h1, dtype=torch.float32, **sw)
            act = _fake_fp8(act, group) if quant == "fp8_block" else act.to(dt).double()
            y = act.double() @ d2[e].T
            if not on_input:
                y = y * float(weights[ti, j])
            out[ti] += y.to(dt).float()
    return out.to(dt)


def ulp(dtype):
    return torch.finfo(dtype).eps


def check(
    out,
    x,
    w13q,
    w2q,
    weights,
    ids,
    *,
    quant,
    s13,
    s2,
    d13,
    d2,
    opts,
    on_input=False,
    block_shape=(128, 128),
):
    dt = x.dtype
    assert out.shape == x.shape and out.dtype == dt and out.device.type == DEVICE
    out = out.cpu().float()
    kw = dict(
        quant=quant,
        w13_scale=s13,
        w2_scale=s2,
        apply_router_weight_on_input=on_input,
        block_shape=block_shape,
        **opts,
    )
    ref = reference(x, w13q, w2q, weights, ids, **kw).float()
    chain = vllm_chain(
        x, d13, d2, weights, ids, quant=quant, opts=opts, on_input=on_input, group=block_shape[1]
    ).float()
    scale = max(ref.abs().max().item(), 1e-3)
    # emulation of the same roundings: a few output ulps (tie flips of intermediate roundings)
    torch.testing.assert_close(out, chain, rtol=4 * ulp(dt), atol=4 * ulp(dt) * scale)
    # the reference (float32 intermediates): the allowed roundings, each up to half an ulp and
    # amplified by at most the next GEMM's norm; FP8 code flips of the activation on top
    loose = 24 if quant == "fp8_block" else 8
    torch.testing.assert_close(out, ref, rtol=loose * ulp(dt), atol=loose * ulp(dt) * scale)
    # skipped tokens: exact zero rows
    dead = (ids < 0).all(1)
    assert (out[dead] == 0).all()


def run_case(
    t,
    h,
    n,
    e,
    k,
    dtype,
    quant,
    opts,
    *,
    cfg=None,
    on_input=False,
    seed=0,
    block_shape=(128, 128),
    minus_one=True,
):
    x, w13, w2, weights, ids = make(t, h, n, e, k, dtype, seed=seed, minus_one=minus_one)
    if on_input:
        weights = torch.rand(t, k, generator=torch.Generator().manual_seed(seed + 1)) + 0.5
    w13q, w2q, s13, s2, d13, d2 = quantize(w13, w2, quant, dtype, block_shape)
    dev = [v.to(DEVICE) if v is not None else None for v in (x, w13q, w2q, weights, ids, s13, s2)]
    with override_config(cfg):
        out = kernel(
            *dev[:5],
            quant=quant,
            w13_scale=dev[5],
            w2_scale=dev[6],
            apply_router_weight_on_input=on_input,
            block_shape=block_shape,
            **opts,
        )
    check(
        out,
        x,
        w13q,
        w2q,
        weights,
        ids,
        quant=quant,
        s13=s13,
        s2=s2,
        d13=d13,
        d2=d2,
        opts=opts,
        on_input=on_input,
        block_shape=block_shape,
    )
    return out


# --- the three modes ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_none_tails_and_skipped(dtype):
    # H = 80 and 2N = 96 are not multiples of the 32-wide tiles; 8 tokens * 2 slots over 5
    # experts give partial M blocks
    run_case(8, 80, 48, 5, 2, dtype, "none", DSV4, cfg=SMALL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_block_dsv4(dtype, path):
    run_case(6, 256, 128, 4, 3, dtype, "fp8_block", DSV4)


def test_fp8_block_partial_weight_blocks():
    # block_shape (48, 32): 2N = 128 and H = 96 rows give partial 48-row weight blocks; K tiles
    # of 32 = one scale group each; N tiles of 32 straddle the 48-row scale blocks
    run_case(7, 96, 64, 3, 2, torch.bfloat16, "fp8_block", {}, cfg=SMALL, block_shape=(48, 32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mxfp4_gpt_oss(dtype, path):
    run_case(6, 64, 96, 4, 2, dtype, "mxfp4", GPT_OSS)


@pytest.mark.parametrize("after", [1, 0], ids=["scale-after-dot", "dequant-tile"])
def test_mxfp4_tails_small_tiles(after):
    # K = H = 96 with 64-wide K tiles: the last tile is half masked (whole MX blocks); both
    # kernel variants (per-block scale after the dot, dequantized bf16 tile)
    cfg = dict(SMALL, BLOCK_SIZE_K=64, MX_SCALE_AFTER_DOT=after)
    run_case(5, 96, 32, 3, 2, torch.bfloat16, "mxfp4", DSV4, cfg=cfg)


# --- mxfp4: dequantize first vs in the GEMM -------------------------------------------------------


def _bits(v):
    """Bit patterns (int16 for 16-bit floats), every NaN as one pattern."""
    b = v.view(torch.int16) if v.element_size() == 2 else v.view(torch.int32)
    return torch.where(v.isnan(), -1, b)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # scale 254 -> inf
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 255: 0 * inf
@pytest.mark.parametrize("variant", [False, True], ids=["shipped", "mxfp4_dequant_bf16"])
def test_mxfp4_dequant_kernel_every_code_and_scale(variant, monkeypatch):
    # row r has scale code r in every MX block (0: 2**-127 subnormal, 254: overflow to inf for
    # values above 1.99, 255: NaN); its 128 bytes hold every byte value, shifted per row. The
    # mxfp4_dequant_bf16 variant: 8192-element programs, and on a GPU the bfloat16 arithmetic
    from parity.optimized.triton import _kernels_quant as kq

    monkeypatch.setitem(kq.DEQUANT, "bf16", variant)
    assert kq.dequant_bf16_mul(torch.bfloat16, DEVICE) == int(variant and DEVICE == "cuda")
    rows = torch.arange(256)
    packed = ((torch.arange(128)[None, :] * 2 + rows[:, None]) % 256).to(torch.uint8)
    packed = torch.cat([packed, packed.flip(1)], 1).reshape(2, 128, 256)  # [E=2, R=128, K/2]
    scales = rows.to(torch.uint8)[:, None].expand(256, 16).reshape(2, 128, 16).contiguous()
    want = mxfp4_dequant(packed, scales, dtype=torch.bfloat16)
    got = kern.dequant_mxfp4(packed.to(DEVICE), scales.to(DEVICE), torch.bfloat16).cpu()
    assert got.shape == (2, 128, 512) and got.dtype == torch.bfloat16
    assert torch.equal(_bits(got), _bits(want))
    # non-contiguous inputs (an expert slice of a larger tensor)
    got2 = kern.dequant_mxfp4(packed[:, ::2].to(DEVICE), scales[:, ::2].to(DEVICE), torch.bfloat16)
    got2 = got2.cpu()
    assert torch.equal(_bits(got2), _bits(want[:, ::2]))
    with pytest.raises(ValueError):
        kern.dequant_mxfp4(packed, scales, torch.float16)


def _mx_inputs(t, h, n, e, k, seed, exact):
    """mxfp4 inputs built from codes. exact: integer x, scales 2**-1..2**1 and one nonzero w2
    element per row, so that every float32 sum of both GEMMs is exact and any summation order
    gives the same bits."""
    g = torch.Generator().manual_seed(seed)
    x, _, _, weights, ids = make(t, h, n, e, k, torch.bfloat16, seed=seed)
    if exact:
        x = torch.randint(-2, 3, (t, h), generator=g).to(torch.bfloat16)

    def codes(shape, one_per_row=False):
        c = torch.randint(0, 16, shape, generator=g)
        if one_per_row:
            keep = torch.arange(shape[-1])[None, :] == torch.arange(shape[-2])[:, None] % shape[-1]
            c = torch.where(keep, c, 0)
        packed = (c[..., 0::2] | (c[..., 1::2] << 4)).to(torch.uint8)
        lo, hi = (126, 129) if exact else (118, 131)
        s = torch.randint(lo, hi, (*shape[:-1], shape[-1] // 32), generator=g).to(torch.uint8)
        return packed, s

    p13, s13 = codes((e, 2 * n, h))
    p2, s2 = codes((e, h, n), one_per_row=exact)
    d13 = mxfp4_dequant(p13, s13, dtype=torch.float32).double()
    d2 = mxfp4_dequant(p2, s2, dtype=torch.float32).double()
    return x, p13, p2, weights, ids, s13, s2, d13, d2


def _mx_run(inputs, cfg, opts):
    x, p13, p2, weights, ids, s13, s2, _, _ = inputs
    dev = [v.to(DEVICE) for v in (x, p13, p2, weights, ids, s13, s2)]
    with override_config(cfg):
        return kernel(*dev[:5], quant="mxfp4", w13_scale=dev[5], w2_scale=dev[6], **opts)


def _same_sums(out, base, exact):
    """Two paths that add the same exact products in another order: bitwise equal where every
    float32 sum is exact (`_mx_inputs(exact=True)`), close elsewhere."""
    if exact:
        assert torch.equal(_bits(out), _bits(base))
    else:
        torch.testing.assert_close(out.float(), base.float(), rtol=0.02, atol=0.02)


def _mx_like_sorted(t, seed, cfg):
    """The decode config `cfg` against the sorted path on mxfp4 inputs of T `t` (H 96, N 32, 3
    experts, top-2), built exact and then random from `seed`: each checked against the
    reference and `_same_sums` with the sorted path. Returns the random inputs."""
    for exact in (True, False):
        inputs = _mx_inputs(t, 96, 32, 3, 2, seed=seed, exact=exact)
        base = _mx_run(inputs, SORTED_MX, DSV4)
        out = _mx_run(inputs, cfg, DSV4)
        _mx_check(out, inputs, DSV4)
        _same_sums(out, base, exact)
    return inputs


def _mx_check(out, inputs, opts):
    x, p13, p2, weights, ids, s13, s2, d13, d2 = inputs
    check(out, x, p13, p2, weights, ids, quant="mxfp4", s13=s13, s2=s2, d13=d13, d2=d2, opts=opts)


@pytest.fixture
def dequant_calls(monkeypatch):
    calls = []
    real = kern.dequant_mxfp4

    def spy(w, scale, dtype):
        calls.append(dtype)
        return real(w, scale, dtype)

    monkeypatch.setattr(kern, "dequant_mxfp4", spy)
    return calls


@pytest.mark.parametrize("exact", [True, False], ids=["exact-sums", "random"])
def test_mxfp4_dequant_first_matches_in_gemm(exact, dequant_calls):
    # H = 96: the last 64-wide K tile of the in-GEMM path is half masked; 2N = 64, N = 32
    inputs = _mx_inputs(7, 96, 32, 3, 2, seed=4, exact=exact)
    base = dict(SMALL, BLOCK_SIZE_K=64)
    first = _mx_run(inputs, dict(base, MX_DEQUANT_MIN_ROWS=1), DSV4)
    assert dequant_calls == [torch.bfloat16, torch.bfloat16]
    outs = [first]
    for after in (1, 0):
        cfg = dict(base, MX_DEQUANT_MIN_ROWS=0, MX_SCALE_AFTER_DOT=after)
        outs.append(_mx_run(inputs, cfg, DSV4))
    assert len(dequant_calls) == 2  # the in-GEMM runs dequantized nothing
    for out in outs:
        _mx_check(out, inputs, DSV4)
    assert first.float().abs().sum() > 0
    if exact:  # every sum exact: the paths differ only in summation order, so bitwise equal
        for out in outs[1:]:
            assert torch.equal(_bits(out), _bits(first))
    else:  # float32 summation order only
        for out in outs[1:]:
            torch.testing.assert_close(out.float(), first.float(), rtol=0.02, atol=0.02)


@pytest.mark.parametrize("t", [5, 6], ids=["below", "at"])
def test_mxfp4_dequant_threshold_neighbours(t, dequant_calls):
    # E = 4, k = 2, threshold 3 rows per expert: t * k >= 12 from t = 6 on
    inputs = _mx_inputs(t, 64, 32, 4, 2, seed=t, exact=False)
    out = _mx_run(inputs, dict(SMALL, MX_DEQUANT_MIN_ROWS=3), GPT_OSS)
    assert len(dequant_calls) == (2 if t == 6 else 0)
    _mx_check(out, inputs, GPT_OSS)


def test_mxfp4_float16_never_dequantizes_first(dequant_calls):
    x, p13, p2, weights, ids, s13, s2, d13, d2 = _mx_inputs(8, 64, 32, 2, 2, seed=9, exact=False)
    x = x.to(torch.float16)
    inputs = (x, p13, p2, weights, ids, s13, s2, d13, d2)
    outs = [
        _mx_run(inputs, dict(SMALL, MX_DEQUANT_MIN_ROWS=thr, MX_SCALE_AFTER_DOT=0), DSV4)
        for thr in (1, 0)
    ]
    assert dequant_calls == []  # fp16 cannot hold 2**+-127: the scale-after-dot GEMM only
    assert torch.equal(_bits(outs[0]), _bits(outs[1]))
    _mx_check(outs[0], inputs, DSV4)
    # and the default config (few tokens: the decode path, which never dequantizes first)
    _mx_check(_mx_run(inputs, None, DSV4), inputs, DSV4)
    assert dequant_calls == []


def test_mxfp4_dequant_threshold_config():
    from parity.optimized.triton._moe_configs import (
        DEFAULT_MX_DEQUANT_MIN_ROWS,
        default_config,
        fit_config,
    )

    bf, h = torch.bfloat16, torch.float16
    assert fit_config(SMALL, "mxfp4", bf, None)["MX_DEQUANT_MIN_ROWS"] == (
        DEFAULT_MX_DEQUANT_MIN_ROWS
    )
    assert (
        fit_config(dict(SMALL, MX_DEQUANT_MIN_ROWS=0), "mxfp4", bf, None)["MX_DEQUANT_MIN_ROWS"]
        == 0
    )
    assert "MX_DEQUANT_MIN_ROWS" not in fit_config(SMALL, "none", bf, None)
    with override_config(dict(SMALL, MX_DEQUANT_MIN_ROWS=16)):
        assert get_config(8, 4, 32, "mxfp4", bf, None, "cpu", True)["MX_DEQUANT_MIN_ROWS"] == 16
    gpu_big = fit_config(default_config(8192, 32, 2048, "mxfp4", None, False), "mxfp4", bf, None)
    use = kern.use_dequant_first
    assert use(gpu_big, "mxfp4", bf, 8192, 8, 32) and use(gpu_big, "mxfp4", bf, 1024, 8, 32)
    assert not use(gpu_big, "mxfp4", bf, 128, 8, 32)  # 32 rows per expert: in the GEMM
    assert not use(gpu_big, "mxfp4", h, 8192, 8, 32)
    assert not use(gpu_big, "none", bf, 8192, 8, 32)
    assert not use(dict(gpu_big, MX_DEQUANT_MIN_ROWS=0), "mxfp4", bf, 8192, 8, 32)


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant", ["none", "fp8_block", "mxfp4"])
def test_apply_router_weight_on_input(quant, path):
    h, n = (128, 128) if quant == "fp8_block" else (64, 32)
    run_case(6, h, n, 3, 1, torch.bfloat16, quant, DSV4, on_input=True)


@pytest.mark.parametrize(
    "opts",
    [
        {},  # plain SiLU-and-mul
        dict(swiglu_limit=0.5, swiglu_clamp_mode="pre"),
        dict(swiglu_limit=0.5, swiglu_clamp_mode="post"),
        dict(
            swiglu_limit=1.0,
            swiglu_alpha=1.702,
            swiglu_beta=1.0,
            layout="interleaved",
            swiglu_clamp_mode="post",
        ),
    ],
    ids=["silu", "pre", "post", "interleaved-post"],
)
def test_swiglu_options(opts, path):
    run_case(5, 64, 32, 3, 2, torch.bfloat16, "none", opts, seed=3)


def test_many_experts_top8(path):
    # E = 256, k = 8 (DeepSeek routing width) at a tiny hidden size
    run_case(4, 32, 16, 256, 8, torch.bfloat16, "none", DSV4, minus_one=True)


# --- edge cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_all_skipped_rows_written_as_zero(k, path):
    x, w13, w2, weights, ids = make(5, 64, 32, 3, k, torch.bfloat16, minus_one=False)
    ids[1] = -1
    ids[3] = -1
    weights[1] = float("nan")
    args = [v.to(DEVICE) for v in (x, w13.bfloat16(), w2.bfloat16(), weights, ids)]
    for _ in range(2):  # fresh garbage in the output buffers each call
        out = kernel(*args).cpu()
        assert (out[1] == 0).all() and (out[3] == 0).all()
        assert out[[0, 2, 4]].abs().sum(1).gt(0).all()
    every = torch.full_like(ids, -1)
    out = kernel(*args[:4], every.to(DEVICE)).cpu()
    assert (out == 0).all()


# --- the FP8 activation quantization is exactly fp8_quant's ------------------------------------


def test_fp8_activation_quant_bitwise():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 256, generator=g) * torch.logspace(-3, 3, 256)
    x[0, :128] = 0.0  # all-zero group: eps scale
    x[1, 3] = float("inf")
    x[2, 130] = float("nan")
    x[3, :128] = torch.linspace(-1, 1, 128) * 448  # codes at the saturation edge
    x[4] = torch.randn(256, generator=g) * 1e-6  # subnormal codes
    x = x.bfloat16().float()
    ids = torch.zeros(6, 1, dtype=torch.int32, device=DEVICE)
    ones = torch.ones(6, 1, device=DEVICE)
    # GEMM1's fp8 input, as both paths build it (the router weight not on the input)
    interpreted = DEVICE == "cpu"
    q_dev, s_dev = kern.gemm1_input(x.to(DEVICE), ids, ones, True, (128, 128), False, interpreted)
    want_q, want_s = fp8_quant(x, group_size=128)
    got_q, got_s = q_dev.cpu(), s_dev.cpu()
    assert torch.equal(got_s.isnan(), want_s.isnan())
    assert torch.equal(got_s.nan_to_num(), want_s.nan_to_num())
    nan_rows = want_q.float().isnan()
    assert torch.equal(got_q.float().isnan(), nan_rows)
    assert torch.equal(got_q.view(torch.uint8)[~nan_rows], want_q.view(torch.uint8)[~nan_rows])


# --- moe_align fallback, config, unsupported ---------------------------------------------------


@pytest.mark.parametrize("block", [1, 4, 16])
def test_align_matches_reference_prefix(block):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(-1, 6, (11, 3), generator=g, dtype=torch.int32)
    got = align_torch(ids, 6, block)
    want = moe_align(ids, num_experts=6, block_size=block)
    n = int(want[2])
    assert int(got[2]) == n and got[0].shape == want[0].shape and got[1].shape == want[1].shape
    assert torch.equal(got[0][:n], want[0][:n])
    assert torch.equal(got[1][: n // block], want[1][: n // block])


def test_config_file_lookup(tmp_path, monkeypatch):
    name = config_file_name(8, 64, "fp8_block", (128, 128), "NVIDIA_H100_80GB_HBM3")
    assert (
        name
        == "E=8,N=64,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128,128].json"
    )
    assert (
        config_file_name(8, 64, "mxfp4", None, "X")
        == "E=8,N=64,device_name=X,dtype=mxfp4_w4a16.json"
    )
    assert config_file_name(8, 64, "none", None, "X") == "E=8,N=64,device_name=X.json"
    table = {
        "triton_version": "3.6.0",
        "1": {
            "BLOCK_SIZE_M": 16,
            "BLOCK_SIZE_N": 32,
            "BLOCK_SIZE_K": 64,
            "GROUP_SIZE_M": 1,
            "num_warps": 4,
            "num_stages": 2,
        },
        "64": {
            "BLOCK_SIZE_M": 64,
            "BLOCK_SIZE_N": 64,
            "BLOCK_SIZE_K": 256,
            "GROUP_SIZE_M": 8,
            "num_warps": 8,
            "num_stages": 3,
        },
    }
    import json

    (tmp_path / config_file_name(8, 64, "fp8_block", (128, 128), "cpu")).write_text(
        json.dumps(table)
    )
    monkeypatch.setenv("PARITY_MOE_CONFIG_DIR", str(tmp_path))
    small = get_config(3, 8, 64, "fp8_block", torch.bfloat16, (128, 128), "cpu", True)
    big = get_config(50, 8, 64, "fp8_block", torch.bfloat16, (128, 128), "cpu", True)
    assert small["BLOCK_SIZE_M"] == 16 and big["BLOCK_SIZE_M"] == 64
    assert big["BLOCK_SIZE_K"] == 128  # clipped to one FP8 scale group
    with override_config({**table["1"], "BLOCK_SIZE_K": 16}):
        mx = get_config(50, 8, 64, "mxfp4", torch.float16, None, "cpu", True)
    assert mx["BLOCK_SIZE_K"] == 32  # whole MX blocks
    # a file tuned at large M only (the H100 files: M 8192) leaves small M to the default
    (tmp_path / config_file_name(8, 64, "none", None, "cpu")).write_text(
        json.dumps({"8192": {**table["64"], "BLOCK_SIZE_M": 128, "BLOCK_SIZE_N": 256}})
    )
    for m, want in ((1, None), (1000, None), (4095, None), (4096, 128), (65536, 128)):
        got = get_config(m, 8, 64, "none", torch.bfloat16, None, "cpu", True)
        if want is None:
            want = default_config(m, 8, 64, "none", None, True)["BLOCK_SIZE_M"]
            assert got["BLOCK_SIZE_N"] != 256, m
        assert got["BLOCK_SIZE_M"] == want, m


def test_unsupported_is_not_implemented():
    x, w13, w2, weights, ids = make(3, 64, 32, 2, 1, torch.float32)
    with pytest.raises(NotImplementedError):
        kernel(x, w13, w2, weights, ids)
    x = x.bfloat16()
    q13, s13 = fp8_block_quant(w13, block_shape=(8, 8))
    q2, s2 = fp8_block_quant(w2, block_shape=(8, 8))
    with pytest.raises(NotImplementedError):
        kernel(
            x,
            q13,
            q2,
            weights,
            ids,
            quant="fp8_block",
            w13_scale=s13,
            w2_scale=s2,
            block_shape=(8, 8),
        )


# --- the decode path (few tokens: pairs grouped per expert, split-K, no moe_align) ----------------

from parity.optimized.triton import _kernels_moe_decode as dec  # noqa: E402
from parity.optimized.triton._moe_configs import (  # noqa: E402
    DECODE_ENV,
    MX_ACT_2D_ENV,
    decode_config,
    default_decode_config,
    fit_decode_config,
)


@pytest.fixture
def decode_calls():
    """The decode path's launch count since the test began (asserts the path was taken)."""
    start = dec.LAUNCHES["decode"]
    return lambda: dec.LAUNCHES["decode"] - start


def _dcfg(bm, split, bk=32, bn=32):
    """A decode config forcing small tiles (tails in N and K) and `split` K splits."""
    return {
        "DECODE_MAX_PAIRS": 128,
        "DECODE_BLOCK_M": bm,
        "DECODE_BLOCK_N1": bn,
        "DECODE_BLOCK_N2": bn,
        "DECODE_BLOCK_K": bk,
        "DECODE_SPLIT_K1": split,
        "DECODE_SPLIT_K2": split,
    }


def _routed(t, k, e, seed):
    """ids with repeats within a token, skipped slots and, for t >= 3, a token with none."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(-1, e, (t, k), generator=g, dtype=torch.int32)
    if t >= 3:
        ids[2] = -1
    return ids


def decode_case(t, h, n, e, k, dtype, quant, opts, cfg, *, seed=0, block_shape=(128, 128)):
    x, w13, w2, _, _ = make(t, h, n, e, 1, dtype, seed=seed, minus_one=False)
    ids = _routed(t, k, e, seed)
    weights = torch.rand(t, k, generator=torch.Generator().manual_seed(seed)) + 0.1
    weights = torch.where(ids >= 0, weights, float("nan"))  # skipped slots' weights unused
    w13q, w2q, s13, s2, d13, d2 = quantize(w13, w2, quant, dtype, block_shape)
    dev = [v.to(DEVICE) if v is not None else None for v in (x, w13q, w2q, weights, ids, s13, s2)]
    kw = dict(quant=quant, w13_scale=dev[5], w2_scale=dev[6], block_shape=block_shape, **opts)
    with override_config(cfg):
        out = kernel(*dev[:5], **kw)
        again = kernel(*dev[:5], **kw)
    assert torch.equal(_bits(out), _bits(again))  # deterministic: no atomics
    check(
        out,
        x,
        w13q,
        w2q,
        weights,
        ids,
        quant=quant,
        s13=s13,
        s2=s2,
        d13=d13,
        d2=d2,
        opts=opts,
        block_shape=block_shape,
    )
    return out


# (T, k, E): T = 1 (GEMV) and several rows per expert (dot tiles), repeated experts, experts
# with no token (E > T * k), k up to 8
DECODE_ROUTES = [(1, 1, 3), (1, 8, 5), (2, 4, 16), (5, 3, 4), (16, 8, 6)]


@pytest.mark.parametrize("route", DECODE_ROUTES, ids=lambda r: "T{}k{}E{}".format(*r))
@pytest.mark.parametrize("split", [1, 2])
def test_decode_none_tails(route, split, decode_calls):
    # H = 80, 2N = 96, N = 48: not multiples of the 32-wide N and K tiles
    t, k, e = route
    decode_case(t, 80, 48, e, k, torch.bfloat16, "none", DSV4, _dcfg(1 if t == 1 else 16, split))
    assert decode_calls() == 2


@pytest.mark.parametrize("route", DECODE_ROUTES[1:4], ids=lambda r: "T{}k{}E{}".format(*r))
@pytest.mark.parametrize("bm", [1, 16], ids=["gemv", "dot"])
def test_decode_fp8_block(route, bm, decode_calls):
    # block (48, 32): partial 48-row weight blocks, K tiles of 32 = one scale group, 2 splits
    t, k, e = route
    decode_case(
        t, 96, 64, e, k, torch.bfloat16, "fp8_block", {}, _dcfg(bm, 2), block_shape=(48, 32)
    )
    assert decode_calls() == 2


@pytest.mark.parametrize("route", DECODE_ROUTES[1:4], ids=lambda r: "T{}k{}E{}".format(*r))
@pytest.mark.parametrize("bm", [1, 16], ids=["gemv", "dot"])
def test_decode_mxfp4(route, bm, decode_calls):
    # K = H = 96 with 64-wide K tiles: the last tile half masked; 3 splits of GEMM1 (one tile
    # each); GPT-OSS options (interleaved, clamp)
    t, k, e = route
    decode_case(t, 96, 64, e, k, torch.bfloat16, "mxfp4", GPT_OSS, _dcfg(bm, 3, bk=64))
    assert decode_calls() == 2


@pytest.mark.parametrize("quant", ["none", "fp8_block", "mxfp4"])
def test_decode_defaults_float16(quant, decode_calls):
    # the default decode config (no override), float16 activations, T = 1 and T = 16
    h, n = (256, 128) if quant == "fp8_block" else (64, 32)
    for t in (1, 16):
        decode_case(t, h, n, 6, 4, torch.float16, quant, DSV4, None, seed=t)
    assert decode_calls() == 4


@pytest.mark.parametrize("quant", ["none", "fp8_block", "mxfp4"])
@pytest.mark.parametrize("bm", [1, 16], ids=["gemv", "dot"])
def test_decode_router_weight_on_input(quant, bm, decode_calls):
    h, n = (128, 128) if quant == "fp8_block" else (64, 32)
    cfg = _dcfg(bm, 2, bk=64)
    with override_config(cfg):
        run_case(
            1 if bm == 1 else 6, h, n, 3, 1, torch.bfloat16, quant, DSV4, cfg=cfg, on_input=True
        )
    assert decode_calls() == 1


@pytest.mark.parametrize("exact", [True, False], ids=["exact-sums", "random"])
def test_decode_matches_sorted_path(exact, decode_calls):
    # mxfp4 inputs whose float32 sums are all exact: the decode path (GEMV and dot, with and
    # without split-K) and the sorted path differ only in summation order, so bitwise equal
    for t in (1, 7):
        inputs = _mx_inputs(t, 96, 32, 3, 2, seed=4 + t, exact=exact)
        before = decode_calls()
        base = _mx_run(inputs, SORTED_MX, DSV4)
        assert decode_calls() == before  # the tile-only override: the sorted path
        for bm, split in ((1, 1), (1, 3), (16, 2)):
            if t > 1 and bm == 1:
                continue
            out = _mx_run(inputs, _dcfg(bm, split, bk=32), DSV4)
            _mx_check(out, inputs, DSV4)
            _same_sums(out, base, exact)
    assert decode_calls() == 4


def test_decode_skipped_rows_zero_and_switches(monkeypatch, decode_calls):
    x, w13, w2, weights, ids = make(5, 64, 32, 3, 2, torch.bfloat16, minus_one=False)
    ids[1] = -1
    weights[1] = float("nan")
    args = [v.to(DEVICE) for v in (x, w13.bfloat16(), w2.bfloat16(), weights, ids)]
    out = kernel(*args).cpu()
    assert decode_calls() == 1
    assert (out[1] == 0).all() and out[[0, 2, 3, 4]].abs().sum(1).gt(0).all()
    every = kernel(*args[:4], torch.full_like(args[4], -1)).cpu()
    assert decode_calls() == 2 and (every == 0).all()
    assert kernel(*[a[:0] for a in args[:1]], *args[1:3], args[3][:0], args[4][:0]).shape == (0, 64)
    assert decode_calls() == 2  # T = 0 launches nothing
    # the switches: the environment, a tile-only override (the tuner's), T * k past the limit
    monkeypatch.setenv(DECODE_ENV, "0")
    sorted_out = kernel(*args).cpu()
    monkeypatch.delenv(DECODE_ENV)
    with override_config(SMALL):
        kernel(*args)
    with override_config(dict(SMALL, DECODE_MAX_PAIRS=9)):  # 5 * 2 = 10 pairs
        kernel(*args)
    assert decode_calls() == 2
    torch.testing.assert_close(out, sorted_out, rtol=2 * ulp(torch.bfloat16), atol=1e-3)


def test_group_kernel_against_torch():
    g = torch.Generator().manual_seed(3)
    for p, e, wild in ((1, 1, 0), (8, 32, 0), (37, 5, 3), (128, 16, 0), (128, 256, 9), (6, 4, 6)):
        raw = torch.randint(-1, e, (p,), generator=g, dtype=torch.int32)
        raw[: p // 4] = raw[0]  # a hot expert (or -1)
        # `wild` ids outside [-1, E): skipped as -1, and the flag set
        raw[torch.randperm(p, generator=g)[:wild]] = torch.tensor([e, -2, 2**31 - 1, -(2**31)])[
            torch.arange(wild) % 4
        ].int()
        ids = torch.where((raw < -1) | (raw >= e), -1, raw)
        slots = min(e, p)
        pairs = torch.full((p,), -7, dtype=torch.int32, device=DEVICE)
        info = torch.full((3, slots), -7, dtype=torch.int32, device=DEVICE)
        clean = torch.full((p,), -7, dtype=torch.int32, device=DEVICE)
        bad = torch.full((1,), -7, dtype=torch.int32, device=DEVICE)
        dec._group_kernel[(1,)](
            raw.to(DEVICE), pairs, info[0], info[1], info[2], clean, bad, p, slots, e,
            BLOCK_P=dec._next_pow2(p),
        )  # fmt: skip
        pairs, info = pairs.cpu(), info.cpu()
        assert torch.equal(clean.cpu(), ids) and int(bad) == (1 if wild else 0)
        valid = ids >= 0
        order = torch.sort(ids[valid].long() * p + torch.arange(p)[valid]).values % p
        nv = int(valid.sum())
        assert torch.equal(pairs[:nv].long(), order)  # by expert, stable within one
        experts, counts = torch.unique(ids[valid], return_counts=True)
        d = experts.numel()
        assert torch.equal(info[0, :d], experts.int()) and torch.equal(info[2, :d], counts.int())
        assert torch.equal(info[1, :d], (counts.cumsum(0) - counts).int())
        assert (info[2, d:] == 0).all()


def test_decode_config_fits():
    bf = (128, 128)
    # DeepSeek-V4 layer at T = 1 and 16: no split needed (enough CTAs), GEMV then dot
    one = decode_config(1, 8, 32, 2048, 7168, "none", bf, False)
    assert one["DECODE_BLOCK_M"] == 1 and one["SPLIT1"] == one["SPLIT2"] == 1
    sixteen = decode_config(16, 8, 32, 2048, 7168, "fp8_block", bf, False)
    assert sixteen["DECODE_BLOCK_M"] == 16 and sixteen["DECODE_BLOCK_K"] == 128
    assert decode_config(17, 8, 32, 2048, 7168, "none", bf, False) is None  # 136 pairs
    # a small layer: split-K for CTAs, no empty split, K per split a multiple of BLOCK_K
    small = decode_config(1, 1, 8, 256, 1024, "mxfp4", None, False)
    assert small["SPLIT1"] > 1 and small["SPLIT2"] == 1  # K = N = 256: too short to split
    for key in ("1", "2"):
        s, per, kd = small["SPLIT" + key], small["KSPLIT" + key], 1024 if key == "1" else 256
        assert per % small["DECODE_BLOCK_K"] == 0 and (s - 1) * per < kd <= s * per
    fit = fit_decode_config(
        dict(_dcfg(4, 99, bk=512), DECODE_NUM_WARPS=8), 3, 2, 4, 64, 96, "fp8_block", (48, 32)
    )
    assert fit["DECODE_BLOCK_M"] == 16 and fit["DECODE_BLOCK_K"] == 32
    assert fit["SPLIT1"] == 3 and fit["KSPLIT1"] == 32  # H = 96: at most 3 tiles


def test_ids_under_graph_capture_are_skipped_not_read(monkeypatch):
    """Under CUDA-graph capture the id range check cannot read the ids (a host sync breaks the
    capture: `parity bench --graph` said "not capturable" for fused_moe on the H100): the ids
    out of [-1, E) are then skipped as -1 are. Eager calls still raise the contract's error."""
    x, w13, w2, weights, ids = make(4, 64, 32, 3, 2, torch.bfloat16, minus_one=False)
    bad = ids.clone()
    bad[1, 0] = 3  # E = 3: out of range
    bad[2, 1] = -5
    args = [v.to(DEVICE) for v in (x, w13.bfloat16(), w2.bfloat16(), weights)]
    with pytest.raises(ValueError, match="topk_ids"):
        kernel(*args, bad.to(DEVICE))
    skipped = bad.clone()
    skipped[1, 0] = -1
    skipped[2, 1] = -1
    want = kernel(*args, skipped.to(DEVICE)).cpu()
    monkeypatch.setattr(mod, "_capturing", lambda x: True)
    got = kernel(*args, bad.to(DEVICE)).cpu()
    assert torch.equal(got, want)


def test_bad_ids_raise_before_unsupported_on_a_cpu_without_the_interpreter(monkeypatch):
    """Where Triton cannot run at all (a CPU tensor, no interpreter) a bad id is still the
    contract's ValueError, as the reference raises it; good ids: Unsupported (review)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, w13, w2, weights, ids = make(4, 64, 32, 3, 2, torch.bfloat16, minus_one=False)
    args = (x, w13.bfloat16(), w2.bfloat16(), weights)
    bad = ids.clone()
    bad[1, 1] = 9
    with pytest.raises(ValueError, match=r"topk_ids.*9"):
        kernel(*args, bad)
    with pytest.raises(NotImplementedError, match="Triton runs on CUDA"):
        kernel(*args, ids)


@pytest.mark.parametrize("decode", ["1", "0"])
def test_bad_ids_raise_after_the_launches_and_never_reach_a_kernel(monkeypatch, decode):
    """Eager calls read the ids once, at their end (the kernels skip an out-of-range id as -1
    meanwhile): the contract's ValueError, naming the first bad value, on both paths; a call
    whose other input is unsupported still raises the id error first, as the reference's order
    has it."""
    monkeypatch.setenv("PARITY_MOE_DECODE", decode)
    x, w13, w2, weights, ids = make(4, 64, 32, 3, 2, torch.bfloat16, minus_one=False)
    args = [v.to(DEVICE) for v in (x, w13.bfloat16(), w2.bfloat16(), weights)]
    reads = []
    real = mod.check_topk_ids
    monkeypatch.setattr(mod, "check_topk_ids", lambda *a: (reads.append(1), real(*a))[1])
    kernel(*args, ids.to(DEVICE))
    assert reads == []  # good ids: no host read of the ids at all, only the flag's
    for value in (3, -2, 2**31 - 1):
        bad = ids.clone()
        bad[2, 1] = value
        with pytest.raises(ValueError, match=f"topk_ids.*{value}"):
            kernel(*args, bad.to(DEVICE))
    bad = ids.clone()
    bad[0, 0] = 7
    with pytest.raises(ValueError, match="topk_ids"):  # not NotImplementedError for float32 x
        kernel(*[v.float() for v in args], bad.to(DEVICE))
    with pytest.raises(ValueError, match="topk_ids"):  # nor Unsupported for a huge option
        kernel(*args, bad.to(DEVICE), swiglu_limit=1e39)
    with pytest.raises(NotImplementedError):  # the option alone: unsupported, as before
        kernel(*args, ids.to(DEVICE), swiglu_limit=1e39)


# --- review findings (decode path): limits the interpreter does not enforce -----------------------

_SM90_COMPILE = r"""
import re, sys, json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.errors import CompilationError
from parity.optimized.triton import _kernels_moe_decode as dec

fn = dec._gemm_kernel
sig = {n: "i32" for n in fn.arg_names}
sig.update(a_ptr="*fp8e4nv", b_ptr="*fp8e4nv", part_ptr="*fp32", a_scale_ptr="*fp32",
           b_scale_ptr="*fp32", pairs_ptr="*i32", slot_e_ptr="*i32", slot_start_ptr="*i32",
           slot_cnt_ptr="*i32")
sig.update(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
const = {}
for name, value in json.loads(sys.argv[1]).items():
    sig[name] = "constexpr"
    const[(fn.arg_names.index(name),)] = value
try:
    triton.compile(ASTSource(fn, sig, const), target=GPUTarget("cuda", 90, 32))
except CompilationError as err:
    print("COMPILE_ERROR", str(err).splitlines()[-1])
    sys.exit(3)
except Exception as err:  # ptxas rejected our PTX (inline assembly): a failure, not a skip
    if not re.search(r"\.ptx, line \d+; error", str(err)):
        raise
    print("PTXAS_ERROR", str(err).splitlines()[0])
    sys.exit(3)
print("OK")
"""


def _compile_fp8_gemm_sm90(bm, bn, bk, quant=1, mx_words=0, mx_vec=0, mx_ptx=0):
    """Compile the decode GEMM (fp8_block, GEMM2 operands; quant 2: mxfp4 with bf16
    activations) for sm_90 without a GPU, in a child process (this one runs Triton in the
    interpreter, which has no tl.dot shape limits). True if it compiles; skips where the NVIDIA
    backend cannot run here."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    consts = dict(a_row_div=1, QUANT=quant, UPCAST_DOT=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    consts["MX_WORDS"] = mx_words
    consts["MX_VEC"] = mx_vec
    # every flag a constexpr, as the launcher passes it (a flag left out would be an i32
    # argument here, and both sides of its branch would be compiled)
    consts.update(MX_ACT_2D=0, MX_BF16_MUL=0, MX_PTX=mx_ptx)
    ptrs = {} if quant == 1 else dict(a_ptr="*bf16", b_ptr="*i32" if mx_words else "*u8")
    ptrs.update({} if quant == 1 else dict(b_scale_ptr="*u8"))
    res = subprocess.run(
        [sys.executable, "-c", _SM90_COMPILE, json.dumps(consts), json.dumps(ptrs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if res.returncode == 3:
        return False
    if res.returncode != 0:
        pytest.skip(f"no sm_90 compile here: {res.stderr.strip().splitlines()[-1:]}")
    return True


def test_decode_fp8_dot_tile_compiles_for_sm90_at_k16_groups():
    # block_shape[1] = 48 (a multiple of 16, accepted) allows only 16-wide K tiles inside a
    # scale group; tl.dot on fp8 needs K >= 32 on NVIDIA (the interpreter does not check), so a
    # dot tile (T > 1) must not be chosen there: the GEMV needs no tl.dot
    assert not _compile_fp8_gemm_sm90(16, 64, 16)  # the limit is real (witness)
    assert _compile_fp8_gemm_sm90(1, 64, 16)
    for t in (2, 16):
        for over in (None, {"DECODE_MAX_PAIRS": 128, "DECODE_BLOCK_M": 16}):
            with override_config(over):
                cfg = decode_config(t, 8, 32, 2048, 7168, "fp8_block", (128, 48), False)
            assert cfg["DECODE_BLOCK_K"] == 16
            assert _compile_fp8_gemm_sm90(cfg["DECODE_BLOCK_M"], cfg["DECODE_BLOCK_N2"], 16)


def test_decode_mxfp4_gemv_tiles_compile_for_sm90():
    """The mxfp4 GEMV in its forms (bytes, the default; int32 words, DECODE_MX_WORDS; words
    decoded in PTX, PARITY_MOE_MX_PTX) compiles for sm_90 at the sweep's tiles (no GPU here to
    time them)."""
    for bn, bk in ((32, 256), (64, 128)):
        for words in (0, 1):
            assert _compile_fp8_gemm_sm90(1, bn, bk, quant=2, mx_words=words), (bn, bk, words)
        # PARITY_MOE_MX_PTX: its inline PTX assembles for sm_90 (ptxas checks it here)
        assert _compile_fp8_gemm_sm90(1, bn, bk, quant=2, mx_words=1, mx_ptx=1), (bn, bk)


@pytest.mark.parametrize("split", [1, 3])
def test_decode_mxfp4_words_gemv_matches_the_sorted_path(split, decode_calls, no_ptx):
    """DECODE_MX_WORDS: the same exact products and block sums in another order, so bitwise
    equal to the sorted path where every float32 sum is exact, and close elsewhere; every code
    (both signs, the subnormal 0.5) appears in the random weights."""
    _mx_like_sorted(1, 11, {**_dcfg(1, split, bk=64), "DECODE_MX_WORDS": 1})
    assert decode_calls() == 2


def test_decode_mxfp4_vec_compiles_for_sm90():
    """The whole-MX-block decode GEMMs (16-byte weight loads, one K-32 dot a
    block) compiles for sm_90 at the shipped decode tiles: GEMV 32 x 256, dot 128 x 64."""
    assert _compile_fp8_gemm_sm90(1, 32, 256, quant=2, mx_vec=1)
    assert _compile_fp8_gemm_sm90(16, 128, 64, quant=2, mx_vec=1)


@pytest.fixture
def no_ptx(monkeypatch):
    """The GEMV forms other than the PTX decode (on by default on a GPU since 2026-12-06, where it
    takes every word GEMV): a test of them pins it off, so a GPU runs the form it names."""
    monkeypatch.setattr(dec, "_MX_PTX", 0)


@pytest.fixture
def gemm_flags(monkeypatch):
    """The whole-MX-block loads on (the default; PARITY_MOE_MX_VEC=0 turns them off) for one
    test; returns `flags(name)`: that constexpr of each decode GEMM launch so far, in order."""
    seen = []
    real = dec.launch

    def spy(name, fn, grid, args, consts, **kw):
        if name == "gemm":
            seen.append(consts)
        return real(name, fn, grid, args, consts, **kw)

    monkeypatch.setattr(dec, "_MX_VEC", True)
    monkeypatch.setattr(dec, "launch", spy)
    return lambda flag: [c[flag] for c in seen]


@pytest.mark.parametrize("split", [1, 3])
def test_decode_mxfp4_vec_matches_the_sorted_path(split, decode_calls, gemm_flags):
    """The whole-MX-block loads: the same exact products (the GEMV's block sums as before; the dot
    tile's one K-32 dot a block for two K-16 ones), so bitwise equal to the sorted path where
    every float32 sum is exact and close elsewhere; K 96 with 64-wide tiles leaves a half tile
    (one whole MX block masked), T 7 with repeated experts runs the dot tile."""
    for t, bm in ((1, 1), (7, 16)):
        _mx_like_sorted(t, 13 + t, _dcfg(bm, split, bk=64))
    assert decode_calls() == 4
    assert gemm_flags("MX_VEC") == [1] * 8  # two GEMMs a decode call, every one with the flag


@pytest.mark.parametrize("bm", [1, 16], ids=["gemv", "dot"])
def test_decode_mxfp4_vec_float16(bm, decode_calls, gemm_flags):
    """The whole-MX-block loads with float16 activations (the E2M1 values as float16, the
    scale after each block's dot as before): within the reference's tolerance, GPT-OSS
    options, K tiles with a masked half."""
    t = 1 if bm == 1 else 5
    decode_case(t, 96, 64, 4, 3, torch.float16, "mxfp4", GPT_OSS, _dcfg(bm, 2, bk=64))
    assert decode_calls() == 2 and gemm_flags("MX_VEC") == [1] * 4


@pytest.mark.parametrize("bm", [1, 16], ids=["gemv", "dot"])
def test_decode_mxfp4_byte_loads_stay_reachable(bm, decode_calls, gemm_flags, monkeypatch, no_ptx):
    """PARITY_MOE_MX_VEC=0 (the byte-wise weight loads, the default until 2026-12-06) still
    launches without the flag and gives the sorted path's sums bit for bit where they are exact."""
    monkeypatch.setattr(dec, "_MX_VEC", False)
    t = 1 if bm == 1 else 7
    inputs = _mx_inputs(t, 96, 32, 3, 2, seed=21 + t, exact=True)
    base = _mx_run(inputs, SORTED_MX, DSV4)
    out = _mx_run(inputs, _dcfg(bm, 2, bk=64), DSV4)
    _mx_check(out, inputs, DSV4)
    _same_sums(out, base, True)
    assert decode_calls() == 1 and gemm_flags("MX_VEC") == [0] * 2


@pytest.mark.parametrize("split", [1, 3])
def test_decode_mxfp4_gemv_act_2d(split, decode_calls, gemm_flags, no_ptx):
    """DECODE_MX_ACT_2D (the GEMV's activations as [1, K] tiles, the default on a GPU): the
    same products and block sums, so bitwise the sorted path where every float32 sum is exact
    and close elsewhere; its launches carry the flag, those with the key 0 do not."""
    inputs = _mx_like_sorted(1, 31 + split, {**_dcfg(1, split, bk=64), "DECODE_MX_ACT_2D": 1})
    _mx_run(inputs, {**_dcfg(1, split, bk=64), "DECODE_MX_ACT_2D": 0}, DSV4)
    assert decode_calls() == 3 and gemm_flags("MX_ACT_2D") == [1, 1, 1, 1, 0, 0]


def test_decode_mxfp4_defaults_on_a_gpu(monkeypatch):
    """On a GPU the mxfp4 T 1 GEMV loads its activations as [1, K] tiles unless
    PARITY_MOE_MX_ACT_2D=0 (the interpreter's defaults leave them off); the dot tile's bfloat16
    scaling is on unless PARITY_MOE_MX_BF16_MUL=0 was set at import, and so is the GEMV's PTX
    decode unless PARITY_MOE_MX_PTX=0 was."""
    args = (1, 8, 32, 2048, 7168, "mxfp4", None)
    monkeypatch.delenv(MX_ACT_2D_ENV, raising=False)
    assert default_decode_config(*args, False)["DECODE_MX_ACT_2D"] == 1
    assert default_decode_config(*args, True).get("DECODE_MX_ACT_2D", 0) == 0
    assert default_decode_config(*args[:5], "none", None, False)["DECODE_MX_ACT_2D"] == 0
    monkeypatch.setenv(MX_ACT_2D_ENV, "0")
    assert default_decode_config(*args, False)["DECODE_MX_ACT_2D"] == 0
    want = {"0": 0, "2": 2}.get(os.environ.get(dec.MX_BF16_MUL_ENV, "1"), 1)
    assert dec._MX_BF16_MUL == want
    # the T 1 GEMV decoded in PTX: on unless PARITY_MOE_MX_PTX=0 (2: float32 activations)
    assert dec._MX_PTX == {"0": 0, "2": 2}.get(os.environ.get(dec.MX_PTX_ENV, "1"), 1)


@pytest.mark.parametrize("mode", [1, 2], ids=["shifts", "multiplies"])
def test_decode_mxfp4_dot_bf16_mul(mode, decode_calls, gemm_flags, monkeypatch):
    """PARITY_MOE_MX_BF16_MUL (the dot tile's E2M1 values scaled in bfloat16, the default on a
    GPU): the same values, so bitwise the sorted path where every float32 sum is exact
    and close elsewhere; on a GPU its dot-tile launches carry the flag, the GEMV's not, and
    under the interpreter (whose bfloat16 arithmetic is on raw bit patterns) none does."""
    monkeypatch.setattr(dec, "_MX_BF16_MUL", mode)
    _mx_like_sorted(7, 41, _dcfg(16, 2, bk=64))
    _mx_run(_mx_inputs(1, 96, 32, 3, 2, seed=42, exact=True), _dcfg(1, 2, bk=64), DSV4)
    on = mode if DEVICE == "cuda" else 0
    assert decode_calls() == 3 and gemm_flags("MX_BF16_MUL") == [on] * 4 + [0, 0]


def test_decode_vec_leaves_other_quant_modes(decode_calls, gemm_flags):
    """The whole-MX-block loads are for mxfp4 weights only: bf16 and fp8 decode GEMMs launch
    without them."""
    decode_case(1, 80, 48, 3, 1, torch.bfloat16, "none", DSV4, _dcfg(1, 1))
    decode_case(
        5, 96, 64, 4, 3, torch.bfloat16, "fp8_block", {}, _dcfg(16, 2), block_shape=(48, 32)
    )
    assert decode_calls() == 4 and gemm_flags("MX_VEC") == [0] * 8  # decode_case calls twice


def test_decode_mxfp4_words_need_a_word_view(decode_calls, no_ptx):
    """Weights that cannot be viewed as int32 words (a 2-byte offset) take the byte GEMV, with
    the same result."""
    inputs = _mx_inputs(1, 96, 32, 3, 2, seed=12, exact=True)
    cfg = {**_dcfg(1, 1, bk=64), "DECODE_MX_WORDS": 1}
    base = _mx_run(inputs, cfg, DSV4)
    x, w13, w2, weights, ids, s13, s2 = [v.to(DEVICE) for v in inputs[:7]]
    pad = torch.zeros(w13.numel() + 2, dtype=torch.uint8, device=DEVICE)
    w13_odd = pad[2:].view(w13.shape)
    w13_odd.copy_(w13)
    assert w13_odd.storage_offset() % 4 == 2
    with override_config(cfg):
        out = kernel(
            x, w13_odd, w2, weights, ids, quant="mxfp4", w13_scale=s13, w2_scale=s2, **DSV4
        )
    assert torch.equal(_bits(out), _bits(base))
    assert decode_calls() == 2


@pytest.mark.parametrize("bm", [1, 16], ids=["gemv", "dot-asked"])
def test_decode_fp8_block_k16_groups(bm, decode_calls):
    # fp8 with 16-column scale groups (block (32, 16)) at T > 1: correct on the tile chosen
    cfg = _dcfg(bm, 2)
    decode_case(5, 64, 48, 4, 3, torch.bfloat16, "fp8_block", {}, cfg, block_shape=(32, 16))
    assert decode_calls() == 2


def test_decode_max_pairs_override_capped_by_group_kernel():
    # the grouping kernel compares [P, P] pairs: Triton tensors hold at most 2**20 elements, so
    # P = 2048 cannot run (witness); an override asking for more pairs runs the sorted path
    p = 2048
    ids = torch.zeros(p, dtype=torch.int32, device=DEVICE)
    pairs = torch.empty(p, dtype=torch.int32, device=DEVICE)
    info = torch.empty((3, 1), dtype=torch.int32, device=DEVICE)
    clean, bad = torch.empty_like(ids), torch.empty(1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(Exception, match="numel"):
        dec._group_kernel[(1,)](
            ids, pairs, info[0], info[1], info[2], clean, bad, p, 1, 4, BLOCK_P=p
        )
    with override_config({"DECODE_MAX_PAIRS": 4096}):
        assert decode_config(256, 8, 4, 32, 64, "none", (128, 128), True) is None
        assert decode_config(128, 8, 4, 32, 64, "none", (128, 128), True) is not None


def test_sorted_path_fp8_k16_groups_is_unsupported(monkeypatch):
    """The sorted path's fp8 tl.dot needs K >= 32 on NVIDIA: a 16-column scale group there is
    NotImplementedError (not a compile failure on sm_90, which the interpreter would hide);
    the decode path takes those cases with its GEMV."""
    x, w13, w2, _, _ = make(5, 64, 48, 4, 1, torch.bfloat16, minus_one=False)
    ids = _routed(5, 3, 4, 0)
    weights = torch.where(ids >= 0, torch.rand(5, 3) + 0.1, float("nan"))
    w13q, w2q, s13, s2, _, _ = quantize(w13, w2, "fp8_block", torch.bfloat16, (32, 16))
    dev = [v.to(DEVICE) for v in (x, w13q, w2q, weights, ids, s13, s2)]
    kw = dict(quant="fp8_block", w13_scale=dev[5], w2_scale=dev[6], block_shape=(32, 16))
    monkeypatch.setenv("PARITY_MOE_DECODE", "0")  # the sorted path
    with pytest.raises(NotImplementedError, match="multiple of 32"):
        kernel(*dev[:5], **kw)
    monkeypatch.setenv("PARITY_MOE_DECODE", "1")
    assert kernel(*dev[:5], **kw).shape == (5, 64)


def test_decode_gemv_switch(monkeypatch):
    """PARITY_MOE_DECODE_GEMV=0 gives T = 1 the 16-row dot tile (the GPU defaults; the switch
    exists to time the two against each other)."""
    from parity.optimized.triton._moe_configs import default_decode_config

    args = (1, 8, 32, 2048, 7168, "none", (128, 128), False)
    assert default_decode_config(*args)["DECODE_BLOCK_M"] == 1
    monkeypatch.setenv("PARITY_MOE_DECODE_GEMV", "0")
    assert default_decode_config(*args)["DECODE_BLOCK_M"] == 16


def test_validated_signatures_are_planned_and_bad_inputs_still_raise(monkeypatch):
    """A call signature validates once (issue 11, section 3: eager T 1 was host-bound); only a
    call that validated is stored, and what the key cannot hold is validated every time."""
    x, w13, w2, weights, ids = make(1, 64, 32, 3, 2, torch.bfloat16, minus_one=False)
    args = [v.to(DEVICE) for v in (x, w13.bfloat16(), w2.bfloat16(), weights)]
    ids = ids.to(DEVICE)
    mod._PLANS.clear()
    calls = []
    real = mod.validate_fused_moe
    monkeypatch.setattr(
        mod, "validate_fused_moe", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )
    first = kernel(*args, ids)
    assert len(mod._PLANS) == 1 and len(calls) == 1
    assert torch.equal(kernel(*args, ids), first) and len(calls) == 1  # the plan: no validation
    bad = ids.clone()
    bad[0, 1] = 3
    with pytest.raises(ValueError, match="topk_ids"):  # a planned signature, a bad id: raised
        kernel(*args, bad)
    with pytest.raises(TypeError, match="topk_weights"):  # another dtype: another key, validated
        kernel(*args[:3], args[3].double(), ids)
    with pytest.raises(ValueError, match="swiglu_limit"):  # never stored, so always raised
        kernel(*args, ids, swiglu_limit=-1.0)
    with pytest.raises(ValueError, match="swiglu_limit"):
        kernel(*args, ids, swiglu_limit=-1.0)
    n_plans = len(mod._PLANS)
    kernel(*args, ids, block_shape=[128, 128])  # a list block_shape validates as the tuple does
    assert len(mod._PLANS) == n_plans
    kernel(*args, ids, block_shape=(1, 128))  # planned (unused with quant none)
    with pytest.raises(TypeError, match="block_shape"):  # True == 1, but never the int's plan
        kernel(*args, ids, block_shape=(True, 128))
    kernel(*args, ids, swiglu_alpha=1)  # an int option: its own key (validated, then planned)
    assert len(mod._PLANS) == n_plans + 2
    n_calls = len(calls)
    cfg = default_config(1, 3, 32, "none", None, True)
    with override_config(cfg):  # the tuner's override (the sorted path): read, not planned
        kernel(*args, ids, swiglu_beta=0.5)
    assert len(mod._PLANS) == n_plans + 2 and len(calls) == n_calls + 1


@triton.jit
def _e2m1_decoders_kernel(p_ptr, f_ptr, h_ptr, DT: tl.constexpr, BF16_MUL: tl.constexpr = 0):
    offs = tl.arange(0, 256)
    packed = tl.load(p_ptr + offs)
    lo, hi = kern._e2m1_pair_f32(packed)
    tl.store(f_ptr + offs, lo)
    tl.store(f_ptr + 256 + offs, hi)
    lo, hi = kern._e2m1_pair_to(packed, DT, BF16_MUL)
    tl.store(h_ptr + offs, lo)
    tl.store(h_ptr + 256 + offs, hi)


def _every_byte(dtype, bf16_mul=0):
    from parity.reference.numerics import E2M1_VALUES

    p = torch.arange(256, dtype=torch.uint8, device=DEVICE)
    f = torch.empty(512, dtype=torch.float32, device=DEVICE)
    h = torch.empty(512, dtype=dtype, device=DEVICE)
    dt = tl.bfloat16 if dtype == torch.bfloat16 else tl.float16
    _e2m1_decoders_kernel[(1,)](p, f, h, dt, bf16_mul)
    codes = torch.cat([p.cpu() & 15, p.cpu() >> 4]).long()
    mag = torch.tensor(E2M1_VALUES, dtype=torch.float32)[codes & 7]
    want = torch.where(codes >= 8, -mag, mag)  # -0.0 for code 8
    assert torch.equal(_bits(f.cpu()), _bits(want))
    assert torch.equal(_bits(h.cpu()), _bits(want.to(dtype)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_e2m1_pair_decoders_every_byte(dtype):
    """The kernels' E2M1 decoders (both nibbles from the whole byte) on all 256 bytes: bitwise
    the contract's E2M1 values (bit 3 the sign, -0 for code 8), low nibble then high nibble, in
    float32 and in `dtype`."""
    _every_byte(dtype)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="NOT RUN: needs a CUDA GPU")
@pytest.mark.parametrize("mode", [1, 2], ids=["shifts", "multiplies"])
def test_e2m1_pair_decoder_bf16_mul_every_byte(mode):
    """`_e2m1_pair_to`'s BF16_MUL (the 2**126 applied in bfloat16, two values an instruction;
    PARITY_MOE_MX_BF16_MUL): the same bits on all 256 bytes, the subnormal code 1 and -0
    included. A GPU only: the interpreter's bfloat16 arithmetic works on raw bit patterns."""
    _every_byte(torch.bfloat16, bf16_mul=mode)


@triton.jit
def _join8_kernel(o_ptr):
    r = tl.arange(0, 4)[:, None] * 100 + tl.zeros((1, 2), tl.int32)  # [4, 2]
    w = dec._join8(r, r + 1, r + 2, r + 3, r + 4, r + 5, r + 6, r + 7)  # [4, 2, 8]
    i = tl.arange(0, 4)[:, None, None] * 16 + tl.arange(0, 2)[None, :, None] * 8
    tl.store(o_ptr + i + tl.arange(0, 8)[None, None, :], w)


def test_join8_keeps_argument_order():
    """`_join8` (the PTX decoder's eight results as one [..., 8] tensor) puts argument j at index
    j: on the CPU too, where the PTX itself cannot run (its first version swapped elements 1 and
    4, 3 and 6, caught only by the GPU's every-byte test)."""
    o = torch.zeros(64, dtype=torch.int32, device=DEVICE)
    _join8_kernel[(1,)](o)
    want = (torch.arange(4)[:, None, None] * 100 + torch.arange(8)).expand(4, 2, 8)
    assert torch.equal(o.cpu().view(4, 2, 8), want.to(torch.int32))


@triton.jit
def _e2m1_word_kernel(w_ptr, f_ptr):
    offs = tl.arange(0, 256)
    w = tl.load(w_ptr + offs[:, None] + tl.zeros((1, 2), tl.int32))  # [256, 2]: 2-D words
    v = tl.reshape(dec._e2m1_word_f32_ptx(w), (512, 8))  # each word twice
    tl.store(f_ptr + tl.arange(0, 512)[:, None] * 8 + tl.arange(0, 8)[None, :], v)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="NOT RUN: needs a CUDA GPU (inline PTX)")
def test_e2m1_word_decoder_ptx_every_byte():
    """`_e2m1_word_f32_ptx` (PARITY_MOE_MX_PTX): 256 words whose four byte lanes each take all
    256 values (four bijections of the byte) decode bitwise to the contract's E2M1 values in
    element order (element j in bits 4j .. 4j + 3; the subnormal code 1 and -0 included)."""
    from parity.reference.numerics import E2M1_VALUES

    i = torch.arange(256)
    lanes = [i, 255 - i, (i * 7) % 256, (i * 13 + 5) % 256]
    words = sum(b << (8 * j) for j, b in enumerate(lanes))
    w = (words - (words >= 2**31).long() * 2**32).to(torch.int32)  # the same bits as int32
    f = torch.empty(512 * 8, dtype=torch.float32, device=DEVICE)
    _e2m1_word_kernel[(1,)](w.to(DEVICE), f)
    codes = torch.stack([(words >> (4 * j)) & 15 for j in range(8)], 1)  # [256, 8]
    mag = torch.tensor(E2M1_VALUES, dtype=torch.float32)[codes & 7]
    want = torch.where(codes >= 8, -mag, mag)
    got = f.cpu().view(256, 2, 8)
    assert torch.equal(_bits(got[:, 0]), _bits(want)) and torch.equal(_bits(got[:, 1]), _bits(want))


@pytest.mark.parametrize("mode", [1, 2], ids=["bf16-act", "f32-act"])
def test_decode_mxfp4_ptx(mode, decode_calls, gemm_flags, monkeypatch):
    """PARITY_MOE_MX_PTX (the T 1 GEMV on words, decoded in PTX): the same exact products, so
    bitwise the sorted path where every float32 sum is exact and close elsewhere; on a GPU its
    GEMV launches carry the flag, the dot tile's not; under the interpreter (no inline
    assembly) none does and the byte GEMV runs as before. Mode 2 also hands the GEMV its
    activations in float32 (an exact conversion): the same bits again."""
    monkeypatch.setattr(dec, "_MX_PTX", mode)
    _mx_like_sorted(1, 43, _dcfg(1, 2, bk=64))
    _mx_run(_mx_inputs(5, 96, 32, 3, 2, seed=44, exact=True), _dcfg(16, 2, bk=64), DSV4)
    on = int(DEVICE == "cuda")
    assert decode_calls() == 3 and gemm_flags("MX_PTX") == [on] * 4 + [0, 0]


@triton.jit
def _bf16_bits_kernel(p_ptr, out_ptr):
    offs = tl.arange(0, 256)
    packed = tl.load(p_ptr + offs)
    lo, hi = kern._e2m1_pair_bits(packed, 22, 0x81C0)
    tl.store(out_ptr + offs, (lo & 0xFFFF) | (hi << 16))
    tl.store(out_ptr + 256 + offs, kern._e2m1_pair_bf16_bits(packed))


def test_e2m1_pair_bf16_bits_every_byte():
    """`_e2m1_pair_bf16_bits` (PARITY_MOE_MX_BF16_MUL=2): on all 256 bytes the same two
    bfloat16 patterns as `_e2m1_pair_bits(packed, 22, 0x81C0)` (BF16_MUL 1, whose values the
    GPU test above checks against the contract), low nibble in bits 0..15, high in 16..31.
    Integer work only, so it runs in the interpreter too."""
    p = torch.arange(256, dtype=torch.uint8, device=DEVICE)
    out = torch.empty(512, dtype=torch.int32, device=DEVICE)
    _bf16_bits_kernel[(1,)](p, out)
    want, got = out[:256].cpu(), out[256:].cpu()
    assert torch.equal(got, want)
    assert int(want[1]) & 0xFFFF == 0x0040 and int(want[0x90]) >> 16 & 0xFFFF == 0x8040  # +-0.5
