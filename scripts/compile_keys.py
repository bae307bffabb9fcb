"""How many Triton compiles a property run asks for, counted on the CPU (issue 11, section 4).

    python scripts/compile_keys.py --op fp8_quant [--op ...] [--examples 100] [--profile nightly]
        [--dump keys.json]
    python scripts/compile_keys.py --bench 1,8192 --op swiglu --dump keys.json
    python scripts/compile_keys.py --draw full --op swiglu --examples 300    # a GPU run's draws
    env -u TRITON_INTERPRET python scripts/compile_keys.py --compile keys.json [--sample 8]

On the GPU the property suites ran at 2-10 examples a second where the Triton interpreter on
this CPU runs 40-60 (docs/gpu-results.md): every launch whose key is new compiles a kernel.
This runs the suite of an implementation in the interpreter with every kernel launch recorded
under the key triton would compile it under (`parity.optimized.triton._compile_keys`) and
prints, per kernel, the launches, the distinct keys (the compiles of a GPU run with a cold
cache) and which parameters make them distinct.

`--bench T,...` records instead the keys of each op's benchmark case (`OpSpec.bench`) at those
token counts, kernels not run: the production keys. `--draw full` calls the implementation on
cases drawn as a GPU run draws them (T up to 4097), kernels not run and nothing judged. Both
plan as on a GPU (`_launch.plan_as_gpu`: fused_moe's tiles and paths, which otherwise follow the
interpreter); a suite run (neither flag) keys the interpreter's own plans. `--dump`
writes the keys as JSON; `--compile` compiles a sample of them for sm_90 here (triton's own
ptxas, no GPU) and prints the seconds a compile, and with `--detail` each key's SASS size,
fingerprint and global loads and stores by width: two versions of a kernel compared without a
GPU.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

if "--compile" not in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
else:  # every compile timed from scratch: an empty cache of its own
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile_keys-")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, unwarned
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

KEYS = None  # parity.optimized.triton._compile_keys.Keys of the run


def report() -> int:
    LAUNCHES, PARAMS = KEYS.launches, KEYS.params
    total = 0
    print("\n| kernel | launches | compile keys | what varies (distinct values) |")
    print("|---|---|---|---|")
    for name in sorted(LAUNCHES):
        keys = LAUNCHES[name]
        total += len(keys)
        varies = []
        names = PARAMS[name]
        for j, pname in enumerate(names):
            vals = {k[0][j] for k in keys}
            if len(vals) > 1:
                varies.append(f"{pname} {len(vals)}")
        opt_vals = {k[1] for k in keys}
        if len(opt_vals) > 1:
            varies.append(f"options {len(opt_vals)}")
        print(f"| {name} | {sum(keys.values())} | {len(keys)} | {', '.join(varies) or '-'} |")
    print(f"\n{total} compile keys in all")
    return total


def dump(path: str) -> None:
    LAUNCHES, SOURCES = KEYS.launches, KEYS.sources
    rows = [
        {"kernel": SOURCES[name], "parts": list(parts), "options": dict(opts), "launches": n}
        for name in sorted(LAUNCHES)
        for (parts, opts), n in LAUNCHES[name].most_common()
    ]
    with open(path, "w") as f:
        json.dump(rows, f, indent=0)
    print(f"{len(rows)} keys written to {path}")


def sass_text(cubin: bytes) -> list[str]:
    """The kernel's SASS instructions, addresses and encodings dropped (nvdisasm, shipped with
    triton)."""
    import triton

    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    text = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    out = []
    for ln in text.split("\n"):
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?);", ln)
        if m:
            out.append(re.sub(r"\.L_x_\d+", "L", m.group(1)).strip())
    return out


def describe(sass: list[str]) -> str:
    """SASS size, a fingerprint, and the global loads and stores by width."""
    mem = collections.Counter(
        m.group(1) for ln in sass if (m := re.search(r"\b((?:LDG|STG)\S*)", ln))
    )
    digest = hashlib.sha1("\n".join(sass).encode()).hexdigest()[:8]
    return f"{len(sass)} instr, {digest}, " + " ".join(f"{k} x{v}" for k, v in sorted(mem.items()))


def compile_key(row: dict):
    """Compile one recorded key for sm_90 as triton's launcher would (signature, constexprs,
    divisibility attributes from the recorded specialisation)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    mod, fn_name = row["kernel"].split(":")
    fn = getattr(importlib.import_module(mod), fn_name)
    sig, const, attrs = {}, {}, {}
    for i, (name, part) in enumerate(zip(fn.arg_names, row["parts"])):
        kind, spec = part
        if kind in ("c", "constexpr"):
            sig[name] = "constexpr"
            const[(i,)] = spec
        else:
            sig[name] = kind
            if spec == "D":
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, sig, const, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=row["options"])


def fn_params(row: dict) -> list[str]:
    import importlib

    mod, fn_name = row["kernel"].split(":")
    return getattr(importlib.import_module(mod), fn_name).arg_names


