"""`parity case`: rebuild one case from its description and evaluate one property on it.

    parity case --op OP --impl IMPL --property P [--device cpu|cuda] --meta JSON
                [--timeout S] [--no-isolate] [--json]

This is the one-line repro that `parity fuzz` (and `runner.repro_command`) prints: the tensors
are regenerated on the device from the description's seed. `--meta @FILE` reads the JSON from a
file. The kernel runs in a worker subprocess unless `--no-isolate`, so a crash or a hang is
reported, not suffered.

Exit codes: 0 the property holds; 1 it fails (or the kernel crashed or hung); 2 usage error
(unknown op or property, IMPL not importable, a description `build` rejects); 3 not tested
(NotImplementedError for this case, a relation that does not apply, or the implementation is
unavailable here).
"""

from __future__ import annotations

import json
import math
import sys


def add_parser(sub):
    from parity.tools.fuzz_cmd import add_common

    p = sub.add_parser("case", help="evaluate one property on one case description")
    add_common(p)
    p.add_argument("--property", required=True)
    p.add_argument("--meta", required=True, help="the case description (JSON, or @FILE)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    return p


def print_verdict(op, impl, prop, device, status, v, *, file=None) -> None:
    out = file or sys.stdout
    word = {
        "pass": "PASS",
        "fail": "FAIL",
        "crash": "CRASH",
        "hang": "HANG",
        "error": "ERROR",
        "unsupported": "UNSUPPORTED",
        "n/a": "N/A",
    }.get(status, status.upper())
    print(f"{word} {op} / {impl} / {prop} on {device}", file=out)
    if v is None:
        return
    if v.message:
        lines = v.message.splitlines()
        print(f"  {'reason' if status == 'unsupported' else 'error'}    {lines[0]}", file=out)
        for ln in lines[1:]:
            print(f"           {ln}", file=out)
    if status == "fail" and isinstance(v.ratio, (int, float)) and math.isfinite(v.ratio):
        if v.ratio > 0:
            print(f"  error/tolerance  {v.ratio:.4g}", file=out)
    elif status == "pass" and v.ratio:
        print(f"  worst error/tolerance  {v.ratio:.4g}", file=out)
    if v.worst and status != "pass":
        print("  worst elements (output, index, got, want, tol):", file=out)
        for row in list(v.worst)[:5]:
            print(
                "    " + "  ".join(f"{x:.9g}" if isinstance(x, float) else str(x) for x in row),
                file=out,
            )


def code_for(statuses: list[str]) -> int:
    if any(s in ("fail", "crash", "hang", "error") for s in statuses):
        return 1
    if not any(s == "pass" for s in statuses):
        return 3
    return 0


def run(args) -> int:
    from parity.tools.fuzz_cmd import _jsonable, resolve, usage_error
    from parity.tools.worker import WorkerUsageError, verdict_to_json

    got = resolve("case", args.op, args.impl, args.device)
    if isinstance(got, int):
        return got
    spec, impl, device = got
    if args.property not in spec.all_properties():
        return usage_error(
            "case",
            f"unknown property {args.property!r} for {spec.name}; properties: "
            f"{', '.join(spec.all_properties())}",
        )
    text = args.meta
    try:
        if text.startswith("@"):
            with open(text[1:], encoding="utf-8") as f:
                text = f.read()
        meta = json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        return usage_error("case", f"--meta: not valid JSON: {e}")
    if not isinstance(meta, dict):
        return usage_error("case", f"--meta: expected a JSON object, got {type(meta).__name__}")
    if args.no_isolate:
        from parity.tools.fuzz_cmd import InProcess

        ev = InProcess(spec, impl, device)
    else:
        from parity.tools.worker import Isolated

        ev = Isolated(spec.name, args.impl, device, timeout=args.timeout)
    try:
        status, v = ev.evaluate(args.property, meta)
    except WorkerUsageError as e:
        return usage_error("case", str(e))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        return usage_error(
            "case", f"--meta does not describe a {spec.name} case: {type(e).__name__}: {e}"
        )
    finally:
        ev.close()
    code = code_for([status])
    if args.json:
        doc = {
            "op": spec.name,
            "impl": args.impl,
            "property": args.property,
            "device": device,
            "status": status,
            "verdict": verdict_to_json(v),
            "exit_code": code,
        }
        print(json.dumps(_jsonable(doc), indent=1))
    else:
        print_verdict(spec.name, args.impl, args.property, device, status, v)
    return code
