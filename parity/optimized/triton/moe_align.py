"""Triton moe_align (`docs/ops.md`, "moe_align"): registration and wrapper; kernels in
`_kernels_moe_align.py`, imported on the first call.

A deterministic counting sort (no atomics): within an expert the flat indices come out in
ascending order, so two calls are bitwise equal and the result equals the reference's.
"""

from __future__ import annotations

import torch

from parity._errors import Unsupported
from parity.optimized.triton.swiglu import launch_context
from parity.reference._common import check_int, check_tensor, fail
from parity.registry import register

_MAX_COUNTS = 1 << 28  # chunks x experts scratch entries (1 GiB of int32)
_CHUNK = 128  # flat indices a ranking program takes (a [CHUNK, CHUNK] comparison)


@register(
    "moe_align",
    name="triton",
    backend="triton",
    devices=("cuda", "cpu"),
    requires=("triton",),
    note="deterministic counting sort: per-chunk ranks, one scan program, a placing pass",
)
def moe_align(
    topk_ids: torch.Tensor, *, num_experts: int, block_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    op = "moe_align"
    check_tensor(op, "topk_ids", topk_ids, dtypes=(torch.int32,), ndim=2)
    check_int(op, "num_experts", num_experts, lo=1)
    check_int(op, "block_size", block_size, lo=1)
    flat = topk_ids.reshape(-1)
    if flat.numel():
        lo, hi = torch.stack(torch.aminmax(flat)).tolist()  # one reduction, one sync
        if lo < -1 or hi >= num_experts:
            bad = (flat < -1) | (flat >= num_experts)
            fail(op, "topk_ids", f"values in [0, {num_experts}) or -1", int(flat[bad][0]))

    n = flat.numel()
    dev = topk_ids.device
    size = n + num_experts * (block_size - 1)
    if size >= 2**31:
        raise Unsupported(f"{op}: {size} sorted ids do not fit int32 indexing")
    if -(-n // _CHUNK) * num_experts > _MAX_COUNTS:
        raise Unsupported(f"{op}: T*k={n} with {num_experts} experts needs too much scratch")

    sorted_ids = torch.full((size,), n, dtype=torch.int32, device=dev)  # the pad value
    num_post_padded = torch.zeros(1, dtype=torch.int32, device=dev)
    if n == 0:
        expert_ids = torch.full((size // block_size + 1,), -1, dtype=torch.int32, device=dev)
        return sorted_ids, expert_ids, num_post_padded
    expert_ids = torch.empty(
        (size // block_size + 1,), dtype=torch.int32, device=dev
    )  # all written
    with launch_context(op, topk_ids):
        from parity.optimized.triton._kernels_moe_align import launch_moe_align

        launch_moe_align(
            flat.contiguous(),
            sorted_ids,
            expert_ids,
            num_post_padded,
            num_experts=num_experts,
            block_size=block_size,
            chunk=_CHUNK,
        )
    return sorted_ids, expert_ids, num_post_padded
