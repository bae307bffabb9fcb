"""`parity fuzz`: a Hypothesis campaign of every property of one op against one implementation.

    parity fuzz --op OP --impl IMPL [--device cpu|cuda] [--max-examples N] [--max-time S]
                [--seed S] [--profile pr|nightly|bisect] [--json] [--property P ...]
                [--workers N] [--timeout S] [--shrink-time S] [--out DIR] [--ledger FILE]
                [--no-isolate]

IMPL: a registered name, "reference", or `module:function` importable from the current folder
or PYTHONPATH; parity itself never imports a `module:function` (only its syntax is checked
here): the worker does, so a module that exits, segfaults or hangs at import is a failing
candidate ("import crashed" / "import hung", exit 1). The properties of the op
(`OpSpec.all_properties()`, or `--property`) run interleaved under the profile's settings:
rounds of 8, 16, 32 ... examples of each property in turn, so a fault only a late property
sees is found as early as any other (`--fail-fast` stops at the first counterexample); a
failure is shrunk (at most `--shrink-time` seconds),
printed with its error against the tolerance and the worst elements, saved as a repro
(`parity-repros/` or `--out`, see `parity.campaign.repro`) and given as a one-line `parity case`
command. `--max-time` is a wall-clock budget for testing (counted once the worker is up)
shared by the rounds; no case is drawn once it is spent, shrinking stops at it, and a case
still running then (a hanging kernel) is cut off: the campaign ends within the budget plus a
small margin.

Crash isolation (default; `--no-isolate` runs in-process): the candidate runs in a worker
process (`parity.campaign.worker`, forked from a forkserver that has imported torch) that
returns its outputs, judged here (the same plan and judge in-process); a
segfault/abort or a CUDA error is a "crash", a case past `--timeout` seconds a "hang"; both are
failing cases, shrunk like any other (each step on a fresh worker), saved with their input, and
the campaign goes on with a fresh worker. After a crash the case is re-run alone in a fresh
worker; if it passes alone, the cases before it are replayed to find the one that poisons the
process ("crashes after case A, not alone", with both rerun lines; such a crash is not shrunk).
A crash report shows the candidate's own innermost frames. What the kernel prints goes to the
worker's log (`--no-isolate`: to stderr), never into stdout or `--json`; kernel text in
reports and repro files is cut. Every worker's process group (the kernel's own children
included) is killed after a crash, a hang, at the end and when parity gets SIGTERM or SIGINT.
`--workers N` (at most the GPUs on cuda, the cores on the CPU) runs N campaign processes
(seeds base..base+N-1, max_examples/N each, one GPU each on cuda), each running the candidate
in its own isolated worker and judging there, never in the candidate's process; their stats
are merged. A `--ledger` entry turns a matching failure into "xfail" (`parity.campaign.ledger`).

Exit codes: 0 no counterexample within the budget; 1 counterexample (or crash, hang, or an
XPASS of a ledger entry); 2 usage error (unknown op or property, IMPL not importable or not
callable, bad ledger); 3 nothing could be tested (every drawn case unsupported, or the
implementation is unavailable here).

Programmatic use: `parity.campaign` (`drive`, `run_campaign`, `Isolated`, `InProcess`,
`Stats`, `Report`) or `parity.check`.
"""

from __future__ import annotations

import os
import sys
import time

from parity.tools.common import (
    accepted,
    add_accept,
    add_common,
    bad_numbers,
    print_json,
    unknown_properties,
    usage_error,
)

# --- the command ---------------------------------------------------------------------------


def add_parser(sub):
    p = sub.add_parser(
        "fuzz",
        help="Hypothesis campaign of every property of one op against one implementation",
        description=__doc__.split("\n\n")[0],
    )
    add_common(p)
    p.add_argument("--max-examples", type=int, default=None, help="per property")
    p.add_argument("--max-time", type=float, default=None, help="wall-clock budget, seconds")
    p.add_argument("--seed", type=int, default=None, help="Hypothesis seed")
    p.add_argument(
        "--profile",
        default="pr",
        choices=["pr", "nightly", "bisect", "parity-pr", "parity-nightly", "parity-bisect"],
        help="parity's Hypothesis profile (pr = parity-pr, ...)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--property", dest="properties", action="extend", nargs="+", default=[], metavar="P"
    )
    p.add_argument(
        "--skip-property",
        dest="skip_properties",
        action="extend",
        nargs="+",
        default=[],
        metavar="P",
        help="properties not to run (listed as skipped in the summary)",
    )
    p.add_argument("--fail-fast", action="store_true", help="stop at the first property that fails")
    p.add_argument("--workers", type=int, default=1, help="parallel campaign processes")
    p.add_argument("--shrink-time", type=float, default=60.0, help="cap on shrinking, seconds")
    p.add_argument("--out", default=None, help="repro folder (default parity-repros/)")
    p.add_argument("--ledger", default=None, help="known-failure ledger (JSON or TOML)")
    add_accept(p)
    return p


