"""Pure-PyTorch references, one per op of the contract (`docs/ops.md`), written for clarity.

They import nothing but torch, compute in float32 (float64 inside `precision("float64")`) and
round once to the output dtype, validate their input before any work, and never modify it.
"""

from parity.reference._common import compute_dtype, precision
from parity.reference.mhc import mhc_fused_post_pre, mhc_head, mhc_post, mhc_pre, sinkhorn
from parity.reference.moe import fused_moe
from parity.reference.quant import (
    fp8_block_quant,
    fp8_quant,
    mxfp4_dequant,
    mxfp4_quant,
    silu_mul_fp8_quant,
)
from parity.reference.routing import moe_align, route
from parity.reference.stack import decoder_stack
from parity.reference.swiglu import swiglu

__all__ = [
    "compute_dtype",
    "decoder_stack",
    "fp8_block_quant",
    "fp8_quant",
    "fused_moe",
    "mhc_fused_post_pre",
    "mhc_head",
    "mhc_post",
    "mhc_pre",
    "moe_align",
    "mxfp4_dequant",
    "mxfp4_quant",
    "precision",
    "route",
    "silu_mul_fp8_quant",
    "sinkhorn",
    "swiglu",
]
