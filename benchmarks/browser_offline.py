"""Start-up of the browser page: first visit, second (cached) visit and an offline visit.

    python benchmarks/browser_offline.py [--cases mobilenet_v2:224 squeezenet1_1:28] [--out runs/bench/browser_offline.json]

For each model (torchvision-constructor weights; start-up does not depend on their values),
written with ``export_web`` (with ``model-int8.tflite``, as a checkpoint with its data gets:
LiteRT.js fetches both ``.tflite`` files and times them on the first visit) and delivered both ways, ``pocketcnn serve`` (COOP/COEP: the
threaded LiteRT.js build) and the static folder under ``python -m http.server`` (one thread),
with each device runtime (``?mode=device&runtime=litert|ort``), in headless Debian Chromium:

1. first visit, a fresh browser context (empty HTTP cache, no service worker): from
   ``page.goto`` to the first photo's answer on the page;
2. second visit, the same context, a new page: the same;
3. offline (``context.set_offline(True)``), a new page: the same.

Bytes fetched: the servers' own request logs (every request that reached them), each logged
GET that answered 200 counted with the length of its body (fetched again afterwards, outside
the browser). Markdown table on stdout, JSON to ``--out``; the load average is recorded (the
machine's cores are shared).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
from browser_latency import CHROMIUM, HOST, free_port, make_source, random_int8_images, test_image  # noqa: E402

CASES = [("squeezenet1_1", 28), ("mobilenet_v2", 224)]
REQUEST = re.compile(r'"(GET|HEAD|POST) (\S+) HTTP/[\d.]+" (\d{3})')


def start(cmd: list[str], url: str, log: Path) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{url} did not answer")


def settle(log: Path, quiet_s: float = 2.0, limit_s: float = 30.0) -> None:
    """Wait until the server's log has not grown for ``quiet_s``: the worker's update check of
    sw.js runs after a visit's navigation, and belongs to that visit."""
    deadline = time.monotonic() + limit_s
    size, since = log.stat().st_size, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.2)
        if log.stat().st_size != size:
            size, since = log.stat().st_size, time.monotonic()


def logged(log: Path) -> list[tuple[str, str, int]]:
    return [(m[1], m[2], int(m[3])) for m in REQUEST.finditer(log.read_text(errors="replace"))]


def body_bytes(base: str, requests: list[tuple[str, str, int]], cache: dict[str, int]) -> int:
    """Bytes of the bodies of the logged 200 GETs (each path fetched once here to measure it)."""
    import httpx

    total = 0
    for method, path, status in requests:
        if method != "GET" or status != 200:
            continue
        if path not in cache:
            cache[path] = len(httpx.get(base + path.lstrip("/"), timeout=60).content)
        total += cache[path]
    return total


def visit(context, url: str, photo: Path) -> float:
    """Seconds from navigation to the first photo's answer on the page."""
    page = context.new_page()
    t0 = time.perf_counter()
    page.goto(url)
    page.evaluate("pocketcnn.ready")
    page.set_input_files("#files", [str(photo)])
    page.wait_for_function("document.querySelector('#results .card[data-status=done]')", timeout=300_000)
    seconds = time.perf_counter() - t0
    status = page.evaluate("pocketcnn.state.offline")
    page.close()
    if not status["ready"]:
        raise RuntimeError(f"{url}: the page is not ready to work offline: {status}")
    return seconds


def measure(browser, base: str, query: str, log: Path, photo: Path) -> dict[str, float]:
    sizes: dict[str, int] = {}
    context = browser.new_context()
    try:
        settle(log)
        n0 = len(logged(log))
        first = visit(context, base + query, photo)
        settle(log)
        n1 = len(logged(log))
        second = visit(context, base + query, photo)
        settle(log)
        n2 = len(logged(log))
        context.set_offline(True)
        offline = visit(context, base + query, photo)
        settle(log)
        n3 = len(logged(log))
    finally:
        context.close()
    reqs = logged(log)
    first_b = body_bytes(base, reqs[n0:n1], sizes)
    second_b = body_bytes(base, reqs[n1:n2], sizes)
    return {"first_s": round(first, 3), "second_s": round(second, 3), "offline_s": round(offline, 3),
            "first_bytes": first_b, "second_bytes": second_b, "second_share": second_b / first_b,
            "first_requests": n1 - n0, "second_requests": n2 - n1, "second_paths": [p for _, p, _ in reqs[n1:n2]],
            "offline_requests_reaching_server": n3 - n2, "offline_paths": [p for _, p, _ in reqs[n2:n3]]}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | input | delivery | runtime | first visit: start-up to first answer, fetched | "
             "second visit | second / first bytes | offline |", "|" + " --- |" * 8]
    for r in rows:
        lines.append(f"| {r['model']} | {r['input']} | {r['delivery']} | {r['runtime']} | {r['first_s']:.2f} s, "
                     f"{r['first_bytes'] / 1e6:.2f} MB | {r['second_s']:.2f} s, {r['second_bytes'] / 1e3:.1f} kB | "
                     f"{100 * r['second_share']:.3f}% | {r['offline_s']:.2f} s, "
                     f"{r['offline_requests_reaching_server']} requests reach the server |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=None, metavar="MODEL:SIZE")
    ap.add_argument("--runtimes", nargs="+", default=["litert", "ort"], choices=["litert", "ort"])
    ap.add_argument("--out", type=Path, default=Path("runs") / "bench" / "browser_offline.json")
    args = ap.parse_args(argv)

    import torch
    from playwright.sync_api import sync_playwright

    from pocketcnn.export.web import export_web

    torch.set_num_threads(2)
    cases = CASES if not args.cases else [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pocketcnn-offline-bench-") as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for name, size in cases:
            source = make_source(name, size)
            folder = Path(tmp) / f"{name}-{size}"
            export_web(source, folder, int8=True, int8_data=random_int8_images(source))  # as a real export ships
            image, image_name = test_image(size)
            photo = Path(tmp) / image_name
            photo.write_bytes(image)
            for delivery in ("serve", "static"):
                port = free_port()
                log = Path(tmp) / f"{name}-{size}-{delivery}.log"
                base = f"http://{HOST}:{port}/"
                if delivery == "serve":
                    cmd = [sys.executable, "-m", "pocketcnn", "serve", str(folder / "model.onnx"), "--host", HOST,
                           "--port", str(port), "--log-level", "info"]
                else:
                    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", HOST, "--directory", str(folder)]
                proc = start(cmd, base + "manifest.webmanifest", log)
                try:
                    for runtime in args.runtimes:
                        nums = measure(browser, base, f"?mode=device&runtime={runtime}", log, photo)
                        row = {"model": name, "input": "x".join(map(str, source.input_size)), "delivery": delivery,
                               "runtime": runtime, **nums, "load": os.getloadavg()[0]}
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
                finally:
                    proc.terminate()
                    proc.wait(20)
        version = browser.version
        browser.close()
    table = markdown(rows)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"chromium": version, "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
            "command": "python benchmarks/browser_offline.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.write_text(json.dumps({"rows": rows, **meta}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
