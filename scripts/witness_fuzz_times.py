"""`parity fuzz` against every witness of the test suite: exit code and time to the verdict.

    python scripts/witness_fuzz_times.py [--jobs 2] [--json out.json]

Each witness is fuzzed on the property it witnesses (`--property P --no-isolate`, pr profile,
up to its max_examples); it must exit 1. Prints the median and the slowest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(w) -> dict:
    mod = w.fn.__module__
    cmd = [
        sys.executable,
        "-m",
        "parity",
        "fuzz",
        "--op",
        w.op,
        "--impl",
        f"{mod}:{w.fn.__name__}",
        "--property",
        w.prop,
        "--no-isolate",
        "--json",
        "--max-examples",
        str(w.max_examples),
        "--shrink-time",
        "5",
        "--out",
        str(ROOT / "parity-repros" / "witnesses"),
    ]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return {"witness": w.id, "exit": p.returncode, "seconds": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--op", action="append", default=[], help="only these ops' witnesses")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.witnesses import load

    ws = [w for w in load() if not args.op or w.op in args.op]
    with ThreadPoolExecutor(args.jobs) as ex:
        rows = list(ex.map(one, ws))
    secs = [r["seconds"] for r in rows]
    missed = [r for r in rows if r["exit"] != 1]
    for r in sorted(rows, key=lambda r: -r["seconds"])[:5]:
        print(f"slow: {r['witness']} {r['seconds']:.1f} s (exit {r['exit']})")
    for r in missed:
        print(f"NOT CAUGHT (exit {r['exit']}): {r['witness']}")
    print(
        f"{len(rows)} witnesses: {len(rows) - len(missed)} exit 1; median "
        f"{statistics.median(secs):.1f} s, max {max(secs):.1f} s (wall per fuzz command, "
        f"{args.jobs} at a time)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
