"""Which FP8 rounding the quantizer kernels use on a device (plain Python: no triton import).

`native_fp8_ok(device)` is True when the kernels may round float32 -> E4M3 with the native
`.to(tl.float8e4nv)` cast (after an explicit clamp to +-448): only for a CUDA device of
compute capability 9.x, where triton 3.6 lowers it to `cvt.rn.satfinite.e4m3x2.f32` (measured
equal to torch's cast on every float32 value in [-448, 448]). Everywhere else the exact integer
rounding of `_fp8.e4m3_code` is used: under TRITON_INTERPRET=1 the native cast drops mantissa
carries and gives NaN above 448, on sm_89 it double-rounds, and a CPU tensor never runs native.

Environment override, read on every call: PARITY_TRITON_FP8_CAST=explicit forces the integer
rounding everywhere; PARITY_TRITON_FP8_CAST=native forces the native cast (even where it is
known to be wrong: for experiments only). Unset or empty: the rule above. Any other value
raises ValueError.
"""

from __future__ import annotations

import os

import torch

ENV = "PARITY_TRITON_FP8_CAST"
_CHOICES = ("explicit", "native")
_MAJOR: dict[int, int] = {}  # CUDA device index -> compute capability major (cached)


def native_fp8_ok(device) -> bool:
    """True when the FP8 kernels for tensors on `device` use the native E4M3 cast."""
    forced = os.environ.get(ENV, "")
    if forced:
        if forced not in _CHOICES:
            raise ValueError(f"{ENV}: expected one of {', '.join(_CHOICES)}, got {forced!r}")
        return forced == "native"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False
    device = torch.device(device)
    if device.type != "cuda":
        return False
    major = _MAJOR.get(device.index) if device.index is not None else None
    if major is None:
        major = torch.cuda.get_device_capability(device)[0]
        if device.index is not None:
            _MAJOR[device.index] = major
    return major == 9


# Kernel variants that stay options until a GPU has timed them (docs/gpu-results.md):
# PARITY_TRITON_VARIANTS="fast_sigmoid,mxfp4_dequant_bf16" (a list of VARIANTS, or "all") turns
# them on at import, so a whole GPU suite can run with them before one becomes a default.
# Unknown names raise: a misspelt variant must not run the shipped kernels and read as the
# variant's pass.
VARIANTS_ENV = "PARITY_TRITON_VARIANTS"
# (mxfp4_quant's E2M1 bits encoder and the mxfp4 decode GEMMs on whole MX blocks were ones:
# now the defaults)
VARIANTS = ("fast_sigmoid", "fp8_block_cols_first", "mxfp4_dequant_bf16")


def variant_on(name: str) -> bool:
    """True when PARITY_TRITON_VARIANTS names `name` (or says "all")."""
    if name not in VARIANTS:
        raise ValueError(f"unknown kernel variant {name!r}; known: {', '.join(VARIANTS)}")
    asked = {v.strip() for v in os.environ.get(VARIANTS_ENV, "").split(",") if v.strip()}
    bad = asked - set(VARIANTS) - {"all"}
    if bad:
        raise ValueError(
            f"{VARIANTS_ENV}: unknown {', '.join(sorted(bad))}; known: {', '.join(VARIANTS)}"
        )
    return name in asked or "all" in asked
