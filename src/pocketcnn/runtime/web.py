"""The browser runtime's files: the page (``pocketcnn/web/``), the pinned ONNX Runtime Web and LiteRT.js.

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

LiteRT.js (``@litertjs/core`` and ``@litertjs/wasm-utils``, pinned and checked the same way,
:func:`fetch_litert_js`) goes into ``pocketcnn/web/litert/``: ``core/index.js`` (the API, an
ES module that imports the bare name ``@litertjs/wasm-utils``; the page's import map points
it at ``wasm-utils/index.js``) and ``core/wasm/`` with three of its four WebAssembly builds:
threaded (relaxed SIMD and threads, for a cross-origin isolated page), plain (relaxed SIMD)
and compat (neither). ``loadLiteRt`` picks one; a visitor downloads only that one.

Both runtimes are fetched by one flow, driven by their :class:`NpmPackage` records (name, pinned
version and integrity, which files to keep and where): :data:`ORT_WEB_NPM` and :data:`LITERT_NPM`.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import ConfigError, MissingDependencyError, OutputError, PocketCNNError, first_line
from ..fileio import file_digest, sha256_file

ORT_WEB_PACKAGE = "onnxruntime-web"
ORT_WEB_VERSION = "1.31.1"
# ``npm view onnxruntime-web@1.31.1 dist.integrity``: the tarball's sha512
ORT_WEB_INTEGRITY = "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw=="
ORT_WEB_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
MANIFEST = "onnxruntime-web.json"
PAGE_FILES = ("index.html", "app.js", "preprocess.js", "style.css", "sw.js")
ICON_FILES = ("icons/icon-192.png", "icons/icon-512.png", "icons/icon-maskable-512.png")

LITERT_VERSION = "2.5.3"
# ``npm view @litertjs/core@2.5.3 dist.integrity`` and the same for @litertjs/wasm-utils
LITERT_PACKAGES = {
    "@litertjs/core": "sha512-PlGmbMOq9WitX7FO0jhbdJw9GthatsyuCQXjTt/wJZo0FLaw48q4tz8IwqgqCIkviYGr9OFDL1kCnN4nzWoyJQ==",
    "@litertjs/wasm-utils":
        "sha512-4fJiw6tBQnIs+0jH/OQ16nYOiSl8/+zZnn5h2ul8aTKHi05sVqZW580Tmk78pC2kT39A9OYBVdFawteZ/sI1kQ==",
}
_BUILDS = ("litert_wasm_threaded_internal", "litert_wasm_internal", "litert_wasm_compat_internal")
# tarball member -> path in the runtime folder, per package
LITERT_MEMBERS = {
    "@litertjs/core": {"package/dist/index.js": "core/index.js",
                       **{f"package/wasm/{b}.{x}": f"core/wasm/{b}.{x}" for b in _BUILDS for x in ("js", "wasm")}},
    "@litertjs/wasm-utils": {"package/dist/index.js": "wasm-utils/index.js"},
}
LITERT_FILES = tuple(f for members in LITERT_MEMBERS.values() for f in members.values())
LITERT_MANIFEST = "litert.json"
# what a visitor downloads: the API, and the build its browser gets
LITERT_COMMON = ("core/index.js", "wasm-utils/index.js")


@dataclass(frozen=True)
class NpmPackage:
    """One pinned npm package of a browser runtime: ``integrity`` is npm's sha512 of the ``version``
    tarball (checked whenever that version is fetched); ``files`` says which tarball members to keep
    and where (member -> path in the runtime's folder)."""

    name: str
    version: str
    integrity: str
    files: Mapping[str, str]


ORT_WEB_NPM = (NpmPackage(ORT_WEB_PACKAGE, ORT_WEB_VERSION, ORT_WEB_INTEGRITY,
                          {f"package/dist/{name}": name for name in ORT_WEB_FILES}),)
LITERT_NPM = tuple(NpmPackage(name, LITERT_VERSION, integrity, LITERT_MEMBERS[name])
                   for name, integrity in LITERT_PACKAGES.items())
_Found = TypeVar("_Found")


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


def litert_dir() -> Path:
    """Where :func:`fetch_litert_js` puts LiteRT.js by default: ``pocketcnn/web/litert/``."""
    return page_dir() / "litert"


def find_ort_web(path: str | Path | None = None, *, version: str | None = None) -> WebRuntime | None:
    """The runtime in ``path`` (default :func:`ort_dir`) when its manifest names ``version``
    (default: the pinned one) and every file is there with the size the manifest records; else None."""
    folder = Path(path) if path is not None else ort_dir()
    return _read_manifest(folder / MANIFEST, ORT_WEB_FILES, version or ORT_WEB_VERSION,
                          lambda manifest, files: WebRuntime(folder, str(manifest["version"]),
                                                             str(manifest.get("integrity", "")), files))


def _read_manifest(manifest_path: Path, names: Sequence[str], version: str,
                   make: Callable[[dict, dict[str, int]], _Found]) -> _Found | None:
    """``make(manifest, sizes)`` when the runtime manifest at ``manifest_path`` names ``version`` and each
    of ``names`` is in its folder with the size the manifest records; else (anything unreadable too) None."""
    folder = manifest_path.parent
    try:
        manifest = json.loads(manifest_path.read_text())
        files = {name: int(manifest["files"][name]["bytes"]) for name in names}
        if manifest.get("version") != version:
            return None
        if any(not (folder / n).is_file() or (folder / n).stat().st_size != size for n, size in files.items()):
            return None
        return make(manifest, files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def require_ort_web(path: str | Path | None = None) -> WebRuntime:
    """:func:`find_ort_web`, or a one-line WebRuntimeError saying how to get the files."""
    return _required(find_ort_web(path), path, ort_dir, f"{ORT_WEB_PACKAGE} {ORT_WEB_VERSION} files (the browser runtime)")


def _required(found: _Found | None, path: str | Path | None, default_dir: Callable[[], Path], what: str) -> _Found:
    """``found``, or a one-line WebRuntimeError: no ``what`` in ``path`` (default ``default_dir()``), and how to get them."""
    if found is None:
        folder = Path(path) if path is not None else default_dir()
        raise WebRuntimeError(f"{folder}: no {what}; fetch them with 'pocketcnn web-runtime' "
                              "(needs npm and the npm registry)")
    return found


@dataclass(frozen=True)
class LiteRtJs:
    """LiteRT.js files in a folder: ``files`` maps each relative path to its size in bytes."""

    path: Path
    version: str
    integrity: dict[str, str]
    files: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    def build_bytes(self, build: str) -> int:
        """What a visitor downloads with ``build`` (``threaded``, ``plain`` or ``compat``): API + loader + wasm."""
        stem = {"threaded": _BUILDS[0], "plain": _BUILDS[1], "compat": _BUILDS[2]}[build]
        names = (*LITERT_COMMON, f"core/wasm/{stem}.js", f"core/wasm/{stem}.wasm")
        return sum(self.files[n] for n in names)

    def to_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "package": "@litertjs/core", "version": self.version,
                "integrity": dict(self.integrity), "files": dict(self.files), "total_bytes": self.total_bytes}


def find_litert_js(path: str | Path | None = None, *, version: str | None = None) -> LiteRtJs | None:
    """LiteRT.js in ``path`` (default :func:`litert_dir`) when its manifest names ``version`` (default:
    the pinned one) and every file is there with the recorded size; else None."""
    folder = Path(path) if path is not None else litert_dir()
    return _read_manifest(folder / LITERT_MANIFEST, LITERT_FILES, version or LITERT_VERSION,
                          lambda manifest, files: LiteRtJs(folder, str(manifest["version"]),
                                                           dict(manifest.get("integrity", {})), files))


def require_litert_js(path: str | Path | None = None) -> LiteRtJs:
    """:func:`find_litert_js`, or a one-line WebRuntimeError saying how to get the files."""
    return _required(find_litert_js(path), path, litert_dir,
                     f"LiteRT.js {LITERT_VERSION} files (@litertjs/core, the browser's LiteRT runtime)")


def sri_sha512(path: str | Path) -> str:
    """The ``sha512-<base64>`` integrity string npm records for a tarball."""
    return "sha512-" + base64.b64encode(file_digest(path, "sha512").digest()).decode()


def _tarball_name(package: str) -> str:
    """The file name ``npm pack`` gives a package's tarball, without the version: ``litertjs-core``."""
    return package.lstrip("@").replace("/", "-")


def _npm_pack(version: str, workdir: Path, npm: str, timeout_s: float, package: str) -> Path:
    exe = shutil.which(npm)
    if exe is None:
        raise MissingDependencyError(f"{npm!r} not found: install Node.js with npm, or download "
                                     f"{_tarball_name(package)}-{version}.tgz elsewhere and pass it as tarball "
                                     "(--tarball)")
    cmd = [exe, "pack", f"{package}@{version}", "--json", "--pack-destination", str(workdir)]
    try:
        done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise WebRuntimeError(f"'npm pack {package}@{version}' did not finish in {timeout_s:.0f} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise WebRuntimeError(f"'npm pack {package}@{version}' failed: {reason}")
    try:
        name = json.loads(done.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError):
        found = sorted(workdir.glob(f"{_tarball_name(package)}-*.tgz"))
        if not found:
            raise WebRuntimeError(f"'npm pack' wrote no {package} tarball into {workdir}") from None
        return found[0]
    return workdir / Path(name).name


def tarball_package(tarball: str | Path) -> tuple[str, str]:
    """``(name, version)`` from an npm tarball's ``package/package.json``."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            member = tar.getmember("package/package.json")
            package = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
        return str(package["name"]), str(package["version"])
    except (OSError, tarfile.TarError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WebRuntimeError(f"{tarball}: not a readable npm tarball ({first_line(exc)})") from None


def _extract_members(tarball: Path, members: Mapping[str, str], staging: Path) -> dict[str, object]:
    """Copy each tarball member of ``members`` to ``staging / members[name]``; return package.json."""
    package: dict[str, object] = {}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                if member.name == "package/package.json" and member.isfile():
                    package = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                elif member.name in members and member.isfile():
                    target = staging / members[member.name]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(target, "wb") as dst:  # type: ignore[union-attr]
                        shutil.copyfileobj(src, dst)
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise WebRuntimeError(f"{tarball}: not a readable npm tarball ({first_line(exc)})") from None
    missing = [m.removeprefix("package/") for m, rel in members.items() if not (staging / rel).is_file()]
    if missing:
        raise WebRuntimeError(f"{tarball}: has no {', '.join(missing)}")
    return package


def _check_version(version: str, pinned: str) -> None:
    """Refuse what cannot be an npm version (``pinned``: the example the message gives)."""
    if not isinstance(version, str) or not version or any(c in version for c in " /\\@"):
        raise ConfigError(f"version must be an npm version such as {pinned!r}, received version={version!r}")


def fetch_ort_web(dest: str | Path | None = None, *, version: str = ORT_WEB_VERSION, tarball: str | Path | None = None,
                  npm: str = "npm", force: bool = False, timeout_s: float = 600.0) -> WebRuntime:
    """Put ONNX Runtime Web ``version`` into ``dest`` (default :func:`ort_dir`) and return it.

    ``tarball``: an ``onnxruntime-web-<version>.tgz`` already on disk (for machines without
    npm or network); else ``npm pack`` downloads it from the configured npm registry into a
    temporary folder. The pinned version's tarball must match :data:`ORT_WEB_INTEGRITY`.
    Files already there with the right manifest are kept unless ``force``. The folder is
    replaced as a whole (staged beside it, then renamed), so it is never half written.
    """
    _check_version(version, ORT_WEB_VERSION)
    dest = Path(dest) if dest is not None else ort_dir()
    given = {ORT_WEB_PACKAGE: Path(tarball)} if tarball is not None else {}
    return _fetch_npm(dest, ORT_WEB_NPM, MANIFEST, find_ort_web,
                      version=version, given=given, npm=npm, force=force, timeout_s=timeout_s)


def fetch_litert_js(dest: str | Path | None = None, *, version: str = LITERT_VERSION,
                    tarballs: Sequence[str | Path] = (), npm: str = "npm", force: bool = False,
                    timeout_s: float = 600.0) -> LiteRtJs:
    """Put LiteRT.js ``version`` (``@litertjs/core`` and ``@litertjs/wasm-utils``) into ``dest``
    (default :func:`litert_dir`) and return it.

    ``tarballs``: npm tarballs already on disk (recognised by their package.json); a package
    without one is fetched with ``npm pack``. The pinned version's tarballs must match
    :data:`LITERT_PACKAGES`' integrity. Kept when already there (unless ``force``); the folder
    is replaced as a whole, never half written.
    """
    _check_version(version, LITERT_VERSION)
    dest = Path(dest) if dest is not None else litert_dir()
    named = ((tarball_package(t)[0], Path(t)) for t in tarballs)
    given = {name: path for name, path in named if name in LITERT_PACKAGES}
    return _fetch_npm(dest, LITERT_NPM, LITERT_MANIFEST, find_litert_js,
                      version=version, given=given, npm=npm, force=force, timeout_s=timeout_s)


def _fetch_npm(dest: Path, packages: Sequence[NpmPackage], manifest: str, find: Callable[..., _Found | None], *,
               version: str, given: Mapping[str, Path], npm: str, force: bool, timeout_s: float) -> _Found:
    """Put ``packages`` at ``version`` into ``dest`` with the manifest file ``manifest``; return what
    ``find(dest, version=version)`` finds there.

    What ``find`` finds is kept unless ``force`` or tarballs are ``given`` (package name -> tarball);
    else each package's tarball (given, or from ``npm pack`` into a temporary folder) is checked
    against the package's pinned integrity (when ``version`` is the pinned one) and its ``files`` are
    copied into a staging folder beside ``dest``, which then replaces ``dest`` as a whole.
    """
    if not force and not given:
        found = find(dest, version=version)
        if found is not None:
            return found
    staging = _staging_dir(dest)
    try:
        integrity: dict[str, str] = {}
        licenses: dict[str, object] = {}
        with tempfile.TemporaryDirectory(prefix="pocketcnn-npm-") as work:
            for package in packages:
                path = given.get(package.name) or _npm_pack(version, Path(work), npm, timeout_s, package.name)
                integrity[package.name], licenses[package.name] = _unpack(package, version, path, staging)
        record = _manifest_record(packages, version, integrity, licenses, staging)
        (staging / manifest).write_text(json.dumps(record, indent=2) + "\n")
        _swap_in(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    found = find(dest, version=version)
    if found is None:  # pragma: no cover - only a concurrent writer gets here
        raise WebRuntimeError(f"{dest}: the runtime files changed while they were written")
    return found


def _staging_dir(dest: Path) -> Path:
    """A new empty folder beside ``dest`` (which must be a folder or nothing yet) to write the runtime into."""
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"{dest}: is a file; the runtime goes into a folder")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    except OSError as exc:
        raise OutputError(f"{dest}: cannot write the browser runtime there ({exc.strerror or exc}); "
                          "pass another folder (--dest)") from None


def _unpack(package: NpmPackage, version: str, tarball: Path, staging: Path) -> tuple[str, object]:
    """Check ``tarball`` (its integrity when ``version`` is the pinned one, then its package.json's name
    and version) and copy the package's files into ``staging``; return (integrity, license)."""
    if not tarball.is_file():
        raise WebRuntimeError(f"{tarball}: no such tarball")
    integrity = sri_sha512(tarball)
    if version == package.version and integrity != package.integrity:
        raise WebRuntimeError(f"{tarball}: sha512 integrity {integrity[:24]}... is not the pinned "
                              f"{package.name} {version} one ({package.integrity[:24]}...)")
    meta = _extract_members(tarball, package.files, staging)
    if meta.get("name") != package.name or meta.get("version") != version:
        raise WebRuntimeError(f"{tarball}: holds {meta.get('name')} {meta.get('version')!r}, "
                              f"not the requested {package.name} {version}")
    return integrity, meta.get("license")


def _manifest_record(packages: Sequence[NpmPackage], version: str, integrity: dict[str, str],
                     licenses: dict[str, object], folder: Path) -> dict[str, object]:
    """The manifest written beside the runtime's files in ``folder``. A runtime of one package
    (onnxruntime-web) records its integrity and license as strings; of several (LiteRT.js), by package."""
    one = packages[0].name if len(packages) == 1 else None
    names = [n for package in packages for n in package.files.values()]
    return {"package": packages[0].name, "version": version,
            "integrity": integrity[one] if one else integrity, "license": licenses[one] if one else licenses,
            "source": " ".join(f"npm pack {p.name}@{version}" for p in packages),
            "files": {n: {"bytes": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)} for n in names}}


def _swap_in(staging: Path, dest: Path) -> None:
    """Make the staged files world-readable and rename ``staging`` over ``dest`` (the old folder is removed)."""
    for p in staging.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    os.chmod(staging, 0o755)
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------ both runtimes of one folder (web-runtime)
class TarballError(WebRuntimeError):
    """A tarball given for the runtimes that holds none of their npm packages: a refused command line."""

    exit_code = 2


@dataclass(frozen=True)
class BrowserRuntimes:
    """The page's two runtimes: where each goes, and what is there (None: missing)."""

    ort_path: Path
    litert_path: Path
    ort: WebRuntime | None
    litert: LiteRtJs | None

    @property
    def present(self) -> bool:
        return self.ort is not None and self.litert is not None

    def to_dict(self, *, status: bool = False) -> dict[str, object]:
        """Each runtime's record (a missing one: its path); ``status``: also whether each is there and
        the pinned version (what ``pocketcnn web-runtime --check --json`` prints)."""
        out: dict[str, object] = {"present": self.present} if status else {}
        for key, found, path, version in (("onnxruntime-web", self.ort, self.ort_path, ORT_WEB_VERSION),
                                          ("litert.js", self.litert, self.litert_path, LITERT_VERSION)):
            record = found.to_dict() if found else {"path": str(path)}
            out[key] = {"present": found is not None, "version": version, **record} if status else record
        return out


def _runtime_dirs(dest: str | Path | None) -> tuple[Path, Path]:
    return (Path(dest) / "ort", Path(dest) / "litert") if dest else (ort_dir(), litert_dir())


def find_web_runtimes(dest: str | Path | None = None) -> BrowserRuntimes:
    """What is in ``dest``/ort and ``dest``/litert (default: :func:`ort_dir` and :func:`litert_dir`)."""
    ort_path, litert_path = _runtime_dirs(dest)
    return BrowserRuntimes(ort_path, litert_path, find_ort_web(ort_path), find_litert_js(litert_path))


def fetch_web_runtimes(dest: str | Path | None = None, *, tarballs: Sequence[str | Path] = (), force: bool = False,
                       npm: str = "npm", timeout_s: float = 600.0) -> BrowserRuntimes:
    """:func:`fetch_ort_web` into ``dest``/ort and :func:`fetch_litert_js` into ``dest``/litert (default:
    the packaged page's folders). ``tarballs``: npm tarballs on disk, each given to its runtime by its
    package.json; one that holds neither runtime's package is a :class:`TarballError`, before any fetch."""
    ort_path, litert_path = _runtime_dirs(dest)
    ort_tarball: str | Path | None = None
    litert_tarballs: list[str | Path] = []
    for t in tarballs:
        name, _ = tarball_package(t)
        if name == ORT_WEB_PACKAGE:
            ort_tarball = t
        elif name in LITERT_PACKAGES:
            litert_tarballs.append(t)
        else:
            raise TarballError(f"Invalid value for '--tarball': {t} holds npm package {name!r}, not "
                               f"{ORT_WEB_PACKAGE} or one of {', '.join(LITERT_PACKAGES)}")
    ort = fetch_ort_web(ort_path, tarball=ort_tarball, npm=npm, force=force, timeout_s=timeout_s)
    litert = fetch_litert_js(litert_path, tarballs=litert_tarballs, npm=npm, force=force, timeout_s=timeout_s)
    return BrowserRuntimes(ort_path, litert_path, ort, litert)


# ------------------------------------------------------------------ the installable, offline page
OFFLINE_PLAN = "offline.json"  # what the service worker stores, and the cache it stores it in
WEB_MANIFEST = "manifest.webmanifest"
SERVICE_WORKER = "sw.js"
THEME_COLOR = "#0969da"


def web_manifest(model: str) -> dict[str, object]:
    """The web app manifest of the page serving ``model``: what a phone installs."""
    return {
        "name": f"pocketcnn: {model}",
        "short_name": model[:12] or "pocketcnn",
        "description": f"Classify photos with {model}, on the server or on this device (works offline).",
        "id": "./",
        "start_url": "./",
        "scope": "./",
        "display": "standalone",
        "orientation": "portrait",
        "background_color": "#f6f8fa",
        "theme_color": THEME_COLOR,
        "icons": [
            {"src": "static/icons/icon-192.png", "sizes": "192x192", "type": "image/png", "purpose": "any"},
            {"src": "static/icons/icon-512.png", "sizes": "512x512", "type": "image/png", "purpose": "any"},
            {"src": "static/icons/icon-maskable-512.png", "sizes": "512x512", "type": "image/png", "purpose": "maskable"},
        ],
    }


def offline_plan(model: str, onnx: tuple[str, Path], *, tflite: tuple[str, Path] | None, page: Path,
                 ort: WebRuntime | None, litert: LiteRtJs | None, ort_url: str = "static/ort/",
                 litert_url: str = "static/litert/", api: str = "") -> dict[str, object]:
    """What the service worker stores: the record behind ``offline.json``.

    ``onnx`` / ``tflite``: (URL relative to the page, file). The cache is named by the ONNX
    file's SHA-256 (the model) and a short hash of everything else the page runs (the
    ``.tflite``, the page's files, the runtimes' versions), so a new model, or a new page,
    is a new cache that replaces the old one. ``precache``: stored when the worker installs
    (the page itself, with ``./`` for the document); ``cacheable``: URLs (a trailing ``/``:
    every URL under it) stored when the page first fetches them through the worker.
    """
    models: dict[str, dict[str, object]] = {}
    for kind, entry in (("onnx", onnx), ("tflite", tflite)):
        if entry is not None:
            url, path = entry
            models[kind] = {"url": url, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    parts = [str(models.get("tflite", {}).get("sha256", "-")), ort.version if ort else "-",
             litert.version if litert else "-"]
    parts += [sha256_file(page / name) for name in PAGE_FILES if (page / name).is_file()]
    tag = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    sha = str(models["onnx"]["sha256"])
    runtimes: dict[str, dict[str, object]] = {}
    if litert is not None and "tflite" in models:
        runtimes["litert"] = {"url": litert_url, "version": litert.version, "package": "@litertjs/core",
                              "bytes": {b: litert.build_bytes(b) for b in ("threaded", "plain", "compat")}}
    if ort is not None:
        runtimes["ort"] = {"url": ort_url, "version": ort.version, "package": ORT_WEB_PACKAGE,
                           "bytes": ort.total_bytes}
    precache = ["./", "static/app.js", "static/preprocess.js", "static/style.css", WEB_MANIFEST,
                *(f"static/{name}" for name in ICON_FILES if (page / name).is_file())]
    return {
        "model": model, "sha256": sha, "cache": f"pocketcnn-{sha}-{tag}", "api": api,
        "models": models, "runtimes": runtimes,
        # the fastest runtime here, measured (benchmarks/browser_latency.py): LiteRT.js where it can run
        "preferred": "litert" if "litert" in runtimes else "ort" if "ort" in runtimes else None,
        "precache": precache,
        "cacheable": ["static/", *(str(m["url"]) for m in models.values())],
    }
