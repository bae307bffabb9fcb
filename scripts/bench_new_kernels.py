"""Benchmark parity's Triton fp8_block_quant, mxfp4_quant and route on the GPU, in one run
(issue 11, section 2).

- Quantizers at large sizes: achieved bandwidth (bytes read + written / time) against the
  device-to-device copy rate measured in the same run (target: at least 85% of copy), for the
  shipped tile and a few alternatives (TILE / MAX_TILE of the kernel modules), with a bit-exact
  check of the timed output against the reference before timing.
- route (DeepSeek-V3: E 256, 8 groups, top-4 groups, k 8; and V4's sqrtsoftplus, E 256, k 6)
  at T in {1, 16, 128, 1024, 8192, 32768}: the Triton wrapper against FlashInfer's
  `fused_topk_deepseek` called directly (float32 logits and bias, outputs preallocated), both
  by `triton.testing.do_bench` (eager, includes host time) and CUDA graph replay.

Medians; inputs larger than L2 (50 MB) for the quantizers. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

import torch


def bench(fn, *, graph=False, rep=100) -> float:
    import triton.testing

    if graph:
        with torch.cuda.stream(torch.cuda.Stream()):
            return triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median")
    return triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median")


def copy_rate() -> float:
    """Device-to-device copy: bytes read + written per second (TB/s)."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = bench(lambda a=a, b=b: b.copy_(a))
    del a, b
    return 2 * (1 << 30) / (ms * 1e-3) / 1e12


def quantizers(copy_tbs: float, rows: list) -> None:
    from parity.optimized.triton import _kernels_fp8_block_quant as kb
    from parity.optimized.triton import _kernels_mxfp4_quant as km
    from parity.optimized.triton.fp8_block_quant import fp8_block_quant
    from parity.optimized.triton.mxfp4_quant import mxfp4_quant
    from parity.reference import fp8_block_quant as ref_block
    from parity.reference import mxfp4_quant as ref_mx

    g = torch.Generator(device="cuda").manual_seed(0)
    # DeepSeek-V3/V4-like expert weights: 32 experts of [4096, 7168] bf16 (1.9 GB), and a
    # partial-edge shape
    for shape, bs, fmt in [
        ((32, 4096, 7168), (128, 128), "fp32"),
        ((32, 4096, 7168), (128, 128), "ue8m0"),
        ((8, 4000, 7100), (128, 128), "fp32"),
        ((8192, 7168), (1, 128), "fp32"),
    ]:
        w = torch.randn(shape, generator=g, device="cuda", dtype=torch.float32).to(torch.bfloat16)
        n = w.numel()
        nbytes = 3 * n + 4 * (n // (bs[0] * bs[1]))
        # exactness on a slice before timing (the reference on the GPU, float32 math)
        sl = w[:2] if w.dim() == 3 else w[:512]
        q, s = fp8_block_quant(sl, block_shape=bs, scale_format=fmt)
        q2, s2 = ref_block(sl, block_shape=bs, scale_format=fmt)
        exact = bool(torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2))
        variants = [("tile", 16384, {}), ("tile w8", 16384, {"warps": 8})]
        if bs == (128, 128):
            variants += [("2-pass c4096", 4096, {}), ("2-pass c8192 w8", 4096, {"chunk": 8192})]
        else:
            variants += [
                ("tile e4096", 16384, {"elems": 4096}),
                ("tile e16384", 16384, {"elems": 16384}),
            ]
        for name, max_tile, tile in variants:
            old = (kb.MAX_TILE, dict(kb.TILE))
            kb.MAX_TILE = max_tile
            kb.TILE.update(tile)
            try:
                ms = bench(
                    lambda w=w, bs=bs, fmt=fmt: fp8_block_quant(w, block_shape=bs, scale_format=fmt)
                )
                tbs = nbytes / (ms * 1e-3) / 1e12
                rows.append(
                    dict(
                        op="fp8_block_quant",
                        case=f"{list(shape)} {list(bs)} {fmt}",
                        variant=name,
                        ms=ms,
                        tbs=tbs,
                        pct_copy=100 * tbs / copy_tbs,
                        exact=exact,
                    )
                )
                print(rows[-1], flush=True)
            except Exception:
                traceback.print_exc()
            finally:
                kb.MAX_TILE = old[0]
                kb.TILE.clear()
                kb.TILE.update(old[1])
        del w
        torch.cuda.empty_cache()

    for shape, rnd in [
        ((8192, 7168), "floor"),
        ((8192, 7168), "ceil"),
        ((32 * 2048, 7168), "floor"),
        ((16, 7168), "floor"),
    ]:
        x = torch.randn(shape, generator=g, device="cuda", dtype=torch.float32).to(torch.bfloat16)
        n = x.numel()
        nbytes = 2 * n + n // 2 + n // 32
        sl = x[:256]
        p, s = mxfp4_quant(sl, scale_rounding=rnd)
        p2, s2 = ref_mx(sl, scale_rounding=rnd)
        exact = bool(torch.equal(p, p2) and torch.equal(s, s2))
        for name, tile in [
            ("e4096", {}),
            ("e2048", {"elems": 2048}),
            ("e8192", {"elems": 8192}),
            ("e8192 w4", {"elems": 8192, "warps": 4}),
        ]:
            old = dict(km.TILE)
            km.TILE.update(tile)
            try:
                ms = bench(lambda x=x, rnd=rnd: mxfp4_quant(x, scale_rounding=rnd))
                tbs = nbytes / (ms * 1e-3) / 1e12
                rows.append(
                    dict(
                        op="mxfp4_quant",
                        case=f"{list(shape)} {rnd}",
                        variant=name,
                        ms=ms,
                        tbs=tbs,
                        pct_copy=100 * tbs / copy_tbs,
                        exact=exact,
                    )
                )
                print(rows[-1], flush=True)
            except Exception:
                traceback.print_exc()
            finally:
                km.TILE.clear()
                km.TILE.update(old)
        del x
        torch.cuda.empty_cache()


