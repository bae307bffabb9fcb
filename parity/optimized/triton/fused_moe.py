"""Triton fused MoE (`docs/ops.md`, "fused_moe"), in the design of vLLM's fused_moe Triton path.

Tokens are sorted by expert and padded to BLOCK_SIZE_M (moe_align); GEMM1 over the sorted rows
writes `[T*k, 2N]` in x.dtype; SwiGLU (every contract option) in float32, rounded to x.dtype or,
for fp8_block, quantized per group in the same kernel; GEMM2 with the router weight writes one
row per (token, slot) in x.dtype; a last kernel sums the k rows of each token in a fixed order.
No atomics: bitwise deterministic. Quant modes: "none", "fp8_block" (W8A8 DeepSeek block FP8,
activation codes and scales exactly `fp8_quant`'s), "mxfp4" (W4A16, E2M1 weights dequantized
exactly inside the GEMM or, bf16 with many rows per expert, to a bf16 scratch copy first).
Few tokens (T * k <= DECODE_MAX_PAIRS, `_moe_configs.decode_config`) take the decode path
(`_kernels_moe_decode.py`): the pairs grouped per expert by one small kernel instead of
moe_align, each touched expert's weights read once by GEMV or 16-row dot tiles with a
deterministic split-K, the same roundings; `PARITY_MOE_DECODE=0` turns it off.
Kernels: `_kernels_fused_moe.py` (imported lazily); tile configs: `_moe_configs.py` and
`configs/`.

Unsupported (NotImplementedError): float32 activations (the registered dtypes are bf16 and
fp16), fp8_block with `block_shape[1]` not a multiple of 16 (a K tile must lie inside one scale
group and `tl.dot` needs K >= 16), and on the sorted path (T * k above the decode limit) not a
multiple of 32 (an fp8 `tl.dot` needs K >= 32 on NVIDIA: such a tile does not compile for sm_90,
which the interpreter does not check; the decode path takes its GEMV there), SwiGLU options
beyond the float32 range (kernel scalars are float32), CPU tensors without TRITON_INTERPRET=1.
"""

from __future__ import annotations

import warnings

import torch

from parity.optimized.triton._launch import (
    check_f32_scalar,
    env,
    interpret,
    launch_context,
    plain,
    store,
    tensor_key,
)
from parity.optimized.triton.moe_align import align_for_gemm
from parity.reference.moe import check_topk_ids, validate_fused_moe
from parity.registry import register

OP = "fused_moe"


# --- the op -------------------------------------------------------------------------------------


def _runnable(x, quant, block_shape, t, k, e, n, h, limit, alpha, beta):
    """(launch context, interpreted, decode config or None) for a validated call, or
    NotImplementedError (Unsupported) for what this path cannot run: x dtype, fp8 scale groups,
    a float32 option out of range, a CPU tensor without the interpreter, fp8 groups of 16 on
    the sorted path."""
    from parity.optimized.triton._moe_configs import decode_config

    if x.dtype not in (torch.bfloat16, torch.float16):
        raise NotImplementedError(f"fused_moe:triton: x dtype {x.dtype} (bf16 and fp16 only)")
    if quant == "fp8_block" and block_shape[1] % 16 != 0:
        raise NotImplementedError(
            f"fused_moe:triton: block_shape[1]={block_shape[1]} is not a multiple of 16"
        )
    for name, value in (("swiglu_limit", limit), ("swiglu_alpha", alpha), ("swiglu_beta", beta)):
        if value is not None:
            check_f32_scalar(OP, name, float(value))
    interpreted = interpret()
    ctx = launch_context(OP, x)  # Unsupported for a CPU tensor without the interpreter
    if t == 0:
        return ctx, interpreted, None
    dcfg = decode_config(t, k, e, n, h, quant, block_shape, interpreted)
    if dcfg is None and quant == "fp8_block" and block_shape[1] % 32 != 0:
        raise NotImplementedError(
            f"fused_moe:triton: block_shape[1]={block_shape[1]} is not a multiple of 32 with "
            f"T*k={t * k} on the sorted path (an fp8 tl.dot needs K >= 32)"
        )
    return ctx, interpreted, dcfg


# Validated call signatures (issue 11, section 3: an eager T 1 call was host-bound, ~300 us of
# host time against 144-240 us of GPU time on the H100): signature -> (T, H, E, N, block_shape,
# interpreted, decode config or None). The key holds everything validate_fused_moe and _runnable
# read: each tensor's class, shape, dtype and device, every option by (type, value), the
# interpreter flag and the decode path's environment switches. Only a call that validated is
# stored, so a bad input never finds a plan and raises from the validator as before.
_PLANS: dict = {}


def _signature(x, w13, w2, topk_weights, topk_ids, w13_scale, w2_scale, options) -> tuple:
    """The plan key; TypeError where it cannot hold the call (a tensor subclass, an option of
    another type): that call is validated every time."""
    from parity.optimized.triton._moe_configs import (
        DECODE_ENV,
        DECODE_GEMV_ENV,
        MX_ACT_2D_ENV,
        MX_WORDS_ENV,
    )

    seq = (list, tuple)
    if not plain(*(i for v in options for i in (v if v.__class__ in seq else (v,)))):
        raise TypeError("not cached")
    # a list and a tuple block_shape validate alike; every value by (type, value), so
    # (True, 128) never finds the plan of (1, 128)
    opts = [
        (list, tuple((i.__class__, i) for i in v)) if v.__class__ in seq else (v.__class__, v)
        for v in options
    ]
    scales = tuple(None if s is None else tensor_key(s) for s in (w13_scale, w2_scale))
    return (
        tensor_key(x),
        tensor_key(w13),
        tensor_key(w2),
        tensor_key(topk_weights),
        tensor_key(topk_ids),
        scales,
        tuple(opts),
        interpret(),
        env(DECODE_ENV),
        env(DECODE_GEMV_ENV),
        env(MX_WORDS_ENV),
        env(MX_ACT_2D_ENV),
    )


