"""``export_web``: a static folder that classifies photos in the browser, served by any file server.

Layout (the page's relative URLs are the same as under ``pocketcnn serve``)::

    DIR/index.html          the packaged page, told there is no server (data-api="")
    DIR/model.onnx          the model with its pocketcnn metadata (the page reads it from the file)
    DIR/model.tflite        the same model for LiteRT.js (fp32, NHWC input, the same metadata)
    DIR/model-int8.tflite   the same model in int8 for LiteRT.js, when it could be calibrated: the
                            page times both files on the visitor's device and runs the faster
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
:func:`~pocketcnn.export.verify.verify_export` before the folder appears. ``model-int8.tflite``
is calibrated on real images of the checkpoint's data set, as ``pocketcnn export CKPT --format
tflite --int8`` does (:func:`~pocketcnn.export.tflite.int8_images`), with a float32 interface
(LiteRT.js runs no int8 input tensor; the int8 tensors' scale and zero point are in its
metadata), and scored against fp32 on the test split
(:func:`~pocketcnn.export.tflite.verify_int8`); without images of that data set, or when it
loses more than 2 top-1 points, the folder has none and ``warnings`` says why. The folder is staged
beside ``DIR`` and renamed into place, so ``DIR`` is either the old folder or the complete
new one. Any static server works (``python -m http.server``); one that sends the COOP/COEP
headers lets the page use several threads.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DataError, ExportError, OutputError
from ..fileio import check_writable_dir, sha256_file
from ..runtime.web import (ICON_FILES, LITERT_FILES, LITERT_MANIFEST, MANIFEST, OFFLINE_PLAN, ORT_WEB_FILES,
                           PAGE_FILES, SERVICE_WORKER, WEB_MANIFEST, LiteRtJs, WebRuntime, offline_plan,
                           packaged_page, require_litert_js, require_ort_web, web_manifest)

if TYPE_CHECKING:  # this module stays torch-free at import: serve builds the page's plan with web_plan
    from ..artifacts.source import ModelSource
    from .tflite import Int8Images

MODEL_FILE = "model.onnx"
TFLITE_FILE = "model.tflite"
INT8_FILE = "model-int8.tflite"
INT8_KEY = "tflite_int8"  # its entry in offline.json's "models"
# The page's <body> as packaged (served by pocketcnn serve) and as exported (no server).
SERVED_BODY = ('<body data-api="v1/" data-model="v1/model.onnx" data-tflite="v1/model.tflite" '
               'data-tflite-int8="v1/model-int8.tflite" data-runtime="static/ort/" data-litert="static/litert/">')
STATIC_BODY = (f'<body data-api="" data-model="{MODEL_FILE}" data-tflite="{TFLITE_FILE}" '
               f'data-tflite-int8="{INT8_FILE}" data-runtime="static/ort/" data-litert="static/litert/">')
README = """\
{model}: a browser page that classifies photos on the visitor's device
({runtimes}, WebAssembly). Written by pocketcnn {version}.

Serve this folder with any static file server and open it, for example:

    python -m http.server 8000 --bind 127.0.0.1     # then http://127.0.0.1:8000/

