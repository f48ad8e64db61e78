"""Side-by-side load test: ``pocketcnn serve`` (``/v1`` and ``/v2`` binary) against the servers a
team would pick instead, on the same ONNX file, the same photos, the same client and CPUs.

    python -m venv build/peers-venv
    build/peers-venv/bin/pip install -e . litserve fastapi bentoml    # the peers are not project dependencies
    .venv/bin/python benchmarks/serve_peers.py --peers-python build/peers-venv/bin/python

Every server runs under ``--peers-python`` (one environment: the same uvicorn, uvloop, httptools,
ONNX Runtime and Pillow for all), one at a time, on 127.0.0.1, for two models exported here
(``--make``, random weights, needs torch in this interpreter): squeezenet1_1 at 1x28x28 fed real
Fashion-MNIST test images as 28x28 PNGs, and squeezenet1_1 at 3x224x224 fed 640x480 JPEGs
(crops of the photo ``grace_hopper.jpg`` that matplotlib ships). Each server:

* decodes and preprocesses with the same code, ``Predictor.preprocess`` of ``pocketcnn.runtime``
  (Pillow and numpy: what ``predict`` and ``serve`` run), and runs the model with the same
  ONNX Runtime session recipe (``open_model``: all graph optimizations, idle threads sleeping);
* answers the top 5 classes of each photo; its answer for the first photo is checked against
  ``Predictor.predict`` before the load starts;
* gets its framework's recommended batching, written down in :data:`SERVERS`.

The client is the same for all: asyncio workers, one keep-alive HTTP/1.1 connection each
(``serve_load.py``'s minimal client), each request one photo, for ``--seconds`` at each
concurrency after a warm-up. Reported: requests/s, images/s, p50 / p99 latency, errors, the
server's CPU seconds per image (user + system of its whole process tree, from ``/proc``), and
images/s as a share of ONNX Runtime alone on batches of 32 preprocessed images (one session,
every CPU), measured in the same run with the servers stopped. The client shares the CPUs.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import HOST, free_port, make_model, reference  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
TOPK = 5


# ----------------------------------------------------------------------------------------- the servers
# Each peer is a small program run as ``PYTHON FILE MODEL PORT``. Their common part: the model and its
# preprocessing through pocketcnn's light runtime, so every server decodes and runs the same way.
COMMON = """
import sys
import numpy as np
from pocketcnn.runtime.predictor import open_model

MODEL, PORT = sys.argv[1], int(sys.argv[2])


def load(threads=None):
    return open_model(MODEL, threads=threads, spinning=False)  # pocketcnn serve's session recipe
"""

# FastAPI has no batching: the minimal endpoint decodes and runs each request in FastAPI's thread
# pool; one intra-op thread per run, since concurrent requests already use every core.
FASTAPI = COMMON + """
import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool

predictor = load(threads=1)
app = FastAPI()


def classify(body):
    x = predictor.preprocess(body, name="<body>")
    return predictor.top("<body>", predictor.probabilities(x[None])[0], 5).to_dict()


@app.post("/predict")
async def predict(request: Request):
    return {"predictions": [await run_in_threadpool(classify, await request.body())]}


uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
"""

# LitServe's recommended settings: batching with max_batch_size and batch_timeout on the LitAPI
# (0.005 s: pocketcnn serve's default wait); workers_per_device = the CPU count ("for CPU, set to
# the number of cores"), each with a one-thread session; fast_queue (ZeroMQ, "for > 100 RPS").
LITSERVE = COMMON + """
import os

import litserve as ls
from fastapi import Request


class Classifier(ls.LitAPI):
    def setup(self, device):
        self.predictor = load(threads=1)  # one worker process per CPU, as LitServe advises for CPUs

    def decode_request(self, request):  # a multipart form: LitServe parses other bodies as JSON
        return self.predictor.preprocess(request["file"].file.read(), name="<body>")

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return self.predictor.probabilities(x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, probs):
        return {"predictions": [self.predictor.top("<body>", probs, 5).to_dict()]}


if __name__ == "__main__":
    api = Classifier(max_batch_size=32, batch_timeout=0.005)
    cpus = len(os.sched_getaffinity(0))
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=cpus, fast_queue=True)
    server.run(port=PORT, host="127.0.0.1", generate_client_file=False, log_level="warning")
"""

# BentoML's adaptive batching: a batchable API with max_batch_size=32 and the default latency
# objective (max_latency_ms=60000: with 1000 it answered 503 to a third of the requests at
# concurrency 32 on 224x224); workers = CPUs, each with a one-thread session; photos as multipart
# files (list[Path]); the access log off, as every other server here runs without one.
BENTOML = """
import os
from pathlib import Path

