"""The tile-config tuner of the Triton fused MoE (`parity tune` is its command line, in
`parity/tools/tune_cmd.py`): a model's MoE shape from its config.json, the candidate grid, each
candidate checked against `parity.reference.fused_moe` before it is timed, and the vLLM-style
JSON file of the fastest verified candidate per batch size.

Reads a Hugging Face config.json (DeepseekV4ForCausalLM, DeepseekV3ForCausalLM/V2/V32,
GptOssForCausalLM; others with vLLM's Mixtral-style keys), derives the layer's MoE shape as
vLLM's benchmarks/kernels/benchmark_moe.py does: E = n_routed_experts (DeepSeek) or
num_local_experts, top-k = num_experts_per_tok (or experts_per_token), intermediate size I =
moe_intermediate_size (DeepSeek) or intermediate_size, hidden size H. Tensor parallelism shards
the intermediate size (N = I / tp), expert parallelism splits the experts (E / ep); both must
divide. The quant mode defaults to the checkpoint's: DeepSeek-V4 experts with `expert_dtype:
fp4` -> mxfp4, `quant_method: fp8` with `weight_block_size` -> fp8_block, `mxfp4` -> mxfp4.
DeepSeek-V4 runs the SwiGLU with its `swiglu_limit` (10), GPT-OSS with limit 7, alpha 1.702,
beta 1 and interleaved halves.

For each batch size M, every candidate config is first checked against
`parity.reference.fused_moe`: on small-T slices of the inputs (1 and 3 tokens) and at T = M,
under a tolerance derived from the formats (the roundings the contract allows, in ulps of the
activation dtype, plus FP8 code flips for fp8_block); a candidate that fails or raises is
rejected and can never be saved. The passing candidates are timed (CUDA graph replay on a GPU,
one call in the CPU interpreter) and the fastest is kept. The output is a vLLM
style JSON file `E=..,N=..,device_name=..[,dtype=..][,block_shape=[..]].json` in --out.

`PARITY_TUNE_INJECT_FAULT=skip_last_k` adds a candidate whose kernel skips the last K block (the
tuner's self-test: it must be rejected). Imports triton and the kernels only when tuning.
"""

from __future__ import annotations

import json
import math
import os
import time
from itertools import product
from pathlib import Path

FAULT_ENV = "PARITY_TUNE_INJECT_FAULT"
CUDA_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096)
CPU_BATCH_SIZES = (1, 4)
CHECK_SLICES = (1, 3)


class UsageError(ValueError):
    pass


# --- the model's MoE shape -----------------------------------------------------------------------


def _get(cfg: dict, *keys, default=None):
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return default


