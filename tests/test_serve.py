"""pocketcnn serve: the app in-process (Starlette TestClient, httpx ASGI transport) and one real
uvicorn subprocess (no torch importable in it) on a free loopback port."""
from __future__ import annotations

import asyncio
import importlib.util
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from pocketcnn.runtime.predictor import open_model
from pocketcnn.serve import create_app

_spec = importlib.util.spec_from_file_location("light_prepare", Path(__file__).parent / "light" / "prepare.py")
prepare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return prepare.make_onnx(tmp_path_factory.mktemp("serve-model") / "fp32.onnx")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return {p.name: p for p in prepare.write_images(tmp_path_factory.mktemp("serve-images"))}


@pytest.fixture(scope="module")
def expected(model, images) -> dict[str, dict]:
    """predict --json records by file name (the light runtime's, equal to the torch path's: test_runtime)."""
    p = open_model(model)
    out = {}
    for name, path in images.items():
        try:
            out[name] = p.top(name, p.probabilities(p.preprocess(path.read_bytes(), name=name)[None])[0], 5).to_dict()
        except Exception as exc:
            out[name] = {"image": name, "error": str(exc)}
    return out


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, max_body_bytes=200_000, body_timeout_s=0.5)) as c:
        yield c


def _files(images, *names):
    return [("file", (n, images[n].read_bytes(), "image/png")) for n in names]


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


# ------------------------------------------------------------------------------ in-process
def test_predict_one_and_many(client, images, expected):
    r = client.post("/v1/predict", files=_files(images, "gray.png"))
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "squeezenet1_1" and body["runtime"] == "onnxruntime" and body["latency_ms"] > 0
    assert body["predictions"] == [expected["gray.png"]]
    names = ["rgb.png", "not-an-image.png", "palette.png", "gray16.png", "truncated.png", "cmyk.jpg"]
    r = client.post("/v1/predict?topk=5", files=_files(images, *names))
    assert r.status_code == 200
    assert r.json()["predictions"] == [expected[n] for n in names]  # bad images get their own error record


def test_predict_raw_body_and_topk(client, images, expected):
    data = images["rgba.png"].read_bytes()
    for ctype in ("image/png", "application/octet-stream"):
        r = client.post("/v1/predict", content=data, headers={"content-type": ctype})
        assert r.status_code == 200
        assert r.json()["predictions"] == [{**expected["rgba.png"], "image": "<body>"}]
    r = client.post("/v1/predict?topk=2", content=data, headers={"content-type": "image/png"})
    assert [t["index"] for t in r.json()["predictions"][0]["topk"]] == \
           [t["index"] for t in expected["rgba.png"]["topk"][:2]]
    r = client.post("/v1/predict", files=_files(images, "gray.png"), data={"topk": "1"})  # as a form field
    assert len(r.json()["predictions"][0]["topk"]) == 1
    assert len(client.post("/v1/predict?topk=99", content=data, headers={"content-type": "image/png"})
               .json()["predictions"][0]["topk"]) == 10
    for bad in ("0", "-2", "abc", "1.5"):
        r = client.post(f"/v1/predict?topk={bad}", content=data, headers={"content-type": "image/png"})
        assert r.status_code == 400 and "topk" in r.json()["error"]


def test_bad_input_status_codes(client, images):
    png = images["gray.png"].read_bytes()
    cases = [  # (status, request kwargs, words in the error)
        (413, dict(content=b"\0" * 200_001, headers={"content-type": "image/png"}), "over the limit"),
        (413, dict(files=[("f", ("big.png", b"\0" * 200_000, "image/png"))]), "over the limit"),
        (415, dict(content=png, headers={"content-type": "text/plain"}), "text/plain"),
        (415, dict(content=png), "(none)"),
        (422, dict(content=b"definitely not an image", headers={"content-type": "image/png"}), "not an image file"),
        (422, dict(content=png[:300], headers={"content-type": "image/png"}), "cannot decode"),
        (422, dict(content=prepare.png_header(9000, 9000), headers={"content-type": "image/png"}),
         "decompression bomb"),
        (422, dict(content=prepare.png_header(30000, 30000), headers={"content-type": "image/png"}),
         "decompression bomb"),
        (400, dict(content=b"", headers={"content-type": "image/png"}), "empty request body"),
        (400, dict(files=[("topk", (None, "3"))]), "no image"),
        (400, dict(content=b"--x\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=x"}),
         "multipart"),
    ]
    for status, kwargs, words in cases:
        r = client.post("/v1/predict", **kwargs)
        assert r.status_code == status, (kwargs.get("headers"), r.text)
        assert words in r.json()["error"], r.text
    # every image of a form bad: 422 with the records; a bomb beside a good image: its own record
    r = client.post("/v1/predict", files=[("a", ("a.png", b"xx", "image/png")), ("b", ("b.png", b"", "image/png"))])
    assert r.status_code == 422
    assert [p["image"] for p in r.json()["predictions"]] == ["a.png", "b.png"]
    assert all("error" in p for p in r.json()["predictions"])
    r = client.post("/v1/predict", files=[("a", ("bomb.png", prepare.png_header(9000, 9000), "image/png")),
                                          *_files(images, "gray.png")])
    assert r.status_code == 200
    bomb, good = r.json()["predictions"]
    assert "decompression bomb" in bomb["error"] and "topk" in good
    assert client.get("/v1/nothing").status_code == 404 and client.get("/v1/predict").status_code == 405


