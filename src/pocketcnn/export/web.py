"""``export_web``: a static folder that classifies photos in the browser, served by any file server.

Layout (the page's relative URLs are the same as under ``pocketcnn serve``)::

    DIR/index.html          the packaged page, told there is no server (data-api="")
    DIR/model.onnx          the model with its pocketcnn metadata (the page reads it from the file)
    DIR/model.tflite        the same model for LiteRT.js (fp32, NHWC input, the same metadata)
    DIR/sw.js               the service worker: the page works offline after the first visit
    DIR/offline.json        what it stores, in a cache named by the model's SHA-256
    DIR/manifest.webmanifest the web app manifest (a phone can install the page)
    DIR/static/app.js, preprocess.js, style.css, icons/
    DIR/static/ort/         ONNX Runtime Web (wasm build) and its manifest
    DIR/static/litert/      LiteRT.js (its API and WebAssembly builds) and its manifest
    DIR/README.txt          how to serve it

The ONNX file is written with :func:`~pocketcnn.export.onnx.export_onnx` (batch 1), the
``.tflite`` with :func:`~pocketcnn.export.tflite.export_tflite` (needs the ``litert`` extra;
without it the folder has no ``.tflite`` and the page runs ONNX Runtime Web, and the result
says so in ``warnings``); each is verified against PyTorch with
:func:`~pocketcnn.export.verify.verify_export` before the folder appears: it is staged
beside ``DIR`` and renamed into place, so ``DIR`` is either the old folder or the complete
new one. Any static server works (``python -m http.server``); one that sends the COOP/COEP
headers lets the page use several threads.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..artifacts.source import ModelSource
from ..errors import ExportError, OutputError
from ..fileio import check_writable_dir
from ..runtime.web import (ICON_FILES, LITERT_FILES, LITERT_MANIFEST, MANIFEST, OFFLINE_PLAN, ORT_WEB_FILES,
                           PAGE_FILES, SERVICE_WORKER, WEB_MANIFEST, offline_plan, packaged_page, require_litert_js,
                           require_ort_web, web_manifest)
from .verify import ATOL, Verification, verification_inputs, verify_export

MODEL_FILE = "model.onnx"
TFLITE_FILE = "model.tflite"
# The page's <body> as packaged (served by pocketcnn serve) and as exported (no server).
SERVED_BODY = ('<body data-api="v1/" data-model="v1/model.onnx" data-tflite="v1/model.tflite" '
               'data-runtime="static/ort/" data-litert="static/litert/">')
STATIC_BODY = (f'<body data-api="" data-model="{MODEL_FILE}" data-tflite="{TFLITE_FILE}" '
               'data-runtime="static/ort/" data-litert="static/litert/">')
README = """\
{model}: a browser page that classifies photos on the visitor's device
({runtimes}, WebAssembly). Written by pocketcnn {version}.

Serve this folder with any static file server and open it, for example:

    python -m http.server 8000 --bind 127.0.0.1     # then http://127.0.0.1:8000/

(Opened as a file:// URL it cannot load the model.) With the response headers
Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp
the page runs the model on several threads; without them, on one.

model.onnx (and model.tflite, for LiteRT.js) carry the preprocessing and class names as
metadata (input {input}). After the first visit the page works offline (sw.js keeps the
page, its runtime and its model); a phone can install it (manifest.webmanifest).
"""


@dataclass(frozen=True)
class WebExportResult:
    """What :func:`export_web` wrote: ``files`` maps each path relative to ``path`` to its size."""

    path: Path
    model: str
    files: dict[str, int]
    model_bytes: int
    runtime_bytes: int  # ONNX Runtime Web files
    page_bytes: int  # index.html, scripts, style, service worker, manifest, icons
    input_size: tuple[int, int, int]
    opset: int
    seconds: float  # export time, verification excluded
    verification: Verification
    tflite_bytes: int = 0  # model.tflite, 0 when not written
    litert_bytes: int = 0  # LiteRT.js files (every build; a visitor downloads one)
    tflite_verification: Verification | None = None
    sha256: str = ""  # of model.onnx: names the page's offline cache
    warnings: tuple[str, ...] = ()

    format = "web"
    dynamic_batch = False  # the page runs one image at a time
    precision = "fp32"
    layout = "NCHW"  # model.onnx; model.tflite is NHWC
    warnings: tuple[str, ...] = ()  # as ExportResult's: an fp32 folder that verified has none

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    @property
    def size_bytes(self) -> int:
        """What a visitor downloads (and the folder holds): as ``ExportResult.size_bytes`` for a file."""
        return self.total_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(path=str(self.path), format=self.format, size_bytes=self.size_bytes, total_bytes=self.total_bytes,
                 dynamic_batch=self.dynamic_batch, precision=self.precision, warnings=list(self.warnings))
        return d


def check_web_out(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """The output folder checked before any work: not a file, empty or absent (unless
    ``overwrite``), and in a place that can be written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file; the web export is a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"{out}: folder is not empty; choose another --out or allow replacing it")
    check_writable_dir(out.parent, "web folder")
    return out


def litert_available() -> bool:
    """Whether this install can write ``.tflite`` files (the ``litert`` extra)."""
    import importlib.util

    return importlib.util.find_spec("litert_torch") is not None


