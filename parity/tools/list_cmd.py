"""`parity list [--json] [--device cpu|cuda]`: every op and implementation, with availability."""

from __future__ import annotations

import json


def add_parser(sub):
    p = sub.add_parser("list", help="ops and implementations, with availability here")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    return p


def run(args) -> int:
    from parity.catalog import listing

    rows = listing(args.device)
    if args.json:
        from parity.tools.common import json_out

        print(json.dumps(rows, indent=1), file=json_out())
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="parity: ops and implementations")
    for col in ("op", "impl", "backend", "available", "reason"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["op"],
            r["impl"]
            + (" (ref)" if r["reference"] else "")
            + (f" (under {', '.join(r['accept'])})" if r["accept"] else ""),
            r["backend"],
            "yes" if r["available"] else "no",
            r["reason"],
        )
    Console().print(t)
    return 0
