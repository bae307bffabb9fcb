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
