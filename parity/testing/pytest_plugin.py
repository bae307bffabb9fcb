"""pytest plugin (entry point `pytest11: parity`): every property against every implementation.

A test requesting the `parity_target` fixture is parametrized over (op, implementation,
property, device) for every registered implementation, the reference included. Targets that
cannot run here (no GPU, backend module missing, every case unsupported) are skipped with a
reason starting "NOT RUN", marked `gpu` where they need one, and counted in the terminal
summary: a skip never reads as a pass.

Options: --parity-profile pr|nightly|bisect (default $PARITY_PROFILE or pr),
--parity-op OP (repeatable), --parity-impl NAME or module:function (repeatable; an unknown
name is a usage error), --parity-device cpu|cuda.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

NOT_RUN = "NOT RUN"
# examples per property for Triton kernels under the interpreter (pr profile, CPU)
INTERPRETER_EXAMPLES = {"*": 10, "fused_moe": 4, "decoder_stack": 3}


def pytest_addoption(parser):
    g = parser.getgroup("parity")
    g.addoption("--parity-profile", default=os.environ.get("PARITY_PROFILE", "pr"))
    g.addoption("--parity-op", action="append", default=[])
    g.addoption("--parity-impl", action="append", default=[])
    g.addoption("--parity-device", action="append", default=[])
    g.addoption("--parity-max-examples", type=int, default=None)


def pytest_configure(config):
    # under pytest-xdist, one GPU per worker, chosen before anything initialises CUDA
    from parity._gpu import pin_gpu_for_xdist_worker

    pin_gpu_for_xdist_worker()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # one intra-op thread per xdist worker: the workers already use every core, and tiny
        # float64 matmuls run far slower when threads oversubscribe them
        import torch

        torch.set_num_threads(1)
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; reported NOT RUN without one")
    config.addinivalue_line("markers", "parity: a property of an op against an implementation")
    config._parity_not_run = []


@dataclass
class Target:
    op: str
    impl: str
    prop: str
    device: str
    profile: str
    max_examples: int | None

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
        """Run the property; fail with the shrunk case and its repro command, or skip NOT RUN."""
        from parity.campaign import run_property
        from parity.catalog import get_impl, get_spec

        spec = get_spec(self.op)
        impl = get_impl(self.op, self.impl)
        ok, why = impl.availability(self.device)
        if not ok:
            pytest.skip(f"{NOT_RUN}: {impl.key} on {self.device}: {why}")
        stats = run_property(
            spec,
            self.prop,
            impl.fn,
            impl_name=self.impl,
            device=self.device,
            dtypes=impl.dtypes,
            profile=self.profile,
            max_examples=self._max_examples(impl),
        )
        if stats.failure is not None:
            f = stats.failure
            pytest.fail(
                f"{self.prop} failed for {impl.key} on {self.device}: {f['message']}\n"
                f"case: {f['meta']}\nreproduce: {f['repro']}",
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
    from parity.catalog import impls, specs

    cfg = metafunc.config
    ops, names = cfg.getoption("--parity-op"), cfg.getoption("--parity-impl")
    wanted_dev = cfg.getoption("--parity-device")
    profile = cfg.getoption("--parity-profile")
    max_ex = cfg.getoption("--parity-max-examples")
    params = []
    all_specs = specs()
    every = impls(include_reference=True)
    for impl in _selected(every, ops, names):
        spec = all_specs[impl.op]
        for dev in _devices_for(impl, wanted_dev):
            for prop in spec.all_properties():
                t = Target(impl.op, impl.name, prop, dev, profile, max_ex)
                marks = [pytest.mark.parity]
                if dev == "cuda":
                    marks.append(pytest.mark.gpu)
                params.append(pytest.param(t, id=t.id, marks=marks))
    metafunc.parametrize("parity_target", params)


def _selected(every, ops: list[str], names: list[str]):
    """The implementations the options select; `module:function` names an external candidate
    (for each --parity-op). A name or op that selects nothing is a usage error, never an empty
    run that passes."""
    from parity.catalog import get_impl
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
            try:
                out.append(get_impl(op, name))
            except Exception as e:
                raise pytest.UsageError(f"--parity-impl {name}: {type(e).__name__}: {e}") from e
    return out


def pytest_runtest_logreport(report):
    if report.skipped and report.when in ("setup", "call"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        if NOT_RUN in reason or "gpu" in report.keywords:
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
