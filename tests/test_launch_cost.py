"""Launch cost (issue 11, section 3): the Triton wrappers and TileLang's mhc_post validate once
per call signature and launch from a cached plan. These tests hold the cache to the contract:
a plan is reused only for an equal signature, a bad input is never cached (it raises on every
call, also after a valid call whose key it nearly shares), the plans launch exactly what the
kernel modules' `launch_*` functions launch (same grid, constexprs and warps), the environment
and tile settings a plan depends on are in its key, and on CUDA the direct launch (the compiled
kernel's launcher, after the first call) gives the normal launch's bits.
"""

import os

import pytest
import torch

pytest.importorskip("triton")

from parity import reference as ref
from parity.optimized.triton import (
    _kernels_fp8_block_quant,
    _kernels_mxfp4_quant,
    _kernels_quant,
    _kernels_swiglu,
    _launch,
    fp8_block_quant,
    mxfp4_quant,
    quant,
    swiglu,
)
from parity.optimized.triton._caps import native_fp8_ok

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


class Recorder:
    """A `triton.jit` object that records each launch: (grid, args, constexprs, options)."""

    def __init__(self, real):
        self.arg_names = real.arg_names
        self.calls = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            opts = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
            self.calls.append((tuple(grid) + (1,) * (3 - len(grid)), args, kwargs, opts))

        return launch


def _x(*shape, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 3).to(dtype).to(DEV)


@pytest.fixture
def fresh(monkeypatch):
    """Empty plan caches for this test (plans made elsewhere hold the real kernels)."""
    monkeypatch.setattr(swiglu, "_PLANS", {})
    monkeypatch.setattr(quant, "_PLANS", {})
    monkeypatch.setattr(mxfp4_quant, "_PLANS", {})
    monkeypatch.setattr(fp8_block_quant, "_PLANS", {})


