"""Triton fast paths: registrations only; kernels (in _kernels_*.py) import triton lazily."""

from parity.optimized.triton import fused_moe, moe_align, quant, swiglu  # noqa: F401