def routes(rows: list) -> None:
    from parity.optimized.triton.route import route
    from parity.reference.routing import check_route_selection

    try:
        from flashinfer.fused_moe import fused_topk_deepseek
    except Exception as e:
        print("flashinfer not importable:", e)
        fused_topk_deepseek = None
    g = torch.Generator(device="cuda").manual_seed(1)
    configs = [
        ("dsv3 E256 g8/4 k8", dict(method="dsv3", n_group=8, topk_group=4, k=8), 256),
        ("sqrtsoftplus E256 k6", dict(method="sqrtsoftplus", n_group=1, topk_group=1, k=6), 256),
    ]
    for label, kw, e in configs:
        for t in (1, 16, 128, 1024, 8192, 32768):
            x = torch.randn(t, e, generator=g, device="cuda", dtype=torch.float32)
            b = torch.randn(e, generator=g, device="cuda", dtype=torch.float32) * 0.1
            _, i = route(x, bias=b, renormalize=True, routed_scaling_factor=2.5, **kw)
            ok = bool(check_route_selection(x, i, bias=b, **kw).all())
            row = dict(op="route", case=f"{label} T={t}", ok_ids=ok)
            row["triton_us"] = 1e3 * bench(
                lambda x=x, b=b, kw=kw: route(x, bias=b, routed_scaling_factor=2.5, **kw)
            )
            try:
                row["triton_graph_us"] = 1e3 * bench(
                    lambda x=x, b=b, kw=kw: route(x, bias=b, routed_scaling_factor=2.5, **kw),
                    graph=True,
                )
            except Exception as ex:
                row["triton_graph_us"] = f"failed: {ex}"[:80]
            if fused_topk_deepseek is not None and kw["method"] == "dsv3":
                wf = torch.empty((t, kw["k"]), dtype=torch.float32, device="cuda")
                idf = torch.empty((t, kw["k"]), dtype=torch.int32, device="cuda")

                def fi(x=x, b=b, wf=wf, idf=idf, kw=kw):
                    fused_topk_deepseek(
                        x, b, kw["n_group"], kw["topk_group"], kw["k"], 2.5, wf, idf
                    )

                fi()
                row["flashinfer_us"] = 1e3 * bench(fi)
                try:
                    row["flashinfer_graph_us"] = 1e3 * bench(fi, graph=True)
                except Exception as ex:
                    row["flashinfer_graph_us"] = f"failed: {ex}"[:80]
            rows.append(row)
            print(row, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_new_kernels.json")
    ap.add_argument("--skip", default="")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    t0 = time.time()
    dev = torch.cuda.get_device_name()
    copy_tbs = copy_rate()
    print(f"device {dev}; copy {copy_tbs:.3f} TB/s", flush=True)
    rows: list = []
    try:
        if "quant" not in skip:
            quantizers(copy_tbs, rows)
        if "route" not in skip:
            routes(rows)
    finally:
        with open(args.out, "w") as f:
            json.dump({"device": dev, "copy_tbs": copy_tbs, "rows": rows}, f, indent=1)
    print(f"\nsummary ({dev}, copy {copy_tbs:.3f} TB/s, {time.time() - t0:.0f} s)")
    for r in rows:
        if r["op"] == "route":
            f = {k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in r.items()}
            print(
                f"route {f['case']:34} ids_ok={f['ok_ids']} triton {f['triton_us']} us "
                f"(graph {f.get('triton_graph_us')}) flashinfer {f.get('flashinfer_us', '-')} "
                f"(graph {f.get('flashinfer_graph_us', '-')})"
            )
        else:
            print(
                f"{r['op']:16} {r['case']:36} {r['variant']:16} {r['ms']:8.3f} ms "
                f"{r['tbs']:6.3f} TB/s {r['pct_copy']:5.1f}% of copy exact={r['exact']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
