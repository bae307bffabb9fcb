"""Triton `fp8_block_quant` (`docs/ops.md`): registration and wrapper; the kernels live in
`_kernels_fp8_block_quant.py`, imported on the first call. Codes and scales are bit-exact
against the reference (exact E4M3 rounding; see the kernels' docstring). Validation runs once
per call signature, whose plan (output shapes and a `Launch`) is cached, as in `swiglu.py`: the
key holds everything the validator reads, the FP8 cast choice and the kernels' tile setting."""

from __future__ import annotations

import torch

from parity.optimized.triton._caps import ENV as _FP8_ENV
from parity.optimized.triton._caps import native_fp8_ok
from parity.optimized.triton._launch import Launch, env, launch_context, plain, store
from parity.reference import validate_fp8_block_quant
from parity.reference.common import FLOAT_DTYPES, FP8
from parity.registry import register

_EPS = 1e-4  # the contract's (DeepGEMM's per_block_cast_to_fp8) amax floor
_kernels = None  # parity.optimized.triton._kernels_fp8_block_quant, imported on the first launch
_PLANS: dict = {}  # call signature -> plan


def _k():
    global _kernels
    if _kernels is None:
        from parity.optimized.triton import _kernels_fp8_block_quant

        _kernels = _kernels_fp8_block_quant
    return _kernels


def _key(w, block_shape, scale_format):
    # TILE (a tile sweep changes it) and the FP8 cast choice's environment: the plan's launch
    tile = _k().TILE
    return (
        w.__class__, w.shape, w.dtype, w.device, block_shape.__class__,
        tuple((v.__class__, v) for v in block_shape),  # True and 1 stay apart
        scale_format.__class__, scale_format, tile["elems"], tile["chunk"], tile["warps"],
        tile.get("cols_first"),
        env(_FP8_ENV), env("TRITON_INTERPRET"),
    )  # fmt: skip


def _launch_of(experts, rows, cols, br, bc, ue8m0, native) -> Launch:
    """`_kernels_fp8_block_quant.plan`'s launch as a `Launch` (tests/test_launch_cost.py
    compares it with `launch`)."""
    kernel, grid, consts, warps = _k().plan(
        experts=experts, rows=rows, cols=cols, block_shape=(br, bc), ue8m0=ue8m0,
        native_fp8=native,
    )  # fmt: skip
    return Launch(kernel, grid, consts, num_warps=warps)


def _plan(w, block_shape, scale_format):
    """Validate (raises the contract's error) and build the plan; cache it when the key can
    hold everything the validator read."""
    br, bc = validate_fp8_block_quant(w, block_shape=block_shape, scale_format=scale_format)
    *lead, rows, cols = w.shape
    nr, nc = -(-rows // br), -(-cols // bc)
    launch = None
    if w.numel():
        experts = w.numel() // (rows * cols)
        run = _launch_of(
            experts, rows, cols, br, bc, scale_format == "ue8m0", native_fp8_ok(w.device)
        )
        launch = (run, rows, cols, nr, nc, _EPS)
    plan = ((*lead, nr, nc), launch)
    if w.__class__ is torch.Tensor and plain(scale_format) and _plain_shape(block_shape):
        store(_PLANS, _key(w, block_shape, scale_format), plan)
    return plan


def _plain_shape(block_shape) -> bool:
    """A block shape the key holds as the validator saw it: a tuple or list of two ints."""
    return block_shape.__class__ in (tuple, list) and plain(*block_shape)


@register(
    "fp8_block_quant",
    name="triton",
    backend="triton",
    devices=("cuda", "cpu"),
    dtypes=FLOAT_DTYPES,
    requires=("triton",),
    note="whole blocks in registers (<=16384 padded elements, else two passes), exact rounding",
)
def fp8_block_quant(
    w: torch.Tensor, *, block_shape=(128, 128), scale_format: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        s_shape, launch = _PLANS[_key(w, block_shape, scale_format)]
    except Exception:  # a new signature, or one the key cannot hold: validate
        s_shape, launch = _plan(w, block_shape, scale_format)
    dev = w.device
    q = torch.empty(w.shape, dtype=FP8, device=dev)
    s = torch.empty(s_shape, dtype=torch.float32, device=dev)
    if launch is None:
        return q, s
    run, *args = launch
    with launch_context("fp8_block_quant", w):
        run(w.contiguous(), q, s, *args)
    return q, s
