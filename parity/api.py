"""The public API: test a kernel from Python, and so from one's own pytest suite.

    import parity
    parity.check("swiglu", my_swiglu).raise_for_failure()

`check` runs the same campaign as `parity fuzz` (`parity.campaign`): every property of the op,
with the kernel in a worker process (a crash or a hang is a verdict, not a dead test run), on
the GPU when there is one, and returns a `Report`. `ops()` lists the ops, `register` registers
a fast path, `strategies(op)` gives the case strategy for one's own `@given` tests.

Importing this module imports neither torch nor Hypothesis (the pytest plugin sets its session
defaults here in any repository).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parity.campaign.engine import Report

# defaults for `check` set by the pytest plugin from its options (--parity-skip-property, ...)
# in a session that passes them; empty otherwise
SESSION: dict = {}
ENV_DATABASE = "PARITY_HYPOTHESIS_DB"  # the example store's directory; "off"/"none" disables it
ENV_MAX_EXAMPLES = "PARITY_MAX_EXAMPLES"  # examples per property when check() is given none


def _importable_name(fn: Callable) -> str | None:
    """`module:qualname` that imports back to `fn` itself, else None."""
    from parity.catalog import resolve_callable

    mod, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not mod or mod == "__main__" or not qual or "<" in qual:
        return None
    name = f"{mod}:{qual}"
    try:
        return name if resolve_callable(name) is fn else None
    except Exception:
        return None


def _sys_path_root(top: str) -> str | None:
    """The sys.path entry holding the top-level module or package `top`, found without
    importing anything (the first that has it, as the import system would)."""
    for entry in sys.path:
        base = os.path.abspath(entry or os.getcwd())
        if os.path.isfile(os.path.join(base, top, "__init__.py")) or os.path.isfile(
            os.path.join(base, top + ".py")
        ):
            return base
    return None


def _path_prefix(name: str) -> str:
    """`PYTHONPATH=DIR ` when the module of `name` ("module:function") is not importable from
    the current directory by a fresh `parity` command (a conftest.py in tests/, say), else ""."""
    mod = sys.modules.get(name.partition(":")[0])
    path = getattr(mod, "__file__", None)
    if path:
        root = os.path.dirname(os.path.abspath(path))
        if os.path.basename(path) == "__init__.py":
            root = os.path.dirname(root)
        for _ in range(name.partition(":")[0].count(".")):
            root = os.path.dirname(root)
    else:  # not imported here (the worker imports it): where on sys.path its package lies
        root = _sys_path_root(name.partition(":")[0].partition(".")[0])
        if root is None:
            return ""
    cwd = os.getcwd()
    if root == cwd or "site-packages" in root or "dist-packages" in root:
        return ""
    if root in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        return ""
    rel = os.path.relpath(root, cwd)
    return f"PYTHONPATH={rel if not rel.startswith('..') else root}:$PYTHONPATH "


def _profile(name: str) -> str:
    """The engine's name of a profile given as pr|nightly|bisect or parity-pr|..."""
    from parity.campaign.engine import profile_name

    return profile_name(name)


def _database(database):
    """parity's example store (`parity.campaign.exampledb`) from `database`: a directory,
    "default" (the session's --parity-database, else $PARITY_HYPOTHESIS_DB, else
    `.hypothesis/parity` in the current directory), or None/False/"off"/"none" (none)."""
    from parity.campaign.exampledb import store_from

    if database == "default":
        database = SESSION.get("database") or "default"
    return store_from(database, env=os.environ.get(ENV_DATABASE))


def _xdist_gpu_env(device: str) -> dict | None:
    """Under pytest-xdist on cuda: the kernel's worker process sees one GPU, gw<i> the i-th
    visible one (mod their count). The calling process is not changed."""
    from parity._gpu import gpu_env

    m = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    if not m or not device.startswith("cuda"):
        return None
    return gpu_env(int(m.group(1)), device) or None


