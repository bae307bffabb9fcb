"""`parity replay`: re-evaluate a saved repro on the tensors saved with it.

    parity replay FILE [--impl IMPL] [--device cpu|cuda] [--timeout S] [--no-isolate] [--json]

FILE is a repro written by `parity fuzz` (the .json, its .safetensors, or the common stem; see
`parity.tools.repro`). The saved property is evaluated again, and `matches_reference` too where
it applies (not on a bad-input case), on the saved implementation or on `--impl` (e.g. the
reference, or the fixed kernel), on the saved device or `--device`. The tensors come from the
file, never regenerated. The kernel runs in a worker subprocess unless `--no-isolate`.

Exit codes: 0 every property evaluated holds; 1 one fails (or the kernel crashed or hung);
2 a bad file (malformed, tampered: sha256 mismatch) or usage error; 3 nothing tested (the
implementation raised NotImplementedError, or is unavailable here).
"""

from __future__ import annotations

import json
import os
import sys


def add_parser(sub):
    p = sub.add_parser("replay", help="re-evaluate a saved repro file")
    p.add_argument("file")
    p.add_argument("--impl", default=None, help="default: the implementation it was saved for")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds (hang)")
    p.add_argument("--no-isolate", action="store_true", help="run the kernel in-process")
    p.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    return p


def run(args) -> int:
    from parity.tools import repro
    from parity.tools.case_cmd import code_for, print_verdict
    from parity.tools.fuzz_cmd import _jsonable, resolve, usage_error
    from parity.tools.worker import (
        WorkerUsageError,
        replay_in_process,
        replay_isolated,
        replay_properties,
        verdict_to_json,
    )

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        r = repro.load(args.file)
    except repro.ReproError as e:
        return usage_error("replay", str(e))
    impl_name = args.impl or r.impl
    got = resolve("replay", r.op, impl_name, args.device or r.device)
    if isinstance(got, int):
        return got
    spec, _impl, device = got
    try:
        replay_properties(spec, r)
    except repro.ReproError as e:
        return usage_error("replay", str(e))
    try:
        if args.no_isolate:
            results = replay_in_process(r.path, impl_name, device)
        else:
            results = replay_isolated(r.path, impl_name, device, timeout=args.timeout)
    except (repro.ReproError, WorkerUsageError) as e:
        return usage_error("replay", str(e))
    code = code_for([s for _, s, _ in results])
    if args.json:
        doc = {
            "file": str(r.path),
            "op": r.op,
            "impl": impl_name,
            "saved_impl": r.impl,
            "device": device,
            "results": [
                {"property": p, "status": s, "verdict": verdict_to_json(v)} for p, s, v in results
            ],
            "exit_code": code,
        }
        print(json.dumps(_jsonable(doc), indent=1))
        return code
    print(f"repro {r.path}: {r.op} / {r.impl} / {r.prop} ({r.kind}), found on {r.device}")
    if r.message:
        print(f"  saved    {r.message.splitlines()[0]}")
    for prop, status, v in results:
        print_verdict(r.op, impl_name, prop if prop != "*" else r.prop, device, status, v)
    return code
