"""FlashInfer 0.7 adapters onto the parity contract (`docs/ops.md`): registrations and thin
wrappers. flashinfer is imported inside each wrapper, on the first call (it JIT-compiles each
kernel module with nvcc on first use).

Each adapter validates its input with the reference's helpers (so bad input raises the same
errors) and raises `NotImplementedError` (`parity.Unsupported`) for every option FlashInfer does
not implement. What each supports, and why the others are left out:

- `mhc_post` -> `flashinfer.mhc.mhc_post`: bfloat16 `x`/`residual`, hc == 4. FlashInfer's
  `comb_res_mix` is indexed `[old stream, new stream]` (`out[new] = sum_old residual[old] *
  comb[old, new]`, mhc.py docstring and `load_hc4_mix` in csrc/mhc/mhc_post.cu), which is the
  contract's `[i, j]`: no transpose.
- `mhc_pre` -> torch float32 GEMM for `dot_mix = r @ fn.T` + `flashinfer.mhc.
  mhc_pre_big_fuse_with_prenorm` (it computes sum r^2 itself, `rstd = rsqrt(sqsum / (hc*H) +
  rms_eps)`, `mixes = dot * rstd * scale + base`, pre/post sigmoids, Sinkhorn ending on columns,
  `layer_input = sum pre_i r_i`): the contract's definition. bfloat16 residual, hc == 4,
  H % 8 == 0, and every epsilon > 0 (FlashInfer rejects pre_eps == 0, which the contract allows).
- `swiglu` -> `flashinfer.silu_and_mul`: only `limit=None, alpha=1, beta=0, layout="concat"`
  (clamp_mode is then ignored by the contract), bfloat16/float16 (FlashInfer's FP16 dispatch).
- `route` -> `flashinfer.fused_topk_deepseek` (the NoAuxTc kernel): `method="dsv3"` with
  `renormalize=True` (the kernel always renormalizes) and the kernel's limits: k <= 8;
  topk_group * n_group >= k (the bundle's Python check raises ValueError otherwise, so a single
  group serves k = 1 only: seen on the H100, 2026-12-05, where the suite drew E 4, k 2,
  n_group 1 and FlashInfer raised on a case the contract allows); n_group == 1 with E <= 384,
  or 2 <= n_group <= 8 with E <= 256, 2 <= E / n_group <= 32,
  topk_group <= 4 and (E / n_group) * topk_group <= 128. The kernel runs 256 threads (8 warps,
  one per group) and keeps at most 4 top groups (`MaxNumTopGroups`), although its Python check
  lets n_group go to 32 and topk_group to n_group; the former scripts/gpu_issue5.py probed
  those cases.
  Logits and bias are upcast exactly to float32 before the call, so the weights come back in
  float32 (with bfloat16 logits the kernel would return bfloat16 weights).

Left out: `mxfp4_quant` / `mxfp4_dequant`. On the H100 (SM90, 2026-11-23, the former
scripts/gpu_issue5.py) `flashinfer.mxfp4_quantize(x, sfLayout=layout_linear)` builds the
fp4_quantization_90 module and returns wrong output: scale codes 222, 191, 203, 191 where the
contract gives 128, 128, 127, 127, 0.35% of the codes equal to the reference's, a NaN round trip
(its E2M1 conversion, `cvt.rn.satfinite.e2m1x2.f32`, is compiled only for `__CUDA_ARCH__ >= 1000`;
below it the helper returns 0). `flashinfer.mxfp4_dequantize` is a host (CPU) loop, not a GPU
kernel, and maps scale code 0 to 0.0 (the bits `code << 23`) instead of 2^-127 and code 255 to +inf
instead of NaN (measured); its nibble order (element 2i in the low nibble) and its linear scale
layout would match the contract.

Measured FlashInfer behaviour the adapters do not hide (the property suite reports it):
`fused_topk_deepseek` scores with `0.5 tanh(x/2) + 0.5`, the tanh compiled to tanh.approx.f32
(FlashInfer's JIT builds with -use_fast_math), exactly 0 in float32 below x ~ -17, so very
negative logits give all-zero weights (`0 / (0 + 1e-20)`): the named variant
`approx_tanh_sigmoid` (`--accept approx_tanh_sigmoid`; docs/contract-notes.md); see also
docs/router-dtype-study.md.
"""