def _counting(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(module, name, counted)
    return calls


# --- the cache: once per signature, never for a bad input -----------------------------------


def test_swiglu_validates_once_per_signature(fresh, monkeypatch):
    calls = _counting(monkeypatch, swiglu, "validate_swiglu")
    x = _x(2, 64)
    a = swiglu.swiglu(x, alpha=1.5)
    b = swiglu.swiglu(x.clone(), alpha=1.5)  # same signature, other data
    assert len(calls) == 1 and torch.equal(a, b)
    swiglu.swiglu(x, alpha=1.5, beta=0.25)
    swiglu.swiglu(x.float(), alpha=1.5)
    swiglu.swiglu(_x(3, 64), alpha=1.5)
    assert len(calls) == 4  # options, dtype, shape: each a new signature


@pytest.mark.parametrize(
    "bad, kind",
    [
        (dict(alpha=True), TypeError),  # == 1 and hash(True) == hash(1): the key holds the type
        (dict(alpha=float("nan")), ValueError),
        (dict(limit=-1.0), ValueError),
        (dict(layout="Concat"), ValueError),
        (dict(clamp_mode=None), ValueError),
        (dict(beta=[0.0]), TypeError),  # unhashable: the key cannot hold it, validated
    ],
)
def test_swiglu_bad_option_raises_after_good_call(fresh, bad, kind):
    x = _x(2, 64)
    swiglu.swiglu(x, alpha=1, limit=1.0)  # the neighbouring valid signature is cached
    for _ in range(2):  # and a bad one is never stored
        with pytest.raises(kind, match="swiglu"):
            swiglu.swiglu(x, **{**dict(alpha=1, limit=1.0), **bad})


def test_swiglu_bad_tensor_raises_after_good_call(fresh):
    x = _x(2, 64)
    swiglu.swiglu(x)
    for bad, kind in [
        (_x(2, 63), ValueError),
        (x.to(torch.int32), TypeError),
        (x.tolist(), TypeError),
        (_x(2, 64, dtype=torch.float64), TypeError),
    ]:
        for _ in range(2):
            with pytest.raises(kind, match="swiglu"):
                swiglu.swiglu(bad)


def test_swiglu_signed_zero_option_is_this_calls(fresh):
    """0.0 and -0.0 share a plan (equal keys); the kernel must still get this call's beta:
    up + beta is -0.0 only for up = -0.0 and beta = -0.0."""
    x = torch.zeros(1, 64, dtype=torch.float32, device=DEV)
    x[0, 32:] = -0.0
    x[0, :32] = 1.0
    pos = swiglu.swiglu(x, beta=0.0)
    neg = swiglu.swiglu(x, beta=-0.0)
    assert not torch.signbit(pos).any() and torch.signbit(neg).all()


def test_quant_bad_inputs_raise_after_good_call(fresh):
    x = _x(2, 256)
    quant.fp8_quant(x, group_size=1)
    with pytest.raises(TypeError, match="group_size"):
        quant.fp8_quant(x, group_size=True)
    quant.fp8_quant(x, column_major_scales=False)
    with pytest.raises(TypeError, match="column_major_scales"):
        quant.fp8_quant(x, column_major_scales=0)
    with pytest.raises(ValueError, match="eps"):
        quant.fp8_quant(x, eps=-1e-10)
    quant.silu_mul_fp8_quant(x, group_size=64, limit=7.0)
    with pytest.raises(ValueError, match="group_size"):
        quant.silu_mul_fp8_quant(x, group_size=256, limit=7.0)
    with pytest.raises(ValueError, match="limit"):
        quant.silu_mul_fp8_quant(x, group_size=64, limit=float("inf"))
    p, s = ref.mxfp4_quant(_x(2, 64).float())
    quant.mxfp4_dequant(p, s)
    with pytest.raises(ValueError, match="scales"):
        quant.mxfp4_dequant(p, s[:1])
    with pytest.raises(TypeError, match="dtype"):
        quant.mxfp4_dequant(p, s, dtype=torch.int8)
    with pytest.raises(TypeError, match="packed"):
        quant.mxfp4_dequant(p.to(torch.int16), s)


def test_fp8_plan_follows_the_cast_environment(fresh, monkeypatch):
    """PARITY_TRITON_FP8_CAST is read per call (`_caps`): flipping it must replan, or the
    native-vs-explicit GPU test would compare one path with itself."""
    rec = Recorder(_kernels_quant._fp8_quant_kernel)
    monkeypatch.setattr(_kernels_quant, "_fp8_quant_kernel", rec)
    x = _x(4, 256)
    seen = []
    for mode in ("explicit", "native", "explicit"):
        monkeypatch.setenv("PARITY_TRITON_FP8_CAST", mode)
        quant.fp8_quant(x)
        seen.append(rec.calls[-1][2]["NATIVE_FP8"])
    assert seen == [False, True, False]


def test_plans_follow_the_tile_settings(fresh, monkeypatch):
    """scripts/sweep_tiles.py changes `_kernels_quant.TILE` and `_kernels_swiglu._blocks`
    between calls: each change must reach the launch."""
    rec = Recorder(_kernels_quant._fp8_quant_kernel)
    monkeypatch.setattr(_kernels_quant, "_fp8_quant_kernel", rec)
    monkeypatch.setitem(_kernels_quant.TILE, "warps", None)
    x = _x(64, 1024)
    quant.fp8_quant(x)
    monkeypatch.setitem(_kernels_quant.TILE, "warps", 16)
    quant.fp8_quant(x)
    assert [c[3]["num_warps"] for c in rec.calls] == [4, 16]

    srec = Recorder(_kernels_swiglu._swiglu_kernel)
    monkeypatch.setattr(_kernels_swiglu, "_swiglu_kernel", srec)
    swiglu.swiglu(x)
    real = _kernels_swiglu._blocks
    monkeypatch.setattr(_kernels_swiglu, "_blocks", lambda r, c, t: (*real(r, c, t)[:2], 2))
    swiglu.swiglu(x)
    assert [c[3]["num_warps"] for c in srec.calls][-2:] == [8, 2]


def test_mxfp4_quant_validates_once_and_never_caches_a_bad_input(fresh, monkeypatch):
    calls = _counting(monkeypatch, mxfp4_quant, "validate_mxfp4_quant")
    x = _x(2, 64)
    a = mxfp4_quant.mxfp4_quant(x)
    b = mxfp4_quant.mxfp4_quant(x.clone())
    assert len(calls) == 1 and all(torch.equal(u, v) for u, v in zip(a, b))
    mxfp4_quant.mxfp4_quant(x, scale_rounding="ceil")
    mxfp4_quant.mxfp4_quant(_x(3, 64))
    assert len(calls) == 3
    for bad, kind in [
        (dict(block=16), ValueError),
        (dict(block=32.0), TypeError),
        (dict(scale_rounding="Floor"), ValueError),
    ]:
        for _ in range(2):
            with pytest.raises(kind):
                mxfp4_quant.mxfp4_quant(x, **bad)
    for _ in range(2):
        with pytest.raises(ValueError):
            mxfp4_quant.mxfp4_quant(_x(2, 48))


def test_fp8_block_quant_validates_once_and_never_caches_a_bad_input(fresh, monkeypatch):
    calls = _counting(monkeypatch, fp8_block_quant, "validate_fp8_block_quant")
    w = _x(2, 40, 72)
    a = fp8_block_quant.fp8_block_quant(w, block_shape=(32, 64))
    b = fp8_block_quant.fp8_block_quant(w.clone(), block_shape=[32, 64])  # a list: own key
    c = fp8_block_quant.fp8_block_quant(w.clone(), block_shape=(32, 64))
    assert len(calls) == 2 and all(torch.equal(u, v) for u, v in zip(a, c))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    for bad, kind in [
        (dict(block_shape=(True, 64)), TypeError),  # == (1, 64): the key holds the types
        (dict(block_shape=(32.0, 64)), TypeError),
        (dict(block_shape=(0, 64)), ValueError),
        (dict(scale_format="UE8M0"), ValueError),
    ]:
        for _ in range(2):
            with pytest.raises(kind):
                fp8_block_quant.fp8_block_quant(w, **{**dict(block_shape=(32, 64)), **bad})


@pytest.mark.parametrize(
    "shape, block",
    [((1, 7168), (128, 128)), ((3, 200, 300), (128, 128)), ((2, 40, 72), (32, 64)),
     ((300, 260), (256, 256)), ((5, 9), (1, 1))],
)  # fmt: skip
def test_fp8_block_plan_matches_launch_function(fresh, monkeypatch, shape, block):
    """The wrapper's plan launches what `_kernels_fp8_block_quant.launch` launches, on the
    one-tile path and the two-pass loop (256 x 256 blocks)."""
    w = _x(*shape)
    rows, cols = shape[-2:]
    experts = w.numel() // (rows * cols)
    nr, nc = -(-rows // block[0]), -(-cols // block[1])
    for name in ("_tile_kernel", "_loop_kernel"):
        _record(monkeypatch, _kernels_fp8_block_quant, name)
    for ue8m0 in (False, True):
        q = torch.empty(w.shape, dtype=torch.float8_e4m3fn, device=DEV)
        s = torch.empty(experts, nr, nc, dtype=torch.float32, device=DEV)
        _kernels_fp8_block_quant.launch(
            w, q, s, experts=experts, rows=rows, cols=cols, block_shape=block, eps=1e-4,
            ue8m0=ue8m0, native_fp8=native_fp8_ok(w.device),
        )  # fmt: skip
        fp8_block_quant.fp8_block_quant(
            w, block_shape=block, scale_format="ue8m0" if ue8m0 else "fp32"
        )
    calls = (
        _kernels_fp8_block_quant._tile_kernel.calls + _kernels_fp8_block_quant._loop_kernel.calls
    )
    assert len(calls) == 4
    for (g0, a0, c0, o0), (g1, a1, c1, o1) in (calls[0:2], calls[2:4]):
        assert (g0, c0, o0) == (g1, c1, o1) and a0[3:] == a1[3:]


# --- the plans launch what launch_* launches ------------------------------------------------

SHAPES = [(1, 256), (3, 256), (16, 1024), (33, 4096), (1, 7168), (200, 512)]


def _record(monkeypatch, module, name):
    rec = Recorder(getattr(module, name))
    monkeypatch.setattr(module, name, rec)
    return rec


@pytest.mark.parametrize("shape", SHAPES)
def test_plan_matches_launch_functions(fresh, monkeypatch, shape):
    m, k = shape
    x = _x(m, k)
    for opts in (
        dict(),
        dict(limit=2.0, clamp_mode="post", layout="interleaved", alpha=1.7, beta=1.0),
    ):
        rec = _record(monkeypatch, _kernels_swiglu, "_swiglu_kernel")
        _kernels_swiglu.launch_swiglu(
            x,
            torch.empty(m, k // 2, dtype=x.dtype, device=DEV),
            m,
            k // 2,
            limit=opts.get("limit"),
            alpha=opts.get("alpha", 1.0),
            beta=opts.get("beta", 0.0),
            interleaved=opts.get("layout") == "interleaved",
            post=opts.get("clamp_mode") == "post",
        )
        swiglu.swiglu(x, **opts)
        (g0, a0, c0, o0), (g1, a1, c1, o1) = rec.calls
        assert (g0, c0, o0) == (g1, c1, o1) and a0[2:] == a1[2:]

    for g, opts in ((128, dict()), (64, dict(scale_format="ue8m0", column_major_scales=True))):
        rec = _record(monkeypatch, _kernels_quant, "_fp8_quant_kernel")
        q = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=DEV)
        s = torch.empty(m, k // g, dtype=torch.float32, device=DEV)
        _kernels_quant.launch_fp8_quant(
            x,
            q,
            s,
            group_size=g,
            eps=1e-10,
            ue8m0=opts.get("scale_format") == "ue8m0",
            column_major=opts.get("column_major_scales", False),
            native_fp8=native_fp8_ok(x.device),
        )
        quant.fp8_quant(x, group_size=g, **opts)
        (g0, a0, c0, o0), (g1, a1, c1, o1) = rec.calls
        assert (g0, c0, o0) == (g1, c1, o1) and a0[3:] == a1[3:]

        rec = _record(monkeypatch, _kernels_quant, "_silu_mul_fp8_quant_kernel")
        n = k // 2
        if n % g:
            continue
        q = torch.empty(m, n, dtype=torch.float8_e4m3fn, device=DEV)
        s = torch.empty(m, n // g, dtype=torch.float32, device=DEV)
        _kernels_quant.launch_silu_mul_fp8_quant(
            x,
            q,
            s,
            group_size=g,
            limit=3.0,
            post=True,
            eps=1e-10,
            ue8m0=opts.get("scale_format") == "ue8m0",
            column_major=opts.get("column_major_scales", False),
            native_fp8=native_fp8_ok(x.device),
        )
        quant.silu_mul_fp8_quant(x, group_size=g, limit=3.0, clamp_mode="post", **opts)
        (g0, a0, c0, o0), (g1, a1, c1, o1) = rec.calls
        assert (g0, c0, o0) == (g1, c1, o1) and a0[3:] == a1[3:]

    for ceil, pairs in ((False, False), (True, False), (False, True), (True, True)):
        monkeypatch.setitem(_kernels_mxfp4_quant.TILE, "pairs", pairs)  # both kernels
        recs = [
            _record(monkeypatch, _kernels_mxfp4_quant, n)
            for n in ("_mxfp4_quant_kernel", "_mxfp4_quant_pairs_kernel")
        ]
        p = torch.empty(m, k // 2, dtype=torch.uint8, device=DEV)
        s = torch.empty(m, k // 32, dtype=torch.uint8, device=DEV)
        _kernels_mxfp4_quant.launch(x, p, s, rows=m, k=k, ceil=ceil)
        mxfp4_quant.mxfp4_quant(x, scale_rounding="ceil" if ceil else "floor")
        ((g0, a0, c0, o0), (g1, a1, c1, o1)) = recs[0].calls + recs[1].calls
        assert len(recs[int(pairs)].calls) == 2
        assert (g0, c0, o0) == (g1, c1, o1) and a0[3:] == a1[3:]
        assert a0[0].dtype == a1[0].dtype == (torch.int32 if pairs else x.dtype)

    rec = _record(monkeypatch, _kernels_quant, "_mxfp4_dequant_kernel")
    p, s = ref.mxfp4_quant(x.float())
    _kernels_quant.launch_mxfp4_dequant(p, s, torch.empty(m, k, device=DEV), m, k)
    quant.mxfp4_dequant(p, s, dtype=torch.float32)
    (g0, a0, c0, o0), (g1, a1, c1, o1) = rec.calls
    assert (g0, c0, o0) == (g1, c1, o1) and a0[3:] == a1[3:]


def test_launch_rejects_constexprs_before_runtime_args():
    rec = Recorder(_kernels_swiglu._swiglu_kernel)
    with pytest.raises(ValueError, match="last parameters"):
        _launch.Launch(
            rec,
            (1,),
            dict(x_ptr=1, POST=False, INTERLEAVED=False, BLOCK_R=1, BLOCK_N=1),
        )


@pytest.mark.parametrize("name", ["PARITY_LAUNCH_COST_PROBE", "TRITON_INTERPRET"])
def test_env_reads_like_os_environ(monkeypatch, name):
    monkeypatch.delenv(name, raising=False)
    assert _launch.env(name) is None
    for value in ("1", "", "é x"):
        monkeypatch.setenv(name, value)
        assert _launch.env(name) == os.environ.get(name) == value


# --- CUDA: the direct launch ----------------------------------------------------------------


def _cuda_only():
    if not CUDA:
        pytest.skip("NOT RUN: needs CUDA (the direct launch exists only for compiled kernels)")


def test_direct_launch_bits_equal_normal_launch():
    """After the first call of a signature the plan holds the compiled kernel and later calls
    take the direct path; their outputs must be bitwise those of the first (normal) launch, for
    every wrapper, on fresh inputs each time (no stale pointer reuse)."""
    _cuda_only()
    calls = {
        "swiglu": lambda x: (swiglu.swiglu(x, limit=5.0, beta=0.5),),
        "fp8_quant": lambda x: quant.fp8_quant(x, scale_format="ue8m0"),
        "silu_mul_fp8_quant": lambda x: quant.silu_mul_fp8_quant(x, column_major_scales=True),
        "mxfp4_dequant": lambda x: (quant.mxfp4_dequant(*ref.mxfp4_quant(x.float())),),
    }
    for op, f in calls.items():
        for t in (1, 37):
            xs = [_x(t, 1024, seed=s) for s in range(3)]
            swiglu._PLANS.clear()
            quant._PLANS.clear()
            first = [f(x) for x in xs]  # the first call is the normal launch, then direct
            plans = list(swiglu._PLANS.values()) + list(quant._PLANS.values())
            launches = [p[-1][0] if isinstance(p[-1], tuple) else None for p in plans]
            assert any(la is not None and la.direct is not None for la in launches), op
            again = [f(x) for x in xs]
            torch.cuda.synchronize()
            for a, b in zip(first, again):
                for u, v in zip(a, b):
                    # bits, any strides (column-major scales): same-size integer views
                    it = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[u.element_size()]
                    assert torch.equal(u.view(it), v.view(it)), op


def test_direct_launch_unaligned_input_takes_normal_launch():
    """A contiguous input at an odd offset (not 16-byte aligned) must not use the kernel
    compiled for aligned pointers: it takes the normal launch and stays exact."""
    _cuda_only()
    swiglu._PLANS.clear()
    base = _x(1, 4096 + 1, dtype=torch.float32)
    x = _x(1, 4096, dtype=torch.float32)
    swiglu.swiglu(x)
    swiglu.swiglu(x)  # the direct path is armed
    odd = base[:, 1:]
    assert odd.is_contiguous() and odd.data_ptr() % 16
    with ref.precision("float64", round_output=False):
        want = ref.swiglu(odd)
    got = swiglu.swiglu(odd)
    assert (got.double() - want).abs().max().item() <= 1e-5 * want.abs().max().item()


# --- TileLang mhc_post: the same cache (its kernel stubbed: TileLang runs on CUDA only) ----------


@pytest.mark.parametrize("dyn", [True, False], ids=["dynamic_h", "per_h"])
def test_mhc_post_validates_once_and_never_caches_a_bad_input(dyn, monkeypatch):
    from parity.optimized.tilelang import mhc

    monkeypatch.setattr(mhc, "DYN_H", [dyn])  # the default kernel, and PARITY_TILELANG_DYN_H=0's

    launched = []

    class KM:
        @staticmethod
        def get(name, **spec):
            return lambda *args: launched.append((name, spec, args))

    monkeypatch.setattr(mhc, "_POST_PLANS", {})
    monkeypatch.setattr(mhc, "_km", lambda: KM)
    monkeypatch.setattr(mhc, "_cuda", lambda op, t: None)
    calls = _counting(monkeypatch, mhc, "validate_mhc_post")
    t, hc, h = 2, 4, 64
    x, res = _x(t, h), _x(t, hc, h)
    post, comb = _x(t, hc, 1, dtype=torch.float32), _x(t, hc, hc, dtype=torch.float32)
    for _ in range(3):
        out = mhc.mhc_post(x, res, post, comb)
    assert len(calls) == 1 and len(launched) == 3 and out.shape == (t, hc, h)
    if dyn:  # the hidden size dynamic, keyed by its vector width (64: 8)
        assert launched[0][:2] == ("post_dyn", dict(hc=hc, vec=8, xdt="bfloat16", rdt="bfloat16"))
        assert launched[0][2][0].shape == (t, h // 8, 8)  # x as [T, H / vec, vec]
    else:
        assert launched[0][:2] == ("post", dict(hc=hc, H=h, xdt="bfloat16", rdt="bfloat16"))
        assert launched[0][2][0].shape == (t, h)
    assert launched[0][2][2].shape == (t, hc)  # post_mix as [T, hc]
    bad = [
        ((x, res, post, comb.double()), TypeError),
        ((x, res, post[:1], comb), ValueError),
        ((x.float()[:, :32], res, post, comb), ValueError),
        ((x, res, post.tolist(), comb), TypeError),
    ]
    for args, kind in bad:
        for _ in range(2):
            with pytest.raises(kind, match="mhc_post"):
                mhc.mhc_post(*args)
    assert len(launched) == 3
    wide = _x(t, 17, h)
    with pytest.raises(NotImplementedError, match="hc=17"):
        mhc.mhc_post(x, wide, _x(t, 17, 1, dtype=torch.float32), _x(t, 17, 17, dtype=torch.float32))


# --- the direct launch's bookkeeping, with a stand-in compiled kernel (runs on the CPU) ----------


class FakeCompiled:
    """What triton's normal launch returns: `run` (the launcher), `function`, metadata."""

    def __init__(self, log):
        self.log = log
        self.function = None
        self.packed_metadata = "META"

    @property
    def run(self):
        self.function = "FN"  # as CompiledKernel.run: loading the module sets the handle
        return lambda *a: self.log.append(("direct", a))


class FakeKernel:
    arg_names = ("x_ptr", "y_ptr", "n", "eps", "A", "B")

    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append(("normal", grid, args, kwargs))
            return FakeCompiled(self.log)

        return launch


class FakeTensor(torch.Tensor):
    """A tensor whose data_ptr is chosen (alignment) and whose device index is 3."""

    @staticmethod
    def __new__(cls, ptr):
        t = torch.empty(0).as_subclass(cls)
        t.ptr = ptr
        return t

    def data_ptr(self):
        return self.ptr

    @property
    def device(self):
        return torch.device("cuda", 3)


def test_direct_launch_bookkeeping(monkeypatch):
    """The direct call gets what JITFunction.run passes: the grid padded to 3, this device's
    stream, the function handle and packed metadata, no launch metadata or hooks, then the
    runtime arguments and the constexprs in parameter order. Unaligned pointers and launch
    hooks take the normal launch; an unaligned first launch does not arm the direct path."""
    hooks = type("R", (), {"launch_enter_hook": None, "launch_exit_hook": None})()
    knobs = type("K", (), {"runtime": hooks})()
    monkeypatch.setattr(_launch, "_triton_runtime", lambda: (knobs, lambda dev: f"S{dev}"))
    k = FakeKernel()
    run = _launch.Launch(k, (5,), dict(B=2, A=1), num_warps=4)
    a, b, odd = FakeTensor(4096), FakeTensor(8192), FakeTensor(4100)
    run(odd, b, 7, 0.5)  # unaligned first launch: normal, not armed
    assert run.direct is None and k.log[-1] == ("normal", (5, 1, 1), (odd, b, 7, 0.5), {
        "B": 2, "A": 1, "num_warps": 4})  # fmt: skip
    run(a, b, 7, 0.5)  # aligned: normal, armed
    assert k.log[-1][0] == "normal" and run.direct is not None
    run(a, b, 7, 0.25)
    assert k.log[-1] == ("direct", (5, 1, 1, "S3", "FN", "META", None, None, None, a, b, 7, 0.25,
                                    1, 2))  # fmt: skip
    run(odd, b, 7, 0.25)
    assert k.log[-1][0] == "normal"
    monkeypatch.setattr(hooks, "launch_enter_hook", print)
    run(a, b, 7, 0.25)
    assert k.log[-1][0] == "normal"


class Chain:
    """triton's HookChain (3.6, 3.9): always present, a hook only when `calls` is non-empty."""

    def __init__(self, *calls):
        self.calls = list(calls)

    def __call__(self, *a):
        for c in self.calls:
            c(*a)


def test_direct_launch_with_empty_hook_chains(monkeypatch):
    """An empty HookChain is no hook: the direct path is armed and taken (taking the chain for
    a hook kept every launch on triton's full path on the H100, 2026-12-05); a chain with a
    hook in it takes the normal launch, before and after arming."""
    hooks = type("R", (), {"launch_enter_hook": Chain(), "launch_exit_hook": Chain()})()
    knobs = type("K", (), {"runtime": hooks})()
    monkeypatch.setattr(_launch, "_triton_runtime", lambda: (knobs, lambda dev: f"S{dev}"))
    k = FakeKernel()
    run = _launch.Launch(k, (5,), dict(B=2, A=1), num_warps=4)
    a, b = FakeTensor(4096), FakeTensor(8192)
    run(a, b, 7, 0.5)
    assert run.direct is not None and run.why == ""
    run(a, b, 7, 0.5)
    assert k.log[-1][0] == "direct"
    monkeypatch.setattr(hooks, "launch_exit_hook", Chain(print))
    run(a, b, 7, 0.5)
    assert k.log[-1][0] == "normal"

    k2 = FakeKernel()
    run2 = _launch.Launch(k2, (5,), dict(B=2, A=1), num_warps=4)
    run2(a, b, 7, 0.5)
    assert run2.direct is None and run2.why == "a launch hook is set"


def test_launch_sites_keep_one_launch_per_signature(monkeypatch):
    """`_launch.launch` (fused_moe's decode path: five or six launches a call): one `Launch` per
    site and signature. A float argument changes nothing (never specialised: the direct path
    goes on); another integer, dtype, grid, constexpr or site is another signature, launched
    normally first; an argument of any other type takes the normal launch and keeps nothing."""
    hooks = type("R", (), {"launch_enter_hook": None, "launch_exit_hook": None})()
    knobs = type("K", (), {"runtime": hooks})()
    monkeypatch.setattr(_launch, "_triton_runtime", lambda: (knobs, lambda dev: f"S{dev}"))
    monkeypatch.setattr(_launch, "_SITES", {})
    k = FakeKernel()
    a, b = torch.zeros(4), torch.zeros(4)

    def go(site="s", grid=(5,), args=(a, b, 7, 0.5), consts=None):
        _launch.launch(site, k, grid, args, consts or dict(B=2, A=1), num_warps=4)
        return k.log[-1][0], len(_launch._SITES)

    assert go() == ("normal", 1)
    assert go(args=(a, b, 7, 0.25)) == ("direct", 1)
    assert k.log[-1][1][-6:] == (a, b, 7, 0.25, 1, 2)  # runtime args, then constexprs in order
    assert go(args=(a, b, 8, 0.25)) == ("normal", 2)
    assert go(args=(a, b, 8, 0.5)) == ("direct", 2)
    assert go(args=(a, b, True, 0.5)) == ("normal", 3)  # True is not 1
    assert go(args=(a.double(), b, 8, 0.5)) == ("normal", 4)
    meta = torch.zeros(4, device="meta")  # another device: another signature (its own function)
    _launch.launch("s", k, (5,), (meta, b, 8, 0.5), dict(B=2, A=1), num_warps=4)
    assert k.log[-1][0] == "normal" and len(_launch._SITES) == 5
    assert go(grid=(6,)) == ("normal", 6)
    assert go(consts=dict(B=3, A=1)) == ("normal", 7)
    assert go(site="t") == ("normal", 8)
    assert go(args=(a, b, None, 0.5)) == ("normal", 8)  # not a plain argument: nothing kept
    assert go(args=(a, b, None, 0.5)) == ("normal", 8)
    assert go() == ("direct", 8)
