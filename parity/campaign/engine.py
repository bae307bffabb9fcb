"""The campaign engine: one Hypothesis driver for every way parity runs a property.

`parity fuzz/suite/check/case/replay`, the pytest plugin and `parity.check` all come here:

- an evaluator runs one property on one case and returns (status, Verdict): `InProcess` (the
  candidate in this process) or `Isolated` (the candidate in a worker process, see
  `parity.campaign.worker`). Both make the same plan (`checks.make_plan`) and judge in the
  harness (`checks.judge`): the worker only returns outputs;
- `drive` runs one property with Hypothesis through an evaluator (budget, shrinking time,
  ledger, repro files), `run_campaign` every property, `run_parallel` N campaign processes;
- `Stats` counts one property's run, `Report` a whole campaign (`check` builds one).

Statuses: pass, fail, unsupported (NotImplementedError), n/a (a relation that does not apply),
xfail (a ledger entry), crash (the process died, or a CUDA error), hang (past the timeout),
error (parity's own bug).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, settings

from parity import _compiles, _gpu
from parity.campaign.repro import repro_command
from parity.campaign.wire import jsonable

FAILING = ("fail", "crash", "hang", "error")

# --- Hypothesis profiles -------------------------------------------------------------------

_SUPPRESS = list(HealthCheck)
# no explain phase in pr/bisect: it re-runs a found failure many times only to annotate it
_NO_EXPLAIN = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
# Registered under parity's own names only: a user's `pr`/`nightly` profiles stay theirs. The
# short names are aliases of the CLI and the plugin (`profile_name`). Hypothesis's database is
# off: it ignores one for seeded or derandomized runs, parity keeps failing cases itself
# (`ExampleStore`).
_PROFILE_SETTINGS = {
    "parity-pr": dict(max_examples=20, derandomize=True, database=None, print_blob=False),
    "parity-nightly": dict(max_examples=1000, derandomize=False, database=None),
    "parity-bisect": dict(max_examples=30, derandomize=True, database=None),
}
for _name, _kw in _PROFILE_SETTINGS.items():
    if _name != "parity-nightly":
        _kw["phases"] = _NO_EXPLAIN
    settings.register_profile(_name, deadline=None, suppress_health_check=_SUPPRESS, **_kw)
PROFILES = tuple(_PROFILE_SETTINGS)
PROFILE_ALIASES = {p.removeprefix("parity-"): p for p in PROFILES}  # pr -> parity-pr, ...


def profile_name(name: str) -> str:
    """parity's registered Hypothesis profile for `name` (pr, nightly, bisect or parity-...);
    ValueError for another name."""
    got = PROFILE_ALIASES.get(name, name)
    if got not in PROFILES:
        have = ", ".join(PROFILE_ALIASES)
        raise ValueError(f"unknown profile {name!r}; profiles: {have} (or parity-<name>)")
    return got


def get_profile(name: str):
    """The Hypothesis settings of parity's profile `name` (an alias or the full name)."""
    return settings.get_profile(profile_name(name))


class PropertyFailed(AssertionError):
    def __init__(self, meta: dict, message: str):
        super().__init__(message)
        self.meta = meta


class ParityError(RuntimeError):
    """parity itself broke on a case (a spec, a strategy, the judge): never the candidate's."""


class BudgetSpent(BaseException):
    """The time budget is spent, between cases or while one ran (then it was cut off, not
    judged): a BaseException, so Hypothesis lets it through at once."""


class _ShrinkSpent(BaseException):
    """The shrinking time is spent: the smallest failing case seen so far is the result."""


class _NothingSupported(BaseException):
    """Every case drawn so far was unsupported (or n/a), ALL_UNSUPPORTED_PER_EXAMPLE times the
    example budget: the property is NOT RUN, not searched for ever."""


# Unsupported and n/a cases are rejected (`hypothesis.reject`): the example budget is spent on
# cases the kernel runs. Bounds, per example of the budget: rejects in all (then they count as
# examples again), and rejects with nothing run yet (then the property stops as NOT RUN).
REJECTS_PER_EXAMPLE = 9
ALL_UNSUPPORTED_PER_EXAMPLE = 4


# --- stats ---------------------------------------------------------------------------------


@dataclass
class Stats:
    """One property of one (op, implementation, device): counts, and the shrunk failure."""

    op: str
    impl: str
    prop: str
    device: str
    run: int = 0
    passed: int = 0
    failed: int = 0
    unsupported: int = 0
    not_applicable: int = 0
    crashes: int = 0
    hangs: int = 0
    errors: int = 0
    xfailed: int = 0
    seconds: float = 0.0
    compiles: int = 0  # Triton compiles in the unit's process during it (parity._compiles)
    compile_seconds: float = 0.0
    oom_retries: int = 0  # cases run again after the (shared) GPU ran out of memory
    # {"meta", "kind", "message", "ratio", "worst", "repro", "repro_file", "describe", "shrunk"}
    failure: dict | None = None
    last_unsupported: str = ""
    max_ratio: float = 0.0
    repro_file: str | None = None  # the repro of `failure`
    repro_files: list = field(default_factory=list)  # every repro saved (--workers: several)
    stopped: str = ""
    seconds_to_failure: float | None = None  # from the property's start to its first failure
    cases_to_failure: int | None = None  # cases evaluated until then (the failing one included)
    # the same from the start of the whole campaign (every property's cases before it counted)
    campaign_seconds_to_failure: float | None = None
    campaign_cases_to_failure: int | None = None

    def record(self, status: str, meta: dict, verdict, was: str = "") -> None:
        """`was`: for an xfail, what the case did (an expected crash still counts as one)."""
        if status == "unsupported":
            self.unsupported += 1
            self.last_unsupported = verdict.message if verdict else ""
            return
        if status == "n/a":
            self.not_applicable += 1
            return
        self.run += 1
        if status == "xfail":
            self.xfailed += 1
            self.crashes += was == "crash"
            self.hangs += was == "hang"
            return
        if verdict is not None and verdict.ratio == verdict.ratio:
            self.max_ratio = max(self.max_ratio, min(verdict.ratio, 1e300))
        if status == "pass":
            self.passed += 1
            return
        self.failed += 1
        self.crashes += status == "crash"
        self.hangs += status == "hang"
        self.errors += status == "error"

    @property
    def tested(self) -> bool:
        return self.run > 0

    def verdict(self) -> str:
        if self.failure is not None or self.failed:
            return "FAIL"
        if not self.tested:
            return "NOT RUN"
        return "pass (xfail)" if self.xfailed else "pass"

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["verdict"] = self.verdict()
        return d


_COUNTS = ("run", "passed", "failed", "unsupported", "not_applicable", "crashes", "hangs")
_COUNTS += ("errors", "xfailed", "oom_retries")