def _warm_compiler() -> None:
    """The compiler's first-use setup (imports, the backend), not timed: a trivial kernel."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    @triton.jit
    def _nop(p, BLOCK: tl.constexpr):
        tl.store(p + tl.arange(0, BLOCK), tl.zeros((BLOCK,), tl.float32))

    src = ASTSource(_nop, {"p": "*fp32", "BLOCK": "constexpr"}, {(1,): 16}, {})
    triton.compile(src, target=GPUTarget("cuda", 90, 32))


def compile_sample(path: str, sample: int, detail: bool = False) -> int:
    with open(path) as f:
        rows = json.load(f)
    by_kernel = collections.defaultdict(list)
    for r in rows:
        by_kernel[r["kernel"]].append(r)
    print("| kernel | keys | compiled | s a compile (median, max) | SASS instructions (min-max) |")
    print("|---|---|---|---|---|")
    _warm_compiler()
    for k, rs in by_kernel.items():
        times, sizes = [], []
        for r in rs[:sample]:  # the most launched first
            t0 = time.perf_counter()
            ck = compile_key(r)
            times.append(time.perf_counter() - t0)
            sass = sass_text(ck.asm["cubin"])
            sizes.append(len(sass))
            if detail:
                spec = " ".join(
                    f"{n}={v!r}" if kind in ("c", "constexpr") else f"{n}:{kind}{v or ''}"
                    for n, (kind, v) in zip(fn_params(r), r["parts"])
                )
                print(f"  {spec} {r['options']}\n    -> {describe(sass)}")
        print(
            f"| {k.split(':')[1]} | {len(rs)} | {len(times)} | {statistics.median(times):.2f}, "
            f"{max(times):.2f} | {min(sizes)}-{max(sizes)} |"
        )
    return 0


def bench_keys(a) -> int:
    from parity.catalog import get_impl, get_spec

    for op in a.op:
        spec, impl = get_spec(op), get_impl(op, a.impl)
        for t in (int(v) for v in a.bench.split(",")):
            case = spec.build({**spec.bench(t), "seed": 0}, "cpu")
            try:
                impl.fn(*case.args, **case.kwargs)
            except Exception as exc:  # a host check on an output no kernel wrote: keys kept
                print(f"{op} T={t}: {type(exc).__name__}: {exc}"[:160])
    return 0


def draw_keys(a) -> int:
    """The keys of `--examples` cases drawn from each op's strategy at `--draw` size ("full" is
    what a GPU run draws: T up to 4097), the implementation called on each with its kernels
    not run and nothing judged: the compiles a GPU run's draws ask for, counted here."""
    from hypothesis import HealthCheck, Phase, given, settings

    from parity.catalog import get_impl, get_spec

    for op in a.op:
        spec, impl = get_spec(op), get_impl(op, a.impl)
        n = {"called": 0, "raised": 0}

        @settings(
            max_examples=a.examples,
            phases=[Phase.generate],
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(spec.strategy(size=a.draw, dtypes=impl.dtypes))
        def one(meta):
            case = spec.build(meta, "cpu")  # noqa: B023 (run before the loop moves on)
            try:
                impl.fn(*case.args, **case.kwargs)  # noqa: B023
                n["called"] += 1  # noqa: B023
            except Exception:  # unsupported, or a host check on an output no kernel wrote
                n["raised"] += 1  # noqa: B023

        one()
        print(f"{op}: {n['called']} calls, {n['raised']} raised", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", action="append")
    ap.add_argument("--dump", metavar="FILE", help="write the keys as JSON")
    ap.add_argument("--compile", metavar="FILE", help="compile keys of FILE for sm_90 here")
    ap.add_argument("--sample", type=int, default=8, help="keys a kernel to compile")
    ap.add_argument("--detail", action="store_true", help="--compile: each key's SASS")
    ap.add_argument("--bench", metavar="T,...", help="the ops' benchmark cases at these T")
    ap.add_argument("--draw", choices=["small", "full"], help="cases drawn at this size, unjudged")
    ap.add_argument("--impl", default="triton")
    ap.add_argument("--examples", type=int, default=100, help="examples a property")
    ap.add_argument("--profile", default="nightly", choices=["pr", "nightly", "bisect"])
    a = ap.parse_args(argv)
    if a.compile:
        return compile_sample(a.compile, a.sample, a.detail)
    if not a.op:
        ap.error("--op is required (or --compile FILE)")
    global KEYS
    from parity.optimized.triton._compile_keys import record
    from parity.optimized.triton._launch import plan_as_gpu

    mode = draw_keys if a.draw else bench_keys if a.bench else suite_keys
    # only the suite runs the kernels; the others plan as a GPU run does (fused_moe's tiles and
    # paths follow the interpreter otherwise), kernels not run
    gpu = plan_as_gpu() if mode is not suite_keys else contextlib.nullcontext()
    with record(skip_run=mode is not suite_keys) as KEYS, gpu:
        rc = mode(a)
    report()
    if a.dump:
        dump(a.dump)
    return rc


def suite_keys(a) -> int:
    from parity.tools.cli import main as parity_main

    cmd = ["suite", "--device", "cpu", "--jobs", "1", "--impl", a.impl, "--profile", a.profile]
    cmd += ["--max-examples", str(a.examples)]
    for op in a.op:
        cmd += ["--op", op]
    return parity_main(cmd)


if __name__ == "__main__":
    sys.exit(main())