def _check_ids(topk_ids: torch.Tensor, e: int, capturing: bool) -> None:
    """The reference's id range check (a host read), where one is possible."""
    if not capturing:
        check_topk_ids(OP, topk_ids, e)


def _capturing(x: torch.Tensor) -> bool:
    """Whether this call is being captured into a CUDA graph (no host read of device data)."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


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
    # the reference's own checks, so the errors are the reference's, except the id range: it
    # reads the ids on the host, a sync that stalled each eager call before its first kernel
    # (2026-12-05, H100: 703 us eager against 256 us under graph replay at T 1). The kernels
    # skip an out-of-range id as -1 and the host reads one flag after the last launch and
    # raises the reference's ValueError; under CUDA-graph capture no read is possible, and
    # such ids stay skipped (docs/contract-notes.md)
    capturing = _capturing(x)
    from parity.optimized.triton import _moe_configs as mc

    options = (
        quant, swiglu_limit, swiglu_alpha, swiglu_beta, layout, swiglu_clamp_mode,
        apply_router_weight_on_input, block_shape,
    )  # fmt: skip
    try:
        key = _signature(x, w13, w2, topk_weights, topk_ids, w13_scale, w2_scale, options)
        plan = _PLANS.get(key)
    except TypeError:
        key = plan = None
    if plan is not None:  # validated before; the launch context is the current device's
        t, h, e, n, block_shape, interpreted, dcfg = plan
        ctx = launch_context(OP, x)
        if mc.override_active():  # the tuner's config of the moment: the decode config anew
            dcfg = mc.decode_config(t, topk_ids.shape[1], e, n, h, quant, block_shape, interpreted)
    else:
        t, h, e, n, block_shape, ctx, interpreted, dcfg = _validate(
            x, w13, w2, topk_weights, topk_ids, capturing, options, w13_scale, w2_scale
        )
        if key is not None and t > 0 and not mc.override_active():
            store(_PLANS, key, (t, h, e, n, block_shape, interpreted, dcfg))
    if t == 0:
        return torch.empty((0, h), dtype=x.dtype, device=x.device)
    return _run(
        x, w13, w2, topk_weights, topk_ids, w13_scale, w2_scale, options, ctx, interpreted, dcfg,
        capturing, t, e, n, block_shape,
    )  # fmt: skip


def _validate(x, w13, w2, topk_weights, topk_ids, capturing, options, w13_scale, w2_scale):
    """The reference's checks and what this path can run: (T, H, E, N, block_shape, launch
    context, interpreted, decode config or None); the contract's errors, a bad id first where
    this path cannot run the call."""
    (
        quant, swiglu_limit, swiglu_alpha, swiglu_beta, layout, swiglu_clamp_mode,
        apply_router_weight_on_input, block_shape,
    ) = options  # fmt: skip
    t, h, e, n, block_shape = validate_fused_moe(
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
        check_ids=False,
    )
    try:
        ctx, interpreted, dcfg = _runnable(
            x, quant, block_shape, t, topk_ids.shape[1], e, n, h, swiglu_limit, swiglu_alpha,
            swiglu_beta,
        )  # fmt: skip
    except NotImplementedError:  # Unsupported too: a bad id is the contract's error, raised first
        _check_ids(topk_ids, e, capturing)
        raise
    return t, h, e, n, block_shape, ctx, interpreted, dcfg


def _run(
    x, w13, w2, topk_weights, topk_ids, w13_scale, w2_scale, options, ctx, interpreted, dcfg,
    capturing, t, e, n, block_shape,
):  # fmt: skip
    """The launches of a validated call with T > 0 (block_shape: the validated pair, not the
    one in `options`), and the id check after the last one."""
    quant, swiglu_limit, swiglu_alpha, swiglu_beta, layout, swiglu_clamp_mode, on_input, _ = options
    topk_ids_in = topk_ids  # the caller's, for the error message

    from parity.optimized.triton._moe_configs import get_config

    opts = dict(
        quant=quant,
        w13_scale=w13_scale,
        w2_scale=w2_scale,
        limit=swiglu_limit,
        alpha=swiglu_alpha,
        beta=swiglu_beta,
        interleaved=layout == "interleaved",
        clamp_post=swiglu_clamp_mode == "post",
        on_input=on_input,
        block_shape=block_shape,
        interpret=interpreted,
    )
    with ctx, warnings.catch_warnings():
        if interpreted:  # numpy's reductions warn on the NaN a NaN-policy case feeds them
            warnings.simplefilter("ignore", RuntimeWarning)
        if dcfg is not None:  # few tokens: grouped pairs and split-K, no moe_align
            from parity.optimized.triton import _kernels_moe_decode as dec

            out, bad = dec.run_decode(x, w13, w2, topk_weights, topk_ids, cfg=dcfg, **opts)
        else:
            from parity.optimized.triton import _kernels_fused_moe as kern

            bad = (topk_ids < -1) | (topk_ids >= e)
            topk_ids = torch.where(bad, -1, topk_ids)
            cfg = get_config(t, e, n, quant, x.dtype, block_shape, x.device, interpreted)
            align = align_for_gemm(topk_ids, e, cfg["BLOCK_SIZE_M"])
            out = kern.run_fused_moe(x, w13, w2, topk_weights, topk_ids, align, cfg=cfg, **opts)
    if not capturing and bool(bad.any()):  # the call's one device-to-host read, at its end
        _check_ids(topk_ids_in, e, False)
    return out
