"""`parity suite`: every property of every op, against every implementation available here.

The main job: a summary table per (op, implementation) with examples run, unsupported cases,
failures and time, and a count of what did not run (and why). Exit 0 all passed, 1 a failure,
2 usage.

The work is one unit per (implementation, property), run by `--jobs` processes (default: one
per core; on cuda two per GPU, each process holding a CUDA context). Progress goes to stderr:
one updating line with an ETA on a terminal, plain lines (one per unit done) otherwise, as in a
CI log.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
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
    p.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=None,
        help="processes (default: the cores; on cuda 2 per GPU); 1 runs in this process",
    )
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    return p


# CUDA processes per GPU by default: each holds a CUDA context (about 0.5 GiB) and starts an
# isolated worker with one more; one per core exhausted an 80 GB H100 when gpu_all.sh ran 25
# suites side by side (2026-12-05)
PROCESSES_PER_GPU = 2


def _default_jobs(device: str) -> int:
    cores = os.cpu_count() or 1
    if device.startswith("cuda"):
        from parity._gpu import visible_gpus

        return max(1, min(cores, PROCESSES_PER_GPU * max(1, len(visible_gpus()))))
    return cores


# --- one unit of work (in a worker process, or here with --jobs 1) ---------------------------


def _init_worker(sys_path: list[str], threads: int) -> None:
    """A worker: the parent's import path (module:function candidates), and its share of the
    cores for torch's own threads (N processes x all cores would oversubscribe)."""
    for p in reversed(sys_path):
        if p not in sys.path:
            sys.path.insert(0, p)
    import torch

    torch.set_num_threads(max(1, threads))


def run_unit(op: str, impl_name: str, prop: str, device: str, profile: str, max_examples):
    """One property of one implementation: the `Stats` as a dict (a parity error as an error
    record, so that one broken spec does not take the suite down)."""
    from parity.campaign import run_property
    from parity.catalog import get_impl, get_spec

    t0 = time.perf_counter()
    try:
        spec = get_spec(op)
        if ":" in impl_name:  # a user's module:function: imported and run in a worker only
            from parity.campaign.candidate import lookup
            from parity.campaign.engine import Isolated, drive

            impl = lookup(op, impl_name)
            ev = Isolated(spec, impl_name, device)
            try:
                st = drive(
                    spec,
                    prop,
                    ev,
                    impl_name=impl_name,
                    device=device,
                    dtypes=impl.dtypes,
                    profile=profile,
                    max_examples=max_examples,
                )
            finally:
                ev.close()
            return st.as_dict()
        impl = get_impl(op, impl_name)
        st = run_property(
            spec,
            prop,
            impl.fn,
            impl_name=impl.name,
            device=device,
            dtypes=impl.dtypes,
            profile=profile,
            max_examples=max_examples,
            accept=impl.accept,  # the variants it declares it follows: judged under them
        )
        return {**st.as_dict(), "accepted": list(impl.accept)}
    except Exception as e:  # parity itself broke on this unit: an error, never a pass
        import traceback

        return {
            "op": op,
            "impl": impl_name,
            "prop": prop,
            "device": device,
            "seconds": time.perf_counter() - t0,
            "error": "".join(traceback.format_exception(e))[-2000:],
        }


# --- progress --------------------------------------------------------------------------------


def _clock(s: float) -> str:
    s = max(0, round(s))
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class Progress:
    """Units done of total with an ETA: one rewritten line on a terminal, else plain lines."""

    def __init__(self, total: int, *, stream=None, live: bool | None = None):
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        self.stream = stream or sys.stderr
        if live is None:
            live = sys.stdout.isatty() and self.stream.isatty()
        self.live = live

    def eta(self) -> str:
        if not self.done:
            return "?"
        spent = time.monotonic() - self.t0
        return _clock(spent / self.done * (self.total - self.done))

    def update(self, what: str, verdict: str, seconds: float) -> None:
        self.done += 1
        elapsed = _clock(time.monotonic() - self.t0)
        head = f"[{self.done}/{self.total}] {elapsed} elapsed, ETA {self.eta()}"
        if self.live:
            line = f"{head}  {what} {verdict}"[:119]
            self.stream.write("\r\x1b[2K" + line)
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(f"parity suite {head}: {what} {verdict} ({seconds:.1f} s)\n")
        self.stream.flush()