from __future__ import annotations

import torch

from parity._errors import Unsupported
from parity.reference.mhc import validate_mhc_post, validate_mhc_pre
from parity.reference.routing import validate_route
from parity.reference.swiglu import validate_swiglu
from parity.registry import register

_F32_MAX = torch.finfo(torch.float32).max
_BASE = dict(backend="flashinfer", devices=("cuda",), requires=("flashinfer",))


def _dtypes(meta: dict) -> tuple[torch.dtype, torch.dtype]:
    """A case description's (dtype, x_dtype): torch dtype names (the mHC specs' "same" x_dtype)."""
    dtype = getattr(torch, meta["dtype"])
    xd = meta.get("x_dtype", "same")
    return dtype, (dtype if xd == "same" else getattr(torch, xd))


def _cuda(op: str, t: torch.Tensor) -> None:
    if t.device.type != "cuda":
        raise Unsupported(f"{op}: FlashInfer runs on CUDA tensors, got {t.device}")


# --- mHC ------------------------------------------------------------------------------------------


def mhc_post_support(dtype: torch.dtype, x_dtype: torch.dtype, hc: int) -> str | None:
    """Why flashinfer.mhc.mhc_post cannot run this case (None: it can)."""
    for name, dt in (("residual", dtype), ("x", x_dtype)):
        if dt != torch.bfloat16:
            return f"FlashInfer takes bfloat16 {name}, got {dt}"
    if hc != 4:
        return f"FlashInfer's mHC kernels are hard-wired to hc=4, got {hc}"
    return None


def _mhc_post_meta(meta: dict) -> str | None:
    dtype, x_dtype = _dtypes(meta)
    return mhc_post_support(dtype, x_dtype, meta["hc"])


@register(
    "mhc_post",
    name="flashinfer",
    supports=_mhc_post_meta,
    dtypes=(torch.bfloat16,),
    min_cc=(9, 0),
    note="flashinfer.mhc.mhc_post (bf16, hc=4); comb indexed [old, new] as the contract",
    **_BASE,
)
def mhc_post(x, residual, post_mix, comb_res_mix):
    op = "mhc_post"
    validate_mhc_post(x, residual, post_mix, comb_res_mix)
    t, hc, h = residual.shape
    why = mhc_post_support(residual.dtype, x.dtype, hc)
    if why:
        raise Unsupported(f"{op}: {why}")
    _cuda(op, residual)
    if t == 0:
        return torch.empty((0, hc, h), dtype=residual.dtype, device=residual.device)
    from flashinfer.mhc import mhc_post as fi_mhc_post

    out = fi_mhc_post(
        x.contiguous(),
        residual.contiguous(),
        post_mix.reshape(t, hc).contiguous(),
        comb_res_mix.contiguous(),
    )
    return out.contiguous()


def mhc_pre_support(
    dtype: torch.dtype, hc: int, h: int, *, rms_eps, pre_eps, sinkhorn_eps, post_mult
) -> str | None:
    """Why mhc_pre_big_fuse_with_prenorm cannot run this case (None: it can)."""
    if dtype != torch.bfloat16:
        return f"FlashInfer takes bfloat16 residual, got {dtype}"
    if hc != 4:
        return f"FlashInfer's mHC kernels are hard-wired to hc=4, got {hc}"
    if h % 8:
        return f"FlashInfer's mhc_pre needs H % 8 == 0, got H={h}"
    for name, v in (("rms_eps", rms_eps), ("pre_eps", pre_eps), ("sinkhorn_eps", sinkhorn_eps)):
        if not float(v) > 0.0 or float(v) < torch.finfo(torch.float32).tiny:
            return f"FlashInfer needs {name} > 0 in float32, got {v}"
    if abs(float(post_mult)) > _F32_MAX:  # sinkhorn_iters: bounded by the reference
        return f"post_mult={post_mult} does not fit a float32 kernel argument"
    return None


