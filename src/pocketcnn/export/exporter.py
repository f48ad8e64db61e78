"""``export_model``: write a model source in a deployment format, then verify the file.

Formats (:data:`~pocketcnn.artifacts.formats.EXPORT_FORMATS`): ``onnx``, ``pt2``, ``pte``, ``tflite``
(LiteRT, fp32 or full-integer int8) and ``coreml`` (an ``.mlpackage`` folder). The output
path is checked before any work (not the source itself, the suffix of the format, a
writable folder) and the file (or folder) is written atomically: under a pending name next
to the target, renamed over it once verified. A file that fails verification is kept as
``<stem>.unverified<suffix>`` and an ExportError says so, so nothing unverified is left
under the target's name.

Verification runs the file in its own runtime against PyTorch (:mod:`~pocketcnn.export.verify`),
except: an int8 ``.tflite`` is scored against fp32 on the test split
(:func:`~pocketcnn.export.tflite.verify_int8`; a top-1 drop above 2 points is a warning in the
result, not a failure), and a Core ML package, which only Apple systems run, has its spec
checked (:func:`~pocketcnn.export.coreml.check_coreml`) and says that it was not run.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..artifacts.formats import BY_NAME, EXPORT_FORMATS, format_of
from ..artifacts.source import ModelSource
from ..errors import ConfigError, ExportError, OutputError
from ..validate import check_int
from ..fileio import check_output, check_writable_dir
from .tflite import CALIB_SAMPLES, TEST_SAMPLES
from .verify import ATOL, Verification, verification_inputs, verify_export


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote and how it was verified.

    ``verification``: a :class:`~pocketcnn.export.verify.Verification` (run against PyTorch),
    an :class:`~pocketcnn.export.tflite.Int8Verification` (int8 ``.tflite``) or a
    :class:`~pocketcnn.export.coreml.CoreMLCheck` (Core ML: spec checked, not run, ``ran`` False).
    """

    path: Path
    format: str
    model: str
    size_bytes: int  # a folder (.mlpackage): all its files
    input_size: tuple[int, int, int]
    dynamic_batch: bool
    opset: int | None
    seconds: float  # export time, verification excluded
    verification: Any
    precision: str = "fp32"  # "fp32", "int8" (tflite) or "fp16" (coreml)
    layout: str = "NCHW"  # of the file's input; "NHWC" for tflite

    @property
    def warnings(self) -> tuple[str, ...]:
        warning = getattr(self.verification, "warning", None)
        return (warning,) if warning else ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["verification"] = {"ran": True, **asdict(self.verification)}
        d["warnings"] = list(self.warnings)
        return d


def export_model(source: ModelSource, path: str | Path, *, format: str = "onnx", opset: int = 17,
                 dynamic_batch: bool = False, verify_n: int = 8, data_dir: str | Path | None = None,
                 atol: float = ATOL, int8: bool = False, calib_data: str | None = None,
                 calib_samples: int = CALIB_SAMPLES, test_samples: int | None = TEST_SAMPLES,
                 precision: str | None = None) -> ExportResult:
    """Export ``source`` to ``path`` in ``format`` and verify it; only a verified file gets ``path``.

    ``int8`` (tflite only): calibrate on ``calib_samples`` balanced training images of
    ``calib_data`` (default: the checkpoint's data set, read from ``data_dir``) and score on
    ``test_samples`` balanced test images (None: the whole split). ``precision`` (coreml
    only): ``"fp16"`` (default) or ``"fp32"``.
    """
    _check_options(format, dynamic_batch, int8, precision, calib_samples, test_samples)
    if format == "web":  # a folder: export_web checks, verifies and renames it into place itself
        from .web import export_web

        return export_web(source, path, opset=opset, verify_n=verify_n, data_dir=data_dir, atol=atol,
                          calib={"calib_data": calib_data, "calib_samples": calib_samples, "test_samples": test_samples})
    if calib_data is not None and not int8:
        raise ConfigError(f"calib_data (--calib-data) applies to int8 export, received calib_data={calib_data!r} "
                          "without int8=True (--int8)")
    if format == "coreml":
        path = _check_package(path, source)
    else:
        path = check_output(path, inputs=[source.path], suffixes=[BY_NAME[format].suffix], what=f"{format} file")
    meta = source.metadata()
    size = source.input_size
    pending = path.with_name(f".{path.stem}.pending{path.suffix}")
    _remove(pending)
    t0 = time.perf_counter()
    try:
        if format == "tflite" and int8:
            check, seconds = _tflite_int8(source, pending, meta, data_dir, calib_data, calib_samples, test_samples)
        else:
            _write(format, source, pending, size, meta, opset=opset, dynamic_batch=dynamic_batch,
                   precision=precision or "fp16")
            seconds = time.perf_counter() - t0
            if format == "coreml":
                from .coreml import check_coreml

                check = check_coreml(pending, meta, precision or "fp16")
            else:
                inputs, desc = verification_inputs(source.data, size, verify_n, data_dir=data_dir)
                check = verify_export(pending, source.model, inputs, atol=atol, inputs_desc=desc)
    except BaseException:
        _remove(pending)
        raise
    if not check.passed:
        kept = path.with_name(f"{path.stem}.unverified{path.suffix}")
        _replace(pending, kept)
        raise ExportError(f"{path}: not written: {_failure(check, atol)} (kept for inspection as {kept})")
    _replace(pending, path)
    return ExportResult(path, format, source.name, _size(path), size, dynamic_batch,
                        _opset(path) if format == "onnx" else None, seconds, check,
                        "int8" if int8 else (precision or "fp16") if format == "coreml" else "fp32",
                        "NHWC" if format == "tflite" else "NCHW")