# --- the command -----------------------------------------------------------------------------


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from parity.campaign import Stats
    from parity.campaign.text import failure_text
    from parity.catalog import get_spec, impls
    from parity.tools.common import add_sys_path_cwd, default_device, resolve, usage_error

    if args.jobs is not None and args.jobs < 1:
        return usage_error("suite", f"--jobs must be >= 1, got {args.jobs}")
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

    runnable, not_run = [], []
    for impl in selected:
        ok, why = impl.availability(device)
        (runnable if ok else not_run).append(impl if ok else (impl.key, why))
    # the slow units first (Triton's interpreter on the CPU), so that no process is left
    # with one long unit at the end while the others idle
    slow = [i for i in runnable if device == "cpu" and "triton" in i.requires]
    units = [
        (impl.op, impl.name, prop)
        for impl in slow + [i for i in runnable if i not in slow]
        for prop in get_spec(impl.op).all_properties()
    ]
    results = _run_units(units, device, args, len(runnable))

    rows, failures, errors = [], [], []
    for impl in runnable:
        agg = {
            "op": impl.op,
            "impl": impl.name,
            "device": device,
            "examples": 0,
            "unsupported": 0,
            "failed": [],
            "not_run": [],
            "errors": [],
            "seconds": 0.0,
            "compiles": 0,  # Triton compiles in the units' processes (on cuda; parity._compiles)
            "compile_seconds": 0.0,
            "accepted": list(getattr(impl, "accept", ())),
        }
        for prop in get_spec(impl.op).all_properties():
            d = results.get((impl.op, impl.name, prop))
            if d is None:  # the suite was cut before this unit finished
                agg["not_run"].append(prop)
                agg.setdefault("cut", []).append(prop)
                part = results.get("_partial", {}).get((impl.op, impl.name, prop))
                if part:  # examples it ran before the cut: counted for ex/s, never judged
                    agg["cut_examples"] = agg.get("cut_examples", 0) + int(part["run"])
                    _add_time(agg, part)
                continue
            _add_time(agg, d)
            if "error" in d:
                agg["errors"].append(prop)
                errors.append((impl.key, prop, d["error"]))
                continue
            agg["examples"] += d["run"]
            agg["unsupported"] += d["unsupported"]
            if d["failure"] is not None or d["failed"]:
                agg["failed"].append(prop)
                if d["failure"] is not None:
                    st = Stats(**{k: d[k] for k in Stats.__dataclass_fields__ if k in d})
                    failures.append(st)
            elif not d["run"]:
                agg["not_run"].append(prop)
        rows.append(agg)
    elapsed = time.perf_counter() - results["_t0"]

    # plain text, never wrapped: the rerun lines must work when pasted
    for st in failures:
        print(failure_text(st), file=sys.stderr)
    for key, prop, tb in errors:
        print(f"ERROR {key} {prop}: parity itself failed:\n{tb}", file=sys.stderr)
    jobs = results["_jobs"]
    table = Table(
        title=f"parity suite on {device} ({args.profile} profile, {elapsed:.0f} s, "
        f"{jobs} process{'es' if jobs > 1 else ''})"
    )
    # where the GPU's time went: Triton compiles (count, seconds) beside examples a second
    compiled = any(r["compiles"] for r in rows)
    cols = ("op", "impl", "examples", "ex/s", *(("compiles",) if compiled else ()))
    for col in (*cols, "unsupported", "verdict"):
        table.add_column(col, justify="right" if col in cols[2:] else "left")
    for r in rows:
        bad = [f"FAIL: {', '.join(r['failed'])}"] if r["failed"] else []
        bad += [f"ERROR: {', '.join(r['errors'])}"] if r["errors"] else []
        cut = r.get("cut", [])
        idle = [p for p in r["not_run"] if p not in cut]  # ran, but drew nothing it supports
        skipped = ([f"NOT RUN: {', '.join(idle)}"] if idle else []) + (
            [f"NOT RUN (cut by time): {', '.join(cut)}"] if cut else []
        )
        ran = len(r["not_run"]) < len(get_spec(r["op"]).all_properties())
        verdict = (
            "; ".join(bad + skipped)
            if bad
            else "; ".join((["pass"] if ran else []) + skipped)
            if skipped
            else "pass"
        )
        if r["accepted"]:  # a declared library convention: said with every verdict
            verdict += f" (under {', '.join(r['accepted'])})"
        # ex/s: per second of the implementation's own (summed) process time, the examples a
        # cut unit ran before the cut included (they count for speed, not for the verdict)
        extra = r.get("cut_examples", 0)
        rate = (r["examples"] + extra) / r["seconds"] if r["seconds"] else 0.0
        shown = f"{r['examples']} (+{extra} cut)" if extra else str(r["examples"])
        comp = (f"{r['compiles']} ({r['compile_seconds']:.0f} s)",) if compiled else ()
        table.add_row(
            r["op"], r["impl"], shown, f"{rate:.1f}", *comp, str(r["unsupported"]), verdict
        )
    # a log (not a terminal) gets the whole table, not 80 columns of truncated names
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    for r in rows:  # the verdicts stand; said so a crowded GPU is seen for what it was
        if r.get("oom_retries"):
            print(
                f"{r['op']}:{r['impl']}: {r['oom_retries']} case runs repeated after the GPU "
                "ran out of memory (engine.OOM_TRIES)"
            )
    print(f"{len(rows)} implementations ran; {len(not_run)} did NOT RUN here:")
    for key, why in not_run:
        print(f"  NOT RUN  {key}: {why}")
    cut = results.get("_cut")
    if cut is not None:
        missing = sum(len(r.get("cut", [])) for r in rows)
        print(f"CUT: {cut}; the units that had not finished are NOT RUN above ({missing})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "device": device,
                    "seconds": elapsed,
                    "jobs": jobs,
                    "rows": rows,
                    "not_run": [{"impl": k, "reason": w} for k, w in not_run],
                    "cut": str(cut) if cut is not None else None,
                },
                fh,
                indent=1,
            )
    if failures or errors or any(r["failed"] for r in rows):
        return 1
    return cut.code if cut is not None else 0  # a cut suite never exits 0


