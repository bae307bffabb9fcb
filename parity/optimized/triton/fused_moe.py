"""Triton fused MoE (`docs/ops.md`, "fused_moe"), in the design of vLLM's fused_moe Triton path.

Tokens are sorted by expert and padded to BLOCK_SIZE_M (moe_align); GEMM1 over the sorted rows
writes `[T*k, 2N]` in x.dtype; SwiGLU (every contract option) in float32, rounded to x.dtype or,
for fp8_block, quantized per group in the same kernel; GEMM2 with the router weight writes one
row per (token, slot) in x.dtype; a last kernel sums the k rows of each token in a fixed order.
No atomics: bitwise deterministic. Quant modes: "none", "fp8_block" (W8A8 DeepSeek block FP8,
activation codes and scales exactly `fp8_quant`'s), "mxfp4" (W4A16, E2M1 weights dequantized
exactly inside the GEMM). Kernels: `_kernels_fused_moe.py` (imported lazily); tile configs:
`_moe_configs.py` and `configs/`.

Unsupported (NotImplementedError): float32 activations (the registered dtypes are bf16 and
fp16), fp8_block with `block_shape[1]` not a multiple of 16 (a K tile must lie inside one scale
group and `tl.dot` needs K >= 16), SwiGLU options beyond the float32 range (kernel scalars are
float32), CPU tensors without TRITON_INTERPRET=1.
"""

from __future__ import annotations

import math
import os
import warnings

import torch

from parity.optimized.triton.swiglu import check_f32_scalar, launch_context
from parity.reference._common import (
    FLOAT_DTYPES,
    FP8,
    check_choice,
    check_int,
    check_tensor,
    fail,
)
from parity.reference.swiglu import check_swiglu_options
from parity.registry import register

QUANT_MODES = ("none", "fp8_block", "mxfp4")
MX_BLOCK = 32
OP = "fused_moe"


# --- validation (mirrors parity.reference.moe.fused_moe: same checks, order and messages) -------


def _check_block_shape(block_shape) -> tuple[int, int]:
    if not isinstance(block_shape, (tuple, list)):
        fail(OP, "block_shape", "a pair of ints", type(block_shape).__name__, kind=TypeError)
    if len(block_shape) != 2:
        fail(OP, "block_shape", "a pair of ints", repr(block_shape))
    return (
        check_int(OP, "block_shape[0]", block_shape[0], lo=1),
        check_int(OP, "block_shape[1]", block_shape[1], lo=1),
    )


def _check_scale(name: str, scale, quant: str, shape, dev) -> None:
    if quant == "none":
        if scale is not None:
            fail(OP, name, "None with quant='none'", type(scale).__name__)
        return
    dtype = torch.float32 if quant == "fp8_block" else torch.uint8
    check_tensor(OP, name, scale, dtypes=(dtype,), shape=shape, device=dev)


