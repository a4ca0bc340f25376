"""Mixed-precision selection per device, on the CPU: the CUDA queries are simulated.

A T4 (compute capability 7.5) reports ``is_bf16_supported() == True`` (emulation counts), yet
training and decoding must pick fp16 there; an A100 (8.0) or H100 (9.0) picks bf16; a CPU fp32.
"""
import pytest
import torch

from tinytrace.evaluate import decode
from tinytrace.provenance import autocast_dtype, mixed_precision
from tinytrace.train import TrainConfig
from tinytrace.train import common

GPUS = {"T4": ((7, 5), torch.float16, "fp16"), "V100": ((7, 0), torch.float16, "fp16"),
        "A100": ((8, 0), torch.bfloat16, "bf16"), "H100": ((9, 0), torch.bfloat16, "bf16")}


def _simulate_gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation counts


@pytest.mark.parametrize("gpu", list(GPUS))
def test_autocast_dtype_follows_the_compute_capability(gpu, monkeypatch):
    capability, dtype, name = GPUS[gpu]
    _simulate_gpu(monkeypatch, capability)
    assert autocast_dtype("cuda") is dtype
    assert autocast_dtype(torch.device("cuda", 0)) is dtype
    assert mixed_precision("cuda") == name
    assert autocast_dtype("cpu") is None and mixed_precision("cpu") == "no"


def test_no_gpu_means_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert autocast_dtype("cuda") is None
    assert mixed_precision("cpu") == "no"


class _Recorder:
    """Stands in for ``accelerate.Accelerator``: fp16 cannot be built without a real GPU."""

    def __init__(self, **kw):
        self.kw = kw


@pytest.mark.parametrize("gpu", list(GPUS))
def test_training_auto_precision(gpu, monkeypatch):
    capability, _, name = GPUS[gpu]
    _simulate_gpu(monkeypatch, capability)
    monkeypatch.setattr(common, "Accelerator", _Recorder)
    assert common.make_accelerator(TrainConfig()).kw["mixed_precision"] == name
    assert common.make_accelerator(TrainConfig(), cpu=True).kw["mixed_precision"] == "no"
    # an explicit choice is kept
    assert common.make_accelerator(TrainConfig(mixed_precision="no")).kw["mixed_precision"] == "no"
    assert common.make_accelerator(TrainConfig(mixed_precision="bf16")).kw["mixed_precision"] == "bf16"


@pytest.mark.parametrize("gpu", list(GPUS))
def test_decoding_autocasts_like_training(gpu, monkeypatch):
    capability, dtype, _ = GPUS[gpu]
    _simulate_gpu(monkeypatch, capability)
    cuda = torch.device("cuda")
    assert decode._amp_dtype(cuda, True) is dtype
    assert decode._amp_dtype(cuda, False) is None
    assert decode._amp_dtype(torch.device("cpu"), True) is None


def test_t4_has_an_fp16_peak_for_mfu():
    from tinytrace.train import peak_flops

    assert peak_flops("Tesla T4") == 65e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12


@pytest.mark.parametrize("gpu", list(GPUS))
def test_compile_only_where_it_pays(gpu, monkeypatch):
    """Training compiles on GPUs from compute capability 8.0 and on CPUs, not on a T4 or V100."""
    from tinytrace.provenance import compile_pays

    capability = GPUS[gpu][0]
    _simulate_gpu(monkeypatch, capability)
    assert compile_pays("cuda") == (capability >= (8, 0))
    assert compile_pays("cpu")
