"""Triton `mxfp4_quant` (`docs/ops.md`): registration and wrapper; the kernel lives in
`_kernels_mxfp4_quant.py`, imported on the first call. Element and scale codes are bit-exact
against the reference (integer work on the float32 bits; see the kernel's docstring).
Validation runs once per call signature, whose plan (output shapes and a `Launch`) is cached, as
in `swiglu.py`: the key holds everything the validator reads and the kernel's tile setting."""

from __future__ import annotations

import torch

from parity.optimized.triton._launch import Launch, launch_context, plain, store
from parity.reference import validate_mxfp4_quant
from parity.reference.common import FLOAT_DTYPES
from parity.registry import register

_MX_BLOCK = 32  # the OCP MX block size; MXFP4 defines no other
_kernels = None  # parity.optimized.triton._kernels_mxfp4_quant, imported on the first launch
_PLANS: dict = {}  # call signature -> plan


def _k():
    global _kernels
    if _kernels is None:
        from parity.optimized.triton import _kernels_mxfp4_quant

        _kernels = _kernels_mxfp4_quant
    return _kernels


@register(
    "mxfp4_quant",
    name="triton",
    backend="triton",
    devices=("cuda", "cpu"),
    dtypes=FLOAT_DTYPES,
    requires=("triton",),
    note="integer amax and exponent from the bits, one exact power-of-two multiply, midpoints",
)
def mxfp4_quant(
    x: torch.Tensor, *, block: int = 32, scale_rounding: str = "floor"
) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        lead, k, rows, words, launch = _PLANS[_key(x, block, scale_rounding)]
    except Exception:  # a new signature, or one the key cannot hold: validate
        lead, k, rows, words, launch = _plan(x, block, scale_rounding)
    dev = x.device
    packed = torch.empty((*lead, k // 2), dtype=torch.uint8, device=dev)
    scales = torch.empty((*lead, k // _MX_BLOCK), dtype=torch.uint8, device=dev)
    if launch is None:
        return packed, scales
    x = x.contiguous()
    if words:  # 16-bit x read as int32 words of two elements (see the kernel module)
        x = x.view(torch.int32)
    with launch_context("mxfp4_quant", x):
        launch(x, packed, scales, rows, k // _MX_BLOCK)
    return packed, scales


def _key(x, block, scale_rounding):
    # TILE: a tile sweep changes it, and a plan's launch depends on it
    tile = _k().TILE
    return (
        x.__class__, x.shape, x.dtype, x.device, block.__class__, block,
        scale_rounding.__class__, scale_rounding, tile["elems"], tile["warps"], tile["pairs"],
        tile.get("bits"),
    )  # fmt: skip


def _plan(x, block, scale_rounding):
    """Validate (raises the contract's error) and build the plan; cache it when the key can
    hold everything the validator read."""
    validate_mxfp4_quant(x, block=block, scale_rounding=scale_rounding)
    *lead, k = x.shape
    launch = None
    words = _k().reads_words(x.dtype)
    if x.numel():
        kernel, grid, consts, opts = _k().launch_args(
            x.numel() // k, k, scale_rounding == "ceil", x.dtype
        )
        launch = Launch(kernel, grid, consts, **opts)
    plan = (tuple(lead), k, x.numel() // k if k else 0, words, launch)
    if x.__class__ is torch.Tensor and plain(block, scale_rounding):
        store(_PLANS, _key(x, block, scale_rounding), plan)
    return plan
