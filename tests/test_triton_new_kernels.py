"""Kernel-specific tests of parity's Triton fp8_block_quant, mxfp4_quant and route: exhaustive
bfloat16 inputs for the quantizers (codes and scales bit-exact), both kernel paths of
fp8_block_quant, and the route tie rules. The generic properties (matches_reference,
error_parity, NaN policy, ...) run for every implementation in tests/test_properties.py and are
not repeated here.

Without a CUDA GPU the kernels run in the Triton interpreter (set before triton loads).
"""

import pytest
import torch

pytest.importorskip("triton")

from parity import reference as ref
from parity.optimized.triton import _kernels_fp8_block_quant as kb
from parity.optimized.triton import _kernels_mxfp4_quant as km
from parity.optimized.triton.fp8_block_quant import fp8_block_quant
from parity.optimized.triton.mxfp4_quant import mxfp4_quant
from parity.optimized.triton.route import route

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _all_bf16() -> torch.Tensor:
    """Every bfloat16 bit pattern (NaNs, infinities, subnormals, both zeros), 65536 values."""
    return torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)


def _same_fp8(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise, except that both E4M3 NaN codes (0x7F, 0xFF) count as equal."""
    a, b = a.view(torch.uint8), b.view(torch.uint8)
    nan = (a & 0x7F) == 0x7F
    return torch.equal(nan, (b & 0x7F) == 0x7F) and torch.equal(a[~nan], b[~nan])


def _same_f32(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise, every NaN equal to every NaN."""
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(
        a[~nan].view(torch.int32), b[~nan].view(torch.int32)
    )


# --- mxfp4_quant --------------------------------------------------------------------------------


@pytest.fixture(params=[False, True], ids=["compares", "bits"])
def mx_codes(request, monkeypatch):
    """Both E2M1 encoders of the mxfp4_quant kernels (`TILE["bits"]`)."""
    monkeypatch.setitem(km.TILE, "bits", request.param)
    return request.param


@pytest.mark.parametrize("rounding", ["floor", "ceil"])
def test_mxfp4_quant_every_bf16_value(rounding, mx_codes):
    # each block of 32 consecutive patterns, then the same values shuffled into other blocks
    x = _all_bf16()
    perm = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))
    for v in (x, x[perm]):
        v = v.reshape(64, 1024).to(DEV)
        got = mxfp4_quant(v, scale_rounding=rounding)
        want = ref.mxfp4_quant(v.cpu(), scale_rounding=rounding)
        assert torch.equal(got[1].cpu(), want[1])
        nan_block = (want[1] == 255).repeat_interleave(16, dim=-1)
        assert torch.equal(got[0].cpu()[~nan_block], want[0][~nan_block])
        assert not got[0].cpu()[nan_block].any()  # NaN blocks: codes 0


def test_mxfp4_quant_nibble_order_and_midpoints(mx_codes):
    # element 2i in the low nibble; midpoints go to the even code: 0.25 -> 0, 0.75 -> 2 (1.0),
    # 1.25 -> 2, 1.75 -> 4 (2.0), 2.5 -> 4, 3.5 -> 6 (4.0), 5 -> 6, 7 -> 7 (saturates at 6)
    vals = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.0, -6.0]
    x = torch.zeros(32)
    x[: len(vals)] = torch.tensor(vals)
    x[31] = 4.0  # amax 7 -> floor: e = floor(log2 7) - 2 = 0
    p, s = mxfp4_quant(x.to(DEV))
    assert int(s) == 127
    codes = torch.stack((p.cpu() & 15, p.cpu() >> 4), -1).flatten()
    assert codes[:10].tolist() == [0, 2, 2, 4, 4, 6, 6, 7, 8, 15]