def export_web(source: ModelSource, out_dir: str | Path, *, opset: int = 17, verify_n: int = 8,
               data_dir: str | Path | None = None, atol: float = ATOL, runtime_dir: str | Path | None = None,
               litert_dir: str | Path | None = None, tflite: bool | None = None,
               overwrite: bool = False) -> WebExportResult:
    """Write ``source`` as a static web folder ``out_dir`` (see the module docstring) and return what it holds.

    ``runtime_dir`` / ``litert_dir``: where ONNX Runtime Web's / LiteRT.js's files are
    (default: the package's, from ``pocketcnn web-runtime``). ``tflite``: write
    ``model.tflite`` for LiteRT.js (default: when the ``litert`` extra is installed; True
    without it is a MissingDependencyError). ``overwrite``: replace a folder that is not empty.
    OutputError, WebRuntimeError or ExportError (one line) before anything is left behind.
    """
    out = check_web_out(out_dir, overwrite=overwrite)
    runtime = require_ort_web(runtime_dir)
    warnings: list[str] = []
    if tflite is None:
        tflite = litert_available()
        if not tflite:
            warnings.append("no model.tflite (LiteRT.js, the faster runtime in the browser): the litert extra is not "
                            "installed (pip install 'pocketcnn[litert]'); the page runs ONNX Runtime Web")
    litert = require_litert_js(litert_dir) if tflite else None
    page = packaged_page()
    if page is None:
        raise ExportError("the browser page is missing from this pocketcnn install (pocketcnn/web/); reinstall it")
    index = (page / "index.html").read_text(encoding="utf-8")
    if index.count(SERVED_BODY) != 1:
        raise ExportError(f"{page / 'index.html'}: its <body> tag is not {SERVED_BODY!r}; cannot retarget the page")
    size = source.input_size
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.pending-", dir=out.parent))
    try:
        from .onnx import export_onnx, onnx_opset

        t0 = time.perf_counter()
        model_path = export_onnx(source.model, staging / MODEL_FILE, input_size=size, opset=opset,
                                 dynamic_batch=False, metadata=source.metadata())
        seconds = time.perf_counter() - t0
        inputs, desc = verification_inputs(source.data, size, verify_n, data_dir=data_dir)
        check = verify_export(model_path, source.model, inputs, atol=atol, inputs_desc=desc)
        if not check.passed:
            raise ExportError(f"{out}: not written: {check.runtime} disagrees with PyTorch on {desc}: max |logit diff| "
                              f"{check.max_abs_diff:.3g} (limit {atol:g}), top-1 agreement "
                              f"{100 * check.top1_agreement:.1f}%")
        tflite_check = None
        if tflite:
            from .tflite import export_tflite

            tflite_path = export_tflite(source.model, staging / TFLITE_FILE, input_size=size,
                                        metadata=source.metadata())
            tflite_check = verify_export(tflite_path, source.model, inputs, atol=atol, inputs_desc=desc)
            if not tflite_check.passed:
                raise ExportError(f"{out}: not written: {tflite_check.runtime} disagrees with PyTorch on {desc}: "
                                  f"max |logit diff| {tflite_check.max_abs_diff:.3g} (limit {atol:g}), top-1 "
                                  f"agreement {100 * tflite_check.top1_agreement:.1f}%")
        (staging / "static" / "ort").mkdir(parents=True)
        (staging / "index.html").write_text(index.replace(SERVED_BODY, STATIC_BODY), encoding="utf-8")
        for name in PAGE_FILES:
            if name not in ("index.html", SERVICE_WORKER):
                shutil.copyfile(page / name, staging / "static" / name)
        shutil.copyfile(page / SERVICE_WORKER, staging / SERVICE_WORKER)  # its scope is the folder: at the top
        for name in ICON_FILES:
            (staging / "static" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(page / name, staging / "static" / name)
        for name in (*ORT_WEB_FILES, MANIFEST):
            shutil.copyfile(runtime.path / name, staging / "static" / "ort" / name)
        if litert is not None:
            for name in (*LITERT_FILES, LITERT_MANIFEST):
                (staging / "static" / "litert" / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(litert.path / name, staging / "static" / "litert" / name)
        from .. import __version__

        runtimes = " or ".join(r for r in (f"LiteRT.js {litert.version}" if litert else None,
                                           f"ONNX Runtime Web {runtime.version}") if r)
        (staging / "README.txt").write_text(README.format(
            model=source.name, runtimes=runtimes, version=__version__, input="x".join(map(str, size))))
        (staging / WEB_MANIFEST).write_text(json.dumps(web_manifest(source.name), indent=2) + "\n")
        plan = offline_plan(source.name, (MODEL_FILE, model_path),
                            tflite=(TFLITE_FILE, staging / TFLITE_FILE) if tflite else None, page=page,
                            ort=runtime, litert=litert)
        (staging / OFFLINE_PLAN).write_text(json.dumps(plan, indent=2) + "\n")
        files = {p.relative_to(staging).as_posix(): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()}
        for p in staging.rglob("*"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(staging, 0o755)
        opset_used = onnx_opset(model_path)
        _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    runtime_bytes = sum(v for k, v in files.items() if k.startswith("static/ort/"))
    litert_bytes = sum(v for k, v in files.items() if k.startswith("static/litert/"))
    page_bytes = sum(v for k, v in files.items() if k in ("index.html", SERVICE_WORKER, WEB_MANIFEST)
                     or k.startswith("static/") and (k.count("/") == 1 or k.startswith("static/icons/")))
    return WebExportResult(out, source.name, files, files[MODEL_FILE], runtime_bytes, page_bytes, size, opset_used,
                           seconds, check, files.get(TFLITE_FILE, 0), litert_bytes, tflite_check, str(plan["sha256"]),
                           tuple(warnings))


def _replace_folder(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``, moving an existing ``out`` away first and deleting it after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