def model_shape(cfg: dict, *, tp: int = 1, ep: int = 1, quant: str | None = None) -> dict:
    """The fused_moe problem of one MoE layer of `cfg` (a config.json dict) on one rank."""
    if tp < 1 or ep < 1:
        raise UsageError(f"--tp and --ep must be >= 1, got tp={tp} ep={ep}")
    arch = (cfg.get("architectures") or [""])[0]
    text = cfg.get("text_config") or cfg
    swiglu: dict = {}
    if arch.startswith("Deepseek"):
        e = _get(text, "n_routed_experts")
        inter = _get(text, "moe_intermediate_size")
        if arch == "DeepseekV4ForCausalLM":
            swiglu = {"swiglu_limit": float(_get(text, "swiglu_limit", default=10.0))}
    elif arch == "GptOssForCausalLM":
        e = _get(text, "num_local_experts")
        inter = _get(text, "intermediate_size")
        swiglu = {
            "swiglu_limit": float(_get(text, "swiglu_limit", default=7.0)),
            "swiglu_alpha": 1.702,
            "swiglu_beta": 1.0,
            "layout": "interleaved",
        }
    else:  # vLLM's fallback (Mixtral, Qwen-MoE style keys)
        e = _get(text, "num_local_experts", "num_experts", "n_routed_experts")
        inter = _get(text, "moe_intermediate_size", "intermediate_size")
    k = _get(text, "num_experts_per_tok", "experts_per_token", "moe_topk")
    h = _get(text, "hidden_size")
    missing = [
        name
        for name, v in (
            ("experts", e),
            ("top-k", k),
            ("intermediate size", inter),
            ("hidden_size", h),
        )
        if v is None
    ]
    if missing:
        raise UsageError(f"config.json ({arch or 'no architecture'}): no {', '.join(missing)}")
    e, k, inter, h = int(e), int(k), int(inter), int(h)
    if e % ep:
        raise UsageError(f"experts {e} not divisible by --ep {ep}")
    if inter % tp:
        raise UsageError(f"intermediate size {inter} not divisible by --tp {tp}")

    qcfg = cfg.get("quantization_config") or {}
    block = tuple(qcfg.get("weight_block_size") or (128, 128))
    if quant is None:
        method = str(qcfg.get("quant_method", "")).lower()
        if str(text.get("expert_dtype", "")).lower() == "fp4" or method == "mxfp4":
            quant = "mxfp4"  # DeepSeek-V4's experts are MXFP4 under an fp8 quantization_config
        elif method == "fp8" and qcfg.get("weight_block_size"):
            quant = "fp8_block"
        else:
            quant = "none"
    n = inter // tp
    if quant == "mxfp4" and (h % 32 or n % 32):
        raise UsageError(f"mxfp4 needs H and N divisible by 32, got H={h} N={n}")
    if quant == "fp8_block" and (h % block[1] or n % block[1]):
        raise UsageError(f"fp8_block needs H and N divisible by {block[1]}, got H={h} N={n}")
    return {
        "arch": arch,
        "E": e // ep,
        "k": min(k, e // ep),
        "H": h,
        "N": n,
        "quant": quant,
        "block_shape": [int(block[0]), int(block[1])],
        "swiglu": swiglu,
    }


# --- candidates -----------------------------------------------------------------------------------


def candidate_grid(grid: str, quant: str, block_shape, x_dtype) -> list[dict]:
    """Candidate configs, as the kernel will run them (fit_config applied, duplicates dropped).
    The full grid is vLLM's CUDA search space; "small" a quick subset; "tiny" two configs."""
    from parity.optimized.triton._moe_configs import fit_config

    if grid == "tiny":
        space = [(16, 32, 32, 1, 4, 1), (16, 64, 64, 1, 4, 1)]
    elif grid == "small":
        space = product([16, 64], [64, 128], [64, 128], [1, 16], [4], [3, 4])
    elif grid == "large":  # many tokens per expert: large M tiles only. 128x256 (8 warps, 3-4
        # stages) is what vLLM's H100 files pick at large M; 64x128, the default, was L2-bound
        # at T 8192 on the H100 (Nsight Compute: L2 90%, occupancy 18.75%; 2026-12-05)
        # (128x256 with K 128 needs 384 KiB of shared memory at 4 stages: not on Hopper)
        space = [
            *product([128], [256], [64], [8], [8], [3, 4]),
            *product([128], [128], [64], [8], [4, 8], [3, 4]),
            *product([128, 64], [128], [128], [8], [4, 8], [3]),
        ]
    else:
        space = product(
            [16, 32, 64, 128, 256],
            [32, 64, 128, 256],
            [64, 128, 256],
            [1, 16, 32, 64],
            [4, 8],
            [2, 3, 4, 5],
        )
    keys = (
        "BLOCK_SIZE_M",
        "BLOCK_SIZE_N",
        "BLOCK_SIZE_K",
        "GROUP_SIZE_M",
        "num_warps",
        "num_stages",
    )
    # mxfp4: each tile config on both paths, in-GEMM dequantization (MX_DEQUANT_MIN_ROWS 0)
    # and dequantize-first (1: from one row per expert on), so the timing picks the path per M
    paths = [{"MX_DEQUANT_MIN_ROWS": 0}, {"MX_DEQUANT_MIN_ROWS": 1}] if quant == "mxfp4" else [{}]
    seen, out = set(), []
    for values in space:
        for extra in paths:
            cfg = fit_config(dict(zip(keys, values), **extra), quant, x_dtype, block_shape)
            key = tuple(sorted(cfg.items()))
            if key not in seen:
                seen.add(key)
                out.append(cfg)
    return out


# --- inputs, reference, tolerance ----------------------------------------------------------------


def make_inputs(shape: dict, t: int, dtype, device: str, seed: int):
    """Random tokens routed by softmax top-k, weights in the mode's format (quantized from
    Gaussian weights of unit output scale)."""
    import torch

    from parity.reference.quant import fp8_block_quant, mxfp4_quant

    g = torch.Generator().manual_seed(seed)
    e, k, h, n, quant = shape["E"], shape["k"], shape["H"], shape["N"], shape["quant"]
    x = torch.randn(t, h, generator=g).to(dtype)
    w13 = torch.randn(e, 2 * n, h, generator=g) / math.sqrt(h)
    w2 = torch.randn(e, h, n, generator=g) / math.sqrt(n)
    logits = torch.randn(t, e, generator=g)
    weights, ids = torch.softmax(logits, -1).topk(k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    s13 = s2 = None
    if quant == "fp8_block":
        w13, s13 = fp8_block_quant(w13, block_shape=tuple(shape["block_shape"]))
        w2, s2 = fp8_block_quant(w2, block_shape=tuple(shape["block_shape"]))
    elif quant == "mxfp4":
        w13, s13 = mxfp4_quant(w13)
        w2, s2 = mxfp4_quant(w2)
    else:
        w13, w2 = w13.to(dtype), w2.to(dtype)

    def dev(v):
        return v.to(device) if v is not None else None

    args = (dev(x), dev(w13), dev(w2), dev(weights.float()), dev(ids.to(torch.int32)))
    kwargs = dict(
        quant=quant,
        w13_scale=dev(s13),
        w2_scale=dev(s2),
        block_shape=tuple(shape["block_shape"]),
        **shape["swiglu"],
    )
    return args, kwargs


def tolerance(quant: str, dtype) -> float:
    """Relative-to-scale bound on |kernel - reference|: the contract lets the kernel round the
    GEMM1 output, the activation and each expert's output to x.dtype (half an ulp each, grown
    by the next GEMM's norm: 16 ulps cover it); fp8_block adds activation codes flipping by one
    E4M3 step where that rounding moves a value across a code midpoint (2**-6 of the scale)."""
    import torch

    base = 16 * torch.finfo(dtype).eps
    return max(base, 2.0**-6) if quant == "fp8_block" else base


def compare(out, ref, quant: str, dtype) -> tuple[bool, float]:
    """(passes, error / scale) of a kernel output against the reference: NaN where and only
    where the reference has NaN, and the finite error within `tolerance`."""
    import torch

    out, ref = out.float().cpu(), ref.float().cpu()
    if out.shape != ref.shape or not torch.equal(out.isnan(), ref.isnan()):
        return False, math.inf
    finite = ~ref.isnan()
    if not finite.any():
        return True, 0.0
    scale = max(ref[finite].abs().max().item(), 1e-6)
    err = (out[finite] - ref[finite]).abs().max().item() / scale
    return err <= tolerance(quant, dtype), err


# --- timing ---------------------------------------------------------------------------------------


def _time_cuda(fn, reps: int = 10, iters: int = 20, budget_s: float = 0.25) -> float:
    """Median microseconds per call of a CUDA graph holding `reps` calls (vLLM's method: no
    launch overhead); plain CUDA events if the graph cannot be captured. Slow candidates (a
    bad tile at M = 8192 takes 100 ms a call) get fewer reps and iterations, at least 3 timed
    replays, so one candidate costs about `budget_s` of device time, not seconds."""
    import torch

    def event_ms(call) -> float:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    fn()
    torch.cuda.synchronize()
    one_s = max(event_ms(fn) * 1e-3, 1e-6)
    reps = max(1, min(reps, int(budget_s / (4 * one_s))))
    iters = max(3, min(iters, int(budget_s / (reps * one_s))))
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                fn()
        torch.cuda.synchronize()

        def step():
            graph.replay()

        per = reps
    except Exception:
        torch.cuda.synchronize()

        def step():
            fn()

        per = 1
    for _ in range(3):
        step()
    times = sorted(event_ms(step) * 1e3 / per for _ in range(iters))
    return times[len(times) // 2]


def _time_cpu(fn, iters: int = 1) -> float:
    best = math.inf
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e6


# --- tuning ---------------------------------------------------------------------------------------


def tune(
    shape: dict,
    batch_sizes,
    *,
    device: str,
    dtype,
    grid: str,
    seed: int = 0,
    log=print,
    check_only: bool = False,
    on_batch=None,
) -> tuple[dict[int, dict], list[dict]]:
    """(best config per batch size, one record per (M, candidate)). A record: M, config,
    status "ok" / "rejected" / "error", err (error / scale at the worst checked T), us.
    check_only: no timing and no best (every passing candidate has us None). on_batch(best)
    is called after each batch size (the caller saves what is done so far)."""
    import torch

    from parity.optimized.triton import _kernels_fused_moe as kern
    from parity.optimized.triton import fused_moe as mod
    from parity.optimized.triton._moe_configs import override_config
    from parity.reference import fused_moe as reference

    quant = shape["quant"]
    cands = candidate_grid(grid, quant, shape["block_shape"], dtype)
    fault = os.environ.get(FAULT_ENV, "")
    if fault:
        if fault != "skip_last_k":
            raise UsageError(f"{FAULT_ENV}: expected 'skip_last_k', got {fault!r}")
        cands = [dict(cands[0], SKIP_LAST_K=1), *cands]
    interpret = device == "cpu"
    best: dict[int, dict] = {}
    records: list[dict] = []
    for m in batch_sizes:
        args, kwargs = make_inputs(shape, m, dtype, device, seed)
        checks = []  # (args of a T-slice, reference output)
        for t in sorted({min(s, m) for s in CHECK_SLICES} | {m}):
            sl = tuple(a[:t] if i in (0, 3, 4) else a for i, a in enumerate(args))
            checks.append((sl, reference(*sl, **kwargs)))
        best_us = math.inf
        for cfg in _effective(cands, shape, m, dtype):
            rec = {"M": m, "config": cfg, "status": "ok", "err": 0.0, "us": None}
            records.append(rec)
            try:
                with override_config(cfg):
                    for sl, ref in checks:
                        ok, err = compare(mod.fused_moe(*sl, **kwargs), ref, quant, dtype)
                        rec["err"] = max(rec["err"], err)
                        if not ok:
                            rec["status"] = "rejected"
                            break
                if rec["status"] != "ok":
                    log(f"M={m}: rejected {_short(cfg)} (error {rec['err']:.3g} of scale)")
                    continue
                if check_only:
                    continue
                run = _bound_call(kern, mod, args, kwargs, cfg, interpret)
                rec["us"] = _time_cuda(run) if device == "cuda" else _time_cpu(run)
            except Exception as exc:
                rec["status"] = "error"
                rec["error"] = f"{type(exc).__name__}: {exc}"
                log(f"M={m}: error {_short(cfg)}: {rec['error'][:200]}")
                if device == "cuda":
                    torch.cuda.synchronize()
                continue
            if rec["us"] < best_us:
                best_us, best[m] = rec["us"], cfg
        if check_only:
            passed = sum(r["M"] == m and r["status"] == "ok" for r in records)
            log(f"M={m}: {passed} of {len(cands)} candidates passed the reference check")
        elif m in best:
            log(f"M={m}: best {_short(best[m])} {best_us:.1f} us")
            if on_batch is not None:
                on_batch(best)
        else:
            log(f"M={m}: no candidate passed the reference check")
    return best, records


def _effective(cands: list[dict], shape: dict, m: int, dtype) -> list[dict]:
    """The candidates as they run at M tokens: an mxfp4 dequantize-first threshold that M does
    not reach is the in-GEMM path (0), so it is neither timed twice nor saved as a choice that
    was never measured (the file's entry also serves the batch sizes nearest to M)."""
    from parity.optimized.triton._kernels_fused_moe import use_dequant_first

    out, seen = [], set()
    for cfg in cands:
        if "MX_DEQUANT_MIN_ROWS" in cfg and not use_dequant_first(
            cfg, shape["quant"], dtype, m, shape["k"], shape["E"]
        ):
            cfg = dict(cfg, MX_DEQUANT_MIN_ROWS=0)
        key = tuple(sorted(cfg.items()))
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def _bound_call(kern, mod, args, kwargs, cfg, interpret):
    """The kernel pipeline for fixed inputs, validation and moe_align done once (what vLLM's
    tuner times: the Triton kernels)."""
    x, w13, w2, weights, ids = args
    e = w13.shape[0]
    from parity.optimized.triton.moe_align import align_for_gemm

    align = align_for_gemm(ids, e, cfg["BLOCK_SIZE_M"])
    kw = dict(
        quant=kwargs["quant"],
        w13_scale=kwargs["w13_scale"],
        w2_scale=kwargs["w2_scale"],
        limit=kwargs.get("swiglu_limit"),
        alpha=kwargs.get("swiglu_alpha", 1.0),
        beta=kwargs.get("swiglu_beta", 0.0),
        interleaved=kwargs.get("layout") == "interleaved",
        clamp_post=False,
        on_input=False,
        block_shape=kwargs["block_shape"],
        cfg=cfg,
        interpret=interpret,
    )

    def call():
        return kern.run_fused_moe(x, w13, w2, weights, ids, align, **kw)

    return call


def _short(cfg: dict) -> str:
    keys = (
        "BLOCK_SIZE_M",
        "BLOCK_SIZE_N",
        "BLOCK_SIZE_K",
        "GROUP_SIZE_M",
        "num_warps",
        "num_stages",
    )
    s = "/".join(str(cfg[k]) for k in keys)
    if "MX_DEQUANT_MIN_ROWS" in cfg:  # as run at the batch size (see _effective)
        s += " dequant-first" if cfg["MX_DEQUANT_MIN_ROWS"] else " in-GEMM"
    return s + (" +SKIP_LAST_K" if cfg.get("SKIP_LAST_K") else "")


def save(
    best: dict[int, dict], shape: dict, out_dir: str, device: str, *, merge: bool = False
) -> Path:
    from parity.optimized.triton._moe_configs import (
        CONFIG_KEYS,
        EXTRA_CONFIG_KEYS,
        config_file_name,
        device_name,
    )

    try:
        import triton

        version = triton.__version__
    except ImportError:  # pragma: no cover (tuning needs triton)
        version = "unknown"
    name = config_file_name(
        shape["E"], shape["N"], shape["quant"], shape["block_shape"], device_name(device)
    )
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    table = {"triton_version": version}
    if merge and path.exists():  # earlier entries first; the batch sizes tuned now replace theirs
        old = json.loads(path.read_text())
        old.pop("triton_version", None)
        best = {**{int(m): c for m, c in old.items()}, **best}
    for m in sorted(best):
        # vLLM's keys, then ours where the candidate set them (mxfp4's path choice)
        keys = (*CONFIG_KEYS, *(k for k in EXTRA_CONFIG_KEYS if k in best[m]))
        table[str(m)] = {k: int(best[m][k]) for k in keys}
    path.write_text(json.dumps(table, indent=4) + "\n")
    return path
