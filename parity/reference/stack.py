"""Reference decoder stack (`docs/ops.md`, "decoder_stack"): the bisect target.

A small DeepSeek-V4-shaped stack without attention: `x [T, H]` is copied into `hc` streams; per
layer mhc_pre -> RMSNorm -> dsv3 routing -> fused_moe -> mhc_post; then mhc_head. Weights are
deterministic from a seed. Every op goes through an ops table, so a second table (fast kernels)
can be compared with the reference one op by op, layer by layer (`capture`).

Choices where the contract is silent:

- Weights are drawn in float32 on the CPU from `torch.Generator().manual_seed(f(seed, layer))`,
  one generator per layer and one for the head, so CPU and GPU get identical weights and the
  first layers of a deeper stack equal a shallower one. Float32 master weights do not depend on
  `quant` or the dtype; "none" rounds them to x.dtype, "fp8_block" quantizes them with
  `fp8_block_quant` (block (128, 128)), "mxfp4" with `mxfp4_quant` ("floor" scales).
- "fp8_block" quantizes activations per 128 columns, so it needs H % 128 == 0 and
  intermediate % 128 == 0 (the fused_moe rule); "mxfp4" needs H % 32 == 0, intermediate % 32 == 0.
- The router logits `normed @ router_w.T` are computed in the compute dtype and rounded to
  float32 (the stack's own arithmetic, not an op of the table). The RMSNorm weight is stored in
  x.dtype, as a model's is.
- Rounding: every op rounds its outputs, as kernels chained in a model do. Inside
  `precision("float64", round_output=False)` only the final mhc_head output stays unrounded.
- Capture layer tags: mhc_pre, rms_norm, route, fused_moe of layer i have layer i; mhc_post has
  the layer whose sublayer output it adds; the fused post+pre between layers i and i+1 has
  layer i + 1 (vLLM calls it from layer i+1's forward); mhc_head has layer None.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from parity.reference.common import (
    FLOAT_DTYPES,
    check_choice,
    check_float,
    check_int,
    check_tensor,
    compute_dtype,
    fail,
    finish,
    precision,
)
from parity.reference.mhc import (
    check_sinkhorn_iters,
    mhc_fused_post_pre,
    mhc_head,
    mhc_post,
    mhc_pre,
)
from parity.reference.moe import fused_moe
from parity.reference.quant import fp8_block_quant, mxfp4_quant
from parity.reference.routing import route

OP = "decoder_stack"
OP_KEYS = (
    "mhc_pre",
    "mhc_post",
    "mhc_fused_post_pre",
    "mhc_head",
    "rms_norm",
    "route",
    "fused_moe",
)
QUANT_MODES = ("none", "fp8_block", "mxfp4")
FP8_BLOCK = (128, 128)  # DeepSeek block FP8
MX_BLOCK = 32
NORM_EPS = 1e-6  # RMSNorm, mHC rms_eps and the mHC pre/sinkhorn/head epsilons (hc_eps)


# --- RMSNorm (a local reference, not a contract op) ---------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """`x * rsqrt(mean(x**2, -1) + eps) * weight` in the compute dtype, rounded to x.dtype.

    `x [..., H]`, `weight [H]` (any float dtype, on x's device).
    """
    op = "rms_norm"
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, min_ndim=1)
    check_tensor(op, "weight", weight, dtypes=FLOAT_DTYPES, shape=(x.shape[-1],), device=x.device)
    eps = check_float(op, "eps", eps, positive=True)
    dt = compute_dtype()
    x32 = x.to(dt)
    y = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps) * weight.to(dt)
    return finish(y, x.dtype)


# --- ops tables ---------------------------------------------------------------------------------

REFERENCE_OPS: Mapping[str, Callable] = types.MappingProxyType(
    {
        "mhc_pre": mhc_pre,
        "mhc_post": mhc_post,
        "mhc_head": mhc_head,
        "rms_norm": rms_norm,
        "route": route,
        "fused_moe": fused_moe,
    }
)
# The same with the fused post+pre between layers (vLLM's CUDA path).
FUSED_REFERENCE_OPS: Mapping[str, Callable] = types.MappingProxyType(
    {**REFERENCE_OPS, "mhc_fused_post_pre": mhc_fused_post_pre}
)


# --- config and weights -------------------------------------------------------------------------


@dataclass(frozen=True)
class StackConfig:
    """Everything the stack's weights and arithmetic depend on (hashable: the weight cache key)."""

    hidden: int
    dtype: torch.dtype
    num_layers: int = 4
    hc: int = 4
    num_experts: int = 8
    top_k: int = 2
    n_group: int = 2
    topk_group: int = 1
    intermediate: int = 64
    quant: str = "none"
    swiglu_limit: float | None = 10.0
    routed_scaling_factor: float = 2.5
    post_mult: float = 2.0
    sinkhorn_iters: int = 20

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the bad option, before any work."""
        check_int(OP, "H (x dim 1)", self.hidden, lo=1)
        if self.dtype not in FLOAT_DTYPES:
            fail(OP, "x", "dtype bfloat16, float16 or float32", self.dtype, kind=TypeError)
        check_int(OP, "num_layers", self.num_layers, lo=1)
        check_int(OP, "hc", self.hc, lo=1)
        e = check_int(OP, "num_experts", self.num_experts, lo=1)
        check_int(OP, "n_group", self.n_group, lo=1, hi=e)
        if e % self.n_group != 0:
            fail(OP, "n_group", f"a divisor of num_experts={e}", self.n_group)
        check_int(OP, "topk_group", self.topk_group, lo=1, hi=self.n_group)
        check_int(OP, "top_k", self.top_k, lo=1, hi=self.topk_group * (e // self.n_group))
        n = check_int(OP, "intermediate", self.intermediate, lo=1)
        check_choice(OP, "quant", self.quant, QUANT_MODES)
        if self.swiglu_limit is not None:
            check_float(OP, "swiglu_limit", self.swiglu_limit, positive=True)
        check_float(OP, "routed_scaling_factor", self.routed_scaling_factor, positive=True)
        check_float(OP, "post_mult", self.post_mult)
        check_sinkhorn_iters(OP, "sinkhorn_iters", self.sinkhorn_iters)
        h = self.hidden
        if self.quant == "fp8_block":
            blk = FP8_BLOCK[1]
            if h % blk != 0:
                fail(OP, "x", f"H (dim 1) divisible by {blk} for quant='fp8_block'", h)
            if n % blk != 0:
                fail(OP, "intermediate", f"a multiple of {blk} for quant='fp8_block'", n)
        if self.quant == "mxfp4":
            if h % MX_BLOCK != 0:
                fail(OP, "x", f"H (dim 1) divisible by {MX_BLOCK} for quant='mxfp4'", h)
            if n % MX_BLOCK != 0:
                fail(OP, "intermediate", f"a multiple of {MX_BLOCK} for quant='mxfp4'", n)


@dataclass(frozen=True)
class LayerWeights:
    hc_fn: torch.Tensor  # [hc*(2+hc), hc*H] float32
    hc_scale: torch.Tensor  # [3] float32
    hc_base: torch.Tensor  # [hc*(2+hc)] float32
    norm: torch.Tensor  # [H] x.dtype
    router_w: torch.Tensor  # [E, H] float32
    router_bias: torch.Tensor  # [E] float32 (e_score_correction_bias)
    w13: torch.Tensor  # [E, 2N, H] (x.dtype / fp8 / packed uint8)
    w2: torch.Tensor  # [E, H, N]
    w13_scale: torch.Tensor | None
    w2_scale: torch.Tensor | None


@dataclass(frozen=True)
class StackWeights:
    layers: tuple[LayerWeights, ...]
    head_fn: torch.Tensor  # [hc, hc*H] float32
    head_scale: torch.Tensor  # [1] float32
    head_base: torch.Tensor  # [hc] float32


def _gen(seed: int, stream: int) -> torch.Generator:
    # One independent generator per layer (stream = layer) and for the head (stream = -1).
    return torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + stream + 1)


def _randn(g: torch.Generator, *shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float32) * std + mean


def _quantize(w: torch.Tensor, cfg: StackConfig):
    """Float32 master weight -> (weight, scale) for the quant mode."""
    if cfg.quant == "fp8_block":
        return fp8_block_quant(w, block_shape=FP8_BLOCK)
    if cfg.quant == "mxfp4":
        return mxfp4_quant(w)
    return w.to(cfg.dtype), None


def _layer_weights(cfg: StackConfig, seed: int, layer: int) -> LayerWeights:
    g = _gen(seed, layer)
    hc, h, e, n = cfg.hc, cfg.hidden, cfg.num_experts, cfg.intermediate
    mix = hc * (2 + hc)
    # Scales chosen so the mixes are O(1): comb_res_mix is far from uniform and the sublayer
    # outputs are O(1), so every op matters to the result.
    hc_fn = _randn(g, mix, hc * h, std=(hc * h) ** -0.5)
    hc_scale = torch.rand(3, generator=g) + 0.5
    hc_base = _randn(g, mix, std=0.5)
    norm = _randn(g, h, std=0.1, mean=1.0)
    router_w = _randn(g, e, h, std=h**-0.5)
    router_bias = _randn(g, e, std=0.1)
    w13, w13_scale = _quantize(_randn(g, e, 2 * n, h, std=h**-0.5), cfg)
    w2, w2_scale = _quantize(_randn(g, e, h, n, std=n**-0.5), cfg)
    return LayerWeights(
        hc_fn,
        hc_scale,
        hc_base,
        norm.to(cfg.dtype),
        router_w,
        router_bias,
        w13,
        w2,
        w13_scale,
        w2_scale,
    )


def _to(w, device: torch.device):
    if w is None or isinstance(w, torch.Tensor):
        return None if w is None else w.to(device)
    fields = {k: _to(v, device) for k, v in w.__dict__.items()}
    return type(w)(**fields)


@functools.lru_cache(maxsize=16)
def _cached_weights(cfg: StackConfig, seed: int, device: torch.device) -> StackWeights:
    layers = tuple(_to(_layer_weights(cfg, seed, i), device) for i in range(cfg.num_layers))
    g = _gen(seed, -1)
    hc, h = cfg.hc, cfg.hidden
    head_fn = _randn(g, hc, hc * h, std=(hc * h) ** -0.5)
    head_scale = torch.rand(1, generator=g) + 0.5
    head_base = _randn(g, hc, std=0.5)
    return StackWeights(layers, head_fn.to(device), head_scale.to(device), head_base.to(device))


def stack_weights(config: StackConfig, seed: int, device) -> StackWeights:
    """The deterministic weights of `config` from `seed` on `device` (cached; never modify them)."""
    config.validate()
    check_int(OP, "seed", seed, lo=0)
    return _cached_weights(config, seed, torch.device(device))


# --- capture ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpCall:
    """One op call of a stack run: `ops[name](*inputs, **options)` returned `outputs`.

    Tensors are detached clones taken before (inputs) and after (outputs) the call, so a tool
    can re-run an op on exactly the inputs the run gave it: `call.rerun(fn)`.
    """

    name: str
    layer: int | None
    inputs: tuple
    options: dict[str, Any]
    outputs: Any

    def rerun(self, fn: Callable) -> Any:
        return fn(*self.inputs, **self.options)


def _snapshot(v):
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, tuple):
        return tuple(_snapshot(u) for u in v)
    if isinstance(v, list):
        return [_snapshot(u) for u in v]
    if isinstance(v, dict):
        return {k: _snapshot(u) for k, u in v.items()}
    return v


class _Runner:
    def __init__(self, ops: Mapping[str, Callable], capture: list | None):
        self.ops = ops
        self.capture = capture

    def __call__(self, name: str, layer: int | None, *args, **kwargs):
        before = (_snapshot(args), _snapshot(kwargs)) if self.capture is not None else None
        out = self.ops[name](*args, **kwargs)
        if before is not None:
            self.capture.append(OpCall(name, layer, before[0], before[1], _snapshot(out)))
        return out


def _check_ops(ops) -> dict[str, Callable]:
    if ops is None:
        return dict(REFERENCE_OPS)
    if not isinstance(ops, Mapping):
        fail(OP, "ops", "a Mapping[str, Callable] or None", type(ops).__name__, kind=TypeError)
    for key, fn in ops.items():
        if key not in OP_KEYS:
            fail(OP, "ops", "keys among " + ", ".join(OP_KEYS), repr(key))
        if not callable(fn):
            fail(OP, f"ops[{key!r}]", "a callable", type(fn).__name__, kind=TypeError)
    return {**REFERENCE_OPS, **ops}  # missing keys fall back; a fused entry only if given


# --- the stack ----------------------------------------------------------------------------------


def validate_decoder_stack(
    x,
    *,
    start_layer,
    end_layer,
    ops=None,
    num_layers=4,
    hc=4,
    num_experts=8,
    top_k=2,
    n_group=2,
    topk_group=1,
    intermediate=64,
    quant="none",
    swiglu_limit=10.0,
    routed_scaling_factor=2.5,
    post_mult=2.0,
    sinkhorn_iters=20,
    seed=0,
    capture=None,
) -> tuple[StackConfig, dict[str, Callable]]:
    """Every check of decoder_stack's input, before any work (shared with the fast paths so
    their errors match): returns (the config, the full ops table)."""
    check_tensor(OP, "x", x, dtypes=FLOAT_DTYPES, ndim=2)
    cfg = StackConfig(
        hidden=x.shape[1],
        dtype=x.dtype,
        num_layers=num_layers,
        hc=hc,
        num_experts=num_experts,
        top_k=top_k,
        n_group=n_group,
        topk_group=topk_group,
        intermediate=intermediate,
        quant=quant,
        swiglu_limit=swiglu_limit,
        routed_scaling_factor=routed_scaling_factor,
        post_mult=post_mult,
        sinkhorn_iters=sinkhorn_iters,
    )
    cfg.validate()
    check_int(OP, "start_layer", start_layer, lo=0, hi=num_layers)
    check_int(OP, "end_layer", end_layer, lo=start_layer, hi=num_layers)
    table = _check_ops(ops)
    if capture is not None and not isinstance(capture, list):
        fail(OP, "capture", "a list or None", type(capture).__name__, kind=TypeError)
    check_int(OP, "seed", seed, lo=0)
    return cfg, table


def decoder_stack(
    x: torch.Tensor,
    *,
    start_layer: int,
    end_layer: int,
    ops: Mapping[str, Callable] | None = None,
    num_layers: int = 4,
    hc: int = 4,
    num_experts: int = 8,
    top_k: int = 2,
    n_group: int = 2,
    topk_group: int = 1,
    intermediate: int = 64,
    quant: str = "none",
    swiglu_limit: float | None = 10.0,
    routed_scaling_factor: float = 2.5,
    post_mult: float = 2.0,
    sinkhorn_iters: int = 20,
    seed: int = 0,
    capture: list | None = None,
) -> torch.Tensor:
    """Run layers `[start_layer, end_layer)` of the seeded stack on `x [T, H]` -> `[T, H]` in
    x.dtype.

    `ops` maps op names (`OP_KEYS`) to implementations; missing ones fall back to the
    references, except "mhc_fused_post_pre", used between layers only when given (as vLLM's
    DeepseekV4Model does). `start_layer == end_layer` runs no layer: the output is the mhc_head
    of the copied input streams. A `capture` list receives one `OpCall` per op call.
    """
    cfg, table = validate_decoder_stack(
        x,
        start_layer=start_layer,
        end_layer=end_layer,
        ops=ops,
        num_layers=num_layers,
        hc=hc,
        num_experts=num_experts,
        top_k=top_k,
        n_group=n_group,
        topk_group=topk_group,
        intermediate=intermediate,
        quant=quant,
        swiglu_limit=swiglu_limit,
        routed_scaling_factor=routed_scaling_factor,
        post_mult=post_mult,
        sinkhorn_iters=sinkhorn_iters,
        seed=seed,
        capture=capture,
    )
    weights = stack_weights(cfg, seed, x.device)

    run = _Runner(table, capture)
    # Intermediate ops always round (kernels chained in a model do); only the head follows an
    # outer precision("float64", round_output=False).
    inner = "float64" if compute_dtype() == torch.float64 else "float32"
    with precision(inner):
        residual = _layers(run, cfg, weights, x, start_layer, end_layer)
    return run(
        "mhc_head",
        None,
        residual,
        weights.head_fn,
        weights.head_scale,
        weights.head_base,
        rms_eps=NORM_EPS,
        hc_eps=NORM_EPS,
    )


def _layers(run: _Runner, cfg: StackConfig, weights: StackWeights, x, start: int, end: int):
    """The residual streams `[T, hc, H]` after layers [start, end)."""
    t, h = x.shape
    residual = x.unsqueeze(1).expand(t, cfg.hc, h).contiguous()  # hc copies of x
    pre_opts = dict(
        rms_eps=NORM_EPS,
        pre_eps=NORM_EPS,
        sinkhorn_eps=NORM_EPS,
        post_mult=float(cfg.post_mult),
        sinkhorn_iters=cfg.sinkhorn_iters,
    )
    fused = "mhc_fused_post_pre" in run.ops
    moe_opts: dict[str, Any] = dict(quant=cfg.quant, swiglu_limit=cfg.swiglu_limit)
    if cfg.quant == "fp8_block":
        moe_opts["block_shape"] = FP8_BLOCK

    out = post_mix = comb = None  # the previous layer's sublayer output and its mixes
    for i in range(start, end):
        w = weights.layers[i]
        mhc = (w.hc_fn, w.hc_scale, w.hc_base)
        if i == start:
            post_mix, comb, layer_input = run("mhc_pre", i, residual, *mhc, **pre_opts)
        elif fused:
            args = (out, residual, post_mix, comb, *mhc)
            residual, post_mix, comb, layer_input = run("mhc_fused_post_pre", i, *args, **pre_opts)
        else:
            residual = run("mhc_post", i - 1, out, residual, post_mix, comb)
            post_mix, comb, layer_input = run("mhc_pre", i, residual, *mhc, **pre_opts)

        normed = run("rms_norm", i, layer_input, w.norm, eps=NORM_EPS)
        dt = compute_dtype()
        logits = finish(normed.to(dt) @ w.router_w.to(dt).T, torch.float32)
        topk_w, topk_ids = run(
            "route",
            i,
            logits,
            k=cfg.top_k,
            method="dsv3",
            bias=w.router_bias,
            n_group=cfg.n_group,
            topk_group=cfg.topk_group,
            renormalize=True,
            routed_scaling_factor=float(cfg.routed_scaling_factor),
        )
        scales = dict(w13_scale=w.w13_scale, w2_scale=w.w2_scale)
        out = run("fused_moe", i, normed, w.w13, w.w2, topk_w, topk_ids, **scales, **moe_opts)

    if end > start:
        residual = run("mhc_post", end - 1, out, residual, post_mix, comb)
    return residual
