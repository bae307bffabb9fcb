"""The TileLang mHC kernels and the FlashInfer adapters.

CPU tests: the registration modules import without tilelang/flashinfer and list their
implementations as unavailable with a reason; the wrappers validate input like the reference
(same exception, same message) before they need a backend, and refuse what they do not support.
GPU tests (marked `gpu`, NOT RUN without CUDA and the backend): small cases against the
references. The golden tables (parity/properties/golden.py) and `parity bench` run the large
sweep and the benchmarks.
"""

import math
import subprocess
import sys

import pytest
import torch

from parity import reference as ref
from parity.catalog import listing
from parity.reference.common import precision

CUDA = torch.cuda.is_available()


def _has(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except Exception:
        return False


def need(mod: str):
    if not CUDA or not _has(mod):
        pytest.skip(f"NOT RUN: needs CUDA and {mod}")


# --- CPU: imports, listing, validation ------------------------------------------------------------

OURS = {
    ("sinkhorn", "tilelang"),
    ("mhc_pre", "tilelang"),
    ("mhc_post", "tilelang"),
    ("mhc_fused_post_pre", "tilelang"),
    ("mhc_head", "tilelang"),
    ("mhc_post", "flashinfer"),
    ("mhc_pre", "flashinfer"),
    ("swiglu", "flashinfer"),
    ("route", "flashinfer"),
}


def test_registration_imports_without_backends():
    code = (
        "import sys\n"
        "for m in ('tilelang', 'flashinfer'): sys.modules[m] = None\n"
        "import parity.optimized.tilelang, parity.optimized.flashinfer\n"
        "from parity.catalog import listing\n"
        "rows = [r for r in listing() if r['backend'] in ('tilelang', 'flashinfer')]\n"
        "assert rows, 'nothing registered'\n"
        "for r in rows:\n"
        "    assert not r['available'], r\n"
        "    assert r['backend'] in r['reason'] and 'not installed' in r['reason'], r\n"
        "print(len(rows))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == len(OURS)


def test_listing_has_every_backend_impl_with_a_reason():
    rows = {(r["op"], r["impl"]): r for r in listing()}
    assert OURS <= set(rows)
    for key in OURS:
        r = rows[key]
        assert r["devices"] == ["cuda"]
        assert r["reason"]
        if not CUDA:
            assert not r["available"]


def test_importing_the_wrappers_loads_no_kernel_module():
    code = (
        "import sys\n"
        "import parity.optimized.tilelang.mhc, parity.optimized.flashinfer.adapters\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tilelang', 'flashinfer')\n"
        "       or m.endswith('_kernels_mhc')]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _post_args(t=2, hc=4, h=16, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(t, h, generator=g).to(dtype),
        torch.randn(t, hc, h, generator=g).to(dtype),
        torch.rand(t, hc, 1, generator=g),
        torch.rand(t, hc, hc, generator=g),
    )


def _pre_args(t=2, hc=4, h=16, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(t, hc, h, generator=g).to(dtype),
        torch.randn(hc * (2 + hc), hc * h, generator=g) * 0.1,
        torch.rand(3, generator=g),
        torch.randn(hc * (2 + hc), generator=g),
    )


def _raised(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except Exception as e:
        return type(e), str(e)
    return None


def _bad_inputs():
    x, res, post, comb = _post_args()
    r, fn, sc, base = _pre_args()
    return [
        ("mhc_post", (x[:, :8], res, post, comb), {}),
        ("mhc_post", (x, res, post.double(), comb), {}),
        ("mhc_post", (x, res, post, comb[:, :3]), {}),
        ("mhc_pre", (r, fn[:5], sc, base), {}),
        ("mhc_pre", (r, fn, sc, base), {"sinkhorn_iters": 0}),
        ("mhc_pre", (r, fn, sc, base), {"rms_eps": 0.0}),
        ("mhc_pre", (r.float().double(), fn, sc, base), {}),
        ("mhc_fused_post_pre", (x, res, post, comb, fn[:3], sc, base), {}),
        ("mhc_head", (r, fn, sc, base), {}),
        ("sinkhorn", (torch.randn(3, 4, 5),), {}),
        ("sinkhorn", (torch.randn(3, 4, 4),), {"eps": 0.0}),
        ("swiglu", (torch.randn(3, 5),), {}),
        ("swiglu", (torch.randn(3, 4),), {"layout": "zigzag"}),
        ("route", (torch.randn(3, 16),), {"k": 2, "method": "dsv3", "bias": None}),
        ("route", (torch.randn(3, 16),), {"k": 2, "method": "dsv3",
                                          "bias": torch.zeros(16), "n_group": 3}),
    ]  # fmt: skip


@pytest.mark.parametrize("backend", ["tilelang", "flashinfer"])
def test_bad_input_raises_like_the_reference(backend):
    if backend == "tilelang":
        from parity.optimized.tilelang import mhc as mod
    else:
        from parity.optimized.flashinfer import adapters as mod
    checked = 0
    for op, args, kw in _bad_inputs():
        if not hasattr(mod, op):
            continue
        want = _raised(getattr(ref, op), *args, **kw)
        assert want is not None and want[0] in (TypeError, ValueError), (op, want)
        assert _raised(getattr(mod, op), *args, **kw) == want, (op, kw)
        checked += 1
    assert checked >= 5


def test_cpu_tensors_are_unsupported_not_wrong():
    from parity.optimized.flashinfer import adapters as fi
    from parity.optimized.tilelang import mhc as tl

    x, res, post, comb = _post_args()
    r, fn, sc, base = _pre_args()
    calls = [
        (tl.mhc_post, (x, res, post, comb), {}),
        (tl.mhc_pre, (r, fn, sc, base), {}),
        (tl.sinkhorn, (torch.randn(2, 4, 4),), {}),
        (fi.mhc_post, (x, res, post, comb), {}),
        (fi.mhc_pre, (r, fn, sc, base), {}),
        (fi.swiglu, (torch.randn(2, 8).bfloat16(),), {}),
    ]
    for f, a, kw in calls:
        with pytest.raises(NotImplementedError):
            f(*a, **kw)


def test_flashinfer_declares_what_it_does_not_support():
    from parity.optimized.flashinfer import adapters as fi

    x = torch.randn(2, 8)
    for kw in ({"limit": 7.0}, {"alpha": 1.702}, {"beta": 1.0}, {"layout": "interleaved"}):
        with pytest.raises(NotImplementedError):
            fi.swiglu(x, **kw)
    logits, bias = torch.randn(2, 64), torch.zeros(64)
    with pytest.raises(NotImplementedError):
        fi.route(logits, k=2)  # softmax
    with pytest.raises(NotImplementedError):
        fi.route(logits, k=2, method="dsv3", bias=bias, renormalize=False)
    x, res, post, comb = _post_args(hc=3)
    with pytest.raises(NotImplementedError):
        fi.mhc_post(x, res, post, comb)
    with pytest.raises(NotImplementedError):
        fi.mhc_post(*_post_args(dtype=torch.float16))


@pytest.mark.parametrize(
    "e,k,ng,tg,ok",
    [
        (256, 8, 8, 4, True),  # DeepSeek-V3/V4
        (384, 1, 1, 1, True),  # one group: FlashInfer's check wants topk_group * n_group >= k
        (384, 8, 1, 1, False),  # so Kimi-K2's single group with k 8 raises there
        (4, 2, 1, 1, False),  # the H100 suite's counterexample (2026-12-05)
        (64, 8, 2, 2, False),  # 4 < 8
        (385, 1, 1, 1, False),
        (256, 9, 8, 4, False),
        (256, 8, 16, 4, False),  # 8 warps: one per group
        (128, 8, 8, 5, False),  # at most 4 kept groups
        (256, 8, 4, 2, False),  # 64 experts per group
        (64, 4, 32, 4, False),  # groups of 2 but n_group > 8
        (16, 2, 8, 2, True),
    ],
)
def test_fused_topk_deepseek_limits(e, k, ng, tg, ok):
    from parity.optimized.flashinfer.adapters import route_support

    assert (route_support(e, k, ng, tg) is None) == ok


# --- GPU: small cases against the references ------------------------------------------------------


def _ulps(got, exact, mag=None):
    """max error in units of (one output ulp at the exact value + 64 u32 * the magnitude of
    the summed terms, which covers float32 cancellation)."""
    nmant = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}[got.dtype]
    tiny = torch.finfo(got.dtype).tiny
    u = torch.exp2(torch.floor(torch.log2(exact.abs().clamp(min=tiny))) - nmant)
    if mag is not None:
        u = u + 64 * 2.0**-24 * mag
    return float(((got.double() - exact).abs() / u).max()) if got.numel() else 0.0


def _post_mag(x, res, post, comb):
    m = torch.einsum("tij,tih->tjh", comb.double().abs(), res.double().abs())
    return x.double().abs().unsqueeze(1) * post.reshape(*res.shape[:2], 1).double().abs() + m


def _exact(fn, *a, **kw):
    with precision("float64", round_output=False):
        return fn(*a, **kw)


def _cuda(*ts):
    return tuple(t.cuda() for t in ts)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["tilelang", "flashinfer"])
@pytest.mark.parametrize("t,h", [(0, 64), (1, 4096), (5, 7168), (17, 200)])
def test_mhc_post_gpu(impl, t, h):
    need(impl)
    mod = _module(impl)
    x, res, post, comb = _cuda(*_post_args(t=t, h=h))
    comb = comb * torch.arange(1, 17, device="cuda").view(1, 4, 4)  # clearly non-symmetric
    out = mod.mhc_post(x, res, post, comb)
    assert out.shape == res.shape and out.dtype == res.dtype
    mag = _post_mag(x, res, post, comb)
    assert _ulps(out, _exact(ref.mhc_post, x, res, post, comb), mag) <= 1.0


@pytest.mark.gpu
@pytest.mark.parametrize("h", [4096, 7170, 7172, 201])  # vector width 8, 2, 4, 1
def test_mhc_post_dynamic_hidden_size_gpu(h, monkeypatch):
    """The default mhc_post kernel (`post_dyn`: the hidden size dynamic, one compile a
    vector width) gives the per-H kernel's output bit for bit, on the same compile for two
    hidden sizes of one vector width."""
    need("tilelang")
    from parity.optimized.tilelang import _kernels_mhc as km
    from parity.optimized.tilelang import mhc

    x, res, post, comb = _cuda(*_post_args(t=9, h=h))
    monkeypatch.setattr(mhc, "DYN_H", [False])  # the per-H kernel
    monkeypatch.setattr(mhc, "_POST_PLANS", {})
    want = mhc.mhc_post(x, res, post, comb)
    monkeypatch.setattr(mhc, "DYN_H", [True])
    monkeypatch.setattr(mhc, "_POST_PLANS", {})
    got = mhc.mhc_post(x, res, post, comb)
    assert torch.equal(got, want)
    n = km.cache_size()
    x2, res2, post2, comb2 = _cuda(*_post_args(t=3, h=h + 8 * (h % 8 == 0) + 64 * (h % 8 != 0)))
    mhc.mhc_post(x2, res2, post2, comb2)
    assert km.cache_size() == n  # no new compile for another H of the same vector width


def _module(impl):
    if impl == "tilelang":
        from parity.optimized.tilelang import mhc

        return mhc
    from parity.optimized.flashinfer import adapters

    return adapters


def _check_pre_out(out, exact, r32, r):
    for got, want, floor in zip(out[:2], exact[:2], r32[:2]):
        err = float((got.double() - want).abs().max()) if got.numel() else 0.0
        fl = float((floor.double() - want).abs().max()) if got.numel() else 0.0
        assert err <= max(16 * fl, 1e-5), (err, fl)
    mag = 2 * r.double().abs().sum(1)
    assert _ulps(out[2], exact[2], mag) <= max(1.0, 2 * _ulps(r32[2], exact[2], mag))


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["tilelang", "flashinfer"])
@pytest.mark.parametrize("t,h", [(0, 64), (1, 4096), (3, 256), (64, 512), (200, 128)])
def test_mhc_pre_gpu(impl, t, h):
    need(impl)
    mod = _module(impl)
    args = _cuda(*_pre_args(t=t, h=h))
    kw = dict(post_mult=2.0, sinkhorn_iters=20)
    out = mod.mhc_pre(*args, **kw)
    _check_pre_out(out, _exact(ref.mhc_pre, *args, **kw), ref.mhc_pre(*args, **kw), args[0])


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["fused", "unfused"])
def test_mhc_fused_post_pre_both_paths_gpu(path):
    need("tilelang")
    from parity.optimized.tilelang import mhc

    th = mhc.FUSED_MAX_TOKENS
    for t in (1, th, th + 1):
        x, res, post, comb = _cuda(*_post_args(t=t, h=256))
        _, fn, sc, base = _cuda(*_pre_args(t=t, h=256))
        opts = mhc._pre_opts("t", 1e-6, 1e-6, 1e-6, 2.0, 20)
        out = mhc.fused_impl(x, res, post, comb, fn, sc, base, opts, path=path)
        exact = _exact(ref.mhc_fused_post_pre, x, res, post, comb, fn, sc, base, post_mult=2.0)
        r32 = ref.mhc_fused_post_pre(x, res, post, comb, fn, sc, base, post_mult=2.0)
        mag = _post_mag(x, res, post, comb)
        assert _ulps(out[0], exact[0], mag) <= max(1.0, 2 * _ulps(r32[0], exact[0], mag))
        _check_pre_out(out[1:], exact[1:], r32[1:], r32[0])