(Opened as a file:// URL it cannot load the model.) With the response headers
Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp
the page runs the model on several threads; without them, on one.

model.onnx (and model.tflite, for LiteRT.js) carry the preprocessing and class names as
metadata (input {input}).{int8} After the first visit the page works offline (sw.js keeps
the page, its runtime and its model); a phone can install it (manifest.webmanifest).
"""
INT8_README = (" model-int8.tflite is the same model in int8: the page times both .tflite files on the "
               "visitor's device once and runs the faster (the choice can be changed on the page).")


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
    verification: Any  # export.verify.Verification of model.onnx
    tflite_bytes: int = 0  # model.tflite, 0 when not written
    litert_bytes: int = 0  # LiteRT.js files (every build; a visitor downloads one)
    tflite_verification: Any = None  # export.verify.Verification of model.tflite
    sha256: str = ""  # of model.onnx: names the page's offline cache
    warnings: tuple[str, ...] = ()  # as ExportResult's: what the folder lacks, and why
    int8_bytes: int = 0  # model-int8.tflite, 0 when not written
    int8_verification: Any = None  # export.tflite.Int8Verification of model-int8.tflite

    format = "web"
    dynamic_batch = False  # the page runs one image at a time
    precision = "fp32"
    layout = "NCHW"  # model.onnx; the .tflite files are NHWC

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


@dataclass(frozen=True)
class _Assets:
    """What the folder is made of besides the model: the page and the two browser runtimes."""

    page: Path
    index: str  # index.html, retargeted for a folder without a server
    ort: WebRuntime
    litert: LiteRtJs | None  # None: no .tflite files


@dataclass
class _Models:
    """The model files written into the staging folder and their checks."""

    seconds: float = 0.0
    opset: int = 0
    onnx: Any = None
    tflite: Any = None
    int8: Any = None
    warnings: list[str] = field(default_factory=list)


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


def web_plan(model: str, onnx: tuple[str, Path], *, tflite: tuple[str, Path] | None, int8: tuple[str, Path] | None,
             page: Path, ort: WebRuntime | None, litert: LiteRtJs | None, api: str = "") -> dict[str, Any]:
    """offline.json (:func:`~pocketcnn.runtime.web.offline_plan`) with the int8 ``.tflite`` file
    (URL relative to the page, file) when there is one beside an fp32 ``.tflite`` that LiteRT.js
    runs: listed under ``models`` as ``tflite_int8``, stored by the service worker like the
    other model files, and hashed into the cache's name (a new int8 file is a new cache)."""
    plan = offline_plan(model, onnx, tflite=tflite, page=page, ort=ort, litert=litert, api=api)
    if int8 is None or "litert" not in plan["runtimes"]:
        return plan
    url, path = int8
    entry = {"url": url, "bytes": path.stat().st_size, "sha256": sha256_file(path), "precision": "int8"}
    tag = hashlib.sha256(f"{plan['cache']}\n{entry['sha256']}".encode()).hexdigest()[:12]
    return {**plan, "cache": f"pocketcnn-{plan['sha256']}-{tag}", "models": {**plan["models"], INT8_KEY: entry},
            "cacheable": [*plan["cacheable"], url]}


def export_web(source: ModelSource, out_dir: str | Path, *, opset: int = 17, verify_n: int = 8,
               data_dir: str | Path | None = None, atol: float | None = None, runtime_dir: str | Path | None = None,
               litert_dir: str | Path | None = None, tflite: bool | None = None, int8: bool | None = None,
               int8_data: Int8Images | None = None, calib: Mapping[str, Any] | None = None,
               overwrite: bool = False) -> WebExportResult:
    """Write ``source`` as a static web folder ``out_dir`` (see the module docstring) and return what it holds.

    ``runtime_dir`` / ``litert_dir``: where ONNX Runtime Web's / LiteRT.js's files are
    (default: the package's, from ``pocketcnn web-runtime``). ``tflite``: write
    ``model.tflite`` for LiteRT.js (default: when the ``litert`` extra is installed; True
    without it is a MissingDependencyError). ``int8``: write ``model-int8.tflite`` (default:
    when images of the data set are here to calibrate on and it keeps top-1 within 2 points;
    True: always, or an error saying why not). ``int8_data``: the images to calibrate and
    score on (default: :func:`~pocketcnn.export.tflite.int8_images` of the source's data set
    from ``data_dir``, with ``calib``: its ``calib_data``, ``calib_samples`` and
    ``test_samples``, as ``export --format tflite --int8`` takes them). ``overwrite``: replace a
    folder that is not empty. OutputError, WebRuntimeError, ConfigError or ExportError (one
    line) before anything is left behind.
    """
    out = check_web_out(out_dir, overwrite=overwrite)
    assets, warnings = _assets(runtime_dir, litert_dir, tflite, int8)
    staging = _stage_folder(out)
    try:
        models = _write_models(source, staging, out, assets, opset=opset, verify_n=verify_n, data_dir=data_dir,
                               atol=atol, int8=int8, int8_data=int8_data, calib=dict(calib or {}))
        _write_page_files(staging, assets, source.name, source.input_size)
        plan = _write_plan(staging, source.name, assets)
        files = _seal(staging)
        _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _result(out, source, files, models, str(plan["sha256"]), (*warnings, *models.warnings))


def _assets(runtime_dir: str | Path | None, litert_dir: str | Path | None, tflite: bool | None,
            int8: bool | None) -> tuple[_Assets, list[str]]:
    """The page and the runtimes the folder needs, checked before any work; warnings for what it will lack."""
    warnings: list[str] = []
    ort = require_ort_web(runtime_dir)
    if tflite is None:
        tflite = litert_available()
        if not tflite:
            warnings.append("no model.tflite (LiteRT.js, the faster runtime in the browser): the litert extra is not "
                            "installed (pip install 'pocketcnn[litert]'); the page runs ONNX Runtime Web")
    if int8 and not tflite:
        raise ConfigError("int8=True writes model-int8.tflite beside model.tflite for LiteRT.js, received "
                          "tflite=False (or no litert extra)")
    litert = require_litert_js(litert_dir) if tflite else None
    page = packaged_page()
    if page is None:
        raise ExportError("the browser page is missing from this pocketcnn install (pocketcnn/web/); reinstall it")
    index = (page / "index.html").read_text(encoding="utf-8")
    if index.count(SERVED_BODY) != 1:
        raise ExportError(f"{page / 'index.html'}: its <body> tag is not {SERVED_BODY!r}; cannot retarget the page")
    return _Assets(page, index.replace(SERVED_BODY, STATIC_BODY), ort, litert), warnings


def _stage_folder(out: Path) -> Path:
    """An empty folder beside ``out`` that becomes ``out`` once everything in it is written and verified."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.pending-", dir=out.parent))


def _write_models(source: ModelSource, staging: Path, out: Path, assets: _Assets, *, opset: int, verify_n: int,
                  data_dir: str | Path | None, atol: float | None, int8: bool | None,
                  int8_data: Int8Images | None, calib: dict[str, Any]) -> _Models:
    """model.onnx, then model.tflite and model-int8.tflite for LiteRT.js, each verified; ExportError on a failure."""
    from .onnx import export_onnx, onnx_opset
    from .verify import ATOL, verification_inputs, verify_export

    atol = ATOL if atol is None else atol
    models = _Models()
    t0 = time.perf_counter()
    onnx_path = export_onnx(source.model, staging / MODEL_FILE, input_size=source.input_size, opset=opset,
                            dynamic_batch=False, metadata=source.metadata())
    models.seconds, models.opset = time.perf_counter() - t0, onnx_opset(onnx_path)
    inputs, desc = verification_inputs(source.data, source.input_size, verify_n, data_dir=data_dir)
    models.onnx = _verified(verify_export(onnx_path, source.model, inputs, atol=atol, inputs_desc=desc), out, atol)
    if assets.litert is None:
        return models
    from .tflite import export_tflite

    tflite_path = export_tflite(source.model, staging / TFLITE_FILE, input_size=source.input_size,
                                metadata=source.metadata())
    models.tflite = _verified(verify_export(tflite_path, source.model, inputs, atol=atol, inputs_desc=desc), out, atol)
    if int8 is not False:
        _write_int8(source, staging / INT8_FILE, models, required=bool(int8), images=int8_data, data_dir=data_dir,
                    calib=calib)
    return models


def _verified(check: Any, out: Path, atol: float) -> Any:
    """``check`` when it passed; else the ExportError that leaves nothing behind."""
    if not check.passed:
        raise ExportError(f"{out}: not written: {check.runtime} disagrees with PyTorch on {check.inputs}: max |logit "
                          f"diff| {check.max_abs_diff:.3g} (limit {atol:g}), top-1 agreement "
                          f"{100 * check.top1_agreement:.1f}%")
    return check


def _write_int8(source: ModelSource, path: Path, models: _Models, *, required: bool, images: Int8Images | None,
                data_dir: str | Path | None, calib: dict[str, Any]) -> None:
    """model-int8.tflite (float32 interface), calibrated and scored on real images; when not ``required``,
    a missing data set or a top-1 drop over the limit leaves it out with a warning instead."""
    from .tflite import export_tflite, int8_images, verify_int8

    try:
        images = images or int8_images(source.data, data_dir, **calib)
    except (ConfigError, DataError) as exc:
        if required:
            raise
        models.warnings.append(f"no {INT8_FILE} (the page runs fp32 only): {exc}")
        return
    export_tflite(source.model, path, input_size=source.input_size, metadata=source.metadata(),
                  calib_batches=images.batches(), calibration=images.calibration, interface="float32")
    check = verify_int8(path, source.model, images.test_x, images.test_y, inputs_desc=images.inputs,
                        calibration=images.calibration)
    if not check.passed:
        raise ExportError(f"{path.name}: LiteRT gave no finite logits of the right shape on {images.inputs}")
    if check.warning and not required:
        path.unlink()
        models.warnings.append(f"no {INT8_FILE} (the page runs fp32 only): {check.warning}")
        return
    if check.warning:
        models.warnings.append(f"{INT8_FILE}: {check.warning}")
    models.int8 = check


def _write_page_files(staging: Path, assets: _Assets, model: str, size: tuple[int, int, int]) -> None:
    """index.html, sw.js, the page's scripts, style and icons, both runtimes, README.txt and the web app manifest."""
    from .. import __version__

    page = assets.page
    (staging / "index.html").write_text(assets.index, encoding="utf-8")
    copies = [(page / name, f"static/{name}") for name in PAGE_FILES if name not in ("index.html", SERVICE_WORKER)]
    copies.append((page / SERVICE_WORKER, SERVICE_WORKER))  # its scope is the folder: at the top
    copies += [(page / name, f"static/{name}") for name in ICON_FILES]
    copies += [(assets.ort.path / name, f"static/ort/{name}") for name in (*ORT_WEB_FILES, MANIFEST)]
    if assets.litert is not None:
        copies += [(assets.litert.path / name, f"static/litert/{name}") for name in (*LITERT_FILES, LITERT_MANIFEST)]
    for src, rel in copies:
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, staging / rel)
    runtimes = " or ".join(r for r in (f"LiteRT.js {assets.litert.version}" if assets.litert else None,
                                       f"ONNX Runtime Web {assets.ort.version}") if r)
    (staging / "README.txt").write_text(README.format(
        model=model, runtimes=runtimes, version=__version__, input="x".join(map(str, size)),
        int8=INT8_README if (staging / INT8_FILE).is_file() else ""))
    (staging / WEB_MANIFEST).write_text(json.dumps(web_manifest(model), indent=2) + "\n")


