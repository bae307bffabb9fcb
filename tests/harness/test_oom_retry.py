"""A case that ran a shared GPU out of memory runs again (H100, 2026-12-06: nineteen suite
processes on one GPU, six units ERROR on CUDA OOM); a case that keeps running out is still its
failure, never a pass. The evaluators here are stubs: nothing needs a GPU."""

import pytest

from parity import _gpu
from parity.campaign import drive, engine
from parity.catalog import get_spec
from parity.properties.tolerance import Verdict

SPEC = get_spec("swiglu")
OOM = (
    "parity error: OutOfMemoryError: CUDA out of memory. Tried to allocate 194.00 MiB. GPU 0 "
    "has a total capacity of 79.18 GiB of which 126.06 MiB is free."
)


class Stub:
    """Out of memory on the first `ooms` calls of every case, then `then`."""

    def __init__(self, ooms: int, status: str = "error", then: str = "pass"):
        self.ooms, self.status, self.then = ooms, status, then
        self.calls: dict = {}

    def evaluate(self, prop, meta):
        k = repr(sorted(meta.items()))
        self.calls[k] = self.calls.get(k, 0) + 1
        if self.calls[k] <= self.ooms:
            return self.status, Verdict(False, OOM, float("inf"))
        return self.then, Verdict(True, "", 0.1)


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch):
    monkeypatch.setattr(engine.time, "sleep", lambda s: None)


def _drive(ev, device="cuda"):
    return drive(
        SPEC, "matches_reference", ev, impl_name="x", device=device, max_examples=5, seed=1,
        size="small", shrink=False,
    )  # fmt: skip


@pytest.mark.parametrize("status", ["error", "fail"])
def test_an_oom_once_is_run_again_and_judged_on_the_rerun(status):
    ev = Stub(1, status)
    st = _drive(ev)
    assert st.failure is None and st.passed == st.run > 0, st
    assert st.oom_retries == st.run and all(n == 2 for n in ev.calls.values())


def test_an_oom_every_time_stays_the_cases_failure():
    ev = Stub(99, "fail")
    st = _drive(ev)
    assert st.failure is not None and st.verdict() == "FAIL", st
    assert "out of memory" in st.failure["message"]
    # the failing case took all its tries (then Hypothesis replays it)
    assert st.oom_retries >= engine.OOM_TRIES - 1
    assert max(ev.calls.values()) >= engine.OOM_TRIES, ev.calls


def test_no_retry_off_the_gpu_nor_for_other_failures():
    st = _drive(Stub(1, "error"), device="cpu")  # the CPU's memory is not shared this way
    assert st.failure is not None and st.oom_retries == 0
    ev = Stub(0)
    ev.evaluate = lambda p, m: ("fail", Verdict(False, "mismatch at [0, 1]", 3.0))
    st = _drive(ev)
    assert st.failure is not None and st.oom_retries == 0


def test_is_oom_reads_torch_and_driver_texts():
    assert _gpu.is_oom(OOM) and _gpu.is_oom("CUDA_ERROR_OUT_OF_MEMORY")
    assert _gpu.is_oom("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate`")
    assert not _gpu.is_oom("CUDA error: an illegal memory access was encountered")
    assert not _gpu.is_oom("")
