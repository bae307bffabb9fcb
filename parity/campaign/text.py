"""The text of verdicts and failures, as the CLI prints them and `Report.text()` returns them."""

from __future__ import annotations

import json
import math

WORDS = {
    "pass": "PASS",
    "fail": "FAIL",
    "crash": "CRASH",
    "hang": "HANG",
    "error": "ERROR",
    "unsupported": "UNSUPPORTED",
    "n/a": "N/A",
}


def _fmt(x) -> str:
    return f"{x:.9g}" if isinstance(x, float) else str(x)


def failure_text(st) -> str:
    """A property's shrunk failure: case, error against the tolerance, worst elements, the
    repro file and the rerun line."""
    f = st.failure
    kind = f.get("kind", "fail")
    title = {"crash": "CRASH", "hang": "HANG", "error": "ERROR"}.get(kind, "FAIL")
    shrunk = " (shrunk)" if f.get("shrunk") else ""
    out = [f"{title} {st.op} / {st.impl} / {st.prop} on {st.device}: counterexample{shrunk}"]
    if st.seconds_to_failure is not None:
        out.append(
            f"  found    after {st.cases_to_failure} case(s) in {st.seconds_to_failure:.2f} s; "
            f"shrunk in {max(0.0, st.seconds - st.seconds_to_failure):.2f} s"
        )
    if f.get("describe"):
        out.append(f"  case     {f['describe']}")
    if f.get("meta") is not None:
        out.append(f"  meta     {json.dumps(f['meta'], sort_keys=True)}")
    lines = str(f.get("message", "")).splitlines() or [""]
    out.append(f"  error    {lines[0]}")
    out += [f"           {ln}" for ln in lines[1:]]
    ratio = f.get("ratio")
    if isinstance(ratio, (int, float)) and kind == "fail" and math.isfinite(ratio) and ratio > 0:
        out.append(f"  error/tolerance  {ratio:.4g}")
    if f.get("tolerance") and kind == "fail":  # the model the error was judged against
        out.append(f"  tolerance {f['tolerance']}  (parity explain {st.op})")
    worst = f.get("worst") or []
    if worst:
        out.append("  worst elements (output, index, got, want, tol):")
        out += ["    " + "  ".join(_fmt(x) for x in row) for row in worst[:5]]
    if f.get("diagnosis"):
        out.append(f"  variants {f['diagnosis'].get('text', '')}")
    if f.get("repro_file"):
        out.append(f"  saved    {f['repro_file']}")
        out.append(f"  replay   parity replay {f['repro_file']}")
    if f.get("repro"):
        out.append(f"  rerun    {f['repro']}")
    after = f.get("after")
    if after:  # the crash needs an earlier case in the same process
        out.append("  crashes after case A, not alone; case A:")
        out.append(f"  meta A   {json.dumps(after.get('meta'), sort_keys=True)}")
        out.append(f"  rerun A  {after.get('repro', '')}")
        out.append("  (run case A, then the case above, in one process to see the crash)")
    return "\n".join(out) + "\n"


def verdict_text(op, impl, prop, device, status, v) -> str:
    """One case's verdict (`parity case`, `parity replay`)."""
    out = [f"{WORDS.get(status, status.upper())} {op} / {impl} / {prop} on {device}"]
    if v is None:
        return "\n".join(out)
    if v.message:
        lines = v.message.splitlines()
        out.append(f"  {'reason' if status == 'unsupported' else 'error'}    {lines[0]}")
        out += [f"           {ln}" for ln in lines[1:]]
    if status == "fail" and isinstance(v.ratio, (int, float)) and math.isfinite(v.ratio):
        if v.ratio > 0:
            out.append(f"  error/tolerance  {v.ratio:.4g}")
    elif status == "pass" and v.ratio:
        out.append(f"  worst error/tolerance  {v.ratio:.4g}")
    if v.worst and status != "pass":
        out.append("  worst elements (output, index, got, want, tol):")
        out += ["    " + "  ".join(_fmt(x) for x in row) for row in list(v.worst)[:5]]
    return "\n".join(out)


def code_for(statuses: list[str]) -> int:
    """Exit code of single-case commands: 1 a failure, 3 nothing passed, else 0."""
    if any(s in ("fail", "crash", "hang", "error") for s in statuses):
        return 1
    if not any(s == "pass" for s in statuses):
        return 3
    return 0
