"""Tile configurations of the Triton fused MoE: tuned JSON files, defaults, constraints.

Files follow vLLM's naming (`get_config_file_name` in vllm/model_executor/layers/fused_moe):
`E={E},N={N},device_name={device}[,dtype={dtype}][,block_shape=[bn,bk]].json`, where N is the
intermediate size per expert after sharding (w2.shape[2]), device is
`torch.cuda.get_device_name()` with spaces replaced by `_` (the H200 family as `NVIDIA_H200`),
dtype is `fp8_w8a8` (fp8_block), `mxfp4_w4a16` (mxfp4, SGLang's name) or absent (bf16/fp16).
Each file maps a batch size M (tokens) to `{BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K,
GROUP_SIZE_M, num_warps, num_stages}`, optionally with our `EXTRA_CONFIG_KEYS`; a
`triton_version` key is ignored. The kernel takes the entry of the nearest M, or the default
where M is less than half the file's smallest M (the H100 files were tuned at M 8192 alone: their
128x256 tile is no choice for a few tokens per expert). Lookup order:
`$PARITY_MOE_CONFIG_DIR`, then `configs/` next to this file, then a default. Pure Python: no
triton import.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_KEYS = (
    "BLOCK_SIZE_M",
    "BLOCK_SIZE_N",
    "BLOCK_SIZE_K",
    "GROUP_SIZE_M",
    "num_warps",
    "num_stages",
)
# Keys of ours a config may carry besides vLLM's CONFIG_KEYS (our loader keeps every key; vLLM
# hands a config's keys to its kernel, so a file meant for vLLM should not carry them):
# - MX_DEQUANT_MIN_ROWS (mxfp4, bf16 activations): dequantize every expert's weights to bf16
#   first (one launch per weight) and run the bf16 GEMMs when the average rows per expert
#   T * k / E is at least this; 0 never. Missing: DEFAULT_MX_DEQUANT_MIN_ROWS.
# - MX_SCALE_AFTER_DOT (mxfp4, in-GEMM path): 1 scale after the dot, 0 dequantize the tile;
#   missing: BLOCK_SIZE_M <= 32 (float16 always scales after the dot).
EXTRA_CONFIG_KEYS = ("MX_DEQUANT_MIN_ROWS", "MX_SCALE_AFTER_DOT")
# Dequantizing first costs about one pass over the bf16 weights (2 bytes written and read per
# element, against half a byte read in the GEMM); dequantizing in the GEMM costs a per-element
# decode per M block of each expert. At 64 rows per expert (one or two 64-row blocks) the two
# are about even; above, the in-GEMM decode repeats per block. The tuner may set it per M.
DEFAULT_MX_DEQUANT_MIN_ROWS = 64
_state = threading.local()


def dtype_str(quant: str) -> str | None:
    return {"none": None, "fp8_block": "fp8_w8a8", "mxfp4": "mxfp4_w4a16"}[quant]


def device_name(device: str | torch.device = "cuda") -> str:
    """vLLM's device name: `torch.cuda.get_device_name()` with `_` for spaces; "cpu" on the CPU
    (the Triton interpreter)."""
    if torch.device(device).type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).replace(" ", "_")
    if "H200" in name.split("_"):  # every H200 variant shares one file, as in vLLM
        name = "NVIDIA_H200"
    return name


def config_file_name(
    e: int, n: int, quant: str, block_shape=None, device: str | None = None
) -> str:
    dev = device if device is not None else device_name()
    dts = dtype_str(quant)
    name = f"E={e},N={n},device_name={dev}"
    if dts:
        name += f",dtype={dts}"
    if quant == "fp8_block" and block_shape and all(block_shape):
        name += f",block_shape=[{int(block_shape[0])},{int(block_shape[1])}]"
    return name + ".json"


@functools.lru_cache(maxsize=256)
def _load(path: str, mtime: float) -> dict[int, dict] | None:
    with open(path) as f:
        data = json.load(f)
    data.pop("triton_version", None)
    return {int(m): dict(c) for m, c in data.items()}


def load_configs(e: int, n: int, quant: str, block_shape, device: str) -> dict[int, dict] | None:
    fname = config_file_name(e, n, quant, block_shape, device)
    dirs = [os.environ.get("PARITY_MOE_CONFIG_DIR"), str(CONFIG_DIR)]
    for d in dirs:
        if not d:
            continue
        path = os.path.join(d, fname)
        if os.path.exists(path):
            return _load(path, os.path.getmtime(path))
    return None


@contextlib.contextmanager
def override_config(cfg: dict | None) -> Iterator[None]:
    """Use `cfg` for every fused_moe call in this thread (the tuner's hook); None: normal."""
    old = getattr(_state, "cfg", None)
    _state.cfg = dict(cfg) if cfg is not None else None
    try:
        yield
    finally:
        _state.cfg = old


def override_active() -> bool:
    """Whether `override_config` holds a config in this thread (the tuner's candidate)."""
    return getattr(_state, "cfg", None) is not None


def default_config(m: int, e: int, n: int, quant: str, block_shape, interpret: bool) -> dict:
    if interpret:
        # the interpreter pays per program and per op, not per FLOP: few, mid-sized tiles;
        # mxfp4 dequantizes first from 2 rows per expert, so that the property suite's small
        # cases run both mxfp4 paths
        cfg = {
            "BLOCK_SIZE_M": 16,
            "BLOCK_SIZE_N": 128,
            "BLOCK_SIZE_K": 128,
            "GROUP_SIZE_M": 1,
            "num_warps": 4,
            "num_stages": 1,
        }
        if quant == "mxfp4":
            cfg["MX_DEQUANT_MIN_ROWS"] = 2
        return cfg
    if quant == "fp8_block":
        # vLLM's block-FP8 default (K tile = one scale group); narrower N tiles for few tokens,
        # where only k experts' blocks exist and 128-wide tiles left most H100 SMs idle
        return {
            "BLOCK_SIZE_M": 16 if m <= 64 else 64,
            "BLOCK_SIZE_N": 64 if m <= 64 else 128,
            "BLOCK_SIZE_K": 128,
            "GROUP_SIZE_M": 1 if m <= 16 else 32,
            "num_warps": 4,
            "num_stages": 3,
        }
    if quant == "mxfp4":
        if m <= e:
            return {
                "BLOCK_SIZE_M": 16,
                "BLOCK_SIZE_N": 64,
                "BLOCK_SIZE_K": 128,
                "GROUP_SIZE_M": 1,
                "num_warps": 4,
                "num_stages": 3,
            }
        return {
            "BLOCK_SIZE_M": 64,
            "BLOCK_SIZE_N": 128,
            "BLOCK_SIZE_K": 64,
            "GROUP_SIZE_M": 8,
            "num_warps": 4,
            "num_stages": 3,
        }
    if m <= e:
        return {
            "BLOCK_SIZE_M": 16,
            "BLOCK_SIZE_N": 64,
            "BLOCK_SIZE_K": 128,
            "GROUP_SIZE_M": 1,
            "num_warps": 4,
            "num_stages": 4,
        }
    return {
        "BLOCK_SIZE_M": 64,
        "BLOCK_SIZE_N": 128,
        "BLOCK_SIZE_K": 64,
        "GROUP_SIZE_M": 8,
        "num_warps": 4,
        "num_stages": 3,
    }


def _pow2_floor(v: int) -> int:
    return 1 << (max(1, int(v)).bit_length() - 1)


def fit_config(cfg: dict, quant: str, x_dtype: torch.dtype, block_shape) -> dict:
    """Bring a config within the kernel's constraints (a tuned file may come from elsewhere):
    tiles are powers of two >= 16; fp8_block: BLOCK_SIZE_K divides block_shape[1] (one scale
    group per K tile); mxfp4: BLOCK_SIZE_K >= 32 (whole MX blocks), MX_DEQUANT_MIN_ROWS set
    (the default where missing, >= 0)."""
    out = dict(cfg)
    for key in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K"):
        out[key] = max(16, _pow2_floor(int(out[key])))
    out["GROUP_SIZE_M"] = max(1, int(out.get("GROUP_SIZE_M", 1)))
    out.setdefault("num_warps", 4)
    out.setdefault("num_stages", 3)
    if quant == "fp8_block":
        gk = int(block_shape[1])
        largest = gk & -gk  # the largest power of two dividing gk
        out["BLOCK_SIZE_K"] = min(out["BLOCK_SIZE_K"], largest)
    elif quant == "mxfp4":
        out["BLOCK_SIZE_K"] = max(32, out["BLOCK_SIZE_K"])
        out["MX_DEQUANT_MIN_ROWS"] = max(
            0, int(out.get("MX_DEQUANT_MIN_ROWS", DEFAULT_MX_DEQUANT_MIN_ROWS))
        )
    return out


def get_config(
    m: int,
    e: int,
    n: int,
    quant: str,
    x_dtype: torch.dtype,
    block_shape,
    device: torch.device,
    interpret: bool,
) -> dict:
    """The tile config for `m` tokens: the override, else the file's entry for the nearest M,
    else the default; always passed through `fit_config`."""
    cfg = getattr(_state, "cfg", None)
    if cfg is None:
        table = load_configs(e, n, quant, block_shape, device_name(device))
        if table and m * 2 >= min(table):
            cfg = table[min(table, key=lambda key: abs(key - m))]
        else:  # no file, or M far below every tuned M (a file tuned at large M only)
            cfg = default_config(m, e, n, quant, block_shape, interpret)
    return fit_config(cfg, quant, x_dtype, block_shape)


# --- the decode path (few tokens): grouped pairs, split-K, no moe_align -------------------------
#
# Keys (an override may carry them; missing ones take the defaults below):
# - DECODE_MAX_PAIRS: the decode path runs when T * k <= this (0: never). Under
#   `override_config` a config without it means 0, so the tuner's configs time the sorted path.
# - DECODE_BLOCK_M: rows of one expert per tile: 1 is a CUDA-core GEMV (no tensor cores, no
#   padding), >= 16 a `tl.dot` tile with the rows padded; an expert with more rows loops.
# - DECODE_BLOCK_N1 / DECODE_BLOCK_N2 / DECODE_BLOCK_K: tiles of GEMM1 (2N columns), GEMM2 (H
#   columns) and of K; DECODE_SPLIT_K1 / DECODE_SPLIT_K2: K splits (0: derived from the CTA
#   target), each writing float32 partials that a reduce kernel sums in a fixed order.
# - DECODE_NUM_WARPS / DECODE_NUM_STAGES.
# - DECODE_MX_WORDS (mxfp4, T 1): 1 runs the GEMV on the packed codes viewed as int32 words
#   (8 codes decoded per 4-byte load, block sums in-thread; 40% fewer SASS instructions a weight
#   byte than the byte GEMV, which was issue-bound on the H100), where the weights allow the view;
#   0, the default: timed on the H100 it was slower (208.7 against 169.5 us at T 1 under graph
#   replay, 2026-12-05; PARITY_MOE_MX_WORDS=1 makes it the default, for the property suite).
# - DECODE_MX_ACT_2D (mxfp4, T 1, whole-MX-block loads): 1, the default on a GPU, loads the
#   GEMV's activations as [1, K] tiles (sm_90 SASS with triton 3.6: 15.7 -> 14.0 instructions a
#   weight byte at 32 x 256, 56 -> 61 registers; H100 2026-12-06, graph replay, T 1 135.2 ->
#   122.7 us); PARITY_MOE_MX_ACT_2D=0 keeps the 1-D loads. The interpreter's defaults leave it
#   off (its own test runs it there).
DECODE_MAX_PAIRS = 128  # T * k: about one dot tile of rows per expert at most (T <= 16 at k 8)
# an override's DECODE_MAX_PAIRS is capped here: the grouping kernel compares [P, P] pairs and a
# Triton tensor holds at most 2**20 elements
DECODE_PAIRS_CAP = 1024
DECODE_ENV = "PARITY_MOE_DECODE"  # "0": never take the decode path (benchmark old vs new)
DECODE_GEMV_ENV = "PARITY_MOE_DECODE_GEMV"  # "0": no GEMV at T = 1 (a 16-row dot tile instead)
MX_WORDS_ENV = "PARITY_MOE_MX_WORDS"  # "1": the mxfp4 GEMV on int32 words (DECODE_MX_WORDS)
# "0": the mxfp4 GEMV's activations not loaded as [1, K] tiles (DECODE_MX_ACT_2D)
MX_ACT_2D_ENV = "PARITY_MOE_MX_ACT_2D"
# "1": GEMM operands upcast to float32 (ieee dot) on a GPU too, as in the interpreter: tells a
# tensor-core rounding from a kernel bug (slow; a diagnosis switch, off by default)
UPCAST_ENV = "PARITY_MOE_UPCAST"
# CTAs per GEMM the split-K derivation aims at: about 4 per SM of an H100/H200 (132 SMs), so
# that every SM keeps several weight streams in flight and the last wave is short
DECODE_TARGET_CTAS = 4 * 132
# a split reads at least this many K elements (shorter splits pay the partial traffic for little)
DECODE_MIN_K_PER_SPLIT = 512
DECODE_MAX_SPLIT = 8


def decode_config(
    t: int, k: int, e: int, n: int, h: int, quant: str, block_shape, interpret: bool
) -> dict | None:
    """The decode path's config for T tokens with k slots, or None where the sorted path runs:
    the defaults, with the override's DECODE_* keys on top while an override is active (the
    tuned files hold sorted-path tiles only); `PARITY_MOE_DECODE=0` turns the path off."""
    if os.environ.get(DECODE_ENV, "1") == "0":
        return None
    over = getattr(_state, "cfg", None)
    if over is not None:
        base = {key: v for key, v in over.items() if key.startswith("DECODE_")}
        base.setdefault("DECODE_MAX_PAIRS", 0)  # a tile config alone pins the sorted path
    else:
        base = {}
    if min(int(base.get("DECODE_MAX_PAIRS", DECODE_MAX_PAIRS)), DECODE_PAIRS_CAP) < t * k:
        return None
    cfg = dict(default_decode_config(t, k, e, n, h, quant, block_shape, interpret), **base)
    return fit_decode_config(cfg, t, k, e, n, h, quant, block_shape)


def default_decode_config(t, k, e, n, h, quant, block_shape, interpret) -> dict:
    if interpret:  # the interpreter pays per program and per op: few, mid-sized tiles
        return {
            "DECODE_BLOCK_M": 1 if t == 1 else 16,
            "DECODE_BLOCK_N1": 64,
            "DECODE_BLOCK_N2": 64,
            "DECODE_BLOCK_K": 128,
            "DECODE_SPLIT_K1": 1,
            "DECODE_SPLIT_K2": 1,
            "DECODE_NUM_WARPS": 4,
            "DECODE_NUM_STAGES": 1,
        }
    # T = 1: one row per expert (repeats aside): a GEMV on CUDA cores, 1 FMA per weight element
    # read, far below the FP32 rate at copy bandwidth. More tokens: tl.dot on 16-row tiles.
    # fp8: BLOCK_K 128, one scale group per tile. Nsight Compute on the H100 (2026-12-05):
    # the bf16 GEMV streams 2.9-3.0 TB/s (87-89% of DRAM peak), the fp8 one 2.4-2.6 TB/s, the
    # mxfp4 one 1.1 TB/s at 70% SM throughput (E2M1 decoded on CUDA cores: compute-bound).
    # PARITY_MOE_DECODE_GEMV=0: the 16-row dot tile at T = 1 too.
    # Tiles from `scripts/profile_moe.py sweep` under graph replay (H100, 2026-12-05 17:25,
    # docs/gpu-results.md): fp8 dot BLOCK_N 128 (536 against 549 us at T 16), mxfp4 GEMV 32 x 256
    # (166 against 178 us at T 1), mxfp4 dot 128 x 64 (918 against 1140 us at T 16); bf16
    # unchanged (within 1% of the best there).
    gemv = t == 1 and os.environ.get(DECODE_GEMV_ENV, "1") != "0"
    bm = 1 if gemv else min(64, max(16, 1 << max(0, (t - 1).bit_length())))
    if quant == "fp8_block":
        bn, bk = (64, 128) if gemv else (128, 128)
    elif quant == "mxfp4":
        bn, bk = (32, 256) if gemv else (128, 64)
    else:
        bn, bk = (32, 256) if gemv else (64, 128)
    return {
        "DECODE_BLOCK_M": bm,
        "DECODE_BLOCK_N1": bn,
        "DECODE_BLOCK_N2": bn,
        "DECODE_BLOCK_K": bk,
        "DECODE_SPLIT_K1": 0,
        "DECODE_SPLIT_K2": 0,
        "DECODE_NUM_WARPS": 4,
        "DECODE_NUM_STAGES": 3 if not gemv else 2,
        # the word GEMV for mxfp4 (see DECODE_MX_WORDS above): off, slower on the H100
        "DECODE_MX_WORDS": int(quant == "mxfp4" and os.environ.get(MX_WORDS_ENV, "0") == "1"),
        # the activations as [1, K] tiles (see DECODE_MX_ACT_2D above)
        "DECODE_MX_ACT_2D": int(quant == "mxfp4" and os.environ.get(MX_ACT_2D_ENV, "1") != "0"),
    }


def _split(split: int, slots: int, n_out: int, bn: int, k_dim: int, bk: int) -> tuple[int, int]:
    """(splits, K elements per split, a multiple of bk) of one GEMM; split 0: enough splits
    that slots * N blocks * splits reaches DECODE_TARGET_CTAS, each split at least
    DECODE_MIN_K_PER_SPLIT long."""
    tiles = -(-k_dim // bk)
    if split <= 0:
        base = slots * -(-n_out // bn)
        split = -(-DECODE_TARGET_CTAS // max(1, base))
        split = min(split, DECODE_MAX_SPLIT, max(1, k_dim // DECODE_MIN_K_PER_SPLIT))
    split = max(1, min(int(split), tiles))
    per = -(-tiles // split)
    return -(-tiles // per), per * bk  # no empty split


def fit_decode_config(cfg: dict, t, k, e, n, h, quant, block_shape) -> dict:
    """Bring a decode config within the kernels' constraints and resolve the splits: tiles
    powers of two; BLOCK_M 1 (GEMV) or >= 16 (tl.dot: 2..15 become 16); BLOCK_N, BLOCK_K >= 16;
    fp8_block: BLOCK_K divides block_shape[1] (one scale group per K tile), and below 32 (fp8
    tl.dot's least K) the GEMV; mxfp4: BLOCK_K >= 32 (whole MX blocks). Adds SPLIT1/KSPLIT1
    (GEMM1: K = H) and SPLIT2/KSPLIT2 (GEMM2: K = N)."""
    out = dict(cfg)
    bm = _pow2_floor(int(out["DECODE_BLOCK_M"]))
    out["DECODE_BLOCK_M"] = 1 if bm == 1 else max(16, bm)  # GEMV, or a dot tile of >= 16
    for key in ("DECODE_BLOCK_N1", "DECODE_BLOCK_N2", "DECODE_BLOCK_K"):
        out[key] = max(16, _pow2_floor(int(out[key])))
    if quant == "fp8_block":
        gk = int(block_shape[1])
        out["DECODE_BLOCK_K"] = min(out["DECODE_BLOCK_K"], gk & -gk)
        if out["DECODE_BLOCK_K"] < 32:  # fp8 tl.dot needs K >= 32 on NVIDIA: the GEMV has none
            out["DECODE_BLOCK_M"] = 1
    elif quant == "mxfp4":
        out["DECODE_BLOCK_K"] = max(32, out["DECODE_BLOCK_K"])
    slots = max(1, min(e, t * k))
    bk = out["DECODE_BLOCK_K"]
    out["SPLIT1"], out["KSPLIT1"] = _split(
        int(out.get("DECODE_SPLIT_K1", 0)), slots, 2 * n, out["DECODE_BLOCK_N1"], h, bk
    )
    out["SPLIT2"], out["KSPLIT2"] = _split(
        int(out.get("DECODE_SPLIT_K2", 0)), slots, h, out["DECODE_BLOCK_N2"], n, bk
    )
    out["DECODE_NUM_WARPS"] = int(out.get("DECODE_NUM_WARPS", 4))
    out["DECODE_NUM_STAGES"] = int(out.get("DECODE_NUM_STAGES", 2))
    return out