def merge_stats(parts: list[Stats]) -> Stats:
    """One property's stats from several processes: counts summed, the first failure kept,
    seconds the longest (they ran side by side)."""
    first = parts[0]
    out = Stats(first.op, first.impl, first.prop, first.device)
    for p in parts:
        for k in _COUNTS:
            setattr(out, k, getattr(out, k) + getattr(p, k))
        out.seconds = max(out.seconds, p.seconds)
        out.compiles += p.compiles
        out.compile_seconds += p.compile_seconds
        out.max_ratio = max(out.max_ratio, p.max_ratio)
        out.last_unsupported = out.last_unsupported or p.last_unsupported
        out.stopped = out.stopped or p.stopped
        out.repro_files += [f for f in p.repro_files if f not in out.repro_files]
        if out.failure is None and p.failure is not None:
            out.failure = p.failure
            out.repro_file = p.repro_file
    return out


def stats_from_dict(d: dict) -> Stats:
    return Stats(**{k: v for k, v in d.items() if k in Stats.__dataclass_fields__})


def strategy_for(spec, prop: str, *, size: str, dtypes=None):
    """The Hypothesis strategy of case descriptions for `prop`; None where the op has none."""
    if prop not in spec.all_properties():
        return None
    if prop == "error_parity":
        return spec.invalid(size=size) if spec.invalid is not None else None
    if prop == "nan_policy":
        return spec.nan_strategy(size=size, dtypes=dtypes) if spec.nan_strategy else None
    return spec.strategy(size=size, dtypes=dtypes)


def exit_code(results: list[Stats], xpasses: list[str] = ()) -> int:
    """0 no counterexample, 1 a counterexample (or an XPASS), 3 nothing tested."""
    if any(st.failure is not None or st.failed for st in results) or xpasses:
        return 1
    if not any(st.run > 0 for st in results):
        return 3
    return 0


# --- evaluators ----------------------------------------------------------------------------


def _judged(spec, plan, outcomes, accept=()):
    from parity.campaign.worker import is_cuda_error
    from parity.properties.checks import judge
    from parity.properties.tolerance import Verdict

    try:
        status, v = judge(spec, plan, outcomes, accept)
    except Exception:  # the judge or the reference: parity's bug, never a pass
        return "error", Verdict(False, "parity error: " + traceback.format_exc(limit=8), math.inf)
    if status == "fail" and is_cuda_error(v.message):
        status = "crash"
    return status, v


MAX_MESSAGE = 8000  # characters of a verdict's message: kernel text never goes whole to a report


def _capped(v):
    if v is not None and isinstance(v.message, str) and len(v.message) > MAX_MESSAGE:
        cut = len(v.message) - MAX_MESSAGE
        v.message = v.message[:MAX_MESSAGE] + f"... ({cut} characters cut)"
    return v


@contextlib.contextmanager
def stdout_to_stderr():
    """What is printed meanwhile (Python or C level) goes to stderr, so that parity's stdout
    (`--json`) stays parity's: in-process kernel calls, and a whole `--json` command
    (`tools.common.json_stdout`)."""
    sys.stdout.flush()
    saved = None
    with contextlib.suppress(OSError, ValueError):
        saved = os.dup(1)
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


class InProcess:
    """Evaluate cases in this process (`--no-isolate`): the same plan and judge as `Isolated`;
    a kernel's exit (SystemExit, KeyboardInterrupt) is its failing case, its prints go to
    stderr. A hang is not bounded here."""

    def __init__(self, spec, impl, device: str = "cpu", *, accept=()):
        from parity.campaign.candidate import import_in_process

        self.spec, self.device = spec, device
        self.accept = _accepted(spec, tuple(accept) + tuple(getattr(impl, "accept", ()) or ()))
        self.impl = import_in_process(impl)  # a no-op when already imported
        self.last_describe = None
        self.last_failed = None  # (prop, case, outcomes) of the last failing judgement

    def evaluate_case(self, prop: str, case):
        from parity.campaign.worker import is_cuda_error, sync
        from parity.properties.checks import exc_text, execute, make_plan
        from parity.properties.tolerance import Verdict

        plan = make_plan(self.spec, prop, case)
        if plan is None:
            return "n/a", None
        try:
            with stdout_to_stderr():
                outcomes = execute(
                    self.impl.fn, plan, after=lambda: sync(self.device), prepare=self.impl.prepare
                )
        except Exception as e:  # a CUDA error surfacing at the synchronisation
            text = exc_text(e)
            kind = "crash" if is_cuda_error(text) else "error"
            return kind, Verdict(False, f"{kind}: {text}", math.inf)
        self.last_describe = case.describe()
        status, v = _judged(self.spec, plan, outcomes, self.accept)
        self.last_failed = (prop, case, outcomes) if status == "fail" else None
        return status, _capped(v)

    def evaluate(self, prop: str, meta: dict):
        """Raises for a description `build` rejects (a usage error)."""
        return self.evaluate_case(prop, self.spec.build(meta, self.device))

    def evaluate_file(self, prop: str, path):
        from parity.campaign import repro

        return self.evaluate_case(prop, repro.load(path).case(self.device))

    def start(self) -> None:
        warm_up(self.device)

    def close(self) -> None:
        pass