@pytest.mark.parametrize("rounding", ["floor", "ceil"])
def test_mxfp4_quant_float32_around_every_midpoint(rounding, mx_codes):
    """float32 y one ulp either side of each E2M1 midpoint and of 1 (blocks with amax 6: e = 0
    under both roundings, y = x), and of 6 and 7 up to just below 8 (amax 8 - ulp: e = 0 under
    floor, 1 under ceil), at several block exponents: the bits encoder's rounding edges."""

    def around(edges):
        e = torch.tensor(edges)
        return torch.cat((e, torch.nextafter(e, e + 1), torch.nextafter(e, e - 1)))

    low = torch.cat((around([0.25, 0.75, 1.0, 1.25, 1.75, 2.5, 3.5, 5.0]), torch.tensor([0.0])))
    high = around([6.0, 7.0])
    below8 = torch.nextafter(torch.tensor(8.0), torch.tensor(0.0))
    rows = []
    for vals, amax in ((low, 6.0), (high, float(below8))):
        row = torch.zeros(2, 32)
        row[0, : len(vals)], row[1, : len(vals)] = vals, -vals
        row[:, 31] = amax
        for s_exp in (-130, -20, 0, 5, 120):
            rows.append(row * 2.0**s_exp)
    x = torch.cat(rows).to(DEV)
    got = mxfp4_quant(x, scale_rounding=rounding)
    want = ref.mxfp4_quant(x.cpu(), scale_rounding=rounding)
    assert torch.equal(got[1].cpu(), want[1])
    assert torch.equal(got[0].cpu(), want[0])
    if rounding == "floor":  # the blocks at 2**0 have e = 0 (scale code 127): y is x itself
        assert int(want[1][4]) == 127 and int(want[1][14]) == 127


# --- fp8_block_quant ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["fp32", "ue8m0"])
def test_fp8_block_quant_every_bf16_value(fmt):
    x = _all_bf16()
    perm = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(1))
    w = torch.stack((x, x[perm])).reshape(2, 256, 256).to(DEV)
    q, s = fp8_block_quant(w, block_shape=(128, 128), scale_format=fmt)
    q2, s2 = ref.fp8_block_quant(w.cpu(), block_shape=(128, 128), scale_format=fmt)
    assert _same_f32(s.cpu(), s2)
    assert _same_fp8(q.cpu(), q2)


@pytest.mark.parametrize("block_shape", [(128, 128), (48, 80)])
def test_fp8_block_quant_two_pass_path_equals_tile_path(block_shape, monkeypatch):
    # partial edge blocks in both dims, two leading dims, bf16 subnormals (the interpreter's
    # bf16 -> f32 cast gets those wrong; the kernels read bf16 by its bits)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(2, 3, 130, 77, generator=g) * torch.exp2(
        torch.randint(-135, 20, (77,), generator=g)
    )
    w = w.to(torch.bfloat16).to(DEV)
    want = ref.fp8_block_quant(w.cpu(), block_shape=block_shape, scale_format="fp32")
    tile = fp8_block_quant(w, block_shape=block_shape)
    monkeypatch.setattr(kb, "MAX_TILE", 0)  # every block through the two-pass kernel
    monkeypatch.setitem(kb.TILE, "chunk", 1024)  # several chunks a block (8 rows each)
    loop = fp8_block_quant(w, block_shape=block_shape)
    for got in (tile, loop):
        assert _same_fp8(got[0].cpu(), want[0])
        assert _same_f32(got[1].cpu(), want[1])


@pytest.mark.parametrize("block_shape", [(128, 128), (48, 80), (16, 16)])
def test_fp8_block_quant_column_first_grid_is_the_same_quantization(block_shape, monkeypatch):
    """`TILE["cols_first"]` (one flat grid, a block row's column groups fastest; 16 x 16 blocks
    put 32 of them in a program) only reorders the programs: codes and scales bit for bit."""
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(3, 70, 300, generator=g) * 3).to(torch.bfloat16).to(DEV)
    want = ref.fp8_block_quant(w.cpu(), block_shape=block_shape, scale_format="ue8m0")
    monkeypatch.setitem(kb.TILE, "cols_first", True)
    assert kb.plan(
        experts=3, rows=70, cols=300, block_shape=block_shape, ue8m0=True, native_fp8=False
    )[2]["COLS_FIRST"]  # fmt: skip
    got = fp8_block_quant(w, block_shape=block_shape, scale_format="ue8m0")
    assert _same_fp8(got[0].cpu(), want[0])
    assert _same_f32(got[1].cpu(), want[1])


# --- route --------------------------------------------------------------------------------------


def _sorted(w, ids):
    ids, order = ids.cpu().sort(-1)
    return w.cpu().gather(1, order), ids


