"""Verdicts and the comparison rules the tolerance models are built from.

A tolerance is never a tuned number: each op states, next to its OpSpec, the bound it derives
from the formats (ulp of the output dtype, fp8/fp4 code spacing, accumulation length).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Verdict:
    ok: bool
    message: str = ""
    ratio: float = 0.0  # worst error / its tolerance (>1 fails); for hypothesis.target
    worst: list = field(default_factory=list)  # [(output, index, got, want, tol)]

    @staticmethod
    def passed(ratio: float = 0.0) -> Verdict:
        return Verdict(True, "", ratio)

    def __bool__(self) -> bool:
        return self.ok


def combine(verdicts) -> Verdict:
    """All must pass; the first failure's message leads, the worst ratio is kept."""
    verdicts = list(verdicts)
    bad = [v for v in verdicts if not v.ok]
    ratio = max((v.ratio for v in verdicts), default=0.0)
    if not bad:
        return Verdict(True, "", ratio)
    return Verdict(False, "; ".join(v.message for v in bad), ratio, bad[0].worst)


def isnan_any(t: torch.Tensor) -> torch.Tensor:
    """NaN mask for any dtype (float8 NaN codes included; integers never NaN)."""
    if t.dtype == torch.float8_e4m3fn:
        return (t.view(torch.uint8) & 0x7F) == 0x7F
    if t.is_floating_point():
        return torch.isnan(t)
    return torch.zeros(t.shape, dtype=torch.bool, device=t.device)


def bits(t: torch.Tensor) -> torch.Tensor:
    """A view of the raw bits (for bitwise comparison; NaN payloads included)."""
    t = t.contiguous()
    if t.dtype == torch.bool:
        return t.to(torch.uint8)
    size = t.element_size()
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
    return t.view(view)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == torch.float8_e4m3fn:
        # the two NaN encodings 0x7f and 0xff are one NaN
        na, nb = isnan_any(a), isnan_any(b)
        return bool(torch.equal(na, nb) and torch.equal(bits(a)[~na], bits(b)[~nb]))
    return bool(torch.equal(bits(a), bits(b)))


def check_meta(name: str, got, want: torch.Tensor, *, strides: bool = False) -> Verdict:
    """Shape, dtype and device (and strides where a layout option fixes them)."""
    if not isinstance(got, torch.Tensor):
        return Verdict(False, f"{name}: expected a tensor, got {type(got).__name__}")
    problems = []
    if tuple(got.shape) != tuple(want.shape):
        problems.append(f"shape {list(got.shape)} != {list(want.shape)}")
    if got.dtype != want.dtype:
        problems.append(f"dtype {got.dtype} != {want.dtype}")
    if got.device.type != want.device.type:
        problems.append(f"device {got.device} != {want.device}")
    if strides and got.numel() > 1 and got.stride() != want.stride():
        problems.append(f"strides {got.stride()} != {want.stride()}")
    if problems:
        return Verdict(False, f"{name}: " + ", ".join(problems))
    return Verdict.passed()


def exact(name: str, got: torch.Tensor, want: torch.Tensor) -> Verdict:
    """Bitwise equality (NaN encodings of fp8 unified), with the first mismatches listed."""
    v = check_meta(name, got, want)
    if not v:
        return v
    if same_bits(got, want):
        return Verdict.passed()
    ng, nw = isnan_any(got), isnan_any(want)
    diff = (bits(got) != bits(want)) & ~(ng & nw)
    idx = diff.nonzero()[:5].tolist()
    worst = [(name, tuple(i), _item(got, i), _item(want, i), 0.0) for i in idx]
    n = int(diff.sum())
    return Verdict(False, f"{name}: {n} of {got.numel()} elements differ (exact)", float(n), worst)


def _item(t: torch.Tensor, idx) -> float:
    v = t[tuple(idx)]
    if v.dtype == torch.float8_e4m3fn:
        v = v.float()
    return v.item()


def close(name: str, got: torch.Tensor, want: torch.Tensor, tol: torch.Tensor | float) -> Verdict:
    """|got - want| <= tol elementwise; NaN only where want is NaN; infinities equal.

    `want` is the reference (float64 where the op allows), `tol` a tensor broadcastable to it.
    """
    if not isinstance(got, torch.Tensor):
        return Verdict(False, f"{name}: expected a tensor, got {type(got).__name__}")
    if tuple(got.shape) != tuple(want.shape):
        return Verdict(False, f"{name}: shape {list(got.shape)} != {list(want.shape)}")
    g = got.to(torch.float64)
    w = want.to(torch.float64)
    tol = torch.as_tensor(tol, dtype=torch.float64, device=w.device).expand_as(w)
    gn, wn = torch.isnan(g), torch.isnan(w)
    err = (g - w).abs()
    both_inf = torch.isinf(g) & torch.isinf(w) & (torch.sign(g) == torch.sign(w))
    err = torch.where(both_inf, torch.zeros_like(err), err)
    bad = (err > tol) | (gn != wn)
    bad &= ~(gn & wn)
    ratio_t = torch.where(gn | wn, torch.zeros_like(err), err / tol.clamp_min(1e-300))
    ratio = float(ratio_t.max()) if ratio_t.numel() else 0.0
    if (gn != wn).any():
        ratio = max(ratio, float("inf"))
    if not bad.any():
        return Verdict(True, "", ratio)
    n = int(bad.sum())
    score = torch.where(bad, torch.nan_to_num(ratio_t, nan=1e300, posinf=1e300), -1.0)
    score = torch.where(gn != wn, torch.full_like(score, 1e308), score)
    top = torch.topk(score.view(-1), min(5, n)).indices
    worst = []
    for flat in top.tolist():
        i = _unravel(flat, w.shape)
        worst.append((name, i, g[i].item(), w[i].item(), tol[i].item()))
    first = worst[0]
    msg = (
        f"{name}: {n} of {w.numel()} elements out of tolerance, worst at {list(first[1])}: "
        f"got {first[2]:.9g}, want {first[3]:.9g}, tol {first[4]:.3g}"
    )
    return Verdict(False, msg, ratio, worst)


def _unravel(flat: int, shape) -> tuple:
    idx = []
    for s in reversed(shape):
        idx.append(flat % s)
        flat //= s
    return tuple(reversed(idx))


def nan_mask_equal(name: str, got: torch.Tensor, want: torch.Tensor) -> Verdict:
    """NaN exactly where the reference has NaN (the NaN policy)."""
    if tuple(got.shape) != tuple(want.shape):
        return Verdict(False, f"{name}: shape {list(got.shape)} != {list(want.shape)}")
    gn, wn = isnan_any(got), isnan_any(want)
    if torch.equal(gn, wn):
        return Verdict.passed()
    extra = (gn & ~wn).nonzero()[:3].tolist()
    missing = (wn & ~gn).nonzero()[:3].tolist()
    return Verdict(
        False,
        f"{name}: NaN policy: {int((gn & ~wn).sum())} NaN where the reference has none "
        f"(e.g. {extra}), {int((wn & ~gn).sum())} missing (e.g. {missing})",
        float("inf"),
    )
