"""The deployed side in a light install (numpy, onnxruntime, Pillow, the server packages):
``pocketcnn predict`` and ``pocketcnn serve`` give the main environment's records without torch."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ATOL = 1e-5  # probabilities: another machine's ONNX Runtime build may round differently


def test_environment_is_light(light):
    for module in ("torch", "torchvision", "onnx"):
        assert importlib.util.find_spec(module) is None, f"{module} is installed: this is not the light install"
    with pytest.raises(ImportError):
        import torch  # noqa: F401


def test_library_predicts_expected_records(light):
    from pocketcnn.runtime import open_model

    got = [r.to_dict() for r in open_model(light["model"]).predict([str(p) for p in light["images"]], topk=5)]
    assert light["prepare"].record_differences(got, light["expected"], atol=ATOL, by_name=True) == []
    assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision")]


def test_cli_predict_gives_expected_records(light):
    out = subprocess.run([sys.executable, "-m", "pocketcnn", "predict", str(light["model"]),
                          *map(str, light["images"]), "--json"], capture_output=True, text=True, timeout=120)
    broken = sum("error" in r for r in light["expected"])
    assert out.returncode == (1 if broken else 0), out.stderr
    got = json.loads(out.stdout)
    assert light["prepare"].record_differences(got, light["expected"], atol=ATOL, by_name=True) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_expected_records(light):
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pocketcnn", "serve", str(light["model"]), "--port", str(port),
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "server did not start within 60 s"
            try:
                health = httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        files = [("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in light["images"]]
        r = httpx.post(f"{url}/v1/predict?topk=5", files=files, timeout=60)
        assert r.status_code == 200, r.text
        got = r.json()["predictions"]
        assert light["prepare"].record_differences(got, light["expected"], atol=ATOL, by_name=True) == []
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'pocketcnn_http_requests_total{route="/v1/predict",status="200"} 1.0' in metrics
        assert "pocketcnn_batch_size_count" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    assert code == 0, proc.stderr.read()
