"""The device a run trains on and its mixed precision: what the hardware decides."""
from __future__ import annotations

import os

import torch

from ..errors import ConfigError


def select_device(name: str) -> torch.device:
    """``auto``: CUDA when there is a GPU, else the CPU; under torchrun each process takes its LOCAL_RANK's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda requested but no CUDA device is available")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), as oneDNN needs to be fast."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without the probes: assume not
        return False


def amp_enabled(amp: bool | str, device: torch.device) -> bool:
    """``TrainConfig.amp`` resolved for ``device``: ``"auto"`` is on for CUDA and for a CPU with
    native bf16, off otherwise (bf16 emulated in fp32 arithmetic is slower than fp32)."""
    if amp != "auto":
        return bool(amp)
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def amp_dtype(device: torch.device) -> torch.dtype:
    """The mixed-precision type: fp16 (with loss scaling) on CUDA, bf16 (no scaling needed) on CPU."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16
