"""The Open Inference Protocol (KServe v2) of ``pocketcnn serve``: NVIDIA's ``tritonclient[http]``
against a real server (a subprocess where torch cannot be imported) on 24 real Fashion-MNIST
PNGs, compared with ``/v1/predict`` and ``pocketcnn predict --json``; protocol errors; the codec
in-process.

The model is a nearest-class-mean classifier of Fashion-MNIST (one linear layer whose rows are
the training images' class means), exported with pocketcnn's metadata: unlike a randomly
initialized network it gives different classes for different photos, so top-1 comparisons
mean something, and it needs no training loop.
"""
from __future__ import annotations

import base64
import gzip
import importlib.util
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as tritonclient_http  # the dev extra installs tritonclient[http]
from starlette.testclient import TestClient
from tritonclient.utils import InferenceServerException

from pocketcnn.runtime.predictor import open_model
from pocketcnn.serve import create_app

_spec = importlib.util.spec_from_file_location("light_prepare", Path(__file__).parent / "light" / "prepare.py")
prepare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare)

FMNIST = Path("/usr/share/datasets/fashion-mnist")
N_IMAGES = 24
NAME = "fmnist_centroids"
ATOL = 1e-5


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        raw = f.read()
    return np.frombuffer(raw, np.uint8, offset=16 if raw[2:4] == b"\x08\x03" else 8)


