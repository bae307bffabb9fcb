"""`parity replay`: re-evaluate a saved repro on the tensors saved with it.

    parity replay FILE [--impl IMPL] [--device cpu|cuda] [--timeout S] [--warmup N]
                  [--no-isolate] [--json]

FILE is a repro written by `parity fuzz` (the .json, its .safetensors, or the common stem; see
`parity.campaign.repro`). The saved property is evaluated again, and `matches_reference` too where
it applies (not on a bad-input case), on the tensors from the file (never regenerated), on the
saved device or `--device`.

A repro file is data, never code: its `impl` is information. Without `--impl`, replay runs the
saved implementation only when it is "reference" or registered in parity; for a file saved for
a `module:function`, the user names the module on the command line (`--impl mod:fn`, as the
file's "replay" line shows): replay never imports a module named in a file.

Reproducing: the case runs first in a fresh worker (its first call there). If that passes, the
same case is called again in the same worker up to `--warmup` times (default 4): a failure
that appears only then depends on history (a stateful or nondeterministic kernel) and replay
says so. A failure saved for this implementation that does not come back at all is
"did not reproduce" (exit 1), never a pass. Only a different `--impl` (the reference, a fixed
kernel) passing is a pass.

Exit codes: 0 every property evaluated holds on a different implementation than the one the
failure was saved for; 1 a property fails (or the kernel crashed or hung), or the saved failure
did not reproduce; 2 a bad file (malformed, tampered, hostile: "bad repro file: why") or usage
error; 3 nothing tested (NotImplementedError, or the implementation is unavailable here).
"""

from __future__ import annotations

import shlex

from parity.tools.common import accepted, add_accept, bad_numbers, print_json, usage_error

HISTORY = "the failure depends on history (stateful or nondeterministic kernel)"
FAILING = ("fail", "crash", "hang")


def add_parser(sub):
    p = sub.add_parser("replay", help="re-evaluate a saved repro file")
    p.add_argument("file")
    p.add_argument(
        "--impl",
        default=None,
        help="implementation to run (default: the saved one if it is registered in parity; a "
        "module:function is never imported from a file, name it here)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per call (hang)")
    p.add_argument(
        "--warmup",
        type=int,
        default=4,
        help="calls of the same case in the same worker after a first call that passes",
    )
    p.add_argument("--no-isolate", action="store_true", help="run the kernel in-process")
    p.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    add_accept(p)
    return p


def replay_properties(spec, r) -> list[str]:
    """The saved property, plus matches_reference where it applies (not on bad input)."""
    from parity.campaign.repro import ReproError

    if r.prop not in spec.all_properties():
        raise ReproError(
            f"bad repro file: {r.path}: property {r.prop!r} is not a property of {spec.name}"
        )
    if (r.prop == "error_parity") != ("invalid" in r.meta):  # bad input <-> error_parity
        raise ReproError(
            f"bad repro file: {r.path}: property {r.prop!r} does not fit its case (error_parity "
            f"and only it takes a bad-input case: meta 'invalid')"
        )
    props = [r.prop]
    if r.prop != "matches_reference" and "invalid" not in r.meta:
        props.append("matches_reference")
    return props


def _saved_impl_runnable(op: str, name: str) -> bool:
    """The file's impl may run without --impl: the reference or a name registered in parity
    (parity's own code). Anything else, `module:function` above all, is never imported."""
    if name == "reference":
        return True
    if ":" in name:
        return False
    from parity.catalog import load_all
    from parity.registry import registered_impl

    load_all()
    return registered_impl(op, name) is not None