def _check_options(format: str, dynamic_batch: bool, int8: bool, precision: str | None, calib_samples: int,
                   test_samples: int | None) -> None:
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(EXPORT_FORMATS)}, received format={format!r}")
    if int8 and format != "tflite":
        raise ConfigError(f"int8 export is offered for format='tflite' (for ONNX: 'pocketcnn quantize'), "
                          f"received format={format!r} with int8=True")
    if precision is not None and format != "coreml":
        raise ConfigError(f"precision applies to format='coreml' (tflite: int8=True), received format={format!r} "
                          f"with precision={precision!r}")
    if precision is not None and precision not in ("fp16", "fp32"):
        raise ConfigError(f"precision must be fp16 or fp32, received precision={precision!r}")
    if dynamic_batch and format in ("tflite", "coreml"):
        raise ConfigError(f"dynamic_batch does not apply to format={format!r}: "
                          + ("LiteRT resizes a .tflite file's batch when it runs" if format == "tflite"
                             else "a Core ML image input takes one image"))
    check_int("calib_samples", calib_samples, optional=True)
    check_int("test_samples", test_samples, optional=True)


def _tflite_int8(source: ModelSource, pending: Path, meta: dict[str, Any], data_dir: Any, calib_data: str | None,
                 calib_samples: int, test_samples: int | None) -> tuple[Any, float]:
    """Calibrate on real images, write the int8 file, score it on the test split: (check, export seconds)."""
    from .tflite import export_tflite, int8_images, verify_int8

    images = int8_images(source.data, data_dir, calib_data=calib_data, calib_samples=calib_samples,
                         test_samples=test_samples)
    t0 = time.perf_counter()
    export_tflite(source.model, pending, input_size=source.input_size, metadata=meta, calib_batches=images.batches(),
                  calibration=images.calibration)
    seconds = time.perf_counter() - t0
    check = verify_int8(pending, source.model, images.test_x, images.test_y, inputs_desc=images.inputs,
                        calibration=images.calibration)
    return check, seconds


def _failure(check: Any, atol: float) -> str:
    if isinstance(check, Verification):
        return (f"{check.runtime} disagrees with PyTorch on {check.inputs}: max |logit diff| {check.max_abs_diff:.3g} "
                f"(limit {atol:g}), top-1 agreement {100 * check.top1_agreement:.1f}%")
    problems = getattr(check, "problems", ())
    if problems:
        return f"the Core ML spec is not as asked: {'; '.join(problems)}"
    return f"{check.runtime} did not give finite logits of the right shape on {check.inputs}"


def _write(format: str, source: ModelSource, path: Path, size: tuple[int, int, int], meta: dict[str, Any], *,
           opset: int, dynamic_batch: bool, precision: str) -> None:
    if format == "onnx":
        from .onnx import export_onnx

        export_onnx(source.model, path, input_size=size, opset=opset, dynamic_batch=dynamic_batch, metadata=meta)
    elif format == "pt2":
        from .torch_formats import export_pt2

        export_pt2(source.model, path, input_size=size, dynamic_batch=dynamic_batch, metadata=meta)
    elif format == "pte":
        from .torch_formats import export_pte

        export_pte(source.model, path, input_size=size, dynamic_batch=dynamic_batch, metadata=meta)
    elif format == "tflite":
        from .tflite import export_tflite

        export_tflite(source.model, path, input_size=size, metadata=meta)
    else:
        from .coreml import export_coreml

        export_coreml(source.model, path, metadata=meta, precision=precision)


def _check_package(path: str | Path, source: ModelSource) -> Path:
    """An ``.mlpackage`` target: a folder; an existing one is replaced only when it is a package."""
    path = Path(path)
    if format_of(path) is not BY_NAME["coreml"]:
        raise OutputError(f"{path}: the Core ML package must end in .mlpackage, received {path.suffix or 'no suffix'!r}")
    if path.exists() and not (path.is_dir() and (path / "Manifest.json").is_file()):
        raise OutputError(f"{path}: exists and is not a Core ML package; choose another --out")
    if source.path is not None and Path(source.path).resolve() == path.resolve():
        raise OutputError(f"{path}: the Core ML package would replace the input {source.path}; choose another --out")
    check_writable_dir(path.parent, "Core ML package")
    return path


def _replace(src: Path, dst: Path) -> None:
    """Rename ``src`` (a file or a folder) to ``dst``; an existing folder ``dst`` is swapped out, then removed."""
    if not src.is_dir() or not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.stem}.old-{os.getpid()}{dst.suffix}")
    _remove(old)
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _opset(path: Path) -> int:
    from .onnx import onnx_opset

    return onnx_opset(path)