@pytest.mark.gpu
@pytest.mark.parametrize("t", [0, 1, 33])
def test_mhc_head_and_sinkhorn_gpu(t):
    need("tilelang")
    from parity.optimized.tilelang import mhc

    g = torch.Generator().manual_seed(t)
    res = torch.randn(t, 4, 128, generator=g).bfloat16().cuda()
    fn = (torch.randn(4, 512, generator=g) * 0.05).cuda()
    sc, base = torch.tensor([0.7]).cuda(), torch.randn(4, generator=g).cuda()
    out = mhc.mhc_head(res, fn, sc, base)
    exact = _exact(ref.mhc_head, res, fn, sc, base)
    mag = 2 * res.double().abs().sum(1)
    assert _ulps(out, exact, mag) <= max(
        1.0, 2 * _ulps(ref.mhc_head(res, fn, sc, base), exact, mag)
    )
    logits = (torch.randn(t, 4, 4, generator=g) * 3).cuda()
    p = mhc.sinkhorn(logits)
    want = _exact(ref.sinkhorn, logits)
    assert p.shape == logits.shape
    if t:
        assert float((p.double() - want).abs().max()) < 1e-5


@pytest.mark.gpu
def test_flashinfer_swiglu_and_route_gpu():
    need("flashinfer")
    from parity.optimized.flashinfer import adapters as fi
    from parity.reference.routing import check_route_selection

    x = (torch.randn(9, 2 * 96) * 3).bfloat16().cuda()
    exact = _exact(ref.swiglu, x)
    assert _ulps(fi.swiglu(x), exact) <= 1.0 + _ulps(ref.swiglu(x), exact)
    logits = torch.randn(64, 256).cuda()
    bias = (torch.randn(256) * 0.01).cuda()
    for dt in (torch.float32, torch.bfloat16):
        lg = logits.to(dt)
        w, ids = fi.route(lg, k=8, method="dsv3", bias=bias, n_group=8, topk_group=4,
                          routed_scaling_factor=2.5)  # fmt: skip
        ok = check_route_selection(lg, ids, k=8, method="dsv3", bias=bias, n_group=8,
                                   topk_group=4)  # fmt: skip
        assert bool(ok.all())
        s = torch.sigmoid(lg.double()).gather(1, ids.long())
        assert math.isclose(float(w.sum(-1).mean()), 2.5, rel_tol=1e-5)
        assert torch.allclose(w.double(), s / s.sum(-1, keepdim=True) * 2.5, rtol=1e-5)


