"""Triton `route` (`docs/ops.md`): registration and wrapper; the kernel lives in
`_kernels_route.py`, imported on the first call. Softmax ids are exactly the reference's (the
logit is the key); dsv3 / sqrtsoftplus keys are float32 within the contract's key bounds; ties
go to the lower expert (group) id as in the reference.

A call signature (logits and bias by class, shape, dtype and device, every option by type and
value) is validated once and its plan cached (`_launch`: output shape and the compiled kernel's
direct launch); a call then builds the key, allocates the two outputs and launches. A signature
that fails validation is never stored, so a bad input raises from the validator on every call.
"""

from __future__ import annotations

import torch

from parity._errors import Unsupported
from parity.optimized.triton._launch import (
    Launch,
    cdiv,
    check_f32_scalar,
    k_pad,
    launch_context,
    plain,
    store,
)
from parity.reference import validate_route
from parity.reference.common import FLOAT_DTYPES
from parity.registry import register

_MAX_EXPERTS = 4096  # one token's experts are one tile in registers
_MAX_K = 64  # k picks in a row of K_PAD slots in registers
_kernels = None  # parity.optimized.triton._kernels_route, imported on the first plan
_PLANS: dict = {}  # call signature -> (T, k, (Launch, ints) or None for T == 0, scale)


def _key(logits, k, method, bias, n_group, topk_group, renormalize, factor):
    b = None if bias is None else (bias.__class__, bias.shape, bias.dtype, bias.device)
    # _kernels.TILE: a tile sweep swaps its values; a new one replans
    return (
        logits.__class__, logits.shape, logits.dtype, logits.device, b, method.__class__, method,
        k.__class__, k, n_group.__class__, n_group, topk_group.__class__, topk_group,
        renormalize.__class__, renormalize, factor.__class__, factor,
        _kernels.TILE["slots"], _kernels.TILE["wide_t"],
    )  # fmt: skip


def launch_args(t: int, e: int, *, k, method, n_group, topk_group, renormalize):
    """The kernel's launch for T > 0 tokens and its run-time ints after T and the scale:
    grid, constexprs and num_warps (`_kernels_route.config`), (E, GS, NG)."""
    ng_pad, gs_pad, block_t, warps = _kernels.config(t, e, n_group)
    consts = dict(
        NG_PAD=ng_pad,
        GS_PAD=gs_pad,
        K_PAD=k_pad(k),
        TOPK_GROUP=topk_group,
        K=k,
        BLOCK_T=block_t,
        METHOD=_kernels.METHOD_CODES[method],
        RENORM=renormalize,
    )
    grid = (cdiv(t, block_t),)
    ints = (e, e // n_group, n_group)
    return Launch(_kernels._route_kernel, grid, consts, num_warps=warps), ints


def _plan(logits, k, method, bias, n_group, topk_group, renormalize, factor):
    """Validate (raises the contract's error) and build the plan; cache it when the key can
    hold everything the validator read."""
    global _kernels
    op = "route"
    scale = validate_route(
        logits,
        k=k,
        method=method,
        bias=bias,
        n_group=n_group,
        topk_group=topk_group,
        renormalize=renormalize,
        routed_scaling_factor=factor,
    )
    check_f32_scalar(op, "routed_scaling_factor", scale)
    t, e = logits.shape
    if e > _MAX_EXPERTS:
        raise Unsupported(f"{op}: E={e} above {_MAX_EXPERTS} (one tile a token)")
    if k > _MAX_K:
        raise Unsupported(f"{op}: k={k} above {_MAX_K} (the picks' row is held in registers)")
    if _kernels is None:
        from parity.optimized.triton import _kernels_route

        _kernels = _kernels_route
    launch = None
    if t:  # (Launch, run-time ints)
        launch = launch_args(
            t, e, k=k, method=method, n_group=n_group, topk_group=topk_group,
            renormalize=renormalize,
        )  # fmt: skip
    plan = (t, k, launch, scale)
    if (
        logits.__class__ is torch.Tensor
        and (bias is None or bias.__class__ is torch.Tensor)
        and plain(k, method, n_group, topk_group, renormalize, factor)
    ):
        store(_PLANS, _key(logits, k, method, bias, n_group, topk_group, renormalize, factor), plan)
    return plan


@register(
    "route",
    name="triton",
    backend="triton",
    devices=("cuda", "cpu"),
    dtypes=FLOAT_DTYPES,
    requires=("triton",),
    note="one warp a token's experts, a pick two int32 max reductions (key, lowest id)",
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
    args = (logits, k, method, bias, n_group, topk_group, renormalize, routed_scaling_factor)
    try:
        t, k_, plan, scale = _PLANS[_key(*args)]
    except Exception:  # a new signature, or one the key cannot hold: validate
        t, k_, plan, scale = _plan(*args)
    weights = torch.empty((t, k_), dtype=torch.float32, device=logits.device)
    ids = torch.empty((t, k_), dtype=torch.int32, device=logits.device)
    if plan is None:
        return weights, ids
    launch, ints = plan
    with launch_context("route", logits):
        launch(
            logits.contiguous(),
            logits if bias is None else bias.contiguous(),
            weights,
            ids,
            t,
            scale,
            *ints,
        )
    return weights, ids
