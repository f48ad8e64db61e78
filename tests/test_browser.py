"""The browser page in a real Chromium, driven by Playwright.

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

from pocketcnn.runtime.web import find_ort_web

FMNIST = Path("/usr/share/datasets/fashion-mnist")
CHROMIUM = os.environ.get("POCKETCNN_CHROMIUM", "/usr/lib/chromium/chromium")
N_IMAGES = 24
TOL_PROB = 1e-3

if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set POCKETCNN_CHROMIUM)",
                allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    pytest.skip("Playwright for Python is not installed (pip install playwright)", allow_module_level=True)
if find_ort_web() is None:
    pytest.skip("the ONNX Runtime Web files are missing: run 'pocketcnn web-runtime'", allow_module_level=True)


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
    result = export_web(load_model_source(root / "run" / "last.pt"), root / "web", data_dir=data_dir)
    assert result.verification.passed and result.model == "squeezenet1_1"
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
        f"document.querySelectorAll('#results .card:not([data-status=pending])').length >= {want}", timeout=60_000)
    cards = page.eval_on_selector_all(
        "#results .card", """cards => cards.map(c => ({...c.dataset,
            message: (c.querySelector('.message') || {}).textContent || null,
            bars: c.querySelectorAll('.bars li').length,
            meta: (c.querySelector('.meta') || {}).textContent}))""")
    return {c["name"]: c for c in cards[: len(files)]}


def check_against_predict(cards: dict[str, dict], images: list[Path], expected: dict[str, dict], mode: str) -> None:
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
        assert abs(float(card["top1Prob"]) - top["prob"]) <= TOL_PROB, (name, card["top1Prob"], top["prob"])
        assert float(card["latencyMs"]) > 0


# ------------------------------------------------------------------------------ tests
def test_serve_page_server_and_device_modes_match_predict(page, serve_url, images, expected, tmp_path):
    import httpx

    for path in ("", "static/ort/ort-wasm-simd-threaded.mjs"):
        headers = httpx.get(serve_url + path).headers
        assert headers["cross-origin-opener-policy"] == "same-origin"
        assert headers["cross-origin-embedder-policy"] == "require-corp"
    open_page(page, serve_url)
    assert page.evaluate("crossOriginIsolated") is True
    assert page.evaluate("pocketcnn.state.mode") == "server"
    model_line = page.inner_text("#model")
    assert "squeezenet1_1" in model_line and "parameters" in model_line and "MB" in model_line

    cards = upload_and_read(page, images)
    check_against_predict(cards, images, expected, "server")
    assert "server" in cards[images[0].name]["meta"]
    page.screenshot(path=str(tmp_path / "browser-server.png"), full_page=True)

    page.check("input[value=device]")
    page.wait_for_function("pocketcnn.state.mode === 'device'", timeout=60_000)
    threads = page.evaluate("pocketcnn.state.device.threads")
    assert threads == min(4, page.evaluate("navigator.hardwareConcurrency")) and threads >= 1
    assert page.evaluate("pocketcnn.state.device.info.name") == "squeezenet1_1"
    cards = upload_and_read(page, images)
    check_against_predict(cards, images, expected, "device")
    assert "WebAssembly" in cards[images[0].name]["meta"]
    page.screenshot(path=str(tmp_path / "browser-device.png"), full_page=True)

    # after the error card the page still classifies the next image
    again = upload_and_read(page, [images[0]])
    check_against_predict(again, [images[0]], expected, "device")


def test_static_folder_classifies_on_one_thread(page, static_url, web_dir, images, expected, tmp_path):
    import httpx

    assert "cross-origin-embedder-policy" not in httpx.get(static_url).headers
    assert sorted(p.relative_to(web_dir).as_posix() for p in web_dir.rglob("*") if p.is_file()) == [
        "README.txt", "index.html", "model.onnx", "static/app.js", "static/ort/onnxruntime-web.json",
        "static/ort/ort-wasm-simd-threaded.mjs", "static/ort/ort-wasm-simd-threaded.wasm",
        "static/ort/ort.wasm.min.js", "static/preprocess.js", "static/style.css"]
    open_page(page, static_url)
    assert page.evaluate("crossOriginIsolated") is False
    assert page.evaluate("pocketcnn.state.mode") == "device"
    assert page.is_disabled("input[value=server]")
    assert page.evaluate("pocketcnn.state.device.threads") == 1
    cards = upload_and_read(page, images)
    check_against_predict(cards, images, expected, "device")
    assert "1 thread" in cards[images[0].name]["meta"]
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


def test_onnx_metadata_read_in_javascript_equals_python(page, serve_url, web_dir):
    from pocketcnn.artifacts.metadata import read_onnx_metadata

    open_page(page, serve_url)
    got = page.evaluate("""async () => pocketcnn.onnxMetadata(
        new Uint8Array(await (await fetch('v1/model.onnx')).arrayBuffer()))""")
    assert got == read_onnx_metadata(web_dir / "model.onnx")

