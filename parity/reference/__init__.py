"""Pure-PyTorch references, one per op of the contract (`docs/ops.md`), written for clarity.

They import nothing but torch, compute in float32 (float64 inside `precision("float64")`) and
round once to the output dtype, validate their input before any work, and never modify it.
Each op's `validate_<op>` is that validation alone: fast paths call it so their errors match.
"""

from parity.reference.common import compute_dtype, precision
from parity.reference.mhc import (
    mhc_fused_post_pre,
    mhc_head,
    mhc_post,
    mhc_pre,
    sinkhorn,
    validate_mhc_fused_post_pre,
    validate_mhc_head,
    validate_mhc_post,
    validate_mhc_pre,
    validate_sinkhorn,
)
from parity.reference.moe import fused_moe, validate_fused_moe
from parity.reference.quant import (
    fp8_block_quant,
    fp8_quant,
    mxfp4_dequant,
    mxfp4_quant,
    silu_mul_fp8_quant,
    validate_fp8_block_quant,
    validate_fp8_quant,
    validate_mxfp4_dequant,
    validate_mxfp4_quant,
    validate_silu_mul_fp8_quant,
)
from parity.reference.routing import moe_align, route, validate_moe_align, validate_route
from parity.reference.stack import decoder_stack, validate_decoder_stack
from parity.reference.swiglu import swiglu, validate_swiglu

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
    "validate_decoder_stack",
    "validate_fp8_block_quant",
    "validate_fp8_quant",
    "validate_fused_moe",
    "validate_mhc_fused_post_pre",
    "validate_mhc_head",
    "validate_mhc_post",
    "validate_mhc_pre",
    "validate_moe_align",
    "validate_mxfp4_dequant",
    "validate_mxfp4_quant",
    "validate_route",
    "validate_silu_mul_fp8_quant",
    "validate_sinkhorn",
    "validate_swiglu",
]
