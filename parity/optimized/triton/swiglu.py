"""Triton SwiGLU (`docs/ops.md`, "swiglu"): registration and wrapper; the kernel lives in
`_kernels_swiglu.py` and is imported on the first call (then kept in a module global: an import
statement costs ~1 us a call).

The wrappers here and in `quant.py` are on the critical path at small T (issue 11, section 3):
a call signature (input class, shape, dtype, device and every option by type and value) is
validated once and its plan cached (`_launch`: outputs, grid, constexprs, the compiled kernel's
direct launch); a call then builds the key, allocates the output and launches. A signature that
fails validation is never stored, so a bad input raises from the validator on every call. No
`.view` (the launchers take flat row counts), no device switch when the device is current.
"""

from __future__ import annotations

import torch

from parity.optimized.triton._launch import (
    Launch,
    check_f32_scalar,
    launch_context,
    plain,
    store,
)
from parity.reference.common import FLOAT_DTYPES
from parity.reference.swiglu import validate_swiglu
from parity.registry import register

_INF = float("inf")
_kernels = None  # parity.optimized.triton._kernels_swiglu, imported on the first plan
_PLANS: dict = {}  # call signature -> (output shape, Launch or None for an empty output)


def _key(x, limit, alpha, beta, layout, clamp_mode):
    # _kernels._blocks: a tile sweep (scripts/sweep_tiles.py) swaps it; a new one replans
    return (
        x.__class__, x.shape, x.dtype, x.device, layout, clamp_mode,
        limit.__class__, limit, alpha.__class__, alpha, beta.__class__, beta, _kernels._blocks,
        _kernels.SIGMOID["fast"],
    )  # fmt: skip


def launch_args(rows: int, n: int, interleaved: bool, post: bool) -> Launch:
    """`_kernels_swiglu.launch_swiglu`'s launch as a `Launch` (the same tiles, grid and
    constexprs: tests/test_launch_cost.py compares the two)."""
    block_r, block_n, warps = _kernels._blocks(rows, n, 4096)
    consts = dict(POST=post, INTERLEAVED=interleaved, BLOCK_R=block_r, BLOCK_N=block_n)
    consts["FAST"] = _kernels.SIGMOID["fast"]
    grid = (-(-rows // block_r), -(-n // block_n))
    return Launch(_kernels._swiglu_kernel, grid, consts, num_warps=warps)


def _plan(x, limit, alpha, beta, layout, clamp_mode):
    """Validate (raises the contract's error) and build the plan; cache it when the key can
    hold everything the validator read."""
    global _kernels
    op = "swiglu"
    limit_f, alpha_f, beta_f = validate_swiglu(
        x, limit=limit, alpha=alpha, beta=beta, layout=layout, clamp_mode=clamp_mode
    )
    if limit_f is not None:
        check_f32_scalar(op, "limit", limit_f)
    check_f32_scalar(op, "alpha", alpha_f)
    check_f32_scalar(op, "beta", beta_f)
    if _kernels is None:
        from parity.optimized.triton import _kernels_swiglu

        _kernels = _kernels_swiglu
    shape = (*x.shape[:-1], x.shape[-1] // 2)
    n = shape[-1]
    numel = 1
    for d in shape:
        numel *= d
    launch = None
    if numel:
        rows = numel // n
        launch = (
            launch_args(rows, n, layout == "interleaved", clamp_mode == "post"),
            rows,
            n,
        )
    plan = (shape, launch)
    if x.__class__ is torch.Tensor and plain(limit, alpha, beta, layout, clamp_mode):
        store(_PLANS, _key(x, limit, alpha, beta, layout, clamp_mode), plan)
    return plan


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
    try:
        shape, launch = _PLANS[_key(x, limit, alpha, beta, layout, clamp_mode)]
    except Exception:  # a new signature, or one the key cannot hold: validate
        shape, launch = _plan(x, limit, alpha, beta, layout, clamp_mode)
    y = torch.empty(shape, dtype=x.dtype, device=x.device)
    if launch is None:
        return y
    run, rows, n = launch
    # the floats are this call's (a plan is shared by -0.0 and 0.0, which the kernel tells apart)
    with launch_context("swiglu", x):
        run(
            x.contiguous(),  # read as [rows, 2N], y as [rows, N]: both contiguous
            y,
            rows,
            n,
            _INF if limit is None else float(limit),  # no limit: +inf (see the kernel)
            float(alpha),
            float(beta),
        )
    return y
