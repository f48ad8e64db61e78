"""The browser side without a browser: fetching ONNX Runtime Web and LiteRT.js (fake tarballs, no
network), ``export_web``'s folder and refusals, the server's isolation headers and page routes
(model.tflite, offline.json, the web app manifest and its icons, sw.js), the ``web-runtime``
command, and the page's JavaScript resize and image-header reading under node against Pillow."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pocketcnn.errors import OutputError
from pocketcnn.runtime import web
from pocketcnn.runtime.web import WebRuntimeError, fetch_ort_web, find_ort_web

FAKE_VERSION = "0.0.1-test"


def fake_tarball(path: Path, version: str = FAKE_VERSION, skip: str | None = None, name: str = "onnxruntime-web") -> Path:
    """An npm tarball shaped like onnxruntime-web's, with small stand-in files."""
    with tarfile.open(path, "w:gz") as tar:
        members = {"package/package.json": json.dumps({"name": name, "version": version,
                                                       "license": "MIT"}).encode(),
                   "package/dist/ort.min.js": b"// not taken"}
        members.update({f"package/dist/{n}": f"// {n}".encode() * 10 for n in web.ORT_WEB_FILES if n != skip})
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_runtime(tmp_path, monkeypatch) -> Path:
    """A runtime folder from a fake tarball, accepted as the pinned version."""
    dest = tmp_path / "ort"
    fetch_ort_web(dest, version=FAKE_VERSION, tarball=fake_tarball(tmp_path / "ort.tgz"))
    monkeypatch.setattr(web, "ORT_WEB_VERSION", FAKE_VERSION)
    return dest


def test_fetch_from_tarball_writes_the_files_and_a_manifest(tmp_path):
    tgz = fake_tarball(tmp_path / "onnxruntime-web.tgz")
    dest = tmp_path / "ort"
    got = fetch_ort_web(dest, version=FAKE_VERSION, tarball=tgz)
    assert sorted(p.name for p in dest.iterdir()) == sorted([*web.ORT_WEB_FILES, web.MANIFEST])
    manifest = json.loads((dest / web.MANIFEST).read_text())
    assert manifest["version"] == FAKE_VERSION and manifest["license"] == "MIT"
    assert manifest["integrity"] == web.sri_sha512(tgz)
    assert got.files == {n: (dest / n).stat().st_size for n in web.ORT_WEB_FILES}
    assert find_ort_web(dest, version=FAKE_VERSION) == got
    assert find_ort_web(dest) is None  # not the pinned version
    (dest / web.ORT_WEB_FILES[0]).write_text("changed size")
    assert find_ort_web(dest, version=FAKE_VERSION) is None
    again = fetch_ort_web(dest, version=FAKE_VERSION, tarball=tgz)  # replaces the folder as a whole
    assert find_ort_web(dest, version=FAKE_VERSION) == again
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ort.")]  # no staging folder left


def test_fetch_refuses_bad_tarballs(tmp_path):
    with pytest.raises(WebRuntimeError, match="is not the pinned onnxruntime-web"):
        fetch_ort_web(tmp_path / "a", tarball=fake_tarball(tmp_path / "x.tgz"))  # the pinned version's hash
    with pytest.raises(WebRuntimeError, match="has no dist/ort-wasm-simd-threaded.wasm"):
        fetch_ort_web(tmp_path / "b", version=FAKE_VERSION,
                      tarball=fake_tarball(tmp_path / "y.tgz", skip="ort-wasm-simd-threaded.wasm"))
    with pytest.raises(WebRuntimeError, match="holds onnxruntime-web '9.9.9'"):
        fetch_ort_web(tmp_path / "c", version=FAKE_VERSION, tarball=fake_tarball(tmp_path / "z.tgz", version="9.9.9"))
    (tmp_path / "t.tgz").write_bytes(b"not gzip")
    with pytest.raises(WebRuntimeError, match="not a readable npm tarball"):
        fetch_ort_web(tmp_path / "d", version=FAKE_VERSION, tarball=tmp_path / "t.tgz")
    with pytest.raises(WebRuntimeError, match="holds left-pad '0.0.1-test', not the requested onnxruntime-web"):
        fetch_ort_web(tmp_path / "e", version=FAKE_VERSION, tarball=fake_tarball(tmp_path / "w.tgz", name="left-pad"))
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_web_runtime_command(cli_runner, tmp_path):
    from pocketcnn.cli.web import web_runtime

    r = cli_runner.invoke(web_runtime, ["--check", "--dest", str(tmp_path / "none")])
    assert r.exit_code == 1 and "missing" in r.output
    r = cli_runner.invoke(web_runtime, ["--dest", str(tmp_path / "o"), "--tarball", str(fake_tarball(tmp_path / "f.tgz"))])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "pinned" in r.output and "Traceback" not in r.output
    r = cli_runner.invoke(web_runtime, ["--help"])
    assert r.exit_code == 0 and "onnxruntime-web" in r.output.replace("ONNX Runtime Web", "onnxruntime-web")