class Isolated:
    """Evaluate cases of one (op, impl, device) in a worker process; a fresh one after a crash
    or a hang. The worker imports the candidate (by name: the harness never does) and makes the
    calls; the harness rebuilds the case and judges. `env`: variables set in each worker first
    (e.g. a pinned CUDA_VISIBLE_DEVICES). `hard_deadline` (time.monotonic): a case still running
    then is cut off (`BudgetSpent`), so a time budget holds against a hanging kernel.

    After a crash the case is re-run alone in a fresh worker; when it passes alone, the cases
    that ran before it in the dead worker are replayed (most recent first, each in a fresh
    worker followed by the crashing case) to find the one that poisons the process: `blame`
    then holds it and the verdict says "crashes after case A, not alone"."""

    HISTORY = 32  # cases remembered per worker for the blame search
    BLAME_TRIES = 8  # earlier cases tried at most

    def __init__(
        self,
        spec,
        impl: str,
        device: str = "cpu",
        *,
        timeout=60.0,
        env=None,
        accept=(),
        prepare=None,
    ):
        self.spec, self.impl, self.device, self.timeout = spec, impl, device, timeout
        self.prepare = prepare  # `module:function` of a prepare step given apart from the impl
        self.accept = _accepted(spec, tuple(accept) + declared_accept(spec.name, impl))
        self.last_failed = None  # (prop, case, outcomes) of the last failing judgement
        self.env = env
        self.proc = None
        self.restarts = 0
        self.sent = 0  # request ids: a reply for another request is a forged one
        self.last_describe = None
        self.hard_deadline: float | None = None
        self.history: list = []  # (prop, meta, path) run by the current worker
        self.blame: dict | None = None  # the last crash's blame search
        self.blame_crashes = True

    def start(self) -> None:
        """Start a worker now (before a time budget starts). Raises WorkerUsageError (the name
        does not import), CandidateFailed (its import exits, crashes or hangs)."""
        self._ready()

    def _ready(self):
        from parity.campaign.candidate import CandidateFailed
        from parity.campaign.worker import (
            STARTUP_TIMEOUT,
            Child,
            WorkerDied,
            WorkerTimeout,
            WorkerUsageError,
        )

        if self.proc is not None:
            return self.proc
        p = Child(env=self.env)
        msg = {"cmd": "init", "op": self.spec.name, "device": self.device, "id": 0}
        try:  # parity's own start (torch, the op, the CUDA context): no candidate code yet
            reply, _ = p.request({**msg, "sys_path": [os.getcwd(), *sys.path]}, STARTUP_TIMEOUT)
        except (WorkerDied, WorkerTimeout, ValueError) as e:
            tail = p.stderr_tail()
            p.kill()
            raise WorkerUsageError(f"the worker did not start: {e}\n{tail}") from e
        if not reply.get("ok"):
            p.kill()
            raise WorkerUsageError(str(reply.get("error", "the worker did not start"))[:2000])
        name = self.impl
        try:  # the candidate's import: the first of its code to run
            load = {"cmd": "load", "impl": name, "prepare": self.prepare, "id": 0}
            reply, _ = p.request(load, self._wait())
        except WorkerTimeout:
            p.kill()
            if self._past_deadline():
                raise BudgetSpent from None
            raise CandidateFailed(
                "hang", f"import hung: importing {name!r} took over {self.timeout:g} s"
            ) from None
        except WorkerDied as e:
            tail = p.stderr_tail()
            p.kill()
            why = f"import crashed: the worker died importing {name!r} ({_why(e)})"
            raise CandidateFailed("crash", why + ("\n" + _indent(tail) if tail else "")) from None
        except ValueError as e:  # a malformed reply: the candidate wrote to the pipe
            p.kill()
            raise CandidateFailed("crash", f"import crashed: a malformed reply ({e})") from None
        if not reply.get("ok"):
            p.kill()
            err = str(reply.get("error", ""))[:MAX_MESSAGE]
            if reply.get("kind") == "import_crashed":
                raise CandidateFailed("crash", f"import crashed: importing {name!r} {err}")
            raise WorkerUsageError(err)
        self.proc = p
        self.history = []
        return p

    def _wait(self) -> float:
        if self.hard_deadline is None:
            return self.timeout
        return max(0.0, min(self.timeout, self.hard_deadline - time.monotonic()))

    def _past_deadline(self) -> bool:
        return self.hard_deadline is not None and time.monotonic() >= self.hard_deadline - 1e-3

    def _lost(self) -> None:
        """The current worker is gone (or must go): kill it; the next call forks a new one."""
        if self.proc is not None:
            self.proc.kill()
        self.proc = None
        self.restarts += 1

    def evaluate(self, prop: str, meta: dict):
        """(status, Verdict | None). Raises ValueError for a description `build` rejects,
        WorkerUsageError when the worker cannot import the implementation."""
        return self._evaluate(prop, meta=meta)

    def evaluate_file(self, prop: str, path):
        return self._evaluate(prop, path=str(path))

    def _evaluate(self, prop: str, *, meta=None, path=None):
        self.blame = None
        self.last_failed = None
        status, v = self._run(prop, meta=meta, path=path)
        if status == "crash" and self.blame_crashes:
            try:
                status, v = self._blame(prop, meta, path, status, v)
            except BudgetSpent:  # no time left to find the culprit: still this case's crash
                pass
        return status, _capped(v)

    def _run(self, prop: str, *, meta=None, path=None):
        from parity.campaign import repro
        from parity.campaign.candidate import CandidateFailed
        from parity.campaign.wire import BadReply, outcomes_from_wire
        from parity.campaign.worker import WorkerDied, WorkerTimeout
        from parity.properties.checks import make_plan
        from parity.properties.tolerance import Verdict

        try:
            p = self._ready()
        except CandidateFailed as e:  # a restart whose import broke: this case's failure
            return e.kind, Verdict(False, str(e), math.inf)
        self.sent += 1
        msg = {"cmd": "run", "prop": prop, "id": self.sent}
        p.send({**msg, "meta": meta} if path is None else {**msg, "file": path})
        self.history.append((prop, meta, path))
        del self.history[: -self.HISTORY - 1]
        # the harness's own copy of the case, built while the worker runs the candidate
        try:
            case = (
                self.spec.build(meta, self.device)
                if path is None
                else repro.load(path).case(self.device)
            )
            plan = make_plan(self.spec, prop, case)
        except BaseException:
            self._lost()
            raise
        wait = self._wait()
        try:
            reply, blobs = p.recv(wait)
        except WorkerTimeout:
            self._lost()
            if wait < self.timeout and self._past_deadline():
                raise BudgetSpent from None  # the budget ended inside this case: not a hang
            why = f"hang: no result within {self.timeout:g} s (worker killed)"
            return "hang", Verdict(False, why, math.inf)
        except WorkerDied as e:
            self._lost()
            msg = f"crash: {e}" + ("\n" + _indent(e.stderr_tail) if e.stderr_tail else "")
            return "crash", Verdict(False, msg, math.inf)
        except BadReply as e:
            self._lost()
            return "fail", Verdict(False, f"the worker's reply is malformed: {e}", math.inf)
        if reply.get("id") != self.sent:
            self._lost()
            return "fail", Verdict(False, "the worker's reply answers another request", math.inf)
        if not reply.get("ok"):
            err = str(reply.get("error", ""))[:MAX_MESSAGE]
            if reply.get("kind") == "bad_meta":
                raise ValueError(err or "bad case description")
            return "error", Verdict(False, f"parity error: {err}", math.inf)
        status = reply.get("status")
        if status == "crash":
            self._lost()
            why = f"crash (CUDA error, worker restarted): {reply.get('error', '')!s}"
            return "crash", Verdict(False, why[:MAX_MESSAGE], math.inf)
        if plan is None:
            return "n/a", None
        if status == "n/a":  # the harness's plan says the property applies: not the worker's call
            return "fail", Verdict(False, "the worker's reply skips a case that applies", math.inf)
        if status == "bad_output":  # what the candidate returned broke its conversion
            err = str(reply.get("error", ""))[:MAX_MESSAGE]
            return "fail", Verdict(False, f"the candidate's output cannot be read: {err}", math.inf)
        try:
            outcomes = outcomes_from_wire(reply.get("outcomes"), blobs, self.device)
        except BadReply as e:
            self._lost()
            return "fail", Verdict(False, f"the worker's reply is malformed: {e}", math.inf)
        self.last_describe = case.describe()
        status, v = _judged(self.spec, plan, outcomes, self.accept)
        self.last_failed = (prop, case, outcomes) if status == "fail" else None
        return status, v

    def _blame(self, prop, meta, path, status, v):
        """The crashing case alone in a fresh worker; if it passes, the cases before it (most
        recent first), each in a fresh worker followed by the crashing case."""
        from parity.campaign.worker import is_cuda_error

        before = list(self.history[:-1])
        self.history = []
        if not before:  # it was the first case of a fresh worker: it crashed alone
            self.blame = {"alone": True}
            return status, v
        alone, _ = self._run(prop, meta=meta, path=path)
        self._lost()  # the blame search leaves no worker with its history behind
        if alone == "crash":
            self.blame = {"alone": True}
            return status, v
        found = None
        for earlier in list(reversed(before))[: self.BLAME_TRIES]:
            if self._past_deadline():
                break
            first, _ = self._run(earlier[0], meta=earlier[1], path=earlier[2])
            if first == "crash":
                continue  # it crashes by itself (already reported on its own)
            got, _ = self._run(prop, meta=meta, path=path)
            self._lost()
            if got == "crash":
                found = earlier
                break
        self.blame = {"alone": False, "after": found}
        if found is None:
            note = (
                f"crashes only after earlier cases, not alone (re-run alone in a fresh worker it "
                f"was {alone}; none of the {min(len(before), self.BLAME_TRIES)} cases before it "
                "alone reproduces the crash)"
            )
        else:
            what = json.dumps(found[1], sort_keys=True) if found[1] is not None else found[2]
            note = (
                f"crashes after case A, not alone: re-run alone in a fresh worker it was {alone}; "
                f"after case A ({found[0]}: {what}) it crashes again"
            )
        if is_cuda_error(v.message):
            note += " (an asynchronous CUDA error of case A)"
        v.message = note + "\n" + v.message
        return status, v

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()
        self.proc = None


