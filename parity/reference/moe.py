"""Reference fused MoE (`docs/ops.md`, "fused_moe"): routed experts with SwiGLU, weighted sum.

Loops over the experts that have tokens (gather their tokens, two GEMMs, scatter into a
`[T, k, H]` buffer) and sums over k in order: deterministic on every device, no atomics.

Choices where the contract is silent:

- `"fp8_block"` quantizes activations per group of `block_shape[1]` columns, so it needs
  `H % block_shape[1] == 0` and `N % block_shape[1] == 0` (fp8_quant's rule); the weight blocks
  may be partial (scale shapes use ceil). Both activation quantizations follow `fp8_quant`
  (fp32 scales, eps 1e-10) on float32 input: the SwiGLU output (the float32 intermediate of a
  fused `silu_mul_fp8_quant`) is rounded to float32 first in the float64 oracle mode, since the
  format is defined in float32. Dequantization (codes times scales, activations and weights)
  is done in the compute dtype: exact in float64.
- `apply_router_weight_on_input` scales x in the compute dtype without rounding to x.dtype
  (vLLM rounds `x * w` to x.dtype: within the tolerance), before the fp8 quantization.
- The weight of a skipped (-1) slot is ignored, even if it is NaN or inf.
- `k >= 1`; `topk_ids` values in [-1, E) are checked (a data-dependent check, before any work).
"""

from __future__ import annotations

import math

import torch

from parity.reference.common import (
    FLOAT_DTYPES,
    FP8,
    check_choice,
    check_int,
    check_tensor,
    compute_dtype,
    fail,
    finish,
)
from parity.reference.quant import _fp8_quant_f32, mxfp4_dequant
from parity.reference.swiglu import check_swiglu_options, swiglu_math

QUANT_MODES = ("none", "fp8_block", "mxfp4")
MX_BLOCK = 32


def _check_block_shape(op: str, block_shape) -> tuple[int, int]:
    if not isinstance(block_shape, (tuple, list)):
        fail(op, "block_shape", "a pair of ints", type(block_shape).__name__, kind=TypeError)
    if len(block_shape) != 2:
        fail(op, "block_shape", "a pair of ints", repr(block_shape))
    return (
        check_int(op, "block_shape[0]", block_shape[0], lo=1),
        check_int(op, "block_shape[1]", block_shape[1], lo=1),
    )


def _check_scale(op: str, name: str, scale, quant: str, shape, dev) -> None:
    if quant == "none":
        if scale is not None:
            fail(op, name, "None with quant='none'", type(scale).__name__)
        return
    dtype = torch.float32 if quant == "fp8_block" else torch.uint8
    check_tensor(op, name, scale, dtypes=(dtype,), shape=shape, device=dev)


def _fake_quant_fp8(v: torch.Tensor, group_size: int, dtype) -> torch.Tensor:
    """`fp8_quant(v, group_size)` then dequantize, in `dtype` (the format works in float32)."""
    q, s = _fp8_quant_f32(v.to(torch.float32), group_size, "fp32", 1e-10)
    return q.to(dtype) * s.to(dtype).repeat_interleave(group_size, dim=-1)


def _block_dequant(q: torch.Tensor, scales: torch.Tensor, block_shape, dtype) -> torch.Tensor:
    """`q [R, C]` float8 times its block scales `[ceil(R/br), ceil(C/bc)]`, in `dtype`."""
    br, bc = block_shape
    rows, cols = q.shape
    s = scales.to(dtype).repeat_interleave(br, dim=0).repeat_interleave(bc, dim=1)
    return q.to(dtype) * s[:rows, :cols]


