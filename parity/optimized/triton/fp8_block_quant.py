"""Triton `fp8_block_quant` (`docs/ops.md`): registration and wrapper; the kernels live in
`_kernels_fp8_block_quant.py`, imported on the first call. Codes and scales are bit-exact
against the reference (true division, exact E4M3 rounding; see the kernels' docstring)."""

from __future__ import annotations

import torch

from parity.optimized.triton._caps import native_fp8_ok
from parity.optimized.triton._launch import launch_context
from parity.reference import validate_fp8_block_quant
from parity.reference.common import FLOAT_DTYPES, FP8
from parity.registry import register

_EPS = 1e-4  # the contract's (DeepGEMM's per_block_cast_to_fp8) amax floor
_kernels = None  # parity.optimized.triton._kernels_fp8_block_quant, imported on the first launch


def _k():
    global _kernels
    if _kernels is None:
        from parity.optimized.triton import _kernels_fp8_block_quant

        _kernels = _kernels_fp8_block_quant
    return _kernels


@register(
    "fp8_block_quant",
    name="triton",
    backend="triton",
    devices=("cuda", "cpu"),
    dtypes=FLOAT_DTYPES,
    requires=("triton",),
    note="whole blocks in registers (<=16384 padded elements, else two passes), true division",
)
def fp8_block_quant(
    w: torch.Tensor, *, block_shape=(128, 128), scale_format: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor]:
    op = "fp8_block_quant"
    br, bc = validate_fp8_block_quant(w, block_shape=block_shape, scale_format=scale_format)

    *lead, rows, cols = w.shape
    nr, nc = -(-rows // br), -(-cols // bc)
    q = torch.empty(w.shape, dtype=FP8, device=w.device)
    s = torch.empty((*lead, nr, nc), dtype=torch.float32, device=w.device)
    if q.numel() == 0:
        return q, s
    with launch_context(op, w):
        _k().launch(
            w.contiguous(),
            q,
            s,
            experts=q.numel() // (rows * cols),
            rows=rows,
            cols=cols,
            block_shape=(br, bc),
            eps=_EPS,
            ue8m0=scale_format == "ue8m0",
            native_fp8=native_fp8_ok(w.device),
        )
    return q, s
