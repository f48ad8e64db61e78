"""``open_runtime``: the runner for an exported model file, chosen by its suffix.

``.onnx`` runs in ONNX Runtime and ``.tflite`` in the LiteRT interpreter (both torch-free);
``.pte`` (ExecuTorch) and ``.pt2`` (``torch.export``) need PyTorch, imported only for them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ExportError

EXPORTED_SUFFIXES = (".onnx", ".tflite", ".pte", ".pt2")


def open_runtime(path: str | Path, *, threads: int | None = None) -> Any:
    """The runner (``runtime``, ``metadata``, ``max_batch``, ``run(batch) -> logits``) for an exported file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .onnx import OnnxRunner

        return OnnxRunner(path, threads=threads)
    if suffix == ".tflite":
        from .litert import LiteRtRunner

        return LiteRtRunner(path, threads=threads)
    if suffix == ".pte":
        from .torch_runners import ExecuTorchRunner

        return ExecuTorchRunner(path)
    if suffix == ".pt2":
        from .torch_runners import load_pt2

        return load_pt2(path)
    raise ExportError(f"{path}: unknown exported format {path.suffix!r} (expected {', '.join(EXPORTED_SUFFIXES)})")
