"""`parity tune --config PATH/config.json [--tp N] [--ep N] [--quant Q] [--batch-sizes 1,16,...]
[--out DIR] [--device cuda|cpu]`: tile configs for the Triton fused MoE, checked before timed.

The command line only: the tuner (model shape from config.json, candidate grid, the check of
every candidate against `parity.reference.fused_moe` before it is timed, the vLLM-style JSON
file) is `parity/optimized/triton/tune.py`, imported once the device and TRITON_INTERPRET are
chosen.

`PARITY_TUNE_INJECT_FAULT=skip_last_k` adds a candidate whose kernel skips the last K block (the
tuner's self-test: it must be rejected). The file is rewritten after each batch size, so a run
cut short keeps what it verified. `--check-only` checks (and so compiles) every candidate and
times nothing: a warm-up of Triton's cache that may share the GPU with other work. Exit 0 a
file was written (check-only: every batch size had a passing candidate), 1 no candidate passed
for some batch size, 2 usage (bad config.json or options).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("tune", help="tune the Triton fused MoE tile configs for a model")
    p.add_argument("--config", required=True, metavar="PATH", help="a Hugging Face config.json")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size (shards N)")
    p.add_argument("--ep", type=int, default=1, help="expert parallel size (splits E)")
    p.add_argument(
        "--quant",
        choices=["none", "fp8_block", "mxfp4"],
        default=None,
        help="default: the checkpoint's format",
    )
    p.add_argument(
        "--batch-sizes",
        default=None,
        help="comma-separated M values (default vLLM's 1..4096 on cuda, 1,4 on cpu)",
    )
    p.add_argument("--out", default=".", metavar="DIR", help="folder for the JSON file")
    p.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default=None,
        help="default: cuda when a GPU is visible, else cpu (Triton interpreter)",
    )
    p.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    p.add_argument(
        "--grid",
        choices=["full", "small", "large"],
        default=None,
        help="candidate grid (default: full on cuda, a tiny one on cpu; large: big-M tiles "
        "only, for batch sizes of thousands of tokens)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the entries of an existing file in --out for the batch sizes not tuned now",
    )
    p.add_argument(
        "--check-only",
        action="store_true",
        help="check (and so compile) every candidate against the reference; time nothing, "
        "write nothing (a warm-up that can share the GPU with other work)",
    )
    return p


def run(args) -> int:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("parity tune: --device cuda but no CUDA GPU is visible", file=sys.stderr)
        return 2
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("parity tune: --device cpu needs TRITON_INTERPRET=1", file=sys.stderr)
            return 2
    from parity import catalog

    tuner = catalog.tuner()  # parity/optimized/triton/tune.py: this file only dispatches

    try:
        cfg = json.loads(Path(args.config).read_text())
        shape = tuner.model_shape(cfg, tp=args.tp, ep=args.ep, quant=args.quant)
        if args.batch_sizes:
            sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
            if not sizes or min(sizes) < 1:
                raise tuner.UsageError(
                    f"--batch-sizes: positive ints expected, got {args.batch_sizes}"
                )
        else:
            sizes = list(tuner.CUDA_BATCH_SIZES if device == "cuda" else tuner.CPU_BATCH_SIZES)
    except (OSError, json.JSONDecodeError, tuner.UsageError, ValueError) as exc:
        print(f"parity tune: {exc}", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    grid = args.grid or ("full" if device == "cuda" else "tiny")
    print(
        f"parity tune: {shape['arch']} E={shape['E']} k={shape['k']} H={shape['H']} "
        f"N={shape['N']} quant={shape['quant']} {args.dtype} on {device}, "
        f"batch sizes {sizes}, grid {grid}"
    )

    def save_so_far(best):  # a run cut short by a time limit keeps the batch sizes it finished
        tuner.save(best, shape, args.out, device, merge=args.merge)

    try:
        best, records = tuner.tune(
            shape,
            sizes,
            device=device,
            dtype=dtype,
            grid=grid,
            seed=args.seed,
            check_only=args.check_only,
            on_batch=None if args.check_only else save_so_far,
        )
    except tuner.UsageError as exc:
        print(f"parity tune: {exc}", file=sys.stderr)
        return 2
    if args.check_only:
        bad = [m for m in sizes if not any(r["M"] == m and r["status"] == "ok" for r in records)]
        if bad:
            print(f"parity tune: no candidate passed for M in {bad}", file=sys.stderr)
            return 1
        print("parity tune: --check-only: nothing timed, nothing written")
        return 0
    missing = [m for m in sizes if m not in best]
    if missing:
        done = f"; {args.out} holds the verified batch sizes {sorted(best)}" if best else ""
        print(f"parity tune: no candidate passed for M in {missing}{done}", file=sys.stderr)
        return 1
    path = tuner.save(best, shape, args.out, device, merge=args.merge)
    print(f"parity tune: wrote {path}")
    return 0
