"""Case generation is the same on every device for small draws: a GPU failure's meta replays on
the CPU as the same case. The 2026-12-05 fused_moe counterexample (H100) was replayed on the CPU
from its meta and diagnosed there for two sessions, but a CUDA generator draws other numbers for
a seed than a CPU one: the CPU ran another case. Draws of at most `SMALL_DRAW` elements now come
from a CPU generator on every device, and the math a GPU rounds otherwise (transcendentals,
reductions, sorts of ties) runs on the CPU for them (`Gen.host`): a GPU test compares the bits,
and a CPU stand-in checks the same on every CI run."""

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


@pytest.fixture
def large_draws(monkeypatch):
    """A list that gets one entry for every draw from the device's own generator (more than
    SMALL_DRAW elements): a case built from one may differ by device even where all of its
    tensors are small (fused_moe's mxfp4 codes [8, 128, 64] come from a [8, 128, 128] draw)."""
    seen = []
    src = Gen._src

    def spy(self, n):
        if n > SMALL_DRAW:
            seen.append(n)
        return src(self, n)

    monkeypatch.setattr(Gen, "_src", spy)
    return seen


def _small_cases(op, large_draws, n=12, seed=5):
    """(meta, its case built on the CPU, build) of the op's small-size cases drawn without a
    large draw."""
    from parity.tools.common import draw_metas

    spec = get_spec(op)
    for meta in draw_metas(spec.strategy(size="small"), n, seed=seed):
        del large_draws[:]
        case = spec.build(meta, "cpu")
        if not large_draws:
            yield meta, case, spec.build


def _case_tensors(case):
    return list(_tensors(case.args)) + list(_tensors(case.kwargs))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="NOT RUN: needs a CUDA GPU")
@pytest.mark.parametrize("op", sorted(specs()))
def test_every_small_case_is_the_same_on_cuda_and_cpu(op, large_draws):
    """Every op's cases without a large draw build the same bits on a GPU as on the CPU, so a GPU
    counterexample's meta is the same case when replayed on the CPU (H100 2026-12-06: fused_moe's
    fp8 block scales differed through CUDA's exp2; then swiglu's wide regime, Gen.values' exp2,
    and mhc's Sinkhorn-made comb mixes)."""
    compared = 0
    for meta, cpu, build in _small_cases(op, large_draws):
        a, b = _case_tensors(cpu), _case_tensors(build(meta, "cuda"))
        assert [p for p, _ in a] == [p for p, _ in b], meta
        for (p, x), (_, y) in zip(a, b, strict=True):
            assert _same_bits(x, y.cpu()), (op, p, meta)
        compared += 1
    assert compared >= 6, f"{op}: only {compared} of 12 cases small enough to compare"


# The CPU's stand-in for the GPU test above: ops whose results a GPU may round otherwise (its
# transcendentals are not correctly rounded; its reductions sum in another order) get their
# inexact results moved one ulp up while a case is built, except inside Gen.host (computed where
# the small draws come from). A case that changes used device math on its small draws.
_A = torch.ops.aten
_INEXACT = {
    getattr(_A, n)
    for n in (
        "exp exp2 expm1 log log2 log10 log1p sigmoid tanh sum mean cumsum prod _softmax "
        "_log_softmax mm bmm addmm rsqrt erf sin cos pow softplus silu linalg_vector_norm"
    ).split()
}
_EXACT_ON_INTEGERS = {_A.exp2, _A.sum, _A.cumsum}  # powers of two, sums below 2**52
_TIE_ORDER = {_A.topk, _A.sort}  # which of equal values comes first: a CUDA sort's own choice


def _ties(func, args, kwargs) -> bool:
    """Whether a topk or unstable sort meets equal values along its dim."""
    x = args[0]
    if kwargs.get("stable") or not isinstance(x, torch.Tensor) or x.dim() == 0:
        return False
    if func.overloadpacket is _A.topk:
        dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
    else:
        dim = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("dim", -1)
    v = x.sort(dim).values
    n = v.shape[dim]
    return n > 1 and bool((v.narrow(dim, 1, n - 1) == v.narrow(dim, 0, n - 1)).any())