class _Progress:
    """Progress on stderr: one line rewritten in place on a terminal, plain lines otherwise
    (a log, pytest's captured output)."""

    def __init__(self, title: str, props: list[str], enabled: bool):
        self.title, self.n, self.enabled = title, len(props), enabled
        self.tty = enabled and sys.stderr.isatty()
        self.index: dict[str, int] = {}
        self.prop, self.last = "", 0.0

    def _write(self, text: str, final: bool) -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r\033[K" + text + ("\n" if final else ""))
        elif final:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def start(self, prop: str) -> None:
        # an interleaved campaign comes back to a property once per round: numbered once
        first = prop not in self.index
        self.index.setdefault(prop, len(self.index) + 1)
        self.prop = prop
        if first or self.tty:
            self._write(f"{self.title}: [{self.index[prop]}/{self.n}] {prop} ...", not self.tty)

    def example(self, st, status: str) -> None:
        now = time.monotonic()
        if self.tty and now - self.last > 0.2:
            self.last = now
            self._write(
                f"{self.title}: [{self.index.get(st.prop, 0)}/{self.n}] {st.prop}: "
                f"{st.run} run, {st.failed} failed",
                final=False,
            )

    def done(self, st) -> None:
        extra = f" ({st.stopped})" if st.stopped else ""
        self._write(
            f"{self.title}: [{self.index.get(st.prop, 0)}/{self.n}] {st.prop}: {st.verdict()}, "
            f"{st.run} run in "
            f"{st.seconds:.1f} s{extra}",
            final=True,
        )


def check(
    op: str,
    fn: Callable | str,
    *,
    device: str | None = None,
    properties: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    max_examples: int | None = None,
    max_time: float | None = None,
    profile: str = "pr",
    accept: Iterable[str] = (),
    seed: int | None = None,
    database="default",
    isolate: bool | None = None,
    timeout: float = 60.0,
    out_dir: str | None = "parity-repros",
    progress: bool = True,
    prepare: Callable | str | None = None,
) -> Report:
    """Check `fn` against the contract of `op` and return the `Report`; nothing raises on a
    counterexample: call `.raise_for_failure()` (an AssertionError with what the CLI prints).

    fn: the kernel, a callable or "module:function" (or a registered implementation's name).
    device: "cpu" or "cuda"; default cuda when a GPU is visible (under pytest-xdist each worker's
        kernel process gets its own GPU). properties / skip: which properties run (default all
        of the op's) and which not (e.g. skip=["error_parity"] for a kernel that does not
        validate its inputs); the report lists what was skipped. max_examples / max_time:
        examples per property and a time budget in seconds for the whole check (default: the
        profile's count, or $PARITY_MAX_EXAMPLES). profile: pr (fast, deterministic), nightly
        (1000 examples, targeted search) or bisect. accept: named variants of the op the kernel
        follows on purpose (judged strictly under them). seed: Hypothesis seed.
    database: where failing case descriptions are kept (key parity:op:impl:property:device)
        and replayed first next time (up to 10; those that pass are deleted): a directory, or
        None/"off" (none); default pytest's --parity-database, else $PARITY_HYPOTHESIS_DB, else
        `.hypothesis/parity` in the current directory. parity keeps them itself: Hypothesis
        ignores its database for the seeded and derandomized runs parity makes.
    isolate: run the kernel in a worker process (default: whenever `fn` can be imported by
        name there; a kernel defined in a notebook or a test function runs in-process).
    timeout: seconds one case may take before it counts as a hang. out_dir: where repro files
        go (None: none written). progress: lines on stderr while it runs.
    prepare: the kernel's prepare step, `prepare(args, kwargs) -> (args, kwargs)`, run on each
        case's inputs before the kernel (weights re-laid out as at load time): a callable or
        "module:function" (default: the implementation's own, `register(prepare=)` or the
        function's `parity_prepare` attribute). It runs where the kernel runs (a worker needs
        its name: one defined in a test function makes the check run in-process).

    Unknown op, property, profile or variant names raise ValueError.
    """
    from parity.catalog import get_impl, get_spec
    from parity.registry import OP_NAMES, Impl, declared_support_of

    if op not in OP_NAMES:
        raise ValueError(f"unknown op {op!r}; ops: {', '.join(OP_NAMES)}")
    if profile == "pr" and SESSION.get("profile"):
        profile = SESSION["profile"]  # pytest --parity-profile NAME
    profile = _profile(profile)
    spec = get_spec(op)
    known = list(spec.all_properties())
    props = list(properties) if properties is not None else list(SESSION.get("properties") or known)
    skip = [skip] if isinstance(skip, str) else list(skip)
    skip = list(dict.fromkeys([*skip, *SESSION.get("skip", ())]))
    unknown = [p for p in props + skip if p not in known]
    if unknown:
        raise ValueError(f"unknown properties {unknown} for {op}; properties: {', '.join(known)}")
    accept = [accept] if isinstance(accept, str) else list(accept)
    accept = list(dict.fromkeys([*accept, *SESSION.get("accept", ())]))
    if accept:
        from parity.properties.variants import validate

        validate(spec, accept)  # ValueError naming the op's variants
    if max_examples is None:
        max_examples = SESSION.get("max_examples")
    if max_examples is None and os.environ.get(ENV_MAX_EXAMPLES):
        max_examples = int(os.environ[ENV_MAX_EXAMPLES])
    if isinstance(fn, str) and ":" in fn:
        from parity.campaign.candidate import ImportUsage, lookup

        # by name only: the worker imports it (isolate=False: `InProcess` imports it here)
        try:
            impl, name = lookup(op, fn), fn
        except ImportUsage as e:
            raise ValueError(str(e)) from None
    elif isinstance(fn, str):
        impl = get_impl(op, fn)
        builtin = impl.reference or getattr(impl.fn, "__module__", "").startswith("parity.")
        # a kernel registered outside parity (a user's conftest.py): the worker and the rerun
        # line name its function, which a fresh process can import; parity's own by name
        name = fn if builtin else _importable_name(impl.fn)
    else:
        name = _importable_name(fn)
        label = name or getattr(fn, "__qualname__", type(fn).__name__)
        impl = Impl(
            op=op, name=label, backend="external", fn=fn, devices=("cpu", "cuda"),
            supports=declared_support_of(fn, op),  # a registered function's own declaration
        )  # fmt: skip
    from parity._gpu import default_device

    device = default_device(device)
    from parity.campaign.engine import Report

    label = name or impl.name
    report = Report(op, label, device, [], skipped=skip, accepted=accept)
    ok, why = impl.availability(device)
    if not ok:
        report.notes.append(f"NOT RUN: {impl.key} on {device}: {why}")
        return report
    prepare_name = None
    if isinstance(prepare, str):
        from parity.campaign.candidate import ImportUsage, check_name

        try:
            check_name(prepare)
        except ImportUsage as e:
            raise ValueError(f"prepare: {e}") from None
        prepare_name = prepare
    elif callable(prepare):
        prepare_name = _importable_name(prepare)
    elif prepare is not None:
        raise ValueError(f"prepare: expected a callable or 'module:function', got {prepare!r}")
    if isolate is None:
        isolate = name is not None and (prepare is None or prepare_name is not None)
    elif isolate and name is None:
        raise ValueError(f"{fn!r} cannot be imported by name in a worker: pass isolate=False")
    elif isolate and prepare is not None and prepare_name is None:
        raise ValueError(f"{prepare!r} cannot be imported by name in a worker: pass isolate=False")
    if prepare is not None:
        import dataclasses

        from parity.campaign.candidate import ImportUsage, import_callable

        if not isolate:  # in-process: the candidate's prepare runs here (imported here)
            try:
                fn_prepare = import_callable(prepare) if isinstance(prepare, str) else prepare
            except ImportUsage as e:
                raise ValueError(f"prepare: {e}") from None
            impl = dataclasses.replace(impl, prepare=fn_prepare)
        report.notes.append(
            "prepare= is not on the rerun line: give the kernel a parity_prepare attribute "
            "(or register(prepare=)) for a rerun to use it"
        )
    if name is None:
        report.notes.append(
            "run in-process (the kernel cannot be imported by name): no rerun line works"
        )
    run = [p for p in props if p not in skip]
    from parity.campaign.candidate import ImportUsage
    from parity.campaign.engine import InProcess, Isolated, run_campaign
    from parity.campaign.worker import WorkerUsageError

    db = _database(database)
    try:
        evaluator = (
            Isolated(
                spec,
                name,
                device,
                timeout=timeout,
                env=_xdist_gpu_env(device),
                accept=accept,
                prepare=prepare_name,
            )
            if isolate
            else InProcess(spec, impl, device, accept=accept)  # imports a module:function here
        )
    except ImportUsage as e:
        raise ValueError(f"{fn!r}: {e}") from None
    max_ex = max_examples
    if max_ex is None and max_time is not None:
        max_ex = 1_000_000  # the clock is the limit
    bar = _Progress(f"parity {op} / {label} on {device}", run, progress)
    t0 = time.monotonic()
    try:
        try:
            evaluator.start()
        except (WorkerUsageError, ImportUsage) as e:  # the name does not import: a usage error
            raise ValueError(f"{fn!r}: {e}") from None
        report.properties = run_campaign(
            spec,
            run,
            evaluator,
            max_time=max_time,
            impl_name=label,
            device=device,
            profile=profile,
            max_examples=max_ex,
            seed=seed,
            out_dir=out_dir,
            dtypes=impl.dtypes,
            supports=impl.supports,  # its registration's, whatever its label
            on_prop_start=bar.start,
            on_prop_done=bar.done,
            on_example=bar.example,
            database=db,
        )
    finally:
        evaluator.close()
    report.seconds = time.monotonic() - t0
    prefix = _path_prefix(name) if name and ":" in name else ""
    for st in report.properties:
        if prefix and st.failure and st.failure.get("repro"):
            st.failure["repro"] = prefix + st.failure["repro"]
    return report


def strategies(op: str, prop: str = "matches_reference", *, size: str = "small", dtypes=None):
    """`(strategy, build)` for one's own `@given` tests: `strategy` draws case descriptions
    (small dicts: shape, dtype, options, seed) of `op` for `prop`; `build(meta, device="cpu")`
    makes the `Case` (call the kernel as `fn(*case.args, **case.kwargs)`; the contract's answer
    is `spec.reference` of the same arguments, `parity.catalog.get_spec(op)`).

        strat, build = parity.strategies("swiglu")

        @given(strat)
        def test_mine(meta):
            case = build(meta)
            out = my_swiglu(*case.args, **case.kwargs)
    """
    from parity.campaign.engine import strategy_for
    from parity.catalog import get_spec
    from parity.registry import OP_NAMES

    if op not in OP_NAMES:
        raise ValueError(f"unknown op {op!r}; ops: {', '.join(OP_NAMES)}")
    spec = get_spec(op)
    strat = strategy_for(spec, prop, size=size, dtypes=dtypes)
    if strat is None:
        raise ValueError(f"{op} has no cases for {prop!r}; properties: {spec.all_properties()}")
    return strat, lambda meta, device="cpu": spec.build(meta, device)


def ops() -> list[str]:
    """The names of the ops of the contract (docs/ops.md)."""
    from parity.registry import OP_NAMES

    return list(OP_NAMES)


def register(op: str, **kw) -> Callable:
    """Register a fast path for `op`: a decorator (`parity.registry.register`; keywords name,
    backend, devices, dtypes, requires, min_cc, note, prepare). A registered kernel is checked
    by name: `parity.check(op, "NAME")`, `parity fuzz --op OP --impl module:function`.
    prepare(args, kwargs) -> (args, kwargs): a step run once on each case's inputs before the
    kernel (weights shuffled at load time), outside `parity bench`'s timing; the outputs must be
    as if unprepared."""
    from parity.registry import register as _register

    return _register(op, **kw)
