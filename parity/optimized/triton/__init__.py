"""Triton fast paths: registrations only; kernels (in _kernels_*.py) import triton lazily."""

from parity.optimized.triton import (  # noqa: F401
    fp8_block_quant,
    fused_moe,
    moe_align,
    mxfp4_quant,
    quant,
    route,
    swiglu,
)
