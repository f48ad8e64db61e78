"""Load test of ``pocketcnn serve`` on loopback, against the model's own batch-32 speed.

    python benchmarks/serve_load.py MODEL.onnx [--requests 3000] [--concurrency 1,8,32] [--out FILE.json]
    python benchmarks/serve_load.py --make squeezenet1_1 --size 224 --in-chans 3   # export one first (needs torch)

Starts ``pocketcnn serve MODEL`` on 127.0.0.1 (only loopback, a free port), sends one
image per request (a PNG at the model's input size, as the raw body) from async clients,
one keep-alive connection each, ``--requests`` requests at each concurrency after a warm-up, and reports
requests/s, images/s, p50 / p99 latency, errors and the mean batch the server ran (from its
``/metrics``). In the same run, with the server idle, the reference: the same file in
:class:`pocketcnn.runtime.onnx.OnnxRunner` on batches of 32 preprocessed images (one
session, every CPU: the recipe's default). Target: images/s at
concurrency 32 >= 70% of the reference. Markdown table on stdout, JSON to ``--out``.

The load generator shares the machine's CPUs with the server, so its own cost is part of
what is measured; by default it is a minimal keep-alive HTTP/1.1 client on asyncio streams
(``--client raw``). ``--client httpx`` uses one ``httpx.AsyncClient`` per connection: on
the 2-core development machine httpx itself was the bottleneck (``GET /healthz``: 340-640
requests/s through httpx, 2,700-3,900 through the raw client, same server).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only, never another address
TARGET = 0.70


def make_model(folder: Path, name: str, size: int, in_chans: int) -> Path:
    """Export ``name`` (random weights, 10 classes) at ``in_chans x size x size`` in a child with torch."""
    code = f"""
import torch
from pocketcnn.artifacts.metadata import build_metadata
from pocketcnn.data.spec import DataSpec, IMAGENET_MEAN, IMAGENET_STD
from pocketcnn.export.onnx import export_onnx
from pocketcnn import create_model
torch.manual_seed(0)
kw = dict(num_classes=10, in_chans={in_chans}, small_input={size} < 64)
m = create_model({name!r}, **kw).eval()
mean, std = ((0.286,), (0.353,)) if {in_chans} == 1 else (IMAGENET_MEAN, IMAGENET_STD)
spec = DataSpec("bench", 10, {in_chans}, {size}, mean, std, tuple(f"class{{i}}" for i in range(10)),
                {size} if {size} < 64 else round({size} * 256 / 224))
export_onnx(m, {str(folder / "model.onnx")!r}, input_size=({in_chans}, {size}, {size}), dynamic_batch=True,
            metadata=build_metadata({name!r}, kw, spec, params=sum(p.numel() for p in m.parameters())))
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    return folder / "model.onnx"


def test_image(size: int, in_chans: int) -> bytes:
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size]
    gray = ((np.sin(xx / (size / 6)) + np.cos(yy / (size / 5)) + 2) * 60).astype(np.uint8)
    img = Image.fromarray(gray) if in_chans == 1 else Image.fromarray(np.stack([gray, gray[::-1], gray.T], -1))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(model: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "pocketcnn", "serve", str(model), "--host", HOST, "--port", str(port),
           "--log-level", "warning", "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
           "--workers", str(args.workers)]
    for key in ("threads", "runs"):
        if getattr(args, key) is not None:
            cmd += [f"--{key}", str(getattr(args, key))]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start within 60 s")