def validate_fused_moe(
    x,
    w13,
    w2,
    topk_weights,
    topk_ids,
    *,
    quant,
    w13_scale,
    w2_scale,
    swiglu_limit,
    swiglu_alpha,
    swiglu_beta,
    layout,
    swiglu_clamp_mode,
    apply_router_weight_on_input,
    block_shape,
    op: str = "fused_moe",
    check_ids: bool = True,
) -> tuple[int, int, int, int, tuple[int, int]]:
    """Every check of fused_moe's input, before any work (shared with the fast paths so their
    errors match): returns (T, H, E, N, block_shape). `check_ids=False` skips the one check
    that reads device data (topk_ids in [-1, E)): a fast path under CUDA-graph capture cannot
    read it (docs/contract-notes.md, "fused_moe under CUDA-graph capture")."""
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, ndim=2)
    t, h = x.shape
    dev = x.device
    check_choice(op, "quant", quant, QUANT_MODES)
    check_swiglu_options(
        op, swiglu_limit, swiglu_alpha, swiglu_beta, layout, swiglu_clamp_mode, prefix="swiglu_"
    )
    if not isinstance(apply_router_weight_on_input, bool):
        fail(
            op,
            "apply_router_weight_on_input",
            "a bool",
            type(apply_router_weight_on_input).__name__,
            kind=TypeError,
        )
    br, bc = _check_block_shape(op, block_shape)

    w_dtype = {"none": x.dtype, "fp8_block": FP8, "mxfp4": torch.uint8}[quant]
    pack = 2 if quant == "mxfp4" else 1  # two E2M1 codes per byte
    check_tensor(op, "w13", w13, dtypes=(w_dtype,), ndim=3, device=dev)
    e, two_n = w13.shape[:2]
    if e < 1 or two_n < 2 or two_n % 2 != 0:
        fail(op, "w13", "[E, 2N, *] with E >= 1 and 2N a positive even number", list(w13.shape))
    n = two_n // 2
    if quant == "mxfp4":
        if h % MX_BLOCK != 0:
            fail(op, "x", f"H (dim 1) divisible by {MX_BLOCK} for quant='mxfp4'", list(x.shape))
        if n % MX_BLOCK != 0:
            fail(op, "w13", f"N = dim 1 / 2 divisible by {MX_BLOCK} for quant='mxfp4'", n)
    if quant == "fp8_block":
        if h % bc != 0:
            fail(op, "x", f"H (dim 1) divisible by block_shape[1]={bc}", list(x.shape))
        if n % bc != 0:
            fail(op, "w13", f"N = dim 1 / 2 divisible by block_shape[1]={bc}", n)
    check_tensor(op, "w13", w13, shape=(e, two_n, h // pack))
    check_tensor(op, "w2", w2, dtypes=(w_dtype,), shape=(e, h, n // pack), device=dev)
    if quant == "fp8_block":
        s13, s2 = (e, math.ceil(two_n / br), h // bc), (e, math.ceil(h / br), n // bc)
    else:  # mxfp4 (the shapes are unused for "none")
        s13, s2 = (e, two_n, h // MX_BLOCK), (e, h, n // MX_BLOCK)
    _check_scale(op, "w13_scale", w13_scale, quant, s13, dev)
    _check_scale(op, "w2_scale", w2_scale, quant, s2, dev)

    check_tensor(op, "topk_weights", topk_weights, dtypes=(torch.float32,), ndim=2, device=dev)
    k = topk_weights.shape[1]
    check_tensor(op, "topk_weights", topk_weights, shape=(t, None))
    if k < 1:
        fail(op, "topk_weights", "at least 1 column (k >= 1)", list(topk_weights.shape))
    check_tensor(op, "topk_ids", topk_ids, dtypes=(torch.int32,), shape=(t, k), device=dev)
    if apply_router_weight_on_input and k != 1:
        fail(op, "apply_router_weight_on_input", "False when k != 1", f"True with k={k}")
    if check_ids:
        check_topk_ids(op, topk_ids, e)

    return t, h, e, n, (br, bc)


def check_topk_ids(op: str, topk_ids: torch.Tensor, e: int) -> None:
    """topk_ids values in [-1, E), else ValueError naming the first bad one: the one check of
    fused_moe's input that reads device data (a device-to-host copy, so a sync)."""
    ids = topk_ids.long()
    bad = (ids < -1) | (ids >= e)
    if bool(bad.any()):
        fail(op, "topk_ids", f"values in [-1, {e})", int(ids[bad][0]))


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    quant: str = "none",
    w13_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
    swiglu_limit: float | None = None,
    swiglu_alpha: float = 1.0,
    swiglu_beta: float = 0.0,
    layout: str = "concat",
    swiglu_clamp_mode: str = "pre",
    apply_router_weight_on_input: bool = False,
    block_shape=(128, 128),
) -> torch.Tensor:
    """`out[t] = sum_j topk_weights[t, j] * (swiglu(x[t] @ w13[e].T) @ w2[e].T)`, `e =
    topk_ids[t, j]` (-1: skipped), in `x.dtype`; intermediates in `compute_dtype()`.

    `x [T, H]`, `w13 [E, 2N, H]` (gate rows then up rows for `"concat"`, alternating for
    `"interleaved"`), `w2 [E, H, N]`, `topk_weights [T, k]` float32, `topk_ids [T, k]` int32.
    `quant`: `"none"` (weights in x.dtype), `"fp8_block"` (float8_e4m3fn weights with float32
    block scales `[E, ceil(2N/br), ceil(H/bc)]` and `[E, ceil(H/br), ceil(N/bc)]`; activations
    fp8-quantized per group of `bc` before each GEMM, emulated exactly), `"mxfp4"` (uint8 packed
    `[E, 2N, H/2]`, `[E, H, N/2]` with uint8 E8M0 scales `[E, 2N, H/32]`, `[E, H, N/32]`;
    weights dequantized exactly, activations unquantized). `apply_router_weight_on_input` (k ==
    1 only) scales x before the first GEMM instead of the output.
    """
    t, h, _, _, (br, bc) = validate_fused_moe(
        x,
        w13,
        w2,
        topk_weights,
        topk_ids,
        quant=quant,
        w13_scale=w13_scale,
        w2_scale=w2_scale,
        swiglu_limit=swiglu_limit,
        swiglu_alpha=swiglu_alpha,
        swiglu_beta=swiglu_beta,
        layout=layout,
        swiglu_clamp_mode=swiglu_clamp_mode,
        apply_router_weight_on_input=apply_router_weight_on_input,
        block_shape=block_shape,
    )
    dev, k = x.device, topk_ids.shape[1]
    ids = topk_ids.long()
    cd = compute_dtype()
    valid = ids >= 0
    w = torch.where(valid, topk_weights.to(cd), 0.0)  # a skipped slot's weight is ignored
    xin = x.to(cd)
    if apply_router_weight_on_input:
        xin = xin * w  # [T, 1]: k == 1
        w = valid.to(cd)
    if quant == "fp8_block":
        xin = _fake_quant_fp8(xin, bc, cd)  # per token: quantizing before the gather is the same

    def expert_weights(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if quant == "none":
            return w13[i].to(cd), w2[i].to(cd)
        if quant == "fp8_block":
            return (
                _block_dequant(w13[i], w13_scale[i], (br, bc), cd),
                _block_dequant(w2[i], w2_scale[i], (br, bc), cd),
            )
        # E2M1 value times a power of two: exact in float32
        return (
            mxfp4_dequant(w13[i], w13_scale[i], dtype=torch.float32).to(cd),
            mxfp4_dequant(w2[i], w2_scale[i], dtype=torch.float32).to(cd),
        )

    contrib = torch.zeros(t, k, h, dtype=cd, device=dev)
    for i in torch.unique(ids[valid]).tolist():
        rows, slots = (ids == i).nonzero(as_tuple=True)
        up, down = expert_weights(i)
        # swiglu_math, not swiglu_f32: the latter validates its input as an op input and
        # rejects the float64 intermediate of the oracle mode.
        act = swiglu_math(
            xin[rows] @ up.T,
            limit=swiglu_limit,
            alpha=swiglu_alpha,
            beta=swiglu_beta,
            layout=layout,
            clamp_mode=swiglu_clamp_mode,
            dtype=cd,
        )
        if quant == "fp8_block":
            act = _fake_quant_fp8(act, bc, cd)
        contrib[rows, slots] = act @ down.T
    out = (w.unsqueeze(-1) * contrib).sum(1)  # rows with only -1 slots stay 0
    return finish(out, x.dtype)