def _source(tiny_data) -> Path:
    """The Debian Fashion-MNIST files (CI installs them), else tiny_data's stand-in."""
    return FMNIST if (FMNIST / "t10k-images-idx3-ubyte.gz").is_file() else Path(tiny_data)


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_data) -> Path:
    """Class means of 2,000 training images as one linear layer, exported as ONNX with metadata."""
    import torch

    from pocketcnn.artifacts.metadata import build_metadata
    from pocketcnn.export.onnx import export_onnx
    from pocketcnn.runtime.images import normalize

    src = _source(tiny_data)
    images = _idx(src / "train-images-idx3-ubyte.gz").reshape(-1, 28, 28)[:2000]
    labels = _idx(src / "train-labels-idx1-ubyte.gz")[:2000]
    spec = prepare.spec(resize_size=None)
    x = np.stack([normalize(im, spec) for im in images]).reshape(len(images), -1)
    means = np.stack([x[labels == k].mean(0) for k in range(10)]).astype(np.float32)
    layer = torch.nn.Linear(784, 10)
    with torch.no_grad():  # nearest mean: argmax of x.m - |m|^2 / 2
        layer.weight.copy_(torch.from_numpy(means))
        layer.bias.copy_(torch.from_numpy(-0.5 * (means ** 2).sum(1)))
    net = torch.nn.Sequential(torch.nn.Flatten(), layer).eval()
    path = tmp_path_factory.mktemp("v2-model") / "centroids.onnx"
    export_onnx(net, path, input_size=(1, 28, 28), dynamic_batch=True,
                metadata=build_metadata(NAME, {}, spec, params=784 * 10 + 10))
    return path


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, tiny_data) -> list[Path]:
    """N_IMAGES real Fashion-MNIST test images, evenly spaced through the test split, as PNG files."""
    from PIL import Image

    data = _idx(_source(tiny_data) / "t10k-images-idx3-ubyte.gz").reshape(-1, 28, 28)
    folder = tmp_path_factory.mktemp("v2-pngs")
    paths = []
    for i in range(N_IMAGES):
        paths.append(folder / f"fmnist-{i:02d}.png")
        Image.fromarray(data[i * (len(data) // N_IMAGES)]).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def expected(model, pngs) -> list[dict]:
    """``pocketcnn predict MODEL *.png --json`` (top 10: every class with its probability)."""
    from click.testing import CliRunner

    from pocketcnn.cli import cli

    result = CliRunner().invoke(cli, ["predict", str(model), *map(str, pngs), "--json", "--topk", "10"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [Path(r["image"]).name for r in records] == [p.name for p in pngs]
    assert len({r["topk"][0]["index"] for r in records}) >= 4  # a real classifier: several classes
    return records


def _probs(record: dict) -> np.ndarray:
    out = np.zeros(10)
    for t in record["topk"]:
        out[t["index"]] = t["prob"]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """A real ``pocketcnn serve`` in a process where importing torch fails: ``host:port``."""
    env = prepare.blocked_env(tmp_path_factory.mktemp("v2-block"))
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pocketcnn", "serve", str(model), "--port", str(port),
                             "--log-level", "warning", "--max-body-mb", "1", "--max-wait-ms", "30"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if httpx.get(f"http://{url}/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "server did not start within 30 s"
            time.sleep(0.1)
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr and "torch" not in stderr, stderr


@pytest.fixture(scope="module")
def triton(server):
    client = tritonclient_http.InferenceServerClient(server, concurrency=8)
    yield client
    client.close()


@pytest.fixture(scope="module")
def v1_records(server, pngs) -> list[dict]:
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in pngs]
    r = httpx.post(f"http://{server}/v1/predict?topk=10", files=files, timeout=30)
    assert r.status_code == 200
    return r.json()["predictions"]


def _check(probs: np.ndarray, expected: list[dict], v1_records: list[dict]) -> None:
    """Probabilities ``(24, 10)`` equal predict --json's and /v1's within ATOL, same top-1."""
    assert probs.shape == (N_IMAGES, 10) and probs.dtype == np.float32
    for row, want, v1 in zip(probs, expected, v1_records):
        assert np.abs(row - _probs(want)).max() <= ATOL and np.abs(row - _probs(v1)).max() <= ATOL
        assert int(np.argmax(row)) == want["topk"][0]["index"] == v1["topk"][0]["index"]


# ------------------------------------------------------------------------------ tritonclient, unchanged
def test_health_and_metadata(triton, model):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(NAME) and triton.is_model_ready(NAME, "1")
    assert not triton.is_model_ready(NAME, "2") and not triton.is_model_ready("resnet50")
    server = triton.get_server_metadata()
    assert server["name"] == "pocketcnn" and {"binary_tensor_data", "classification"} <= set(server["extensions"])
    meta = triton.get_model_metadata(NAME)
    assert meta["name"] == NAME and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]},
                              {"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                               {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    config = triton.get_model_config(NAME)
    assert config["max_batch_size"] == 32 and config["dynamic_batching"]["max_queue_delay_microseconds"] == "30000"
    assert config["parameters"]["labels"]["string_value"].split(",") == list(prepare.FASHION_CLASSES)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_fp32_tensor(triton, model, pngs, expected, v1_records, binary):
    predictor = open_model(model)
    x = np.stack([predictor.preprocess(p.read_bytes()) for p in pngs])
    tensor = tritonclient_http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [tritonclient_http.InferRequestedOutput("probabilities", binary_data=binary),
               tritonclient_http.InferRequestedOutput("logits", binary_data=not binary)]
    result = triton.infer(NAME, [tensor], outputs=outputs, request_id="r-1")
    assert result.get_response()["id"] == "r-1" and result.get_response()["model_name"] == NAME
    _check(result.as_numpy("probabilities"), expected, v1_records)
    logits = result.as_numpy("logits")
    assert logits.shape == (N_IMAGES, 10)
    assert np.abs(logits - predictor.runner.run(x)).max() <= 1e-6  # the model's own output


def test_infer_image_bytes_with_classification(triton, pngs, expected, v1_records):
    images = tritonclient_http.InferInput("image", [N_IMAGES], "BYTES")
    images.set_data_from_numpy(np.array([p.read_bytes() for p in pngs], dtype=np.object_), binary_data=True)
    outputs = [tritonclient_http.InferRequestedOutput("probabilities", binary_data=True),
               tritonclient_http.InferRequestedOutput("probabilities", binary_data=True, class_count=3)]
    # the same output twice (tensor and top 3) is allowed by the protocol; tritonclient keys results by
    # name, so ask for the top 3 in a second request
    result = triton.infer(NAME, [images], outputs=outputs[:1])
    _check(result.as_numpy("probabilities"), expected, v1_records)
    top = triton.infer(NAME, [images], outputs=outputs[1:]).as_numpy("probabilities")
    assert top.shape == (N_IMAGES, 3)
    for row, want in zip(top, expected):
        parsed = [e.decode().split(":", 2) for e in row]
        assert [int(i) for _, i, _ in parsed] == [t["index"] for t in want["topk"][:3]]
        assert [label for _, _, label in parsed] == [t["label"] for t in want["topk"][:3]]
        assert np.allclose([float(v) for v, _, _ in parsed], [t["prob"] for t in want["topk"][:3]], atol=ATOL)
    # no outputs named: every output, binary (tritonclient asks with binary_data_output)
    everything = triton.infer(NAME, [images])
    assert everything.as_numpy("logits").shape == (N_IMAGES, 10)
    _check(everything.as_numpy("probabilities"), expected, v1_records)


def test_concurrent_requests_share_batches_and_metrics(triton, server, pngs, expected):
    def metric(text: str, name: str, **labels) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        found = re.search(re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" ([0-9.e+-]+)$",
                          text, re.M)
        return float(found.group(1)) if found else 0.0

    before = httpx.get(f"http://{server}/metrics").text
    pending = []
    for p in pngs[:16]:
        one = tritonclient_http.InferInput("image", [1], "BYTES")
        one.set_data_from_numpy(np.array([p.read_bytes()], dtype=np.object_))
        pending.append(triton.async_infer(NAME, [one], outputs=[
            tritonclient_http.InferRequestedOutput("probabilities", class_count=1)]))
    tops = [h.get_result().as_numpy("probabilities")[0, 0].decode() for h in pending]
    assert [int(t.split(":")[1]) for t in tops] == [r["topk"][0]["index"] for r in expected[:16]]
    after = httpx.get(f"http://{server}/metrics").text
    route = "/v2/models/{name}/infer"
    assert metric(after, "pocketcnn_http_requests_total", route=route, status="200") - \
        metric(before, "pocketcnn_http_requests_total", route=route, status="200") == 16
    assert metric(after, "pocketcnn_images_total", outcome="ok") - metric(before, "pocketcnn_images_total",
                                                                            outcome="ok") == 16
    images = metric(after, "pocketcnn_batch_size_sum") - metric(before, "pocketcnn_batch_size_sum")
    runs = metric(after, "pocketcnn_batch_size_count") - metric(before, "pocketcnn_batch_size_count")
    assert images == 16 and runs < 16  # 8 connections at once, 30 ms max wait: some runs took several images


# ------------------------------------------------------------------------------ protocol errors
def test_protocol_errors_through_tritonclient(triton, model):
    def fails(status: str, words: str, inputs, name: str = NAME, outputs=None) -> None:
        with pytest.raises(InferenceServerException) as info:
            triton.infer(name, inputs, outputs=outputs)
        assert info.value.status() == status and words in info.value.message(), info.value

    def fp32(shape, dtype="FP32", npdtype=np.float32, binary=True):
        t = tritonclient_http.InferInput("input", list(shape), dtype)
        t.set_data_from_numpy(np.zeros(shape, npdtype), binary_data=binary)
        return t

    fails("400", "shape [N, 1, 28, 28]", [fp32((2, 1, 27, 28))])
    fails("400", "shape [N, 1, 28, 28]", [fp32((2, 28, 28))], outputs=None)
    fails("400", "datatype FP32, received 'FP64'", [fp32((1, 1, 28, 28), "FP64", np.float64)])
    fails("400", "datatype FP32, received 'INT64'", [fp32((1, 1, 28, 28), "INT64", np.int64, binary=False)])
    fails("404", "unknown model 'resnet50'", [fp32((1, 1, 28, 28))], name="resnet50")
    fails("413", "over the limit of 1,000,000 bytes", [fp32((320, 1, 28, 28))])  # 1,003,520 bytes of data
    fails("400", "image[0]: not an image file", [_bytes_input([b"not a png"])])
    fails("400", "unknown output 'softmax'", [fp32((1, 1, 28, 28))],
          outputs=[tritonclient_http.InferRequestedOutput("softmax")])
    fails("400", "unknown input 'pixels'", [_named("pixels")])
    with pytest.raises(InferenceServerException) as info:
        triton.get_model_metadata("resnet50")
    assert info.value.status() == "404"


def _bytes_input(elements: list[bytes]):
    t = tritonclient_http.InferInput("image", [len(elements)], "BYTES")
    t.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=True)
    return t


def _named(name: str):
    t = tritonclient_http.InferInput(name, [1, 1, 28, 28], "FP32")
    t.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
    return t


def test_protocol_errors_raw(server):
    """Bodies no client library would send: each a 4xx with the protocol's error object, never a 500."""
    url = f"http://{server}/v2/models/{NAME}/infer"
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 3136}}]}).encode()
    cases = [  # (status, body, headers, words)
        (400, b"{not json", {}, "not JSON"),
        (400, b"[1, 2]", {}, "must be a JSON object"),
        (400, b'{"inputs": []}', {}, "exactly one input"),
        (400, head + b"\0" * 3136, {"Inference-Header-Content-Length": "x"}, "must be an integer"),
        (400, head + b"\0" * 3136, {"Inference-Header-Content-Length": "999999"}, "not within the body"),
        (400, head + b"\0" * 3000, {"Inference-Header-Content-Length": str(len(head))}, "runs past"),
        (400, head + b"\0" * 3140, {"Inference-Header-Content-Length": str(len(head))}, "bytes of binary data after"),
        (400, head + b"\0" * 3136, {}, "not JSON"),  # binary data without its header length
        (400, json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                      "data": ["a"] * 784}]}).encode(), {}, "not a list of numbers"),
        (400, json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                      "data": [0.0] * 783}]}).encode(), {}, "holds 784 elements, data 783"),
        (400, json.dumps({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                                      "parameters": {"binary_data_size": 6}}]}).encode() + b"\x09\0\0\0ab",
         {"Inference-Header-Content-Length": None}, "runs past its data"),
    ]
    for status, body, headers, words in cases:
        if headers.get("Inference-Header-Content-Length", "") is None:
            headers = {"Inference-Header-Content-Length": str(len(body) - 6)}
        r = httpx.post(url, content=body, headers=headers, timeout=10)
        assert r.status_code == status and words in r.json()["error"], (words, r.status_code, r.text)
    r = httpx.get(f"http://{server}/v2/models/{NAME}/versions/7")
    assert r.status_code == 404 and "unknown version '7'" in r.json()["error"]
    r = httpx.get(url)
    assert r.status_code == 405 and "error" in r.json()