def _write_plan(staging: Path, model: str, assets: _Assets) -> dict[str, Any]:
    """offline.json for the files in ``staging``: what the service worker stores, in a cache named by the model."""
    def beside(name: str) -> tuple[str, Path] | None:
        return (name, staging / name) if (staging / name).is_file() else None

    plan = web_plan(model, (MODEL_FILE, staging / MODEL_FILE), tflite=beside(TFLITE_FILE), int8=beside(INT8_FILE),
                    page=assets.page, ort=assets.ort, litert=assets.litert)
    (staging / OFFLINE_PLAN).write_text(json.dumps(plan, indent=2) + "\n")
    return plan


def _seal(staging: Path) -> dict[str, int]:
    """Every file's size by its path in the folder; the folder made readable by a web server (0755 / 0644)."""
    for p in staging.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    os.chmod(staging, 0o755)
    return {p.relative_to(staging).as_posix(): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()}


def _result(out: Path, source: ModelSource, files: dict[str, int], models: _Models, sha256: str,
            warnings: tuple[str, ...]) -> WebExportResult:
    runtime_bytes = sum(v for k, v in files.items() if k.startswith("static/ort/"))
    litert_bytes = sum(v for k, v in files.items() if k.startswith("static/litert/"))
    page_bytes = sum(v for k, v in files.items() if k in ("index.html", SERVICE_WORKER, WEB_MANIFEST)
                     or k.startswith("static/") and (k.count("/") == 1 or k.startswith("static/icons/")))
    return WebExportResult(out, source.name, files, files[MODEL_FILE], runtime_bytes, page_bytes, source.input_size,
                           models.opset, models.seconds, models.onnx, files.get(TFLITE_FILE, 0), litert_bytes,
                           models.tflite, sha256, warnings, files.get(INT8_FILE, 0), models.int8)


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
