"""Triton SwiGLU (`docs/ops.md`, "swiglu"): registration and wrapper; the kernel lives in
`_kernels_swiglu.py` and is imported on the first call."""

from __future__ import annotations

import os

import torch

from parity._errors import Unsupported
from parity.reference._common import FLOAT_DTYPES
from parity.reference.swiglu import _check_x, check_swiglu_options
from parity.registry import register

_F32_MAX = torch.finfo(torch.float32).max


def launch_context(op: str, t: torch.Tensor):
    """The context a Triton launch for tensor `t` needs: its CUDA device current, or the
    interpreter for a CPU tensor (Unsupported without it: the kernel cannot run there). The
    interpreter runs kernels in numpy, which warns on the overflow to inf and the NaN
    arithmetic the kernels mean to do (a GPU does them silently): those warnings are muted."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        import numpy as np

        return np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore")
    raise Unsupported(f"{op}: Triton runs on CUDA, or on the CPU with TRITON_INTERPRET=1")


def check_f32_scalar(op: str, name: str, value: float) -> float:
    """Kernel float arguments are float32: a finite option beyond its range is not supported."""
    if abs(value) > _F32_MAX:
        raise Unsupported(f"{op}: {name}={value} does not fit a float32 kernel argument")
    return value


@register(
    "swiglu",
    name="triton",
    backend="triton",
    devices=("cuda", "cpu"),
    dtypes=FLOAT_DTYPES,
    requires=("triton",),
    note="2-D tiles of ~4096 outputs, float32 math with an accurate exp, one rounding",
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
    op = "swiglu"
    _check_x(op, x)
    check_swiglu_options(op, limit, alpha, beta, layout, clamp_mode)
    limit = None if limit is None else check_f32_scalar(op, "limit", float(limit))
    alpha = check_f32_scalar(op, "alpha", float(alpha))
    beta = check_f32_scalar(op, "beta", float(beta))

    n = x.shape[-1] // 2
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    with launch_context(op, x):
        from parity.optimized.triton._kernels_swiglu import launch_swiglu

        launch_swiglu(
            x.contiguous().view(-1, 2 * n),
            y.view(-1, n),
            limit=limit,
            alpha=alpha,
            beta=beta,
            interleaved=layout == "interleaved",
            post=clamp_mode == "post",
        )
    return y
