"""Case generation is the same on every device for small draws: a GPU failure's meta replays on
the CPU as the same case. The 2026-12-05 fused_moe counterexample (H100) was replayed on the CPU
from its meta and diagnosed there for two sessions, but a CUDA generator draws other numbers for
a seed than a CPU one: the CPU ran another case. Draws of at most `SMALL_DRAW` elements now come
from a CPU generator on every device."""

import json
from pathlib import Path

import pytest
import torch

from parity.catalog import get_spec, specs
from parity.properties.case import SMALL_DRAW, Gen

# the counterexample's meta (scripts/diag_fp8_gpu.sh and test_fp8_mma_model read the same file)
META_FILE = Path(__file__).resolve().parents[1] / "scripts" / "diag_fp8_tiny.meta.json"
META = json.loads(META_FILE.read_text())


def test_a_large_draw_does_not_move_the_small_stream():
    """The small draws' stream is the same whatever the large draws between them (on a GPU
    those come from the device's generator): the small draws of a case agree across devices."""
    a, b = Gen(7), Gen(7)
    a.normal((SMALL_DRAW + 1,))
    a.perm(SMALL_DRAW + 1)
    assert torch.equal(a.normal((5, 3)), b.normal((5, 3)))
    assert torch.equal(a.integers((9,), 0, 100), b.integers((9,), 0, 100))
    assert torch.equal(a.perm(17), b.perm(17))


def test_the_small_stream_is_a_cpu_generator_seeded_by_the_seed():
    """Witness of the device independence: the draw is torch's CPU stream for the seed, which a
    generator on the device (the old Gen) does not reproduce on a GPU."""
    g = torch.Generator()
    g.manual_seed(123)
    assert torch.equal(Gen(123).normal((4, 4)), torch.randn((4, 4), generator=g))
    assert Gen(123).g.device.type == "cpu"


def test_large_draws_differ_from_the_small_stream():
    a, b = Gen(7), Gen(7)
    big = a.normal((SMALL_DRAW + 1,))
    assert not torch.equal(big[:4], b.normal((4,)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NOT RUN: needs a CUDA GPU")
def test_the_counterexample_is_the_same_case_on_cuda_and_cpu():
    spec = get_spec("fused_moe")
    cpu, cuda = spec.build(META, "cpu"), spec.build(META, "cuda")
    for a, b in zip(cpu.args, cuda.args, strict=True):
        assert torch.equal(a, b.cpu())
    for k, v in cpu.kwargs.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, cuda.kwargs[k].cpu()), k


def test_host_computes_small_tensors_where_the_small_draws_come_from():
    """Gen.host runs a transcendental on the small draws' device (the CPU; here a stand-in) and
    hands the result back on the tensor's device; a large tensor stays where it is."""
    seen = []

    def fn(t):
        seen.append(t.device.type)
        return torch.ones(1)

    g = Gen(3)
    assert g._small_dev.type == "cpu"
    g._small_dev = torch.device("meta")  # a device other than the tensors' own
    assert g.host(fn, torch.zeros(4)).device.type == "cpu"
    g.host(fn, torch.zeros(SMALL_DRAW + 1))
    assert seen == ["meta", "cpu"]


def _tensors(obj, path=""):
    """(path, tensor) for every tensor in a case's args/kwargs, nested lists and dicts too."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}.{k}")


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:  # NaN-aware and -0 aware: the bytes
        a, b = a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    return torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="NOT RUN: needs a CUDA GPU")
@pytest.mark.parametrize("op", sorted(specs()))
def test_every_small_case_is_the_same_on_cuda_and_cpu(op):
    """Every op's small cases (all tensors within SMALL_DRAW) build the same bits on a GPU as on
    the CPU, so a GPU counterexample's meta is the same case when replayed on the CPU (H100
    2026-12-06: fused_moe's fp8 block scales differed through CUDA's exp2)."""
    from parity.tools.common import draw_metas

    spec = get_spec(op)
    compared = 0
    for meta in draw_metas(spec.strategy(size="small"), 12, seed=5):
        cpu, cuda = spec.build(meta, "cpu"), spec.build(meta, "cuda")
        a = list(_tensors(cpu.args)) + list(_tensors(cpu.kwargs))
        b = list(_tensors(cuda.args)) + list(_tensors(cuda.kwargs))
        assert [p for p, _ in a] == [p for p, _ in b], meta
        if any(t.numel() > SMALL_DRAW for _, t in a):
            continue  # a large draw comes from the device's own generator
        for (p, x), (_, y) in zip(a, b, strict=True):
            assert _same_bits(x, y.cpu()), (op, p, meta)
        compared += 1
    assert compared >= 6, f"{op}: only {compared} of 12 cases small enough to compare"


def test_legacy_generation_is_one_stream_on_the_device(monkeypatch):
    """PARITY_GEN_LEGACY=1 rebuilds a case as before 2026-12-06 (one generator on the device:
    a large draw moves the small draws after it), for metas a GPU printed before then."""
    monkeypatch.setenv("PARITY_GEN_LEGACY", "1")
    a, b = Gen(7), Gen(7)
    a.normal((SMALL_DRAW + 1,))
    assert not torch.equal(a.normal((5, 3)), b.normal((5, 3)))
    g = torch.Generator()
    g.manual_seed(7)
    assert torch.equal(Gen(7).normal((SMALL_DRAW + 1,)), torch.randn(SMALL_DRAW + 1, generator=g))
