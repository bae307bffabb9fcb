"""`parity._interp.use_triton_interpreter_without_gpu`: when it sets TRITON_INTERPRET, and
that importing parity.optimized sets nothing."""

import os
import subprocess
import sys

import pytest
import torch

from parity import _interp


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return monkeypatch


def test_sets_the_interpreter_without_a_gpu(env):
    assert _interp.use_triton_interpreter_without_gpu() is True
    assert os.environ["TRITON_INTERPRET"] == "1"


def test_leaves_a_gpu_machine_alone(env):
    env.setattr(torch.cuda, "is_available", lambda: True)
    assert _interp.use_triton_interpreter_without_gpu() is False
    assert "TRITON_INTERPRET" not in os.environ


def test_too_late_once_triton_is_imported(env):
    env.setitem(sys.modules, "triton", object())
    assert _interp.use_triton_interpreter_without_gpu() is False
    assert "TRITON_INTERPRET" not in os.environ


@pytest.mark.parametrize("value, used", [("1", True), ("0", False), ("", False)])
def test_keeps_the_users_choice(env, value, used):
    env.setenv("TRITON_INTERPRET", value)
    assert _interp.use_triton_interpreter_without_gpu() is used
    assert os.environ["TRITON_INTERPRET"] == value


def test_importing_the_fast_paths_sets_no_variable():
    code = (
        "import os; before = dict(os.environ); import parity.optimized; "
        "assert dict(os.environ) == before, set(os.environ) ^ set(before)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