def test_export_web_writes_a_static_folder(tmp_path, fake_runtime):
    import torch

    from pocketcnn import create_model
    from pocketcnn.artifacts.metadata import read_onnx_metadata
    from pocketcnn.artifacts.source import ModelSource
    from pocketcnn.data.spec import DataSpec
    from pocketcnn.export.web import STATIC_BODY, export_web

    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "in_chans": 1, "small_input": True}
    spec = DataSpec("test-gray", 10, 1, 28, (0.5,), (0.25,), tuple(f"c{i}" for i in range(10)), 32)
    source = ModelSource(create_model("squeezenet1_1", **kwargs).eval(), "squeezenet1_1", kwargs, spec, None, "model")
    with pytest.raises(WebRuntimeError, match="no LiteRT.js"):  # LiteRT.js is needed beside a .tflite
        export_web(source, tmp_path / "site", runtime_dir=fake_runtime, litert_dir=tmp_path / "none", tflite=True)
    assert not (tmp_path / "site").exists()
    result = export_web(source, tmp_path / "site", runtime_dir=fake_runtime, verify_n=2, tflite=False)
    out = tmp_path / "site"
    assert result.path == out and result.verification.passed and result.tflite_verification is None
    assert result.precision == "fp32" and result.warnings == () and result.to_dict()["warnings"] == []
    assert set(result.files) == {"README.txt", "index.html", "model.onnx", "static/app.js", "static/preprocess.js",
                                 "static/style.css", "sw.js", "offline.json", "manifest.webmanifest",
                                 *(f"static/{n}" for n in web.ICON_FILES),
                                 *(f"static/ort/{n}" for n in (*web.ORT_WEB_FILES, web.MANIFEST))}
    plan = json.loads((out / "offline.json").read_text())
    import hashlib

    assert plan["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest() == result.sha256
    assert plan["cache"].startswith(f"pocketcnn-{plan['sha256']}-") and plan["preferred"] == "ort"
    assert "litert" not in plan["runtimes"] and "tflite" not in plan["models"]  # no .tflite: no LiteRT.js
    assert all((out / (u if u != "./" else "index.html")).is_file() for u in plan["precache"])
    check_manifest(json.loads((out / "manifest.webmanifest").read_text()), out, "squeezenet1_1")
    assert result.total_bytes == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert STATIC_BODY in (out / "index.html").read_text()
    meta = read_onnx_metadata(out / "model.onnx")
    assert meta["classes"] == list(spec.classes) and meta["resize_size"] == 32 and meta["params"] == source.params
    assert "python -m http.server" in (out / "README.txt").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".site")]  # staging renamed away

    with pytest.raises(OutputError, match="not empty"):  # refused before any work
        export_web(source, out, runtime_dir=fake_runtime)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        export_web(source, tmp_path / "file", runtime_dir=fake_runtime)
    with pytest.raises(WebRuntimeError, match="pocketcnn web-runtime"):
        export_web(source, tmp_path / "site2", runtime_dir=tmp_path / "no-runtime")
    assert not (tmp_path / "site2").exists()
    again = export_web(source, out, runtime_dir=fake_runtime, verify_n=2, overwrite=True, tflite=False)
    assert again.files == result.files


