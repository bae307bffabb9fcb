"""mxfp4_quant's two Triton kernels (the element kernel and the word kernel that reads 16-bit
inputs as int32 pairs, `_kernels_mxfp4_quant.TILE["pairs"]`) give the reference's codes and
scales bit for bit, on inputs built to hit every E2M1 midpoint, both scale roundings, NaN, inf,
signed zeros and subnormals; and the word kernel is really the one launched when chosen."""

import pytest
import torch

pytest.importorskip("triton")

from parity import reference as ref
from parity.optimized.triton import _kernels_mxfp4_quant as km
from parity.optimized.triton import mxfp4_quant as mq

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# E2M1 magnitudes and the midpoints between them (ties go to the even code)
_GRID = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
_MIDS = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]


def _hard_rows(dtype, rows: int, k: int, seed: int) -> torch.Tensor:
    """Blocks of 32 whose values sit on the grid, on the midpoints and one step either side
    of them, times a power of two, with specials sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor(_GRID + _MIDS, dtype=torch.float64)
    pick = base[torch.randint(0, len(base), (rows, k), generator=g)]
    sign = torch.where(torch.rand(rows, k, generator=g) < 0.5, -1.0, 1.0)
    scale = 2.0 ** torch.randint(-10, 10, (rows, k // 32, 1), generator=g).double()
    x = (pick * sign).view(rows, k // 32, 32) * scale
    x = x.view(rows, k).to(dtype)
    step = torch.randint(-1, 2, (rows, k), generator=g)  # nudge to the neighbouring codes
    bits = x.view(torch.int16 if dtype != torch.float32 else torch.int32)
    x = (bits + step.to(bits.dtype)).view(dtype)
    flat = x.view(-1)
    n = flat.numel()
    idx = torch.randint(0, n, (max(1, n // 50),), generator=g)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-40, 6.0])
    flat[idx] = specials[torch.arange(idx.numel()) % len(specials)].to(dtype)
    return x.to(DEV)


@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rounding", ["floor", "ceil"])
def test_both_kernels_bit_exact(monkeypatch, pairs, dtype, rounding):
    monkeypatch.setitem(km.TILE, "pairs", pairs)
    monkeypatch.setattr(mq, "_PLANS", {})
    launched = []
    for name in ("_mxfp4_quant_kernel", "_mxfp4_quant_pairs_kernel"):
        real = getattr(km, name)

        class Spy:
            arg_names = real.arg_names

            def __getitem__(self, grid, real=real, name=name):
                launched.append(name)
                return real[grid]

        monkeypatch.setattr(km, name, Spy())
    for shape, seed in (((3, 64), 0), ((2, 5, 96), 1), ((1, 224 * 32), 2), ((7, 32), 3)):
        rows = 1
        for d in shape[:-1]:
            rows *= d
        x = _hard_rows(dtype, rows, shape[-1], seed).view(shape)
        got = mq.mxfp4_quant(x, scale_rounding=rounding)
        want = ref.mxfp4_quant(x, scale_rounding=rounding)
        for g, w in zip(got, want):
            assert g.shape == w.shape and torch.equal(g.cpu(), w.cpu()), (shape, dtype)
    words = pairs and dtype != torch.float32
    assert set(launched) == {"_mxfp4_quant_pairs_kernel" if words else "_mxfp4_quant_kernel"}
