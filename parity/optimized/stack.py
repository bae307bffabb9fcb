"""decoder_stack fast paths: the reference stack driven by an ops table of fast kernels.

The table takes each op from the registry's table (never by importing another backend; the
catalog has loaded every backend before a stack runs), and always
includes the fused post+pre between layers, passing residual, post_mix and comb_res_mix from
layer to layer as vLLM's DeepseekV4Model does.
"""

from __future__ import annotations

import functools

import torch

from parity.registry import register, registered_impl

_GPU_TABLE = {
    "mhc_pre": "tilelang",
    "mhc_post": "tilelang",
    "mhc_fused_post_pre": "tilelang",
    "mhc_head": "tilelang",
    "fused_moe": "triton",
}


@functools.cache
def _table(names: tuple[tuple[str, str], ...]) -> dict:
    table = {}
    for op, name in names:
        impl = registered_impl(op, name)
        if impl is None:
            raise RuntimeError(f"decoder_stack: {op}:{name} is not registered")
        if impl.prepare is not None:  # its weights would need re-laying out per layer first
            raise NotImplementedError(
                f"decoder_stack: {op}:{name} declares a prepare step, which the stack does not "
                "apply to its layers' weights: calling it without one would be wrong"
            )
        table[op] = impl.fn
    return table


def _run(x, table: dict, kwargs: dict):
    from parity.reference.stack import FUSED_REFERENCE_OPS, decoder_stack

    ops = kwargs.pop("ops", None)
    merged = dict(FUSED_REFERENCE_OPS)
    merged.update(table)
    if ops is not None:  # an explicit table from the caller wins, op by op
        merged.update(ops)
    return decoder_stack(x, ops=merged, **kwargs)


@register(
    "decoder_stack",
    name="fused_gpu",
    backend="stack",
    devices=("cuda",),
    dtypes=(torch.bfloat16,),
    requires=("tilelang", "triton"),
    min_cc=(9, 0),
    note="TileLang mHC (fused post+pre between layers) + Triton fused_moe",
)
def decoder_stack_fused_gpu(x, **kwargs):
    if kwargs.get("quant", "none") not in ("none", "fp8_block", "mxfp4"):
        raise NotImplementedError("unknown quant")
    return _run(x, _table(tuple(_GPU_TABLE.items())), kwargs)


@register(
    "decoder_stack",
    name="fused_triton",
    backend="stack",
    devices=("cpu", "cuda"),
    dtypes=(torch.bfloat16, torch.float16),
    requires=("triton",),
    note="reference mHC through the fused post+pre path + Triton fused_moe (runs on the CPU)",
)
def decoder_stack_fused_triton(x, **kwargs):
    return _run(x, _table((("fused_moe", "triton"),)), kwargs)
