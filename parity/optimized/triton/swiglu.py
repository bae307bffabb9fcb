"""Triton SwiGLU (`docs/ops.md`, "swiglu"): registration and wrapper; the kernel lives in
`_kernels_swiglu.py` and is imported on the first call (then kept in a module global: an import
statement costs ~1 us a call).

The wrappers here and in `quant.py` are on the critical path at small T, so they avoid work
beyond validation and the output allocation: no `.view` (the launchers take flat row counts;
the kernels only need the data pointers), no per-call imports, and no device switch when the
tensor's device is already current.
"""

from __future__ import annotations

import contextlib
import os

import torch

from parity._errors import Unsupported
from parity.reference._common import FLOAT_DTYPES
from parity.reference.swiglu import _check_x, check_swiglu_options
from parity.registry import register

_F32_MAX = torch.finfo(torch.float32).max
_NO_SWITCH = contextlib.nullcontext()  # stateless, so one instance serves every call
_kernels = None  # parity.optimized.triton._kernels_swiglu, imported on the first launch
_np = None  # numpy, imported on the first interpreter launch


def launch_context(op: str, t: torch.Tensor):
    """The context a Triton launch for tensor `t` needs: its CUDA device current, or the
    interpreter for a CPU tensor (Unsupported without it: the kernel cannot run there). The
    interpreter runs kernels in numpy, which warns on the overflow to inf and the NaN
    arithmetic the kernels mean to do (a GPU does them silently): those warnings are muted."""
    device = t.device
    if device.type == "cuda":
        if device.index == torch.cuda.current_device():
            return _NO_SWITCH  # already current: skip the two device exchanges
        return torch.cuda.device(device)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        global _np
        if _np is None:
            import numpy

            _np = numpy
        return _np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore")
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

    shape = x.shape
    n = shape[-1] // 2
    y = torch.empty((*shape[:-1], n), dtype=x.dtype, device=x.device)
    numel = y.numel()
    if numel == 0:
        return y
    global _kernels
    with launch_context(op, x):
        if _kernels is None:
            from parity.optimized.triton import _kernels_swiglu

            _kernels = _kernels_swiglu
        _kernels.launch_swiglu(
            x.contiguous(),  # read as [rows, 2N], y as [rows, N]: both contiguous
            y,
            numel // n,
            n,
            limit=limit,
            alpha=alpha,
            beta=beta,
            interleaved=layout == "interleaved",
            post=clamp_mode == "post",
        )
    return y