def run(args) -> int:
    from parity.campaign.candidate import CandidateFailed, resolve

    try:
        got = resolve("fuzz", args.op, args.impl, args.device, isolate=not args.no_isolate)
    except CandidateFailed as e:  # --no-isolate: its import exited
        return _import_failed(args, args.device or "cpu", e)
    if isinstance(got, int):
        return got
    spec, impl, device = got
    props = list(dict.fromkeys(args.properties)) or list(spec.all_properties())
    bad = unknown_properties("fuzz", spec, props + args.skip_properties)
    if bad is None:
        props = [p for p in props if p not in args.skip_properties]
        if not props:
            bad = usage_error("fuzz", "--skip-property leaves no property to run")
    bad = bad or bad_numbers(
        "fuzz",
        (
            ("--workers", args.workers, 1),
            ("--max-examples", args.max_examples, 1),
            ("--timeout", args.timeout, 0),
            ("--max-time", args.max_time, 0),
            ("--shrink-time", args.shrink_time, 0),
        ),
    )
    if bad is not None:
        return bad
    from parity.campaign.engine import declared_accept

    # --accept, and the variants a registered implementation declares it follows
    accept = accepted("fuzz", spec, [*args.accept, *declared_accept(spec.name, args.impl)])
    if isinstance(accept, int):
        return accept
    from parity.campaign.ledger import DEFAULT_FILE, load_ledger

    try:
        ledger = load_ledger(args.ledger)
    except ValueError as e:
        return usage_error("fuzz", f"ledger: {e}")
    ledger_path = args.ledger or (DEFAULT_FILE if ledger else None)
    out_dir = args.out or "parity-repros"
    max_examples = args.max_examples
    if max_examples is None and args.max_time is not None:
        max_examples = 1_000_000  # the clock is the limit
    from hypothesis import settings

    from parity.campaign import InProcess, Isolated, exit_code, run_campaign, run_parallel
    from parity.campaign.engine import profile_name
    from parity.campaign.text import failure_text
    from parity.campaign.worker import WorkerUsageError

    try:
        args.profile = profile_name(args.profile)
    except ValueError as e:
        return usage_error("fuzz", str(e))
    per_prop = max_examples or settings.get_profile(args.profile).max_examples
    from parity.campaign.engine import max_workers

    if args.workers > max_workers(device):
        print(
            f"parity fuzz: --workers {args.workers} bounded to {max_workers(device)} "
            f"({'GPUs' if device.startswith('cuda') else 'CPU cores'} here)",
            file=sys.stderr,
        )
        args.workers = max_workers(device)
    seed = args.seed
    if args.workers > 1 and seed is None:
        derand = settings.get_profile(args.profile).derandomize
        seed = 0 if derand else int.from_bytes(os.urandom(4), "little")

    progress = _Progress(
        enabled=not args.json and sys.stderr.isatty(),
        total=per_prop * len(props) if args.max_time is None else None,
        label=f"{spec.name} / {args.impl}",
    )
    t0 = time.monotonic()
    results = []
    try:
        with progress:
            if args.workers > 1:
                if not args.no_isolate:  # an import that fails or breaks: said once, here
                    probe = Isolated(spec, args.impl, device, timeout=args.timeout)
                    try:
                        probe.start()
                    finally:
                        probe.close()
                results = run_parallel(
                    spec,
                    props,
                    n=args.workers,
                    impl_name=args.impl,
                    device=device,
                    profile=args.profile,
                    max_examples=max_examples or per_prop,
                    seed=seed,
                    max_time=args.max_time,
                    shrink_time=args.shrink_time,
                    timeout=args.timeout,
                    ledger=ledger if ledger else None,
                    ledger_path=ledger_path,
                    out_dir=out_dir,
                    on_example=lambda prop, status: progress.example(prop, status),
                    isolate=not args.no_isolate,
                    accept=accept,
                    fail_fast=args.fail_fast,
                )
            else:
                if args.no_isolate:
                    evaluator = InProcess(spec, impl, device, accept=accept)
                else:
                    evaluator = Isolated(
                        spec, args.impl, device, timeout=args.timeout, accept=accept
                    )
                try:
                    evaluator.start()  # before the clock: --max-time measures testing
                    results = run_campaign(
                        spec,
                        props,
                        evaluator,
                        max_time=args.max_time,
                        fail_fast=args.fail_fast,
                        impl_name=args.impl,
                        device=device,
                        profile=args.profile,
                        max_examples=max_examples,
                        seed=seed,
                        shrink_time=args.shrink_time,
                        ledger=ledger if ledger else None,
                        out_dir=out_dir,
                        dtypes=impl.dtypes,
                        on_prop_start=progress.prop_start,
                        on_example=lambda st, status: progress.example(st.prop, status),
                        on_prop_done=lambda st: progress.prop_done(st.prop, per_prop),
                    )
                finally:
                    evaluator.close()
    except KeyboardInterrupt:
        print("parity fuzz: interrupted", file=sys.stderr)
        return 130
    except WorkerUsageError as e:
        return usage_error("fuzz", str(e))
    except CandidateFailed as e:  # its import exited, crashed or hung in the worker
        return _import_failed(args, device, e)
    seconds = time.monotonic() - t0
    xpasses = ledger.xpasses(spec.name, args.impl) if ledger else []
    unmatched = ledger.unmatched(spec.name, args.impl) if ledger else []
    for line in unmatched:  # reported, not a failure: the run may not have drawn such a case
        print(f"parity fuzz: {line}", file=sys.stderr)
    code = exit_code(results, xpasses)
    repro_files = [f for st in results for f in st.repro_files]
    if args.json:
        doc = {
            "op": spec.name,
            "impl": args.impl,
            "device": device,
            "exit_code": code,
            "seconds": seconds,
            "properties": [st.as_dict() for st in results],
            "repro_files": repro_files,
            "xpass": xpasses,
            "ledger": ledger.summary() if ledger else [],
            "ledger_unmatched": unmatched,
            "skipped": args.skip_properties,
            "accepted": list(accept),
        }
        print_json(doc)
        return code
    for st in results:
        if st.failure is not None:
            print(failure_text(st))
    print_summary(spec.name, args.impl, device, results, seconds)
    if args.skip_properties:
        print(f"skipped (--skip-property): {', '.join(args.skip_properties)}")
    if accept:
        print(
            f"accepted variants (--accept, or declared by the implementation): "
            f"{', '.join(accept)} (judged under them)"
        )
    for line in xpasses:
        print(line)
    if code == 3:
        why = next((st.last_unsupported for st in results if st.last_unsupported), "")
        print(
            f"NOT RUN: {args.impl} raised NotImplementedError for every case drawn"
            + (f" (last: {why})" if why else "")
            + "; nothing was tested"
        )
    return code


