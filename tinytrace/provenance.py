"""What ran a result: hardware, device, git commit, library versions, in one place and one form;
and what a device computes in (:func:`autocast_dtype`), which training and decoding both follow.

Every results file, run record and book page describes its machine with :func:`hardware`, so a
reader sees the same string at the top of a page and in its rows.
"""
from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from tinytrace import __version__

LIBRARIES = ("torch", "accelerate", "numpy", "safetensors", "datasets")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device) -> str:
    """The name of one torch device: the GPU's model for ``cuda``, else the CPU's."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def hardware(device=None) -> str:
    """``"GPU: NVIDIA H100 80GB HBM3 (1 visible)"`` or ``"CPU: <model> (2 cores)"``;
    ``device="cpu"`` reports the CPU even when a GPU exists."""
    want_cpu = device is not None and str(device).startswith("cpu")
    if not want_cpu and torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible)"
    return f"CPU: {cpu_model()} ({os.cpu_count()} cores)"


# Compute capability from which a GPU has bf16 tensor cores (Ampere, sm_80).
NATIVE_BF16_CAPABILITY = (8, 0)


def autocast_dtype(device) -> torch.dtype | None:
    """The autocast dtype for ``device``: bf16 on a CUDA GPU of compute capability >= 8.0
    (A100, H100, RTX 30xx and later), fp16 on older ones (T4, V100: no bf16 tensor cores;
    ``torch.cuda.is_bf16_supported()`` says True there because it counts emulation, which
    runs without tensor cores), None (fp32) on CPUs and other devices."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    if torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY:
        return torch.bfloat16
    return torch.float16


def mixed_precision(device) -> str:
    """:func:`autocast_dtype` as Accelerate's ``mixed_precision``: "bf16", "fp16" (Accelerate
    then adds the gradient scaler fp16 needs) or "no"."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "no"}[autocast_dtype(device)]


def compile_pays(device) -> bool:
    """Whether ``torch.compile`` is worth its compile time for training on ``device``: not on
    CUDA GPUs below compute capability 8.0 (T4, V100), whose Triton kernels gain little there;
    yes on newer GPUs and on CPUs (measured 1.2-1.6x for the small `cpu`-scale models)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY
    return True


def git(*args, cwd=None) -> str | None:
    """Output of ``git ARGS`` run in ``cwd``, by default the package's folder ("" when empty);
    None outside a checkout."""
    try:
        r = subprocess.run(["git", *args], cwd=cwd or Path(__file__).resolve().parent,
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_commit() -> str | None:
    return git("rev-parse", "HEAD") or None


def code_dirty(cwd=None) -> bool | None:
    """Whether the package or the notebooks of the checkout at ``cwd`` (by default this
    package's) have uncommitted edits, so that ``git_commit`` alone does not name the code that
    made a result; None outside a git checkout. Outputs do not count: a render writes into
    ``book/`` as it goes."""
    status = git("status", "--porcelain", "--untracked-files=no", "--", ":/tinytrace",
                 ":/notebooks", cwd=cwd)
    return None if status is None else bool(status)


def versions() -> dict:
    """Python, tinytrace and the libraries a result depends on (None: not installed)."""
    libs = {}
    for name in LIBRARIES:
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            libs[name] = None
    return {"tinytrace": __version__, "python": platform.python_version(), "libraries": libs}


def environment(accelerator=None) -> dict:
    """Code version, library versions and device: logged at the start of every run."""
    status = git("status", "--porcelain", "--untracked-files=no")
    env = {
        "git_commit": git_commit(),
        "git_dirty": None if status is None else bool(status),
        **versions(),
        "platform": platform.platform(),
        "hardware": hardware(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cuda": torch.version.cuda,
    }
    if accelerator is not None:
        dev = accelerator.device
        env.update(device=str(dev), device_name=device_name(dev),
                   num_processes=accelerator.num_processes,
                   distributed_type=str(accelerator.distributed_type),
                   mixed_precision=accelerator.mixed_precision)
    return env
