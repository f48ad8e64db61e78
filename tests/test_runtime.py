"""The light runtime (pocketcnn.runtime): torch-free preprocessing equal to the training path,
predictions equal to the torch path's (torchvision preprocessing, torch softmax), ONNX Runtime runner, errors."""
from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pocketcnn.data.spec import DataSpec
from pocketcnn.errors import CheckpointError, ConfigError, DataError
from pocketcnn.runtime.images import MAX_IMAGE_PIXELS, load_image, preprocess, to_model_mode
from pocketcnn.runtime.onnx import OnnxRunner, ort_session
from pocketcnn.runtime.predictor import Predictor, open_model, softmax

_spec = importlib.util.spec_from_file_location("light_prepare", Path(__file__).parent / "light" / "prepare.py")
prepare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runtime-models")
    fp32 = prepare.make_onnx(root / "fp32.onnx")
    return {"fp32": fp32, "int8": prepare.make_int8(fp32, root / "int8.onnx"),
            "fixed": prepare.make_onnx(root / "fixed.onnx", dynamic_batch=False, with_params=False)}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return prepare.write_images(tmp_path_factory.mktemp("runtime-images"))


def _image(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if mode == "L":
        return Image.fromarray(rgb[..., 0])
    if mode == "RGB":
        return Image.fromarray(rgb)
    if mode == "RGBA":
        return Image.fromarray(np.concatenate([rgb, rgb[..., :1]], -1), "RGBA")
    if mode == "P":
        img = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
        img.info["transparency"] = 2
        return img
    if mode == "I;16":
        return Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    if mode == "CMYK":
        return Image.fromarray(rgb).convert("CMYK")
    raise AssertionError(mode)


def _spec(in_chans: int, image_size: int, resize_size: int) -> DataSpec:
    return prepare.spec(in_chans, image_size, resize_size)


# ------------------------------------------------------------------------------ preprocessing
MODES = ("L", "RGB", "RGBA", "P", "I;16", "CMYK")
SIZES = ((37, 23), (23, 37), (101, 99), (5, 61), (28, 28))


@pytest.mark.parametrize("in_chans,image_size,resize_size", [(1, 28, 28), (1, 28, 33), (3, 28, 32), (3, 17, 23)])
@pytest.mark.parametrize("mode", MODES)
def test_preprocess_equals_training_path(mode, in_chans, image_size, resize_size):
    from pocketcnn.data.transforms import pil_to_input

    spec = _spec(in_chans, image_size, resize_size)
    for i, (w, h) in enumerate(SIZES):
        img = _image(mode, w, h, seed=i)
        got = preprocess(img, spec)
        assert got.dtype == np.float32 and got.shape == (in_chans, image_size, image_size)
        # the mode conversion is the predictor's; resize, crop and normalize are training's
        ref = pil_to_input(to_model_mode(img, in_chans), spec).numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
        if mode in ("L", "RGB", "RGBA"):  # modes whose plain convert() is ours: the training path as is
            np.testing.assert_allclose(got, pil_to_input(img, spec).numpy(), rtol=0, atol=1e-6)


def test_preprocess_accepts_paths_and_bytes(images):
    spec = _spec(1, 28, 32)
    path = next(p for p in images if p.name == "rgb.png")
    ref = preprocess(Image.open(path), spec)
    np.testing.assert_array_equal(preprocess(path, spec), ref)
    np.testing.assert_array_equal(preprocess(path.read_bytes(), spec), ref)


def test_to_model_mode_scales_16_bit():
    img = Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16))
    assert img.mode.startswith("I;16")
    assert np.asarray(to_model_mode(img, 1)).tolist() == [[0, 100, 255]]
    assert to_model_mode(img, 3).mode == "RGB"


def test_load_image_applies_exif_rotation():
    img = Image.fromarray(np.arange(6 * 4 * 3, dtype=np.uint8).reshape(4, 6, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif)
    assert load_image(buf.getvalue()).size == (4, 6)


def test_load_image_errors_are_one_line(tmp_path, images):
    cases = {
        tmp_path / "missing.png": "no such file",
        tmp_path: "is a folder",
        next(p for p in images if p.name == "not-an-image.png"): "not an image file",
        next(p for p in images if p.name == "truncated.png"): "cannot decode image",
    }
    for path, reason in cases.items():
        with pytest.raises(DataError, match=reason) as info:
            load_image(path)
        assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="<bytes>: empty"):
        load_image(b"")
    with pytest.raises(DataError, match=r"up\.png: image of 9000x9000 = 81,000,000 pixels is over the limit"):
        load_image(prepare.png_header(9000, 9000), name="up.png")
    assert 9000 * 9000 > MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match="decompression bomb"):
        load_image(prepare.png_header(20000, 20000))  # PIL's own refusal (over twice its limit) while opening


