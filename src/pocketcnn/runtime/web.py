"""The browser runtime's files: the page (``pocketcnn/web/``) and the pinned ONNX Runtime Web.

The page (``index.html``, ``app.js``, ``preprocess.js``, ``style.css``) is part of the
package. ONNX Runtime Web is not: its WebAssembly build is about 15 MB, so the repository
never holds it. :func:`fetch_ort_web` gets the pinned npm package with ``npm pack`` (no
``package.json``, no ``node_modules``), checks the tarball against the pinned sha512
integrity, and copies the three files the page loads, with a manifest, into
``pocketcnn/web/ort/`` (ignored by git; served by ``pocketcnn serve`` at ``/static/ort/``
and copied by ``pocketcnn export --format web``).

Only the wasm build is taken: ``ort.wasm.min.js`` (the API), ``ort-wasm-simd-threaded.mjs``
(the Emscripten loader, also the worker script of the threads) and
``ort-wasm-simd-threaded.wasm``. The default ``ort.min.js`` would also want the WebGPU/JSEP
files. Torch-free, standard library only.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, MissingDependencyError, OutputError, PocketCNNError, first_line

ORT_WEB_PACKAGE = "onnxruntime-web"
ORT_WEB_VERSION = "1.31.1"
# ``npm view onnxruntime-web@1.31.1 dist.integrity``: the tarball's sha512
ORT_WEB_INTEGRITY = "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw=="
ORT_WEB_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
MANIFEST = "onnxruntime-web.json"
PAGE_FILES = ("index.html", "app.js", "preprocess.js", "style.css")


class WebRuntimeError(PocketCNNError):
    """The browser runtime's files are missing or could not be fetched."""


@dataclass(frozen=True)
class WebRuntime:
    """ONNX Runtime Web files in a folder: ``files`` maps each name to its size in bytes."""

    path: Path
    version: str
    integrity: str
    files: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    def to_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "package": ORT_WEB_PACKAGE, "version": self.version,
                "integrity": self.integrity, "files": dict(self.files), "total_bytes": self.total_bytes}


def page_dir() -> Path:
    """The packaged page: ``pocketcnn/web/`` (what ``pocketcnn serve`` serves by default)."""
    return Path(__file__).resolve().parents[1] / "web"


def packaged_page() -> Path | None:
    """:func:`page_dir` when it holds the page (an install built without its package data does not)."""
    folder = page_dir()
    return folder if all((folder / name).is_file() for name in PAGE_FILES) else None


def ort_dir() -> Path:
    """Where :func:`fetch_ort_web` puts ONNX Runtime Web by default: ``pocketcnn/web/ort/``."""
    return page_dir() / "ort"


def find_ort_web(path: str | Path | None = None, *, version: str | None = None) -> WebRuntime | None:
    """The runtime in ``path`` (default :func:`ort_dir`) when its manifest names ``version``
    (default: the pinned one) and every file is there with the size the manifest records; else None."""
    folder = Path(path) if path is not None else ort_dir()
    version = version or ORT_WEB_VERSION
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = {name: int(manifest["files"][name]["bytes"]) for name in ORT_WEB_FILES}
        if manifest.get("version") != version:
            return None
        if any(not (folder / n).is_file() or (folder / n).stat().st_size != size for n, size in files.items()):
            return None
        return WebRuntime(folder, str(manifest["version"]), str(manifest.get("integrity", "")), files)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def require_ort_web(path: str | Path | None = None) -> WebRuntime:
    """:func:`find_ort_web`, or a one-line WebRuntimeError saying how to get the files."""
    found = find_ort_web(path)
    if found is None:
        folder = Path(path) if path is not None else ort_dir()
        raise WebRuntimeError(f"{folder}: no {ORT_WEB_PACKAGE} {ORT_WEB_VERSION} files (the browser runtime); "
                              "fetch them with 'pocketcnn web-runtime' (needs npm and the npm registry)")
    return found