def _import_failed(args, device: str, e) -> int:
    """The candidate broke its process while importing: a failing candidate (exit 1)."""
    title = "HANG" if e.kind == "hang" else "CRASH"
    if args.json:
        print_json(
            {
                "op": args.op,
                "impl": args.impl,
                "device": device,
                "exit_code": 1,
                "import_failure": {"kind": e.kind, "message": str(e)},
                "properties": [],
                "repro_files": [],
            }
        )
    else:
        print(f"{title} {args.op} / {args.impl} on {device}: {e}")
        print("verdict: FAIL (the candidate cannot be imported without breaking its process)")
    return 1


def print_summary(op: str, impl: str, device: str, results: list, seconds: float):
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"parity fuzz: {op} / {impl} on {device} ({seconds:.1f} s)")
    cols = ("property", "run", "passed", "unsupported", "n/a", "failed", "xfail", "crashes")
    for c in (*cols, "hangs", "seconds", "verdict"):
        left = c in ("property", "verdict")
        t.add_column(c, justify="left" if left else "right", no_wrap=True)
    for st in results:
        t.add_row(
            Text(st.prop),
            str(st.run),
            str(st.passed),
            str(st.unsupported),
            str(st.not_applicable),
            str(st.failed),
            str(st.xfailed),
            str(st.crashes),
            str(st.hangs),
            f"{st.seconds:.2f}",
            Text(st.verdict()),
        )
    console = Console(width=max(132, Console().width))
    console.print(t)
    for st in results:
        if st.stopped:
            console.print(Text(f"  {st.prop}: {st.stopped}"))


class _Progress:
    """A rich progress bar on stderr (examples/s, elapsed, counts); a no-op when disabled."""

    def __init__(self, *, enabled: bool, total: int | None, label: str):
        self.enabled = enabled
        self.total, self.label = total, label
        self.counts = {"pass": 0, "fail": 0, "unsupported": 0, "crash": 0, "hang": 0}
        self.n = 0
        self.in_prop = 0
        self.t0 = time.monotonic()
        self.progress = None

    def __enter__(self):
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} ex/s"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[counts]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.progress.__enter__()
        self.progress.console.print(f"parity fuzz: {self.label}")
        self.task = self.progress.add_task("starting", total=self.total, rate="0.0", counts="")
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False

    def prop_start(self, prop: str) -> None:
        self.in_prop = 0
        if self.progress is not None:
            self.progress.update(self.task, description=prop)

    def example(self, prop: str, status: str) -> None:
        self.n += 1
        self.in_prop += 1
        key = {"n/a": "pass", "xfail": "fail", "error": "fail"}.get(status, status)
        if key in self.counts:
            self.counts[key] += 1
        if self.progress is not None:
            rate = self.n / max(1e-9, time.monotonic() - self.t0)
            counts = " ".join(f"{k} {v}" for k, v in self.counts.items() if v)
            self.progress.update(self.task, advance=1, rate=f"{rate:.1f}", counts=counts)

    def prop_done(self, prop: str, per_prop: int) -> None:
        if self.progress is not None and self.total is not None and self.in_prop < per_prop:
            self.progress.update(self.task, advance=per_prop - self.in_prop)
