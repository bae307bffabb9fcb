"""`parity fuzz`: a Hypothesis campaign of every property of one op against one implementation.

    parity fuzz --op OP --impl IMPL [--device cpu|cuda] [--max-examples N] [--max-time S]
                [--seed S] [--profile pr|nightly|bisect] [--json] [--property P ...]
                [--workers N] [--timeout S] [--shrink-time S] [--out DIR] [--ledger FILE]
                [--no-isolate]

IMPL: a registered name, "reference", or `module:function` importable from the current folder
or PYTHONPATH. Each property of the op (`OpSpec.all_properties()`, or `--property`) is run with
Hypothesis under the profile's settings; a failure is shrunk (at most `--shrink-time` seconds),
printed with its error against the tolerance and the worst elements, saved as a repro
(`parity-repros/` or `--out`, see `parity.tools.repro`) and given as a one-line `parity case`
command. `--max-time` is a wall-clock budget for testing (counted once the worker is up) split
across the properties (unused time passes to the next); no case is drawn once it is spent, and
shrinking stops at it too.

Crash isolation (default; `--no-isolate` runs in-process): the candidate runs in a worker
process (`parity.tools.worker`, forked from a forkserver that has imported torch); a
segfault/abort or a CUDA error is a "crash", a case past `--timeout` seconds a "hang"; both are
failing cases, shrunk like any other (each step on a fresh worker), saved with their input, and
the campaign goes on with a fresh worker. `--workers N` runs N independent in-process campaigns
in N processes (seeds base..base+N-1, max_examples/N each, one GPU each on cuda) and merges their
stats; a crash or hang there is recorded (unshrunk) and that process restarts on the properties
it had left. A `--ledger` entry turns a matching failure into "xfail" (see `parity.tools.ledger`).

Exit codes: 0 no counterexample within the budget; 1 counterexample (or crash, hang, or an
XPASS of a ledger entry); 2 usage error (unknown op or property, IMPL not importable or not
callable, bad ledger); 3 nothing could be tested (every drawn case unsupported, or the
implementation is unavailable here).

Programmatic use: `FuzzStats` (a `runner.Stats` with crashes, hangs, xfailed, errors,
repro_file), `fuzz_property(...)` and `run_campaign(...)` with an `InProcess` or
`parity.tools.worker.Isolated` evaluator.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from parity.properties.runner import Stats

FAILING = ("fail", "crash", "hang", "error")


class BudgetSpent(BaseException):
    """Raised inside the Hypothesis test body when the time budget is spent: Hypothesis lets a
    BaseException that is not a test failure through at once, without shrinking."""


class ShrinkSpent(BaseException):
    """Raised inside the body when the shrinking time is spent: stops Hypothesis at once; the
    last (smallest) failing case seen is the result."""


@dataclass
class FuzzStats(Stats):
    crashes: int = 0
    hangs: int = 0
    errors: int = 0
    xfailed: int = 0
    repro_file: str | None = None  # the repro of `failure`
    repro_files: list = field(default_factory=list)  # every repro saved (--workers: several)
    stopped: str = ""
    seconds_to_failure: float | None = None  # from the property's start to its first failure
    cases_to_failure: int | None = None  # cases evaluated until then (the failing one included)

    def record(self, status: str, meta: dict, verdict) -> None:
        if status == "xfail":
            self.run += 1
            self.xfailed += 1
            return
        if status == "crash":
            self.crashes += 1
        elif status == "hang":
            self.hangs += 1
        elif status == "error":
            self.errors += 1
        super().record("fail" if status in FAILING else status, meta, verdict)

    def verdict(self) -> str:
        v = super().verdict()
        if v == "pass" and self.xfailed:
            return "pass (xfail)"
        return v


_COUNTS = ("run", "passed", "failed", "unsupported", "not_applicable", "crashes", "hangs")
_COUNTS += ("errors", "xfailed")


def merge_stats(parts: list[FuzzStats]) -> FuzzStats:
    """One property's stats from several workers: counts summed, the first failure kept,
    seconds the longest (they ran side by side)."""
    first = parts[0]
    out = FuzzStats(first.op, first.impl, first.prop, first.device)
    for p in parts:
        for k in _COUNTS:
            setattr(out, k, getattr(out, k) + getattr(p, k))
        out.seconds = max(out.seconds, p.seconds)
        out.max_ratio = max(out.max_ratio, p.max_ratio)
        out.last_unsupported = out.last_unsupported or p.last_unsupported
        out.stopped = out.stopped or p.stopped
        out.repro_files += [f for f in p.repro_files if f not in out.repro_files]
        if out.failure is None and p.failure is not None:
            out.failure = p.failure
            out.repro_file = p.repro_file
    return out


def stats_from_dict(d: dict) -> FuzzStats:
    fields = FuzzStats.__dataclass_fields__
    return FuzzStats(**{k: v for k, v in d.items() if k in fields})


# --- evaluators ----------------------------------------------------------------------------


class InProcess:
    """Evaluate cases in this process (`--no-isolate`, and inside `--workers` processes)."""

    def __init__(self, spec, impl, device: str = "cpu"):
        self.spec, self.impl, self.device = spec, impl, device
        self.last_describe = None

    def evaluate(self, prop: str, meta: dict):
        import traceback

        from parity.properties.checks import evaluate
        from parity.properties.tolerance import Verdict
        from parity.tools.worker import _is_cuda_error, _sync

        case = self.spec.build(meta, self.device)  # a bad description raises (usage error)
        try:
            status, v = evaluate(self.spec, prop, self.impl.fn, case)
            _sync(self.device)
        except Exception as e:  # outside the implementation
            text = f"{type(e).__name__}: {e}"
            if _is_cuda_error(text):
                return "crash", Verdict(False, f"crash (CUDA error): {text}", math.inf)
            return "error", Verdict(
                False, "parity error: " + traceback.format_exc(limit=8), math.inf
            )
        if status == "fail" and v is not None and _is_cuda_error(v.message):
            status = "crash"
        self.last_describe = case.describe()
        return status, v

    def save(self, prop: str, meta: dict, *, out, kind: str, verdict=None, seed=None):
        from parity.tools import repro

        try:
            case = self.spec.build(meta, self.device)
            path = repro.save(
                case, out, impl=self.impl.name, prop=prop, kind=kind, verdict=verdict, seed=seed
            )
        except Exception as e:
            return None, f"{type(e).__name__}: {e}"
        return str(path), case.describe()

    def start(self) -> None:
        _warm_up(self.device)

    def close(self) -> None:
        pass


# --- one property --------------------------------------------------------------------------


def _key(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True, default=repr)


def _strategy(spec, prop: str, size: str, dtypes):
    from parity.properties.runner import strategy_for

    if prop == "error_parity" and spec.invalid is None:
        return None
    if prop == "nan_policy" and spec.nan_strategy is None:
        return None
    return strategy_for(spec, prop, size=size, dtypes=dtypes)


def _remove_repro(path: str | None) -> None:
    if not path:
        return
    p = Path(path)
    for q in (p, p.with_suffix(".safetensors")):
        with contextlib.suppress(OSError):
            q.unlink()


def fuzz_property(
    spec,
    prop: str,
    evaluator,
    *,
    impl_name: str,
    device: str = "cpu",
    profile: str = "pr",
    max_examples: int | None = None,
    seed: int | None = None,
    deadline: float | None = None,
    hard_deadline: float | None = None,
    shrink_time: float = 60.0,
    ledger=None,
    out_dir: str | os.PathLike | None = "parity-repros",
    dtypes=None,
    size: str | None = None,
    on_start: Callable[[str, dict], None] | None = None,
    on_example: Callable[[FuzzStats, str], None] | None = None,
) -> FuzzStats:
    """Run `prop` with Hypothesis, each case through `evaluator.evaluate(prop, meta)`.

    deadline / hard_deadline: `time.monotonic()` values; no new case is drawn after
    `deadline`, shrinking stops at `hard_deadline` or `shrink_time` after the first failure
    (the smallest failure found so far is kept). A failing case that a `ledger` entry matches
    is counted as xfail and treated as a pass, so the campaign goes on.
    """
    import hypothesis
    from hypothesis import Verbosity, given, settings
    from hypothesis.errors import Unsatisfiable

    from parity.properties.runner import PropertyFailed, repro_command
    from parity.properties.tolerance import Verdict

    size = size or ("small" if device == "cpu" else "full")
    stats = FuzzStats(spec.name, impl_name, prop, device)
    strat = _strategy(spec, prop, size, dtypes)
    if strat is None:
        stats.stopped = f"{spec.name} has no strategy for {prop}"
        return stats
    overrides: dict = {"verbosity": Verbosity.quiet}
    if max_examples is not None:
        overrides["max_examples"] = max_examples
    s = settings(settings.get_profile(profile), **overrides)
    targeted = profile == "nightly"
    fails: dict[str, tuple] = {}
    t0 = time.perf_counter()
    state: dict = {"first": None, "shrink_until": None, "provisional": None, "last": None}

    def save(meta, status, v):
        if out_dir is None:
            return None, ""
        kind = status if status in ("crash", "hang") else "fail"
        path, info = evaluator.save(prop, meta, out=out_dir, kind=kind, verdict=v, seed=seed)
        if path is None:
            print(f"parity: could not save the repro: {info}", file=sys.stderr)
        return path, info

    @s
    @given(strat)
    def body(meta):
        now = time.monotonic()
        key = _key(meta)
        if state["shrink_until"] is not None and now > state["shrink_until"]:
            raise ShrinkSpent
        if state["first"] is None and deadline is not None and now > deadline:
            raise BudgetSpent
        if key in fails and fails[key][0] in ("crash", "hang"):
            status, v = fails[key]  # never run a crash twice for the same case
        else:
            if on_start:
                on_start(prop, meta)
            try:
                status, v = evaluator.evaluate(prop, meta)
            except Exception as e:  # a bad description: parity's bug
                status, v = "error", Verdict(False, f"parity error: {type(e).__name__}: {e}")
            entry = ledger.match(spec.name, impl_name, prop, meta) if ledger else None
            if entry is not None and status not in ("unsupported", "n/a"):
                failed = status in FAILING
                ledger.record(entry, failed)
                if failed:
                    status = "xfail"
            stats.record(status, meta, v)
            if on_example:
                on_example(stats, status)
        if targeted and v is not None and v.ratio == v.ratio and status not in FAILING:
            hypothesis.target(min(float(v.ratio), 1e12), label="error/tolerance")
        if status in FAILING:
            fails[key] = (status, v)
            state["last"] = (meta, status, v)
            if state["first"] is None:
                state["first"] = meta
                stats.seconds_to_failure = time.perf_counter() - t0
                stats.cases_to_failure = stats.run + stats.unsupported + stats.not_applicable
                until = time.monotonic() + shrink_time
                if hard_deadline is not None:
                    until = min(until, hard_deadline)
                state["shrink_until"] = until
                state["provisional"] = save(meta, status, v)  # written as soon as found
            raise PropertyFailed(meta, v.message if v is not None else status)

    if seed is not None:
        body = hypothesis.seed(seed)(body)
    final = None
    try:
        body()
    except PropertyFailed as e:
        final = e.meta
    except BudgetSpent:
        stats.stopped = "time budget spent"
    except ShrinkSpent:
        final = state["last"][0]
        stats.stopped = "shrinking time spent"
    except Unsatisfiable:
        stats.stopped = "no case can be drawn (dtypes of the implementation?)"
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        found = _find_failed(e)
        if found is not None:
            final = found.meta
        elif state["last"] is not None:  # Flaky and friends: keep the last failure seen
            final = state["last"][0]
        else:
            import traceback

            stats.errors += 1
            stats.failure = {
                "meta": None,
                "message": "parity error: " + "".join(traceback.format_exception(e))[-2000:],
                "ratio": math.inf,
                "worst": [],
                "kind": "error",
                "repro": "",
            }
    finally:
        stats.seconds = time.perf_counter() - t0
    if final is not None:
        status, v = fails.get(_key(final), (state["last"][1], state["last"][2]))
        path, describe = state["provisional"] or (None, "")
        if path is None:
            describe = ""
        if _key(final) != _key(state["first"]) or path is None:
            new, describe = save(final, status, v)
            if new is not None:
                if path != new:
                    _remove_repro(path)
                path = new
        stats.repro_file = path
        stats.repro_files = [path] if path else []
        stats.failure = {
            "meta": final,
            "kind": status,
            "message": v.message if v is not None else status,
            "ratio": getattr(v, "ratio", math.inf),
            "worst": [list(w) for w in getattr(v, "worst", []) or []],
            "repro": repro_command(spec.name, impl_name, prop, device, final),
            "repro_file": path,
            "describe": describe or "",
        }
    return stats


def _find_failed(e: BaseException):
    from parity.properties.runner import PropertyFailed

    if isinstance(e, PropertyFailed):
        return e
    for sub in getattr(e, "exceptions", ()) or ():
        got = _find_failed(sub)
        if got is not None:
            return got
    return None


# --- a campaign: every property ------------------------------------------------------------


def run_campaign(
    spec,
    props: list[str],
    evaluator,
    *,
    max_time: float | None = None,
    on_prop_start: Callable[[str], None] | None = None,
    on_prop_done: Callable[[FuzzStats], None] | None = None,
    **kw,
) -> list[FuzzStats]:
    """`fuzz_property` for each property; `max_time` split evenly over the properties left
    (unused time passes on)."""
    start = time.monotonic()
    hard = start + max_time if max_time is not None else None
    out = []
    for i, prop in enumerate(props):
        deadline = None
        if hard is not None:
            now = time.monotonic()
            deadline = now + max(0.0, hard - now) / (len(props) - i)
        if on_prop_start:
            on_prop_start(prop)
        st = fuzz_property(spec, prop, evaluator, deadline=deadline, hard_deadline=hard, **kw)
        out.append(st)
        if on_prop_done:
            on_prop_done(st)
    return out


def campaign_process(cfg: dict, emit: Callable[[dict], None]) -> None:
    """Body of one `--workers` process (`python -m parity.tools.worker --campaign`)."""
    from parity.catalog import get_impl, get_spec
    from parity.tools.ledger import Ledger

    spec = get_spec(cfg["op"])
    impl = get_impl(cfg["op"], cfg["impl"])
    ledger = Ledger.load(cfg["ledger"]) if cfg.get("ledger") else None
    ev = InProcess(spec, impl, cfg["device"])
    run_campaign(
        spec,
        cfg["props"],
        ev,
        max_time=cfg.get("max_time"),
        impl_name=cfg["impl"],
        device=cfg["device"],
        profile=cfg["profile"],
        max_examples=cfg.get("max_examples"),
        seed=cfg.get("seed"),
        shrink_time=cfg.get("shrink_time", 60.0),
        ledger=ledger,
        out_dir=cfg.get("out"),
        dtypes=impl.dtypes,
        on_start=lambda prop, meta: emit({"event": "start", "prop": prop, "meta": meta}),
        on_example=lambda st, status: emit({"event": "example", "prop": st.prop, "status": status}),
        on_prop_done=lambda st: emit({"event": "prop", "stats": st.as_dict()}),
    )
    emit({"event": "done", "ledger": ledger.summary() if ledger else []})


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if x != x else ("inf" if x > 0 else "-inf")
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return repr(x)


# --- --workers N ---------------------------------------------------------------------------


def run_parallel(
    spec,
    props: list[str],
    *,
    n: int,
    impl_name: str,
    device: str,
    profile: str,
    max_examples: int | None,
    seed: int,
    max_time: float | None,
    shrink_time: float,
    timeout: float,
    ledger,
    ledger_path: str | None,
    out_dir: str,
    on_example: Callable[[str, str], None] | None = None,
) -> list[FuzzStats]:
    """N campaign processes (seed + i, max_examples / N each, one GPU each on cuda); a process
    that dies or hangs on a case records a crash/hang for it and is restarted on the
    properties it had left."""
    from parity.properties.runner import repro_command
    from parity.properties.tolerance import Verdict
    from parity.tools.worker import (
        Child,
        Isolated,
        WorkerDied,
        WorkerTimeout,
        _campaign_main,
        gpu_env,
    )

    per = None if max_examples is None else max(1, math.ceil(max_examples / n))
    from parity.tools.worker import warm_forkserver

    warm_forkserver()  # before the clock: --max-time measures testing
    start = time.monotonic()
    parts: dict[str, list[FuzzStats]] = {p: [] for p in props}
    ledger_rows: list[list[dict]] = []

    class W:
        def __init__(self, i: int, todo: list[str]):
            self.i, self.todo = i, list(todo)
            self.env = gpu_env(i, device)
            self.proc = None
            self.current = None  # (prop, meta, t): the case being evaluated
            self.partial: dict[str, FuzzStats] = {}
            self.done = False
            self.launch()

        def launch(self):
            if not self.todo:
                self.done = True
                return
            left = None if max_time is None else max(0.0, max_time - (time.monotonic() - start))
            cfg = {
                "op": spec.name,
                "impl": impl_name,
                "device": device,
                "props": self.todo,
                "profile": profile,
                "max_examples": per,
                "seed": seed + self.i,
                "max_time": left,
                "shrink_time": shrink_time,
                "ledger": ledger_path,
                "out": out_dir,
                "sys_path": [os.getcwd(), *sys.path],
            }
            self.proc = Child(target=_campaign_main, args=(cfg,), env=self.env)
            self.current = None

        def lost(self, kind: str, why: str, tail: str):
            """The process died or hung: record it against the case it was running, restart
            on the properties left."""
            self.proc.kill()
            if self.current is None:  # outside a case: charge the property it was on
                prop, meta = self.todo[0], None
                msg = f"{kind}: campaign process {why} outside a case"
            else:
                prop, meta, _ = self.current
                msg = f"{kind}: {why}"
            if tail:
                msg += "\n" + "\n".join("    " + ln for ln in tail.splitlines())
            st = self.partial.pop(prop, None) or FuzzStats(spec.name, impl_name, prop, device)
            v = Verdict(False, msg, math.inf)
            entry = ledger.match(spec.name, impl_name, prop, meta) if ledger and meta else None
            if entry is not None:
                ledger.record(entry, True)
                st.record("xfail", meta, v)
            else:
                st.record(kind, meta or {}, v)
                path = None
                if meta is not None:
                    iso = Isolated(spec.name, impl_name, device, timeout=timeout, env=self.env)
                    try:
                        path, _ = iso.save(prop, meta, out=out_dir, kind=kind, verdict=v, seed=seed)
                    finally:
                        iso.close()
                st.repro_file = path
                st.repro_files = [path] if path else []
                st.failure = {
                    "meta": meta,
                    "kind": kind,
                    "message": msg,
                    "ratio": math.inf,
                    "worst": [],
                    "repro": repro_command(spec.name, impl_name, prop, device, meta or {}),
                    "repro_file": path,
                    "describe": "",
                }
            parts[prop].append(st)
            self.todo.remove(prop)
            self.launch()

        def poll(self) -> bool:
            if self.done:
                return False
            busy = False
            while True:
                try:
                    ev = self.proc.recv(0)
                except WorkerDied as e:
                    self.lost("crash", f"process died ({str(e).split('(', 1)[-1]}", e.stderr_tail)
                    return True
                except WorkerTimeout:  # nothing to read now
                    break
                busy = True
                kind = ev.get("event")
                if kind == "start":
                    self.current = (ev["prop"], ev["meta"], time.monotonic())
                elif kind == "example":
                    st = self.partial.setdefault(
                        ev["prop"], FuzzStats(spec.name, impl_name, ev["prop"], device)
                    )
                    st.record(ev["status"], {}, None)
                    self.current = None
                    if on_example:
                        on_example(ev["prop"], ev["status"])
                elif kind == "prop":
                    st = stats_from_dict(ev["stats"])
                    parts[st.prop].append(st)
                    self.partial.pop(st.prop, None)
                    if st.prop in self.todo:
                        self.todo.remove(st.prop)
                elif kind == "done":
                    ledger_rows.append(ev.get("ledger", []))
                    self.proc.close()
                    self.done = True
                    return True
            if self.current is not None and time.monotonic() - self.current[2] > timeout:
                tail = self.proc.stderr_tail()
                self.lost("hang", f"no result within {timeout:g} s (process killed)", tail)
                return True
            return busy

    workers = [W(i, props) for i in range(n)]
    try:
        while not all(w.done for w in workers):
            if not any(w.poll() for w in workers):
                time.sleep(0.02)
    finally:
        for w in workers:
            if w.proc is not None:
                w.proc.kill()
    if ledger is not None:
        for rows in ledger_rows:
            ledger.merge_counts(rows)
    return [
        merge_stats(parts[p]) if parts[p] else FuzzStats(spec.name, impl_name, p, device)
        for p in props
    ]


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
    p.add_argument("--profile", default="pr", choices=["pr", "nightly", "bisect"])
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--property", dest="properties", action="extend", nargs="+", default=[], metavar="P"
    )
    p.add_argument("--workers", type=int, default=1, help="parallel campaign processes")
    p.add_argument("--shrink-time", type=float, default=60.0, help="cap on shrinking, seconds")
    p.add_argument("--out", default=None, help="repro folder (default parity-repros/)")
    p.add_argument("--ledger", default=None, help="known-failure ledger (JSON or TOML)")
    return p


def add_common(p) -> None:
    """--op, --impl, --device, --timeout, --no-isolate (shared with `case`)."""
    p.add_argument("--op", required=True)
    p.add_argument("--impl", required=True, help='registered name, "reference" or module:fn')
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per case (hang)")
    p.add_argument("--no-isolate", action="store_true", help="run the kernel in-process")


def usage_error(cmd: str, msg: str) -> int:
    print(f"parity {cmd}: error: {msg}", file=sys.stderr)
    return 2


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve(cmd: str, op: str, impl_name: str, device: str | None):
    """(spec, impl, device) or an exit code: 2 usage error, 3 unavailable here."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    from parity.catalog import get_impl, get_spec
    from parity.registry import OP_NAMES

    if op not in OP_NAMES:
        return usage_error(cmd, f"unknown op {op!r}; ops: {', '.join(OP_NAMES)}")
    try:
        spec = get_spec(op)
    except KeyError as e:
        return usage_error(cmd, str(e.args[0]))
    try:
        impl = get_impl(op, impl_name)
    except KeyError as e:
        return usage_error(cmd, str(e.args[0]))
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        return usage_error(cmd, f"cannot import {impl_name!r}: {type(e).__name__}: {e}")
    except Exception as e:  # the module raised at import
        return usage_error(cmd, f"importing {impl_name!r} raised {type(e).__name__}: {e}")
    if not callable(impl.fn):
        return usage_error(cmd, f"{impl_name!r} is not callable")
    device = device or default_device()
    ok, why = impl.availability(device)
    if not ok:
        print(f"NOT RUN: {op} / {impl_name} on {device}: {why}", file=sys.stderr)
        return 3
    return spec, impl, device