def test_serve_sends_isolation_headers_and_the_model_file(tmp_path):
    from starlette.testclient import TestClient

    from pocketcnn.runtime.web import packaged_page
    from pocketcnn.serve import create_app

    sys.path.insert(0, str(Path(__file__).parent / "light"))
    try:
        import prepare
    finally:
        sys.path.pop(0)
    model = prepare.make_onnx(tmp_path / "m.onnx")
    assert packaged_page() is not None
    with TestClient(create_app(model, static_dir=packaged_page())) as client:
        for path in ("/", "/static/app.js", "/v1/model", "/healthz"):
            r = client.get(path)
            assert r.status_code == 200, path
            assert r.headers["cross-origin-opener-policy"] == "same-origin"
            assert r.headers["cross-origin-embedder-policy"] == "require-corp"
        assert 'data-api="v1/"' in client.get("/").text
        r = client.get("/v1/model.onnx")
        assert r.status_code == 200 and r.content == model.read_bytes()


def check_manifest(manifest: dict, root: Path | None, model: str, get=None) -> None:
    """A web app manifest a phone can install: the members browsers require, icons that exist."""
    from PIL import Image

    assert manifest["name"] == f"pocketcnn: {model}" and manifest["short_name"]
    assert manifest["display"] == "standalone" and manifest["start_url"] == "./" and manifest["scope"] == "./"
    assert manifest["theme_color"].startswith("#") and manifest["background_color"].startswith("#")
    sizes = set()
    for icon in manifest["icons"]:
        data = get(icon["src"]) if get else (root / icon["src"]).read_bytes()
        img = Image.open(io.BytesIO(data))
        assert img.format == "PNG" and icon["type"] == "image/png"
        assert f"{img.width}x{img.height}" == icon["sizes"]
        sizes.add((icon["sizes"], icon.get("purpose", "any")))
    assert {("192x192", "any"), ("512x512", "any"), ("512x512", "maskable")} <= sizes