def _why(e) -> str:
    return str(e).split("(", 1)[-1].rstrip(")")


def _indent(text: str, pre: str = "    ") -> str:
    return "\n".join(pre + ln for ln in text.splitlines())


def evaluator_for(
    spec, impl, device: str, *, isolate: bool, timeout: float = 60.0, env=None, accept=()
):
    """An `Isolated` evaluator (the candidate in a worker, imported there by name) or
    `InProcess`; `accept`: named variants of the op to judge under (ValueError for others)."""
    if isolate:
        return Isolated(spec, impl.name, device, timeout=timeout, env=env, accept=accept)
    return InProcess(spec, impl, device, accept=accept)


def _registration(op: str, impl_name: str):
    """The registered `Impl` of a name; None for a `module:function` candidate, whose code the
    harness never imports."""
    from parity.catalog import load_all
    from parity.registry import registered_impl

    load_all()  # the registrations are the catalog's to load
    return registered_impl(op, impl_name) if ":" not in impl_name else None


def declared_accept(op: str, impl_name: str) -> tuple:
    """The variants a registered implementation declares it follows (`register(accept=)`); ()
    for a `module:function` candidate (`--accept` names its)."""
    impl = _registration(op, impl_name)
    return tuple(impl.accept) if impl is not None else ()


BY_NAME = object()  # drive(supports=): look the registration up by the implementation's name


def declared_supports(op: str, impl_name: str):
    """A registered implementation's `supports(meta)` predicate (`register(supports=)`); None
    for a `module:function` candidate."""
    impl = _registration(op, impl_name)
    return impl.supports if impl is not None else None


def _declared_out(supports, meta: dict) -> str | None:
    """Why the implementation declares `meta` unsupported; None: run it. A bad input (its error
    is checked whatever the options) and a predicate that raises run as before."""
    if supports is None or meta.get("invalid") is not None:
        return None
    try:
        why = supports(meta)
    except Exception:
        return None
    return f"declared: {why}" if why else None


def _accepted(spec, accept) -> tuple:
    """`accept` as the op's variant names in declaration order; ValueError names the op's
    variants for an unknown one."""
    from parity.properties.variants import names, validate

    chosen = validate(spec, accept or ())
    return tuple(n for n in names(spec) if n in chosen)


def diagnosis(spec, evaluator, prop: str, meta=None) -> dict | None:
    """For a failing matches_reference/nan_policy case (or inexact relation) of an op that
    declares variants: the variant sets under which its outputs match the reference
    (`variants.diagnose`, `variants.diagnose_relation`, judged here in the harness), as
    {"variants": [[name, ...], ...], "text": the line to print}. The outputs are the
    evaluator's last failing ones when they are this case's, else the case is run again. None
    where it does not apply (another property, another kind of failure, no variants)."""
    from parity.properties import variants

    rel = next((r for r in getattr(spec, "relations", ()) if r.name == prop), None)
    inexact = rel is not None and not rel.exact  # judged against the reference's model
    if (prop not in variants.PROPS and not inexact) or not getattr(spec, "variants", ()):
        return None
    got = getattr(evaluator, "last_failed", None)
    if meta is None:  # the case the evaluator judged last (a repro file's)
        if got is None or got[0] != prop:
            return None
    elif got is None or got[0] != prop or _key(got[1].meta) != _key(meta):
        try:
            status, _ = evaluator.evaluate(prop, meta)
        except Exception:
            return None
        got = getattr(evaluator, "last_failed", None)
        if status != "fail" or got is None:
            return None
    _, case, outcomes = got
    from parity.properties.checks import make_plan, relation_outputs, structure

    if inexact:  # the same plan the evaluator ran (deterministic in the case)
        plan = make_plan(spec, prop, case)
        if plan is None or len(outcomes) != len(plan.calls):
            return None
        for c, o in zip(plan.calls, outcomes):
            if o.kind != "returned" or not structure(spec, plan.cases[c.case], o):
                return None  # a wrong structure is no convention
        try:
            derived, base = relation_outputs(spec, plan, outcomes)
            found = variants.diagnose_relation(spec, case, derived, base, relation=prop)
        except Exception as e:  # parity's bug: said, never a verdict
            return {"variants": [], "text": f"diagnosis failed: {type(e).__name__}: {e}"}
        return {"variants": [list(f) for f in found], "text": variants.describe(spec, found)}
    if any(o.kind != "returned" or not structure(spec, case, o) for o in outcomes[:1]):
        return None  # a wrong structure is no convention
    try:
        found = variants.diagnose(spec, case, tuple(outcomes[0].items), prop=prop)
    except Exception as e:  # parity's bug: said, never a verdict
        return {"variants": [], "text": f"diagnosis failed: {type(e).__name__}: {e}"}
    return {"variants": [list(f) for f in found], "text": variants.describe(spec, found)}


def warm_up(device: str = "cpu") -> None:
    """What the first case would pay for, done before the clock starts: the CUDA context, and
    `torch.use_deterministic_algorithms` (writes_all_outputs) importing torch._inductor."""
    import torch

    with contextlib.suppress(Exception):
        import torch._inductor.config
    if device.startswith("cuda"):
        torch.empty(1, device=device)
        torch.cuda.synchronize()


