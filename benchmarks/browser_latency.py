"""Latency of the browser page: LiteRT.js and ONNX Runtime Web in headless Chromium against native runtimes.

    python benchmarks/browser_latency.py [--repeats 30] [--cases mobilenet_v2:224 ...] [--out runs/bench/browser_latency.json]

For squeezenet1_1, mobilenet_v3_small and mobilenet_v2, each at the Fashion-MNIST shape
(1x28x28, small_input, 10 classes) and the ImageNet shape (3x224x224, 1000 classes), with
the torchvision-constructor (random) weights: timing does not depend on the weights' values.

* the model is written with ``export_web`` (batch-1 ONNX and fp32 NHWC ``.tflite``, each
  verified against PyTorch) and served by ``pocketcnn serve`` on 127.0.0.1 (COOP/COEP:
  threads allowed);
* in headless Chromium (Debian's, ``/usr/lib/chromium/chromium``, through Playwright), one
  page per setting, the page runs the model on the device with each runtime (``?runtime=litert``:
  LiteRT.js on the ``.tflite``; ``?runtime=ort``: ONNX Runtime Web on the ONNX file) on 1 and
  2 WebAssembly threads (``?threads=N``): per image, the model alone and decoding +
  preprocessing in JavaScript;
* the server path from the same page: ``POST v1/predict`` with one image, the round trip
  the page sees and the server's own ``latency_ms``;
* the reference, in the same run: native ONNX Runtime (Python) and native LiteRT
  (``ai-edge-litert``, XNNPACK) at batch 1 on the same files, 1 and 2 threads, the model alone.

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
RUNTIMES = ("litert", "ort")
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
    for threads in (1, 2):  # native LiteRT on the .tflite file the page runs
        runner = LiteRtRunner(model.with_suffix(".tflite"), threads=threads)
        times = []
        for _ in range(repeats + WARMUP):
            t = time.perf_counter()
            runner.run(x[None])
            times.append((time.perf_counter() - t) * 1000)
        out[f"litert_python_{threads}t_ms"] = median_ms(times)
    return out


def browser_numbers(browser, url: str, image: bytes, name: str, repeats: int) -> dict[str, float]:
    out: dict[str, float] = {}
    data = list(image)
    for runtime in RUNTIMES:
        for threads in (1, 2):
            page = browser.new_page()
            page.goto(f"{url}?mode=device&runtime={runtime}&threads={threads}")
            page.evaluate("pocketcnn.ready")
            assert page.evaluate("pocketcnn.state.mode") == "device", page.inner_text("#status")
            assert page.evaluate("pocketcnn.state.device.runtime") == runtime
            got = page.evaluate("pocketcnn.state.device.threads")
            assert got == threads, f"asked for {threads} threads, the page runs {got}"
            t = page.evaluate("([b, n]) => pocketcnn.timeDevice(new Uint8Array(b), n)", [data, repeats + WARMUP])
            out[f"{runtime}_wasm_{threads}t_ms"] = median_ms(t["model"])
            out[f"{runtime}_js_preprocess_{threads}t_ms"] = median_ms(t["preprocess"])
            page.close()
    page = browser.new_page()
    page.goto(f"{url}?mode=server")
    page.evaluate("pocketcnn.ready")
    t = page.evaluate("([b, n, name]) => pocketcnn.timeServer(new Uint8Array(b), n, name)", [data, repeats + WARMUP, name])
    out["server_round_trip_ms"] = median_ms(t["roundTrip"])
    out["server_latency_ms"] = median_ms(t["server"])
    page.close()
    return out


def markdown(rows: list[dict]) -> str:
    head = ("| model | input | LiteRT.js 1 / 2 threads | ONNX Runtime Web 1 / 2 threads | LiteRT.js speed-up 1 / 2 | "
            "native LiteRT 1 / 2 | native ONNX Runtime 1 / 2 | page weight LiteRT.js / ORT Web | "
            "JS decode + preprocess | server round trip (server's own) |")
    lines = [head, "|" + " --- |" * 10]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['litert_wasm_1t_ms']:.2f} / {r['litert_wasm_2t_ms']:.2f} ms | "
            f"{r['ort_wasm_1t_ms']:.2f} / {r['ort_wasm_2t_ms']:.2f} ms | {r['speedup_1t']:.2f}x / {r['speedup_2t']:.2f}x | "
            f"{r['litert_python_1t_ms']:.2f} / {r['litert_python_2t_ms']:.2f} ms | "
            f"{r['ort_python_1t_ms']:.2f} / {r['ort_python_2t_ms']:.2f} ms | "
            f"{r['page_bytes_litert'] / 1e6:.1f} / {r['page_bytes_ort'] / 1e6:.1f} MB | "
            f"{r['litert_js_preprocess_1t_ms']:.2f} ms | {r['server_round_trip_ms']:.2f} ms "
            f"({r['server_latency_ms']:.2f}) |")
    return "\n".join(lines)


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

    from pocketcnn.export.web import export_web
    from pocketcnn.runtime.web import require_litert_js, require_ort_web

    torch.set_num_threads(2)
    runtime = require_ort_web()
    litert = require_litert_js()
    cases = CASES if not args.cases else [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pocketcnn-browser-bench-") as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for name, size in cases:
            source = make_source(name, size)
            folder = Path(tmp) / f"{name}-{size}"
            result = export_web(source, folder)
            model = folder / "model.onnx"
            image, image_name = test_image(size)
            proc, url = serve(model, Path(tmp) / f"{name}-{size}.log")
            try:
                nums = browser_numbers(browser, url, image, image_name, args.repeats)
            finally:
                proc.terminate()
                proc.wait(20)
            nums.update(python_reference(model, image, source, args.repeats))
            row = {"model": name, "input": "x".join(map(str, source.input_size)), "params": source.params,
                   "image": image_name, "model_bytes": result.model_bytes, "tflite_bytes": result.tflite_bytes,
                   "runtime_bytes": result.runtime_bytes, "litert_bytes_threaded": litert.build_bytes("threaded"),
                   "page_files_bytes": result.page_bytes,
                   "page_bytes_ort": result.model_bytes + result.runtime_bytes + result.page_bytes,
                   "page_bytes_litert": result.tflite_bytes + litert.build_bytes("threaded") + result.page_bytes,
                   "speedup_1t": nums["ort_wasm_1t_ms"] / nums["litert_wasm_1t_ms"],
                   "speedup_2t": nums["ort_wasm_2t_ms"] / nums["litert_wasm_2t_ms"], **nums}
            rows.append(row)
            print(f"{name} {row['input']}: {json.dumps(nums)} load {os.getloadavg()[0]:.2f}", file=sys.stderr,
                  flush=True)
        version = browser.version
        browser.close()
    table = markdown(rows)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"chromium": version, "onnxruntime_web": runtime.version, "litert_js": litert.version,
            "repeats": args.repeats, "warmup": WARMUP, "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
            "onnxruntime": __import__("onnxruntime").__version__,
            "command": "python benchmarks/browser_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.write_text(json.dumps({"rows": rows, **meta}, indent=2) + "\n")
    if args.md:
        args.md.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
