"""Test-session setup shared by every test module."""

import os

import pytest

# parity.check keeps failing cases in an example database (.hypothesis/parity by default): none
# for parity's own tests, which must not depend on what an earlier run found
os.environ.setdefault("PARITY_HYPOTHESIS_DB", "off")


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    # parity's own suite: one GPU and one thread per xdist worker, and Triton kernels in the
    # interpreter without a GPU, before any test imports triton or initialises CUDA (the plugin
    # does this only for runs that use parity, so that it stays inert elsewhere)
    from parity.testing.pytest_plugin import worker_setup

    worker_setup(config)


def pytest_runtest_logreport(report):
    """PARITY_FAIL_LOG=FILE: each failure's test id and message appended as it happens. A GPU
    call cut at its limit kills pytest before its summary: the reference's nightly on the H100
    (2026-12-06) showed 28 Fs and not one reason."""
    path = os.environ.get("PARITY_FAIL_LOG")
    if not path or not report.failed:
        return
    text = str(report.longrepr)
    lines = text.strip().splitlines()
    with open(path, "a") as fh:  # the failure's last lines: the assertion and its message
        fh.write(f"FAILED {report.nodeid} ({report.when})\n" + "\n".join(lines[-12:]) + "\n\n")
