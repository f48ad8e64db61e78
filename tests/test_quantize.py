"""INT8: ONNX Runtime QDQ static quantization, PyTorch FX (and PT2E, QAT), the quantize command."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

import pocketcnn
from pocketcnn.artifacts.metadata import read_onnx_metadata
from pocketcnn.compress.quantize import qat_torch, quantize_onnx, quantize_torch, state_dict_bytes
from pocketcnn.export.onnx import export_onnx
from pocketcnn.models.int8 import rebuild_fx_int8
from pocketcnn.runtime.onnx import OnnxRunner
from pocketcnn.errors import ConfigError, DataError, ExportError
from pocketcnn.artifacts.checkpoint import save_checkpoint

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
HAS_FMNIST = os.path.isfile(os.path.join(FMNIST_DIR, "t10k-images-idx3-ubyte.gz"))
KWARGS = {"num_classes": 10, "in_chans": 1, "small_input": True}
DATA = {"name": "fashion-mnist", "num_classes": 10, "in_chans": 1, "image_size": 28, "mean": [0.286],
        "std": [0.353], "classes": [f"c{i}" for i in range(10)]}


def batches(n_batches: int = 2, batch: int = 32, seed: int = 0) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, 28, 28, generator=g).numpy() for _ in range(n_batches)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return pocketcnn.create_model("squeezenet1_1", **KWARGS).eval()


@pytest.fixture(scope="module")
def fp32_onnx(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "fp32.onnx"
    return export_onnx(model, path, input_size=(1, 28, 28), dynamic_batch=True, metadata={"model": "squeezenet1_1"})


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


@pytest.mark.parametrize("per_channel", [True, False])
def test_quantize_onnx_int8_runs_smaller_and_agrees(model, fp32_onnx, tmp_path, per_channel):
    out = quantize_onnx(fp32_onnx, tmp_path / "int8.onnx", batches(), per_channel=per_channel)
    assert os.path.getsize(fp32_onnx) / os.path.getsize(out) > 3.0  # int8 weights; biases stay int32
    import onnx

    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 26  # every conv weight of SqueezeNet 1.1
    meta = read_onnx_metadata(out)
    assert meta["model"] == "squeezenet1_1"  # the fp32 metadata survives
    assert meta["quantization"]["per_channel"] is per_channel and meta["quantization"]["calibration_samples"] == 64
    x = batches(1, 128, seed=1)[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert agreement(ref, OnnxRunner(out).run(x)) >= 0.9


def test_quantize_onnx_static_batch_and_errors(model, tmp_path):
    fixed = export_onnx(model, tmp_path / "fixed.onnx", input_size=(1, 28, 28))  # batch 1: calibration is split
    out = quantize_onnx(fixed, tmp_path / "fixed.int8.onnx", batches(1, 8), activation_type="qint8")
    assert OnnxRunner(out).run(batches(1, 3)[0]).shape == (3, 10)
    with pytest.raises(DataError, match="at least one calibration batch"):
        quantize_onnx(fixed, tmp_path / "x.onnx", [])
    with pytest.raises(ConfigError, match="activation_type='int4'"):
        quantize_onnx(fixed, tmp_path / "x.onnx", batches(1, 2), activation_type="int4")
    with pytest.raises(ExportError, match="no such ONNX file"):
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "x.onnx", batches(1, 2))


def test_quantize_torch_fx_and_its_checkpoint(model, tmp_path):
    q = quantize_torch(model, [torch.from_numpy(b) for b in batches(2, 16)])
    assert any("Quantized" in type(m).__name__ or "quantized" in type(m).__module__ for m in q.modules())
    assert state_dict_bytes(model) / state_dict_bytes(q) > 3.0
    x = torch.from_numpy(batches(1, 64, seed=1)[0])
    with torch.no_grad():
        ref, out = model(x).numpy(), q(x).numpy()
        assert agreement(ref, out) >= 0.9
        # the int8 state dict rebuilds the same model without calibration data
        again = rebuild_fx_int8(pocketcnn.create_model("squeezenet1_1", **KWARGS), q.state_dict(), (1, 28, 28))
        assert torch.equal(again(x), q(x))


def test_qat_runs_and_converts(model):
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
    losses = []
    q = qat_torch(model, lambda: [(xs, ys)], epochs=2, lr=1e-3,
                  on_epoch=lambda e, loss: losses.append((e, loss)))
    assert [e for e, _ in losses] == [1, 2] and all(np.isfinite(v) for _, v in losses)
    with torch.no_grad():
        assert q(xs[:4]).shape == (4, 10)
    with pytest.raises(ConfigError, match="epochs=0"):
        qat_torch(model, lambda: [(xs, ys)], epochs=0)


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="PT2E needs torchao")
def test_quantize_torch_pt2e(model):
    q = quantize_torch(model, batches(1, 16), method="pt2e")
    x = torch.from_numpy(batches(1, 64, seed=1)[0])
    with torch.no_grad():
        assert agreement(model(x).numpy(), q(x).numpy()) >= 0.9
    with pytest.raises(ConfigError, match="method='int4'"):
        quantize_torch(model, batches(1, 2), method="int4")


@pytest.fixture
def ckpt(model, tmp_path):
    return save_checkpoint(tmp_path / "fm.pt", {"model": "squeezenet1_1", "model_kwargs": KWARGS,
                                                "state_dict": model.state_dict(), "data": DATA})


@pytest.mark.skipif(not HAS_FMNIST, reason="Fashion-MNIST files not installed")
def test_cli_quantize_onnxruntime_json(ckpt, tmp_path, cli_runner):
    from pocketcnn.cli import cli

    out = tmp_path / "fm.int8.onnx"
    res = cli_runner.invoke(cli, ["quantize", str(ckpt), "--calib-data", "fashion-mnist", "--calib-samples", "64",
                                  "--test-samples", "100", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["backend"] == "onnxruntime" and d["path"] == str(out) and out.is_file()
    assert d["calib_samples"] == 64 and d["test_samples"] == 100 and d["size_ratio"] > 3.0
    for key in ("fp32", "int8"):
        assert 0 <= d[key]["top1"] <= 100 and d[key]["images_per_s"] > 0 and d[key]["size_bytes"] > 0


@pytest.mark.skipif(not HAS_FMNIST, reason="Fashion-MNIST files not installed")
def test_cli_quantize_torch_table_and_checkpoint(ckpt, tmp_path, cli_runner):
    from pocketcnn.cli import cli

    out = tmp_path / "fm.int8.pt"
    args = ["quantize", str(ckpt), "--backend", "torch", "--calib-samples", "32", "--test-samples", "50"]
    res = cli_runner.invoke(cli, args + ["--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "fp32" in res.stdout and "int8" in res.stdout and "smaller" in res.stdout
    from pocketcnn.workflows.predict import load_predictor

    pred = load_predictor(out)
    assert pred.runtime == "torch-int8" and pred.classes[0] == "c0"
    # `eval` reads the int8 checkpoint too, and scores the same 50 test images as quantize did
    report = json.loads(cli_runner.invoke(cli, args + ["--json"]).stdout)
    res = cli_runner.invoke(cli, ["eval", str(out), "--test-samples", "50", "--out", str(tmp_path / "ev"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["top1"] == report["int8"]["top1"]


def test_cli_quantize_user_errors(ckpt, tmp_path, cli_runner):
    from pocketcnn.cli import cli

    res = cli_runner.invoke(cli, ["quantize", str(ckpt), "--qat"])
    assert res.exit_code == 1 and "needs backend='torch'" in res.stderr
    res = cli_runner.invoke(cli, ["quantize", str(ckpt), "--calib-data", "imagenet"])
    assert res.exit_code == 1 and "'imagenet'" in res.stderr and len(res.stderr.strip().splitlines()) == 1
