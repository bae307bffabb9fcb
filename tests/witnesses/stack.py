"""Broken decoder stacks, one or more per property: implementations with the reference's
signature (their own ops table inside), capturing their op calls as the contract asks."""

import torch

from parity.reference import decoder_stack, mhc_post
from parity.reference.common import finish
from parity.reference.stack import (
    FP8_BLOCK,
    NORM_EPS,
    REFERENCE_OPS,
    StackConfig,
    _Runner,
    stack_weights,
)
from tests.witnesses import witness


def _post_liger(x, residual, post_mix, comb):
    """mhc_post with Liger's transposed comb convention."""
    return mhc_post(x, residual, post_mix, comb.transpose(-1, -2).contiguous())


def _stack(x, *, start_layer, end_layer, capture=None, seed=0, bug=None, **kw):
    """A re-implementation of the reference stack's loop (unvalidated), with one bug."""
    cfg = StackConfig(hidden=x.shape[1], dtype=x.dtype, **kw)
    w_all = stack_weights(cfg, seed, x.device)
    run = _Runner(dict(REFERENCE_OPS), capture)
    t, h = x.shape
    streams = x.unsqueeze(1).expand(t, cfg.hc, h).contiguous()
    residual = streams
    pre_opts = dict(
        rms_eps=NORM_EPS,
        pre_eps=NORM_EPS,
        sinkhorn_eps=NORM_EPS,
        post_mult=float(cfg.post_mult),
        sinkhorn_iters=cfg.sinkhorn_iters,
    )
    moe_opts = dict(quant=cfg.quant, swiglu_limit=cfg.swiglu_limit)
    if cfg.quant == "fp8_block":
        moe_opts["block_shape"] = FP8_BLOCK
    end = end_layer - 1 if bug == "skip_last" and end_layer > start_layer else end_layer
    for i in range(start_layer, end):
        w = w_all.layers[i]
        if i > start_layer:
            post_op = _post_liger if bug == "broken_post_layer1" and i - 1 == 1 else mhc_post
            run.ops["mhc_post"] = post_op
            residual = run("mhc_post", i - 1, out, residual, post_mix, comb)  # noqa: F821
            if bug == "reset_residual":
                residual = streams
        post_mix, comb, layer_input = run(
            "mhc_pre", i, residual, w.hc_fn, w.hc_scale, w.hc_base, **pre_opts
        )
        normed = run("rms_norm", i, layer_input, w.norm, eps=NORM_EPS)
        logits = finish(normed.float() @ w.router_w.T, torch.float32)
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
    if bug == "empty_crash" or end > start_layer:
        # vLLM's fused-path bug: the last post runs even when no layer ran, on a name the
        # loop never bound (UnboundLocalError)
        post_op = _post_liger if bug == "broken_post_layer1" and end - 1 == 1 else mhc_post
        run.ops["mhc_post"] = post_op
        residual = run("mhc_post", end - 1, out, residual, post_mix, comb)
    return run(
        "mhc_head",
        None,
        residual,
        w_all.head_fn,
        w_all.head_scale,
        w_all.head_base,
        rms_eps=NORM_EPS,
        hc_eps=NORM_EPS,
    )


@witness("decoder_stack", "matches_reference", why="UnboundLocalError when start == end")
def stack_empty_range_crashes(x, **kw):
    return _stack(x, **kw, bug="empty_crash")


@witness("decoder_stack", "matches_reference", why="start == end returns x, not the head")
def stack_empty_range_garbage(x, *, start_layer, end_layer, **kw):
    if start_layer == end_layer:
        return x.clone()
    return decoder_stack(x, start_layer=start_layer, end_layer=end_layer, **kw)


@witness("decoder_stack", "matches_reference", why="skips the last layer of the range")
def stack_skips_last_layer(x, **kw):
    return _stack(x, **kw, bug="skip_last")


@witness("decoder_stack", "matches_reference", why="resets the residual streams every layer")
def stack_resets_residual(x, **kw):
    return _stack(x, **kw, bug="reset_residual")


@witness("decoder_stack", "matches_reference", why="mhc_post transposed at layer 1 only")
def stack_broken_post_at_layer1(x, **kw):
    return _stack(x, **kw, bug="broken_post_layer1")


@witness("decoder_stack", "writes_all_outputs", why="last token row never written")
def stack_skips_tail(x, **kw):
    out = decoder_stack(x, **kw)
    e = torch.empty_like(out)
    if out.shape[0] > 1:
        e[:-1] = out[:-1]
    elif out.shape[0] == 1:
        e.copy_(out)
    return e


@witness("decoder_stack", "inputs_unchanged", why="negates x in place after the run")
def stack_modifies_x(x, **kw):
    out = decoder_stack(x, **kw)
    x.neg_()
    return out


_calls = [0]


@witness("decoder_stack", "deterministic", why="perturbs one element every other call")
def stack_flaky(x, **kw):
    out = decoder_stack(x, **kw)
    _calls[0] += 1
    if _calls[0] % 2 and out.numel():
        out.view(-1)[0] = out.view(-1)[0] * 2 + 1
    return out


@witness("decoder_stack", "nan_policy", why="nan_to_num on x: NaN is dropped")
def stack_drops_nan(x, **kw):
    return decoder_stack(torch.nan_to_num(x), **kw)


@witness("decoder_stack", "error_parity", why="clamps bad layer ranges instead of raising")
def stack_no_validation(x, *, start_layer, end_layer, num_layers=4, **kw):
    start, end = sorted((max(int(start_layer), 0), min(int(end_layer), num_layers)))
    if isinstance(kw.get("capture"), tuple):
        kw["capture"] = None
    return _stack(x.float(), start_layer=start, end_layer=end, num_layers=num_layers, **kw)


@witness("decoder_stack", "token_permutation", "batch_split", why="token 0 copies the last")
def stack_row_mixup(x, **kw):
    out = decoder_stack(x, **kw)
    if out.shape[0] > 1:
        out[0] = out[-1]
    return out