def _mhc_pre_meta(meta: dict) -> str | None:
    o = meta["options"]  # the strategy names every option (a missing one: the adapter decides)
    kw = {k: o[k] for k in ("rms_eps", "pre_eps", "sinkhorn_eps", "post_mult")}
    return mhc_pre_support(_dtypes(meta)[0], meta["hc"], meta["H"], **kw)


@register(
    "mhc_pre",
    name="flashinfer",
    supports=_mhc_pre_meta,
    dtypes=(torch.bfloat16,),
    min_cc=(9, 0),
    note="torch fp32 GEMM (dot_mix) + flashinfer.mhc.mhc_pre_big_fuse_with_prenorm (bf16, hc=4)",
    **_BASE,
)
def mhc_pre(
    residual,
    fn,
    hc_scale,
    hc_base,
    *,
    rms_eps=1e-6,
    pre_eps=1e-6,
    sinkhorn_eps=1e-6,
    post_mult=1.0,
    sinkhorn_iters=20,
):
    op = "mhc_pre"
    t, hc, h = validate_mhc_pre(
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
    why = mhc_pre_support(
        residual.dtype, hc, h, rms_eps=rms_eps, pre_eps=pre_eps, sinkhorn_eps=sinkhorn_eps,
        post_mult=post_mult,
    )  # fmt: skip
    if why:
        raise Unsupported(f"{op}: {why}")
    _cuda(op, residual)
    dev = residual.device
    if t == 0:
        return (
            torch.empty((0, hc, 1), dtype=torch.float32, device=dev),
            torch.empty((0, hc, hc), dtype=torch.float32, device=dev),
            torch.empty((0, h), dtype=residual.dtype, device=dev),
        )
    from flashinfer.mhc import mhc_pre_big_fuse_with_prenorm

    r = residual.contiguous()
    dot_mix = torch.matmul(r.view(t, hc * h).float(), fn.t())  # float32 (TF32 only if enabled)
    post, comb, li = mhc_pre_big_fuse_with_prenorm(
        dot_mix.contiguous(),
        r,
        hc_scale.contiguous(),
        hc_base.contiguous(),
        rms_eps=float(rms_eps),
        mhc_pre_eps=float(pre_eps),
        mhc_sinkhorn_eps=float(sinkhorn_eps),
        mhc_post_mult_value=float(post_mult),
        sinkhorn_repeat=int(sinkhorn_iters),
    )
    return post.contiguous(), comb.contiguous(), li.contiguous()


# --- swiglu ---------------------------------------------------------------------------------------


def swiglu_support(dtype: torch.dtype, *, limit, alpha, beta, layout) -> str | None:
    """Why flashinfer.silu_and_mul cannot run this case (None: it can)."""
    if limit is not None or float(alpha) != 1.0 or float(beta) != 0.0 or layout != "concat":
        return (
            "flashinfer.silu_and_mul is plain SiLU-and-mul on the concat layout (limit=None, "
            f"alpha=1, beta=0); got limit={limit}, alpha={alpha}, beta={beta}, layout={layout!r}"
        )
    if dtype not in (torch.bfloat16, torch.float16):
        return f"flashinfer.silu_and_mul takes bfloat16/float16, got {dtype}"
    return None


def _swiglu_meta(meta: dict) -> str | None:
    o = meta["options"]  # the strategy names every option (a missing one: the adapter decides)
    kw = {k: o[k] for k in ("limit", "alpha", "beta", "layout")}
    return swiglu_support(_dtypes(meta)[0], **kw)


@register(
    "swiglu",
    name="flashinfer",
    supports=_swiglu_meta,
    dtypes=(torch.bfloat16, torch.float16),
    note="flashinfer.silu_and_mul: limit=None, alpha=1, beta=0, concat only; judged under its "
    "fast_math convention",
    # built with --use_fast_math: div.approx gives silu 0 for gates below -87.34 and float32
    # subnormals flush to zero (H100 nightly, 2026-12-06; docs/contract-notes.md): a build
    # convention of the library, named, not a bug; what differs beyond it still fails
    accept=("fast_math",),
    **_BASE,
)
def swiglu(x, *, limit=None, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre"):
    op = "swiglu"
    validate_swiglu(x, limit=limit, alpha=alpha, beta=beta, layout=layout, clamp_mode=clamp_mode)
    why = swiglu_support(x.dtype, limit=limit, alpha=alpha, beta=beta, layout=layout)
    if why:
        raise Unsupported(f"{op}: {why}")
    _cuda(op, x)
    n = x.shape[-1] // 2
    if x.numel() == 0 or n == 0:
        return torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    import flashinfer

    return flashinfer.silu_and_mul(x.contiguous()).contiguous()


# --- route ----------------------------------------------------------------------------------------


def route_support(e: int, k: int, n_group: int, topk_group: int) -> str | None:
    """Why fused_topk_deepseek cannot run this configuration (None: it can)."""
    if k > 8:
        return f"k={k} > 8"
    if topk_group * n_group < k:  # its Python check (seen on the H100, 2026-12-05)
        return f"topk_group*n_group={topk_group * n_group} < k={k} (FlashInfer's own check)"
    if n_group == 1:
        return None if e <= 384 else f"E={e} > 384 with n_group=1"
    size = e // n_group
    if n_group > 8:
        return f"n_group={n_group} > 8 (the kernel has one warp per group, 8 warps)"
    if e > 256:
        return f"E={e} > 256 with groups"
    if size < 2 or size > 32:
        return f"E/n_group={size} outside [2, 32]"
    if topk_group > 4:
        return f"topk_group={topk_group} > 4 (the kernel keeps at most 4 groups)"
    if size * topk_group > 128:
        return f"(E/n_group)*topk_group={size * topk_group} > 128"
    return None


def route_case_support(
    method: str, renormalize: bool, scale: float, e: int, k: int, n_group: int, topk_group: int
) -> str | None:
    """Why fused_topk_deepseek cannot run this case: its options, then `route_support`'s
    kernel limits (None: it can)."""
    if method != "dsv3":
        return "it implements method='dsv3' only"
    if not renormalize:
        return "it always renormalizes"
    if scale > _F32_MAX:
        return f"routed_scaling_factor={scale} beyond float32"
    return route_support(e, k, n_group, topk_group)


def _route_meta(meta: dict) -> str | None:
    c = meta["config"]
    scale = float(meta["routed_scaling_factor"])  # as validate_route returns it
    return route_case_support(
        c["method"], meta["renormalize"], scale, c["E"], c["k"], c["n_group"], c["topk_group"]
    )


@register(
    "route",
    name="flashinfer",
    supports=_route_meta,
    min_cc=(9, 0),
    note="flashinfer.fused_topk_deepseek: dsv3, renormalize=True, kernel limits (see module); "
    "judged under its approx_tanh_sigmoid convention",
    # its scores are 0.5 tanh(0.5 x) + 0.5 with tanh.approx.f32 (docs/contract-notes.md): a
    # convention of the library, named, not a bug; what differs beyond it still fails
    accept=("approx_tanh_sigmoid",),
    **_BASE,
)
def route(
    logits,
    *,
    k,
    method="softmax",
    bias=None,
    n_group=1,
    topk_group=1,
    renormalize=True,
    routed_scaling_factor=1.0,
):
    op = "route"
    scale = validate_route(
        logits,
        k=k,
        method=method,
        bias=bias,
        n_group=n_group,
        topk_group=topk_group,
        renormalize=renormalize,
        routed_scaling_factor=routed_scaling_factor,
    )
    t, e = logits.shape
    why = route_case_support(method, renormalize, scale, e, k, n_group, topk_group)
    if why:
        raise Unsupported(f"{op}: fused_topk_deepseek: {why}")
    _cuda(op, logits)
    weights = torch.empty((t, k), dtype=torch.float32, device=logits.device)
    ids = torch.empty((t, k), dtype=torch.int32, device=logits.device)
    if t == 0:
        return weights, ids
    from flashinfer.fused_moe import fused_topk_deepseek

    fused_topk_deepseek(
        logits.to(torch.float32).contiguous(),
        bias.to(torch.float32).contiguous(),
        n_group,
        topk_group,
        k,
        scale,
        weights,
        ids,
    )
    return weights, ids
