"""The browser page in a real Chromium, driven by Playwright.

* LiteRT.js (the page's default device runtime) on the ``.tflite`` file gives the answers of
  ``pocketcnn predict --json`` on that file, under ``serve`` (threads) and in the static
  folder (one thread); ONNX Runtime Web stays selectable;
* with ``model-int8.tflite`` beside it, the page times both files, runs the faster, says so
  with both timings, remembers the choice, lets the visitor choose the other, and the int8
  file's answers equal ``pocketcnn predict --json`` on it (Python LiteRT);
* offline: the service worker stores the page, its runtime and its model on the first visit;
  with the browser context offline the page reloads and classifies the same images, every
  request answered by the worker; a second visit fetches under 1% of the first one's bytes;
  a new model at the same address replaces the cache;
* where a photo goes: an unknown ``?mode=`` is refused and nothing is sent; in device mode no
  request carries a photo; an oversized image is refused from its header, never decoded;

* ``pocketcnn serve``: real Fashion-MNIST test images uploaded through the page give the
  top-1 class and probability of ``pocketcnn predict --json``, answered by the server and by
  ONNX Runtime Web on the device (threads: the server sends COOP/COEP);
* the static folder of ``export_web`` under ``python -m http.server`` (no COOP/COEP: one
  thread) gives the same;
* a file that is not an image shows an error and the page goes on;
* the page's JavaScript preprocessing equals the Python runtime's (gray PNG, RGB JPEG, RGBA
  PNG, odd sizes, resized; EXIF rotation; palette with transparency).

Needs Chromium (Debian's, or POCKETCNN_CHROMIUM), Playwright for Python and the ONNX Runtime
Web files (``pocketcnn web-runtime``); skipped with the reason when one is missing.
Screenshots of each mode are written under the test's tmp_path.
"""
from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pocketcnn.export.web import litert_available
from pocketcnn.runtime.web import find_litert_js, find_ort_web
from test_web import oversized_files  # tests/ is on sys.path (rootdir-relative test modules)

FMNIST = Path("/usr/share/datasets/fashion-mnist")
CHROMIUM = os.environ.get("POCKETCNN_CHROMIUM", "/usr/lib/chromium/chromium")
N_IMAGES = 24
TOL_PROB = 1e-3
TIMEOUT_MS = 180_000  # for any one wait in the browser

if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set POCKETCNN_CHROMIUM)",
                allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    pytest.skip("Playwright for Python is not installed (pip install playwright)", allow_module_level=True)
if not litert_available():
    pytest.skip("the litert extra is not installed, so the page's LiteRT.js files (model.tflite, model-int8.tflite) "
                "cannot be written: pip install 'pocketcnn[litert]' (make test installs it)", allow_module_level=True)
if find_ort_web() is None or find_litert_js() is None:
    pytest.skip("the browser runtimes (ONNX Runtime Web, LiteRT.js) are missing: run 'pocketcnn web-runtime'",
                allow_module_level=True)


