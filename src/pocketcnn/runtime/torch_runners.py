"""Runners that need PyTorch: an ``nn.Module`` (checkpoint, ``.pcz``, a ``.pt2`` program) and
ExecuTorch ``.pte`` programs. Each takes a float32 ``(N, C, H, W)`` numpy array and returns
float32 ``(N, num_classes)`` logits, like :class:`pocketcnn.runtime.onnx.OnnxRunner`; a file
exported with a fixed batch size is fed in chunks of that size.

Imported only when such a model is run, so the rest of ``pocketcnn.runtime`` stays torch-free.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..artifacts.metadata import PT2_METADATA_FILE, PTE_METADATA_METHOD
from ..errors import CheckpointError, ExportError, MissingDependencyError, first_line


class TorchRunner:
    """An ``nn.Module`` under ``torch.no_grad``: ``run(float32 (N, C, H, W)) -> (N, classes)``."""

    def __init__(self, model: nn.Module, metadata: Mapping[str, Any] | None = None, *, runtime: str = "torch",
                 max_batch: int | None = None) -> None:
        try:
            model.eval()
        except NotImplementedError:  # a torch.export module is in eval mode already and says so
            pass
        self.model = model
        self.metadata = dict(metadata or {})
        self.runtime = runtime
        self.max_batch = max_batch

    def run(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(batch, torch.Tensor):
            batch = batch.detach().cpu().numpy()
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4:
            raise ExportError(f"{self.runtime}: expected an (N, C, H, W) batch, received shape {batch.shape}")
        step = self.max_batch or len(batch) or 1
        return np.concatenate([self._run(batch[i:i + step]) for i in range(0, len(batch), step)]) \
            if len(batch) > step else self._run(batch)

    __call__ = run

    @torch.no_grad()
    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(batch)).float().numpy()


class ExecuTorchRunner(TorchRunner):
    """A ``.pte`` program through ``executorch.runtime`` (optional extra ``pocketcnn[mobile]``)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:  # threads: PyTorch's setting applies
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such .pte file")
        with open(self.path, "rb") as f:  # the flatbuffer's file identifier, checked before ExecuTorch is needed
            head = f.read(8)
        if head[4:6] != b"ET":
            raise CheckpointError(f"{self.path}: not an ExecuTorch program (no 'ET' file identifier at byte 4); "
                                  "export one with 'pocketcnn export --format pte'")
        try:
            from executorch.runtime import Runtime
        except ImportError as exc:
            raise MissingDependencyError(f"{self.path}: running .pte files needs ExecuTorch ({first_line(exc)}): "
                                         "pip install 'pocketcnn[mobile]'") from None
        try:
            program = Runtime.get().load_program(self.path)
            self.method = program.load_method("forward")
        except Exception as exc:
            raise CheckpointError(f"{self.path}: not a readable ExecuTorch program ({first_line(exc)})") from None
        metadata: dict[str, Any] = {}
        if PTE_METADATA_METHOD in program.method_names:
            try:
                metadata = json.loads(program.load_method(PTE_METADATA_METHOD).execute([])[0])
            except (ValueError, TypeError, IndexError, RuntimeError):
                metadata = {}
        try:  # the planned (upper-bound) input size; a dynamic batch may be bounded below PTE_MAX_BATCH
            max_batch = max(1, int(self.method.metadata.input_tensor_meta(0).sizes()[0]))
        except (AttributeError, IndexError, RuntimeError, TypeError):
            max_batch = 1
        self.metadata, self.runtime, self.max_batch = metadata, "executorch", max_batch

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self.method.execute([torch.from_numpy(batch)])[0]
        return out.detach().numpy().astype(np.float32, copy=True)


def load_pt2(path: str | Path, threads: int | None = None) -> TorchRunner:  # threads: PyTorch's setting applies
    """A ``.pt2`` archive from :func:`~pocketcnn.export.torch_formats.export_pt2`, with its metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such .pt2 file")
    extra = {PT2_METADATA_FILE: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable torch.export archive ({first_line(exc)})") from None
    try:
        meta = json.loads(extra[PT2_METADATA_FILE] or "{}")
    except ValueError:
        meta = {}
    max_batch = meta.get("max_batch") if isinstance(meta, dict) else None
    return TorchRunner(program.module(), meta if isinstance(meta, dict) else {}, runtime="torch.export",
                       max_batch=max_batch)