# ------------------------------------------------------------------------------ in-process: the codec
def test_json_images_base64_and_limits(model, pngs, expected):
    with TestClient(create_app(model, max_images=4)) as c:
        data = [base64.b64encode(p.read_bytes()).decode() for p in pngs[:3]]
        r = c.post(f"/v2/models/{NAME}/infer", json={
            "inputs": [{"name": "image", "shape": [3], "datatype": "BYTES", "data": data,
                        "parameters": {"content_type": "base64"}}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        out = r.json()["outputs"][0]
        assert out["datatype"] == "BYTES" and out["shape"] == [3, 2]
        assert [int(s.split(":")[1]) for s in out["data"][::2]] == [e["topk"][0]["index"] for e in expected[:3]]
        r = c.post(f"/v2/models/{NAME}/infer", json={
            "inputs": [{"name": "image", "shape": [5], "datatype": "BYTES", "data": data + data[:2],
                        "parameters": {"content_type": "base64"}}]})
        assert r.status_code == 413 and "over the limit of 4" in r.json()["error"]
        r = c.post(f"/v2/models/{NAME}/infer", json={
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"],
                        "parameters": {"content_type": "base64"}}]})
        assert r.status_code == 400 and "not base64" in r.json()["error"]
        text = c.get("/metrics").text
        assert 'route="/v2/models/{name}/infer",status="413"' in text


def test_bad_image_and_shutdown(model, pngs):
    app = create_app(model)
    with TestClient(app) as c:
        images = [pngs[0].read_bytes(), pngs[1].read_bytes()[:40], b""]
        head = json.dumps({"inputs": [{"name": "image", "shape": [3], "datatype": "BYTES",
                                       "parameters": {"binary_data_size": sum(4 + len(e) for e in images)}}]})
        body = head.encode() + b"".join(len(e).to_bytes(4, "little") + e for e in images)
        r = c.post(f"/v2/models/{NAME}/infer", content=body,
                   headers={"Inference-Header-Content-Length": str(len(head))})
        assert r.status_code == 400 and r.json()["error"].startswith("image[1]: not an image file")
        assert "(and 1 more images)" in r.json()["error"]
        assert c.get("/v2/health/live").json() == {"live": True}
    with TestClient(app) as c:  # the first client's exit closed the batcher: not ready
        assert c.get("/v2/health/ready").json() == {"ready": False}