# ------------------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str, log: Path, timeout_s: float = 60.0) -> subprocess.Popen:
    """Start a server process and wait until ``url`` answers 200."""
    import httpx

    out = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{url} did not answer within {timeout_s} s:\n{log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------ fixtures
def image_source(tiny_data) -> tuple[str, str | None, Path]:
    """(data set, data_dir, test images file): the Debian Fashion-MNIST files when installed (CI
    installs them), else tiny_data's stand-in in MNIST layout."""
    if (FMNIST / "t10k-images-idx3-ubyte.gz").is_file():
        return "fashion-mnist", None, FMNIST / "t10k-images-idx3-ubyte.gz"
    return "mnist", tiny_data, Path(tiny_data) / "t10k-images-idx3-ubyte.gz"


@pytest.fixture(scope="module")
def web_dir(tmp_path_factory, tiny_data) -> Path:
    """A squeezenet1_1 trained one epoch on 256 Fashion-MNIST images, exported with export_web."""
    from pocketcnn.artifacts.source import load_model_source
    from pocketcnn.export.web import export_web
    from pocketcnn.train.config import TrainConfig
    from pocketcnn.train.engine import fit

    from pocketcnn.models.registry import model_config

    data, data_dir, _ = image_source(tiny_data)
    root = tmp_path_factory.mktemp("browser-model")
    # the family's recipe (no ReLU after the last conv: distinct logits, no ties for top-1), 4 steps
    cfg = TrainConfig.from_dict({**model_config("squeezenet1_1").recipe, "model": "squeezenet1_1", "data": data,
                                 "data_dir": data_dir, "epochs": 1, "warmup_epochs": 0.5, "train_samples": 256,
                                 "test_samples": 160, "eval_batch_size": 160, "out": str(root / "run")})
    fit(cfg)
    result = export_web(load_model_source(root / "run" / "last.pt"), root / "web", data_dir=data_dir, int8=True,
                        calib={"calib_samples": 256, "test_samples": 500})
    assert result.verification.passed and result.model == "squeezenet1_1" and result.int8_verification.passed
    return result.path


@pytest.fixture(scope="module")
def images(tmp_path_factory, tiny_data) -> list[Path]:
    """N_IMAGES real Fashion-MNIST test images as PNG files, and a text file in the middle."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("browser-images")
    with gzip.open(image_source(tiny_data)[2]) as f:
        data = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    paths = []
    for i in range(N_IMAGES):
        path = folder / f"fmnist-{i:02d}.png"
        Image.fromarray(data[i * (len(data) // N_IMAGES)]).save(path)
        paths.append(path)
    text = folder / "notes.txt"
    text.write_text("not an image")
    return paths[: N_IMAGES // 2] + [text] + paths[N_IMAGES // 2:]


@pytest.fixture(scope="module")
def expected(web_dir, images) -> dict[str, dict]:
    """``pocketcnn predict --json`` records by file name."""
    from click.testing import CliRunner

    from pocketcnn.cli import cli

    result = CliRunner().invoke(cli, ["predict", str(web_dir / "model.onnx"), *map(str, images), "--json"])
    assert result.exit_code == 1, result.output  # the text file fails, the others are classified
    records = json.loads(result.stdout)
    return {Path(r["image"]).name: r for r in records}


@pytest.fixture(scope="module")
def expected_tflite(web_dir, images) -> dict[str, dict]:
    """``pocketcnn predict --json`` on the folder's ``model.tflite`` (LiteRT), by file name."""
    from click.testing import CliRunner

    from pocketcnn.cli import cli

    result = CliRunner().invoke(cli, ["predict", str(web_dir / "model.tflite"), *map(str, images), "--json"])
    assert result.exit_code == 1, result.output
    records = json.loads(result.stdout)
    assert {r.get("runtime", "litert") for r in records if "error" not in r} <= {"litert"}
    return {Path(r["image"]).name: r for r in records}


@pytest.fixture(scope="module")
def expected_int8(web_dir, images) -> dict[str, dict]:
    """``pocketcnn predict --json`` on the folder's ``model-int8.tflite`` (Python LiteRT), by file name."""
    from click.testing import CliRunner

    from pocketcnn.cli import cli

    result = CliRunner().invoke(cli, ["predict", str(web_dir / "model-int8.tflite"), *map(str, images), "--json"])
    assert result.exit_code == 1, result.output
    return {Path(r["image"]).name: r for r in json.loads(result.stdout)}


@pytest.fixture(scope="module")
def expected_litert(web_dir, expected_tflite, expected_int8) -> dict[str, tuple[dict[str, dict], float]]:
    """By the .tflite file LiteRT.js runs on the page ("fp32", "int8": the faster here): predict's
    records on that file and the probability tolerance."""
    return {"fp32": (expected_tflite, TOL_PROB), "int8": (expected_int8, int8_tolerance(web_dir / "model-int8.tflite"))}


@pytest.fixture(scope="module")
def serve_url(web_dir, tmp_path_factory):
    """``pocketcnn serve model.onnx`` (the packaged page by default) on a free loopback port."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    proc = start([sys.executable, "-m", "pocketcnn", "serve", str(web_dir / "model.onnx"), "--host", "127.0.0.1",
                  "--port", str(port), "--log-level", "warning"], f"http://127.0.0.1:{port}/healthz", log)
    yield f"http://127.0.0.1:{port}/"
    stop(proc)


@pytest.fixture(scope="module")
def static_url(web_dir, tmp_path_factory):
    """The exported folder under ``python -m http.server`` (no COOP/COEP headers)."""
    port = free_port()
    log = tmp_path_factory.mktemp("http-log") / "http.log"
    proc = start([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(web_dir)],
                 f"http://127.0.0.1:{port}/", log)
    yield f"http://127.0.0.1:{port}/"
    stop(proc)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A phone-sized page; JavaScript errors fail the test."""
    context = browser.new_context(viewport={"width": 412, "height": 915}, device_scale_factor=1)
    context.set_default_timeout(TIMEOUT_MS)  # a shared 2-core machine: generous, never a sleep
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


# ------------------------------------------------------------------------------ helpers
def open_page(page, url: str) -> None:
    page.goto(url)
    page.evaluate("window.pocketcnn.ready")


def upload_and_read(page, files: list[Path]) -> dict[str, dict]:
    """Choose ``files`` in the file input; wait for their cards; return each card's data by file name."""
    before = page.locator("#results .card").count()
    page.set_input_files("#files", [str(f) for f in files])
    want = before + len(files)
    page.wait_for_function(
        f"document.querySelectorAll('#results .card:not([data-status=pending])').length >= {want}", timeout=TIMEOUT_MS)
    cards = page.eval_on_selector_all(
        "#results .card", """cards => cards.map(c => ({...c.dataset,
            message: (c.querySelector('.message') || {}).textContent || null,
            bars: c.querySelectorAll('.bars li').length,
            meta: (c.querySelector('.meta') || {}).textContent}))""")
    return {c["name"]: c for c in cards[: len(files)]}


def check_against_predict(cards: dict[str, dict], images: list[Path], expected: dict[str, dict], mode: str,
                          tol: float = TOL_PROB) -> float:
    """Each card against ``predict --json``'s record: top-1 equal (up to a near-tie), its probability within
    ``tol``; the largest probability difference."""
    worst = 0.0
    assert set(cards) == {p.name for p in images}
    for name, card in cards.items():
        assert card["mode"] == mode, name
        want = expected[name]
        if "error" in want:  # the text file: an error card with a message, no bars
            assert card["status"] == "error" and card["message"] and name in card["message"], card
            assert card["bars"] == 0
            continue
        top = want["topk"][0]
        assert card["status"] == "done", card
        assert card["bars"] == 5
        # a near-tie (top two within 1e-4) may flip between ONNX Runtime builds; none is expected here
        tied = [t for t in want["topk"] if top["prob"] - t["prob"] < 1e-4]
        assert (card["top1Label"], int(card["top1Index"])) in [(t["label"], t["index"]) for t in tied], (name, card, top)
        assert abs(float(card["top1Prob"]) - top["prob"]) <= tol, (name, card["top1Prob"], top["prob"], tol)
        assert float(card["latencyMs"]) > 0
        worst = max(worst, abs(float(card["top1Prob"]) - top["prob"]))
    return worst


def check_litert(page, cards: dict[str, dict], images: list[Path], expected_litert) -> float:
    """check_against_predict against predict on the .tflite file (fp32 or int8) the page's LiteRT.js runs."""
    want, tol = expected_litert[page.evaluate("pocketcnn.state.device.precision")]
    return check_against_predict(cards, images, want, "device", tol=tol)


# ------------------------------------------------------------------------------ tests
def test_serve_page_server_and_device_modes_match_predict(page, serve_url, images, expected, expected_litert,
                                                           tmp_path):
    import httpx

    for path in ("", "static/ort/ort-wasm-simd-threaded.mjs"):
        headers = httpx.get(serve_url + path).headers
        assert headers["cross-origin-opener-policy"] == "same-origin"
        assert headers["cross-origin-embedder-policy"] == "require-corp"
    open_page(page, serve_url)
    assert page.evaluate("crossOriginIsolated") is True
    assert page.evaluate("pocketcnn.state.mode") == "server"
    assert not page.is_visible("#runtimes")  # the device's runtime choice shows in device mode only
    model_line = page.inner_text("#model")
    assert "squeezenet1_1" in model_line and "parameters" in model_line and "MB" in model_line

    cards = upload_and_read(page, images)
    check_against_predict(cards, images, expected, "server")
    assert "server" in cards[images[0].name]["meta"]
    page.screenshot(path=str(tmp_path / "browser-server.png"), full_page=True)

    page.check("input[value=device]")
    page.wait_for_function("pocketcnn.state.mode === 'device'", timeout=TIMEOUT_MS)
    threads = page.evaluate("pocketcnn.state.device.threads")
    assert threads == min(4, page.evaluate("navigator.hardwareConcurrency")) and threads >= 1
    assert page.evaluate("pocketcnn.state.device.info.name") == "squeezenet1_1"
    assert page.evaluate("pocketcnn.state.runtime") == "litert"  # the faster runtime is the default
    assert page.is_visible("#runtimes")
    cards = upload_and_read(page, images)
    check_litert(page, cards, images, expected_litert)
    assert "LiteRT.js" in cards[images[0].name]["meta"] and "WebAssembly" in cards[images[0].name]["meta"]
    page.screenshot(path=str(tmp_path / "browser-device.png"), full_page=True)

    # after the error card the page still classifies the next image
    again = upload_and_read(page, [images[0]])
    check_litert(page, again, [images[0]], expected_litert)
    # ONNX Runtime Web stays selectable, and answers as predict on the ONNX file
    page.check("input[value=ort]")
    page.wait_for_function("pocketcnn.state.runtime === 'ort'", timeout=TIMEOUT_MS)
    again = upload_and_read(page, [images[1]])
    check_against_predict(again, [images[1]], expected, "device")
    assert "ONNX Runtime Web" in again[images[1].name]["meta"]


def test_static_folder_classifies_on_one_thread(page, static_url, web_dir, images, expected, tmp_path):
    import httpx

    assert "cross-origin-embedder-policy" not in httpx.get(static_url).headers
    from pocketcnn.runtime.web import LITERT_FILES

    assert sorted(p.relative_to(web_dir).as_posix() for p in web_dir.rglob("*") if p.is_file()) == sorted([
        "README.txt", "index.html", "manifest.webmanifest", "model.onnx", "model.tflite", "model-int8.tflite",
        "offline.json", "sw.js",
        "static/app.js", "static/icons/icon-192.png", "static/icons/icon-512.png",
        "static/icons/icon-maskable-512.png", "static/ort/onnxruntime-web.json",
        "static/ort/ort-wasm-simd-threaded.mjs", "static/ort/ort-wasm-simd-threaded.wasm",
        "static/ort/ort.wasm.min.js", "static/preprocess.js", "static/style.css", "static/litert/litert.json",
        *(f"static/litert/{n}" for n in LITERT_FILES)])
    open_page(page, static_url + "?runtime=ort")  # ONNX Runtime Web stays selectable
    assert page.evaluate("crossOriginIsolated") is False
    assert page.evaluate("pocketcnn.state.mode") == "device"
    assert page.evaluate("pocketcnn.state.runtime") == "ort"
    assert page.is_disabled("input[value=server]")
    assert page.evaluate("pocketcnn.state.device.threads") == 1
    cards = upload_and_read(page, images)
    check_against_predict(cards, images, expected, "device")
    assert "ONNX Runtime Web" in cards[images[0].name]["meta"] and "1 thread" in cards[images[0].name]["meta"]
    page.screenshot(path=str(tmp_path / "browser-static.png"), full_page=True)


# ------------------------------------------------------------------------------ preprocessing
def preprocessing_images(folder: Path) -> dict[str, Path]:
    """Odd sizes that need a resize: gray PNG, RGB JPEG, RGBA PNG (alpha 0..255), an EXIF-rotated
    JPEG and a palette PNG with a transparent entry."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:53, 0:71]
    smooth = ((np.sin(xx / 6.0) + np.cos(yy / 4.0) + 2) * 60).astype(np.uint8)
    noisy = np.clip(smooth[..., None].astype(int) + rng.integers(-40, 40, (53, 71, 3)), 0, 255).astype(np.uint8)
    out = {}
    out["gray.png"] = folder / "gray.png"
    Image.fromarray(smooth[:, :45]).save(out["gray.png"])  # 45x53
    out["rgb.jpg"] = folder / "rgb.jpg"
    Image.fromarray(noisy[:37, :]).save(out["rgb.jpg"], quality=90)  # 71x37
    rgba = np.dstack([noisy[:49, :61], rng.integers(0, 256, (49, 61), dtype=np.uint8)])
    out["rgba.png"] = folder / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(out["rgba.png"])  # 61x49, every alpha level
    rotated = Image.fromarray(noisy[:, :59])
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    out["exif6.jpg"] = folder / "exif6.jpg"
    rotated.save(out["exif6.jpg"], quality=92, exif=exif)
    out["palette.png"] = folder / "palette.png"
    Image.fromarray(noisy[:41, :67]).convert("P", palette=Image.Palette.ADAPTIVE).save(out["palette.png"],
                                                                                       transparency=3)
    return out


def test_javascript_preprocessing_equals_python(page, serve_url, tmp_path):
    from pocketcnn.data.spec import DataSpec
    from pocketcnn.runtime.images import preprocess

    open_page(page, serve_url)
    specs = [
        DataSpec("gray", 10, 1, 28, (0.2860,), (0.3530,), tuple("abcdefghij"), 32),
        DataSpec("rgb", 10, 3, 24, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), tuple("abcdefghij"), 27),
        DataSpec("gray-no-resize-crop", 10, 1, 33, (0.5,), (0.25,), tuple("abcdefghij"), 33),
    ]
    for name, path in preprocessing_images(tmp_path).items():
        data = list(path.read_bytes())
        for spec in specs:
            js_spec = {"channels": spec.in_chans, "crop": spec.image_size, "resize": spec.resize_size,
                       "mean": list(spec.mean), "std": list(spec.std)}
            got = page.evaluate("([b, s]) => pocketcnn.preprocess(new Uint8Array(b), s)", [data, js_spec])
            want = preprocess(path, spec)
            assert got["dims"] == [1, *want.shape], (name, spec.name)
            js = np.asarray(got["data"], np.float32).reshape(want.shape)
            std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1)
            diff = np.abs(js - want) * std  # in units of the 0..1 pixel scale
            assert diff.max() <= 1 / 255 + 1e-6, (name, spec.name, float(diff.max()) * 255)
            assert np.mean(diff < 1e-6) >= 0.99, (name, spec.name)  # and equal almost everywhere
            # the .tflite input (LiteRT.js): the same values, channels last
            hwc = page.evaluate("([b, s]) => pocketcnn.preprocess(new Uint8Array(b), s, 'NHWC')", [data, js_spec])
            assert hwc["dims"] == [1, want.shape[1], want.shape[2], want.shape[0]], (name, spec.name)
            js_hwc = np.asarray(hwc["data"], np.float32).reshape(hwc["dims"][1:])
            np.testing.assert_array_equal(js_hwc, np.transpose(js, (1, 2, 0)))
            diff = np.abs(js_hwc - np.transpose(want, (1, 2, 0))) * np.transpose(std, (1, 2, 0))
            assert diff.max() <= 1 / 255 + 1e-6, (name, spec.name, "NHWC")


def test_onnx_metadata_read_in_javascript_equals_python(page, serve_url, web_dir):
    from pocketcnn.artifacts.metadata import read_onnx_metadata

    open_page(page, serve_url)
    got = page.evaluate("""async () => pocketcnn.onnxMetadata(
        new Uint8Array(await (await fetch('v1/model.onnx')).arrayBuffer()))""")
    assert got == read_onnx_metadata(web_dir / "model.onnx")



# ------------------------------------------------------------------------------ LiteRT.js, offline, privacy
def http_log(log: Path) -> list[tuple[str, str, int]]:
    """(method, path, status) of each request ``python -m http.server`` logged."""
    import re

    pattern = re.compile(r'"(GET|HEAD|POST|PUT) (\S+) HTTP/[\d.]+" (\d{3})')
    return [(m[1], m[2], int(m[3])) for m in pattern.finditer(log.read_text(errors="replace"))]


def fetched_bytes(site: Path, requests: list[tuple[str, str, int]]) -> int:
    """The bytes of the files that answered ``requests`` with 200 (the body a visitor downloaded)."""
    total = 0
    for method, path, status in requests:
        rel = path.split("?")[0].lstrip("/") or "index.html"
        if method == "GET" and status == 200 and (site / rel).is_file():
            total += (site / rel).stat().st_size
    return total


@pytest.fixture
def offline_site(web_dir, tmp_path):
    """A copy of the exported folder (a test may replace its model) under ``python -m http.server``,
    with the server's request log: (url, folder, log)."""
    import shutil

    site = tmp_path / "site"
    shutil.copytree(web_dir, site)
    port = free_port()
    log = tmp_path / "http.log"
    proc = start([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
                 f"http://127.0.0.1:{port}/README.txt", log)
    yield f"http://127.0.0.1:{port}/", site, log
    stop(proc)


def rename_model(site: Path, name: str) -> str:
    """The same weights under another name: a new model.onnx, model.tflite and model-int8.tflite (other
    bytes, other SHA-256) and their offline.json, as a new export at the same address would write; the new hash."""
    import onnx

    from pocketcnn.artifacts.metadata import write_onnx_metadata
    from pocketcnn.export.web import web_plan
    from pocketcnn.runtime.litert import add_tflite_metadata, read_tflite_metadata
    from pocketcnn.runtime.web import find_litert_js, find_ort_web, packaged_page

    proto = onnx.load(str(site / "model.onnx"))
    write_onnx_metadata(proto, {"model": name})
    onnx.save(proto, str(site / "model.onnx"))
    for file in ("model.tflite", "model-int8.tflite"):
        content = (site / file).read_bytes()
        (site / file).write_bytes(add_tflite_metadata(content, {**read_tflite_metadata(content), "model": name}))
    plan = web_plan(name, ("model.onnx", site / "model.onnx"), tflite=("model.tflite", site / "model.tflite"),
                    int8=("model-int8.tflite", site / "model-int8.tflite"), page=packaged_page(),
                    ort=find_ort_web(site / "static" / "ort"), litert=find_litert_js(site / "static" / "litert"))
    (site / "offline.json").write_text(json.dumps(plan))
    return str(plan["sha256"])


def test_static_folder_litert_works_offline_and_a_new_model_replaces_the_cache(browser, offline_site, images,
                                                                                 expected_litert, tmp_path):
    import hashlib

    url, site, log = offline_site
    context = browser.new_context(viewport={"width": 412, "height": 915})
    context.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    seen: list[tuple[str, str, bool | None]] = []  # (method, url, answered by the service worker)
    context.on("response", lambda r: seen.append((r.request.method, r.url, r.from_service_worker)))
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        open_page(page, url)
        assert page.evaluate("pocketcnn.state.mode") == "device"
        assert page.evaluate("pocketcnn.state.runtime") == "litert"
        sha = hashlib.sha256((site / "model.onnx").read_bytes()).hexdigest()
        worker = page.evaluate("navigator.serviceWorker.controller && navigator.serviceWorker.controller.scriptURL")
        assert worker and f"cache=pocketcnn-{sha}-" in worker
        assert page.evaluate("caches.keys()") == [json.loads((site / "offline.json").read_text())["cache"]]
        page.wait_for_selector("#offline[data-ready=true]", timeout=TIMEOUT_MS)
        stored = page.evaluate("pocketcnn.state.offline")
        assert stored["ready"] and stored["bytes"] > (site / "model.tflite").stat().st_size
        assert "Ready to work offline" in page.inner_text("#offline") and "MB stored" in page.inner_text("#offline")
        assert sha[:12] in page.inner_text("#model")
        cards = upload_and_read(page, images)
        check_litert(page, cards, images, expected_litert)
        assert "LiteRT.js" in cards[images[0].name]["meta"] and "1 thread" in cards[images[0].name]["meta"]
        first_visit = http_log(log)
        # the cache holds the page, the runtime and the models: never a photo
        stored_urls = page.evaluate("""async () => { const c = await caches.open(pocketcnn.state.plan.cache);
                                        return (await c.keys()).map(r => r.url); }""")
        assert {u.removeprefix(url) for u in stored_urls} >= {"", "model.tflite", "model-int8.tflite", "static/app.js"}
        assert not [u for u in stored_urls if "fmnist" in u or u.startswith("blob:")], stored_urls

        check_offline_then_second_visit(context, page, seen, site, log, first_visit, images, expected_litert,
                                        tmp_path)
        check_a_new_model_replaces_the_cache(page, site, images, expected_litert)
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def check_offline_then_second_visit(context, page, seen, site: Path, log: Path, first_visit, images, expected_litert,
                                    tmp_path: Path) -> None:
    """Offline: reload and classify the same images, the worker answering every request and none reaching the
    server; then a second visit online fetches under 1% of the first one's bytes (offline.json, sw.js)."""
    context.set_offline(True)
    before = len(seen)
    page.reload()
    page.evaluate("window.pocketcnn.ready")
    assert page.evaluate("pocketcnn.state.mode") == "device"
    cards = upload_and_read(page, images)
    check_litert(page, cards, images, expected_litert)
    assert http_log(log) == first_visit
    offline_answers = [(m, u, sw) for m, u, sw in seen[before:] if u.startswith("http")]
    assert offline_answers and all(sw for _, _, sw in offline_answers), offline_answers
    assert not [s for s in seen[before:] if s[0] != "GET"]
    page.screenshot(path=str(tmp_path / "browser-offline.png"), full_page=True)
    context.set_offline(False)

    page.reload()
    page.evaluate("window.pocketcnn.ready")
    second = http_log(log)[len(first_visit):]
    second_bytes, first_bytes = fetched_bytes(site, second), fetched_bytes(site, first_visit)
    assert second_bytes < 0.01 * first_bytes, (second, second_bytes, first_bytes)
    assert {p.split("?")[0] for _, p, _ in second} <= {"/offline.json", "/sw.js"}, second


def check_a_new_model_replaces_the_cache(page, site: Path, images, expected_litert) -> None:
    """A new model at the same address: a new cache replaces the old one; the page names the new model."""
    new_sha = rename_model(site, "squeezenet1_1-v2")
    page.reload()
    page.evaluate("window.pocketcnn.ready")
    page.wait_for_function("pocketcnn.state.device && pocketcnn.state.device.info.name === 'squeezenet1_1-v2'",
                           timeout=TIMEOUT_MS)
    assert new_sha[:12] in page.inner_text("#model") and "squeezenet1_1-v2" in page.inner_text("#model")
    new_cache = json.loads((site / "offline.json").read_text())["cache"]
    assert new_sha in new_cache
    page.wait_for_function(f"caches.keys().then(k => k.length === 1 && k[0] === {json.dumps(new_cache)})",
                           timeout=TIMEOUT_MS)  # the old cache is deleted
    page.wait_for_selector("#offline[data-ready=true]", timeout=TIMEOUT_MS)
    again = upload_and_read(page, [images[0]])
    check_litert(page, again, [images[0]], expected_litert)


def test_serve_device_mode_sends_no_photo_and_works_offline(browser, serve_url, images, expected_litert):
    import httpx

    context = browser.new_context(viewport={"width": 412, "height": 915})
    context.set_default_timeout(TIMEOUT_MS)
    sent: list[tuple[str, str, bytes]] = []
    context.on("request", lambda r: sent.append((r.method, r.url, r.post_data_buffer or b"")))
    photos = [p.read_bytes() for p in images if p.suffix == ".png"]

    def predictions_counted() -> float:
        text = httpx.get(serve_url + "metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("pocketcnn_images_total"))
    counted = predictions_counted()
    try:
        page = context.new_page()
        open_page(page, serve_url)  # server mode: the first visit also stores what device mode needs
        assert page.evaluate("pocketcnn.state.mode") == "server"
        page.wait_for_selector("#offline[data-ready=true]", timeout=TIMEOUT_MS)
        assert page.evaluate("pocketcnn.state.offline.prefetched.runtime") == "litert"
        assert "LiteRT.js" in page.inner_text("#offline")
        page.check("input[value=device]")
        page.wait_for_function("pocketcnn.state.mode === 'device'", timeout=TIMEOUT_MS)
        assert page.evaluate("crossOriginIsolated") is True
        assert page.evaluate("pocketcnn.state.runtime") == "litert"
        assert page.evaluate("pocketcnn.state.device.threads") == min(4, page.evaluate("navigator.hardwareConcurrency"))
        cards = upload_and_read(page, images)
        check_litert(page, cards, images, expected_litert)
        # no request carried a photo: no POST, no body with an image's bytes; the server counted no image
        assert not [(m, u) for m, u, _ in sent if m != "GET"], sent
        assert not [u for _, u, body in sent if any(photo in body for photo in photos)]
        assert predictions_counted() == counted

        context.set_offline(True)
        page.goto(serve_url)  # no ?mode=: the server cannot be reached, the page offers the device
        page.evaluate("window.pocketcnn.ready")
        assert page.evaluate("pocketcnn.state.mode") == "device"
        assert "cannot be reached" in page.inner_text("#server-note")
        cards = upload_and_read(page, images)
        check_litert(page, cards, images, expected_litert)
        page.goto(serve_url + "?mode=server")  # asked for the server while offline: refused with the reason
        page.evaluate("window.pocketcnn.ready")
        assert page.evaluate("pocketcnn.state.mode") is None
        assert "cannot be reached" in page.inner_text("#status")
        assert not page.is_disabled("input[value=device]")
    finally:
        context.close()


def test_unknown_mode_is_refused_and_nothing_is_sent(page, serve_url, images):
    sent: list[tuple[str, str]] = []
    page.on("request", lambda r: sent.append((r.method, r.url)))
    open_page(page, serve_url + "?mode=bogus")
    status = page.inner_text("#status")
    assert "unknown mode" in status and "bogus" in status, status
    assert page.evaluate("pocketcnn.state.mode") is None
    assert page.is_disabled("#files") and page.is_disabled("#camera")
    assert "classified" not in page.inner_text("#mode-note")
    # even a photo handed to the page's own API is not classified, and nothing is sent
    names = page.evaluate("""async (bytes) => (await pocketcnn.classify([new File([new Uint8Array(bytes)], 'x.png')]))
                                 .map(r => r.error)""", list(images[0].read_bytes()))
    assert len(names) == 1 and "not classified" in names[0]
    assert not [(m, u) for m, u in sent if m != "GET" or "predict" in u], sent
    open_page(page, serve_url + "?runtime=nope")
    assert "unknown runtime" in page.inner_text("#status")


def test_oversized_image_is_refused_from_its_header_before_decoding(page, serve_url, images, tmp_path):
    page.add_init_script("""{
        const original = window.createImageBitmap;
        window.decodes = 0;
        window.createImageBitmap = (...args) => { window.decodes += 1; return original(...args); };
    }""")
    open_page(page, serve_url + "?mode=device")
    cards = upload_and_read(page, oversized_files(tmp_path))
    for name in ("huge.png", "huge.jpg"):
        assert cards[name]["status"] == "error", cards[name]
        assert "9000x9000" in cards[name]["message"] and "over the limit" in cards[name]["message"], cards[name]
    assert page.evaluate("window.decodes") == 0  # refused before the decoder saw them
    cards = upload_and_read(page, [images[0]])
    assert cards[images[0].name]["status"] == "done" and page.evaluate("window.decodes") == 1


def test_camera_is_the_first_action_on_a_phone(browser, static_url):
    for width, camera_first in ((412, True), (1280, False)):
        context = browser.new_context(viewport={"width": width, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        try:
            page = context.new_page()
            open_page(page, static_url)
            camera = page.locator("label.camera").bounding_box()
            choose = page.locator("label.choose").bounding_box()
            if camera_first:  # a full-width button above everything else a visitor can do
                assert camera["y"] < choose["y"] and camera["width"] > 0.8 * (width - 40), (camera, choose)
                assert page.get_attribute("#camera", "capture") == "environment"
            else:
                assert choose["x"] < camera["x"], (camera, choose)
        finally:
            context.close()


def test_tflite_metadata_read_in_javascript_equals_python(page, static_url, web_dir):
    from pocketcnn.runtime.litert import read_tflite_metadata

    open_page(page, static_url)
    got = page.evaluate("""async () => pocketcnn.tfliteMetadata(
        new Uint8Array(await (await fetch('model.tflite')).arrayBuffer()))""")
    assert got == read_tflite_metadata((web_dir / "model.tflite").read_bytes())
    assert got["layout"] == "NHWC" and got["model"] == "squeezenet1_1"


# ------------------------------------------------------------------------------ LiteRT.js: fp32 or INT8
def int8_tolerance(path: Path) -> float:
    """How far the page's top-1 probability may be from Python LiteRT's on the int8 file.

    Both run the same file with XNNPACK's int8 kernels, but not the same microkernels (WebAssembly
    SIMD in the page, AVX2 natively) and not quite the same input (the page's preprocessing is
    within 1/255 of Python's, which can move an input value across one quantization step): an int8
    activation, and so a dequantized logit, may land one step (the output scale s) away. The softmax
    moves no probability by more than half the largest logit change, so two steps on any logit is at
    most s; that is the tolerance (read from the file's metadata; in the runs so far the page and
    Python agreed to 1e-16, the same kernels giving the same integers).
    """
    from pocketcnn.runtime.litert import read_tflite_metadata

    return float(read_tflite_metadata(path.read_bytes())["quantization"]["output"]["scale"])


def test_litert_times_fp32_and_int8_runs_the_faster_and_int8_equals_python_litert(
        page, static_url, web_dir, images, expected_int8, expected_tflite, tmp_path):
    open_page(page, static_url)
    assert page.evaluate("pocketcnn.state.int8") is True and page.evaluate("pocketcnn.state.runtime") == "litert"
    d = page.evaluate("({precision: pocketcnn.state.device.precision, choice: pocketcnn.state.device.choice})")
    timings = d["choice"]["timings"]
    assert timings["fp32"] > 0 and timings["int8"] > 0 and d["choice"]["asked"] == "auto"
    faster = "int8" if timings["int8"] < 0.95 * timings["fp32"] else "fp32"  # INT8 when 5% faster or more
    assert d["precision"] == d["choice"]["faster"] == faster  # the faster one, measured here
    label = {"int8": "INT8", "fp32": "fp32"}[faster]
    note = page.inner_text("#mode-note")
    assert f"LiteRT.js {label}" in note and f"runs the {label} model (the faster here)" in note, note
    assert "INT8 " in note and "fp32 " in note and note.count(" ms") >= 2, note  # both timings
    assert page.is_visible("#precisions") and page.is_checked("input[name=precision][value=auto]")
    stored = page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('pocketcnn-precision-'))")
    assert len(stored) == 1

    page.check("input[name=precision][value=int8]")  # the visitor's choice
    assert page.evaluate("pocketcnn.state.device.precision") == "int8"
    cards = upload_and_read(page, images)
    tol = int8_tolerance(web_dir / "model-int8.tflite")
    worst = check_against_predict(cards, images, expected_int8, "device", tol=tol)
    print(f"int8: largest top-1 probability difference from Python LiteRT {worst:.2e} (tolerance {tol:.3g})")
    assert "LiteRT.js INT8" in cards[images[0].name]["meta"]
    page.screenshot(path=str(tmp_path / "browser-int8.png"), full_page=True)

    page.check("input[name=precision][value=fp32]")
    again = upload_and_read(page, [images[0]])
    check_against_predict(again, [images[0]], expected_tflite, "device")
    assert "LiteRT.js fp32" in again[images[0].name]["meta"]
    page.reload()  # remembered: no new timing, the visitor's choice kept
    page.evaluate("window.pocketcnn.ready")
    d = page.evaluate("pocketcnn.state.device.choice")
    assert d["remembered"] and d["asked"] == "fp32" and d["timings"] == timings
    assert page.evaluate("pocketcnn.state.device.precision") == "fp32"
    page.goto(static_url + "?precision=int4")
    page.evaluate("window.pocketcnn.ready")
    assert "unknown precision" in page.inner_text("#status") and page.evaluate("pocketcnn.state.mode") is None
