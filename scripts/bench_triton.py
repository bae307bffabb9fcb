"""Benchmark the Triton kernels on the GPU, in one run (issue: Triton fast paths).

- Memory-bound kernels (swiglu, fp8_quant, silu_mul_fp8_quant, mxfp4_dequant) at T in
  {1, 16, 128, 1024, 8192}: Triton against the torch reference (eager and torch.compile) and,
  for swiglu, FlashInfer's silu_and_mul; achieved bandwidth against the measured
  device-to-device copy rate.
- fused_moe for a DeepSeek-V4-like layer (H 7168, N 2048 per expert shard, 32 local experts,
  top-8) in the three quant modes at T in {1, 16, 128, 1024, 8192}: time and TFLOP/s against a
  dequantize-then-torch grouped-matmul baseline.

Medians of triton.testing.do_bench over rotating input sets larger than L2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from functools import partial

import torch


def bench(fn, sets, *, warmup=25, rep=100) -> float:
    """Median milliseconds of fn(*sets[i]) rotating i, after warm-up."""
    import triton.testing

    i = [0]

    def call():
        fn(*sets[i[0] % len(sets)])
        i[0] += 1

    return triton.testing.do_bench(call, warmup=warmup, rep=rep, return_mode="median")


def call_kw(fn, kw, *args):
    return fn(*args, **kw)


def n_sets(bytes_per_call: int) -> int:
    # rotate through more than 2x the 50 MB L2, at most 64 input sets
    return int(min(64, max(2, math.ceil(120e6 / max(bytes_per_call, 1)))))


def nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))


def copy_rate() -> float:
    """Device-to-device copy: bytes read + written per second (TB/s)."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = bench(lambda x, y: y.copy_(x), [(a, b)])
    return 2 * a.numel() / (ms * 1e-3) / 1e12


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_triton.json")
    ap.add_argument("--tokens", default="1,16,128,1024,8192")
    ap.add_argument("--skip-moe", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("NOT RUN: bench_triton needs a CUDA GPU")
        return 0
    from parity import reference as ref
    from parity.catalog import get_impl

    Ts = [int(t) for t in args.tokens.split(",")]
    dev = "cuda"
    rows = []
    bw = copy_rate()
    print(f"device {torch.cuda.get_device_name()}  copy {bw:.2f} TB/s", flush=True)

    def save():  # after each section: a run cut short by its time limit keeps what it measured
        with open(args.out, "w") as fh:
            json.dump(
                {
                    "device": torch.cuda.get_device_name(),
                    "copy_TBps": bw,
                    "date": time.strftime("%Y-%m-%d"),
                    "rows": rows,
                },
                fh,
                indent=1,
            )

    # fused_moe first: its targets decide most, and the runner call has a time limit
    if not args.skip_moe:
        bench_moe(Ts, dev, rows, save)
    try:
        import flashinfer

        fi_silu = flashinfer.activation.silu_and_mul
    except Exception as e:
        print(f"flashinfer unavailable: {e}")
        fi_silu = None

    g = torch.Generator(device=dev).manual_seed(0)
    H, N = 7168, 2048

    def mk_swiglu(T):
        return (torch.randn(T, 2 * N, device=dev, generator=g).to(torch.bfloat16),)

    def mk_fp8(T):
        return (torch.randn(T, H, device=dev, generator=g).to(torch.bfloat16),)

    def mk_mx(T):
        x = torch.randn(T, H, device=dev, generator=g)
        return ref.mxfp4_quant(x)

    cases = {
        "swiglu": (mk_swiglu, {}, lambda a: a[0].numel() * 2 * 3 // 2),
        "fp8_quant": (mk_fp8, {}, lambda a: a[0].numel() * 3 + a[0].numel() // 128 * 4),
        "silu_mul_fp8_quant": (
            mk_swiglu,
            {},
            lambda a: a[0].numel() * 2 + a[0].numel() // 2 + a[0].numel() // 256 * 4,
        ),
        "mxfp4_dequant": (mk_mx, {}, lambda a: nbytes(*a) + a[0].numel() * 2 * 2),
    }
    for op, (mk, kw, bytes_of) in cases.items():
        impls = {"triton": get_impl(op, "triton").fn}
        refn = getattr(ref, op)
        impls["torch_eager"] = refn
        try:
            # torch.compile's default: static for the first shape, one dynamic recompile after
            impls["torch_compile"] = torch.compile(refn)
        except Exception as e:
            print(f"torch.compile unavailable for {op}: {e}")
        if op == "swiglu" and fi_silu is not None:
            impls["flashinfer"] = fi_silu
        for T in Ts:
            one = mk(T)
            sets = [one] + [mk(T) for _ in range(n_sets(nbytes(*one)) - 1)]
            moved = bytes_of(one)
            for name, fn in impls.items():
                try:
                    ms = bench(partial(call_kw, fn, kw), sets)
                except Exception as e:
                    print(f"{op} {name} T={T}: failed: {type(e).__name__}: {e}"[:300])
                    continue
                tbs = moved / (ms * 1e-3) / 1e12
                rows.append(
                    {
                        "op": op,
                        "impl": name,
                        "T": T,
                        "us": ms * 1e3,
                        "TBps": tbs,
                        "frac_copy": tbs / bw,
                    }
                )
                print(
                    f"{op:20} {name:14} T={T:5d} {ms * 1e3:9.1f} us {tbs:6.2f} TB/s "
                    f"({100 * tbs / bw:5.1f}% of copy)",
                    flush=True,
                )
            del sets
        save()

    save()
    print_table(rows, bw)
    return 0


def bench_moe(Ts, dev, rows, save):
    """fused_moe, DeepSeek-V4-like layer: H 7168, N 2048, 32 local experts, top-8."""
    from parity import reference as ref
    from parity.catalog import get_impl
    from parity.reference.quant import fp8_block_dequant

    H, N, E, k = 7168, 2048, 32, 8
    g = torch.Generator(device=dev).manual_seed(1)
    w13 = (torch.randn(E, 2 * N, H, device=dev, generator=g) / H**0.5).to(torch.bfloat16)
    w2 = (torch.randn(E, H, N, device=dev, generator=g) / N**0.5).to(torch.bfloat16)
    weights = {"none": (w13, w2, None, None)}
    q13, s13 = ref.fp8_block_quant(w13)
    q2, s2 = ref.fp8_block_quant(w2)
    weights["fp8_block"] = (q13, q2, s13, s2)
    p13, m13 = ref.mxfp4_quant(w13)
    p2, m2 = ref.mxfp4_quant(w2)
    weights["mxfp4"] = (p13, p2, m13, m2)
    del w13, w2
    torch.cuda.empty_cache()
    triton_moe = get_impl("fused_moe", "triton").fn
    from parity.optimized.triton._moe_configs import config_file_name, device_name, load_configs

    for quant in weights:  # say which tile configs the kernel runs with: tuned file or defaults
        name = config_file_name(E, N, quant, (128, 128), device_name(dev))
        used = "tuned" if load_configs(E, N, quant, (128, 128), device_name(dev)) else "DEFAULTS"
        print(f"fused_moe[{quant}] configs: {used} ({name})", flush=True)

    def dequant(quant, a, b, sa, sb):
        if quant == "none":
            return a, b
        if quant == "fp8_block":
            return (
                fp8_block_dequant(a, sa, (128, 128)).to(torch.bfloat16),
                fp8_block_dequant(b, sb, (128, 128)).to(torch.bfloat16),
            )
        return (
            ref.mxfp4_dequant(a, sa, dtype=torch.bfloat16),
            ref.mxfp4_dequant(b, sb, dtype=torch.bfloat16),
        )

    def torch_moe(x, a, b, tw, ti):
        """Grouped matmul in torch: per expert, gather its tokens, two GEMMs, scatter-add."""
        out = torch.zeros(x.shape[0], H, device=dev, dtype=torch.float32)
        flat = ti.view(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=E).tolist()
        start = 0
        for e, c in enumerate(counts):
            if c == 0:
                continue
            idx = order[start : start + c]
            start += c
            tok = idx // k
            h = x[tok] @ a[e].T
            act = torch.nn.functional.silu(h[:, :N].float()) * h[:, N:].float()
            y = act.to(x.dtype) @ b[e].T
            out.index_add_(0, tok, y.float() * tw.view(-1)[idx, None])
        return out.to(x.dtype)

    def dequant_then_moe(quant, x, a, b, sa, sb, tw, ti):
        return torch_moe(x, *dequant(quant, a, b, sa, sb), tw, ti)

    for quant, (a, b, sa, sb) in weights.items():
        for T in Ts:
            x = torch.randn(T, H, device=dev, generator=g).to(torch.bfloat16)
            logits = torch.randn(T, E, device=dev, generator=g)
            tw, ti = torch.topk(torch.softmax(logits, -1), k, dim=-1)
            ti = ti.to(torch.int32)
            flops = 2 * T * k * (2 * N * H + H * N)
            # the weights (GBs) are far larger than L2: one input set is enough here
            entries = {
                "triton": partial(
                    triton_moe, x, a, b, tw, ti, quant=quant, w13_scale=sa, w2_scale=sb
                ),
                "torch_dequant+mm": partial(dequant_then_moe, quant, x, a, b, sa, sb, tw, ti),
            }
            if quant != "none":
                da, db = dequant(quant, a, b, sa, sb)
                entries["torch_mm(predequant)"] = partial(torch_moe, x, da, db, tw, ti)
            for name, fn in entries.items():
                try:
                    ms = bench(fn, [()], warmup=10, rep=50)
                except Exception as e:
                    print(f"fused_moe {quant} {name} T={T}: failed: {type(e).__name__}: {e}"[:300])
                    continue
                rows.append(
                    {
                        "op": f"fused_moe[{quant}]",
                        "impl": name,
                        "T": T,
                        "us": ms * 1e3,
                        "TFLOPs": flops / (ms * 1e-3) / 1e12,
                    }
                )
                print(
                    f"fused_moe[{quant}] {name:22} T={T:5d} {ms * 1e3:10.1f} us "
                    f"{rows[-1]['TFLOPs']:7.1f} TFLOP/s",
                    flush=True,
                )
            if quant != "none":
                del da, db
                torch.cuda.empty_cache()
            save()


def print_table(rows, bw):
    print(f"\nsummary (copy {bw:.2f} TB/s); us (TB/s or TFLOP/s)")
    keys = sorted({(r["op"], r["impl"]) for r in rows})
    Ts = sorted({r["T"] for r in rows})
    print(f"{'op':22} {'impl':22} " + " ".join(f"{'T=' + str(t):>16}" for t in Ts))
    for op, impl in keys:
        cells = []
        for t in Ts:
            r = next((r for r in rows if r["op"] == op and r["impl"] == impl and r["T"] == t), None)
            if r is None:
                cells.append(f"{'-':>16}")
            else:
                rate = r.get("TBps", r.get("TFLOPs", 0.0))
                cells.append(f"{r['us']:9.1f} ({rate:4.1f})")
        print(f"{op:22} {impl:22} " + " ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
