"""ONNX export: the TorchScript exporter by default, the torch.export-based one as the fallback.

The TorchScript exporter (``dynamo=False``) takes about 1.5 s per model here against
8-12 s for ``dynamo=True``, which also cannot down-convert to opset 17; the dynamo exporter
is the fallback for graphs TorchScript cannot express, at opset 18. Preprocessing and labels
travel in the file's ``metadata_props`` (:mod:`pocketcnn.artifacts.metadata`).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts.metadata import write_onnx_metadata
from ..errors import ExportError, first_line
from ..validate import check_int
from ..fileio import atomic_write


def export_onnx(model: nn.Module, path: str | Path, *, input_size: tuple[int, int, int], opset: int = 17,
                dynamic_batch: bool = False, metadata: Mapping[str, Any] | None = None,
                dynamo: bool | None = None) -> Path:
    """Write ``model`` (eval mode, CPU) as ONNX with input ``input`` (N, C, H, W) and output ``logits``.

    ``metadata``: stored in ``metadata_props``, each value as a JSON string.
    ``dynamo``: False uses the TorchScript exporter, True the torch.export-based one (slower
    here, and at least opset 18, its native one); None (default) tries TorchScript first
    and falls back to dynamo for what TorchScript cannot express (e.g. AlexNet's 6x6
    adaptive pool over a 2x2 map at 28x28 inputs). Read the file's opset with :func:`onnx_opset`.
    """
    import onnx

    check_int("opset", opset, 7, 23)
    model = model.eval().cpu()

    def write(tmp: str) -> None:
        errors = []
        for use_dynamo in ([False, True] if dynamo is None else [bool(dynamo)]):
            try:
                _onnx_export(model, tmp, input_size, opset, dynamic_batch, use_dynamo)
                break
            except Exception as exc:  # the exporters raise many types; the user needs one line
                errors.append(f"{'dynamo' if use_dynamo else 'TorchScript'} exporter: {first_line(exc)}")
        else:
            raise ExportError(f"ONNX export of {type(model).__name__} (opset {opset}) failed: {'; '.join(errors)}")
        if metadata:
            proto = onnx.load(tmp)
            write_onnx_metadata(proto, metadata)
            onnx.save(proto, tmp)

    return atomic_write(path, write)


def _onnx_export(model: nn.Module, path: str, input_size, opset: int, dynamic_batch: bool, dynamo: bool) -> None:
    import contextlib
    import io
    import logging

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        if not dynamo:
            torch.onnx.export(
                model, (torch.zeros(1, *input_size),), str(path), dynamo=False, opset_version=opset,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
            )
            return
        level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
            example = torch.zeros(2 if dynamic_batch else 1, *input_size)
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=max(opset, 18),
                              input_names=["input"], output_names=["logits"], dynamic_shapes=shapes,
                              external_data=False, verbose=False)
        finally:
            logging.getLogger("torch.onnx").setLevel(level)


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset an ONNX file was written with."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