def oversized_files(folder: Path) -> list[Path]:
    """Headers that declare 9000x9000 = 81 M pixels (over 64 M): a PNG (IHDR with a valid CRC, no
    image data) and a baseline JPEG (SOF0 after an APP0 segment)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 9000, 9000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 9000, 9000, 1) + b"\x01\x11\x00"
    paths = [folder / "huge.png", folder / "huge.jpg"]
    paths[0].write_bytes(png + b"\x00" * 64)
    paths[1].write_bytes(b"\xff\xd8" + app0 + sof + b"\x00" * 64)
    return paths


def fake_litert_tarballs(folder: Path, version: str = FAKE_VERSION, skip: str | None = None) -> list[Path]:
    """Tarballs shaped like @litertjs/core's and @litertjs/wasm-utils', with small stand-in files."""
    out = []
    for package, members in web.LITERT_MEMBERS.items():
        path = folder / f"{package.lstrip('@').replace('/', '-')}.tgz"
        with tarfile.open(path, "w:gz") as tar:
            files = {"package/package.json": json.dumps({"name": package, "version": version,
                                                         "license": "Apache-2.0"}).encode(),
                     "package/wasm/litert_wasm_jspi_internal.wasm": b"not taken"}
            files.update({m: f"// {m}".encode() * 5 for m in members if m != skip})
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        out.append(path)
    return out


def test_fetch_litert_js_from_tarballs(tmp_path):
    from pocketcnn.runtime.web import fetch_litert_js, find_litert_js

    tgz = fake_litert_tarballs(tmp_path)
    dest = tmp_path / "litert"
    got = fetch_litert_js(dest, version=FAKE_VERSION, tarballs=tgz)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(
        [*web.LITERT_FILES, web.LITERT_MANIFEST])
    assert not (dest / "core" / "wasm" / "litert_wasm_jspi_internal.wasm").exists()  # JSPI build not taken
    manifest = json.loads((dest / web.LITERT_MANIFEST).read_text())
    assert manifest["integrity"] == {p: web.sri_sha512(t) for p, t in zip(web.LITERT_MEMBERS, tgz)}
    assert find_litert_js(dest, version=FAKE_VERSION) == got and find_litert_js(dest) is None
    assert got.build_bytes("threaded") == sum(got.files[n] for n in (
        "core/index.js", "wasm-utils/index.js", "core/wasm/litert_wasm_threaded_internal.js",
        "core/wasm/litert_wasm_threaded_internal.wasm"))
    with pytest.raises(WebRuntimeError, match="is not the pinned @litertjs/core"):
        fetch_litert_js(tmp_path / "a", tarballs=tgz)  # the pinned version's integrity
    with pytest.raises(WebRuntimeError, match="has no wasm/litert_wasm_internal.wasm"):
        fetch_litert_js(tmp_path / "b", version=FAKE_VERSION, tarballs=fake_litert_tarballs(
            tmp_path, skip="package/wasm/litert_wasm_internal.wasm"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_web_runtime_command_sorts_tarballs_by_package(cli_runner, tmp_path):
    from pocketcnn.cli.web import web_runtime

    stray = fake_tarball(tmp_path / "other.tgz", name="left-pad")
    r = cli_runner.invoke(web_runtime, ["--dest", str(tmp_path / "o"), "--tarball", str(stray)])
    assert r.exit_code == 2 and "left-pad" in r.output and "Traceback" not in r.output
    r = cli_runner.invoke(web_runtime, ["--check", "--dest", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 1 and json.loads(r.stdout)["litert.js"]["present"] is False


def test_both_runtimes_of_one_folder(tmp_path, monkeypatch):
    """What web-runtime calls: find_web_runtimes (the --check record) and fetch_web_runtimes (a tarball of
    another package refused with exit status 2 before anything is fetched)."""
    import hashlib

    from pocketcnn.fileio import sha256_file
    from pocketcnn.runtime.web import TarballError, fetch_web_runtimes, find_web_runtimes

    fetch_ort_web(tmp_path / "site" / "ort", version=FAKE_VERSION, tarball=fake_tarball(tmp_path / "ort.tgz"))
    monkeypatch.setattr(web, "ORT_WEB_VERSION", FAKE_VERSION)
    found = find_web_runtimes(tmp_path / "site")
    assert found.ort is not None and found.litert is None and not found.present
    status = found.to_dict(status=True)
    assert status["present"] is False and status["onnxruntime-web"] == {"present": True, **found.ort.to_dict()}
    assert status["litert.js"] == {"present": False, "version": web.LITERT_VERSION,
                                   "path": str(tmp_path / "site" / "litert")}
    assert found.to_dict() == {"onnxruntime-web": found.ort.to_dict(), "litert.js": {"path": str(found.litert_path)}}
    manifest = json.loads((found.ort_path / web.MANIFEST).read_text())
    for name in web.ORT_WEB_FILES:
        digest = hashlib.sha256((found.ort_path / name).read_bytes()).hexdigest()
        assert manifest["files"][name]["sha256"] == sha256_file(found.ort_path / name) == digest
    with pytest.raises(TarballError, match="holds npm package 'left-pad'") as refused:
        fetch_web_runtimes(tmp_path / "new", tarballs=[fake_tarball(tmp_path / "x.tgz", name="left-pad")])
    assert refused.value.exit_code == 2 and not (tmp_path / "new").exists()


def test_serve_page_routes(tmp_path, monkeypatch):
    from starlette.testclient import TestClient

    from pocketcnn.runtime.web import fetch_litert_js, packaged_page
    from pocketcnn.serve import create_app, page

    litert = fetch_litert_js(tmp_path / "litert", version=FAKE_VERSION, tarballs=fake_litert_tarballs(tmp_path))
    monkeypatch.setattr(page, "find_litert_js", lambda path: litert)  # the page's LiteRT.js, whatever is installed

    sys.path.insert(0, str(Path(__file__).parent / "light"))
    try:
        import prepare
    finally:
        sys.path.pop(0)
    model = prepare.make_onnx(tmp_path / "m.onnx")
    with TestClient(create_app(model, static_dir=packaged_page())) as client:
        r = client.get("/v1/model.tflite")
        assert r.status_code == 404 and "m.tflite" in r.json()["error"]
        plan = client.get("/offline.json")
        assert plan.status_code == 200 and plan.headers["cache-control"] == "no-store"
        import hashlib

        sha = hashlib.sha256(model.read_bytes()).hexdigest()
        assert plan.json()["sha256"] == sha and plan.json()["cache"].startswith(f"pocketcnn-{sha}-")
        assert "tflite" not in plan.json()["models"]
        (tmp_path / "m.tflite").write_bytes(b"TFL3 stand-in")  # beside the ONNX file: served, and in the plan
        r = client.get("/v1/model.tflite")
        assert r.status_code == 200 and r.content == b"TFL3 stand-in"
        again = client.get("/offline.json").json()
        assert again["models"]["tflite"]["bytes"] == 13 and again["cache"] != plan.json()["cache"]
        r = client.get("/v1/model-int8.tflite")
        assert r.status_code == 404 and "m-int8.tflite" in r.json()["error"] and "tflite_int8" not in again["models"]
        (tmp_path / "m-int8.tflite").write_bytes(b"TFL3 int8")  # the int8 file beside them: served, in the plan
        r = client.get("/v1/model-int8.tflite")
        assert r.status_code == 200 and r.content == b"TFL3 int8"
        with_int8 = client.get("/offline.json").json()
        assert with_int8["models"]["tflite_int8"]["url"] == "v1/model-int8.tflite"
        assert "v1/model-int8.tflite" in with_int8["cacheable"] and with_int8["cache"] != again["cache"]
        sw = client.get("/sw.js")
        assert sw.status_code == 200 and "javascript" in sw.headers["content-type"] and "caches.open" in sw.text
        r = client.get("/manifest.webmanifest")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/manifest+json")
        check_manifest(r.json(), None, r.json()["name"].removeprefix("pocketcnn: "),
                       get=lambda src: client.get("/" + src).content)
        for path in ("/offline.json", "/sw.js", "/manifest.webmanifest"):
            assert client.get(path).headers["cross-origin-embedder-policy"] == "require-corp"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_javascript_reads_image_headers_as_pillow_under_node(tmp_path):
    """preprocess.js's imageHeader gives Pillow's size for PNG, JPEG (EXIF, progressive), GIF, WebP
    (lossy, lossless, with alpha) and BMP; checkImageHeader refuses 81 M pixels and other formats."""
    from PIL import Image

    rng = np.random.default_rng(1)
    cases = {}
    for i, (fmt, ext, kw, mode) in enumerate([
            ("PNG", "png", {}, "RGB"), ("PNG", "png", {}, "L"), ("JPEG", "jpg", {"quality": 80}, "RGB"),
            ("JPEG", "jpg", {"progressive": True}, "RGB"), ("GIF", "gif", {}, "P"), ("WEBP", "webp", {"quality": 70}, "RGB"),
            ("WEBP", "webp", {"lossless": True}, "RGB"), ("WEBP", "webp", {}, "RGBA"), ("BMP", "bmp", {}, "RGB")]):
        w, h = int(rng.integers(1, 700)), int(rng.integers(1, 700))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").convert(mode)
        path = tmp_path / f"img{i}.{ext}"
        if fmt == "JPEG":
            exif = img.getexif()
            exif[0x0112] = 6
            kw = {**kw, "exif": exif}
        img.save(path, fmt, **kw)
        with Image.open(path) as check:
            cases[path.name] = [check.width, check.height]
    huge = [p.name for p in oversized_files(tmp_path)]
    (tmp_path / "notes.txt").write_text("not an image")
    module = (Path(__file__).resolve().parents[1] / "src" / "pocketcnn" / "web" / "preprocess.js").as_uri()
    script = tmp_path / "check.mjs"
    script.write_text(f"""
