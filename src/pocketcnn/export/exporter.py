"""``export_model``: write a model source in a deployment format, then verify the file.

Formats (:data:`~pocketcnn.export.formats.FORMATS`): ``onnx``, ``pt2``, ``pte``. The output
path is checked before any work (not the source itself, the suffix of the format, a
writable folder) and the file is written atomically; a file that fails verification is
removed, so nothing unverified is left behind.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import os

from ..artifacts.source import ModelSource
from ..errors import ConfigError, ExportError
from ..fileio import check_output
from .formats import FORMATS, SUFFIX
from .verify import ATOL, Verification, verification_inputs, verify_export


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote and how the file compared with PyTorch."""

    path: Path
    format: str
    model: str
    size_bytes: int
    input_size: tuple[int, int, int]
    dynamic_batch: bool
    opset: int | None
    seconds: float  # export time, verification excluded
    verification: Verification

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def export_model(source: ModelSource, path: str | Path, *, format: str = "onnx", opset: int = 17,
                 dynamic_batch: bool = False, verify_n: int = 8, data_dir: str | Path | None = None,
                 atol: float = ATOL) -> ExportResult:
    """Export ``source`` to ``path`` in ``format`` and verify it; only a verified file gets ``path``.

    The file is written next to ``path`` under a temporary name, run against PyTorch, and
    renamed to ``path`` when it passes; when it fails, it is kept as ``<stem>.unverified<suffix>``
    for inspection and an ExportError says so.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, received format={format!r}")
    path = check_output(path, inputs=[source.path], suffixes=[SUFFIX[format]], what=f"{format} file")
    meta = source.metadata()
    size = source.input_size
    pending = path.with_name(f".{path.stem}.pending{path.suffix}")
    t0 = time.perf_counter()
    try:
        _write(format, source, pending, size, meta, opset=opset, dynamic_batch=dynamic_batch)
        seconds = time.perf_counter() - t0
        inputs, desc = verification_inputs(source.data, size, verify_n, data_dir=data_dir)
        check = verify_export(pending, source.model, inputs, atol=atol, inputs_desc=desc)
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    if not check.passed:
        kept = path.with_name(f"{path.stem}.unverified{path.suffix}")
        os.replace(pending, kept)
        raise ExportError(f"{path}: not written: {check.runtime} disagrees with PyTorch on {desc}: max |logit diff| "
                          f"{check.max_abs_diff:.3g} (limit {atol:g}), top-1 agreement "
                          f"{100 * check.top1_agreement:.1f}% (kept for inspection as {kept})")
    os.replace(pending, path)
    return ExportResult(path, format, source.name, path.stat().st_size, size, dynamic_batch,
                        _opset(path) if format == "onnx" else None, seconds, check)


def _write(format: str, source: ModelSource, path: Path, size: tuple[int, int, int], meta: dict[str, Any], *,
           opset: int, dynamic_batch: bool) -> None:
    if format == "onnx":
        from .onnx import export_onnx

        export_onnx(source.model, path, input_size=size, opset=opset, dynamic_batch=dynamic_batch, metadata=meta)
    elif format == "pt2":
        from .torch_formats import export_pt2

        export_pt2(source.model, path, input_size=size, dynamic_batch=dynamic_batch, metadata=meta)
    else:
        from .torch_formats import export_pte

        export_pte(source.model, path, input_size=size, dynamic_batch=dynamic_batch, metadata=meta)


def _opset(path: Path) -> int:
    from .onnx import onnx_opset

    return onnx_opset(path)