def save_repro(spec, device, impl_name, prop, meta, *, out, kind, verdict=None, seed=None):
    """Write the repro of one case (built in the harness; no kernel runs): (path, describe) or
    (None, the error)."""
    from parity.campaign import repro

    try:
        case = spec.build(meta, device)
        kind = kind if kind in ("crash", "hang") else "fail"
        path = repro.save(
            case, out, impl=impl_name, prop=prop, kind=kind, verdict=verdict, seed=seed
        )
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"
    return str(path), case.describe()


def _remove_repro(path: str | None) -> None:
    if not path:
        return
    p = __import__("pathlib").Path(path)
    for q in (p, p.with_suffix(".safetensors")):
        with contextlib.suppress(OSError):
            q.unlink()


# --- the driver ----------------------------------------------------------------------------


# A case that ran the GPU out of memory, in the harness or in the worker, runs again after the
# caches are given back: on a GPU shared by a suite's processes that is the others' memory, not
# the case's verdict. The last try's result stands whatever it is (a kernel that allocates
# without bound still fails), and `Stats.oom_retries` counts the retries.
OOM_TRIES = 3


def _evaluate(evaluator, prop: str, meta: dict, device: str, stats: Stats):
    from parity.properties.tolerance import Verdict

    for attempt in range(OOM_TRIES):
        try:
            status, v = evaluator.evaluate(prop, meta)
        except Exception as e:  # a bad description: parity's bug
            status, v = "error", Verdict(False, f"parity error: {type(e).__name__}: {e}")
        _gpu.trim_cache(device)  # this process's idle cache back to the shared GPU
        oom = status in FAILING and v is not None and _gpu.is_oom(v.message)
        if not oom or attempt == OOM_TRIES - 1 or not device.startswith("cuda"):
            return status, v
        stats.oom_retries += 1
        _gpu.trim_cache(device, 0)
        time.sleep(1.0 + 2.0 * attempt)  # the other processes' peaks pass
    raise AssertionError("unreachable")


def _key(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True, default=repr)


def drive(
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
    shrink: bool = True,
    shrink_time: float = 60.0,
    ledger=None,
    out_dir: str | os.PathLike | None = None,
    dtypes=None,
    size: str | None = None,
    raise_errors: bool = False,
    derandomize: bool | None = None,
    on_start: Callable[[str, dict], None] | None = None,
    on_example: Callable[[Stats, str], None] | None = None,
    database=None,
    supports=BY_NAME,
) -> Stats:
    """Run `prop` with Hypothesis, each case through `evaluator.evaluate(prop, meta)`.

    deadline / hard_deadline: `time.monotonic()` values; no new case is drawn after
    `deadline`, shrinking stops at `hard_deadline` or `shrink_time` after the first failure
    (the smallest failure found so far is kept). `shrink=False`: the first failure is the
    result. A failing case that a `ledger` entry matches counts as xfail and the search goes
    on. `out_dir`: where the failure's repro is saved (None: not saved). `raise_errors`: a
    parity error raises `ParityError` instead of counting as a failure (tests of parity).
    `database`: an `exampledb.ExampleStore`: its saved failing cases of this (op, impl, prop,
    device) run first (explicit examples; those that pass now are deleted), and the final
    failing case is saved there. `supports`: the implementation's declared support
    (`register(supports=)`, None: none); by default the registration of `impl_name`.
    """
    import hypothesis
    from hypothesis import Verbosity, given
    from hypothesis.errors import Unsatisfiable

    from parity.properties.tolerance import Verdict

    size = size or ("small" if device == "cpu" else "full")
    stats = Stats(spec.name, impl_name, prop, device)
    strat = strategy_for(spec, prop, size=size, dtypes=dtypes)
    if strat is None:
        stats.stopped = f"{spec.name} has no strategy for {prop}"
        return stats
    base = get_profile(profile)
    overrides: dict = {"verbosity": Verbosity.quiet}
    if max_examples is not None:
        overrides["max_examples"] = max_examples
    if derandomize is not None:
        overrides["derandomize"] = derandomize
    if seed is None and overrides.get("derandomize", base.derandomize):
        # derandomized runs (pr, bisect) draw the same cases for the same op and property, not
        # a digest of this function's source (an edit of the driver would change every case)
        seed = zlib.crc32(f"{spec.name}/{prop}".encode())
        overrides["derandomize"] = False
    if not shrink:
        drop = (Phase.shrink, Phase.explain)
        overrides["phases"] = tuple(p for p in base.phases if p not in drop)
    s = settings(base, **overrides)
    reject_cap = REJECTS_PER_EXAMPLE * s.max_examples
    nothing_cap = max(32, ALL_UNSUPPORTED_PER_EXAMPLE * s.max_examples)
    targeted = profile_name(profile) == "parity-nightly"
    fails: dict[str, tuple] = {}
    if device == "cuda":  # where compiles happen: counted, so a slow unit can say why
        _compiles.install()
    c0, cs0 = _compiles.totals()
    t0 = time.perf_counter()
    state: dict = {"first": None, "shrink_until": None, "provisional": None, "last": None}
    state["after"] = None  # the earlier case a crash needs (it does not crash alone)
    if hasattr(evaluator, "hard_deadline"):  # a hanging case is cut off at the budget's end
        evaluator.hard_deadline = hard_deadline
    if supports is BY_NAME:
        supports = declared_supports(spec.name, impl_name)

    def save(meta, status, v):
        if out_dir is None:
            return None, ""
        path, info = save_repro(
            spec, device, impl_name, prop, meta, out=out_dir, kind=status, verdict=v, seed=seed
        )
        if path is None:
            print(f"parity: could not save the repro: {info}", file=sys.stderr)
        return path, info

    from parity.campaign.exampledb import key_for

    db_key = key_for(spec.name, impl_name, prop, device)
    saved = database.fetch(db_key) if database is not None else []
    replay = {_key(m): m for m in saved}
    from parity.campaign.worker import raise_if_terminated

    @s
    @given(strat)
    def body(meta):
        raise_if_terminated()  # a SIGTERM since the last example: stop here, between cases
        now = time.monotonic()
        key = _key(meta)
        if state["shrink_until"] is not None and now > state["shrink_until"]:
            raise _ShrinkSpent
        if state["first"] is None and deadline is not None and now > deadline:
            raise BudgetSpent
        if key in fails and fails[key][0] in ("crash", "hang"):
            status, v = fails[key]  # never run a crash twice for the same case
        else:
            if on_start:
                on_start(prop, meta)
            out = _declared_out(supports, meta)
            if out is not None:  # left out by the registration: no case built, no worker call
                status, v = "unsupported", Verdict(True, out)
            else:
                status, v = _evaluate(evaluator, prop, meta, device, stats)
            if status == "error" and raise_errors:
                raise ParityError(v.message)
            entry = ledger.match(spec.name, impl_name, prop, meta) if ledger else None
            was = status
            if entry is not None and status not in ("unsupported", "n/a"):
                failed = status in FAILING
                ledger.record(entry, failed)
                if failed:
                    status = "xfail"
            stats.record(status, meta, v, was=was)
            if on_example:
                on_example(stats, status)
            if key in replay and status not in FAILING:
                database.delete(db_key, replay.pop(key))  # fixed (or unsupported) now
            blame = getattr(evaluator, "blame", None) if status == "crash" else None
            if blame and not blame.get("alone") and state["first"] is None:
                state["after"] = blame  # not this case's own crash: nothing to shrink
            if status in ("unsupported", "n/a") and state["first"] is None:
                skipped = stats.unsupported + stats.not_applicable
                if stats.run == 0 and skipped >= nothing_cap:
                    raise _NothingSupported
                if skipped <= reject_cap:
                    hypothesis.reject()  # counted above; the budget goes to supported cases
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
                if state["after"] is not None:
                    state["shrink_until"] = time.monotonic()
                if shrink:
                    state["provisional"] = save(meta, status, v)  # written as soon as found
            raise PropertyFailed(meta, v.message if v is not None else status)

    for meta in reversed(saved):  # Hypothesis runs explicit examples bottom-up: newest first
        body = hypothesis.example(meta)(body)
    if seed is not None:
        body = hypothesis.seed(seed)(body)
    final = None
    try:
        body()
    except PropertyFailed as e:
        final = e.meta
    except BudgetSpent:
        stats.stopped = "time budget spent"
        if state["last"] is not None:
            final = state["last"][0]
    except _ShrinkSpent:
        final = state["last"][0]
        stats.stopped = "shrinking time spent"
        if state["after"] is not None:
            stats.stopped = "not shrunk: the crash needs an earlier case"
    except (Unsatisfiable, _NothingSupported):
        stats.stopped = _nothing_run(stats)
    except ParityError:
        raise
    except BaseException as e:
        from parity.campaign.worker import Terminated

        if isinstance(e, (KeyboardInterrupt, SystemExit, Terminated)):
            raise
        found = _find_failed(e)
        if found is not None:
            final = found.meta
        elif state["last"] is not None:  # Flaky and friends: keep the last failure seen
            final = state["last"][0]
        else:
            if raise_errors:
                raise
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
        c1, cs1 = _compiles.totals()
        stats.compiles, stats.compile_seconds = c1 - c0, cs1 - cs0
        # a cut whose exception was swallowed is still a cut, not a verdict; what it had run is
        # kept for the examples-a-second figure only
        raise_if_terminated(
            {
                "run": stats.run,
                "unsupported": stats.unsupported,
                "seconds": stats.seconds,
                "compiles": stats.compiles,
                "compile_seconds": stats.compile_seconds,
            }
        )
    if not stats.run and not stats.stopped and (stats.unsupported or stats.not_applicable):
        # Hypothesis ended its search on rejects alone (at most 10 calls per example)
        stats.stopped = _nothing_run(stats)
    if final is not None:
        _set_failure(stats, spec, prop, impl_name, device, final, fails, state, save)
        if stats.failure["kind"] == "fail":  # a documented convention that explains it?
            found = diagnosis(spec, evaluator, prop, final)
            if found is not None:
                stats.failure["diagnosis"] = found
        if database is not None and stats.failure.get("kind") in FAILING:
            database.save(db_key, final)
        after = (state["after"] or {}).get("after")
        if after is not None and stats.failure["meta"] == state["first"]:
            a_prop, a_meta, _ = after
            stats.failure["after"] = {
                "prop": a_prop,
                "meta": a_meta,
                "repro": repro_command(spec.name, impl_name, a_prop, device, a_meta or {}),
            }
    return stats


