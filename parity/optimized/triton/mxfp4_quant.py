"""Triton `mxfp4_quant` (`docs/ops.md`): registration and wrapper; the kernel lives in
`_kernels_mxfp4_quant.py`, imported on the first call. Element and scale codes are bit-exact
against the reference (integer work on the float32 bits; see the kernel's docstring)."""

from __future__ import annotations

import torch

from parity.optimized.triton._launch import launch_context
from parity.reference import validate_mxfp4_quant
from parity.reference.common import FLOAT_DTYPES
from parity.registry import register

_MX_BLOCK = 32  # the OCP MX block size; MXFP4 defines no other
_kernels = None  # parity.optimized.triton._kernels_mxfp4_quant, imported on the first launch


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
    op = "mxfp4_quant"
    validate_mxfp4_quant(x, block=block, scale_rounding=scale_rounding)

    *lead, k = x.shape
    packed = torch.empty((*lead, k // 2), dtype=torch.uint8, device=x.device)
    scales = torch.empty((*lead, k // _MX_BLOCK), dtype=torch.uint8, device=x.device)
    if x.numel() == 0:
        return packed, scales
    with launch_context(op, x):
        _k().launch(
            x.contiguous(),
            packed,
            scales,
            rows=x.numel() // k,
            k=k,
            ceil=scale_rounding == "ceil",
        )
    return packed, scales
