"""Reference hyper-connection ops (`docs/ops.md`, "Hyper-connections (mHC)").

sinkhorn, mhc_pre, mhc_post, mhc_fused_post_pre, mhc_head, following the TileLang
`examples/deepseek_mhc` references (`sinkhorn_normalize_ref`, `mhc_pre_ref`, `mhc_post_ref`) and
vLLM's `hc_head`. Everything is computed in `compute_dtype()` and rounded once at the end.

Choices where the contract leaves room:

- `residual` (and `x` of mhc_post) may be bfloat16, float16 or float32 (the contract names
  bfloat16, the DeepSeek-V4 dtype; the conventions allow all three); outputs that follow the
  streams are rounded to `residual.dtype`. `x` of mhc_post need not have `residual.dtype`.
- `fn`, `hc_scale`, `hc_base`, `comb_res_mix`, `post_mix` and sinkhorn's `logits` must be
  float32 (the contract types them so; the kernels read them as float32).
- Epsilons that divide (`rms_eps`, `sinkhorn eps`) must be > 0, so no NaN or inf ever appears
  without a NaN input; epsilons that are only added (`pre_eps`, `hc_eps`) must be >= 0. All
  float options must be finite.
- Sinkhorn iteration counts are in [1, MAX_SINKHORN_ITERS].
"""

from __future__ import annotations

import torch

from parity.reference.common import (
    FLOAT_DTYPES,
    check_float,
    check_int,
    check_tensor,
    compute_dtype,
    fail,
    finish,
)

F32 = (torch.float32,)
# A loop count, not a size: 2**16 is over 3000 times DeepSeek-V4's 20 (the iteration converges
# long before), fits every kernel's int32 counter, and keeps a reference call to seconds; a
# larger count is a mistaken argument that would only hang the caller.
MAX_SINKHORN_ITERS = 1 << 16


# --- validation -----------------------------------------------------------------------------------


def check_sinkhorn_iters(op: str, name: str, iters) -> int:
    return check_int(op, name, iters, lo=1, hi=MAX_SINKHORN_ITERS)


def _check_streams(op: str, residual) -> tuple[int, int, int]:
    """`residual [T, hc, H]` with hc, H >= 1; returns (T, hc, H)."""
    check_tensor(op, "residual", residual, dtypes=FLOAT_DTYPES, ndim=3)
    t, hc, h = residual.shape
    if hc < 1 or h < 1:
        fail(op, "residual", "shape [T, hc, H] with hc >= 1 and H >= 1", list(residual.shape))
    return t, hc, h


def _check_pre_weights(op: str, residual, fn, hc_scale, hc_base) -> None:
    _, hc, h = residual.shape
    dev = residual.device
    check_tensor(op, "fn", fn, dtypes=F32, shape=(hc * (2 + hc), hc * h), device=dev)
    check_tensor(op, "hc_scale", hc_scale, dtypes=F32, shape=(3,), device=dev)
    check_tensor(op, "hc_base", hc_base, dtypes=F32, shape=(hc * (2 + hc),), device=dev)


def _check_pre_options(op, rms_eps, pre_eps, sinkhorn_eps, post_mult, sinkhorn_iters) -> None:
    check_float(op, "rms_eps", rms_eps, positive=True)
    check_float(op, "pre_eps", pre_eps, lo=0.0)
    check_float(op, "sinkhorn_eps", sinkhorn_eps, positive=True)
    check_float(op, "post_mult", post_mult)
    check_sinkhorn_iters(op, "sinkhorn_iters", sinkhorn_iters)


def _check_post_inputs(op: str, x, residual, post_mix, comb_res_mix) -> None:
    t, hc, h = _check_streams(op, residual)
    dev = residual.device
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, shape=(t, h), device=dev)
    check_tensor(op, "post_mix", post_mix, dtypes=F32, min_ndim=2, device=dev)
    if tuple(post_mix.shape) not in ((t, hc, 1), (t, hc)):
        fail(op, "post_mix", f"shape [{t}, {hc}, 1] or [{t}, {hc}]", list(post_mix.shape))
    check_tensor(op, "comb_res_mix", comb_res_mix, dtypes=F32, shape=(t, hc, hc), device=dev)


