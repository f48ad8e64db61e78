"""``torch.export`` formats: ``.pt2`` archives and ExecuTorch ``.pte`` programs (XNNPACK).

* ``pt2``: ``torch.export.export`` + ``torch.export.save``; metadata in the archive's extra
  file ``pocketcnn_metadata.json``, run back with ``torch.export.load``.
* ``pte``: ExecuTorch with the XNNPACK partitioner (optional extra ``pocketcnn[mobile]``);
  metadata in the constant method ``pocketcnn_metadata``, run back with ``executorch.runtime``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts.metadata import PT2_METADATA_FILE, PTE_METADATA_METHOD
from ..errors import ExportError, first_line
from ..fileio import atomic_write, atomic_write_bytes

PTE_MAX_BATCH = 32  # ExecuTorch plans memory for the largest batch, so a dynamic batch is bounded


def export_pt2(model: nn.Module, path: str | Path, *, input_size: tuple[int, int, int], dynamic_batch: bool = False,
               metadata: Mapping[str, Any] | None = None) -> Path:
    """``torch.export`` the model and save it as a ``.pt2`` archive (metadata as an extra file)."""
    model = model.eval().cpu()
    meta = {**(metadata or {}), "max_batch": None if dynamic_batch else 1}
    try:
        ep = _torch_export(model, input_size, dynamic_batch, max_batch=None)
    except Exception as exc:
        raise ExportError(f"torch.export of {type(model).__name__} failed: {first_line(exc)}") from None
    return atomic_write(path, lambda tmp: torch.export.save(ep, tmp, extra_files={PT2_METADATA_FILE: json.dumps(meta)}))


def export_pte(model: nn.Module, path: str | Path, *, input_size: tuple[int, int, int], dynamic_batch: bool = False,
               metadata: Mapping[str, Any] | None = None) -> Path:
    """Lower the model to ExecuTorch with XNNPACK and write a ``.pte`` program.

    A dynamic batch is bounded by ``PTE_MAX_BATCH`` (ExecuTorch plans memory for the upper bound).
    """
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise ExportError(f"exporting .pte needs ExecuTorch ({first_line(exc)}): "
                          "install 'pocketcnn[mobile]'") from None
    model = model.eval().cpu()
    meta = {**(metadata or {}), "dynamic_batch": bool(dynamic_batch)}
    try:
        ep = _torch_export(model, input_size, dynamic_batch, max_batch=PTE_MAX_BATCH)
        program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                              constant_methods={PTE_METADATA_METHOD: json.dumps(meta)}).to_executorch()
    except Exception as exc:
        raise ExportError(f"ExecuTorch export of {type(model).__name__} failed: {first_line(exc)}") from None
    return atomic_write_bytes(path, program.buffer)


def _torch_export(model: nn.Module, input_size, dynamic_batch: bool, max_batch: int | None):
    if dynamic_batch:  # example batch 2: torch.export specializes a size-1 dimension
        dim = torch.export.Dim("batch", min=1, max=max_batch) if max_batch else torch.export.Dim("batch", min=1)
        return torch.export.export(model, (torch.zeros(2, *input_size),), dynamic_shapes=({0: dim},))
    return torch.export.export(model, (torch.zeros(1, *input_size),))


