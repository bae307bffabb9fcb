"""TileLang hyper-connection ops (`docs/ops.md`, "Hyper-connections"): registrations and
wrappers. The kernels live in `_kernels_mhc.py`, imported (with tilelang) on the first call and
compiled once per specialisation, then cached: mhc_post's once per (hc, vector width, dtypes)
with the hidden size dynamic, the others' FMA partials and finalisations likewise (per (hc, H,
dtypes, split count) under `PARITY_TILELANG_DYN_H_PRE=0`, below); the tensor-core partials
once per (H, split).

Paths:

- `mhc_post`: one elementwise kernel (16-byte vector loads/stores, float32 math, one rounding).
- `mhc_pre` / `mhc_head`: split-k partial dot products `r @ fn.T` and `sum r^2`, then a per-token
  finalisation kernel (RMS scale, sigmoids, Sinkhorn, the weighted stream sum). The partials use
  CUDA-core FMAs (float32) for `T < PRE_TC_MIN_TOKENS`, and from there on, for bfloat16
  streams, bf16 tensor cores on a three-way bf16 split of `fn` (float32-level accuracy).
- `mhc_fused_post_pre`: for `T <= FUSED_MAX_TOKENS` one kernel computes the post, writes the new
  residual and feeds its rounded values straight into the FMA partials (vLLM's small-T design),
  then the finalisation; above the threshold the unfused chain `mhc_post` + `mhc_pre`. Both read
  the new residual rounded to `residual.dtype`, as the contract's unfused chain does.
- `sinkhorn`: one thread per matrix (n <= 8).

Supported: CUDA tensors; residual/x in bfloat16, float16 or float32; hc <= 8 (Sinkhorn in
registers) for the ops with mixes; float options that fit float32 kernel arguments. Anything
else raises `NotImplementedError` (`parity.Unsupported`).
"""

from __future__ import annotations

import os

import torch

from parity._errors import Unsupported
from parity.optimized.tilelang._shapes import fma_splits, vec_for
from parity.reference.common import FLOAT_DTYPES
from parity.reference.mhc import (
    validate_mhc_fused_post_pre,
    validate_mhc_head,
    validate_mhc_post,
    validate_mhc_pre,
    validate_sinkhorn,
)
from parity.registry import register

MAX_HC = 8
MAX_SINKHORN_N = 8
# Path thresholds (tokens), from the H100 crossover measured by scripts/gpu_issue5.py on
# 2026-11-23 (hc=4, H in {4096, 7168}): the FMA partials win up to T ~ 128, the tensor-core
# partials from there on (T=1024: 55 vs 191 us at H=4096), and the fused post+pre kernel rides
# on the FMA partials, so it switches at the same point.
FUSED_MAX_TOKENS = 128  # fused post+pre kernel for T <= this, else mhc_post + mhc_pre
PRE_TC_MIN_TOKENS = 128  # tensor-core partials for T >= this (bfloat16 streams)
TC_BK = 64
_F32_MAX = torch.finfo(torch.float32).max
_F32_TINY = torch.finfo(torch.float32).tiny
_DT = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
_COMMON = dict(
    backend="tilelang",
    devices=("cuda",),
    dtypes=FLOAT_DTYPES,
    requires=("tilelang",),
    min_cc=(9, 0),
)


def _km():
    from parity.optimized.tilelang import _kernels_mhc

    return _kernels_mhc


def _cuda(op: str, t: torch.Tensor) -> None:
    if t.device.type != "cuda":
        raise Unsupported(f"{op}: the TileLang kernels run on CUDA tensors, got {t.device}")


def _f32_arg(op: str, name: str, value: float, *, divides: bool = False) -> float:
    """Kernel float arguments are float32: a value outside its range is not supported."""
    value = float(value)
    if abs(value) > _F32_MAX or (divides and value < _F32_TINY):
        raise Unsupported(f"{op}: {name}={value} does not fit a float32 kernel argument")
    return value


def _max_hc(op: str, hc: int) -> None:
    if hc > MAX_HC:
        raise Unsupported(f"{op}: hc={hc} > {MAX_HC} (the Sinkhorn runs in registers)")