# --- math (unvalidated, unrounded, in the dtype of its inputs) ------------------------------------


def _sinkhorn_math(x: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    p = x.softmax(-1) + eps
    p = p / (p.sum(-2, keepdim=True) + eps)  # columns
    for _ in range(iters - 1):
        p = p / (p.sum(-1, keepdim=True) + eps)  # rows
        p = p / (p.sum(-2, keepdim=True) + eps)  # columns: always the last step
    return p


def _rsqrt_ms(r: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / RMS over the last dim, keepdim (the mean covers all hc * H values of a token)."""
    return torch.rsqrt(r.square().mean(-1, keepdim=True) + eps)


def _pre_math(r3, fn, hc_scale, hc_base, rms_eps, pre_eps, sinkhorn_eps, post_mult, iters):
    """mhc_pre on `r3 [T, hc, H]` already in the compute dtype -> (post, comb, layer_input)."""
    t, hc, h = r3.shape
    dt = r3.dtype
    r = r3.reshape(t, hc * h)  # explicit sizes: T may be 0
    mixes = (r @ fn.to(dt).T) * _rsqrt_ms(r, rms_eps)
    s = hc_scale.to(dt)
    scale = torch.cat([s[0].expand(hc), s[1].expand(hc), s[2].expand(hc * hc)])
    mixes = mixes * scale + hc_base.to(dt)
    pre = torch.sigmoid(mixes[:, :hc]) + pre_eps
    post = (torch.sigmoid(mixes[:, hc : 2 * hc]) * post_mult).unsqueeze(-1)
    comb = _sinkhorn_math(mixes[:, 2 * hc :].reshape(t, hc, hc), iters, sinkhorn_eps)
    layer_input = (pre.unsqueeze(-1) * r3).sum(1)
    return post, comb, layer_input


def _post_math(x, residual, post_mix, comb_res_mix, dt) -> torch.Tensor:
    """new[:, j] = x * post[:, j] + sum_i comb[:, i, j] * residual[:, i], unrounded in `dt`."""
    t, hc, _ = residual.shape
    post = post_mix.to(dt).reshape(t, hc, 1)  # [T, hc] and [T, hc, 1] alike
    comb, res = comb_res_mix.to(dt), residual.to(dt)
    # The stream sum element by element, i = 0, 1, ... in order, not an einsum: a batched
    # matmul's kernel, and so its summation order, follows T on CUDA, which broke the
    # reference's own batch invariance (H100, 2026-12-06: 1 of 916 bfloat16 values after a split)
    mixed = comb[:, 0, :, None] * res[:, 0, None, :]  # hc >= 1 (validated); no 0 + a: -0 stays
    for i in range(1, hc):
        mixed = mixed + comb[:, i, :, None] * res[:, i, None, :]
    return x.to(dt).unsqueeze(1) * post + mixed


# --- ops ----------------------------------------------------------------------------------------


def validate_sinkhorn(logits, *, iters=20, eps=1e-6) -> tuple[int, float]:
    """Every check of sinkhorn's input, before any work (shared with the fast paths so their
    errors match): returns (n, eps)."""
    op = "sinkhorn"
    check_tensor(op, "logits", logits, dtypes=F32, min_ndim=2)
    n = logits.shape[-1]
    if logits.shape[-2] != n or n < 1:
        fail(op, "logits", "square last two dimensions [..., n, n], n >= 1", list(logits.shape))
    check_sinkhorn_iters(op, "iters", iters)
    return n, check_float(op, "eps", eps, positive=True)


def validate_mhc_pre(
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
) -> tuple[int, int, int]:
    """Every check of mhc_pre's input, before any work (shared with the fast paths so their
    errors match): returns (T, hc, H)."""
    op = "mhc_pre"
    shape = _check_streams(op, residual)
    _check_pre_weights(op, residual, fn, hc_scale, hc_base)
    _check_pre_options(op, rms_eps, pre_eps, sinkhorn_eps, post_mult, sinkhorn_iters)
    return shape


def validate_mhc_post(x, residual, post_mix, comb_res_mix) -> tuple[int, int, int]:
    """Every check of mhc_post's input, before any work (shared with the fast paths so their
    errors match): returns (T, hc, H)."""
    _check_post_inputs("mhc_post", x, residual, post_mix, comb_res_mix)
    return tuple(residual.shape)


def validate_mhc_fused_post_pre(
    x,
    residual,
    post_mix,
    comb_res_mix,
    fn,
    hc_scale,
    hc_base,
    *,
    rms_eps=1e-6,
    pre_eps=1e-6,
    sinkhorn_eps=1e-6,
    post_mult=1.0,
    sinkhorn_iters=20,
) -> tuple[int, int, int]:
    """Every check of mhc_fused_post_pre's input, before any work (shared with the fast paths
    so their errors match): returns (T, hc, H)."""
    op = "mhc_fused_post_pre"
    _check_post_inputs(op, x, residual, post_mix, comb_res_mix)
    _check_pre_weights(op, residual, fn, hc_scale, hc_base)
    _check_pre_options(op, rms_eps, pre_eps, sinkhorn_eps, post_mult, sinkhorn_iters)
    return tuple(residual.shape)


def validate_mhc_head(residual, fn, hc_scale, hc_base, *, rms_eps=1e-6, hc_eps=1e-6):
    """Every check of mhc_head's input, before any work (shared with the fast paths so their
    errors match): returns (T, hc, H, rms_eps, hc_eps)."""
    op = "mhc_head"
    t, hc, h = _check_streams(op, residual)
    dev = residual.device
    check_tensor(op, "fn", fn, dtypes=F32, shape=(hc, hc * h), device=dev)
    check_tensor(op, "hc_scale", hc_scale, dtypes=F32, shape=(1,), device=dev)
    check_tensor(op, "hc_base", hc_base, dtypes=F32, shape=(hc,), device=dev)
    rms_eps = check_float(op, "rms_eps", rms_eps, positive=True)
    hc_eps = check_float(op, "hc_eps", hc_eps, lo=0.0)
    return t, hc, h, rms_eps, hc_eps


def sinkhorn(logits: torch.Tensor, *, iters: int = 20, eps: float = 1e-6) -> torch.Tensor:
    """`logits [..., n, n]` float32 -> doubly (near-)stochastic `p [..., n, n]` float32.

    `p = softmax(logits, -1) + eps`, then a column normalization `p / (p.sum(-2) + eps)`, then
    `iters - 1` times a row then a column normalization. It ends on columns: columns sum to 1
    within about n * eps, rows approximately. `eps > 0` keeps every divisor positive.
    """
    _, eps = validate_sinkhorn(logits, iters=iters, eps=eps)
    p = _sinkhorn_math(logits.to(compute_dtype()), iters, eps)
    return finish(p, torch.float32)


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
    """mHC pre: `residual [T, hc, H]` -> (post_mix `[T, hc, 1]` float32, comb_res_mix
    `[T, hc, hc]` float32, layer_input `[T, H]` in `residual.dtype`).

    `fn [hc*(2+hc), hc*H]`, `hc_scale [3]`, `hc_base [hc*(2+hc)]`, all float32. With `r` the
    token's hc*H values: `mixes = (r @ fn.T) / rms(r) * scale + hc_base` (scale repeats
    hc_scale[0], [1], [2] over the pre, post and comb slices); `pre = sigmoid + pre_eps`,
    `post_mix = sigmoid * post_mult`, `comb_res_mix = sinkhorn(comb slice)`,
    `layer_input = sum_i pre[i] * residual[:, i]`.
    """
    validate_mhc_pre(
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
    post, comb, layer_input = _pre_math(
        residual.to(compute_dtype()),
        fn,
        hc_scale,
        hc_base,
        float(rms_eps),
        float(pre_eps),
        float(sinkhorn_eps),
        float(post_mult),
        sinkhorn_iters,
    )
    return (
        finish(post, torch.float32),
        finish(comb, torch.float32),
        finish(layer_input, residual.dtype),
    )


def mhc_post(
    x: torch.Tensor,
    residual: torch.Tensor,
    post_mix: torch.Tensor,
    comb_res_mix: torch.Tensor,
) -> torch.Tensor:
    """mHC post: `new_residual[:, j] = x * post_mix[:, j] + sum_i comb_res_mix[:, i, j] *
    residual[:, i]` -> `[T, hc, H]` in `residual.dtype`.

    `x [T, H]`, `residual [T, hc, H]`, `post_mix [T, hc, 1]` or `[T, hc]` float32,
    `comb_res_mix [T, hc, hc]` float32 indexed `[old stream i, new stream j]`.
    """
    validate_mhc_post(x, residual, post_mix, comb_res_mix)
    new = _post_math(x, residual, post_mix, comb_res_mix, compute_dtype())
    return finish(new, residual.dtype)


def _fused(x, residual, post_mix, comb_res_mix, fn, hc_scale, hc_base, opts, keep_f32):
    rms_eps, pre_eps, sinkhorn_eps, post_mult, iters = opts
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
        sinkhorn_iters=iters,
    )

    new = _post_math(x, residual, post_mix, comb_res_mix, compute_dtype())
    # The unfused chain rounds new_residual to residual.dtype before the pre reads it: an
    # op-defined intermediate rounding, so it applies even when the final rounding is off.
    pre_in = new if keep_f32 else new.to(residual.dtype).to(new.dtype)
    post, comb, layer_input = _pre_math(
        pre_in,
        fn,
        hc_scale,
        hc_base,
        float(rms_eps),
        float(pre_eps),
        float(sinkhorn_eps),
        float(post_mult),
        iters,
    )
    return (
        finish(new, residual.dtype),
        finish(post, torch.float32),
        finish(comb, torch.float32),
        finish(layer_input, residual.dtype),
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
    """`mhc_post` then `mhc_pre` of the next sublayer -> (new_residual, next_post_mix,
    next_comb_res_mix, next_layer_input).

    The unfused chain: the pre reads `new_residual` rounded to `residual.dtype`, so this equals
    `mhc_pre(mhc_post(...), ...)` exactly. `mhc_fused_post_pre_f32` is the other accepted
    variant (the pre reads the unrounded new_residual, as a fused kernel may).
    """
    opts = (rms_eps, pre_eps, sinkhorn_eps, post_mult, sinkhorn_iters)
    return _fused(
        x,
        residual,
        post_mix,
        comb_res_mix,
        fn,
        hc_scale,
        hc_base,
        opts,
        keep_f32=False,
    )


def mhc_fused_post_pre_f32(
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
    """`mhc_fused_post_pre` with the pre reading `new_residual` unrounded (in the compute dtype):
    the fused-kernel variant the contract also accepts. The returned new_residual is the same.
    """
    opts = (rms_eps, pre_eps, sinkhorn_eps, post_mult, sinkhorn_iters)
    return _fused(
        x,
        residual,
        post_mix,
        comb_res_mix,
        fn,
        hc_scale,
        hc_base,
        opts,
        keep_f32=True,
    )


def mhc_head(
    residual: torch.Tensor,
    fn: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    *,
    rms_eps: float = 1e-6,
    hc_eps: float = 1e-6,
) -> torch.Tensor:
    """Final collapse of the streams: `residual [T, hc, H]` -> `out [T, H]` in `residual.dtype`.

    `fn [hc, hc*H]`, `hc_scale [1]`, `hc_base [hc]`, float32.
    `pre = sigmoid((r / rms(r)) @ fn.T * hc_scale + hc_base) + hc_eps`,
    `out = sum_i pre[:, i] * residual[:, i]`.
    """
    _, hc, h, rms_eps, hc_eps = validate_mhc_head(
        residual, fn, hc_scale, hc_base, rms_eps=rms_eps, hc_eps=hc_eps
    )
    dt = compute_dtype()
    r3 = residual.to(dt)
    r = r3.reshape(r3.shape[0], hc * h)
    mixes = (r * _rsqrt_ms(r, rms_eps)) @ fn.to(dt).T
    pre = torch.sigmoid(mixes * hc_scale.to(dt) + hc_base.to(dt)) + hc_eps
    return finish((pre.unsqueeze(-1) * r3).sum(1), residual.dtype)
