"""pytest plugin (entry point `pytest11: parity`): parity in a pytest run, inert unless used.

Loaded in every pytest run of an environment where parity is installed, it changes nothing
there (no thread count, no environment variable, no Hypothesis profile, no import of torch)
unless the run uses it:

- a test calling `parity.check(op, fn).raise_for_failure()` (the documented way; the options
  below set that call's defaults: --parity-skip-property, --parity-property, --parity-accept,
  --parity-max-examples, --parity-database, --parity-profile);
- a test requesting the `parity_target` fixture (parity's own suite): parametrized over (op,
  implementation, property, device) for every registered implementation, the reference
  included. Targets that cannot run here (no GPU, backend module missing, every case
  unsupported) are skipped with a reason starting "NOT RUN", marked `gpu` where they need one,
  and counted in the terminal summary: a skip never reads as a pass. Only a run that collects
  such tests (or passes --parity-worker-setup) gets the worker setup: one GPU per xdist worker
  (CUDA_VISIBLE_DEVICES), one intra-op thread per xdist worker, the Triton interpreter without
  a GPU.

Options: --parity-profile pr|nightly|bisect (parity-pr, ... accepted; default $PARITY_PROFILE or
pr), --parity-op OP, --parity-impl NAME or module:function (an unknown name is a usage error),
--parity-device cpu|cuda, --parity-property P, --parity-skip-property P, --parity-accept VARIANT
(each repeatable), --parity-max-examples N, --parity-database DIR|none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

NOT_RUN = "NOT RUN"
# examples per property for Triton kernels under the interpreter (pr profile, CPU)
INTERPRETER_EXAMPLES = {"*": 10, "fused_moe": 4, "decoder_stack": 3}
PROFILE_NAMES = ("pr", "nightly", "bisect")


def _profile_name(value: str) -> str:
    short = value.removeprefix("parity-")
    if short not in PROFILE_NAMES:
        raise pytest.UsageError(
            f"--parity-profile: expected one of {', '.join(PROFILE_NAMES)} "
            f"(or parity-<name>), got {value!r}"
        )
    return short


def pytest_addoption(parser):
    g = parser.getgroup("parity")
    g.addoption(
        "--parity-profile",
        default=os.environ.get("PARITY_PROFILE", "pr"),
        help="pr|nightly|bisect (parity-pr, ... too): the Hypothesis settings of parity's runs",
    )
    g.addoption("--parity-op", action="append", default=[], help="parity_target: only this op")
    g.addoption(
        "--parity-impl",
        action="append",
        default=[],
        help="parity_target: only this implementation (a name, or module:function)",
    )
    g.addoption("--parity-device", action="append", default=[], help="parity_target: cpu|cuda")
    g.addoption("--parity-max-examples", type=int, default=None, help="examples per property")
    g.addoption("--parity-property", action="append", default=[], help="check only this property")
    g.addoption(
        "--parity-skip-property",
        action="append",
        default=[],
        help="do not check this property (e.g. error_parity); reported as skipped",
    )
    g.addoption(
        "--parity-accept",
        action="append",
        default=[],
        help="judge under this named variant of the op (parity.check's accept=)",
    )
    g.addoption(
        "--parity-database",
        default=None,
        help="where parity.check keeps failing cases and replays them first (a directory, or "
        "off); default $PARITY_HYPOTHESIS_DB, else .hypothesis/parity",
    )
    g.addoption(
        "--parity-worker-setup",
        action="store_true",
        default=False,
        help="one GPU and one thread per xdist worker, the Triton interpreter without a GPU "
        "(automatic for parity_target tests)",
    )


def pytest_configure(config):
    # markers only: nothing here changes a run that does not use parity
    config.addinivalue_line("markers", "parity: a property of an op against an implementation")
    config._parity_not_run = []
    config._parity_profile = _profile_name(config.getoption("--parity-profile"))
    session = {
        "properties": config.getoption("--parity-property"),
        "skip": config.getoption("--parity-skip-property"),
        "accept": config.getoption("--parity-accept"),
        "max_examples": config.getoption("--parity-max-examples"),
        "database": config.getoption("--parity-database"),
    }
    session = {k: v for k, v in session.items() if v}
    if config.getoption("--parity-profile") != "pr":
        session["profile"] = config._parity_profile
    if session:  # asked for: parity.check in this run takes these as its defaults
        from parity import api

        api.SESSION.update(session)
    if config.getoption("--parity-worker-setup"):
        worker_setup(config)


_ACTIVE = False  # worker_setup ran: gpu-marked skips count as NOT RUN in the summary


def worker_setup(config=None) -> None:
    """What parity's own parametrized tests need in each process (idempotent): one GPU per
    pytest-xdist worker, chosen before anything initialises CUDA; one intra-op thread per xdist
    worker (the workers already use every core, and tiny float64 matmuls run far slower when
    threads oversubscribe them); Triton kernels in the interpreter without a GPU; the `gpu`
    marker, whose skips the summary counts as checks that did not run."""
    global _ACTIVE
    _ACTIVE = True
    if config is not None:
        config.addinivalue_line("markers", "gpu: needs a CUDA GPU; reported NOT RUN without one")
    from parity._gpu import pin_gpu_for_xdist_worker
    from parity._interp import use_triton_interpreter_without_gpu

    pin_gpu_for_xdist_worker()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
    use_triton_interpreter_without_gpu()


@dataclass
class Target:
    op: str
    impl: str
    prop: str
    device: str
    profile: str
    max_examples: int | None
    accept: tuple = field(default=())
    skipped: bool = False  # --parity-skip-property: reported as skipped, never run

    @property
    def id(self) -> str:
        return f"{self.op}-{self.impl}-{self.prop}-{self.device}"

    def _max_examples(self, impl) -> int | None:
        """An explicit --parity-max-examples wins. Otherwise the profile's count, except for
        Triton kernels in the Triton interpreter under the pr profile: it runs them about a
        thousand times slower than a GPU, so they get INTERPRETER_EXAMPLES per property there
        (the GPU run, `scripts/gpu_all.sh`, draws the full count)."""
        if self.max_examples is not None:
            return self.max_examples
        if self.device == "cpu" and self.profile == "pr" and "triton" in impl.requires:
            return INTERPRETER_EXAMPLES.get(self.op, INTERPRETER_EXAMPLES["*"])
        return None

    def run(self):
        """Run the property; fail with the shrunk case and its rerun line, or skip NOT RUN."""
        from parity.api import _importable_name, _path_prefix, _profile
        from parity.campaign.candidate import lookup
        from parity.campaign.engine import InProcess, Isolated, drive
        from parity.catalog import get_spec

        if self.skipped:
            pytest.skip(f"skipped by --parity-skip-property {self.prop}")
        spec = get_spec(self.op)
        # by name only: a module:function (--parity-impl) is imported in its worker, never here
        impl = lookup(self.op, self.impl)
        ok, why = impl.availability(self.device)
        if not ok:
            pytest.skip(f"{NOT_RUN}: {impl.key} on {self.device}: {why}")
        accept = tuple(a for a in self.accept if a in {v.name for v in spec.variants})
        # a kernel registered outside parity (a user's conftest.py): the rerun line names its
        # function, which a fresh `parity` process can import; parity's own go by name
        name = self.impl
        external = ":" in name and impl.backend == "external"
        builtin = impl.reference or getattr(impl.fn, "__module__", "").startswith("parity.")
        if not builtin and ":" not in name:
            name = _importable_name(impl.fn) or name
        if external:
            evaluator = Isolated(spec, name, self.device, accept=accept)
        else:  # parity's own (or a registered) kernel: already imported, run in this process
            evaluator = InProcess(spec, impl, self.device, accept=accept)
        try:
            stats = drive(
                spec,
                self.prop,
                evaluator,
                impl_name=name,
                device=self.device,
                dtypes=impl.dtypes,
                supports=impl.supports,
                profile=_profile(self.profile),
                max_examples=self._max_examples(impl),
                raise_errors=True,
            )
        finally:
            evaluator.close()
        if stats.failure is not None:
            f = stats.failure
            prefix = _path_prefix(name) if ":" in name else ""
            accepted = f" (accepting {', '.join(accept)})" if accept else ""
            diag = f"\nvariants: {f['diagnosis']['text']}" if f.get("diagnosis") else ""
            pytest.fail(
                f"{self.prop} failed for {impl.key} on {self.device}{accepted}: "
                f"{f['message']}\ncase: {f['meta']}\nreproduce: {prefix}{f['repro']}{diag}",
                pytrace=False,
            )
        if not stats.tested:
            pytest.skip(
                f"{NOT_RUN}: {impl.key}: all {stats.unsupported} cases unsupported, "
                f"{stats.not_applicable} not applicable ({stats.last_unsupported})"
            )
        return stats


def _devices_for(impl, wanted: list[str]) -> list[str]:
    devs = [d for d in impl.devices if not wanted or d in wanted]
    return devs or list(impl.devices[:1])


def pytest_generate_tests(metafunc):
    if "parity_target" not in metafunc.fixturenames:
        return
    worker_setup(metafunc.config)  # parity's own parametrized tests: before any touches CUDA
    from parity.catalog import impls, specs

    cfg = metafunc.config
    ops, names = cfg.getoption("--parity-op"), cfg.getoption("--parity-impl")
    wanted_dev = cfg.getoption("--parity-device")
    profile = cfg._parity_profile
    max_ex = cfg.getoption("--parity-max-examples")
    only, skip = cfg.getoption("--parity-property"), cfg.getoption("--parity-skip-property")
    accept = tuple(cfg.getoption("--parity-accept"))
    params = []
    all_specs = specs()
    every = impls(include_reference=True)
    selected = _selected(every, ops, names)
    _check_names(selected, all_specs, only + skip, accept)
    for impl in selected:
        spec = all_specs[impl.op]
        for dev in _devices_for(impl, wanted_dev):
            for prop in spec.all_properties():
                if only and prop not in only:
                    continue
                t = Target(impl.op, impl.name, prop, dev, profile, max_ex, accept, prop in skip)
                marks = [pytest.mark.parity]
                if dev == "cuda":
                    marks.append(pytest.mark.gpu)
                params.append(pytest.param(t, id=t.id, marks=marks))
    metafunc.parametrize("parity_target", params)


def _check_names(selected, all_specs, props: list[str], accept: tuple) -> None:
    """A property or variant name that no selected op has is a usage error."""
    ops = {i.op for i in selected}
    known = {p for o in ops for p in all_specs[o].all_properties()}
    bad = sorted(set(props) - known)
    if bad:
        raise pytest.UsageError(
            f"--parity-property/--parity-skip-property: unknown {bad}; "
            f"properties: {', '.join(sorted(known))}"
        )
    variants = {v.name for o in ops for v in all_specs[o].variants}
    bad = sorted(set(accept) - variants)
    if bad:
        raise pytest.UsageError(
            f"--parity-accept: no selected op declares {bad}; "
            f"variants: {', '.join(sorted(variants)) or 'none'}"
        )


def _selected(every, ops: list[str], names: list[str]):
    """The implementations the options select; `module:function` names an external candidate
    (for each --parity-op). A name or op that selects nothing is a usage error, never an empty
    run that passes."""
    from parity.campaign.candidate import lookup
    from parity.registry import OP_NAMES

    bad_ops = [o for o in ops if o not in OP_NAMES]
    if bad_ops:
        raise pytest.UsageError(f"--parity-op: unknown {bad_ops}; ops: {', '.join(OP_NAMES)}")
    known = {i.name for i in every}
    external = [n for n in names if ":" in n and n not in known]
    unknown = [n for n in names if ":" not in n and n not in known]
    if unknown:
        raise pytest.UsageError(f"--parity-impl: no implementation named {unknown}")
    if external and not ops:
        raise pytest.UsageError("--parity-impl module:function needs --parity-op OP")
    out = [i for i in every if (not ops or i.op in ops) and (not names or i.name in names)]
    for name in external:
        for op in ops:
            try:  # by name: the worker imports it when its test runs
                out.append(lookup(op, name))
            except Exception as e:
                raise pytest.UsageError(f"--parity-impl {name}: {type(e).__name__}: {e}") from e
    return out


def pytest_runtest_logreport(report):
    if report.skipped and report.when in ("setup", "call"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        if NOT_RUN in reason or ("gpu" in report.keywords and _ACTIVE):
            cfg = getattr(pytest_runtest_logreport, "_config", None)
            if cfg is not None:
                cfg._parity_not_run.append((report.nodeid, reason))


def pytest_sessionstart(session):
    pytest_runtest_logreport._config = session.config


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    not_run = getattr(config, "_parity_not_run", [])
    if not not_run:
        return
    gpu = sum(1 for nodeid, reason in not_run if "CUDA" in reason or "cuda" in nodeid)
    tr = terminalreporter
    tr.section("parity: checks that did not run")
    tr.write_line(
        f"{len(not_run)} checks did NOT RUN on this machine ({gpu} need a CUDA GPU); "
        "they are not passes."
    )
    by_reason: dict[str, int] = {}
    for _, reason in not_run:
        key = reason.replace("Skipped: ", "").split(": ", 2)[-1][:110]
        by_reason[key] = by_reason.get(key, 0) + 1
    for reason, n in sorted(by_reason.items(), key=lambda kv: -kv[1])[:12]:
        tr.write_line(f"  {n:5d}  {reason}")