def sri_sha512(path: str | Path) -> str:
    """The ``sha512-<base64>`` integrity string npm records for a tarball."""
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def _npm_pack(version: str, workdir: Path, npm: str, timeout_s: float) -> Path:
    exe = shutil.which(npm)
    if exe is None:
        raise MissingDependencyError(f"{npm!r} not found: install Node.js with npm, or download "
                                     f"{ORT_WEB_PACKAGE}-{version}.tgz elsewhere and pass it as tarball (--tarball)")
    cmd = [exe, "pack", f"{ORT_WEB_PACKAGE}@{version}", "--json", "--pack-destination", str(workdir)]
    try:
        done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise WebRuntimeError(f"'npm pack {ORT_WEB_PACKAGE}@{version}' did not finish in {timeout_s:.0f} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise WebRuntimeError(f"'npm pack {ORT_WEB_PACKAGE}@{version}' failed: {reason}")
    try:
        name = json.loads(done.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError):
        found = sorted(workdir.glob(f"{ORT_WEB_PACKAGE}-*.tgz"))
        if not found:
            raise WebRuntimeError(f"'npm pack' wrote no {ORT_WEB_PACKAGE} tarball into {workdir}") from None
        return found[0]
    return workdir / Path(name).name


def _extract(tarball: Path, staging: Path) -> dict[str, object]:
    """Copy ``package/dist/<file>`` for each of :data:`ORT_WEB_FILES` into ``staging``; return package.json."""
    wanted = {f"package/dist/{name}": name for name in ORT_WEB_FILES}
    package: dict[str, object] = {}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                if member.name == "package/package.json" and member.isfile():
                    package = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                elif member.name in wanted and member.isfile():
                    with tar.extractfile(member) as src, open(staging / wanted[member.name], "wb") as dst:  # type: ignore[union-attr]
                        shutil.copyfileobj(src, dst)
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise WebRuntimeError(f"{tarball}: not a readable npm tarball ({first_line(exc)})") from None
    missing = [n for n in ORT_WEB_FILES if not (staging / n).is_file()]
    if missing:
        raise WebRuntimeError(f"{tarball}: has no {', '.join('dist/' + n for n in missing)}")
    return package


def fetch_ort_web(dest: str | Path | None = None, *, version: str = ORT_WEB_VERSION, tarball: str | Path | None = None,
                  npm: str = "npm", force: bool = False, timeout_s: float = 600.0) -> WebRuntime:
    """Put ONNX Runtime Web ``version`` into ``dest`` (default :func:`ort_dir`) and return it.

    ``tarball``: an ``onnxruntime-web-<version>.tgz`` already on disk (for machines without
    npm or network); else ``npm pack`` downloads it from the configured npm registry into a
    temporary folder. The pinned version's tarball must match :data:`ORT_WEB_INTEGRITY`.
    Files already there with the right manifest are kept unless ``force``. The folder is
    replaced as a whole (staged beside it, then renamed), so it is never half written.
    """
    if not isinstance(version, str) or not version or any(c in version for c in " /\\@"):
        raise ConfigError(f"version must be an npm version such as {ORT_WEB_VERSION!r}, received version={version!r}")
    dest = Path(dest) if dest is not None else ort_dir()
    if not force and tarball is None:
        found = find_ort_web(dest, version=version)
        if found is not None:
            return found
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"{dest}: is a file; the runtime goes into a folder")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    except OSError as exc:
        raise OutputError(f"{dest}: cannot write the browser runtime there ({exc.strerror or exc}); "
                          "pass another folder (--dest)") from None
    try:
        with tempfile.TemporaryDirectory(prefix="pocketcnn-npm-") as work:
            path = Path(tarball) if tarball is not None else _npm_pack(version, Path(work), npm, timeout_s)
            if not path.is_file():
                raise WebRuntimeError(f"{path}: no such tarball")
            integrity = sri_sha512(path)
            if version == ORT_WEB_VERSION and integrity != ORT_WEB_INTEGRITY:
                raise WebRuntimeError(f"{path}: sha512 integrity {integrity[:24]}... is not the pinned "
                                      f"{ORT_WEB_PACKAGE} {version} one ({ORT_WEB_INTEGRITY[:24]}...)")
            package = _extract(path, staging)
        if package.get("version") != version:
            raise WebRuntimeError(f"{path}: holds {ORT_WEB_PACKAGE} {package.get('version')!r}, "
                                  f"not the requested {version}")
        files = {n: {"bytes": (staging / n).stat().st_size,
                     "sha256": hashlib.sha256((staging / n).read_bytes()).hexdigest()} for n in ORT_WEB_FILES}
        manifest = {"package": ORT_WEB_PACKAGE, "version": version, "integrity": integrity,
                    "license": package.get("license"), "source": f"npm pack {ORT_WEB_PACKAGE}@{version}",
                    "files": files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for p in staging.iterdir():
            os.chmod(p, 0o644)
        os.chmod(staging, 0o755)
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if dest.exists():
            os.replace(dest, old)
        os.replace(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    found = find_ort_web(dest, version=version)
    if found is None:  # pragma: no cover - only a concurrent writer gets here
        raise WebRuntimeError(f"{dest}: the runtime files changed while they were written")
    return found