def _nothing_run(stats) -> str:
    if stats.run == 0 and stats.unsupported:
        n = stats.unsupported + stats.not_applicable
        return f"every case was unsupported ({n} drawn): nothing was tested"
    if stats.run == 0 and stats.not_applicable:
        return f"the property applies to none of the {stats.not_applicable} cases"
    return "no case can be drawn (dtypes of the implementation?)"


def _set_failure(stats, spec, prop, impl_name, device, final, fails, state, save) -> None:
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
        "tolerance": spec.tolerance,
        "repro_file": path,
        "describe": describe or "",
        "shrunk": _key(final) != _key(state["first"]),
    }


def _find_failed(e: BaseException):
    if isinstance(e, PropertyFailed):
        return e
    for sub in getattr(e, "exceptions", ()) or ():
        got = _find_failed(sub)
        if got is not None:
            return got
    return None


# --- a campaign: every property ------------------------------------------------------------


ROUND0 = 8  # examples of each property in the first round of an interleaved campaign


def run_campaign(
    spec,
    props: list[str],
    evaluator,
    *,
    max_time: float | None = None,
    fail_fast: bool = False,
    interleave: bool = True,
    on_prop_start: Callable[[str], None] | None = None,
    on_prop_done: Callable[[Stats], None] | None = None,
    **kw,
) -> list[Stats]:
    """`drive` for each property, interleaved: rounds of ROUND0, 2 ROUND0, 4 ROUND0 ... examples
    of every property in turn (each round a fresh seed derived from `seed`), so a fault only a
    late property sees is found as early as any other; a property leaves the rotation at its
    first failure (shrunk in that round) or when its budget (`max_examples`, else the profile's)
    is spent. `max_time`: shared by the rounds in proportion to their examples (or, with no
    example bound, in growing time slices); a running case is cut off at its end.
    `fail_fast`: stop at the first counterexample. `interleave=False`: one property after the
    other."""
    start = time.monotonic()
    hard = start + max_time if max_time is not None else None
    if not interleave or len(props) < 2:
        return _sequential(spec, props, evaluator, hard, fail_fast, on_prop_start, on_prop_done, kw)
    base = get_profile(kw.get("profile", "pr"))
    total = kw.pop("max_examples", None) or base.max_examples
    clock_bound = hard is not None and total >= 1_000_000
    seed = kw.pop("seed", None)
    if seed is None and base.derandomize:
        seed = 0
    left = {p: total for p in props}
    parts: dict[str, list[Stats]] = {p: [] for p in props}
    active = list(props)
    out: dict[str, Stats] = {}
    k = 0
    while active:
        for prop in list(active):
            now = time.monotonic()
            n = min(left[prop], ROUND0 << min(k, 30))
            deadline = None
            if hard is not None:
                span = max(0.0, hard - now)
                if clock_bound:
                    deadline = now + span / len(active) * min(1.0, 2.0**k / 8)
                else:
                    deadline = now + span * n / max(1, sum(left[q] for q in active))
            if on_prop_start:
                on_prop_start(prop)
            rseed = None if seed is None else seed * 1_000_003 + k
            at, cases_before = (
                time.monotonic() - start,
                sum(q.run + q.unsupported + q.not_applicable for ps in parts.values() for q in ps),
            )
            st = drive(
                spec,
                prop,
                evaluator,
                max_examples=n,
                seed=rseed,
                derandomize=False if rseed is not None else None,
                deadline=deadline,
                hard_deadline=hard,
                **kw,
            )
            parts[prop].append(st)
            left[prop] -= n
            if st.seconds_to_failure is not None:
                st.campaign_seconds_to_failure = at + st.seconds_to_failure
                st.campaign_cases_to_failure = cases_before + (st.cases_to_failure or 0)
            over = hard is not None and time.monotonic() >= hard
            finished = st.failure is not None or left[prop] <= 0 or over or not _drawable(st)
            if finished:
                active.remove(prop)
                out[prop] = _rounds(parts[prop], over and st.failure is None)
                if on_prop_done:
                    on_prop_done(out[prop])
            if fail_fast and st.failure is not None:
                active = []
                break
            if over:
                for q in active:
                    out[q] = _rounds(parts[q], True)
                active = []
                break
        k += 1
    return [out[p] for p in props if p in out]


