"""`parity case`: rebuild one case from its description and evaluate one property on it.

    parity case --op OP --impl IMPL --property P [--device cpu|cuda] --meta JSON
                [--timeout S] [--no-isolate] [--json]

This is the one-line repro that `parity fuzz` (and `runner.repro_command`) prints: the tensors
are regenerated on the device from the description's seed. `--meta @FILE` reads the JSON from a
file. The kernel runs in a worker subprocess unless `--no-isolate` (the worker imports a
`module:function`, parity never does), so a crash, a hang or an exit at import or in the call
is reported as the candidate's failure (exit 1), not suffered.

Exit codes: 0 the property holds; 1 it fails (or the kernel crashed or hung); 2 usage error
(unknown op or property, IMPL not importable, a description `build` rejects); 3 not tested
(NotImplementedError for this case, a relation that does not apply, or the implementation is
unavailable here).
"""

from __future__ import annotations

from parity.tools.common import (
    accepted,
    add_accept,
    add_common,
    bad_numbers,
    print_json,
    read_meta,
    unknown_properties,
    usage_error,
)


def add_parser(sub):
    p = sub.add_parser("case", help="evaluate one property on one case description")
    add_common(p)
    p.add_argument("--property", required=True)
    p.add_argument("--meta", required=True, help="the case description (JSON, or @FILE)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    add_accept(p)
    return p


def run(args) -> int:
    from parity.campaign import InProcess, Isolated
    from parity.campaign.candidate import CandidateFailed, resolve
    from parity.campaign.engine import diagnosis
    from parity.campaign.worker import WorkerUsageError
    from parity.properties.tolerance import Verdict

    device = args.device or "cpu"
    try:
        got = resolve("case", args.op, args.impl, args.device, isolate=not args.no_isolate)
    except CandidateFailed as e:  # --no-isolate: its import exited
        return _report(args, args.op, device, e.kind, Verdict(False, str(e)))
    if isinstance(got, int):
        return got
    spec, impl, device = got
    bad = unknown_properties("case", spec, [args.property])
    bad = bad or bad_numbers("case", [("--timeout", args.timeout, 0)])
    if bad is not None:
        return bad
    from parity.campaign.engine import declared_accept

    # --accept, and the variants a registered implementation declares it follows
    accept = accepted("case", spec, [*args.accept, *declared_accept(spec.name, args.impl)])
    if isinstance(accept, int):
        return accept
    meta = read_meta("case", args.meta)  # @FILE read with limits: a FIFO is no hang
    if isinstance(meta, int):
        return meta
    if args.no_isolate:
        ev = InProcess(spec, impl, device, accept=accept)
    else:
        ev = Isolated(spec, args.impl, device, timeout=args.timeout, accept=accept)
    found = None
    try:
        ev.start()
        status, v = ev.evaluate(args.property, meta)
        if status == "fail":
            found = diagnosis(spec, ev, args.property)
    except CandidateFailed as e:  # its import exited, crashed or hung in the worker
        status, v = e.kind, Verdict(False, str(e))
    except WorkerUsageError as e:
        return usage_error("case", str(e))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        return usage_error(
            "case", f"--meta does not describe a {spec.name} case: {type(e).__name__}: {e}"
        )
    finally:
        ev.close()
    return _report(args, spec.name, device, status, v, accept=accept, diagnosis=found)


def _report(args, op: str, device: str, status: str, v, *, accept=(), diagnosis=None) -> int:
    from parity.campaign.text import code_for, verdict_text
    from parity.campaign.wire import verdict_to_json

    code = code_for([status])
    if args.json:
        print_json(
            {
                "op": op,
                "impl": args.impl,
                "property": args.property,
                "device": device,
                "status": status,
                "verdict": verdict_to_json(v),
                "exit_code": code,
                "accepted": list(accept),
                "diagnosis": diagnosis,
            }
        )
    else:
        print(verdict_text(op, args.impl, args.property, device, status, v))
        if diagnosis:
            print(f"  variants {diagnosis['text']}")
        if accept:
            print(f"  accepted variants (--accept): {', '.join(accept)} (judged under them)")
    return code