def run(args) -> int:
    got = resolve("fuzz", args.op, args.impl, args.device)
    if isinstance(got, int):
        return got
    spec, impl, device = got
    props = list(dict.fromkeys(args.properties)) or list(spec.all_properties())
    unknown = [p for p in props if p not in spec.all_properties()]
    if unknown:
        return usage_error(
            "fuzz",
            f"unknown propert{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} for "
            f"{spec.name}; properties: {', '.join(spec.all_properties())}",
        )
    for name, val, lo in (
        ("--workers", args.workers, 1),
        ("--max-examples", args.max_examples, 1),
        ("--timeout", args.timeout, 0),
        ("--max-time", args.max_time, 0),
        ("--shrink-time", args.shrink_time, 0),
    ):
        if val is not None and (val < lo or (lo == 0 and val <= 0)):
            return usage_error("fuzz", f"{name} must be {'>= 1' if lo else '> 0'}, got {val}")
    from parity.tools.ledger import DEFAULT_FILE, load_ledger

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

    from parity.properties.runner import PROFILES

    if args.profile not in PROFILES:
        return usage_error("fuzz", f"unknown profile {args.profile!r}")
    per_prop = max_examples or settings.get_profile(args.profile).max_examples
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
    results: list[FuzzStats] = []
    try:
        with progress:
            if args.workers > 1:
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
                )
            else:
                if args.no_isolate:
                    evaluator = InProcess(spec, impl, device)
                else:
                    from parity.tools.worker import Isolated

                    evaluator = Isolated(spec.name, args.impl, device, timeout=args.timeout)
                try:
                    evaluator.start()  # before the clock: --max-time measures testing
                    results = run_campaign(
                        spec,
                        props,
                        evaluator,
                        max_time=args.max_time,
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
    except Exception as e:
        from parity.tools.worker import WorkerUsageError

        if isinstance(e, WorkerUsageError):
            return usage_error("fuzz", str(e))
        raise
    seconds = time.monotonic() - t0
    xpasses = ledger.xpasses(spec.name, args.impl) if ledger else []
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
        }
        print(json.dumps(_jsonable(doc), indent=1))
        return code
    for st in results:
        if st.failure is not None:
            print_failure(st)
    print_summary(spec.name, args.impl, device, results, seconds)
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


