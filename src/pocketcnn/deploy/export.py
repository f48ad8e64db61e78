"""Export to deployment formats. (Core ONNX export; verification and other formats extend it.)"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


def export_onnx(model: nn.Module, path: str | Path, *, input_size: tuple[int, int, int], opset: int = 17,
                dynamic_batch: bool = False) -> Path:
    """Write ``model`` (eval mode, CPU) as ONNX with input ``input`` (N, C, H, W) and output ``logits``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    dummy = torch.zeros(1, *input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            model, (dummy,), str(path), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
        )
    return path