def run(args) -> int:
    from parity.campaign import InProcess, Isolated, repro
    from parity.campaign.worker import WorkerUsageError

    bad = bad_numbers("replay", [("--timeout", args.timeout, 0)])
    if bad is None and (args.warmup < 0 or args.warmup > 1000):
        bad = usage_error("replay", f"--warmup must be in 0..1000, got {args.warmup}")
    if bad is not None:
        return bad
    try:
        r = repro.load(args.file)
    except repro.ReproError as e:
        return usage_error("replay", str(e))
    if args.impl is None and not _saved_impl_runnable(r.op, r.impl):
        return usage_error(
            "replay",
            f"{r.path} was saved for {r.impl!r}, which is not an implementation registered in "
            f"parity; parity never imports a module named in a file: pass "
            f"--impl {shlex.quote(r.impl)} to run it (or --impl reference)",
        )
    from parity.catalog import get_spec

    try:  # the file's property against its op, before anything is imported
        props = replay_properties(get_spec(r.op), r)
    except repro.ReproError as e:
        return usage_error("replay", str(e))
    impl_name = args.impl or r.impl
    from parity.campaign.candidate import CandidateFailed, resolve
    from parity.properties.tolerance import Verdict

    device = args.device or r.device
    try:  # isolated: a module:function is imported in the worker, not here
        got = resolve("replay", r.op, impl_name, device, isolate=not args.no_isolate)
    except CandidateFailed as e:  # --no-isolate: its import exited
        got = None
        results, status, calls = [(r.prop, e.kind, Verdict(False, str(e)))], e.kind, 1
    if isinstance(got, int):
        return got
    where = "in this process" if args.no_isolate else "in a fresh worker"
    accept = accepted("replay", get_spec(r.op), args.accept)
    if isinstance(accept, int):
        return accept
    diag: dict = {}  # property -> the variants that explain its failure
    if got is not None:
        spec, impl, device = got
        if args.no_isolate:
            ev = InProcess(spec, impl, device, accept=accept)
        else:
            ev = Isolated(spec, impl_name, device, timeout=args.timeout, accept=accept)
        try:
            results, status, calls = _calls(ev, r, props, args.warmup, diag)
        except CandidateFailed as e:  # its import exited, crashed or hung in the worker
            results, status, calls = [(r.prop, e.kind, Verdict(False, str(e)))], e.kind, 1
        except (repro.ReproError, WorkerUsageError) as e:
            return usage_error("replay", str(e))
        finally:
            ev.close()
    same = impl_name == r.impl
    outcome, note = _outcome(status, calls, where, same, r.impl)
    code = _code([s for _, s, _ in results], outcome)
    if args.json:
        from parity.campaign.wire import verdict_to_json

        rows = [{"property": p, "status": s, "verdict": verdict_to_json(v)} for p, s, v in results]
        print_json(
            {
                "file": str(r.path),
                "op": r.op,
                "impl": impl_name,
                "saved_impl": r.impl,
                "device": device,
                "calls": calls,
                "reproduced": outcome,
                "note": note,
                "results": rows,
                "exit_code": code,
                "accepted": list(accept),
                "diagnosis": diag,
            }
        )
        return code
    from parity.campaign.text import verdict_text

    print(f"repro {r.path}: {r.op} / {r.impl} / {r.prop} ({r.kind}), found on {r.device}")
    if r.message:
        print(f"  saved    {r.message.splitlines()[0][:300]}")
    for prop, s, w in results:
        print(verdict_text(r.op, impl_name, prop, device, s, w))
        if diag.get(prop):
            print(f"  variants {diag[prop]['text']}")
    if accept:
        print(f"  accepted variants (--accept): {', '.join(accept)} (judged under them)")
    if note:
        print(note)
    return code


def _calls(ev, r, props: list[str], warmup: int, diag: dict | None = None):
    """The saved property on a fresh evaluator, then again up to `warmup` times while it
    passes; then the other properties. (results, the saved property's last status, calls).
    `diag`: filled with {property: diagnosis} of the failures a named variant may explain."""
    from parity.campaign.engine import diagnosis

    def one(prop):
        s, w = ev.evaluate_file(prop, r.path)
        if s == "fail" and diag is not None:
            found = diagnosis(ev.spec, ev, prop)
            if found is not None:
                diag[prop] = found
        return s, w

    status, v = one(r.prop)
    calls = 1
    while status == "pass" and calls <= warmup:
        # the same case again in the same process: a failure that needs history
        status, v = one(r.prop)
        calls += 1
    results = [(r.prop, status, v)]
    if status not in ("crash", "hang"):
        for prop in props[1:]:
            s, w = one(prop)
            results.append((prop, s, w))
            if s in ("crash", "hang"):
                break
    return results, status, calls


def _outcome(status: str, calls: int, where: str, same: bool, saved: str) -> tuple[str, str]:
    """("first call" | "after warm-up" | "no" | "n/a", the line that says which)."""
    if status in FAILING:
        if calls == 1:
            return "first call", f"reproduced {where} (first call)"
        return "after warm-up", (
            f"did not reproduce {where}: reproduced only on call {calls} of the same case "
            f"({calls - 1} warm-up call{'s' if calls > 2 else ''} first): {HISTORY}"
        )
    if status != "pass":
        return "n/a", ""
    if same:
        more = calls - 1
        again = f" and in {more} more call{'s' * (more > 1)} of the same case" if more else ""
        return "no", f"did not reproduce: {HISTORY}: passed {where}{again}"
    return "n/a", f"passes here; the saved failure was on {saved}"


def _code(statuses: list[str], outcome: str) -> int:
    from parity.campaign.text import code_for

    code = code_for(statuses)
    if outcome == "no":  # a saved failure that does not come back is not a pass
        return 1
    return code
