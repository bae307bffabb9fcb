"""Test-session setup shared by every test module."""

import pytest


@pytest.hookimpl(trylast=True)  # after the parity plugin pins one GPU per xdist worker
def pytest_configure(config):
    # without a CUDA GPU, Triton kernels run in the interpreter; before any test imports triton
    from parity._interp import use_triton_interpreter_without_gpu

    use_triton_interpreter_without_gpu()