@pytest.mark.parametrize("h", [4096, 7170, 7172, 201])  # vector widths (4, 8), (2, 2), (4, 4), 1
def test_dynamic_h_pre_wrappers_pass_views_the_kernels_declare(h, monkeypatch):
    """PARITY_TILELANG_DYN_H_PRE's plumbing, on the CPU with a stand-in kernel module: each
    wrapper asks for the dynamic-H kernel of its vector width (no H in the key) and hands it
    [.., H / vec, vec] views of the same storage, as the kernels declare them."""
    from parity.optimized.tilelang import mhc
    from parity.optimized.tilelang._shapes import vec_for  # the kernels' own rule

    calls = []

    class Fake:
        @staticmethod
        def get(name, **spec):
            def kern(*args):
                calls.append((name, spec, [tuple(a.shape) for a in args if hasattr(a, "shape")]))

            return kern

    monkeypatch.setattr(mhc, "_km", lambda: Fake)
    monkeypatch.setattr(mhc, "DYN_H_PRE", [True])
    t, hc = 3, 4
    m = hc * (2 + hc)
    res, fn, scale, base = _pre_args(t=t, hc=hc, h=h)
    v4, v8 = vec_for(h, 4), vec_for(h, 8)
    opts = (1e-6, 1e-6, 1e-6, 1.0, 20)
    mhc.pre_impl(res, fn, scale, base, opts, path="fma")
    x = torch.zeros(t, h, dtype=res.dtype)
    post, comb = torch.rand(t, hc, 1), torch.rand(t, hc, hc)
    mhc.fused_impl(x, res, post, comb, fn, scale, base, opts, path="fused")
    mhc.head_impl(res, fn[:hc], scale[:1], base[:hc], 1e-6, 1e-6, path="fma")
    names = [c[0] for c in calls]
    assert names == ["fma_partials_dyn", "finalize_pre_dyn"] * 2 + [
        "fma_partials_dyn",
        "finalize_head_dyn",
    ]
    for name, spec, shapes in calls:
        assert "H" not in spec
        if name == "fma_partials_dyn":
            assert spec["vec"] == v4
            assert (t, hc, h // v4, v4) in shapes and (spec["M"], hc, h // v4, v4) in shapes
        else:
            assert spec["vec"] == v8 and (t, hc, h // v8, v8) in shapes
            assert (t, h // v8, v8) in shapes  # layer_input / out
    fused = calls[2]
    assert fused[1]["fused"] and (t, h // v4, v4) in fused[2]  # x
    assert fused[2].count((t, hc, h // v4, v4)) == 2  # residual and the new residual
    assert m == calls[0][1]["M"]


@pytest.mark.gpu
@pytest.mark.parametrize("h", [4096, 7170, 7172, 201])
def test_mhc_pre_family_dynamic_hidden_size_gpu(h, monkeypatch):
    """PARITY_TILELANG_DYN_H_PRE's kernels (FMA partials, fused post + partials, both
    finalisations with the hidden size dynamic) against the per-H kernels: bit for bit (the
    same CTAs sum the same elements in the same order), and no new compile for a second H of
    the same vector widths."""
    need("tilelang")
    from parity.optimized.tilelang import _kernels_mhc as km
    from parity.optimized.tilelang import mhc

    def run(t, hh):
        res, fn, scale, base = _cuda(*_pre_args(t=t, hc=4, h=hh))
        x, _, post, comb = _cuda(*_post_args(t=t, hc=4, h=hh))
        opts = (1e-6, 1e-6, 1e-6, 2.0, 20)
        return (
            *mhc.pre_impl(res, fn, scale, base, opts, path="fma"),
            *mhc.fused_impl(x, res, post, comb, fn, scale, base, opts, path="fused"),
            mhc.head_impl(res, fn[:4], scale[:1], base[:4], 1e-6, 1e-6, path="fma"),
        )

    monkeypatch.setattr(mhc, "DYN_H_PRE", [False])
    want = run(9, h)
    monkeypatch.setattr(mhc, "DYN_H_PRE", [True])
    got = run(9, h)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    n = km.cache_size()
    run(3, h + 8 * (h % 8 == 0) + 64 * (h % 8 != 0))
    assert km.cache_size() == n


def test_tilelang_keys_script_counts_one_compile_a_width_with_h_dynamic():
    """scripts/tilelang_keys.py (how docs/gpu-results.md counts §4's TileLang compiles): two
    hidden sizes of the same vector widths are two per-H compiles and one dynamic-H compile, for
    every op and both partials paths; the tensor-core partials stay per H."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "tilelang_keys.py"
    spec = importlib.util.spec_from_file_location("tilelang_keys", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for op in mod.OPS:
        for t in (1, 300):
            a = mod.keys(op, {"T": t, "hc": 4, "H": 4096, "dtype": "bfloat16"})
            b = mod.keys(op, {"T": t, "hc": 4, "H": 4160, "dtype": "bfloat16"})  # widths 8 / 4
            per, dyn = a[0] | b[0], a[1] | b[1]
            tc = {k for k in dyn if k[0] == "tc_partials"}
            assert len(dyn - tc) == len(a[1] - tc) and len(per) > len(a[0]), (op, t)
            assert len(tc) == (2 if op != "mhc_post" and t >= 128 else 0), (op, t, tc)
