"""`parity check --op OP --impl IMPL [--golden DIR] [--device D] [--max-examples N]`.

One good/bad verdict for one implementation, in the exit code `git bisect run` expects:

    0    good: every golden case and every property passed
    1    bad: a golden case or a property failed (the first failure is printed)
    125  cannot test this commit: no GPU for a cuda run, the implementation does not import or
         build, the golden folder is missing or corrupt (or disagrees with this commit's
         reference), every case unsupported, or parity itself broke

No other exit code is used (a usage error is 125 too: `git bisect run` would read 2 as "bad").
The kernel runs in a worker process (`--no-isolate`: in-process), which also imports a
`module:function` (never parity's own process): a crash, a hang past `--timeout`, `os._exit(0)`,
`SystemExit` or `KeyboardInterrupt` raised by the kernel or its module's import is a failing
case, so "bad" (exit 1), never a good commit or a dead harness. A module that does not exist or
raises an ordinary exception at import cannot be tested (125). The user's own Ctrl-C is 125.
The golden cases (recorded by `parity golden`) are compared under the op's tolerance model
(`OpSpec.compare`); then every property runs under the `bisect` Hypothesis profile with a fixed
seed, so every commit sees the same cases. The run stops at the first failing check and does
not shrink (a bisect needs the verdict; --keep-going and --shrink for a full diagnosis).
Failures listed in the known-failure ledger (`parity.campaign.ledger`) count as xfail; an XPASS is
printed but does not make the commit bad (commits from before a known bug pass its entry).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
import traceback
from pathlib import Path

GOOD, BAD, SKIP = 0, 1, 125


def add_parser(sub):
    p = sub.add_parser("check", help="good/bad verdict for git bisect run (exit 0/1/125)")
    p.add_argument("--op", required=True)
    p.add_argument("--impl", required=True, help="registered name or module:function")
    p.add_argument("--golden", metavar="DIR", default=None, help="folder from `parity golden`")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help="default: cuda when a GPU is visible, else cpu",
    )
    p.add_argument(
        "--max-examples",
        type=int,
        default=None,
        help="examples per property (default: the bisect profile's)",
    )
    p.add_argument("--seed", type=int, default=0, help="Hypothesis seed of the properties")
    p.add_argument(
        "--property",
        action="append",
        default=[],
        dest="properties",
        help="run only these properties (repeatable)",
    )
    p.add_argument("--no-properties", action="store_true", help="golden cases only")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per case (hang: bad)")
    p.add_argument("--no-isolate", action="store_true", help="run the kernel in-process")
    p.add_argument("--size", choices=["small", "full"], default=None)
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="run every check after a failure (default: stop at the first)",
    )
    p.add_argument(
        "--shrink",
        action="store_true",
        help="shrink a failing property case (slower; the verdict is the same)",
    )
    p.add_argument(
        "--ledger",
        metavar="FILE",
        default=None,
        help="known failures (default: ./parity-ledger.json when present)",
    )
    p.add_argument(
        "--accept",
        action="append",
        default=[],
        metavar="NAME",
        help="judge under this named variant of the op (repeatable; an unknown name: 125)",
    )
    _exit_125_on_usage_errors(p)
    return p


def _exit_125_on_usage_errors(p: argparse.ArgumentParser) -> None:
    """argparse exits 2 on a usage error, which `git bisect run` would take for "bad"."""

    def error(message):
        p.print_usage(sys.stderr)
        print(f"parity check: error: {message} (exit 125: cannot test)", file=sys.stderr)
        sys.exit(SKIP)

    parse_known = p.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, extra = parse_known(args, namespace)
        if extra:
            error(f"unrecognized arguments: {' '.join(extra)}")
        return ns, extra

    p.error = error
    p.parse_known_args = parse_known_args


def run(args) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:  # the user's Ctrl-C (a kernel's own is caught as its failure)
        print("parity check: interrupted: cannot test (exit 125)", file=sys.stderr)
        return SKIP
    except BaseException:  # a broken harness must not blame the commit
        traceback.print_exc()
        print("parity check: internal error: cannot test (exit 125)", file=sys.stderr)
        return SKIP


def _bad(msg: str) -> int:
    print(f"first failure: {msg}")
    print("verdict: BAD (the candidate breaks its process, exit 1)")
    return BAD


def _skip(msg: str) -> int:
    print(f"parity check: cannot test: {msg}", file=sys.stderr)
    print("verdict: SKIP (exit 125)")
    return SKIP


def _run(args) -> int:
    import torch

    from parity.campaign import InProcess, Isolated
    from parity.campaign.worker import WorkerUsageError
    from parity.tools.common import bad_numbers, default_device

    device = args.device or default_device()
    if device == "cuda" and not torch.cuda.is_available():
        return _skip("--device cuda, but no CUDA GPU is visible")
    try:
        from parity.catalog import get_spec

        spec = get_spec(args.op)
    except Exception as e:  # parity itself does not import at this commit
        return _skip(f"cannot load op {args.op!r}: {type(e).__name__}: {e}")
    from parity.campaign.candidate import CandidateFailed, ImportUsage, import_in_process, lookup

    try:  # isolated: by name only, the worker imports it
        impl = lookup(args.op, args.impl)
        if args.no_isolate:
            impl = import_in_process(impl)
    except CandidateFailed as e:  # --no-isolate: its import exited
        return _bad(f"{args.impl}: {e}")
    except (KeyError, ImportUsage) as e:
        return _skip(f"cannot import {args.impl!r}: {e}")
    except Exception as e:  # parity's catalog does not import at this commit
        return _skip(f"cannot import {args.impl!r}: {type(e).__name__}: {e}")
    ok, why = impl.availability(device)
    if not ok:
        return _skip(f"{impl.key} cannot run on {device}: {why}")
    if args.max_examples is not None and args.max_examples < 1:
        return _skip("--max-examples must be >= 1")
    if bad_numbers("check", [("--timeout", args.timeout, 0)]) is not None:
        return _skip("--timeout must be finite and > 0")

    from parity.campaign.ledger import load_ledger

    try:
        ledger = load_ledger(args.ledger)
    except ValueError as e:
        return _skip(f"ledger: {e}")

    from parity.properties.variants import validate

    try:
        validate(spec, args.accept)
    except ValueError as e:  # a usage error: 125 here, as every other
        return _skip(f"--accept: {e}")
    accept = tuple(args.accept)
    if args.no_isolate:
        evaluator = InProcess(spec, impl, device, accept=accept)
    else:  # a crash, a hang or an exit of the kernel is a bad commit, not a dead harness
        evaluator = Isolated(spec, args.impl, device, timeout=args.timeout, accept=accept)
    try:
        evaluator.start()
        return _judge_commit(args, spec, impl, device, evaluator, ledger)
    except CandidateFailed as e:  # its import exited, crashed or hung in the worker
        return _bad(f"{args.impl}: {e}")
    except WorkerUsageError as e:
        return _skip(f"the worker cannot run {args.impl!r}: {e}")
    finally:
        evaluator.close()


def _judge_commit(args, spec, impl, device, evaluator, ledger) -> int:
    tested = unsupported = 0
    failures: list[str] = []
    errors: list[str] = []
    print(f"parity check: {impl.key} on {device}")
    if evaluator.accept:
        print(f"  accepted variants (--accept): {', '.join(evaluator.accept)}")

    if args.golden:
        from parity.tools.golden_cmd import GoldenError, load_golden

        try:
            manifest, cases = load_golden(args.golden, device)
        except GoldenError as e:
            return _skip(f"golden: {e}")
        if manifest.get("op") != spec.name:
            return _skip(f"golden folder holds {manifest.get('op')!r} cases, not {spec.name!r}")
        from parity.properties.case import dtype_name

        g_pass = g_fail = g_uns = g_xf = 0
        allowed = None if impl.dtypes is None else {dtype_name(d) for d in impl.dtypes}
        for i, (case, stored, meta, path) in enumerate(cases):
            if allowed is not None and meta.get("dtype") not in (None, *allowed):
                g_uns += 1  # a dtype the implementation is not registered for
                continue
            # the recorded outputs must still pass this commit's tolerance model, or the
            # golden cannot judge anything here
            sv = spec.compare(case, stored)
            if not sv:
                return _skip(
                    f"golden case {i} ({Path(path).name}): the recorded outputs fail this commit's "
                    f"tolerance model ({sv.message}): re-record the golden"
                )
            status, v = evaluator.evaluate_file("matches_reference", path)
            if status == "unsupported":
                g_uns += 1
                continue
            if status == "pass":
                entry = ledger.match(spec.name, impl.name, "matches_reference", case.meta)
                if entry is not None:
                    ledger.record(entry, False)
                g_pass += 1
                continue
            entry = ledger.match(spec.name, impl.name, "matches_reference", case.meta)
            if entry is not None:
                ledger.record(entry, True)
                g_xf += 1
                continue
            g_fail += 1
            if not failures:
                failures.append(
                    f"golden case {i} of {len(cases)} ({Path(path).name}): {case.describe()}: "
                    f"{v.message}\n    tolerance: {spec.tolerance}\n    rerun: parity replay "
                    f"{shlex.quote(str(path))} --impl {shlex.quote(args.impl)}"
                )
        tested += g_pass + g_fail + g_xf
        unsupported += g_uns
        xfs = f" {g_xf:4d} xfail" if g_xf else ""
        print(
            f"  {'golden':<18} {g_pass:4d} pass {g_fail:4d} fail {g_uns:4d} unsupported{xfs}"
            f"  ({len(cases)} cases)"
        )

    if not args.no_properties and not (failures and not args.keep_going):
        props = list(spec.all_properties())
        if args.properties:
            unknown = [p for p in args.properties if p not in props]
            if unknown:
                return _skip(f"unknown properties {unknown} (known: {', '.join(props)})")
            props = [p for p in props if p in args.properties]
        for prop in props:
            if failures and not args.keep_going:
                break
            t0 = time.perf_counter()
            try:
                st = _run_property(spec, prop, impl, evaluator, device, args, ledger)
            except Exception as e:  # Hypothesis or a spec broke, not the impl
                errors.append(f"{prop}: {type(e).__name__}: {e}")
                print(f"  {prop:<18} ERROR {type(e).__name__}: {e}")
                continue
            if st.stopped and not st.run and not (st.unsupported or st.not_applicable):
                if "no strategy" in st.stopped:
                    continue  # error_parity/nan_policy of an op without them
                errors.append(f"{prop}: {st.stopped}")
                print(f"  {prop:<18} ERROR {st.stopped}")
                continue
            xf = st.xfailed
            tested += st.run  # a known failure was tested: it is not "nothing tested"
            unsupported += st.unsupported
            if st.run - xf:
                verdict = "FAIL" if st.failure is not None or st.failed else "pass"
            else:
                verdict = "xfail" if xf else "NOT RUN"
            xfs = f" {xf:4d} xfail" if xf else ""
            print(
                f"  {prop:<18} {st.passed:4d} pass {st.failed:4d} fail {st.unsupported:4d} "
                f"unsupported{xfs}  {verdict}  ({time.perf_counter() - t0:.1f}s)"
            )
            if st.failure is not None:
                f = st.failure
                diag = f"\n    variants: {f['diagnosis']['text']}" if f.get("diagnosis") else ""
                failures.append(
                    f"{prop}: {f['message']}\n    case: {f['meta']}\n    reproduce: {f['repro']}"
                    + diag
                )

    xfailed = sum(e.xfailed for e in ledger.entries)
    if xfailed:
        print(f"  known failures (ledger {ledger.path}): {xfailed} cases xfail")
    # an XPASS is reported but does not make the commit bad: in a bisect, commits from before
    # a known bug was introduced pass its ledger entry, and must not be blamed for it
    for line in ledger.xpasses(spec.name, impl.name):
        print(f"  {line}")
    if failures:
        print(f"first failure: {failures[0]}")
        print(f"verdict: BAD ({len(failures)} failing checks, exit 1)")
        return BAD
    if errors:
        return _skip("the harness raised: " + "; ".join(errors))
    if tested == 0:
        return _skip(f"nothing was tested ({unsupported} cases unsupported)")
    print(f"verdict: GOOD ({tested} cases tested, {unsupported} unsupported, exit 0)")
    return GOOD


def _run_property(spec, prop, impl, evaluator, device, args, ledger):
    """The engine's driver under the bisect profile with a fixed seed; a failure that the
    ledger lists counts as xfail and the search goes on; a harness error raises."""
    from parity.campaign import drive

    return drive(
        spec,
        prop,
        evaluator,
        impl_name=impl.name,
        device=device,
        profile="bisect",
        max_examples=args.max_examples,
        seed=args.seed,
        shrink=args.shrink,  # a bisect needs the verdict, not the minimal case
        shrink_time=math.inf,
        ledger=ledger,
        dtypes=impl.dtypes,
        size=args.size,
        raise_errors=True,
    )
