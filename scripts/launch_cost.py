"""Launch cost of the eager wrappers at T = 1 (issue 11, section 3: at most 8 us a call, timed as
FlashInfer's silu_and_mul is timed in the same run).

    source .gpu/activate.sh && python3 scripts/launch_cost.py            # on the GPU runner
    TRITON_INTERPRET=1 python scripts/launch_cost.py                      # on a CPU

On CUDA, per wrapper and for FlashInfer's silu_and_mul (when importable): after a warm-up and a
synchronize, N back-to-back calls on the same inputs, timed by the wall clock (time.perf_counter
around the N calls and one final synchronize) and by CUDA events around the same N calls; both
divided by N. At T = 1 the kernels take ~2 us, so both figures are the host's time to validate,
allocate and launch one call. Medians of --repeats such batches.

On the CPU (Triton interpreter) the GPU rows print "not run on cpu"; the host-overhead rows time
each wrapper with its Triton kernels replaced by a no-op (every `triton.jit` object of the kernel
modules stubbed), i.e. validation, allocation and launch bookkeeping only. mhc_post (TileLang,
CUDA only) is timed the same way with its kernel and device check stubbed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

H = 7168  # DeepSeek-V4-like sizes, as `parity bench` uses them
N_FF = 2048


def cases(device: str) -> dict:
    """op -> (args, kwargs) at T = 1."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, generator=g).to(dtype).to(device)

    packed = torch.randint(0, 256, (1, H // 2), generator=g, dtype=torch.uint8).to(device)
    scales = torch.randint(110, 140, (1, H // 32), generator=g, dtype=torch.uint8).to(device)
    hc = 4
    return {
        "swiglu": ((rnd(1, 2 * N_FF),), {}),
        "fp8_quant": ((rnd(1, H),), {}),
        "silu_mul_fp8_quant": ((rnd(1, 2 * N_FF),), {}),
        "mxfp4_dequant": ((packed, scales), {}),
        "fp8_block_quant": ((rnd(1, H),), {}),
        "mxfp4_quant": ((rnd(1, H),), {}),
        "mhc_post": (
            (
                rnd(1, 4096),
                rnd(1, hc, 4096),
                rnd(1, hc, 1, dtype=torch.float32),
                rnd(1, hc, hc, dtype=torch.float32),
            ),
            {},
        ),
    }


def impl_fn(op: str):
    from parity.catalog import get_impl

    backend = "tilelang" if op.startswith("mhc") else "triton"
    impl = get_impl(op, backend)
    return impl.fn


def time_cuda(fn, args, kwargs, n: int, repeats: int) -> tuple[float, float]:
    """(wall us a call, event us a call): medians over `repeats` batches of n calls."""
    for _ in range(20):
        fn(*args, **kwargs)
    torch.cuda.synchronize()
    walls, evs = [], []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        start.record()
        for _ in range(n):
            fn(*args, **kwargs)
        end.record()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) / n * 1e6)
        evs.append(start.elapsed_time(end) / n * 1e3)
    return statistics.median(walls), statistics.median(evs)


def time_host(fn, args, kwargs, n: int, repeats: int) -> float:
    """us a call of this thread's CPU time (time.thread_time: the time other processes of a
    shared CPU hold the core is not counted), the fastest of `repeats` batches."""
    for _ in range(20):
        fn(*args, **kwargs)
    best = []
    for _ in range(repeats):
        t0 = time.thread_time()
        for _ in range(n):
            fn(*args, **kwargs)
        best.append((time.thread_time() - t0) / n * 1e6)
    return min(best)


class _NoKernel:
    """A `triton.jit` object whose launches do nothing (keeps `arg_names` for the launchers)."""

    def __init__(self, real):
        self.arg_names = getattr(real, "arg_names", None)

    def __getitem__(self, grid):
        return _noop

    def __call__(self, *a, **k):
        return None


def _noop(*a, **k):
    return None


def stub_kernels() -> None:
    """Replace every triton.jit object of parity's Triton kernel modules, and the TileLang
    mhc kernels and their CUDA check, by no-ops."""
    import importlib
    import pkgutil

    import parity.optimized.triton as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_kernels_"):
            continue
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for name, obj in list(vars(mod).items()):
            if type(obj).__name__ in ("JITFunction", "InterpretedFunction"):
                setattr(mod, name, _NoKernel(obj))
    try:
        from parity.optimized.tilelang import mhc
    except Exception:
        return

    compiled: dict = {}

    class _KM:
        @staticmethod
        def get(name, **spec):  # the real `get`'s key and lookup, without the compile
            key = (name, tuple(sorted(spec.items())))
            kern = compiled.get(key)
            if kern is None:
                kern = compiled[key] = _noop
            return kern

    mhc._km = lambda: _KM
    mhc._cuda = lambda op, t: None


def _launches() -> list:
    """Every `Launch` held by a Triton wrapper's plan cache (the modules' `_PLANS` dicts)."""
    from parity.optimized.triton._launch import Launch

    found = []

    def walk(v, depth=0):
        if isinstance(v, Launch):
            found.append(v)
        elif isinstance(v, (tuple, list)) and depth < 4:
            for x in v:
                walk(x, depth + 1)

    for name, mod in list(sys.modules.items()):
        if name.startswith("parity.optimized.triton.") and hasattr(mod, "_PLANS"):
            for plan in list(mod._PLANS.values()):
                walk(plan)
    return found


def diagnose(ops, all_cases, n: int) -> None:
    """Where one eager call's host time goes, on CUDA: whether each plan's `Launch` took the
    direct path, the call with every launch made a no-op (validation, key, allocation), an
    allocation alone, and a profile of the full call (the functions with the most own time)."""
    import cProfile
    import io
    import pstats

    from parity.optimized.triton import _launch

    real_call = _launch.Launch.__call__
    print("\n== diagnosis (CUDA): direct launches, host time without the launch, profile")
    for op in ops:
        if op.startswith("mhc"):
            continue
        a, k = all_cases[op]
        fn = impl_fn(op)
        for _ in range(20):
            fn(*a, **k)
        torch.cuda.synchronize()
        before = {id(x) for x in _launches()}
        launches = _launches()
        direct = sum(x.direct is not None for x in launches)
        whys = sorted({x.why for x in launches if x.direct is None})
        full, _ = time_cuda(fn, a, k, n, 3)
        _launch.Launch.__call__ = lambda self, *args: None
        try:
            nolaunch, _ = time_cuda(fn, a, k, n, 3)
        finally:
            _launch.Launch.__call__ = real_call
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(n):
            fn(*a, **k)
        pr.disable()
        torch.cuda.synchronize()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(12)
        print(
            f"\n-- {op}: {len(launches)} Launch in the plans ({len(before)} ids),"
            f" {direct} direct {whys};"
            f" full call {full:.2f} us, launches stubbed {nolaunch:.2f} us"
        )
        print("\n".join(buf.getvalue().splitlines()[:30]))
    x = torch.empty(1, device="cuda")
    for shape in ((1, 7168),):
        t0 = time.perf_counter()
        for _ in range(n):
            torch.empty(shape, dtype=torch.bfloat16, device="cuda")
        print(f"\ntorch.empty{shape} bf16 cuda: {(time.perf_counter() - t0) / n * 1e6:.2f} us")
    del x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="calls a batch")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--op", action="append", help="only these ops (repeatable)")
    ap.add_argument(
        "--diagnose", action="store_true", help="on CUDA: direct launches, stubbed time, profile"
    )
    args = ap.parse_args()
    device = "cuda" if CUDA else "cpu"
    all_cases = cases(device)
    ops = args.op or list(all_cases)
    print(f"device: {torch.cuda.get_device_name() if CUDA else 'cpu'}, torch {torch.__version__}")
    rows = []
    if CUDA:
        peers = []
        try:
            import flashinfer

            peers.append(("swiglu", "flashinfer silu_and_mul", flashinfer.activation.silu_and_mul))
        except Exception as exc:
            print(f"flashinfer silu_and_mul: not importable ({type(exc).__name__}: {exc})")
        for op, name, fn in peers:
            a, k = all_cases[op]
            wall, ev = time_cuda(fn, a, k, args.n, args.repeats)
            rows.append((op, name, f"{wall:7.2f}", f"{ev:7.2f}"))
        for op in ops:
            a, k = all_cases[op]
            try:
                fn = impl_fn(op)
                wall, ev = time_cuda(fn, a, k, args.n, args.repeats)
                rows.append((op, "parity", f"{wall:7.2f}", f"{ev:7.2f}"))
            except Exception as exc:
                rows.append((op, "parity", f"error {type(exc).__name__}: {exc}"[:60], ""))
        print(f"\nT = 1, {args.n} back-to-back calls, median of {args.repeats}: us a call")
        print("| op | impl | wall | events |\n|---|---|---|---|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        if args.diagnose:
            diagnose(ops, all_cases, args.n)
        return 0
    print("\nGPU rows (wall clock and CUDA events a call): not run on cpu")
    stub_kernels()
    print(f"\nhost overhead, kernels stubbed, T = 1: CPU us a call (best of {args.repeats})")
    print("| op | host us |\n|---|---|")
    for op in ops:
        a, k = all_cases[op]
        try:
            fn = impl_fn(op)
            us = time_host(fn, a, k, args.n, args.repeats)
            print(f"| {op} | {us:6.2f} |")
        except Exception as exc:
            print(f"| {op} | error {type(exc).__name__}: {exc} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
