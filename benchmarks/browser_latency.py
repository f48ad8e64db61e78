"""Latency of the browser page: LiteRT.js and ONNX Runtime Web in headless Chromium against native runtimes.

    python benchmarks/browser_latency.py [--repeats 30] [--cases mobilenet_v2:224 ...] [--out runs/bench/browser_latency.json]

For squeezenet1_1, mobilenet_v3_small and mobilenet_v2, each at the Fashion-MNIST shape
(1x28x28, small_input, 10 classes) and the ImageNet shape (3x224x224, 1000 classes), with
the torchvision-constructor (random) weights: timing does not depend on the weights' values.

* the model is written with ``export_web`` (batch-1 ONNX, fp32 NHWC ``.tflite`` and the
  int8 ``model-int8.tflite``, calibrated here on 64 random normal images: the weights are
  random too, and timing does not depend on either) and served by ``pocketcnn serve`` on
  127.0.0.1 (COOP/COEP: threads allowed);
* in headless Chromium (Debian's, ``/usr/lib/chromium/chromium``, through Playwright), one
  page per setting, the page runs the model on the device with each runtime (``?runtime=litert``:
  LiteRT.js on the fp32 ``.tflite`` (``&precision=fp32``) and on the int8 one
  (``&precision=int8``); ``?runtime=ort``: ONNX Runtime Web on the ONNX file) on 1 and
  2 WebAssembly threads (``?threads=N``): per image, the model alone and decoding +
  preprocessing in JavaScript; and which of the two ``.tflite`` files the page picks by itself
  (``precision=auto``: its own quick timing of both on a blank input);
* the server path from the same page: ``POST v1/predict`` with one image, the round trip
  the page sees and the server's own ``latency_ms``;
* the reference, in the same run: native ONNX Runtime (Python) and native LiteRT
  (``ai-edge-litert``, XNNPACK; fp32 and int8) at batch 1 on the same files, 1 and 2 threads,
  the model alone.

Each number is the median of ``--repeats`` runs after 5 warm-up runs, the same input every
run. Test images: a 28x28 gray PNG for the 28 models, a 640x480 JPEG photo for the 224
models (resized to 256, then cropped). Page weight per runtime: what the browser downloads
for the device mode (model file + that runtime's files as a cross-origin isolated page gets
them + page files), uncompressed. Markdown table on stdout, JSON to ``--out``.

The machine's 2 cores are shared (with other jobs too): the load average is recorded.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("POCKETCNN_CHROMIUM", "/usr/lib/chromium/chromium")
HOST = "127.0.0.1"
CASES = [("squeezenet1_1", 28), ("squeezenet1_1", 224), ("mobilenet_v3_small", 28), ("mobilenet_v3_small", 224),
         ("mobilenet_v2", 28), ("mobilenet_v2", 224)]
SETTINGS = (("litert", "fp32"), ("litert", "int8"), ("ort", None))  # (runtime, LiteRT.js file)
WARMUP = 5


def make_source(name: str, size: int):
    import torch

    from pocketcnn import create_model
    from pocketcnn.artifacts.source import ModelSource
    from pocketcnn.data.spec import DataSpec, imagenet_spec

    torch.manual_seed(0)
    if size == 28:
        kwargs = {"num_classes": 10, "in_chans": 1, "small_input": True}
        spec = DataSpec("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,),
                        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"), 28)
    else:
        kwargs = {"num_classes": 1000, "in_chans": 3}
        spec = imagenet_spec(size)
    model = create_model(name, **kwargs).eval()
    return ModelSource(model, name, kwargs, spec, None, "model")


def random_int8_images(source):
    """Calibration (and scoring) images for the int8 file: random normal, as the weights are random."""
    import torch

    from pocketcnn.export.tflite import Int8Images

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, *source.input_size, generator=gen)
    return Int8Images(x, x[:16], torch.zeros(16, dtype=torch.long), "64 random normal images", "16 random inputs")


def test_image(size: int) -> tuple[bytes, str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    if size == 28:
        yy, xx = np.mgrid[0:28, 0:28]
        img = Image.fromarray(((np.sin(xx / 3.0) * np.cos(yy / 4.0) + 1) * 110).astype(np.uint8))
        fmt, name = "PNG", "image.png"
    else:
        yy, xx = np.mgrid[0:480, 0:640]
        base = np.stack([xx * 255 // 640, yy * 255 // 480, (xx + yy) * 255 // 1120], -1)
        img = Image.fromarray(np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8))
        fmt, name = "JPEG", "photo.jpg"
    buf = io.BytesIO()
    img.save(buf, fmt, quality=90)
    return buf.getvalue(), name


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def serve(model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pocketcnn", "serve", str(model), "--host", HOST, "--port",
                             str(port), "--log-level", "warning"], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}/"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"pocketcnn serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("pocketcnn serve did not start")


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values[WARMUP:]), 3)


def python_reference(model: Path, image: bytes, source, repeats: int) -> dict[str, float]:
    from pocketcnn.runtime.images import preprocess
    from pocketcnn.runtime.litert import LiteRtRunner
    from pocketcnn.runtime.onnx import ort_session

    pre = []
    for _ in range(repeats + WARMUP):
        t = time.perf_counter()
        x = preprocess(image, source.data)
        pre.append((time.perf_counter() - t) * 1000)
    out = {"python_preprocess_ms": median_ms(pre)}
    for threads in (1, 2):
        sess = ort_session(model, threads=threads)
        feed = {sess.get_inputs()[0].name: x[None]}
        times = []
        for _ in range(repeats + WARMUP):
            t = time.perf_counter()
            sess.run(None, feed)
            times.append((time.perf_counter() - t) * 1000)
        out[f"ort_python_{threads}t_ms"] = median_ms(times)
    for file, key in (("model.tflite", "litert"), ("model-int8.tflite", "litert_int8")):
        for threads in (1, 2):  # native LiteRT on the .tflite files the page runs
            runner = LiteRtRunner(model.with_name(file), threads=threads)
            times = []
            for _ in range(repeats + WARMUP):
                t = time.perf_counter()
                runner.run(x[None])
                times.append((time.perf_counter() - t) * 1000)
            out[f"{key}_python_{threads}t_ms"] = median_ms(times)
    return out


def device_numbers(browser, url: str, image: bytes, repeats: int) -> dict[str, float | str]:
    """Each runtime (and LiteRT.js file) on 1 and 2 threads, one page each; what the page picks by itself."""
    out: dict[str, float | str] = {}
    data = list(image)
    for threads in (1, 2):
        for runtime, precision in SETTINGS:
            page = browser.new_page()
            page.goto(f"{url}?mode=device&runtime={runtime}&threads={threads}"
                      + (f"&precision={precision}" if precision else ""))
            page.evaluate("pocketcnn.ready")
            assert page.evaluate("pocketcnn.state.mode") == "device", page.inner_text("#status")
            assert page.evaluate("pocketcnn.state.device.runtime") == runtime
            assert page.evaluate("pocketcnn.state.device.precision || null") == precision
            got = page.evaluate("pocketcnn.state.device.threads")
            assert got == threads, f"asked for {threads} threads, the page runs {got}"
            t = page.evaluate("([b, n]) => pocketcnn.timeDevice(new Uint8Array(b), n)", [data, repeats + WARMUP])
            key = f"{runtime}_int8" if precision == "int8" else runtime
            out[f"{key}_wasm_{threads}t_ms"] = median_ms(t["model"])
            out[f"{key}_js_preprocess_{threads}t_ms"] = median_ms(t["preprocess"])
            page.close()
        page = browser.new_page()  # precision=auto: the page times both .tflite files and picks
        page.goto(f"{url}?mode=device&runtime=litert&threads={threads}")
        page.evaluate("pocketcnn.ready")
        choice = page.evaluate("pocketcnn.state.device.choice")
        out[f"page_picks_{threads}t"] = choice["faster"]
        out[f"page_timing_{threads}t"] = f"int8 {choice['timings']['int8']:.1f} / fp32 {choice['timings']['fp32']:.1f}"
        page.close()
    return out


def server_numbers(browser, url: str, image: bytes, name: str, repeats: int) -> dict[str, float]:
    """``POST v1/predict`` with one image from the page: the round trip it sees and the server's own latency."""
    page = browser.new_page()
    page.goto(f"{url}?mode=server")
    page.evaluate("pocketcnn.ready")
    t = page.evaluate("([b, n, name]) => pocketcnn.timeServer(new Uint8Array(b), n, name)",
                      [list(image), repeats + WARMUP, name])
    page.close()
    return {"server_round_trip_ms": median_ms(t["roundTrip"]), "server_latency_ms": median_ms(t["server"])}


