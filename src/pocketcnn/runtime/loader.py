"""``open_runtime``: the runner for an exported model file, chosen by the format table.

``.onnx`` runs in ONNX Runtime and ``.tflite`` in the LiteRT interpreter (both torch-free);
``.pte`` (ExecuTorch) and ``.pt2`` (``torch.export``) need PyTorch, imported only for them
(:data:`~pocketcnn.artifacts.formats.FORMATS` names each runner).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifacts.formats import format_of, suffixes
from ..errors import ExportError


def open_runtime(path: str | Path, *, threads: int | None = None) -> Any:
    """The runner (``runtime``, ``metadata``, ``max_batch``, ``run(batch) -> logits``) for an exported file."""
    path = Path(path)
    fmt = format_of(path)
    if fmt is None or fmt.runner is None:
        raise ExportError(f"{path}: unknown exported format {path.suffix!r} (expected "
                          f"{', '.join(suffixes(kind='exported'))})")
    return fmt.open_runner(path, threads=threads)