import bentoml
import numpy as np
from pocketcnn.runtime.predictor import open_model

MODEL = os.environ["PEER_MODEL"]


@bentoml.service(workers=len(os.sched_getaffinity(0)), traffic={"timeout": 60},
                 logging={"access": {"enabled": False}})
class Classifier:
    def __init__(self):
        self.predictor = open_model(MODEL, threads=1, spinning=False)

    @bentoml.api(batchable=True, max_batch_size=32)
    def classify(self, images: list[Path]) -> list[dict]:
        p = self.predictor
        x = np.stack([p.preprocess(image.read_bytes(), name="<body>") for image in images])
        return [p.top("<body>", row, 5).to_dict() for row in p.probabilities(x)]
"""


class Server(NamedTuple):
    """How to start a server and ask it for one photo's top 5."""

    name: str
    program: str | None  # a peer's source (None: pocketcnn serve)
    path: str
    batching: str

    def request(self, photo: bytes, content_type: str, model: str) -> tuple[str, bytes, dict[str, str]]:
        """``(path, body, headers)`` of one request."""
        if self.name == "pocketcnn serve /v2 binary":
            head = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                           "parameters": {"binary_data_size": 4 + len(photo)}}],
                               "outputs": [{"name": "probabilities",
                                            "parameters": {"classification": TOPK, "binary_data": True}}]}).encode()
            return (f"/v2/models/{model}/infer", head + len(photo).to_bytes(4, "little") + photo,
                    {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"})
        if self.name in ("LitServe", "BentoML"):
            boundary, field = "pocketcnnbench", "file" if self.name == "LitServe" else "images"
            body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"photo\"\r\n"
                    f"Content-Type: {content_type}\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
            return self.path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return self.path, photo, {"Content-Type": content_type}

    def top1(self, status: int, body: bytes, headers: dict[str, str]) -> int | None:
        """The top-1 class index of an answer (None: not an answer)."""
        if status != 200:
            return None
        if self.name == "pocketcnn serve /v2 binary":
            n = int(headers["inference-header-content-length"])
            first = body[n + 4:n + 4 + int.from_bytes(body[n:n + 4], "little")].decode()
            return int(first.split(":")[1])
        answer = json.loads(body)
        record = answer[0] if isinstance(answer, list) else answer["predictions"][0]  # BentoML: a list
        return int(record["topk"][0]["index"])


SERVERS = [
    Server("pocketcnn serve /v1", None, "/v1/predict",
           "dynamic batching: --max-batch 32, --max-wait-ms 5 (the defaults); decoding in a pool of one thread per "
           "CPU; one single-threaded model run per CPU"),
    Server("pocketcnn serve /v2 binary", None, "", "the same server and batcher as /v1"),
    Server("LitServe", LITSERVE, "/predict",
           "max_batch_size=32, batch_timeout=0.005 s; workers_per_device = CPUs (one-thread sessions); fast_queue "
           "(ZeroMQ); photos as multipart files"),
    Server("FastAPI + ONNX Runtime", FASTAPI, "/predict",
           "none (FastAPI has no batching): each request decoded and run in FastAPI's thread pool, one thread per run"),
    Server("BentoML", BENTOML, "/classify",
           "batchable API, max_batch_size=32, max_latency_ms=60000 (adaptive batching, the default objective); workers = CPUs (one-thread "
           "sessions); photos as multipart files"),
]


# ----------------------------------------------------------------------------------------- photos
def fashion_pngs(n: int = 24) -> list[bytes]:
    """``n`` real Fashion-MNIST test images as 28x28 PNGs (gray gradients where the files are missing)."""
    import gzip

    from PIL import Image

    path = FMNIST / "t10k-images-idx3-ubyte.gz"
    if path.is_file():
        with gzip.open(path) as f:
            data = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        arrays = [data[i * (len(data) // n)] for i in range(n)]
    else:
        yy, xx = np.mgrid[0:28, 0:28]
        arrays = [((np.sin(xx / (2 + i)) + np.cos(yy / 3) + 2) * 60).astype(np.uint8) for i in range(n)]
    out = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def camera_jpegs(n: int = 8) -> list[bytes]:
    """``n`` 640x480 JPEGs (quality 90): crops of matplotlib's sample photo ``grace_hopper.jpg``, scaled
    to 640 pixels wide, every other one mirrored."""
    import matplotlib
    from PIL import Image, ImageOps

    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    photo = photo.resize((640, round(photo.height * 640 / photo.width)), Image.BILINEAR)
    out = []
    for i in range(n):
        top = round(i * (photo.height - 480) / max(1, n - 1))
        img = photo.crop((0, top, 640, top + 480))
        buf = io.BytesIO()
        (ImageOps.mirror(img) if i % 2 else img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


# ----------------------------------------------------------------------------------------- measuring
def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and every live descendant (from ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo += children.get(p, [])
    return total


class Connection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams (serve_load.py's, with headers)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        head = f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n" + \
            "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        got = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in got:
            data = await self.reader.readexactly(int(got["content-length"]))
        else:  # chunked
            data = b""
            while (size := int((await self.reader.readuntil(b"\r\n")).strip(), 16)) > 0:
                data += await self.reader.readexactly(size + 2)
                data = data[:-2]
            await self.reader.readuntil(b"\r\n")
        return int(lines[0].split()[1]), data, got

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def load(server: Server, port: int, requests: list[tuple[str, bytes, dict[str, str]]], seconds: float,
               concurrency: int) -> tuple[list[float], int, float]:
    """``concurrency`` workers, each on its own connection, sending ``requests`` round-robin for
    ``seconds``: ``(latencies of the answered requests, errors, wall seconds)``."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        conn = Connection(port)
        try:
            while time.perf_counter() < deadline:
                path, body, headers = requests[next(counter) % len(requests)]
                begin = time.perf_counter()
                try:
                    status, data, got = await conn.post(path, body, headers)
                    ok = server.top1(status, data, got) is not None
                except (OSError, asyncio.IncompleteReadError, ValueError, KeyError, IndexError):
                    ok = False
                    await conn.close()
                if ok:
                    latencies.append(time.perf_counter() - begin)
                else:
                    errors += 1
        finally:
            await conn.close()

    begin = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - begin


def summarize(server: str, concurrency: int, latencies: list[float], errors: int, wall: float, cpu: float) -> dict:
    lat = sorted(latencies) or [float("nan")]
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
    return {"server": server, "concurrency": concurrency, "requests": len(latencies) + errors, "errors": errors,
            "wall_s": wall, "requests_per_s": (len(latencies) + errors) / wall, "images_per_s": len(latencies) / wall,
            "p50_ms": pick(0.50), "p99_ms": pick(0.99), "server_cpu_s_per_image": cpu / max(1, len(latencies))}


def start(server: Server, model: Path, python: str, folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    if server.program is None:
        cmd = [python, "-m", "pocketcnn", "serve", str(model), "--host", HOST, "--port", str(port),
               "--log-level", "warning"]
        ready = "/v2/health/ready"
    else:
        source = folder / f"peer_{server.name.split()[0].lower()}.py"
        source.write_text(server.program)
        cmd = [python, str(source), str(model), str(port)]
        ready = {"LitServe": "/health", "BentoML": "/readyz"}.get(server.name)
        if server.name == "BentoML":
            cmd = [python, "-m", "bentoml", "serve", f"{source.stem}:Classifier", "--host", HOST, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "w"), cwd=folder,
                            env={**os.environ, "PEER_MODEL": str(model)}, start_new_session=True)
    deadline = time.monotonic() + 120
    import httpx

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{server.name} exited with {proc.returncode}: "
                             f"{(folder / 'server.log').read_text()[-2000:]}")
        try:
            if ready is None:
                httpx.get(f"http://{HOST}:{port}/docs", timeout=2).raise_for_status()
                return proc, port
            if httpx.get(f"http://{HOST}:{port}{ready}", timeout=2).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            time.sleep(0.2)
    stop(proc)
    raise SystemExit(f"{server.name} did not start within 120 s")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its workers too), SIGKILL after 20 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


async def first_answer(server: Server, port: int, request: tuple[str, bytes, dict[str, str]]) -> int | None:
    conn = Connection(port)
    try:
        return server.top1(*(await conn.post(*request)))
    finally:
        await conn.close()


def bench_model(label: str, model: Path, photos: list[bytes], content_type: str, args: argparse.Namespace,
                folder: Path) -> dict:
    """Every server on one model, in ``args.rounds`` rounds (each round starts each server again, in a
    rotated order, and gives each concurrency ``seconds / rounds``), so that a change in the machine's
    other load falls on every server alike; ONNX Runtime alone is measured once per round."""
    from pocketcnn.runtime.predictor import open_model

    predictor = open_model(model, threads=1)
    name = predictor.model
    want = predictor.predict(photos[0], topk=1)[0].topk[0].index
    servers = [s for s in SERVERS if not args.servers or s.name in args.servers]
    raw: dict[tuple[str, int], list] = {(s.name, c): [[], 0, 0.0, 0.0] for s in servers for c in args.concurrency}
    refs = []
    for r in range(args.rounds):
        order = servers[r % len(servers):] + servers[:r % len(servers)]
        for server in order:
            try:
                proc, port = start(server, model, args.peers_python, folder)
            except SystemExit as exc:  # one more try: a busy machine can be slow to start a server
                print(f"{exc}; trying again", file=sys.stderr)
                time.sleep(10)
                proc, port = start(server, model, args.peers_python, folder)
            try:
                requests = [server.request(p, content_type, name) for p in photos]
                got = asyncio.run(first_answer(server, port, requests[0]))
                if got != want:
                    raise SystemExit(f"{server.name}: top-1 {got} for the first photo, Predictor.predict says {want}")
                asyncio.run(load(server, port, requests, args.warmup, 8))
                for c in args.concurrency:
                    cpu0 = tree_cpu_seconds(proc.pid)
                    latencies, errors, wall = asyncio.run(load(server, port, requests, args.seconds / args.rounds, c))
                    acc = raw[server.name, c]
                    acc[0] += latencies
                    acc[1] += errors
                    acc[2] += wall
                    acc[3] += tree_cpu_seconds(proc.pid) - cpu0
                    print(f"{label} round {r + 1} {server.name:28s} c={c:3d} {len(latencies) / wall:7.1f} images/s",
                          file=sys.stderr)
            finally:
                stop(proc)
        refs.append(reference(model, photos[0], min_time=1.5)["images_per_s"])
    ref = {"batch": 32, "images_per_s": float(np.median(refs)), "rounds": refs}
    rows = [summarize(s.name, c, *raw[s.name, c]) for s in servers for c in args.concurrency]
    for row in rows:
        row["share_of_runtime"] = row["images_per_s"] / ref["images_per_s"]
    return {"label": label, "model": str(model), "rows": rows, "reference": ref}


def table(result: dict) -> str:
    lines = [f"**{result['label']}** (ONNX Runtime alone, batch 32: {result['reference']['images_per_s']:.0f} images/s)",
             "", "| server | concurrency | requests/s | images/s | p50 ms | p99 ms | errors | server CPU ms / image "
             "| share of ONNX Runtime alone |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['server']} | {r['concurrency']} | {r['requests_per_s']:.0f} | {r['images_per_s']:.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {1000 * r['server_cpu_s_per_image']:.2f} "
                     f"| {100 * r['share_of_runtime']:.0f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers-python", default=str(REPO / "build" / "peers-venv" / "bin" / "python"),
                    help="the interpreter every server runs under (pocketcnn, litserve, fastapi installed)")
    ap.add_argument("--seconds", type=float, default=12.0, help="load at each concurrency, all rounds together")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds at concurrency 8 after each start")
    ap.add_argument("--rounds", type=int, default=3, help="each server started this many times, interleaved")
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    ap.add_argument("--sizes", default="28,224", help="which models: 28 (PNGs), 224 (640x480 JPEGs)")
    ap.add_argument("--servers", type=lambda s: [x.strip() for x in s.split(",")], default=None,
                    help="only these servers (names as in the table)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "serve_peers.json")
    args = ap.parse_args(argv)
    if not Path(args.peers_python).exists():
        ap.error(f"--peers-python {args.peers_python} does not exist: see the docstring")

    results = []
    with tempfile.TemporaryDirectory(prefix="pocketcnn-serve-peers-") as tmp:
        folder = Path(tmp)
        for size in (int(s) for s in args.sizes.split(",")):
            sub = folder / str(size)
            sub.mkdir()
            if size == 28:
                model = make_model(sub, "squeezenet1_1", 28, 1)
                results.append(bench_model("squeezenet1_1, 1x28x28, 28x28 PNGs", model, fashion_pngs(), "image/png",
                                           args, sub))
            else:
                model = make_model(sub, "squeezenet1_1", size, 3)
                results.append(bench_model(f"squeezenet1_1, 3x{size}x{size}, 640x480 JPEGs", model, camera_jpegs(),
                                           "image/jpeg", args, sub))
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"`python benchmarks/serve_peers.py` on {cpu}, {len(os.sched_getaffinity(0))} CPUs shared by the server "
          f"and the client; {args.seconds:g} s per level in {args.rounds} rounds; load average {os.getloadavg()[0]:.2f}\n")
    print("\n\n".join(table(r) for r in results))
    print("\nbatching settings:\n" + "\n".join(f"- {s.name}: {s.batching}" for s in SERVERS))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu, "cpus": len(os.sched_getaffinity(0)), "seconds": args.seconds, "rounds": args.rounds,
                                    "servers": {s.name: s.batching for s in SERVERS}, "results": results}, indent=2))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
