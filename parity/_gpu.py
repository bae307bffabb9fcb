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


# A suite runs many processes side by side on one GPU (`parity suite --jobs`, gpu_all.sh's
# nightly: 19 on the H100 on 2026-12-06), each with torch's caching allocator holding what its
# largest case needed (5-11 GiB a process there): the GPU ran out of memory though no case needed
# more than 2 GiB. Each process gives back its idle blocks past this much after a case.
TRIM_BYTES = 1 << 30
_OOM_RE = re.compile(  # torch's, the driver's, and cuBLAS's failing to create its handle
    r"CUDA out of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY|CUBLAS_STATUS_ALLOC_FAILED"
)


def is_oom(text: str) -> bool:
    """Whether an error text is the GPU running out of memory (a shared GPU's, not a verdict)."""
    return bool(_OOM_RE.search(text or ""))


def trim_cache(device: str, above: int = TRIM_BYTES) -> None:
    """Give the caching allocator's idle blocks back to the driver when it holds more than
    `above` bytes (torch is imported by then on any CUDA path)."""
    torch = sys.modules.get("torch")
    if torch is None or not device.startswith("cuda") or not torch.cuda.is_initialized():
        return
    if torch.cuda.memory_reserved() - torch.cuda.memory_allocated() > above:
        torch.cuda.empty_cache()
