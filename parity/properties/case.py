"""Cases: a JSON-able description drawn by Hypothesis, and the tensors built from it.

Hypothesis draws structure (shapes, dtype, options, value regime, seed); the tensors are then
generated on the target device from the seed, never element by element through Hypothesis.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Any

import torch

DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "uint8": torch.uint8,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}


def dtype_of(name: str) -> torch.dtype:
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass
class Case:
    """One call: positional tensors, keyword options (which may hold tensors) and the description
    it was built from (`meta`, JSON-able: shapes, dtype, options, regime, seed)."""

    op: str
    args: tuple
    kwargs: dict
    meta: dict
    device: str = "cpu"

    def clone(self) -> Case:
        """Deep copy, so a call can never see another call's (possibly mutated) tensors."""
        return Case(
            self.op,
            tuple(_clone(a) for a in self.args),
            {k: _clone(v) for k, v in self.kwargs.items()},
            copy.deepcopy(self.meta),
            self.device,
        )

    def call(self, fn):
        c = self.clone()
        return fn(*c.args, **c.kwargs)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the call by a stable name (`arg0`, `kw.bias`, ...)."""
        out = {f"arg{i}": a for i, a in enumerate(self.args) if isinstance(a, torch.Tensor)}
        out.update({f"kw.{k}": v for k, v in self.kwargs.items() if isinstance(v, torch.Tensor)})
        return out

    def describe(self) -> str:
        parts = []
        for a in self.args:
            parts.append(_short(a))
        for k, v in self.kwargs.items():
            parts.append(f"{k}={_short(v)}")
        return f"{self.op}({', '.join(parts)})"


def _clone(v):
    if isinstance(v, torch.Tensor):
        return v.clone()
    if isinstance(v, (list, tuple)):
        return type(v)(_clone(x) for x in v)
    if isinstance(v, dict):
        return {k: _clone(x) for k, x in v.items()}
    return v


def _short(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"{dtype_name(v.dtype)}{list(v.shape)}"
    return repr(v)


def as_tuple(out: Any) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


# A draw of at most this many elements comes from a CPU generator whatever the device (then
# copied there), so a case whose draws are all this small is the same case on the CPU and on a
# GPU: a GPU failure replays on the CPU from its meta. A CUDA generator draws other numbers for
# the same seed (the 2026-12-05 fused_moe counterexample was replayed on the CPU as another
# case). Larger draws come from a second generator on the device itself (a CPU draw of a
# GPU-size tensor would cost a GPU suite more than the kernel call); on the CPU that second
# generator is a CPU one, so the small draws' stream is the same on every device.
SMALL_DRAW = 1 << 16
# "1": every draw from one generator on the device, as before 2026-12-06 (rebuilds a GPU case
# described before then: its meta drew other tensors than it draws now)
LEGACY_ENV = "PARITY_GEN_LEGACY"
_CPU = torch.device("cpu")


def _numel(shape) -> int:
    return shape if isinstance(shape, int) else math.prod(shape)


class Gen:
    """Seeded tensor generation for a device: draws of at most SMALL_DRAW elements advance one
    CPU torch.Generator (the same numbers on every device), larger ones a generator on the
    device."""

    def __init__(self, seed: int, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        seed = int(seed) & 0x7FFF_FFFF_FFFF_FFFF
        if os.environ.get(LEGACY_ENV) == "1":  # every draw on the device, one stream
            self.g = self.big = torch.Generator(device=self.device)
            self.g.manual_seed(seed)
            self._small_dev = self.device
            return
        self.g = torch.Generator()
        self.g.manual_seed(seed)
        self._small_dev = _CPU
        self.big = torch.Generator(device=self.device)
        self.big.manual_seed(seed ^ 0x2545_F491_4F6C_DD1D)  # another stream than the small one

    def _src(self, n: int):
        """(generator, device) of a draw of n elements."""
        return (self.g, self._small_dev) if n <= SMALL_DRAW else (self.big, self.device)

    def host(self, fn, t: torch.Tensor) -> torch.Tensor:
        """`fn(t)` computed where the small draws come from (the CPU; the device under
        PARITY_GEN_LEGACY) for a tensor of at most SMALL_DRAW elements, then moved to t's device:
        torch's CUDA exp2 and sigmoid differ from the CPU's in the last bit for some inputs
        (H100 2026-12-06: fused_moe's block factors 2**U, so other fp8 block scales), and a
        GPU case must replay on the CPU as the same numbers. Larger tensors stay where they are
        (their draws differ by device anyway)."""
        if t.numel() > SMALL_DRAW:
            return fn(t)
        return fn(t.to(self._small_dev)).to(t.device)

    def normal(self, shape, *, dtype=torch.float32, std: float = 1.0, mean: float = 0.0):
        g, dev = self._src(_numel(shape))
        t = torch.randn(shape, generator=g, device=dev, dtype=torch.float32).to(self.device)
        return (t * std + mean).to(dtype)

    def uniform(self, shape, lo: float = 0.0, hi: float = 1.0, *, dtype=torch.float32):
        g, dev = self._src(_numel(shape))
        t = torch.rand(shape, generator=g, device=dev, dtype=torch.float32).to(self.device)
        return (t * (hi - lo) + lo).to(dtype)

    def integers(self, shape, lo: int, hi: int, *, dtype=torch.int64):
        """Uniform in [lo, hi)."""
        g, dev = self._src(_numel(shape))
        return torch.randint(lo, hi, shape, generator=g, device=dev, dtype=dtype).to(self.device)

    def perm(self, n: int):
        g, dev = self._src(n)
        return torch.randperm(n, generator=g, device=dev).to(self.device)

    def mask(self, shape, p: float):
        return self.uniform(shape) < p

    def values(self, shape, regime: str, *, dtype=torch.float32, scale: float = 1.0):
        """Float values in a named regime, rounded to `dtype`.

        normal: N(0, scale); wide: sign * 2**U(-24, 24) * scale (wide dynamic range);
        large: around and above 448 * scale (fp8 saturation); denormal: subnormals of `dtype`
        mixed with normals; ties: a coarse grid (exact ties and rounding midpoints);
        zeros: mostly exact zeros; negative: all negative (routing with all-negative logits).
        """
        if regime == "normal":
            t = self.normal(shape, std=scale)
        elif regime == "wide":
            e = self.uniform(shape, -24.0, 24.0)
            sign = torch.where(self.mask(shape, 0.5), -1.0, 1.0)
            t = sign * self.host(torch.exp2, e) * scale
        elif regime == "large":
            t = self.uniform(shape, -600.0, 600.0) * scale
        elif regime == "denormal":
            tiny = torch.finfo(dtype).tiny if dtype.is_floating_point else 1e-38
            t = self.uniform(shape, -4.0, 4.0) * tiny
            t = torch.where(self.mask(shape, 0.2), self.normal(shape), t)
        elif regime == "ties":
            t = torch.round(self.uniform(shape, -4.0, 4.0) * 2.0) / 2.0 * scale
        elif regime == "zeros":
            t = torch.where(self.mask(shape, 0.9), 0.0, self.normal(shape, std=scale))
        elif regime == "negative":
            t = -self.uniform(shape, 0.5, 8.0) * scale
        else:
            raise ValueError(f"values: regime: unknown {regime!r}")
        return t.to(dtype)

    def inject_nan(self, t: torch.Tensor, *, p: float = 0.02, at_least_one: bool = True):
        """A copy of `t` with NaN at random positions (at least one when `t` is non-empty)."""
        t = t.clone()
        if t.numel() == 0:
            return t
        m = self.mask(t.shape, p)
        if at_least_one:
            flat = m.view(-1)
            flat[int(self.integers((1,), 0, flat.numel()).item())] = True
        t[m] = float("nan")
        return t


def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of `dtype` at |x| (float64), floored at the dtype's smallest subnormal step; any
    float dtype, float8 included."""
    fi = torch.finfo(dtype)
    x = x.to(torch.float64).abs()
    # frexp: x = m * 2**e with m in [0.5, 1): the spacing is 2**(e - mantissa_bits - 1)
    _, e = torch.frexp(torch.where(x > fi.tiny, x, torch.full_like(x, fi.tiny)))
    mant = round(-math.log2(fi.eps))  # mantissa bits: eps = 2**-mant
    return torch.ldexp(torch.ones_like(x), (e - 1 - mant).to(torch.int32))


def eps_of(dtype: torch.dtype) -> float:
    """Unit roundoff (half the spacing at 1) of a float dtype."""
    return torch.finfo(dtype).eps / 2.0


__all__ = ["Case", "Gen", "as_tuple", "dtype_name", "dtype_of", "eps_of", "ulp"]