def markdown(rows: list[dict]) -> str:
    head = ("| model | input | LiteRT.js fp32 1 / 2 threads | LiteRT.js INT8 1 / 2 threads | INT8 speed-up 1 / 2 | "
            "page picks 1 / 2 | ONNX Runtime Web 1 / 2 threads | LiteRT.js fp32 speed-up 1 / 2 | "
            "native LiteRT fp32 1 / 2 | native LiteRT INT8 1 / 2 | native ONNX Runtime 1 / 2 | "
            "page weight LiteRT.js fp32 / INT8 / ORT Web | JS decode + preprocess | server round trip (server's own) |")
    lines = [head, "|" + " --- |" * 14]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['litert_wasm_1t_ms']:.2f} / {r['litert_wasm_2t_ms']:.2f} ms | "
            f"{r['litert_int8_wasm_1t_ms']:.2f} / {r['litert_int8_wasm_2t_ms']:.2f} ms | "
            f"{r['int8_speedup_1t']:.2f}x / {r['int8_speedup_2t']:.2f}x | "
            f"{r['page_picks_1t']} / {r['page_picks_2t']} | "
            f"{r['ort_wasm_1t_ms']:.2f} / {r['ort_wasm_2t_ms']:.2f} ms | {r['speedup_1t']:.2f}x / {r['speedup_2t']:.2f}x | "
            f"{r['litert_python_1t_ms']:.2f} / {r['litert_python_2t_ms']:.2f} ms | "
            f"{r['litert_int8_python_1t_ms']:.2f} / {r['litert_int8_python_2t_ms']:.2f} ms | "
            f"{r['ort_python_1t_ms']:.2f} / {r['ort_python_2t_ms']:.2f} ms | "
            f"{r['page_bytes_litert'] / 1e6:.1f} / {r['page_bytes_litert_int8'] / 1e6:.1f} / "
            f"{r['page_bytes_ort'] / 1e6:.1f} MB | "
            f"{r['litert_js_preprocess_1t_ms']:.2f} ms | {r['server_round_trip_ms']:.2f} ms "
            f"({r['server_latency_ms']:.2f}) |")
    return "\n".join(lines)