# mhc_pre, mhc_head and mhc_fused_post_pre through the kernels with the hidden size dynamic
# (`fma_partials_dyn`, `finalize_pre_dyn`, `finalize_head_dyn`: one compile a (hc, M, vector
# width, dtypes) instead of one a hidden size; issue 11, section 4). The default since H100
# 2026-12-06: bit for bit the per-H kernels, golden 52 / 31 / 44, each nightly (8000 examples) in
# 220-327 s where the per-H kernels finished no property in 380 s. PARITY_TILELANG_DYN_H_PRE=0
# keeps the per-H kernels. The tensor-core partials (T >= PRE_TC_MIN_TOKENS) stay per H either
# way. Read once at import. Each dynamic kernel and its per-H twin come from one builder
# (`_kernels_mhc._hidden`, `_fma_partials`).
DYN_H_PRE_ENV = "PARITY_TILELANG_DYN_H_PRE"
DYN_H_PRE = [os.environ.get(DYN_H_PRE_ENV, "1") != "0"]  # a list: a test may flip it


def _hv(t: torch.Tensor, vec: int) -> torch.Tensor:
    """A contiguous tensor [..., H] as the dynamic-H kernels take it: [..., H / vec, vec]."""
    return t.view(*t.shape[:-1], t.shape[-1] // vec, vec)


def _fma_kernel(hc: int, h: int, dtype, fn: torch.Tensor, *streams, x_dtype=None):
    """The FMA partials kernel (fused with the post when `x_dtype` is given; its dynamic-H twin
    under DYN_H_PRE), `fn [M, hc*H]` and `streams` [..., H] viewed as that kernel takes them."""
    m = fn.shape[0]
    spec = dict(hc=hc, M=m, rdt=_DT[dtype], fused=x_dtype is not None)
    if x_dtype is not None:
        spec["xdt"] = _DT[x_dtype]
    if DYN_H_PRE[0]:
        vec = vec_for(h, 4)  # the per-H kernel's width: the same CTAs, the same sums
        kern = _km().get("fma_partials_dyn", vec=vec, **spec)
        return kern, fn.view(m, hc, h // vec, vec), [_hv(s, vec) for s in streams]
    return _km().get("fma_partials", H=h, **spec), fn, list(streams)


def _finalize_kernel(name: str, hc: int, h: int, dtype: torch.dtype, *streams: torch.Tensor):
    """The finalize kernel `name` (its dynamic-H twin under DYN_H_PRE) and `streams` [..., H]
    viewed as that kernel takes them."""
    if DYN_H_PRE[0]:
        vec = vec_for(h, 8)
        kern = _km().get(f"{name}_dyn", hc=hc, vec=vec, rdt=_DT[dtype])
        return kern, [_hv(s, vec) for s in streams]
    return _km().get(name, hc=hc, H=h, rdt=_DT[dtype]), list(streams)


# --- partial dot products -------------------------------------------------------------------------


def _tc_splits(t: int, k: int) -> int | None:
    """Split count for the tensor-core partials, one of 1, 4, 16 (few specialisations): enough
    CTAs for ~4 per SM, each with at least 4 k-tiles. None: the shape does not tile."""
    if k % TC_BK:
        return None
    blocks_t = -(-t // 64)
    s = 1
    while s < 16 and blocks_t * s < 528 and k % (4 * s * TC_BK) == 0 and k // (4 * s) >= 4 * TC_BK:
        s *= 4
    return s


def partials(residual: torch.Tensor, fn: torch.Tensor, path: str | None = None):
    """(part [S, T, M], sq [S, T], path) for `residual [T, hc, H]`, `fn [M, hc*H]`.

    `path`: "fma", "tc" or None (by T and dtype). Exposed for the GPU script's path checks.
    """
    km = _km()
    t, hc, h = residual.shape
    m = fn.shape[0]
    k = hc * h
    s_tc = _tc_splits(t, k) if residual.dtype == torch.bfloat16 and m <= 32 else None
    if path is None:
        path = "tc" if (t >= PRE_TC_MIN_TOKENS and s_tc is not None) else "fma"
    if path == "tc":
        if s_tc is None:
            raise Unsupported("tensor-core partials need bfloat16 streams and hc*H % 64 == 0")
        part = torch.empty((s_tc, t, m), dtype=torch.float32, device=residual.device)
        sq = torch.empty((s_tc, t), dtype=torch.float32, device=residual.device)
        kern = km.get("tc_partials", hc=hc, M=m, H=h, S=s_tc, BK=TC_BK)
        kern(residual.view(t, k), fn, part, sq)
        return part, sq, path
    s = fma_splits(hc, h)
    part = torch.empty((s, t, m), dtype=torch.float32, device=residual.device)
    sq = torch.empty((s, t), dtype=torch.float32, device=residual.device)
    kern, fn_in, (res_in,) = _fma_kernel(hc, h, residual.dtype, fn, residual)
    kern(res_in, fn_in, part, sq)
    return part, sq, path


def _finalize_pre(part, sq, hc_scale, hc_base, residual, opts):
    t, hc, h = residual.shape
    rms_eps, pre_eps, sinkhorn_eps, post_mult, iters = opts
    post = torch.empty((t, hc, 1), dtype=torch.float32, device=residual.device)
    comb = torch.empty((t, hc, hc), dtype=torch.float32, device=residual.device)
    li = torch.empty((t, h), dtype=residual.dtype, device=residual.device)
    kern, (res_in, li_out) = _finalize_kernel("finalize_pre", hc, h, residual.dtype, residual, li)
    kern(
        part,
        sq,
        hc_scale,
        hc_base,
        res_in,
        post.view(t, hc),
        comb,
        li_out,
        rms_eps,
        pre_eps,
        sinkhorn_eps,
        post_mult,
        iters,
    )
    return post, comb, li


def _pre_opts(op, rms_eps, pre_eps, sinkhorn_eps, post_mult, sinkhorn_iters):
    """The validated options as kernel arguments (sinkhorn_iters: bounded by the reference)."""
    return (
        _f32_arg(op, "rms_eps", rms_eps, divides=True),
        _f32_arg(op, "pre_eps", pre_eps),
        _f32_arg(op, "sinkhorn_eps", sinkhorn_eps, divides=True),
        _f32_arg(op, "post_mult", post_mult),
        int(sinkhorn_iters),
    )


def _empty_pre(residual):
    t, hc, h = residual.shape
    dev = residual.device
    return (
        torch.empty((t, hc, 1), dtype=torch.float32, device=dev),
        torch.empty((t, hc, hc), dtype=torch.float32, device=dev),
        torch.empty((t, h), dtype=residual.dtype, device=dev),
    )


def pre_impl(residual, fn, hc_scale, hc_base, opts, path=None):
    """mhc_pre on validated inputs, on the given partials path (None: by T)."""
    residual = residual.contiguous()
    part, sq, _ = partials(residual, fn.contiguous(), path)
    return _finalize_pre(part, sq, hc_scale.contiguous(), hc_base.contiguous(), residual, opts)


# --- ops ----------------------------------------------------------------------------------------


@register("sinkhorn", name="tilelang", note="one thread per matrix, n <= 8", **_COMMON)
def sinkhorn(logits: torch.Tensor, *, iters: int = 20, eps: float = 1e-6) -> torch.Tensor:
    op = "sinkhorn"
    n, eps = validate_sinkhorn(logits, iters=iters, eps=eps)
    _cuda(op, logits)
    if n > MAX_SINKHORN_N:
        raise Unsupported(f"{op}: n={n} > {MAX_SINKHORN_N} (one thread per matrix)")
    eps = _f32_arg(op, "eps", eps, divides=True)
    out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    b = logits.numel() // (n * n)
    if b == 0:
        return out
    kern = _km().get("sinkhorn", n=n)
    kern(logits.contiguous().view(b, n, n), out.view(b, n, n), eps, int(iters))
    return out


# mhc_post through `post_dyn` (the hidden size dynamic, one compile a (hc, vector width,
# dtypes); issue 11, section 4), read once at import (so the per-call plan key need not hold
# it). The default since the H100 run of 2026-12-06: bit for bit the per-H kernel, and its whole
# nightly (8000 examples) in 51 s where the per-H kernel finished no unit in a call.
# mhc_fused_post_pre's unfused path (T > FUSED_MAX_TOKENS) runs it too, through `_post`.
# PARITY_TILELANG_DYN_H=0: the per-H kernel (one compile a hidden size).
DYN_H_ENV = "PARITY_TILELANG_DYN_H"
DYN_H = [os.environ.get(DYN_H_ENV, "1") != "0"]  # a list: a test may flip it (and clear plans)


def _post_kernel(hc: int, h: int, x_dtype, r_dtype):
    """(compiled kernel, vector width of its [.., H / vec, vec] views or None: plain shapes)."""
    xdt, rdt = _DT[x_dtype], _DT[r_dtype]
    if DYN_H[0]:
        vec = vec_for(h, 8)  # the per-H kernel's width
        return _km().get("post_dyn", hc=hc, vec=vec, xdt=xdt, rdt=rdt), vec
    return _km().get("post", hc=hc, H=h, xdt=xdt, rdt=rdt), None


def _launch_post(kern, vec, x, residual, post_mix, comb_res_mix, out) -> None:
    t, hc, h = out.shape
    x, residual = x.contiguous(), residual.contiguous()
    if vec is not None:  # post_dyn takes the hidden dim as [H / vec, vec]
        x, residual = x.view(t, h // vec, vec), residual.view(t, hc, h // vec, vec)
        out = out.view(t, hc, h // vec, vec)
    kern(x, residual, post_mix.reshape(t, hc).contiguous(), comb_res_mix.contiguous(), out)


def _post(x, residual, post_mix, comb_res_mix):
    """mhc_post on validated inputs: the new residual (the unfused chain of mhc_fused_post_pre
    calls it too)."""
    t, hc, h = residual.shape
    out = torch.empty((t, hc, h), dtype=residual.dtype, device=residual.device)
    if t == 0:
        return out
    kern, vec = _post_kernel(hc, h, x.dtype, residual.dtype)
    _launch_post(kern, vec, x, residual, post_mix, comb_res_mix, out)
    return out


post_impl = _post  # for the GPU script


_POST_PLANS: dict = {}  # call signature -> ((T, hc, H), compiled kernel or None for T = 0)
_PLANS_MAX = 4096  # a fuzzing run draws many shapes: start over past this


def _post_key(x, residual, post_mix, comb_res_mix):
    """Everything validate_mhc_post and the Unsupported checks read: class, shape, dtype and
    device of each tensor (only exact torch.Tensor arguments are stored)."""
    return (
        x.__class__, x.shape, x.dtype, x.device,
        residual.__class__, residual.shape, residual.dtype, residual.device,
        post_mix.__class__, post_mix.shape, post_mix.dtype, post_mix.device,
        comb_res_mix.__class__, comb_res_mix.shape, comb_res_mix.dtype, comb_res_mix.device,
    )  # fmt: skip


def _post_plan(x, residual, post_mix, comb_res_mix):
    """Validate (the contract's errors, then Unsupported) and build the plan; stored only when
    every argument is an exact torch.Tensor, so a bad signature is validated on every call."""
    op = "mhc_post"
    t, hc, h = validate_mhc_post(x, residual, post_mix, comb_res_mix)
    _cuda(op, residual)
    if hc > 16:
        raise Unsupported(f"{op}: hc={hc} > 16 (streams unrolled in registers)")
    kern = None
    if t:
        kern = _post_kernel(hc, h, x.dtype, residual.dtype)
    plan = ((t, hc, h), kern)
    if all(a.__class__ is torch.Tensor for a in (x, residual, post_mix, comb_res_mix)):
        if len(_POST_PLANS) >= _PLANS_MAX:
            _POST_PLANS.clear()
        _POST_PLANS[_post_key(x, residual, post_mix, comb_res_mix)] = plan
    return plan


@register(
    "mhc_post",
    name="tilelang",
    note="elementwise, one CTA per (token, 1024-element tile), 16-byte vectors",
    **_COMMON,
)
def mhc_post(
    x: torch.Tensor,
    residual: torch.Tensor,
    post_mix: torch.Tensor,
    comb_res_mix: torch.Tensor,
) -> torch.Tensor:
    # validated once per call signature (issue 11, section 3: launch cost at small T)
    try:
        shape, kern = _POST_PLANS[_post_key(x, residual, post_mix, comb_res_mix)]
    except Exception:  # a new signature, or one the key cannot hold: validate
        shape, kern = _post_plan(x, residual, post_mix, comb_res_mix)
    out = torch.empty(shape, dtype=residual.dtype, device=residual.device)
    if kern is None:
        return out
    _launch_post(*kern, x, residual, post_mix, comb_res_mix, out)
    return out


@register(
    "mhc_pre",
    name="tilelang",
    note=f"FMA split-k partials below {PRE_TC_MIN_TOKENS} tokens, then bf16 tensor cores on a "
    "3-way split of fn",
    **_COMMON,
)
def mhc_pre(
    residual: torch.Tensor,
    fn: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    *,
    rms_eps: float = 1e-6,
    pre_eps: float = 1e-6,
    sinkhorn_eps: float = 1e-6,
    post_mult: float = 1.0,
    sinkhorn_iters: int = 20,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    op = "mhc_pre"
    _, hc, _ = validate_mhc_pre(
        residual,
        fn,
        hc_scale,
        hc_base,
        rms_eps=rms_eps,
        pre_eps=pre_eps,
        sinkhorn_eps=sinkhorn_eps,
        post_mult=post_mult,
        sinkhorn_iters=sinkhorn_iters,
    )
    opts = _pre_opts(op, rms_eps, pre_eps, sinkhorn_eps, post_mult, sinkhorn_iters)
    _cuda(op, residual)
    _max_hc(op, hc)
    if residual.shape[0] == 0:
        return _empty_pre(residual)
    return pre_impl(residual, fn, hc_scale, hc_base, opts)


def fused_impl(x, residual, post_mix, comb_res_mix, fn, hc_scale, hc_base, opts, path=None):
    """mhc_fused_post_pre on validated, non-empty inputs. `path`: "fused" (one post+partials
    kernel), "unfused" (mhc_post then mhc_pre) or None (by T)."""
    t, hc, h = residual.shape
    if path is None:
        path = "fused" if t <= FUSED_MAX_TOKENS else "unfused"
    if path == "unfused":
        new = _post(x, residual, post_mix, comb_res_mix)
        return (new, *pre_impl(new, fn, hc_scale, hc_base, opts))
    new = torch.empty((t, hc, h), dtype=residual.dtype, device=residual.device)
    s = fma_splits(hc, h)
    part = torch.empty((s, t, fn.shape[0]), dtype=torch.float32, device=residual.device)
    sq = torch.empty((s, t), dtype=torch.float32, device=residual.device)
    kern, fn_in, (x_in, res_in, new_out) = _fma_kernel(
        hc, h, residual.dtype, fn.contiguous(), x.contiguous(), residual.contiguous(), new,
        x_dtype=x.dtype,
    )  # fmt: skip
    kern(
        x_in,
        res_in,
        post_mix.reshape(t, hc).contiguous(),
        comb_res_mix.contiguous(),
        fn_in,
        new_out,
        part,
        sq,
    )
    return (new, *_finalize_pre(part, sq, hc_scale.contiguous(), hc_base.contiguous(), new, opts))


@register(
    "mhc_fused_post_pre",
    name="tilelang",
    note=f"fused post+FMA partials for T <= {FUSED_MAX_TOKENS}, mhc_post + mhc_pre above",
    **_COMMON,
)
def mhc_fused_post_pre(
    x: torch.Tensor,
    residual: torch.Tensor,
    post_mix: torch.Tensor,
    comb_res_mix: torch.Tensor,
    fn: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    *,
    rms_eps: float = 1e-6,
    pre_eps: float = 1e-6,
    sinkhorn_eps: float = 1e-6,
    post_mult: float = 1.0,
    sinkhorn_iters: int = 20,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    op = "mhc_fused_post_pre"
    validate_mhc_fused_post_pre(
        x,
        residual,
        post_mix,
        comb_res_mix,
        fn,
        hc_scale,
        hc_base,
        rms_eps=rms_eps,
        pre_eps=pre_eps,
        sinkhorn_eps=sinkhorn_eps,
        post_mult=post_mult,
        sinkhorn_iters=sinkhorn_iters,
    )
    opts = _pre_opts(op, rms_eps, pre_eps, sinkhorn_eps, post_mult, sinkhorn_iters)
    _cuda(op, residual)
    _max_hc(op, residual.shape[1])
    if residual.shape[0] == 0:
        new = torch.empty(residual.shape, dtype=residual.dtype, device=residual.device)
        return (new, *_empty_pre(residual))
    return fused_impl(x, residual, post_mix, comb_res_mix, fn, hc_scale, hc_base, opts)


def head_impl(residual, fn, hc_scale, hc_base, rms_eps, hc_eps, path=None):
    t, hc, h = residual.shape
    residual = residual.contiguous()
    part, sq, _ = partials(residual, fn.contiguous(), path)
    out = torch.empty((t, h), dtype=residual.dtype, device=residual.device)
    kern, (res_in, out_v) = _finalize_kernel("finalize_head", hc, h, residual.dtype, residual, out)
    kern(part, sq, hc_scale.contiguous(), hc_base.contiguous(), res_in, out_v, rms_eps, hc_eps)
    return out


@register("mhc_head", name="tilelang", note="split-k partials + per-token collapse", **_COMMON)
def mhc_head(
    residual: torch.Tensor,
    fn: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    *,
    rms_eps: float = 1e-6,
    hc_eps: float = 1e-6,
) -> torch.Tensor:
    op = "mhc_head"
    _, hc, h, rms_eps, hc_eps = validate_mhc_head(
        residual, fn, hc_scale, hc_base, rms_eps=rms_eps, hc_eps=hc_eps
    )
    dev = residual.device
    _cuda(op, residual)
    if hc > 32:
        raise Unsupported(f"{op}: hc={hc} > 32")
    rms_eps = _f32_arg(op, "rms_eps", rms_eps, divides=True)
    hc_eps = _f32_arg(op, "hc_eps", hc_eps)
    if residual.shape[0] == 0:
        return torch.empty((0, h), dtype=residual.dtype, device=dev)
    return head_impl(residual, fn, hc_scale, hc_base, rms_eps, hc_eps)