def _drawable(st: Stats) -> bool:
    """False where the property cannot run at all (no strategy, nothing drawable, every case
    unsupported)."""
    if st.stopped.startswith(("every case was unsupported", "the property applies to none")):
        return False
    return not (st.stopped and not st.run and not st.unsupported and not st.not_applicable)


def _rounds(parts: list[Stats], budget_spent: bool) -> Stats:
    """One property's stats from its rounds (run one after the other)."""
    before = sum(p.seconds for p in parts[:-1])
    cases = sum(p.run + p.unsupported + p.not_applicable for p in parts[:-1])
    st = merge_stats(parts)
    st.seconds = before + parts[-1].seconds
    last = parts[-1]
    if last.failure is not None:
        st.failure, st.repro_file, st.repro_files = last.failure, last.repro_file, last.repro_files
        if last.seconds_to_failure is not None:
            st.seconds_to_failure = before + last.seconds_to_failure
            st.cases_to_failure = cases + (last.cases_to_failure or 0)
    st.stopped = last.stopped or ("time budget spent" if budget_spent else "")
    st.campaign_seconds_to_failure = last.campaign_seconds_to_failure
    st.campaign_cases_to_failure = last.campaign_cases_to_failure
    return st


def _sequential(spec, props, evaluator, hard, fail_fast, on_prop_start, on_prop_done, kw):
    out = []
    start = time.monotonic()
    for i, prop in enumerate(props):
        deadline = None
        if hard is not None:
            now = time.monotonic()
            deadline = now + max(0.0, hard - now) / (len(props) - i)
        if on_prop_start:
            on_prop_start(prop)
        at = time.monotonic() - start
        cases = sum(q.run + q.unsupported + q.not_applicable for q in out)
        st = drive(spec, prop, evaluator, deadline=deadline, hard_deadline=hard, **kw)
        if st.seconds_to_failure is not None:
            st.campaign_seconds_to_failure = at + st.seconds_to_failure
            st.campaign_cases_to_failure = cases + (st.cases_to_failure or 0)
        out.append(st)
        if on_prop_done:
            on_prop_done(st)
        if fail_fast and st.failure is not None:
            break
    return out


def run_property(
    spec,
    prop: str,
    fn: Callable,
    *,
    impl_name: str,
    device: str = "cpu",
    size: str | None = None,
    dtypes=None,
    profile: str = "pr",
    max_examples: int | None = None,
    seed: int | None = None,
    shrink: bool = True,
    prepare: Callable | None = None,
    accept: tuple = (),
) -> Stats:
    """One property of `fn` (through `prepare`, default its `parity_prepare`), in this process,
    no repro file, judged under the named variants `accept`; a parity error raises."""
    from parity.registry import Impl, declared_support_of

    impl = Impl(op=spec.name, name=impl_name, backend="external", fn=fn, prepare=prepare)
    return drive(
        spec,
        prop,
        InProcess(spec, impl, device, accept=accept),
        impl_name=impl_name,
        supports=declared_support_of(fn, spec.name),
        device=device,
        size=size,
        dtypes=dtypes,
        profile=profile,
        max_examples=max_examples,
        seed=seed,
        shrink=shrink,
        raise_errors=True,
    )


# --- --workers N ---------------------------------------------------------------------------


def _campaign_main(conn, log_path: str, env: dict | None, cfg: dict) -> None:
    """A `--workers` process: a whole campaign in-process, events sent on `conn` as frames."""
    from parity.campaign.worker import add_sys_path, child_setup, terminate_on_sigterm

    child_setup(log_path, env)
    terminate_on_sigterm()
    add_sys_path(cfg.get("sys_path"))
    from parity.campaign.wire import encode

    campaign_process(cfg, lambda ev: conn.send_bytes(encode({**ev, "blobs": []}, [])))
    conn.close()


def campaign_process(cfg: dict, emit: Callable[[dict], None]) -> None:
    """Body of one `--workers` process: parity's code only. The candidate runs in this
    process's own `Isolated` worker (judged here, never where it runs) unless --no-isolate."""
    from parity.campaign.candidate import lookup
    from parity.catalog import get_spec

    spec = get_spec(cfg["op"])
    impl = lookup(cfg["op"], cfg["impl"])
    from parity.campaign.ledger import Ledger

    ledger = Ledger.load(cfg["ledger"]) if cfg.get("ledger") else None
    accept = tuple(cfg.get("accept") or ())
    if cfg.get("isolate", True):
        timeout = cfg.get("timeout", 60.0)
        ev = Isolated(spec, cfg["impl"], cfg["device"], timeout=timeout, accept=accept)
    else:
        ev = InProcess(spec, impl, cfg["device"], accept=accept)
    try:
        ev.start()
        _campaign_body(cfg, emit, spec, impl, ledger, ev)
    finally:
        ev.close()