def run_case(browser, name: str, size: int, tmp: Path, repeats: int, litert) -> dict:
    """One model at one size: export the folder, serve it, time it in the page and natively; its table row."""
    from pocketcnn.export.web import export_web

    source = make_source(name, size)
    folder = tmp / f"{name}-{size}"
    result = export_web(source, folder, int8=True, int8_data=random_int8_images(source))
    model = folder / "model.onnx"
    image, image_name = test_image(size)
    proc, url = serve(model, tmp / f"{name}-{size}.log")
    try:
        nums = {**device_numbers(browser, url, image, repeats), **server_numbers(browser, url, image, image_name,
                                                                                 repeats)}
    finally:
        proc.terminate()
        proc.wait(20)
    nums.update(python_reference(model, image, source, repeats))
    page_litert = litert.build_bytes("threaded") + result.page_bytes
    return {"model": name, "input": "x".join(map(str, source.input_size)), "params": source.params,
            "image": image_name, "model_bytes": result.model_bytes, "tflite_bytes": result.tflite_bytes,
            "int8_bytes": result.int8_bytes, "runtime_bytes": result.runtime_bytes,
            "litert_bytes_threaded": litert.build_bytes("threaded"), "page_files_bytes": result.page_bytes,
            "page_bytes_ort": result.model_bytes + result.runtime_bytes + result.page_bytes,
            "page_bytes_litert": result.tflite_bytes + page_litert,
            "page_bytes_litert_int8": result.int8_bytes + page_litert,
            "speedup_1t": nums["ort_wasm_1t_ms"] / nums["litert_wasm_1t_ms"],
            "speedup_2t": nums["ort_wasm_2t_ms"] / nums["litert_wasm_2t_ms"],
            "int8_speedup_1t": nums["litert_wasm_1t_ms"] / nums["litert_int8_wasm_1t_ms"],
            "int8_speedup_2t": nums["litert_wasm_2t_ms"] / nums["litert_int8_wasm_2t_ms"], **nums}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--cases", nargs="+", default=None, metavar="MODEL:SIZE",
                    help="only these cases, e.g. mobilenet_v2:224 (default: all six)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "browser_latency.json")
    ap.add_argument("--md", type=Path, default=None, help="also write the Markdown table here")
    args = ap.parse_args(argv)

    import torch
    from playwright.sync_api import sync_playwright

    from pocketcnn.runtime.web import require_litert_js, require_ort_web

    torch.set_num_threads(2)
    runtime = require_ort_web()
    litert = require_litert_js()
    cases = CASES if not args.cases else [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pocketcnn-browser-bench-") as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for name, size in cases:
            row = run_case(browser, name, size, Path(tmp), args.repeats, litert)
            rows.append(row)
            print(f"{name} {row['input']}: {json.dumps({k: v for k, v in row.items() if k.endswith(('_ms', '_t'))})} "
                  f"load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
        version = browser.version
        browser.close()
    table = markdown(rows)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"chromium": version, "onnxruntime_web": runtime.version, "litert_js": litert.version,
            "repeats": args.repeats, "warmup": WARMUP, "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
            "cpu": cpu_model(), "onnxruntime": __import__("onnxruntime").__version__,
            "command": "python benchmarks/browser_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.write_text(json.dumps({"rows": rows, **meta}, indent=2) + "\n")
    if args.md:
        args.md.write_text(table + "\n")
    return 0


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