def _warm_up(device: str = "cpu") -> None:
    """What the first case would pay for, done before the clock starts so that --max-time
    measures testing: the CUDA context, and `torch.use_deterministic_algorithms`
    (writes_all_outputs) importing torch._inductor (seconds on a small machine)."""
    import torch

    with contextlib.suppress(Exception):
        import torch._inductor.config
    if device.startswith("cuda"):
        torch.empty(1, device=device)
        torch.cuda.synchronize()


def exit_code(results: list[FuzzStats], xpasses: list[str]) -> int:
    if any(st.failure is not None or st.failed for st in results) or xpasses:
        return 1
    if not any(st.run > 0 for st in results):
        return 3
    return 0


def print_failure(st: FuzzStats, file=None) -> None:
    f = st.failure
    out = file or sys.stdout
    kind = f.get("kind", "fail")
    title = {"crash": "CRASH", "hang": "HANG", "error": "ERROR"}.get(kind, "FAIL")
    w = lambda s="": print(s, file=out)  # noqa: E731
    w(f"{title} {st.op} / {st.impl} / {st.prop} on {st.device}: counterexample (shrunk)")
    if st.seconds_to_failure is not None:
        w(
            f"  found    after {st.cases_to_failure} case(s) in {st.seconds_to_failure:.2f} s; "
            f"shrunk in {max(0.0, st.seconds - st.seconds_to_failure):.2f} s"
        )
    if f.get("describe"):
        w(f"  case     {f['describe']}")
    if f.get("meta") is not None:
        w(f"  meta     {json.dumps(f['meta'], sort_keys=True)}")
    msg = f.get("message", "")
    lines = str(msg).splitlines() or [""]
    w(f"  error    {lines[0]}")
    for ln in lines[1:]:
        w(f"           {ln}")
    ratio = f.get("ratio")
    if isinstance(ratio, (int, float)) and kind == "fail" and math.isfinite(ratio) and ratio > 0:
        w(f"  error/tolerance  {ratio:.4g}")
    worst = f.get("worst") or []
    if worst:
        w("  worst elements (output, index, got, want, tol):")
        for row in worst[:5]:
            w("    " + "  ".join(_fmt(x) for x in row))
    if f.get("repro_file"):
        w(f"  saved    {f['repro_file']}")
        w(f"  replay   parity replay {f['repro_file']}")
    if f.get("repro"):
        w(f"  rerun    {f['repro']}")
    w()


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.9g}"
    return str(x)


def print_summary(op: str, impl: str, device: str, results: list[FuzzStats], seconds: float):
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


__all__ = [
    "FuzzStats",
    "InProcess",
    "exit_code",
    "fuzz_property",
    "merge_stats",
    "run_campaign",
    "run_parallel",
]
