"""`parity replay`: re-evaluate a saved repro on the tensors saved with it.

    parity replay FILE [--impl IMPL] [--device cpu|cuda] [--timeout S] [--no-isolate] [--json]

FILE is a repro written by `parity fuzz` (the .json, its .safetensors, or the common stem; see
`parity.campaign.repro`). The saved property is evaluated again, and `matches_reference` too where
it applies (not on a bad-input case), on the saved implementation or on `--impl` (e.g. the
reference, or the fixed kernel), on the saved device or `--device`. The tensors come from the
file, never regenerated. The kernel runs in a worker subprocess unless `--no-isolate`.

Exit codes: 0 every property evaluated holds; 1 one fails (or the kernel crashed or hung);
2 a bad file (malformed, tampered: sha256 mismatch) or usage error; 3 nothing tested (the
implementation raised NotImplementedError, or is unavailable here).
"""

from __future__ import annotations

from parity.tools.common import bad_numbers, print_json, resolve, usage_error


def add_parser(sub):
    p = sub.add_parser("replay", help="re-evaluate a saved repro file")
    p.add_argument("file")
    p.add_argument("--impl", default=None, help="default: the implementation it was saved for")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds (hang)")
    p.add_argument("--no-isolate", action="store_true", help="run the kernel in-process")
    p.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    return p


def replay_properties(spec, r) -> list[str]:
    """The saved property, plus matches_reference where it applies (not on bad input)."""
    from parity.campaign.repro import ReproError

    if r.prop not in spec.all_properties():
        raise ReproError(f"{r.path}: property {r.prop!r} is not a property of {spec.name}")
    props = [r.prop]
    if r.prop != "matches_reference" and "invalid" not in r.meta:
        props.append("matches_reference")
    return props


def run(args) -> int:
    from parity.campaign import InProcess, Isolated, repro
    from parity.campaign.text import code_for, verdict_text
    from parity.campaign.wire import verdict_to_json
    from parity.campaign.worker import WorkerUsageError

    bad = bad_numbers("replay", [("--timeout", args.timeout, 0)])
    if bad is not None:
        return bad
    try:
        r = repro.load(args.file)
    except repro.ReproError as e:
        return usage_error("replay", str(e))
    impl_name = args.impl or r.impl
    got = resolve("replay", r.op, impl_name, args.device or r.device)
    if isinstance(got, int):
        return got
    spec, impl, device = got
    try:
        props = replay_properties(spec, r)
    except repro.ReproError as e:
        return usage_error("replay", str(e))
    if args.no_isolate:
        ev = InProcess(spec, impl, device)
    else:
        ev = Isolated(spec, impl_name, device, timeout=args.timeout)
    results = []
    try:
        for prop in props:
            status, v = ev.evaluate_file(prop, r.path)
            results.append((prop, status, v))
            if status in ("crash", "hang"):
                break
    except (repro.ReproError, WorkerUsageError) as e:
        return usage_error("replay", str(e))
    finally:
        ev.close()
    code = code_for([s for _, s, _ in results])
    if args.json:
        rows = [{"property": p, "status": s, "verdict": verdict_to_json(v)} for p, s, v in results]
        print_json(
            {
                "file": str(r.path),
                "op": r.op,
                "impl": impl_name,
                "saved_impl": r.impl,
                "device": device,
                "results": rows,
                "exit_code": code,
            }
        )
        return code
    print(f"repro {r.path}: {r.op} / {r.impl} / {r.prop} ({r.kind}), found on {r.device}")
    if r.message:
        print(f"  saved    {r.message.splitlines()[0]}")
    for prop, status, v in results:
        print(verdict_text(r.op, impl_name, prop, device, status, v))
    return code
