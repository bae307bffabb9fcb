"""Reference SwiGLU (`docs/ops.md`, "swiglu"): gate * sigmoid(alpha * gate) * (up + beta)."""

from __future__ import annotations

import torch

from parity.reference.common import (
    FLOAT_DTYPES,
    check_choice,
    check_float,
    check_tensor,
    compute_dtype,
    fail,
    finish,
)

LAYOUTS = ("concat", "interleaved")
CLAMP_MODES = ("pre", "post")


def check_swiglu_options(op: str, limit, alpha, beta, layout, clamp_mode, *, prefix: str = ""):
    """Validate the SwiGLU options; `prefix` names them as another op does (e.g. "swiglu_")."""
    if limit is not None:
        check_float(op, f"{prefix}limit", limit, positive=True)
    check_float(op, f"{prefix}alpha", alpha)
    check_float(op, f"{prefix}beta", beta)
    check_choice(op, "layout", layout, LAYOUTS)
    check_choice(op, f"{prefix}clamp_mode", clamp_mode, CLAMP_MODES)


def validate_swiglu(
    x,
    *,
    limit=None,
    alpha=1.0,
    beta=0.0,
    layout="concat",
    clamp_mode="pre",
) -> tuple[float | None, float, float]:
    """Every check of swiglu's input, before any work (shared with the fast paths so their
    errors match): returns (limit, alpha, beta) as floats (limit None stays None)."""
    op = "swiglu"
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, min_ndim=1)
    if x.shape[-1] % 2 != 0:
        fail(op, "x", "an even last dimension (gate and up halves)", list(x.shape))
    check_swiglu_options(op, limit, alpha, beta, layout, clamp_mode)
    return (None if limit is None else float(limit)), float(alpha), float(beta)


def swiglu_math(x, *, limit, alpha, beta, layout, clamp_mode, dtype):
    """The SwiGLU formula on `x` upcast to `dtype`, unvalidated and unrounded."""
    x = x.to(dtype)
    if layout == "concat":
        n = x.shape[-1] // 2
        gate, up = x[..., :n], x[..., n:]
    else:
        gate, up = x[..., 0::2], x[..., 1::2]
    alpha, beta = float(alpha), float(beta)
    if limit is None:
        return gate * torch.sigmoid(alpha * gate) * (up + beta)
    limit = float(limit)
    up = up.clamp(-limit, limit)
    if clamp_mode == "pre":
        gate = gate.clamp(max=limit)  # above only: a very negative gate already gives ~0
        return gate * torch.sigmoid(alpha * gate) * (up + beta)
    return (gate * torch.sigmoid(alpha * gate)).clamp(max=limit) * (up + beta)


def swiglu_f32(
    x: torch.Tensor,
    *,
    limit: float | None = None,
    alpha: float = 1.0,
    beta: float = 0.0,
    layout: str = "concat",
    clamp_mode: str = "pre",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`swiglu` without the final rounding: the result in `dtype` (default `compute_dtype()`).

    For the ops that consume SwiGLU inside a fused kernel (silu_mul_fp8_quant, fused_moe);
    `dtype=torch.float32` gives the float32 intermediate a fused quantizer sees.
    """
    validate_swiglu(x, limit=limit, alpha=alpha, beta=beta, layout=layout, clamp_mode=clamp_mode)
    return swiglu_math(
        x,
        limit=limit,
        alpha=alpha,
        beta=beta,
        layout=layout,
        clamp_mode=clamp_mode,
        dtype=compute_dtype() if dtype is None else dtype,
    )


def swiglu(
    x: torch.Tensor,
    *,
    limit: float | None = None,
    alpha: float = 1.0,
    beta: float = 0.0,
    layout: str = "concat",
    clamp_mode: str = "pre",
) -> torch.Tensor:
    """`x [..., 2N]` -> `y [..., N]` in `x.dtype`.

    Halves: `"concat"` gate = x[..., :N], up = x[..., N:]; `"interleaved"` gate = x[..., 0::2],
    up = x[..., 1::2]. With `limit`, `"pre"` clamps gate above at limit and up to +-limit before
    the activation; `"post"` clamps `gate * sigmoid(alpha * gate)` above at limit instead (up is
    clamped the same way). `limit=None` ignores clamp_mode. NaN propagates elementwise.
    """
    y = swiglu_f32(x, limit=limit, alpha=alpha, beta=beta, layout=layout, clamp_mode=clamp_mode)
    return finish(y, x.dtype)