def _add_time(agg: dict, d: dict) -> None:
    """A unit's (or a cut unit's partial) seconds and Triton compiles into its row."""
    agg["seconds"] += float(d.get("seconds") or 0.0)
    agg["compiles"] += int(d.get("compiles") or 0)
    agg["compile_seconds"] += float(d.get("compile_seconds") or 0.0)
    agg["oom_retries"] = agg.get("oom_retries", 0) + int(d.get("oom_retries") or 0)


_STOP_WAIT_S = 2.0  # how long a dead pool waits for this process's own stop signal


def _told_to_stop_too(wait_s: float) -> bool:
    """Whether this process was told to stop as well, waited for once, briefly: `timeout`
    signals the whole process group, so the pool's workers die of the limit's SIGTERM and
    the pool can break before this process's own handler has run (H100, 2026-12-06: fused_moe's
    nightly, cut at its limit, read as five units' "the worker process died" ERRORs instead of
    NOT RUN (cut)). A worker that died while this process was not told to stop is the unit's
    crash, as before."""
    from parity.campaign.worker import stop_requested

    deadline = time.monotonic() + wait_s
    while not stop_requested() and time.monotonic() < deadline:
        time.sleep(0.05)
    return stop_requested()


def _run_units(units: list, device: str, args, n_impls: int) -> dict:
    """{(op, impl, prop): stats dict} for every unit, plus "_t0" and "_jobs"."""
    jobs = args.jobs or _default_jobs(device)
    jobs = max(1, min(jobs, len(units)))
    progress = Progress(len(units))
    out: dict = {"_t0": time.perf_counter(), "_jobs": jobs}
    print(
        f"parity suite: {n_impls} implementations, {len(units)} (implementation, property) "
        f"units on {device}, {jobs} process{'es' if jobs > 1 else ''}",
        file=sys.stderr,
    )

    def done(unit, d):
        out[unit] = d
        verdict = "ERROR" if "error" in d else d.get("verdict", "?")
        progress.update(f"{unit[0]}:{unit[1]} {unit[2]}", verdict, float(d.get("seconds") or 0))

    from parity.campaign.worker import Terminated, raise_if_terminated

    if jobs == 1:
        unit = None
        try:
            for unit in units:
                d = run_unit(*unit, device, args.profile, args.max_examples)
                raise_if_terminated()  # cut inside the unit: its result is not its verdict
                done(unit, d)
        except Terminated as e:  # a time limit: report what finished, the rest NOT RUN
            out["_cut"] = e
            if e.partial and unit is not None:  # the cut unit's examples, for ex/s alone
                out["_partial"] = {unit: e.partial}
        return out

    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // jobs)
    # spawn: a fresh interpreter per worker (forking a parent that has torch's thread pools
    # running is unsafe); the parent's environment (TRITON_INTERPRET) and path go along
    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(sys.path, threads)
    )
    wait = _STOP_WAIT_S
    try:
        futs = {
            pool.submit(run_unit, *u, device, args.profile, args.max_examples): u for u in units
        }
        for f in as_completed(futs):
            unit = futs[f]
            try:
                d = f.result()
            except BrokenProcessPool as e:  # a worker died (a crashing kernel): never a pass
                if _told_to_stop_too(wait):  # the limit's SIGTERM killed the workers: a cut
                    raise_if_terminated()
                wait = 0.0  # waited once: the other broken futures follow at once
                d = {"seconds": 0.0, "error": f"the worker process died: {e}"}
            except Exception as e:  # the result could not come back
                d = {"seconds": 0.0, "error": f"{type(e).__name__}: {e}"}
            done(unit, d)
    except Terminated as e:  # a time limit: the running units are killed, not waited for
        out["_cut"] = e
        for proc in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(Exception):
                proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)
    else:
        pool.shutdown(wait=True)
    return out
