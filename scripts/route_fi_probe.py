"""Why FlashInfer's route fails a derived case (H100 nightly, 2026-12-06): each case of the
property's plan (original and derived) through the FlashInfer adapter, row by row, beside the
float64 keys (sigmoid(l) + bias) of the contract; then a scan of n_group=1 configurations.

    source .gpu/activate.sh && python3 scripts/route_fi_probe.py
"""

from __future__ import annotations

import json
import sys

import torch

from parity.catalog import get_spec
from parity.optimized.flashinfer import adapters
from parity.properties.checks import make_plan

_META = {"T": 2, "bias_dtype": "float32", "bias_regime": "negative", "dtype": "bfloat16",
         "regime": "normal", "renormalize": True, "routed_scaling_factor": 1.0, "seed": 0,
         "config": {"E": 256, "k": 1, "method": "dsv3", "n_group": 1, "topk_group": 1}}  # fmt: skip
# (property, meta) from the nightly's counterexamples
CASES = [("token_permutation", _META), ("expert_relabel", dict(_META, T=1))]


def rows(case) -> None:
    logits, kw = case.args[0], case.kwargs
    w, ids = adapters.route(logits, **kw)
    key = torch.sigmoid(logits.double()) + kw["bias"].double()
    top = key.topk(min(4, key.shape[1]), dim=1)
    for r in range(logits.shape[0]):
        got = ids[r].tolist()
        print(
            f"  row {r}: flashinfer ids {got} w {[round(x, 6) for x in w[r].tolist()]}"
            f" key(ids) {[float(key[r, i]) for i in got if 0 <= i < key.shape[1]]}"
        )
        print(f"          top4 ids {top.indices[r].tolist()} keys {top.values[r].tolist()}")
        print(f"          bias(top) {[float(kw['bias'][i]) for i in top.indices[r].tolist()]}")


def main() -> int:
    spec = get_spec("route")
    for prop, meta in CASES:
        case = spec.build(meta, "cuda")
        plan = make_plan(spec, prop, case)
        print(f"== {prop} {json.dumps(meta['config'])} T={meta['T']}")
        for i, c in enumerate(plan.cases):
            print(f" case {i} ({'original' if i == 0 else 'derived'})")
            rows(c)
    # scan: how often FlashInfer's top-1 / top-k differs from the float64 keys' top, by config
    print("== scan: rows whose FlashInfer ids are not the float64 top-k (any tie aside)")
    # (E, k, n_group, topk_group, bias regime) without groups (FlashInfer takes k <= topk_group *
    # n_group, so k = 1 there): the plain top-k of the keys is the contract's choice
    configs = [(256, 1, 1, 1, "negative"), (256, 1, 1, 1, "random"), (64, 1, 1, 1, "negative")]
    configs += [(384, 1, 1, 1, "negative"), (256, 1, 1, 1, "zero")]
    for e, k, n_group, topk_group, bias_regime in configs:
        bad = total = 0
        for seed in range(200):
            meta = dict(CASES[0][1], T=8, seed=seed, bias_regime=bias_regime)
            meta["config"] = dict(meta["config"], E=e, k=k, n_group=n_group, topk_group=topk_group)
            c = spec.build(meta, "cuda")
            _, ids = adapters.route(c.args[0], **c.kwargs)
            key = torch.sigmoid(c.args[0].double()) + c.kwargs["bias"].double()
            kth = key.topk(k, dim=1).values[:, -1:]
            got = key.gather(1, ids.long().clamp(0, e - 1))
            bad += int(((got < kth) | (ids < 0) | (ids >= e)).any(1).sum())
            total += key.shape[0]
        cfg = f"E={e} k={k} n_group={n_group} topk_group={topk_group} bias={bias_regime}"
        print(f"  {cfg}: {bad} of {total} rows off the top-k")
    return 0


if __name__ == "__main__":
    sys.exit(main())