def _as_f64(o):
    if isinstance(o, torch.Tensor) and o.is_floating_point():
        return o.double()
    if isinstance(o, (list, tuple)):
        return type(o)(_as_f64(x) for x in o)
    return o


def _integral(t) -> bool:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return isinstance(t, torch.Tensor)
    return bool((t == t.round()).all() and (t.abs() < 2**52).all())


class _DeviceMath(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.active = True
        self.moved = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        op = func.overloadpacket
        if self.active and op in _TIE_ORDER and _ties(func, args, kwargs):
            self.moved.add(f"{op} of ties")  # no order to move to: reported, the test fails
        if not (self.active and op in _INEXACT and isinstance(out, torch.Tensor)):
            return out
        if not out.is_floating_point() or out.numel() == 0:
            return out
        if out.dtype == torch.float64:  # no wider type to tell an exact result by
            exact = torch.full(out.shape, op in _EXACT_ON_INTEGERS and _integral(args[0]))
        else:  # exact where the float64 result is the same number
            kw = {k: v for k, v in kwargs.items() if k != "dtype"}
            exact = func(*_as_f64(args), **kw) == out.double()
        if bool(exact.all()):
            return out
        self.moved.add(str(op))
        return torch.where(exact, out, torch.nextafter(out, torch.full_like(out, float("inf"))))


def _build_with_device_math(build, meta, monkeypatch, *, host_on_cpu=True):
    mode, host = _DeviceMath(), Gen.host

    def on_host(self, fn, t):  # where Gen.host computes on the CPU, the device math is off
        was, mode.active = mode.active, t.numel() > SMALL_DRAW
        try:
            return host(self, fn, t)
        finally:
            mode.active = was

    with monkeypatch.context() as m:
        if host_on_cpu:
            m.setattr(Gen, "host", on_host)
        with mode:
            case = build(meta, "cpu")
    return case, mode.moved


def _device_math_changes(op, large_draws, monkeypatch, *, host_on_cpu=True):
    """[(meta, paths of the tensors that changed, ops moved)] of the op's small cases."""
    changed = []
    for meta, cpu, build in _small_cases(op, large_draws):
        a = _case_tensors(cpu)
        case, moved = _build_with_device_math(build, meta, monkeypatch, host_on_cpu=host_on_cpu)
        b = _case_tensors(case)
        paths = [p for (p, x), (_, y) in zip(a, b, strict=True) if not _same_bits(x, y)]
        paths += [o for o in moved if o.endswith("of ties")]
        if paths:
            changed.append((meta, paths, sorted(moved)))
    return changed


@pytest.mark.parametrize("op", sorted(specs()))
def test_small_cases_use_no_device_math(op, large_draws, monkeypatch):
    """No op's small case depends on math a GPU rounds otherwise (the CPU stand-in of the GPU
    test above, on every CI run)."""
    assert _device_math_changes(op, large_draws, monkeypatch) == []


def test_device_math_witness(large_draws, monkeypatch):
    """The stand-in catches device math: with Gen.host's math counted as the device's (as
    before 7c51c9c, where it ran on the tensor's own device), swiglu's wide regime (sign * 2**U)
    and the mhc comb mixes (a Sinkhorn of normals) change."""
    for op in ("swiglu", "mhc_post"):
        changed = _device_math_changes(op, large_draws, monkeypatch, host_on_cpu=False)
        assert changed, op
        assert any(o in ("aten.exp2", "aten._softmax") for _, _, ops in changed for o in ops)


def test_device_math_flags_an_order_of_ties():
    """A topk or unstable sort over equal values outside Gen.host is reported (a CUDA sort may
    order the ties otherwise: mhc's exact_gemm positions, an argsort of thousands of uniform
    draws, met ties); a stable sort and values without ties are not."""
    mode = _DeviceMath()
    with mode:
        torch.tensor([1.0, 2.0, 1.0]).topk(2)
        torch.tensor([3.0, 1.0, 2.0]).argsort()
        torch.tensor([1.0, 1.0]).sort(stable=True)
    assert mode.moved == {"aten.topk of ties"}


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
