"""The PyTorch INT8 back end (FX graph mode): the kernel engine, preparing and converting a model,
and rebuilding an int8 model from its saved state dict (what an int8 checkpoint needs to load).

The quantization algorithms (calibration, QAT, ONNX Runtime's QDQ path) are in
``pocketcnn.compress.quantize``.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ..errors import ExportError


def quantized_engine() -> str:
    """The quantized kernel library for this CPU: ``x86`` (fbgemm + onednn) or ``qnnpack`` (ARM)."""
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in engines:
            return name
    raise ExportError(f"this PyTorch build has no quantized CPU engine (supported: {engines})")


def use_engine() -> str:
    engine = quantized_engine()
    torch.backends.quantized.engine = engine  # the kernels are chosen at run time by this global
    return engine


def fx_prepare(model: nn.Module, example: torch.Tensor, *, qat: bool) -> nn.Module:
    """Insert observers (``qat=False``, eval mode) or fake quantization (``qat=True``, train mode)."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

    engine = use_engine()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if qat:
            return prepare_qat_fx(model.train(), get_default_qat_qconfig_mapping(engine), (example,))
        return prepare_fx(model.eval(), get_default_qconfig_mapping(engine), (example,))


def fx_convert(prepared: nn.Module) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared.eval())


def rebuild_fx_int8(model: nn.Module, state_dict: dict[str, torch.Tensor], input_size: tuple[int, int, int]) -> nn.Module:
    """An FX int8 model from its fp32 architecture and a saved int8 state dict (no calibration needed)."""
    prepared = fx_prepare(copy.deepcopy(model).cpu().eval(), torch.zeros(1, *input_size), qat=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # observers that saw no data announce it; the state dict sets qparams
        q = fx_convert(prepared)
    q.load_state_dict(state_dict)
    return q
