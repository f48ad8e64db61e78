"""Phone formats: LiteRT ``.tflite`` (fp32 and full-integer int8) and Core ML ``.mlpackage``.

LiteRT tests need the extra ``pocketcnn[litert]`` and skip without it; the Core ML tests need
coremltools (extra ``pocketcnn[mobile]``) and check the spec, since Core ML runs only on Apple
systems. Conversions are shared through module fixtures: each model is converted once.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import pocketcnn
from pocketcnn.artifacts.checkpoint import save_checkpoint
from pocketcnn.artifacts.source import ModelSource
from pocketcnn.errors import ConfigError, DataError, ExportError, MissingDependencyError, OutputError
from pocketcnn.export.exporter import export_model

HAS_LITERT = all(importlib.util.find_spec(m) is not None for m in ("litert_torch", "ai_edge_litert"))
HAS_COREML = importlib.util.find_spec("coremltools") is not None
litert = pytest.mark.skipif(not HAS_LITERT, reason="LiteRT not installed: pip install 'pocketcnn[litert]'")
coreml = pytest.mark.skipif(not HAS_COREML, reason="coremltools not installed: pip install 'pocketcnn[mobile]'")

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DATA = {"name": "mnist", "num_classes": 10, "in_chans": 1, "image_size": 28, "mean": [0.286], "std": [0.353],
        "classes": CLASSES}  # the tiny_data fixture: real Fashion-MNIST images in MNIST's file layout
KWARGS = {"num_classes": 10, "in_chans": 1, "small_input": True}


def tiny_source(name: str = "squeezenet1_1", path=None, **kwargs) -> ModelSource:
    kw = {**KWARGS, **kwargs}
    torch.manual_seed(0)
    model = pocketcnn.create_model(name, **kw).eval()
    data = {**DATA, "in_chans": kw["in_chans"]}
    return ModelSource(model, name, kw, data, path)


def one_line(res) -> str:
    assert res.exit_code not in (0, None), res.output
    text = res.output.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    return text


@pytest.fixture(scope="module")
def phone(tmp_path_factory, tiny_data):
    """A tiny squeezenet1_1 checkpoint on Fashion-MNIST's shape, test images as PNG files, its ONNX export."""
    d = tmp_path_factory.mktemp("phone")
    src = tiny_source()
    ckpt = save_checkpoint(d / "sq.pt", {"model": src.name, "model_kwargs": src.model_kwargs,
                                         "state_dict": src.model.state_dict(), "data": src.data.to_dict()})
    from pocketcnn.data import load_dataset

    test = load_dataset("mnist", "test", tiny_data)
    images = []
    for i in range(12):
        images.append(d / f"img{i}.png")
        Image.fromarray(test.data[i, 0].numpy()).save(images[-1])
    onnx = export_model(ModelSource(src.model, src.name, src.model_kwargs, src.data, ckpt), d / "sq.onnx",
                        verify_n=2, data_dir=tiny_data).path
    return {"dir": d, "src": ModelSource(src.model, src.name, src.model_kwargs, src.data, ckpt), "ckpt": ckpt,
            "images": images, "onnx": onnx, "data_dir": tiny_data}