def test_model_health_metrics_and_pages(client, model, tmp_path):
    info = client.get("/v1/model").json()
    assert info["name"] == "squeezenet1_1" and info["file"] == model.name
    assert info["file_bytes"] == model.stat().st_size and info["params"] == 726_474
    assert info["input_size"] == [1, 28, 28] and info["channels"] == 1 and info["precision"] == "fp32"
    assert info["labels"] == list(prepare.FASHION_CLASSES) and info["runtime"] == "onnxruntime"
    assert info["preprocessing"] == {"resize": 32, "crop": 28, "interpolation": "bilinear",
                                     "mean": [0.286], "std": [0.353]}
    assert client.get("/healthz").json() == {"status": "ok", "model": "squeezenet1_1"}
    client.post("/v1/predict", content=b"x", headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    assert metric(text, "pocketcnn_http_requests_total", route="/healthz", status="200") >= 1
    assert metric(text, "pocketcnn_http_requests_total", route="/v1/predict", status="422") >= 1
    assert metric(text, "pocketcnn_http_request_duration_seconds_count", route="/v1/model") >= 1
    assert metric(text, "pocketcnn_images_total", outcome="error") >= 1
    assert "pocketcnn_batch_size_bucket" in text
    page = client.get("/")
    assert page.status_code == 200 and "squeezenet1_1" in page.text and "/v1/predict" in page.text
    (tmp_path / "index.html").write_text("<h1>the browser page</h1>")
    (tmp_path / "app.js").write_text("console.log(1)")
    with TestClient(create_app(model, static_dir=tmp_path)) as c:
        assert c.get("/").text == "<h1>the browser page</h1>"
        assert c.get("/static/app.js").text == "console.log(1)"
        assert c.get("/static/missing.js").status_code == 404


def test_model_info_counts_params_when_the_file_lacks_them(tmp_path, monkeypatch):
    older = prepare.make_onnx(tmp_path / "older.onnx", with_params=False)  # files from before the params key
    with TestClient(create_app(older)) as c:
        assert c.get("/v1/model").json()["params"] == 726_474  # counted from the initializers
    monkeypatch.setitem(sys.modules, "onnx", None)  # the light install has no onnx package
    with TestClient(create_app(older)) as c:
        assert c.get("/v1/model").json()["params"] is None


def test_streamed_limits_and_slow_client(model, images):
    """No Content-Length: 413 from counting streamed bytes; a client too slow to send its body: 408."""
    app = create_app(model, max_body_bytes=100_000, body_timeout_s=0.3)

    async def chunks(n: int, size: int, pause: float):
        for _ in range(n):
            await asyncio.sleep(pause)
            yield b"\0" * size

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            big = await c.post("/v1/predict", content=chunks(30, 10_000, 0), headers={"content-type": "image/png"})
            slow = await c.post("/v1/predict", content=chunks(5, 10, 0.2), headers={"content-type": "image/png"})
            ok = await c.post("/v1/predict", content=images["gray.png"].read_bytes(),
                              headers={"content-type": "image/png"})
        await app.state.service.close()
        return big, slow, ok

    big, slow, ok = asyncio.run(main())
    assert big.status_code == 413 and "over the limit of 100,000 bytes" in big.json()["error"]
    assert slow.status_code == 408 and "not received within 0.3 s" in slow.json()["error"]
    assert ok.status_code == 200


def test_concurrent_requests_batched_and_routed(model, images, expected):
    app = create_app(model, max_batch=32, max_wait_ms=50)
    good = ["gray.png", "rgb.png", "rgba.png", "palette.png", "gray16.png", "small.png", "cmyk.jpg"]
    order = [good[i % len(good)] for i in range(16)]

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            answers = await asyncio.gather(*(
                c.post("/v1/predict", files=_files(images, name)) for name in order))
            text = (await c.get("/metrics")).text
        await app.state.service.close()
        return answers, text

    answers, text = asyncio.run(main())
    for name, r in zip(order, answers):
        assert r.status_code == 200 and r.json()["predictions"] == [expected[name]]
    batches = metric(text, "pocketcnn_batch_size_count")
    assert metric(text, "pocketcnn_batch_size_sum") == 16 and batches < 16  # some run took > 1 image
    assert metric(text, "pocketcnn_batch_size_bucket", le="1.0") < batches or batches == 1
    assert metric(text, "pocketcnn_images_total", outcome="ok") == 16


def test_model_failure_is_a_json_500(model, images, monkeypatch):
    from pocketcnn.errors import ExportError

    app = create_app(model)

    def broken(batch):
        raise ExportError("fp32.onnx: onnxruntime failed to run: boom")

    monkeypatch.setattr(app.state.service.batcher, "run", broken)
    with TestClient(app) as c:
        r = c.post("/v1/predict", files=_files(images, "gray.png"))
        assert r.status_code == 500 and r.json() == {"error": "fp32.onnx: onnxruntime failed to run: boom"}
        assert c.get("/healthz").status_code == 200  # still serving


def test_cli_serve_errors(cli_runner, tmp_path, model):
    from pocketcnn.cli import cli

    result = cli_runner.invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0 and "/v1/predict" in result.output and "--max-wait-ms" in result.output
    for path, words in ((tmp_path / "missing.onnx", "no such model file"), (tmp_path / "m.pt", "needs an .onnx file")):
        result = cli_runner.invoke(cli, ["serve", str(path)])
        assert result.exit_code == 1 and words in result.output and "Traceback" not in result.output
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    result = cli_runner.invoke(cli, ["serve", str(bad), "--port", "1"])
    assert result.exit_code == 1 and "not a readable ONNX model" in result.output


# ------------------------------------------------------------------------------ a real server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: Path, env: dict, *args: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pocketcnn", "serve", str(model), "--port", str(port),
                             "--log-level", "warning", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not start within 30 s")


def _stop(proc: subprocess.Popen) -> tuple[int, float]:
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return code, time.monotonic() - start


@pytest.mark.parametrize("workers", [1, 2])
def test_uvicorn_subprocess_without_torch(tmp_path, model, images, expected, workers):
    env = prepare.blocked_env(tmp_path / "block")  # serve must not need torch (nor import it)
    proc, url = _start(model, env, "--max-body-mb", "0.1", "--max-wait-ms", "20", "--workers", str(workers),
                       "--threads", "1")
    try:
        with httpx.Client(base_url=url, timeout=10) as c:
            r = c.post("/v1/predict", files=_files(images, "gray.png", "not-an-image.png", "cmyk.jpg"))
            assert r.status_code == 200
            assert r.json()["predictions"] == [expected[n] for n in ("gray.png", "not-an-image.png", "cmyk.jpg")]
            r = c.post("/v1/predict", content=images["rgb.png"].read_bytes(), headers={"content-type": "image/png"})
            assert r.json()["predictions"] == [{**expected["rgb.png"], "image": "<body>"}]
            assert c.post("/v1/predict", content=b"\0" * 100_001,
                          headers={"content-type": "image/png"}).status_code == 413
            assert c.get("/v1/model").json()["params"] == 726_474
            health = ("pocketcnn_http_requests_total", {"route": "/healthz", "status": "200"})
            before = metric(httpx.get(f"{url}/metrics").text, health[0], **health[1])
            for _ in range(8):  # new connections: with 2 workers they spread, and /metrics must add them up
                assert httpx.get(f"{url}/healthz").status_code == 200
            text = httpx.get(f"{url}/metrics").text
            assert before >= 1 and metric(text, health[0], **health[1]) == before + 8
            assert metric(text, "pocketcnn_http_requests_total", route="/v1/predict", status="200") == 2
            assert metric(text, "pocketcnn_images_total", outcome="ok") == 3
    finally:
        code, seconds = _stop(proc)
    stderr = proc.stderr.read()
    assert code == 0, stderr
    assert seconds < 5 and "Traceback" not in stderr and "torch" not in stderr