# ------------------------------------------------------------------------------ runner and predictor
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_records_equal_torch_path(models, images, kind):
    reference = prepare.torch_records(models[kind], images, topk=3)
    light = open_model(models[kind])
    assert light.runtime == "onnxruntime" and light.runner.precision == kind
    got = [r.to_dict() for r in light.predict([str(p) for p in images], topk=3)]
    assert sum("error" in r for r in got) == 2
    assert prepare.record_differences(got, reference) == []
    full = {r["image"]: {t["index"]: t["prob"] for t in r.get("topk", [])}
            for r in prepare.torch_records(models[kind], images, topk=10)}
    for r in got:  # every probability equals the reference's for the same class
        for t in r.get("topk", []):
            assert abs(full[r["image"]][t["index"]] - t["prob"]) <= 1e-6
            assert t["label"] == prepare.FASHION_CLASSES[t["index"]]


def test_fixed_batch_file_runs_any_batch(models):
    fixed, dynamic = OnnxRunner(models["fixed"]), OnnxRunner(models["fp32"], threads=1)
    assert fixed.max_batch == 1 and dynamic.max_batch is None
    assert fixed.input_shape == [1, 1, 28, 28] and dynamic.input_shape[1:] == [1, 28, 28]
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    out = fixed.run(x)
    assert out.shape == (3, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out, dynamic.run(x), rtol=0, atol=1e-5)  # same weights (seed 0)
    assert "params" not in fixed.metadata and fixed.metadata["model"] == "squeezenet1_1"


def test_predict_arrays_equals_predict(models, images):
    p = open_model(models["fp32"])
    good = [i for i in images if "not-an-image" not in i.name and "truncated" not in i.name]
    batch = np.stack([p.preprocess(i) for i in good])
    assert [r.to_dict() for r in p.predict_arrays(batch, names=[str(i) for i in good], topk=10)] == \
           [r.to_dict() for r in p.predict([str(i) for i in good], topk=10)]
    probs = p.probabilities(batch)
    assert probs.dtype == np.float64 and probs.shape == (len(good), 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
    assert len(p.predict(good[0], topk=50)[0].topk) == 10  # at most the number of classes
    for bad in (0, -1, True, "3", 2.0):
        with pytest.raises(ConfigError, match="topk"):
            p.predict(good, topk=bad)


def test_softmax_is_float64_and_stable():
    probs = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]], np.float32))
    assert probs.dtype == np.float64
    np.testing.assert_allclose(probs, [[1.0, 0.0], [0.5, 0.5]])


def test_open_model_errors(tmp_path, models):
    with pytest.raises(CheckpointError, match=r"model\.pt: a PyTorch checkpoint.*load_predictor"):
        open_model(tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="unknown model file type '.txt'"):
        open_model(tmp_path / "model.txt")
    with pytest.raises(CheckpointError, match=r"nothere\.onnx: no such model file"):
        open_model(tmp_path / "nothere.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    with pytest.raises(CheckpointError, match=r"junk\.onnx: not a readable ONNX model") as info:
        open_model(junk)
    assert "\n" not in str(info.value)
    import onnx

    proto = onnx.load(str(models["fp32"]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(CheckpointError, match="carries no pocketcnn metadata"):
        open_model(bare)
    session = ort_session(models["fp32"].read_bytes(), threads=1)  # bytes work too
    assert session.get_inputs()[0].shape[1:] == [1, 28, 28]
    with pytest.raises(ConfigError, match="threads=-1"):
        OnnxRunner(models["fp32"], threads=-1)
    with pytest.raises(ConfigError, match="DataSpec"):
        Predictor(OnnxRunner(models["fp32"]), {"in_chans": 1})


# ------------------------------------------------------------------------------ no torch
def test_runtime_never_imports_torch(tmp_path, models, images):
    code = ("import sys, json\n"
            "from pocketcnn.runtime import open_model\n"
            "import pocketcnn.cli.serve, pocketcnn.serve.app, pocketcnn.serve.server\n"
            f"recs = [r.to_dict() for r in open_model({str(models['int8'])!r}).predict({[str(i) for i in images]!r})]\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')]\n"
            "print(json.dumps(recs))\n")
    env = prepare.blocked_env(tmp_path / "block")
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "blocked by the test" in check.stderr  # the blocker works
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == len(images)


def test_cli_predict_onnx_without_torch(tmp_path, models, images):
    env = prepare.blocked_env(tmp_path / "block")
    out = subprocess.run([sys.executable, "-m", "pocketcnn", "predict", str(models["fp32"]), *map(str, images),
                          "--json", "--topk", "3"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr  # two of the images are broken
    reference = prepare.torch_records(models["fp32"], images, topk=3)
    assert prepare.record_differences(json.loads(out.stdout), reference) == []
