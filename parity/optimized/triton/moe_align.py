"""Triton moe_align (`docs/ops.md`, "moe_align"): registration and wrapper; kernels in
`_kernels_moe_align.py`, imported on the first call.

A deterministic counting sort (no atomics): within an expert the flat indices come out in
ascending order, so two calls are bitwise equal and the result equals the reference's.

`align_for_gemm` is the same sort for fused_moe, on inputs it has validated: where the kernel's
int32 indexing or scratch would not fit it falls back to `align_torch` (torch ops, no host sync)
instead of refusing.
"""

from __future__ import annotations

import torch

from parity._errors import Unsupported
from parity.optimized.triton._launch import launch_context
from parity.reference.routing import validate_moe_align
from parity.registry import register

_MAX_COUNTS = 1 << 28  # chunks x experts scratch entries (1 GiB of int32)
_CHUNK = 128  # flat indices a ranking program takes (a [CHUNK, CHUNK] comparison)


def _too_big(n: int, num_experts: int, block_size: int) -> str | None:
    """Why the kernel cannot sort n flat ids over num_experts experts, or None."""
    size = n + num_experts * (block_size - 1)
    if size >= 2**31:
        return f"{size} sorted ids do not fit int32 indexing"
    if -(-n // _CHUNK) * num_experts > _MAX_COUNTS:
        return f"T*k={n} with {num_experts} experts needs too much scratch"
    return None


def _launch(flat: torch.Tensor, num_experts: int, block_size: int):
    """The kernel on n > 0 contiguous flat ids, inside the caller's launch context."""
    from parity.optimized.triton._kernels_moe_align import launch_moe_align

    n = flat.numel()
    dev = flat.device
    size = n + num_experts * (block_size - 1)
    sorted_ids = torch.full((size,), n, dtype=torch.int32, device=dev)  # the pad value
    expert_ids = torch.empty((size // block_size + 1,), dtype=torch.int32, device=dev)  # all set
    num_post = torch.zeros(1, dtype=torch.int32, device=dev)
    launch_moe_align(
        flat,
        sorted_ids,
        expert_ids,
        num_post,
        num_experts=num_experts,
        block_size=block_size,
        chunk=_CHUNK,
    )
    return sorted_ids, expert_ids, num_post


def align_torch(topk_ids: torch.Tensor, num_experts: int, block_size: int):
    """moe_align's contract with torch ops, no host sync: (sorted_ids, expert_ids, num_post).

    Flat indices sorted by expert (stable: ascending within an expert), each expert's run padded
    with T*k to a multiple of block_size; -1 slots skipped; blocks past the total get expert E.
    """
    dev = topk_ids.device
    flat = topk_ids.reshape(-1).to(torch.int64)
    n = flat.numel()
    length = n + num_experts * (block_size - 1)
    key = torch.where(flat < 0, num_experts, flat)  # skipped slots sort last
    order = torch.argsort(key, stable=True)
    skey = key[order]
    counts = torch.bincount(key, minlength=num_experts + 1)[:num_experts]
    padded = (counts + block_size - 1) // block_size * block_size
    pad_start = torch.cumsum(padded, 0) - padded
    run_start = torch.cumsum(counts, 0) - counts
    valid = skey < num_experts
    ekey = skey.clamp(max=num_experts - 1)
    pos = pad_start[ekey] + torch.arange(n, device=dev) - run_start[ekey]
    pos = torch.where(valid, pos, length)  # skipped slots land in a scratch cell, cut below
    buf = torch.full((length + 1,), n, dtype=torch.int32, device=dev)
    buf.scatter_(0, pos, order.to(torch.int32))
    sorted_ids = buf[:length]
    n_blocks = length // block_size + 1
    block_end = torch.cumsum(padded // block_size, 0)
    expert_ids = torch.searchsorted(block_end, torch.arange(n_blocks, device=dev), right=True).to(
        torch.int32
    )
    num_post = padded.sum().to(torch.int32).reshape(1)
    return sorted_ids, expert_ids, num_post


def align_for_gemm(topk_ids: torch.Tensor, num_experts: int, block_size: int):
    """moe_align for fused_moe's GEMMs on validated ids with T*k > 0, inside its launch
    context: the kernel, or `align_torch` where the kernel would not fit."""
    flat = topk_ids.reshape(-1).contiguous()
    if _too_big(flat.numel(), num_experts, block_size):
        return align_torch(topk_ids, num_experts, block_size)
    return _launch(flat, num_experts, block_size)


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
    validate_moe_align(topk_ids, num_experts=num_experts, block_size=block_size)
    flat = topk_ids.reshape(-1)
    n = flat.numel()
    why = _too_big(n, num_experts, block_size)
    if why:
        raise Unsupported(f"{op}: {why}")
    if n == 0:
        dev = topk_ids.device
        size = num_experts * (block_size - 1)
        sorted_ids = torch.full((size,), 0, dtype=torch.int32, device=dev)  # pad value T*k = 0
        expert_ids = torch.full((size // block_size + 1,), -1, dtype=torch.int32, device=dev)
        return sorted_ids, expert_ids, torch.zeros(1, dtype=torch.int32, device=dev)
    with launch_context(op, topk_ids):
        return _launch(flat.contiguous(), num_experts, block_size)