def _validate(
    x,
    w13,
    w2,
    topk_weights,
    topk_ids,
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
) -> tuple[int, int, int, int, tuple[int, int]]:
    """Validate every argument before any work; returns (T, H, E, N, block_shape)."""
    check_tensor(OP, "x", x, dtypes=FLOAT_DTYPES, ndim=2)
    t, h = x.shape
    dev = x.device
    check_choice(OP, "quant", quant, QUANT_MODES)
    check_swiglu_options(
        OP, swiglu_limit, swiglu_alpha, swiglu_beta, layout, swiglu_clamp_mode, prefix="swiglu_"
    )
    if not isinstance(apply_router_weight_on_input, bool):
        fail(
            OP,
            "apply_router_weight_on_input",
            "a bool",
            type(apply_router_weight_on_input).__name__,
            kind=TypeError,
        )
    br, bc = _check_block_shape(block_shape)

    w_dtype = {"none": x.dtype, "fp8_block": FP8, "mxfp4": torch.uint8}[quant]
    pack = 2 if quant == "mxfp4" else 1
    check_tensor(OP, "w13", w13, dtypes=(w_dtype,), ndim=3, device=dev)
    e, two_n = w13.shape[:2]
    if e < 1 or two_n < 2 or two_n % 2 != 0:
        fail(OP, "w13", "[E, 2N, *] with E >= 1 and 2N a positive even number", list(w13.shape))
    n = two_n // 2
    if quant == "mxfp4":
        if h % MX_BLOCK != 0:
            fail(OP, "x", f"H (dim 1) divisible by {MX_BLOCK} for quant='mxfp4'", list(x.shape))
        if n % MX_BLOCK != 0:
            fail(OP, "w13", f"N = dim 1 / 2 divisible by {MX_BLOCK} for quant='mxfp4'", n)
    if quant == "fp8_block":
        if h % bc != 0:
            fail(OP, "x", f"H (dim 1) divisible by block_shape[1]={bc}", list(x.shape))
        if n % bc != 0:
            fail(OP, "w13", f"N = dim 1 / 2 divisible by block_shape[1]={bc}", n)
    check_tensor(OP, "w13", w13, shape=(e, two_n, h // pack))
    check_tensor(OP, "w2", w2, dtypes=(w_dtype,), shape=(e, h, n // pack), device=dev)
    if quant == "fp8_block":
        s13, s2 = (e, math.ceil(two_n / br), h // bc), (e, math.ceil(h / br), n // bc)
    else:
        s13, s2 = (e, two_n, h // MX_BLOCK), (e, h, n // MX_BLOCK)
    _check_scale("w13_scale", w13_scale, quant, s13, dev)
    _check_scale("w2_scale", w2_scale, quant, s2, dev)

    check_tensor(OP, "topk_weights", topk_weights, dtypes=(torch.float32,), ndim=2, device=dev)
    k = topk_weights.shape[1]
    check_tensor(OP, "topk_weights", topk_weights, shape=(t, None))
    if k < 1:
        fail(OP, "topk_weights", "at least 1 column (k >= 1)", list(topk_weights.shape))
    check_tensor(OP, "topk_ids", topk_ids, dtypes=(torch.int32,), shape=(t, k), device=dev)
    if apply_router_weight_on_input and k != 1:
        fail(OP, "apply_router_weight_on_input", "False when k != 1", f"True with k={k}")
    ids = topk_ids.long()
    bad = (ids < -1) | (ids >= e)
    if bool(bad.any()):
        fail(OP, "topk_ids", f"values in [-1, {e})", int(ids[bad][0]))
    return t, h, e, n, (br, bc)


# --- moe_align ----------------------------------------------------------------------------------


def _align_torch(topk_ids: torch.Tensor, num_experts: int, block_size: int):
    """moe_align's contract with torch ops, no host sync: (sorted_ids, expert_ids, num_post).

    Flat indices sorted by expert (stable: ascending within an expert), each expert's run padded
    with T*k to a multiple of block_size; -1 slots skipped; blocks past the total get expert E.
    """
    dev = topk_ids.device
    flat = topk_ids.reshape(-1).to(torch.int64)
    n = flat.numel()
    length = n + num_experts * (block_size - 1)
    key = torch.where(flat < 0, num_experts, flat)  # skipped slots sort last
    order = torch.argsort(key, stable=True)
    skey = key[order]
    counts = torch.bincount(key, minlength=num_experts + 1)[:num_experts]
    padded = (counts + block_size - 1) // block_size * block_size
    pad_start = torch.cumsum(padded, 0) - padded
    run_start = torch.cumsum(counts, 0) - counts
    valid = skey < num_experts
    ekey = skey.clamp(max=num_experts - 1)
    pos = pad_start[ekey] + torch.arange(n, device=dev) - run_start[ekey]
    pos = torch.where(valid, pos, length)  # skipped slots land in a scratch cell, cut below
    buf = torch.full((length + 1,), n, dtype=torch.int32, device=dev)
    buf.scatter_(0, pos, order.to(torch.int32))
    sorted_ids = buf[:length]
    n_blocks = length // block_size + 1
    block_end = torch.cumsum(padded // block_size, 0)
    expert_ids = torch.searchsorted(block_end, torch.arange(n_blocks, device=dev), right=True).to(
        torch.int32
    )
    num_post = padded.sum().to(torch.int32).reshape(1)
    return sorted_ids, expert_ids, num_post


_ALIGN_CHUNK = 128  # flat indices per ranking program of the Triton moe_align
_ALIGN_MAX_COUNTS = 1 << 28  # its per-(chunk, expert) scratch limit


def _align(topk_ids: torch.Tensor, num_experts: int, block_size: int):
    """moe_align for the GEMMs: the Triton counting sort of `moe_align.py` (deterministic, no
    host sync), or the torch version where its int32 indexing or scratch would not fit."""
    flat = topk_ids.reshape(-1).contiguous()
    n = flat.numel()
    size = n + num_experts * (block_size - 1)
    if size >= 2**31 or -(-n // _ALIGN_CHUNK) * num_experts > _ALIGN_MAX_COUNTS:
        return _align_torch(topk_ids, num_experts, block_size)
    from parity.optimized.triton._kernels_moe_align import launch_moe_align

    dev = topk_ids.device
    sorted_ids = torch.full((size,), n, dtype=torch.int32, device=dev)
    expert_ids = torch.empty((size // block_size + 1,), dtype=torch.int32, device=dev)
    num_post = torch.zeros(1, dtype=torch.int32, device=dev)
    launch_moe_align(
        flat,
        sorted_ids,
        expert_ids,
        num_post,
        num_experts=num_experts,
        block_size=block_size,
        chunk=_ALIGN_CHUNK,
    )
    return sorted_ids, expert_ids, num_post


# --- the op -------------------------------------------------------------------------------------


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@register(
    "fused_moe",
    name="triton",
    backend="triton",
    devices=("cuda", "cpu"),
    dtypes=(torch.bfloat16, torch.float16),
    requires=("triton",),
    note="vLLM-style sorted grouped GEMMs; deterministic k reduction; none/fp8_block/mxfp4",
)
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
    t, h, e, n, block_shape = _validate(
        x,
        w13,
        w2,
        topk_weights,
        topk_ids,
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
    )
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise NotImplementedError(f"fused_moe:triton: x dtype {x.dtype} (bf16 and fp16 only)")
    if quant == "fp8_block" and block_shape[1] % 16 != 0:
        raise NotImplementedError(
            f"fused_moe:triton: block_shape[1]={block_shape[1]} is not a multiple of 16"
        )
    for name, value in (
        ("swiglu_limit", swiglu_limit),
        ("swiglu_alpha", swiglu_alpha),
        ("swiglu_beta", swiglu_beta),
    ):
        if value is not None:
            check_f32_scalar(OP, name, float(value))
    interpret = _interpret()
    ctx = launch_context(OP, x)  # Unsupported for a CPU tensor without the interpreter
    if t == 0:
        return torch.empty((0, h), dtype=x.dtype, device=x.device)

    from parity.optimized.triton import _kernels_fused_moe as kern
    from parity.optimized.triton._moe_configs import get_config

    cfg = get_config(t, e, n, quant, x.dtype, block_shape, x.device, interpret)
    with ctx, warnings.catch_warnings():
        if interpret:  # numpy's reductions warn on the NaN a NaN-policy case feeds them
            warnings.simplefilter("ignore", RuntimeWarning)
        align = _align(topk_ids, e, cfg["BLOCK_SIZE_M"])
        return kern.run_fused_moe(
            x,
            w13,
            w2,
            topk_weights,
            topk_ids,
            align,
            quant=quant,
            w13_scale=w13_scale,
            w2_scale=w2_scale,
            limit=swiglu_limit,
            alpha=swiglu_alpha,
            beta=swiglu_beta,
            interleaved=layout == "interleaved",
            clamp_post=swiglu_clamp_mode == "post",
            on_input=apply_router_weight_on_input,
            block_shape=block_shape,
            cfg=cfg,
            interpret=interpret,
        )
