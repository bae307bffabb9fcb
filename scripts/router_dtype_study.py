"""Router logits dtype study: how often DeepSeek-V3 routing (E=256, 8 groups, top-4 groups,
top-8, scale 2.5, renormalised) picks a different expert set, and how far the weights move,
when the fp32 router logits are rounded to bf16 first. Through the parity reference, on the CPU
or the GPU; docs/router-dtype-study.md holds the table.

    python scripts/router_dtype_study.py [--device cpu] [--tokens 200000] [--out DIR]

Logits ~ N(0, sigma) for sigma in 0.5..4; bias: DeepSeek-V3-like N(0, 0.02) or V4-like
8.08 + N(0, 1e-3), kept in fp32. Prints one JSON row per (bias, sigma) and writes
router_study.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from parity import reference as ref


def router_dtype_study(device: str, tokens: int = 200_000, seed: int = 0) -> list[dict]:
    """dsv3 routing (E=256, 8 groups, top-4 groups, top-8, scale 2.5, renormalized) on fp32
    logits vs the same logits rounded to bf16, through the parity reference. Logits ~ N(0,
    sigma); bias: DeepSeek-V3-like N(0, 0.02) or V4-like 8.08 + N(0, 1e-3), kept in fp32."""
    rows = []
    g = torch.Generator(device=device).manual_seed(seed)
    for bias_kind in ("v3", "v4"):
        for sigma in (0.5, 1.0, 2.0, 3.0, 4.0):
            logits = torch.randn(tokens, 256, generator=g, device=device) * sigma
            if bias_kind == "v3":
                bias = torch.randn(256, generator=g, device=device) * 0.02
            else:
                bias = 8.08 + torch.randn(256, generator=g, device=device) * 1e-3
            kw = dict(
                k=8, method="dsv3", bias=bias, n_group=8, topk_group=4, routed_scaling_factor=2.5
            )
            w32, i32 = ref.route(logits, **kw)
            lb = logits.to(torch.bfloat16)
            wb, ib = ref.route(lb, **kw)
            # align by expert id: dense [T, E] weight maps
            d32 = torch.zeros(tokens, 256, device=device).scatter_(1, i32.long(), w32)
            db = torch.zeros(tokens, 256, device=device).scatter_(1, ib.long(), wb)
            s32 = torch.zeros(tokens, 256, dtype=torch.bool, device=device)
            s32.scatter_(1, i32.long(), True)
            sb = torch.zeros_like(s32).scatter_(1, ib.long(), True)
            differ = (s32 != sb).any(-1)
            n_swapped = ((s32 & ~sb).sum(-1)).float()
            dw = (d32 - db).abs()
            same = ~differ
            # the logit perturbation itself
            dl = (lb.float() - logits).abs()
            rows.append(
                dict(
                    bias=bias_kind,
                    sigma=sigma,
                    tokens=tokens,
                    frac_tokens_diff_set=float(differ.float().mean()),
                    frac_tokens_2plus_swapped=float((n_swapped >= 2).float().mean()),
                    mean_swapped_given_diff=float(n_swapped[differ].mean())
                    if differ.any()
                    else 0.0,
                    max_abs_dw_same_set=float(dw[same].max()) if same.any() else 0.0,
                    mean_abs_dw_same_set=float(dw[same].sum(-1).div(8).mean())
                    if same.any()
                    else 0.0,
                    max_abs_dw_all=float(dw.max()),
                    mean_l1_dw_all=float(dw.sum(-1).mean()),
                    max_abs_dlogit=float(dl.max()),
                )
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    t0 = time.time()
    rows = router_dtype_study(a.device, tokens=a.tokens, seed=a.seed)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "router_study.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    for r in rows:
        print(json.dumps(r))
    print(f"{time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
