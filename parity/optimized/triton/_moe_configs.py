"""Tile configurations of the Triton fused MoE: tuned JSON files, defaults, constraints.

Files follow vLLM's naming (`get_config_file_name` in vllm/model_executor/layers/fused_moe):
`E={E},N={N},device_name={device}[,dtype={dtype}][,block_shape=[bn,bk]].json`, where N is the
intermediate size per expert after sharding (w2.shape[2]), device is
`torch.cuda.get_device_name()` with spaces replaced by `_` (the H200 family as `NVIDIA_H200`),
dtype is `fp8_w8a8` (fp8_block), `mxfp4_w4a16` (mxfp4, SGLang's name) or absent (bf16/fp16).
Each file maps a batch size M (tokens) to `{BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K,
GROUP_SIZE_M, num_warps, num_stages}`, optionally with our `EXTRA_CONFIG_KEYS`; a
`triton_version` key is ignored. The kernel takes the entry of the nearest M. Lookup order:
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
        if table:
            cfg = table[min(table, key=lambda key: abs(key - m))]
        else:
            cfg = default_config(m, e, n, quant, block_shape, interpret)
    return fit_config(cfg, quant, x_dtype, block_shape)
