"""`parity suite`: every property of every op, against every implementation available here.

The main job: a summary table per (op, implementation) with examples run, unsupported cases,
failures and time, and a count of what did not run (and why). Exit 0 all passed, 1 a failure.
"""

from __future__ import annotations

import json
import time


def add_parser(sub):
    p = sub.add_parser("suite", help="all properties, all ops, all available implementations")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help="default: cuda when a GPU is visible, else cpu",
    )
    p.add_argument("--op", action="append", default=[], help="restrict to these ops")
    p.add_argument(
        "--impl", action="append", default=[], help="these impl names, or module:function"
    )
    p.add_argument("--backend", action="append", default=[], help="restrict to these backends")
    p.add_argument("--profile", default="pr", choices=["pr", "nightly", "bisect"])
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    return p


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from parity.campaign import run_property
    from parity.catalog import get_spec, impls
    from parity.tools.common import add_sys_path_cwd, default_device, resolve, usage_error

    device = default_device(args.device)
    every = impls(include_reference=True)
    selected = [
        i
        for i in every
        if (not args.op or i.op in args.op)
        and (not args.impl or i.name in args.impl)
        and (not args.backend or i.backend in args.backend)
    ]
    # module:function names an external candidate, run for each --op; a name or filter that
    # selects nothing is a usage error, never an empty run that passes
    external = [n for n in args.impl if ":" in n and n not in {i.name for i in every}]
    if external and not args.op:
        return usage_error("suite", "--impl module:function needs --op OP")
    add_sys_path_cwd()
    for name in external:
        for op in args.op:
            got = resolve("suite", op, name, device)
            if got == 2:
                return 2
            if not isinstance(got, int):
                selected.append(got[1])
    if not selected and not external:
        return usage_error("suite", "the filters (--op/--impl/--backend) select nothing")
    console = Console(stderr=True)
    rows, not_run, failures = [], [], []
    t_all = time.perf_counter()
    for impl in selected:
        ok, why = impl.availability(device)
        if not ok:
            not_run.append((impl.key, why))
            continue
        spec = get_spec(impl.op)
        agg = {
            "op": impl.op,
            "impl": impl.name,
            "device": device,
            "examples": 0,
            "unsupported": 0,
            "failed": [],
            "not_run": [],
            "seconds": 0.0,
        }
        for prop in spec.all_properties():
            console.print(f"[dim]{impl.key} {prop} ...[/dim]", end="\r")
            st = run_property(
                spec,
                prop,
                impl.fn,
                impl_name=impl.name,
                device=device,
                dtypes=impl.dtypes,
                profile=args.profile,
                max_examples=args.max_examples,
            )
            agg["examples"] += st.run
            agg["unsupported"] += st.unsupported
            agg["seconds"] += st.seconds
            if st.failure:
                agg["failed"].append(prop)
                failures.append((impl.key, prop, st.failure))
            elif not st.tested:
                agg["not_run"].append(prop)
        rows.append(agg)
    elapsed = time.perf_counter() - t_all

    for key, prop, f in failures:
        console.print(f"[red]FAIL[/red] {key} {prop}: {f['message']}\n  reproduce: {f['repro']}")
    table = Table(title=f"parity suite on {device} ({args.profile} profile, {elapsed:.0f} s)")
    for col in ("op", "impl", "examples", "ex/s", "unsupported", "verdict"):
        table.add_column(col, justify="right" if col in ("examples", "ex/s") else "left")
    for r in rows:
        verdict = (
            ("FAIL: " + ", ".join(r["failed"]))
            if r["failed"]
            else (("pass; NOT RUN: " + ", ".join(r["not_run"])) if r["not_run"] else "pass")
        )
        rate = r["examples"] / r["seconds"] if r["seconds"] else 0.0
        table.add_row(
            r["op"], r["impl"], str(r["examples"]), f"{rate:.1f}", str(r["unsupported"]), verdict
        )
    Console().print(table)
    print(f"{len(rows)} implementations ran; {len(not_run)} did NOT RUN here:")
    for key, why in not_run:
        print(f"  NOT RUN  {key}: {why}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "device": device,
                    "rows": rows,
                    "not_run": [{"impl": k, "reason": w} for k, w in not_run],
                },
                fh,
                indent=1,
            )
    return 1 if failures else 0
