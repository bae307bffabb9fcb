"""GPU pinning: which GPUs this process sees, found without initialising CUDA (which would
freeze CUDA_VISIBLE_DEVICES for the process), and one GPU per worker process. Imports nothing
of parity, nor torch unless it is already imported."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys


def visible_gpus() -> list[str]:
    """GPU ids visible to this process: CUDA_VISIBLE_DEVICES itself, else the driver's /proc
    entries, else `nvidia-smi -L`."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    proc = "/proc/driver/nvidia/gpus"
    with contextlib.suppress(OSError):
        n = len(os.listdir(proc))
        if n:
            return [str(i) for i in range(n)]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
        n = sum(1 for line in out.splitlines() if line.startswith("GPU "))
        return [str(i) for i in range(n)]
    return []


def gpu_env(index: int, device: str) -> dict:
    """Environment updates for worker `index`: one GPU, round-robin, when on cuda."""
    if device.startswith("cuda"):
        gpus = visible_gpus()
        if gpus:
            return {"CUDA_VISIBLE_DEVICES": gpus[index % len(gpus)]}
    return {}


def pin_gpu_for_xdist_worker() -> str | None:
    """Under pytest-xdist, pin this worker process to one GPU (gw<i> gets visible GPU i mod n)
    by setting CUDA_VISIBLE_DEVICES. Call it before anything initialises CUDA. Returns the GPU
    id chosen, or None (not an xdist worker, no GPU, or CUDA already initialised: then nothing
    is changed)."""
    m = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    if not m:
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return None
    gpus = visible_gpus()
    if not gpus:
        return None
    gpu = gpus[int(m.group(1)) % len(gpus)]
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


def default_device(device: str | None = None) -> str:
    """`device`, else cuda when a GPU is visible, else cpu (asks torch: call it after the
    pinning above)."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
