"""One OpSpec per op of the contract, one file per op (named after it); importing this package
registers them all. Family helpers live in the underscore modules (_quant, _mhc)."""

from parity.properties.specs import (  # noqa: F401
    decoder_stack,
    fp8_block_quant,
    fp8_quant,
    fused_moe,
    mhc_fused_post_pre,
    mhc_head,
    mhc_post,
    mhc_pre,
    moe_align,
    mxfp4_dequant,
    mxfp4_quant,
    route,
    silu_mul_fp8_quant,
    sinkhorn,
    swiglu,
)