import fs from "fs";
import {{ imageHeader, checkImageHeader }} from "{module}";
const sizes = {{}}, refused = {{}};
for (const name of {json.dumps(sorted(cases))}) {{
  const h = imageHeader(new Uint8Array(fs.readFileSync(name)));
  sizes[name] = h ? [h.width, h.height] : null;
}}
for (const name of {json.dumps([*huge, "notes.txt"])}) {{
  try {{ checkImageHeader(new Uint8Array(fs.readFileSync(name))); refused[name] = null; }}
  catch (e) {{ refused[name] = e.message; }}
}}
console.log(JSON.stringify({{ sizes, refused }}));
""")
    done = subprocess.run(["node", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["sizes"] == cases
    assert "PNG, JPEG, GIF, WebP or BMP" in result["refused"]["notes.txt"]
    for name in huge:
        assert "9000x9000" in result["refused"][name] and "over the limit" in result["refused"][name]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_javascript_resize_equals_pillow_under_node(tmp_path):
    """preprocess.js's resize and L conversion on random images, sizes and channels, byte for byte."""
    from PIL import Image

    rng = np.random.default_rng(0)
    cases, blob = [], bytearray()
    sizes = [(640, 480, 37, 28), (480, 640, 224, 298), (300, 7, 10, 1), (5, 5, 1, 1), (28, 28, 32, 32)]
    for i in range(120):
        w, h, ow, oh = sizes[i] if i < len(sizes) else (*rng.integers(1, 300, 2), *rng.integers(1, 300, 2))
        ow, oh = (w, oh) if i % 9 == 7 else (ow, h) if i % 9 == 8 else (ow, oh)
        c = int(rng.choice([1, 3]))
        a = rng.integers(0, 256, (h, w) if c == 1 else (h, w, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(a).resize((int(ow), int(oh)), Image.BILINEAR))
        cases.append({"c": c, "w": int(w), "h": int(h), "ow": int(ow), "oh": int(oh), "off": len(blob)})
        blob += a.tobytes() + ref.tobytes()
    rgb = rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    (tmp_path / "cases.json").write_text(json.dumps({"cases": cases, "luma_off": len(blob)}))
    (tmp_path / "blob.bin").write_bytes(bytes(blob) + rgb.tobytes() + gray.tobytes())
    module = (Path(__file__).resolve().parents[1] / "src" / "pocketcnn" / "web" / "preprocess.js").as_uri()
    script = tmp_path / "check.mjs"
    script.write_text(f"""
import fs from "fs";
import {{ resizeBilinear, toChannels }} from "{module}";
const {{ cases, luma_off }} = JSON.parse(fs.readFileSync("cases.json"));
const blob = new Uint8Array(fs.readFileSync("blob.bin"));
const bad = [];
for (const k of cases) {{
  const n = k.w * k.h * k.c, src = blob.subarray(k.off, k.off + n);
  const ref = blob.subarray(k.off + n, k.off + n + k.ow * k.oh * k.c);
  const out = resizeBilinear(src, k.w, k.h, k.c, k.ow, k.oh);
  if (out.length !== ref.length || out.some((v, i) => v !== ref[i])) bad.push(k);
}}
const rgb = blob.subarray(luma_off, luma_off + 6000), gray = blob.subarray(luma_off + 6000, luma_off + 8000);
const rgba = new Uint8Array(8000);
for (let i = 0; i < 2000; i++) rgba.set([rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2], 7], 4 * i);
const luma = toChannels(rgba, 40, 50, 1);
console.log(JSON.stringify({{ bad, luma: luma.every((v, i) => v === gray[i]) }}));
""")
    done = subprocess.run(["node", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["bad"] == [] and result["luma"] is True


def test_offline_plan_lists_the_int8_file(tmp_path, fake_runtime):
    """The int8 .tflite beside the fp32 one is in offline.json: a model the service worker stores, and
    part of the cache's name (a new int8 file is a new cache); without LiteRT.js it is not offered."""
    import hashlib

    from pocketcnn.export.web import INT8_FILE, INT8_KEY, web_plan
    from pocketcnn.runtime.web import fetch_litert_js, packaged_page

    litert = fetch_litert_js(tmp_path / "litert", version=FAKE_VERSION, tarballs=fake_litert_tarballs(tmp_path))
    ort = find_ort_web(fake_runtime, version=FAKE_VERSION)
    files = {name: tmp_path / name for name in ("model.onnx", "model.tflite", INT8_FILE)}
    for i, path in enumerate(files.values()):
        path.write_bytes(b"x" * (10 + i))

    def plan(int8: bool = True, runtime=litert) -> dict:
        return web_plan("m", ("model.onnx", files["model.onnx"]), tflite=("model.tflite", files["model.tflite"]),
                        int8=(INT8_FILE, files[INT8_FILE]) if int8 else None, page=packaged_page(), ort=ort,
                        litert=runtime)

    fp32_only, both = plan(int8=False), plan()
    assert both["models"][INT8_KEY] == {"url": INT8_FILE, "bytes": 12, "precision": "int8",
                                        "sha256": hashlib.sha256(b"x" * 12).hexdigest()}
    assert INT8_FILE in both["cacheable"] and INT8_FILE not in fp32_only["cacheable"]
    assert both["cache"] != fp32_only["cache"] and both["cache"].startswith(f"pocketcnn-{both['sha256']}-")
    assert {k: v for k, v in both.items() if k not in ("models", "cache", "cacheable")} == \
        {k: v for k, v in fp32_only.items() if k not in ("models", "cache", "cacheable")}
    files[INT8_FILE].write_bytes(b"y" * 12)  # another int8 file, same size: another cache
    assert plan()["cache"] != both["cache"]
    assert INT8_KEY not in plan(runtime=None)["models"]  # no LiteRT.js: no .tflite file is offered
