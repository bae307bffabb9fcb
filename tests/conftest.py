"""Test-session setup shared by every test module."""

import pytest


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    # parity's own suite: one GPU and one thread per xdist worker, and Triton kernels in the
    # interpreter without a GPU, before any test imports triton or initialises CUDA (the plugin
    # does this only for runs that use parity, so that it stays inert elsewhere)
    from parity.testing.pytest_plugin import worker_setup

    worker_setup(config)
