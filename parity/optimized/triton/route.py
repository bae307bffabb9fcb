"""Triton `route` (`docs/ops.md`): registration and wrapper; the kernel lives in
`_kernels_route.py`, imported on the first call. Softmax ids are exactly the reference's (the
logit is the key); dsv3 / sqrtsoftplus keys are float32 within the contract's key bounds; ties
go to the lower expert (group) id as in the reference."""

from __future__ import annotations

import torch

from parity._errors import Unsupported
from parity.optimized.triton._launch import check_f32_scalar, launch_context
from parity.reference import validate_route
from parity.reference.common import FLOAT_DTYPES
from parity.registry import register

_MAX_EXPERTS = 4096  # one token's experts are one tile in registers
_MAX_K = 64  # k picks are unrolled in the kernel
_kernels = None  # parity.optimized.triton._kernels_route, imported on the first launch


def _k():
    global _kernels
    if _kernels is None:
        from parity.optimized.triton import _kernels_route

        _kernels = _kernels_route
    return _kernels


@register(
    "route",
    name="triton",
    backend="triton",
    devices=("cuda", "cpu"),
    dtypes=FLOAT_DTYPES,
    requires=("triton",),
    note="tokens x experts tiles; k argmax passes on order-preserving int keys, lowest id wins",
)
def route(
    logits: torch.Tensor,
    *,
    k: int,
    method: str = "softmax",
    bias: torch.Tensor | None = None,
    n_group: int = 1,
    topk_group: int = 1,
    renormalize: bool = True,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    op = "route"
    scale = validate_route(
        logits,
        k=k,
        method=method,
        bias=bias,
        n_group=n_group,
        topk_group=topk_group,
        renormalize=renormalize,
        routed_scaling_factor=routed_scaling_factor,
    )
    scale = check_f32_scalar(op, "routed_scaling_factor", scale)
    t, e = logits.shape
    if e > _MAX_EXPERTS:
        raise Unsupported(f"{op}: E={e} above {_MAX_EXPERTS} (one tile a token)")
    if k > _MAX_K:
        raise Unsupported(f"{op}: k={k} above {_MAX_K} (unrolled picks)")

    weights = torch.empty((t, k), dtype=torch.float32, device=logits.device)
    ids = torch.empty((t, k), dtype=torch.int32, device=logits.device)
    if t == 0:
        return weights, ids
    with launch_context(op, logits):
        _k().launch(
            logits.contiguous(),
            None if bias is None else bias.contiguous(),
            weights,
            ids,
            k=k,
            method=method,
            n_group=n_group,
            topk_group=topk_group,
            renormalize=renormalize,
            scale=scale,
        )
    return weights, ids