@pytest.fixture(scope="module")
def fp32_tflite(phone, cli_runner_module):
    """``pocketcnn export CKPT --format tflite --json``: the file and the JSON record."""
    from pocketcnn.cli import cli

    res = cli_runner_module.invoke(cli, ["export", str(phone["ckpt"]), "--format", "tflite", "--data-dir",
                                         phone["data_dir"], "--verify-samples", "8", "--json"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    return phone["dir"] / "sq.tflite", record


@pytest.fixture(scope="module")
def int8_tflite(phone, cli_runner_module):
    from pocketcnn.cli import cli

    res = cli_runner_module.invoke(cli, ["export", str(phone["ckpt"]), "--format", "tflite", "--int8", "--calib-data",
                                         "mnist", "--calib-samples", "64", "--test-samples", "0", "--data-dir",
                                         phone["data_dir"], "--json"])
    assert res.exit_code == 0, res.output
    return phone["dir"] / "sq.int8.tflite", json.loads(res.stdout)


@pytest.fixture(scope="module")
def cli_runner_module():
    from click.testing import CliRunner

    return CliRunner()


# --- LiteRT fp32 ----------------------------------------------------------------------------------

@litert
def test_tflite_fp32_export_verifies_and_carries_metadata(phone, fp32_tflite):
    from pocketcnn.runtime.litert import LiteRtRunner, read_tflite_metadata

    path, record = fp32_tflite
    v = record["verification"]
    assert record["format"] == "tflite" and record["precision"] == "fp32" and record["layout"] == "NHWC"
    assert v["ran"] and v["passed"] and v["runtime"] == "litert" and v["max_abs_diff"] <= 1e-4
    assert v["inputs"] == "8 mnist test images" and v["top1_agreement"] == 1.0
    assert record["size_bytes"] == path.stat().st_size and not list(phone["dir"].glob(".*pending*"))
    want = json.loads(json.dumps(phone["src"].metadata(layout="NHWC")))
    assert read_tflite_metadata(path.read_bytes()) == want
    runner = LiteRtRunner(path, threads=1)
    assert runner.metadata == want and runner.layout == "NHWC" and runner.input_shape == [1, 28, 28, 1]
    assert runner.precision == "fp32" and runner.max_batch is None
    x = torch.randn(5, 1, 28, 28)  # batch 5 of a batch-1 file: the interpreter is resized
    with torch.no_grad():
        ref = phone["src"].model(x).numpy()
    assert np.abs(runner.run(x.numpy()) - ref).max() <= 1e-4
    assert np.abs(runner.run(x[:1].numpy()) - ref[:1]).max() <= 1e-4
    with pytest.raises(ExportError, match=r"takes 1x28x28 inputs, received shape"):
        runner.run(np.zeros((1, 3, 28, 28), np.float32))


@litert
def test_tflite_predict_matches_onnx(phone, fp32_tflite, cli_runner_module):
    from pocketcnn.cli import cli
    from pocketcnn.runtime.predictor import open_model
    from pocketcnn.workflows.predict import load_predictor

    path, _ = fp32_tflite
    tfl, ort = open_model(path), open_model(phone["onnx"])
    assert tfl.runtime == "litert" and list(tfl.classes) == CLASSES and tfl.model == "squeezenet1_1"
    batch = np.stack([tfl.preprocess(p) for p in phone["images"]])
    assert np.abs(tfl.probabilities(batch) - ort.probabilities(batch)).max() <= 1e-4
    a = [p.to_dict() for p in load_predictor(path).predict(phone["images"], topk=3)]
    b = [p.to_dict() for p in ort.predict(phone["images"], topk=3)]
    assert [[t["index"] for t in r["topk"]] for r in a] == [[t["index"] for t in r["topk"]] for r in b]
    res = cli_runner_module.invoke(cli, ["predict", str(path), str(phone["images"][0]), "--json"])
    assert res.exit_code == 0, res.output
    assert res.stdout.count(CLASSES[b[0]["topk"][0]["index"]]) >= 1


@litert
def test_tflite_predict_needs_no_torch(fp32_tflite, phone):
    """The deployed side: open and predict a .tflite file with numpy, Pillow and ai-edge-litert only."""
    path, _ = fp32_tflite
    code = ("import sys; from pocketcnn.runtime.predictor import open_model; "
            f"p = open_model({str(path)!r}).predict([{str(phone['images'][0])!r}]); "
            "assert p[0].ok, p; assert 'torch' not in sys.modules, 'torch was imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# --- LiteRT int8 ----------------------------------------------------------------------------------

@litert
def test_tflite_int8_is_full_integer_and_reports_top1(int8_tflite, fp32_tflite):
    from pocketcnn.runtime.litert import LiteRtRunner

    path, record = int8_tflite
    v = record["verification"]
    assert record["precision"] == "int8" and v["passed"] and v["runtime"] == "litert"
    assert v["n"] == 160 and v["inputs"] == "160 mnist test images" and v["calibration"] == "64 mnist train images"
    assert 0.0 <= v["top1_agreement"] <= 1.0 and 0.0 <= v["int8_top1"] <= 100.0
    assert abs(v["top1_drop"] - (v["fp32_top1"] - v["int8_top1"])) < 1e-9 and v["max_drop"] == 2.0
    assert (v["warning"] is None) == (v["top1_drop"] <= 2.0) and record["warnings"] == ([v["warning"]] if v["warning"] else [])
    runner = LiteRtRunner(path)
    detail = runner._interpreter.get_input_details()[0]
    assert runner.int8 and np.dtype(detail["dtype"]) == np.int8 and detail["quantization"][0] > 0
    assert np.dtype(runner._interpreter.get_output_details()[0]["dtype"]) == np.int8
    assert runner.metadata["quantization"]["calibration"] == "64 mnist train images"
    assert path.stat().st_size < 0.4 * fp32_tflite[0].stat().st_size  # int8 weights: about a quarter
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    assert runner.run(x).shape == (3, 10) and runner.run(x).dtype == np.float32


@litert
def test_int8_accuracy_drop_is_a_reported_warning(int8_tflite, phone, monkeypatch):
    """A drop above the limit is in the result (and --json) as a warning; the file is still written."""
    import pocketcnn.export.tflite as T

    monkeypatch.setattr(T, "MAX_DROP", -101.0)  # any drop is above it
    from pocketcnn.data.transforms import load_images

    x, y = load_images("mnist", "test", 20, phone["src"].data, phone["data_dir"])
    check = T.verify_int8(int8_tflite[0], phone["src"].model, x, y, inputs_desc="20 mnist test images",
                          calibration="64 mnist train images")
    assert check.passed and check.n == 20 and check.max_drop == -101.0
    assert check.warning and "points below fp32" in check.warning and check.to_dict()["warning"] == check.warning


# --- LiteRT errors and the benchmark --------------------------------------------------------------

def test_missing_litert_names_the_extra(monkeypatch, tmp_path, phone, cli_runner):
    from pocketcnn.cli import cli
    from pocketcnn.export.tflite import export_tflite
    from pocketcnn.runtime.litert import LiteRtRunner

    for name in ("litert_torch", "ai_edge_litert", "ai_edge_litert.interpreter", "ai_edge_litert.schema_py_generated"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'pocketcnn\[litert\]'"):
        export_tflite(phone["src"].model, tmp_path / "m.tflite", input_size=(1, 28, 28))
    (tmp_path / "m.tflite").write_bytes(b"TFL3")
    with pytest.raises(MissingDependencyError, match=r"running \.tflite files needs ai-edge-litert.*pocketcnn\[litert\]"):
        LiteRtRunner(tmp_path / "m.tflite")
    text = one_line(cli_runner.invoke(cli, ["export", str(phone["ckpt"]), "--format", "tflite", "--out",
                                            str(tmp_path / "x.tflite")]))
    assert "pocketcnn[litert]" in text and not (tmp_path / "x.tflite").exists()
    from pocketcnn.bench.runtimes import RuntimeUnavailable, build_runtime

    with pytest.raises(RuntimeUnavailable, match=r"pocketcnn\[litert\]"):
        build_runtime("litert", phone["src"].model, input_size=(1, 28, 28), threads=1, workdir=tmp_path)


@litert
def test_unconvertible_operator_names_the_layer(tmp_path):
    from pocketcnn.export.tflite import export_tflite

    class Gauss(nn.Module):
        def forward(self, x):
            return torch.erfinv(x.clamp(-0.5, 0.5))

    model = nn.Sequential(nn.Conv2d(1, 4, 3), Gauss(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    with pytest.raises(ExportError, match=r"cannot convert operator aten\.erfinv\.default in layer '1' \(Gauss\)"):
        export_tflite(model, tmp_path / "g.tflite", input_size=(1, 8, 8))
    assert not (tmp_path / "g.tflite").exists()


@litert
def test_bench_litert_runtime(phone, tmp_path):
    from pocketcnn.bench.runtimes import build_runtime, parse_runtimes

    assert parse_runtimes("litert,litert-int8") == ("litert", "litert-int8")
    rt = build_runtime("litert", phone["src"].model, input_size=(1, 28, 28), threads=1, workdir=tmp_path)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert np.abs(rt.fn(x) - phone["src"].model(x).numpy()).max() <= 1e-4
    assert rt.fn(x[:1]).shape == (1, 10) and "XNNPACK" in rt.note


def test_bad_options_are_user_errors(phone, tmp_path, cli_runner):
    from pocketcnn.cli import cli

    src = phone["src"]
    with pytest.raises(ConfigError, match=r"int8 export is offered for format='tflite'.*format='onnx'"):
        export_model(src, tmp_path / "m.onnx", int8=True)
    with pytest.raises(ConfigError, match=r"dynamic_batch does not apply to format='tflite'"):
        export_model(src, tmp_path / "m.tflite", format="tflite", dynamic_batch=True)
    with pytest.raises(ConfigError, match=r"precision applies to format='coreml'.*precision='fp16'"):
        export_model(src, tmp_path / "m.tflite", format="tflite", precision="fp16")
    with pytest.raises(OutputError, match=r"must end in \.tflite"):
        export_model(src, tmp_path / "m.onnx", format="tflite")
    with pytest.raises(OutputError, match=r"must end in \.mlpackage"):
        export_model(src, tmp_path / "m.coreml", format="coreml")
    (tmp_path / "dir.mlpackage").mkdir()
    with pytest.raises(OutputError, match="exists and is not a Core ML package"):
        export_model(src, tmp_path / "dir.mlpackage", format="coreml")
    with pytest.raises(DataError, match="int8 calibration needs mnist images on this machine"):
        export_model(src, tmp_path / "q.tflite", format="tflite", int8=True, data_dir=tmp_path)
    text = one_line(cli_runner.invoke(cli, ["export", str(phone["ckpt"]), "--calib-data", "mnist"]))
    assert "calib_data (--calib-data) applies to int8 export, received calib_data='mnist'" in text


def test_folder_outputs_are_swapped_whole(tmp_path):
    """An .mlpackage is a folder: the pending one replaces the old one at once, or nothing changes."""
    from pocketcnn.export.exporter import _replace

    old, new = tmp_path / "m.mlpackage", tmp_path / ".m.pending.mlpackage"
    for folder, text in ((old, "old"), (new, "new")):
        (folder / "Data").mkdir(parents=True)
        (folder / "Manifest.json").write_text(text)
    _replace(new, old)
    assert (old / "Manifest.json").read_text() == "new" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage"]


# --- Core ML --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gray_package(phone, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml") / "sq.mlpackage"
    return export_model(phone["src"], out, format="coreml")


@coreml
def test_coreml_gray_fp16_spec(gray_package, phone):
    import coremltools as ct

    from pocketcnn.export.coreml import read_coreml_metadata

    r = gray_package
    v = r.to_dict()["verification"]
    assert r.precision == "fp16" and r.path.is_dir() and (r.path / "Manifest.json").is_file()
    assert v["ran"] is False and "Apple" in v["not_run"] and v["passed"] and not v["problems"]
    assert v["input_type"] == "imageType" and v["color"] == "GRAYSCALE" and tuple(v["image_size"]) == (28, 28)
    assert v["scale"] == pytest.approx(1 / (255 * 0.353), rel=1e-6) and v["bias"] == pytest.approx((-0.286 / 0.353,))
    assert v["labels"] == 10 and v["precision"] == "fp16" and v["ops"] > 20 and v["op_types"]["softmax"] == 1
    assert r.size_bytes == sum(p.stat().st_size for p in r.path.rglob("*") if p.is_file())
    spec = ct.utils.load_spec(str(r.path))
    inp = spec.description.input[0]
    assert inp.name == "image" and inp.type.imageType.width == 28 and spec.description.predictedFeatureName == "classLabel"
    assert {o.name for o in spec.description.output} == {"classLabel", "classLabel_probs"}
    meta = read_coreml_metadata(r.path)
    assert meta["classes"] == CLASSES and meta["model"] == "squeezenet1_1" and meta["precision"] == "fp16"
    assert {k: meta[k] for k in phone["src"].metadata()} == json.loads(json.dumps(phone["src"].metadata()))


@coreml
def test_coreml_rgb_fp32_with_per_channel_std(tmp_path):
    """ImageNet's three stds: Core ML has one scale, so 1/std_c is the model's first multiply."""
    from pocketcnn.data.spec import IMAGENET_MEAN, IMAGENET_STD

    src = tiny_source("mobilenet_v3_small", in_chans=3)
    src = ModelSource(src.model, src.name, src.model_kwargs,
                      {**DATA, "name": "cifar10", "in_chans": 3, "image_size": 32, "mean": list(IMAGENET_MEAN),
                       "std": list(IMAGENET_STD)}, None)
    r = export_model(src, tmp_path / "mb.mlpackage", format="coreml", precision="fp32")
    v = r.verification
    assert v.passed and v.color == "RGB" and v.precision == "fp32" and r.precision == "fp32"
    assert v.scale == pytest.approx(1 / 255) and v.bias == pytest.approx(tuple(-m for m in IMAGENET_MEAN), rel=1e-5)
    assert v.op_types["mul"] >= 1 and v.image_size == (32, 32)


def test_coreml_refuses_other_channel_counts(tmp_path):
    from pocketcnn.export.coreml import export_coreml

    if not HAS_COREML:
        pytest.skip("coremltools not installed: pip install 'pocketcnn[mobile]'")
    model = pocketcnn.create_model("squeezenet1_1", num_classes=3, in_chans=2, small_input=True)
    meta = {"in_chans": 2, "image_size": 28, "mean": [0.5], "std": [0.5], "classes": ["a", "b", "c"]}
    with pytest.raises(ConfigError, match="gray .* or RGB .*in_chans=2"):
        export_coreml(model, tmp_path / "m.mlpackage", metadata=meta)


def test_missing_coremltools_names_the_extra(monkeypatch, tmp_path, phone):
    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'pocketcnn\[mobile\]'"):
        export_model(phone["src"], tmp_path / "m.mlpackage", format="coreml")
    assert not list(tmp_path.iterdir())


def test_predict_refuses_a_core_ml_package(tmp_path):
    from pocketcnn.runtime.predictor import open_model
    from pocketcnn.errors import CheckpointError

    (tmp_path / "m.mlpackage").mkdir()
    with pytest.raises(CheckpointError, match="Core ML package, which runs only on Apple systems"):
        open_model(tmp_path / "m.mlpackage")