def test_route_ties_go_to_the_lower_expert():
    # softmax: equal logits, +0.0 and -0.0 tie; dsv3: equal keys and equal groups
    x = torch.zeros(3, 16)
    x[1, ::2] = -0.0
    x[2] = torch.tensor([1.0, 2.0, 2.0, 1.0] * 4)
    _, ids = route(x.to(DEV), k=3)
    assert ids.cpu().sort(-1).values.tolist() == [[0, 1, 2], [0, 1, 2], [1, 2, 5]]
    b = torch.zeros(16)
    _, ids = route(x.to(DEV), k=2, method="dsv3", bias=b.to(DEV), n_group=4, topk_group=1)
    # row 2: all four groups score 2 s(2); group 0 wins, its two best are experts 1 and 2
    assert ids.cpu().sort(-1).values.tolist() == [[0, 1], [0, 1], [1, 2]]


@pytest.mark.parametrize("method", ["dsv3", "sqrtsoftplus"])
def test_route_very_negative_logits_and_nan_rows(method):
    g = torch.Generator().manual_seed(3)
    x = -torch.rand(4, 32, generator=g) * 200 - 50  # scores underflow far below the bias spread
    x[2, 5] = float("nan")
    x[3] = float("-inf")
    b = torch.randn(32, generator=g)
    w, ids = route(x.to(DEV), k=4, method=method, bias=b.to(DEV), n_group=1, topk_group=1)
    w2, ids2 = ref.route(x, k=4, method=method, bias=b, n_group=1, topk_group=1)
    assert ids.cpu()[[0, 1, 3]].sort(-1).values.equal(ids2[[0, 1, 3]].sort(-1).values)
    assert w.cpu()[2].isnan().all() and len(set(ids.cpu()[2].tolist())) == 4
    assert torch.equal(w.cpu().isnan(), w2.isnan())


@pytest.mark.parametrize(
    "e, n_group, topk_group, k",
    [(256, 8, 4, 8), (256, 16, 5, 8), (160, 8, 3, 6), (384, 1, 1, 8)],
)
def test_route_grouped_matches_reference_ids(e, n_group, topk_group, k):
    # DeepSeek-V3's shape, and what FlashInfer's kernel cannot do (16 groups, 5 kept groups,
    # groups of 20 experts, 384 experts): bf16 logits, so the keys are far apart from ties
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, e, generator=g).to(torch.bfloat16)
    b = torch.randn(e, generator=g) * 0.01
    kw = dict(k=k, method="dsv3", bias=b, n_group=n_group, topk_group=topk_group)
    kw["routed_scaling_factor"] = 2.5
    w, ids = route(x.to(DEV), **{**kw, "bias": b.to(DEV)})
    w2, ids2 = ref.route(x, **kw)
    w, ids = _sorted(w, ids)
    w2, ids2 = _sorted(w2, ids2)
    assert torch.equal(ids, ids2)
    # weights: a few float32 roundings of sigmoid and the renormalization (route tolerance)
    assert torch.allclose(w, w2, rtol=64 * 2.0**-24, atol=0)


def test_variants_env_names_each_variant_and_refuses_unknown_names(monkeypatch):
    """PARITY_TRITON_VARIANTS turns the timed-before-default kernel variants on (a GPU suite
    runs with them); a misspelt name raises rather than run the shipped kernels as the variant."""
    from parity.optimized.triton import _caps

    monkeypatch.delenv(_caps.VARIANTS_ENV, raising=False)
    assert not any(_caps.variant_on(v) for v in _caps.VARIANTS)
    monkeypatch.setenv(_caps.VARIANTS_ENV, " fast_sigmoid ,")
    assert _caps.variant_on("fast_sigmoid")
    assert not _caps.variant_on("fp8_block_cols_first")
    monkeypatch.setenv(_caps.VARIANTS_ENV, "all")
    assert all(_caps.variant_on(v) for v in _caps.VARIANTS)
    monkeypatch.setenv(_caps.VARIANTS_ENV, "fast_sigmoi")
    with pytest.raises(ValueError, match="fast_sigmoi"):
        _caps.variant_on("fast_sigmoid")
    with pytest.raises(ValueError, match="unknown kernel variant"):
        _caps.variant_on("nope")