def _campaign_body(cfg, emit, spec, impl, ledger, ev) -> None:
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
        fail_fast=bool(cfg.get("fail_fast")),
        on_start=lambda prop, meta: emit({"event": "start", "prop": prop, "meta": meta}),
        on_example=lambda st, status: emit({"event": "example", "prop": st.prop, "status": status}),
        on_prop_done=lambda st: emit({"event": "prop", "stats": jsonable(st.as_dict())}),
    )
    emit({"event": "done", "ledger": ledger.summary() if ledger else []})


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
    isolate: bool = True,
    accept: tuple = (),
    fail_fast: bool = False,
) -> list[Stats]:
    """N campaign processes (seed + i, max_examples / N each, one GPU each on cuda; N at most
    the devices: `max_workers`). Each is parity's code: it runs the candidate in its own
    isolated worker and judges there, never in the candidate's process. A campaign process that
    dies or stops answering (parity's own failure) records a crash/hang for its case and is
    restarted on the properties it had left. `fail_fast`: the first failure (or crash, hang)
    any process reports stops them all; the properties no process finished are left out, as
    the sequential campaign leaves them out."""
    from parity._gpu import gpu_env
    from parity.campaign.wire import BadReply
    from parity.campaign.worker import Child, WorkerDied, WorkerTimeout, warm_forkserver
    from parity.properties.tolerance import Verdict

    n = max(1, min(n, max_workers(device)))
    per = None if max_examples is None else max(1, math.ceil(max_examples / n))
    # a case inside a campaign process is bounded by its own worker's timeout (and the blame
    # search after a crash): this is only a watchdog for parity's own process
    watchdog = (3 + 2 * Isolated.BLAME_TRIES) * timeout + 60
    warm_forkserver()  # before the clock: --max-time measures testing
    start = time.monotonic()
    parts: dict[str, list[Stats]] = {p: [] for p in props}
    ledger_rows: list[list[dict]] = []

    class W:
        def __init__(self, i: int, todo: list[str]):
            self.i, self.todo = i, list(todo)
            self.env = gpu_env(i, device)
            self.proc = None
            self.current = None  # (prop, meta, t): the case being evaluated
            self.partial: dict[str, Stats] = {}
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
                "timeout": timeout,
                "isolate": isolate,
                "accept": list(accept),
                "fail_fast": fail_fast,
            }
            # not a daemon: it starts its own isolated workers
            self.proc = Child(target=_campaign_main, args=(cfg,), env=self.env, daemon=False)
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
            st = self.partial.pop(prop, None) or Stats(spec.name, impl_name, prop, device)
            v = Verdict(False, msg, math.inf)
            entry = ledger.match(spec.name, impl_name, prop, meta) if ledger and meta else None
            if entry is not None:
                ledger.record(entry, True)
                st.record("xfail", meta, v, was=kind)
            else:
                st.record(kind, meta or {}, v)
                path = None
                if meta is not None:
                    path, _ = save_repro(
                        spec,
                        device,
                        impl_name,
                        prop,
                        meta,
                        out=out_dir,
                        kind=kind,
                        verdict=v,
                        seed=seed,
                    )
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
                    "shrunk": False,
                }
            parts[prop].append(st)
            self.todo.remove(prop)
            if fail_fast:
                stop[0] = True
                self.todo = []
            self.launch()

        def poll(self) -> bool:
            if self.done:
                return False
            busy = False
            while True:
                try:
                    ev, _ = self.proc.recv(0)
                except WorkerDied as e:
                    self.lost("crash", f"process died ({str(e).split('(', 1)[-1]}", e.stderr_tail)
                    return True
                except WorkerTimeout:  # nothing to read now
                    break
                except BadReply as e:
                    self.lost("crash", f"sent a malformed event ({e})", "")
                    return True
                busy = True
                kind = ev.get("event")
                if kind == "start":
                    self.current = (ev["prop"], ev["meta"], time.monotonic())
                elif kind == "example":
                    st = self.partial.setdefault(
                        ev["prop"], Stats(spec.name, impl_name, ev["prop"], device)
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
                    if fail_fast and st.failure is not None:
                        stop[0] = True
                elif kind == "done":
                    ledger_rows.append(ev.get("ledger", []))
                    self.proc.close()
                    self.done = True
                    return True
            if self.current is not None and time.monotonic() - self.current[2] > watchdog:
                tail = self.proc.stderr_tail()
                self.lost("hang", f"no result within {watchdog:g} s (process killed)", tail)
                return True
            if max_time is not None and time.monotonic() > start + max_time + 30:
                self.proc.kill()  # past the budget and its margin: parity's own process hangs
                for prop in self.todo:
                    st = self.partial.pop(prop, None) or Stats(spec.name, impl_name, prop, device)
                    st.stopped = "time budget spent (campaign process killed)"
                    parts[prop].append(st)
                self.todo = []
                self.done = True
                return True
            return busy

    stop = [False]  # fail_fast: a failure was reported; every process is stopped
    workers = [W(i, props) for i in range(n)]
    try:
        while not all(w.done for w in workers):
            if not any(w.poll() for w in workers):
                time.sleep(0.02)
            if stop[0]:
                for w in workers:
                    if not w.done and w.proc is not None:
                        w.proc.kill()
                    w.todo, w.done = [], True
    finally:
        for w in workers:
            if w.proc is not None:
                w.proc.stop()
    if ledger is not None:
        for rows in ledger_rows:
            ledger.merge_counts(rows)
    if stop[0]:  # only what some process finished (with the failure among it)
        return [merge_stats(parts[p]) for p in props if parts[p]]
    return [
        merge_stats(parts[p]) if parts[p] else Stats(spec.name, impl_name, p, device) for p in props
    ]


def max_workers(device: str) -> int:
    """--workers is bounded by the devices: the visible GPUs on cuda, the usable cores on the
    CPU."""
    if device.startswith("cuda"):
        from parity._gpu import visible_gpus

        return max(1, len(visible_gpus()))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# --- the report of a campaign --------------------------------------------------------------


@dataclass
class Report:
    """What a campaign found: one `Stats` per property (examples, verdict, shrunk case, repro
    file, rerun line), what was skipped, and the exit code the CLI would give."""

    op: str
    impl: str
    device: str
    properties: list[Stats]
    seconds: float = 0.0
    skipped: list = field(default_factory=list)
    accepted: list = field(default_factory=list)
    xpasses: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return exit_code(self.properties, self.xpasses)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def failures(self) -> list[Stats]:
        return [st for st in self.properties if st.failure is not None or st.failed]

    def __getitem__(self, prop: str) -> Stats:
        return next(st for st in self.properties if st.prop == prop)

    def as_dict(self) -> dict:
        return jsonable(
            {
                "op": self.op,
                "impl": self.impl,
                "device": self.device,
                "exit_code": self.exit_code,
                "seconds": self.seconds,
                "properties": [st.as_dict() for st in self.properties],
                "repro_files": [f for st in self.properties for f in st.repro_files],
                "skipped": self.skipped,
                "accepted": self.accepted,
                "xpass": self.xpasses,
            }
        )

    def text(self) -> str:
        """What the CLI prints: each failure, then one line per property."""
        from parity.campaign.text import failure_text

        lines = [failure_text(st) for st in self.failures if st.failure is not None]
        lines.append(f"parity: {self.op} / {self.impl} on {self.device} ({self.seconds:.1f} s)")
        for st in self.properties:
            lines.append(
                f"  {st.prop:<20} {st.verdict():<12} {st.run} run, {st.passed} passed, "
                f"{st.unsupported} unsupported, {st.not_applicable} n/a"
                + (f"  ({st.stopped})" if st.stopped else "")
            )
        if self.skipped:
            lines.append(f"  skipped: {', '.join(self.skipped)}")
        if self.accepted:
            lines.append(f"  accepted variants: {', '.join(self.accepted)} (judged under them)")
        lines += [f"  {x}" for x in self.xpasses + self.notes]
        if self.exit_code == 3:
            lines.append("NOT RUN: every case was unsupported; nothing was tested")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def raise_for_failure(self) -> Report:
        """AssertionError (the CLI's text) on a counterexample or when nothing was tested."""
        __tracebackhide__ = True  # pytest shows the user's call, not this frame
        if self.exit_code != 0:
            raise AssertionError(self.text())
        return self