def batch_stats(url: str) -> tuple[float, float]:
    """``(sum, count)`` of the server's batch-size histogram."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    get = lambda name: float(re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M).group(1))  # noqa: E731
    return get("pocketcnn_batch_size_sum"), get("pocketcnn_batch_size_count")


class RawConnection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: POST, read status and body."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(*self.address)
        assert self.reader is not None
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.address[0]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        length = next(int(v) for k, _, v in (line.partition(b":") for line in lines[1:])
                      if k.strip().lower() == b"content-length")
        return int(lines[0].split()[1]), await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(url: str, body: bytes, requests: int, concurrency: int, client: str = "raw") -> dict:
    """``requests`` POSTs by ``concurrency`` workers, each on its own keep-alive connection;
    latencies of the successful ones. ``client``: "raw" (:class:`RawConnection`) or "httpx"."""
    latencies: list[float] = []
    errors = 0
    todo = iter(range(requests))

    async def worker() -> None:
        nonlocal errors
        conn = RawConnection(url) if client == "raw" else httpx.AsyncClient(base_url=url, timeout=60)
        try:
            for _ in todo:
                start = time.perf_counter()
                try:
                    if isinstance(conn, RawConnection):
                        status, data = await conn.post("/v1/predict", body, "image/png")
                    else:
                        r = await conn.post("/v1/predict", content=body, headers={"content-type": "image/png"})
                        status, data = r.status_code, r.content
                    ok = status == 200 and "topk" in json.loads(data)["predictions"][0]
                except (OSError, asyncio.IncompleteReadError, httpx.HTTPError, ValueError, KeyError, StopIteration):
                    ok = False
                    if isinstance(conn, RawConnection):  # start over on a new connection
                        await conn.close()
                        conn = RawConnection(url)
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1
        finally:
            await (conn.close() if isinstance(conn, RawConnection) else conn.aclose())

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    lat = sorted(latencies) or [float("nan")]
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
    return {"concurrency": concurrency, "requests": requests, "errors": errors, "wall_s": wall,
            "requests_per_s": requests / wall, "images_per_s": len(latencies) / wall,
            "p50_ms": pick(0.50), "p99_ms": pick(0.99), "mean_ms": statistics.fmean(lat) * 1000}


def reference(model: Path, body: bytes, threads: int | None = None, min_time: float = 3.0) -> dict:
    """Images/s of the runtime alone on batches of 32, one session with every CPU (the recipe's
    default), best of 3 rounds of >= min_time / 3 s."""
    from pocketcnn.runtime.onnx import OnnxRunner
    from pocketcnn.runtime.predictor import Predictor, open_model

    pred: Predictor = open_model(model, threads=threads)
    runner: OnnxRunner = pred.runner  # type: ignore[assignment]
    batch = np.stack([pred.preprocess(body)] * 32)
    for _ in range(5):
        runner.run(batch)
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < min_time / 3:
            runner.run(batch)
            n += 1
        best = max(best, n * 32 / elapsed)
    return {"batch": 32, "threads": runner.threads, "images_per_s": best}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, nargs="?")
    ap.add_argument("--make", metavar="NAME", help="export this registered model first (random weights; needs torch)")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--in-chans", type=int, default=1)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="the server's --threads (default: its own)")
    ap.add_argument("--runs", type=int, default=None, help="the server's --runs (default: its own)")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw",
                    help="load generator: raw (asyncio streams, default) or httpx (slower: see the docstring)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "serve_load.json")
    args = ap.parse_args(argv)
    if (args.model is None) == (args.make is None):
        ap.error("give MODEL.onnx or --make NAME")

    with tempfile.TemporaryDirectory(prefix="pocketcnn-serve-load-") as tmp:
        model = args.model or make_model(Path(tmp), args.make, args.size, args.in_chans)
        from pocketcnn.runtime.predictor import open_model

        spec = open_model(model, threads=1).spec
        body = test_image(spec.image_size, spec.in_chans)
        proc, url = start_server(model, args)
        rows = []
        try:
            asyncio.run(load(url, body, min(200, args.requests), 8, args.client))  # warm-up
            for c in (int(x) for x in args.concurrency.split(",")):
                s0, n0 = batch_stats(url)
                row = asyncio.run(load(url, body, args.requests, c, args.client))
                s1, n1 = batch_stats(url)
                row["mean_batch"] = (s1 - s0) / max(1.0, n1 - n0)
                rows.append(row)
            ref = reference(model, body)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        model_name = str(args.make or model)

    print(f"`pocketcnn serve {model_name}` ({spec.in_chans}x{spec.image_size}x{spec.image_size}), "
          f"{args.workers} worker(s), max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms, "
          f"{os.cpu_count()} CPUs shared with the load generator\n")
    print("| concurrency | requests/s | images/s | p50 | p99 | errors | mean batch | vs runtime batch 32 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        r["ratio"] = r["images_per_s"] / ref["images_per_s"]
        print(f"| {r['concurrency']} | {r['requests_per_s']:.0f} | {r['images_per_s']:.0f} | {r['p50_ms']:.1f} ms "
              f"| {r['p99_ms']:.1f} ms | {r['errors']} | {r['mean_batch']:.1f} | {100 * r['ratio']:.0f}% |")
    print(f"| runtime alone, batch 32 | | {ref['images_per_s']:.0f} | | | | 32 | 100% |")
    at32 = next((r for r in rows if r["concurrency"] == 32), None)
    if at32 is not None:
        print(f"\nconcurrency 32: {100 * at32['ratio']:.0f}% of the runtime's batch-32 images/s "
              f"(target >= {100 * TARGET:.0f}%: {'met' if at32['ratio'] >= TARGET else 'MISSED'})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("requests", "max_batch", "max_wait_ms", "workers", "threads", "runs",
                                              "client")}
    args.out.write_text(json.dumps({"model": model_name, "input": [spec.in_chans, spec.image_size, spec.image_size],
                                    "settings": settings, "cpus": os.cpu_count(), "rows": rows, "reference": ref,
                                    "target": TARGET}, indent=2))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
